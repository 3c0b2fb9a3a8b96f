"""Machinery every batch job shares: input listing, resume, Parquet output and the run report.

Jobs write Parquet shards into one output directory. A rerun lists the ids already written and
skips them (resume without duplicates); the run report counts only this run's new shards.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import logging
import os
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from voxray.errors import InputError, error_kind

logger = logging.getLogger("voxray.jobs")

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".m4a", ".aac", ".webm", ".aiff", ".au")
MANIFEST_EXTENSIONS = (".csv", ".tsv", ".jsonl", ".ndjson", ".parquet")
REPORT_NAME = "run.json"


def _fs_and_path(url: str) -> tuple[Any, str]:
    import fsspec

    fs, path = fsspec.core.url_to_fs(url)
    return fs, path


def _is_remote(url: str) -> bool:
    return "://" in url and not url.startswith("file://")


def _unstrip(url: str, fs: Any, path: str) -> str:
    """Turn a path returned by ``fs`` back into a URL the workers can open."""
    if not _is_remote(url):
        return path
    return fs.unstrip_protocol(path)


def read_manifest(url: str) -> list[dict[str, Any]]:
    """Rows of a CSV/TSV/JSONL/Parquet manifest (local or fsspec URL) as dicts."""
    import fsspec

    lower = url.lower()
    with fsspec.open(url, "rb") as fh:
        data = fh.read()
    if lower.endswith(".parquet"):
        return pq.read_table(io.BytesIO(data)).to_pylist()
    text = data.decode("utf-8-sig")
    if lower.endswith((".jsonl", ".ndjson")):
        rows = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise InputError(f"{url}: line {n} is not valid JSON: {exc.msg}") from exc
        return rows
    delimiter = "\t" if lower.endswith(".tsv") else ","
    return list(csv.DictReader(io.StringIO(text), delimiter=delimiter))


def _stem_id(path: str, root: str | None) -> str:
    rel = os.path.relpath(path, root) if root else os.path.basename(path)
    return os.path.splitext(rel)[0].replace(os.sep, "/")


def expand_inputs(
    inputs: Sequence[str],
    extensions: tuple[str, ...] = AUDIO_EXTENSIONS,
    required: Sequence[str] = ("path",),
) -> list[dict[str, Any]]:
    """Expand files, directories, globs, fsspec URLs and manifests into rows with a unique ``id``.

    Manifest rows keep their extra columns (e.g. ``text`` for fine-tuning). A missing path is kept
    as a row (it becomes an error row later) so nothing a user listed silently disappears.
    """
    rows: list[dict[str, Any]] = []
    for item in inputs:
        lower = item.lower()
        if lower.endswith(MANIFEST_EXTENSIONS):
            base = os.path.dirname(item)
            manifest = read_manifest(item)
            for n, row in enumerate(manifest):
                missing = [c for c in required if not row.get(c) and row.get(c) != 0]
                if "path" in required and "path" in missing:
                    raise InputError(f"{item}: row {n + 1} has no 'path' (columns: {sorted(row)})")
                row = dict(row)
                path = row.get("path")
                if path and not _is_remote(path) and not os.path.isabs(path) and not _is_remote(item):
                    # relative paths in a manifest are relative to the manifest
                    row["path"] = os.path.normpath(os.path.join(base, path))
                if row.get("id") in (None, ""):
                    row["id"] = _stem_id(str(path), None) if path else f"row-{n + 1:06d}"
                row["id"] = str(row["id"])
                rows.append(row)
            continue
        fs, path = _fs_and_path(item)
        if any(ch in path for ch in "*?["):
            matches = sorted(p for p in fs.glob(path) if p.lower().endswith(extensions))
            rows += [{"id": _stem_id(p, None), "path": _unstrip(item, fs, p)} for p in matches]
        elif fs.isdir(path):
            found = sorted(p for p in fs.find(path) if p.lower().endswith(extensions))
            rows += [{"id": _stem_id(p, path), "path": _unstrip(item, fs, p)} for p in found]
        else:
            rows.append({"id": _stem_id(path, None), "path": item})
    return dedupe_ids(rows)


def dedupe_ids(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Make ids unique by suffixing a short hash of the path; identical rows are kept once."""
    seen: dict[str, str] = {}
    out = []
    for row in rows:
        key = row["id"]
        if key in seen:
            if row.get("path") is not None and seen[key] == row.get("path"):
                continue  # the same file listed twice
            digest = hashlib.sha1(str(row.get("path")).encode()).hexdigest()[:8]
            row = {**row, "id": f"{key}-{digest}"}
        seen[row["id"]] = row.get("path")
        out.append(row)
    return out


