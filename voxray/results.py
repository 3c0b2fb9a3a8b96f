"""What batch jobs write: Parquet shards in one output directory, and ``run.json``.

A rerun lists the ids already written and skips them (resume without duplicates); the run report
counts only this run's new shards. Below the jobs (no Ray), so search, the demo and tests read
results the same way the jobs do.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from voxray.errors import error_kind
from voxray.storage import fs_and_path, fs_join, unstrip

logger = logging.getLogger("voxray.results")

REPORT_NAME = "run.json"


def list_shards(out: str) -> list[str]:
    """Parquet shards in the output directory (fsspec URLs preserved)."""
    fs, path = fs_and_path(out)
    fs.invalidate_cache()  # object stores' listings are cached per process; workers wrote since
    if not fs.exists(path):
        return []
    return sorted(unstrip(out, fs, p) for p in fs.glob(path.rstrip("/") + "/*.parquet"))


def completed_ids(out: str) -> set[str]:
    """Ids already written by earlier runs. Unreadable shards (a killed write) are set aside."""
    done: set[str] = set()
    for shard in list_shards(out):
        try:
            fs, path = fs_and_path(shard)
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
        fs, path = fs_and_path(shard)
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

    url = fs_join(out, REPORT_NAME)
    with fsspec.open(url, "w") as fh:
        json.dump(report.to_dict(), fh, indent=2, default=str)
    return url
