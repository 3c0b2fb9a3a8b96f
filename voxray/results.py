"""What batch jobs write: Parquet shards in one output directory, committed as the job goes, and ``run.json``.

Crash-safe by construction: a shard becomes visible only complete (a local file is written under a
hidden temporary name, fsynced, then renamed; an object store publishes an upload only when it
completes), so a driver killed at any moment leaves committed shards and at most a temporary file,
never a truncated ``*.parquet``. On resume :func:`scan_output` reads every shard's ids; a shard that
cannot be read (left by an older writer, or damaged) is moved to ``_quarantine/`` and its ids are
redone. Below the jobs (no Ray), so search, the demo and tests read results the way the jobs do.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from voxray.errors import error_kind
from voxray.storage import fs_and_path, fs_join, is_remote, unstrip

logger = logging.getLogger("voxray.results")

REPORT_NAME = "run.json"
QUARANTINE_DIR = "_quarantine"
_TMP_MARK = ".tmp-"


# ---------------------------------------------------------------- listing and reading
def list_shards(out: str) -> list[str]:
    """Committed Parquet shards in the output directory (fsspec URLs preserved)."""
    fs, path = fs_and_path(out)
    fs.invalidate_cache()  # object stores' listings are cached per process; workers wrote since
    if not fs.exists(path):
        return []
    return sorted(unstrip(out, fs, p) for p in fs.glob(path.rstrip("/") + "/*.parquet"))


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


def completed_ids(out: str) -> set[str]:
    """Ids already written by earlier runs (unreadable shards are quarantined first)."""
    return set(scan_output(out).done_ids.to_pylist())


# ---------------------------------------------------------------- resume: scan, quarantine, duplicates
@dataclass
class OutputScan:
    """What an output directory holds, read once at the start of a run."""

    done_ids: pa.Array  # ids a rerun skips
    retry_ids: pa.Array  # ids whose error kind was asked to be redone
    rows: int = 0
    errors: int = 0
    quarantined: list[str] = field(default_factory=list)
    duplicates_resolved: int = 0


def _shard_key(fs: Any, path: str) -> tuple[float, str]:
    try:
        info = fs.info(path)
        mtime = info.get("mtime") or info.get("LastModified") or fs.modified(path)
        mtime = mtime.timestamp() if hasattr(mtime, "timestamp") else float(mtime)
    except Exception:
        mtime = 0.0
    return (mtime, os.path.basename(path))


def quarantine(shard: str, reason: str) -> str:
    """Move an unreadable shard to ``_quarantine/`` (out of the listing) and say so once."""
    fs, path = fs_and_path(shard)
    parent, name = path.rstrip("/").rsplit("/", 1)
    target = f"{parent}/{QUARANTINE_DIR}/{name}"
    fs.makedirs(f"{parent}/{QUARANTINE_DIR}", exist_ok=True)
    if fs.exists(target):
        target = f"{target}.{uuid.uuid4().hex[:6]}"
    fs.mv(path, target)
    logger.warning("shard %s is unreadable (%s): moved to %s, its rows will be redone", shard, reason, target)
    return target


def _remove_stale_temporaries(out: str) -> None:
    """Temporary files of a writer that was killed mid-shard: their rows were never committed."""
    if is_remote(out):
        return
    fs, path = fs_and_path(out)
    for p in fs.glob(path.rstrip("/") + "/.*" + _TMP_MARK + "*"):
        with contextlib.suppress(OSError):
            fs.rm(p)


def scan_output(out: str, retry_kinds: Iterable[str] = (), resolve: bool = True) -> OutputScan:
    """Ids already in ``out``: skip those, redo ``retry_kinds``; quarantine shards that cannot be read.

    With ``resolve``, an id written twice (a retried error row whose new row landed before the old
    one was removed) keeps only its newest row, so every id appears once.
    """
    retry_kinds = set(retry_kinds)
    _remove_stale_temporaries(out)
    ids: list[pa.Array] = []
    errors: list[pa.Array] = []
    owners: list[tuple[str, int]] = []
    quarantined: list[str] = []
    for shard in list_shards(out):
        fs, path = fs_and_path(shard)
        try:
            with fs.open(path, "rb") as fh:
                schema = pq.read_schema(fh)
                fh.seek(0)
                cols = ["id", "error"] if "error" in schema.names else ["id"]
                table = pq.read_table(fh, columns=cols)
        except Exception as exc:  # truncated footer, not Parquet, ...
            quarantined.append(quarantine(shard, f"{type(exc).__name__}: {exc}"))
            continue
        ids.append(table.column("id").combine_chunks().cast(pa.string()))
        errors.append(
            table.column("error").combine_chunks().cast(pa.string())
            if "error" in table.column_names
            else pa.nulls(table.num_rows, pa.string())
        )
        owners.append((shard, table.num_rows))
    all_ids = pa.concat_arrays(ids) if ids else pa.array([], pa.string())
    all_errors = pa.concat_arrays(errors) if errors else pa.array([], pa.string())
    resolved = 0
    if resolve and len(all_ids) and pc.count_distinct(all_ids).as_py() < len(all_ids):
        resolved = resolve_duplicates(out)
        return dataclasses.replace(scan_output(out, retry_kinds, resolve=False), quarantined=quarantined,
                                   duplicates_resolved=resolved)
    has_error = pc.fill_null(pc.not_equal(all_errors, ""), False)
    retry_mask = pa.array([False] * len(all_ids), pa.bool_())
    if retry_kinds and len(all_ids):
        kinds = [error_kind(e) for e in all_errors.to_pylist()]
        retry_mask = pa.array([k in retry_kinds for k in kinds], pa.bool_())
    return OutputScan(
        done_ids=pc.filter(all_ids, pc.invert(retry_mask)),
        retry_ids=pc.filter(all_ids, retry_mask),
        rows=len(all_ids),
        errors=int(pc.sum(has_error).as_py() or 0) if len(all_ids) else 0,
        quarantined=quarantined,
        duplicates_resolved=resolved,
    )


def resolve_duplicates(out: str) -> int:
    """Keep each id's row from its newest shard; rewrite older shards without it. Returns rows dropped."""
    shards = list_shards(out)
    keyed = []
    for shard in shards:
        fs, path = fs_and_path(shard)
        keyed.append((_shard_key(fs, path), shard))
    keyed.sort()
    newest: dict[str, tuple[int, int]] = {}  # id -> (shard, row) of its last occurrence
    tables: list[pa.Table] = []
    for n, (_, shard) in enumerate(keyed):
        table = read_shards([shard], ["id"])
        tables.append(table)
        for j, rid in enumerate(table.column("id").to_pylist()):
            newest[rid] = (n, j)
    dropped = 0
    for n, (_, shard) in enumerate(keyed):
        ids = tables[n].column("id").to_pylist()
        keep = [newest[rid] == (n, j) for j, rid in enumerate(ids)]
        if all(keep):
            continue
        full = read_shards([shard])
        kept = full.filter(pa.array(keep))
        dropped += full.num_rows - kept.num_rows
        fs, path = fs_and_path(shard)
        if kept.num_rows:
            write_table_atomic(kept, shard)
        else:
            fs.rm(path)
    if dropped:
        logger.info("%s: %d superseded rows removed (each id keeps its newest row)", out, dropped)
    return dropped


