"""Input listing for batch jobs: files, directories, globs, fsspec URLs and manifests -> rows.

Below the runners and the jobs (no Ray): fine-tuning data, the batch jobs and the tools all list
inputs the same way, with the same ids.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from collections.abc import Sequence
from typing import Any

import pyarrow.parquet as pq

from voxray.errors import InputError
from voxray.storage import fs_and_path, is_remote, unstrip

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".m4a", ".aac", ".webm", ".aiff", ".au")
MANIFEST_EXTENSIONS = (".csv", ".tsv", ".jsonl", ".ndjson", ".parquet")


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
                if path and not is_remote(path) and not os.path.isabs(path) and not is_remote(item):
                    # relative paths in a manifest are relative to the manifest
                    row["path"] = os.path.normpath(os.path.join(base, path))
                if row.get("id") in (None, ""):
                    row["id"] = _stem_id(str(path), None) if path else f"row-{n + 1:06d}"
                row["id"] = str(row["id"])
                rows.append(row)
            continue
        fs, path = fs_and_path(item)
        if any(ch in path for ch in "*?["):
            matches = sorted(p for p in fs.glob(path) if p.lower().endswith(extensions))
            rows += [{"id": _stem_id(p, None), "path": unstrip(item, fs, p)} for p in matches]
        elif fs.isdir(path):
            found = sorted(p for p in fs.find(path) if p.lower().endswith(extensions))
            rows += [{"id": _stem_id(p, path), "path": unstrip(item, fs, p)} for p in found]
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