def list_shards(out: str) -> list[str]:
    """Parquet shards in the output directory (fsspec URLs preserved)."""
    fs, path = _fs_and_path(out)
    fs.invalidate_cache()  # object stores' listings are cached per process; workers wrote since
    if not fs.exists(path):
        return []
    return sorted(_unstrip(out, fs, p) for p in fs.glob(path.rstrip("/") + "/*.parquet"))


def completed_ids(out: str) -> set[str]:
    """Ids already written by earlier runs. Unreadable shards (a killed write) are set aside."""
    done: set[str] = set()
    for shard in list_shards(out):
        try:
            fs, path = _fs_and_path(shard)
            with fs.open(path, "rb") as fh:
                table = pq.read_table(fh, columns=["id"])
        except Exception as exc:
            logger.warning("shard %s is unreadable (%s); moving it aside and redoing its rows", shard, exc)
            fs.mv(path, path + ".corrupt")
            continue
        done.update(table.column("id").to_pylist())
    return done


def read_shards(shards: Iterable[str], columns: list[str] | None = None) -> pa.Table:
    """Concatenate shards into one table (small columns only: used for reports and tests)."""
    tables = []
    for shard in shards:
        fs, path = _fs_and_path(shard)
        with fs.open(path, "rb") as fh:
            tables.append(pq.read_table(fh, columns=columns))
    if not tables:
        return pa.table({c: [] for c in (columns or [])})
    return pa.concat_tables(tables, promote_options="default")


def read_results(out: str, columns: list[str] | None = None) -> pa.Table:
    """All rows a job has written to ``out``, across runs."""
    return read_shards(list_shards(out), columns)


@dataclass
class RunReport:
    """``run.json``: what one run did, for operators and for benchmarks."""

    job: str
    out: str
    started_at: str
    wall_s: float = 0.0
    inputs: int = 0
    skipped_already_done: int = 0
    processed: int = 0
    ok: int = 0
    errors: int = 0
    errors_by_kind: dict[str, int] = field(default_factory=dict)
    audio_s: float = 0.0
    audio_hours: float = 0.0
    rtfx: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)
    totals: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def summarize(report: RunReport, new_rows: pa.Table, all_rows: pa.Table) -> RunReport:
    """Fill counts, audio time and RTFx from this run's rows (``duration_s`` and ``error`` columns)."""
    errors = [e for e in new_rows.column("error").to_pylist()] if new_rows.num_rows else []
    durations = new_rows.column("duration_s").to_pylist() if new_rows.num_rows else []
    report.processed = new_rows.num_rows
    report.errors = sum(1 for e in errors if e)
    report.ok = report.processed - report.errors
    report.errors_by_kind = dict(Counter(error_kind(e) for e in errors if e))
    report.audio_s = float(sum(d for d, e in zip(durations, errors, strict=True) if d and not e))
    report.audio_hours = report.audio_s / 3600
    report.rtfx = report.audio_s / report.wall_s if report.wall_s > 0 else 0.0
    all_errors = all_rows.column("error").to_pylist() if all_rows.num_rows else []
    report.totals = {"rows": all_rows.num_rows, "errors": sum(1 for e in all_errors if e)}
    return report


def write_report(out: str, report: RunReport) -> str:
    """Write ``run.json`` into the output directory; returns its URL/path."""
    import fsspec

    url = out.rstrip("/") + "/" + REPORT_NAME
    with fsspec.open(url, "w") as fh:
        json.dump(report.to_dict(), fh, indent=2, default=str)
    return url


def ensure_dir(out: str) -> None:
    fs, path = _fs_and_path(out)
    fs.makedirs(path, exist_ok=True)