# ---------------------------------------------------------------- writing
def write_table_atomic(table: pa.Table, url: str) -> None:
    """Write one Parquet file so that ``url`` is either absent or complete, never truncated."""
    fs, path = fs_and_path(url)
    if is_remote(url):  # an object store publishes an upload only once it completes
        with fs.open(path, "wb") as fh:
            pq.write_table(table, fh)
        return
    parent, name = os.path.split(path)
    os.makedirs(parent or ".", exist_ok=True)
    tmp = os.path.join(parent, f".{name}{_TMP_MARK}{os.getpid()}-{threading.get_ident()}")
    with open(tmp, "wb") as fh:
        pq.write_table(table, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    try:  # make the rename itself durable
        fd = os.open(parent or ".", os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def run_id() -> str:
    """Sortable, unique per run: shard names say which run wrote them and in which order."""
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + "-" + uuid.uuid4().hex[:6]


class ShardWriter:
    """Buffers result tables and commits them as shards, bounded by rows and by age.

    A kill at any moment loses at most ``every_rows`` rows or ``every_s`` seconds of results that
    reached the writer. Thread-safe: the job's consumer adds, a timer thread calls
    :meth:`flush_if_due` so the age bound holds while the consumer waits for the next batch.
    """

    def __init__(
        self,
        out: str,
        schema: pa.Schema,
        every_rows: int = 2000,
        every_s: float = 30.0,
        run: str | None = None,
        on_commit: Callable[[str, pa.Table], None] | None = None,
    ) -> None:
        self.out, self.schema = out, schema
        self.every_rows, self.every_s = every_rows, every_s
        self.run = run or run_id()
        self.on_commit = on_commit
        self.shards: list[str] = []
        self.committed_rows = 0
        self._buffer: list[pa.Table] = []
        self._rows = 0
        self._oldest: float | None = None
        self._seq = 0
        self._lock = threading.Lock()

    def add(self, table: pa.Table) -> None:
        if not table.num_rows:
            return
        table = table.select(self.schema.names).cast(self.schema) if table.schema != self.schema else table
        with self._lock:
            self._buffer.append(table)
            self._rows += table.num_rows
            self._oldest = self._oldest or time.monotonic()
            if self._rows >= self.every_rows:
                self._commit()

    def flush_if_due(self) -> None:
        with self._lock:
            if self._oldest is not None and time.monotonic() - self._oldest >= self.every_s:
                self._commit()

    def flush(self) -> None:
        with self._lock:
            self._commit()

    def _commit(self) -> None:
        if not self._rows:
            return
        table = pa.concat_tables(self._buffer).combine_chunks()
        self._seq += 1
        url = fs_join(self.out, f"part-{self.run}-{self._seq:05d}.parquet")
        write_table_atomic(table, url)
        self.shards.append(url)
        self.committed_rows += table.num_rows
        self._buffer, self._rows, self._oldest = [], 0, None
        logger.debug("committed %s (%d rows)", url, table.num_rows)
        if self.on_commit is not None:
            self.on_commit(url, table)


# ---------------------------------------------------------------- the run report
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


class RunCounts:
    """Running totals of the rows a run committed (for the report and the progress line)."""

    def __init__(self) -> None:
        self.rows = 0
        self.errors = 0
        self.by_kind: Counter[str] = Counter()
        self.audio_s = 0.0

    def add(self, table: pa.Table) -> None:
        self.rows += table.num_rows
        errors = table.column("error").to_pylist() if "error" in table.column_names else [None] * table.num_rows
        durations = (
            table.column("duration_s").to_pylist() if "duration_s" in table.column_names else [None] * table.num_rows
        )
        for err, dur in zip(errors, durations, strict=True):
            if err:
                self.errors += 1
                self.by_kind[error_kind(err) or "internal"] += 1
            elif dur and dur == dur:  # not NaN
                self.audio_s += float(dur)


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def fill_report(report: RunReport, counts: RunCounts, scan: OutputScan | None = None) -> RunReport:
    """Counts, audio time and RTFx from this run's committed rows; totals from the directory."""
    report.processed = counts.rows
    report.errors = counts.errors
    report.ok = counts.rows - counts.errors
    report.errors_by_kind = dict(counts.by_kind)
    report.audio_s = counts.audio_s
    report.audio_hours = counts.audio_s / 3600
    report.rtfx = report.audio_s / report.wall_s if report.wall_s > 0 else 0.0
    if scan is not None:
        report.totals = {"rows": scan.rows, "errors": scan.errors}
    return report


def summarize(report: RunReport, new_rows: pa.Table, all_rows: pa.Table) -> RunReport:
    """Fill counts, audio time and RTFx from this run's rows (``duration_s`` and ``error`` columns)."""
    counts = RunCounts()
    if new_rows.num_rows:
        counts.add(new_rows)
    fill_report(report, counts)
    all_errors = all_rows.column("error").to_pylist() if all_rows.num_rows else []
    report.totals = {"rows": all_rows.num_rows, "errors": sum(1 for e in all_errors if e)}
    return report


def write_report(out: str, report: RunReport, html: bool = True) -> str:
    """Write ``run.json`` into the output directory (atomically, like the shards), and ``report.html``
    beside it (the page a person opens: the same numbers, a duration histogram of every row written
    so far, error samples, the commit timeline); returns run.json's URL."""
    import fsspec

    url = fs_join(out, REPORT_NAME)
    data = json.dumps(report.to_dict(), indent=2, default=str)
    if is_remote(url):
        with fsspec.open(url, "w") as fh:
            fh.write(data)
    else:
        _, path = fs_and_path(url)
        parent, name = os.path.split(path)
        tmp = os.path.join(parent, f".{name}{_TMP_MARK}{os.getpid()}")
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(data)
        os.replace(tmp, path)
    if html:
        from voxray.report import write_report_html

        write_report_html(out, json.loads(data), _report_rows(out))
    return url


def _report_rows(out: str) -> pa.Table | None:
    """The ``duration_s``/``error`` columns of every shard in ``out`` (None when it has no row shards)."""
    shards = list_shards(out)
    if not shards:
        return None
    fs, path = fs_and_path(shards[0])
    with fs.open(path, "rb") as fh:
        names = set(pq.read_schema(fh).names)
    columns = [c for c in ("duration_s", "error") if c in names]
    return read_shards(shards, columns) if columns else None
