"""Ray Data stages shared by the audio-in jobs (transcribe, embed): probe, decode, the driver.

Nothing is scanned in the driver: it lists inputs as three Arrow columns (a manifest's
``duration_s`` when it has one) and hands them to Ray in blocks. Durations a manifest lacks are
probed (headers only) by parallel tasks as blocks stream in, each block is sorted by duration (a
bounded bucketing window), split into decode batches, decoded and resampled in CPU tasks (never in
model actors), and batched into the model actors. Results come back to the driver as small rows
and are committed continuously (:mod:`voxray.jobs.runtime`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from voxray.audio import SAMPLE_RATE
from voxray.errors import VoxrayError, row_error

logger = logging.getLogger("voxray.jobs")

DECODE_ROWS = 8  # files per decode task: small, so decoding spreads over every CPU


# ---------------------------------------------------------------- stages (Ray tasks)
def probe_block(batch: dict[str, np.ndarray], threads: int = 16) -> dict[str, np.ndarray]:
    """Fill missing durations from headers (a thread pool: I/O bound) and sort the block by duration.

    Sorting within a block gives model calls length-homogeneous rows (less padding) without any
    global sort; unreadable headers sort first (they fail fast in decoding).
    """
    from concurrent.futures import ThreadPoolExecutor

    from voxray.audio import probe
    from voxray.cluster import configure_worker_logging

    configure_worker_logging()
    durations = np.asarray(batch["duration_s"], dtype=np.float64).copy()
    missing = np.flatnonzero(~np.isfinite(durations))
    if len(missing):
        paths = [str(batch["path"][i]) for i in missing]

        def duration(path: str) -> float:
            info = probe(path)
            return info.duration_s if info else -1.0

        with ThreadPoolExecutor(max_workers=min(threads, len(paths))) as pool:
            durations[missing] = list(pool.map(duration, paths))
    order = np.argsort(durations, kind="stable")
    return {"id": np.asarray(batch["id"])[order], "path": np.asarray(batch["path"])[order],
            "duration_s": durations[order]}


def io_error(exc: BaseException) -> str:
    """A row error for ``exc``: storage and network failures are ``io``/``timeout`` (transient: a
    rerun with ``--retry-errors`` redoes them), voxray's own errors keep their kind."""
    if isinstance(exc, VoxrayError):
        return exc.as_row_error()
    if isinstance(exc, TimeoutError):
        return f"timeout: {type(exc).__name__}: {exc}"
    if isinstance(exc, OSError | ConnectionError):
        return f"io: {type(exc).__name__}: {exc}"
    return row_error(exc)


def decode_batch(batch: dict[str, np.ndarray], sample_rate: int = SAMPLE_RATE) -> dict[str, Any]:
    """Decode + resample each file; a failure becomes that row's ``error`` (empty audio)."""
    from voxray.audio import decode_audio

    audios, durations, errors = [], [], []
    for path in batch["path"]:
        try:
            audio = decode_audio(str(path), sample_rate)
            audios.append(audio)
            durations.append(len(audio) / sample_rate)
            errors.append(None)
        except Exception as exc:
            audios.append(np.zeros(0, dtype=np.float32))
            durations.append(float("nan"))
            errors.append(io_error(exc))
    return {
        "id": list(batch["id"]),
        "path": list(batch["path"]),
        "duration_s": np.asarray(durations, dtype=np.float64),
        "audio": audios,
        "error": errors,
    }


def decode_crash_rows(batch: dict[str, Any], message: str) -> dict[str, Any]:
    n = len(batch["id"])
    return {"id": list(batch["id"]), "path": list(batch["path"]), "duration_s": np.full(n, np.nan),
            "audio": [np.zeros(0, dtype=np.float32) for _ in range(n)], "error": [message] * n}


def concat_columns(parts: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in parts[0]:
        values = [p[key] for p in parts]
        out[key] = np.concatenate(values) if isinstance(values[0], np.ndarray) else [v for vs in values for v in vs]
    return out


def decode_stage(batch: dict[str, np.ndarray], state: Any = None, crashes_per_input: int = 2,
                 sample_rate: int = SAMPLE_RATE) -> dict[str, Any]:
    """:func:`decode_batch` under the crash guard: a file that kills its decoder becomes a crash row."""
    from voxray.cluster import configure_worker_logging
    from voxray.jobs.faults import guarded

    configure_worker_logging()
    return guarded(state, "decode", batch, lambda b: decode_batch(b, sample_rate), decode_crash_rows,
                   concat_columns, crashes_per_input)


def counter_deltas(stats: Any, before: tuple[int, int, int]) -> dict[str, int]:
    """Padding counters a runner accumulated since ``before`` (for the job state actor)."""
    return {
        "frames": stats.frames - before[0],
        "padded_frames": stats.padded_frames - before[1],
        "forward_passes": stats.forward_passes - before[2],
    }


# ---------------------------------------------------------------- the driver
def split_blocks(ds: Any, rows: int, remote_args: dict[str, Any]) -> Any:
    """Split each (sorted) block into blocks of ``rows`` as it streams (so decoding spreads over
    every CPU), fused into the previous stage: the split carries that stage's remote args, and so
    its retry bound (Ray Data gives the split no way to set them, and retries it forever)."""
    ds = ds.repartition(target_num_rows_per_block=rows)
    op = ds._logical_plan.dag  # a frozen dataclass with a ray_remote_args field (Ray 2.51-2.63)
    object.__setattr__(op, "ray_remote_args", dict(remote_args))
    return ds


def build_audio_stages(job: Any, actor_cls: type, actor_kwargs: dict[str, Any], model_kwargs: dict[str, Any],
                       rows_per_block: int) -> Callable[[Any, Any], Any]:
    """The stage chain: probe+sort (per block) -> split -> decode (tasks) -> model actors."""
    from voxray.cluster import remote_retry_args
    from voxray.jobs.runtime import map_stage

    retry = remote_retry_args(job.retries.task_retries)

    probe_args = {"num_cpus": 0.25, **retry}

    def build(ds: Any, state: Any) -> Any:
        ds = map_stage(ds, probe_block, batch_size=None, batch_format="numpy", **probe_args)  # one block each
        ds = split_blocks(ds, DECODE_ROWS, probe_args)
        ds = map_stage(ds, decode_stage, batch_size=DECODE_ROWS, batch_format="numpy", num_cpus=job.decode_cpus,
                       fn_kwargs={"state": state, "crashes_per_input": job.retries.crashes_per_input}, **retry)
        return map_stage(
            ds, actor_cls, batch_size=job.resources.rows_per_call, batch_format="numpy",
            fn_constructor_kwargs={**actor_kwargs, "state": state,
                                   "crashes_per_input": job.retries.crashes_per_input},
            **model_kwargs,
        )

    return build


def run_audio_job(
    job: Any,
    name: str,
    runner_options: Any,
    actor_cls: type,
    schema: pa.Schema | Callable[[], pa.Schema],
    prepare: Callable[[], dict[str, Any]],
    extra: dict[str, Any] | None = None,
    progress: Any = None,
) -> dict[str, Any]:
    """The driver every audio-in job shares (transcribe, embed).

    List inputs (columnar) -> skip ids already committed (``--retry-errors`` kinds excepted) ->
    ``prepare()`` (fail fast on the model; returns extra actor kwargs; ``schema`` may be a callable
    evaluated after it) -> plan the elastic pool ->
    stream through probe, decode and ``actor_cls`` -> commit shards as rows come back -> ``run.json``.
    """
    from voxray.cluster import cluster_view, plan_pool
    from voxray.corpus import input_table
    from voxray.jobs.runtime import actor_kwargs as pool_kwargs
    from voxray.jobs.runtime import block_rows, ray_session, run_pipeline
    from voxray.results import RunCounts, RunReport, fill_report, now_iso, scan_output, write_report
    from voxray.storage import ensure_dir

    t0 = time.perf_counter()
    report = RunReport(job=name, out=job.out, started_at=now_iso())
    ensure_dir(job.out)
    table = input_table(job.inputs)
    scan = scan_output(job.out, job.retry_errors)
    pending = table.filter(pc.invert(pc.is_in(table.column("id"), value_set=scan.done_ids)))
    todo = pending.slice(0, job.limit) if job.limit else pending
    report.inputs = table.num_rows
    report.skipped_already_done = table.num_rows - pending.num_rows
    retried = int(pc.sum(pc.is_in(todo.column("id"), value_set=scan.retry_ids)).as_py() or 0) if job.retry_errors else 0
    logger.info("%s: %d inputs, %d already done, %d to do (%d retried)", name, table.num_rows,
                report.skipped_already_done, todo.num_rows, retried)
    report.extra.update(retried_errors=retried, quarantined=scan.quarantined)
    counts, summary = RunCounts(), {}
    if todo.num_rows:
        kwargs = prepare()
        if callable(schema):
            schema = schema()
        with ray_session(job) as local:
            view = cluster_view(local)
            plan = plan_pool(job.resources, view, rows=todo.num_rows)
            options = runner_options.model_dump()
            if options.get("threads") is None and not plan.uses_gpu:
                options["threads"] = plan.threads
            report.extra.update(plan=plan.as_dict(), device=plan.device, cpus_per_actor=plan.num_cpus,
                                gpus_per_actor=plan.num_gpus, cluster=view.describe())
            rows = block_rows(todo.num_rows, view.cpus)
            build = build_audio_stages(job, actor_cls, {"options": options, "device": plan.device, **kwargs},
                                       pool_kwargs(plan, job), rows)
            result = run_pipeline(name=name, job=job, todo=todo, schema=schema, plan=plan, view=view, build=build,
                                  report=report, progress=progress, rows_per_block=rows)
            counts, summary = result.counts, result.state
    final = scan_output(job.out) if (job.retry_errors or counts.rows) else scan
    report.wall_s = time.perf_counter() - t0
    fill_report(report, counts, final)
    totals = summary.get("counters", {})
    frames = totals.get("frames", 0)
    report.extra.update(
        extra or {},  # read after prepare() ran: it may fill values in
        actors=len(summary.get("actors", {})),
        actor_nodes=sorted({a["node"] for a in summary.get("actors", {}).values()}),
        actor_restarts=sum(max(0, a["starts"] - 1) for a in summary.get("actors", {}).values()),
        crash_rows=counts.by_kind.get("crash", 0),
        padding_waste=(totals.get("padded_frames", 0) / frames) if frames else 0.0,
        frames=frames,
        padded_frames=totals.get("padded_frames", 0),
        forward_passes=totals.get("forward_passes", 0),
    )
    write_report(job.out, report)
    return report.to_dict()


def result_columns(out: dict[str, Any], n: int | None = None) -> dict[str, Any]:
    """Common result columns of the audio jobs' model stages (ids and paths as strings)."""
    from voxray.jobs.runtime import as_float_list

    return {"id": [str(x) for x in out["id"]], "path": [str(x) for x in out["path"]],
            "duration_s": as_float_list(out["duration_s"])}


def null_table(schema: pa.Schema, batch: dict[str, Any], message: str, **fixed: Any) -> pa.Table:
    """Rows of ``schema`` for ``batch`` with only id, path and ``error`` (and ``fixed`` values) set."""
    n = len(batch["id"])
    cols: dict[str, Any] = {f.name: pa.nulls(n, f.type) for f in schema}
    cols.update(id=pa.array([str(x) for x in batch["id"]], pa.string()),
                path=pa.array([str(x) for x in batch["path"]], pa.string()),
                error=pa.array([message] * n, pa.string()))
    for k, v in fixed.items():
        cols[k] = pa.array([v] * n, schema.field(k).type)
    return pa.table(cols, schema=schema)
