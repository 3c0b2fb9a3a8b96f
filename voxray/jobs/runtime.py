"""The driver loop every row-per-input job shares (transcribe, embed, synthesize).

Inputs arrive as an Arrow table (ids already committed are skipped), stream through the job's Ray
Data stages, and come back to the driver as small result tables that a
:class:`~voxray.results.ShardWriter` commits as they come: every ``commit_rows`` rows or
``commit_s`` seconds, so a kill loses at most that much. Every stage has explicit, small retry
bounds, and :mod:`voxray.jobs.faults` turns an input that keeps killing its worker into one error
row. If a stage still runs out of retries (an actor out of restarts), the pipeline is rebuilt
over the ids not yet committed, a bounded number of times and only while it makes progress.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from voxray.cluster import (
    CapacityError,
    ClusterView,
    DeviceUnavailableError,
    PoolPlan,
    check_capacity,
    cluster_view,
    configure_worker_logging,
    init_ray,
    precheck_local,
    remote_retry_args,
    shutdown_ray,
    started_locally,
)
from voxray.config import JobOptions, RetryOptions
from voxray.errors import VoxrayError
from voxray.jobs.faults import guarded, job_state_cls
from voxray.results import RunCounts, RunReport, ShardWriter

logger = logging.getLogger("voxray.jobs")


# ---------------------------------------------------------------- progress (the CLI draws it)
@dataclass
class JobProgress:
    """What a progress line shows; sent to the ``progress`` callback as rows come back."""

    job: str
    done: int = 0
    total: int = 0
    errors: int = 0
    audio_s: float = 0.0
    elapsed_s: float = 0.0
    status: str = ""
    finished: bool = False

    @property
    def eta_s(self) -> float | None:
        if not self.done or self.done >= self.total:
            return None
        return self.elapsed_s / self.done * (self.total - self.done)


ProgressFn = Callable[[JobProgress], None]


# ---------------------------------------------------------------- Ray session for one job
@contextmanager
def ray_session(job: Any) -> Iterator[bool]:
    """Start/join Ray for one job; yields whether voxray started a local cluster (nothing can grow)."""
    precheck_local(job.resources, job.ray)
    started = init_ray(job.ray)
    try:
        yield started_locally()
    finally:
        if started:
            shutdown_ray()


@contextmanager
def data_context(plan: PoolPlan, retries: RetryOptions) -> Iterator[Any]:
    """Ray Data settings for one job (the context is process-wide: restored afterwards)."""
    from ray.data import DataContext

    ctx = DataContext.get_current()
    saved = {k: getattr(ctx, k) for k in ("enable_progress_bars", "wait_for_min_actors_s",
                                          "max_consecutive_actor_init_deaths")}
    ctx.enable_progress_bars = False  # voxray draws one progress line for the whole job
    # On a cluster that may grow: block at the start until min_actors run (an autoscaler may be
    # adding GPU nodes), fail after the wait; an actor that raises at start (no CUDA device)
    # fails the job at once. A local cluster was checked to fit: its actors load their models
    # while the first inputs are read, probed and decoded (a start that raises is retried, bounded).
    ctx.wait_for_min_actors_s = int(plan.wait_s) if plan.wait_s > 0 else -1
    ctx.max_consecutive_actor_init_deaths = retries.actor_restarts
    try:
        yield ctx
    finally:
        for k, v in saved.items():
            setattr(ctx, k, v)


def map_stage(ds: Any, fn: Any, **kwargs: Any) -> Any:
    """``ds.map_batches`` with Ray's retry options: the only way to bound them before Ray 2.64."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*ray_remote_args.*deprecated")
        warnings.filterwarnings("ignore", message=".*num_cpus and num_gpus.*")
        return ds.map_batches(fn, **kwargs)


# ---------------------------------------------------------------- the model actor base
class ModelActor:
    """Base of the jobs' ``map_batches`` actors: device check, crash guard, voxray's worker logs.

    A GPU actor that finds no CUDA device raises at start (:class:`DeviceUnavailableError`); it
    never runs on CPU behind the user's back. Subclasses implement :meth:`process` (a batch -> an
    Arrow table of result rows) and :meth:`crash_rows` (result rows for inputs given up on).
    """

    stage = "model"

    def __init__(self, *, state: Any = None, device: str = "cpu", crashes_per_input: int = 2) -> None:
        configure_worker_logging()
        self.state = state
        self.crashes_per_input = crashes_per_input
        self.device = self.resolve_device(device)
        if state is not None:
            import os

            import ray

            ctx = ray.get_runtime_context()
            state.actor_started.remote(ctx.get_actor_id() or "", ctx.get_node_id(), os.getpid())

    def cuda_available(self) -> bool:
        import torch

        return bool(torch.cuda.is_available())

    def resolve_device(self, device: str) -> str:
        """``gpu`` -> ``cuda`` after checking the device is really there; ``cpu`` -> ``cpu``."""
        if device != "gpu":
            return "cpu"
        if not self.cuda_available():
            import os
            import socket

            raise DeviceUnavailableError(
                f"a {self.stage} actor on {socket.gethostname()} was given a GPU by Ray but sees no CUDA device "
                f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '')!r}): install a CUDA build on "
                "the GPU nodes, or run with --device cpu"
            )
        return "cuda"

    def process(self, batch: dict[str, Any]) -> pa.Table:
        raise NotImplementedError

    def crash_rows(self, batch: dict[str, Any], message: str) -> pa.Table:
        raise NotImplementedError

    def __call__(self, batch: dict[str, Any]) -> pa.Table:
        return guarded(self.state, self.stage, batch, self.process, self.crash_rows, pa.concat_tables,
                       self.crashes_per_input)


# ---------------------------------------------------------------- error unwrapping
def user_error(exc: BaseException) -> VoxrayError | None:
    """The voxray error inside a Ray/Ray Data exception chain (an actor that raised at start), if any.

    Ray wraps a remote exception in ``RayTaskError``/``ActorDiedError`` (the original in ``.cause``,
    or only its text); the user sees the voxray message, not Ray's traceback.
    """
    seen: set[int] = set()
    stack: list[Any] = [exc]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        for attr in ("cause", "__cause__", "__context__", "base_exception"):
            nxt = getattr(e, attr, None)
            if isinstance(nxt, BaseException):
                stack.append(nxt)
        if isinstance(e, VoxrayError):
            cls = next(c for c in type(e).__mro__ if issubclass(c, VoxrayError) and c.__module__.startswith("voxray"))
            message = e.__dict__.get("message") or str(e.args[0] if e.args else e)
            return cls(message.splitlines()[-1] if "Traceback" in message else message)
    text = str(exc)
    for cls in _voxray_error_classes():
        marker = f"{cls.__name__}: "
        if marker in text:
            return cls(text.rsplit(marker, 1)[1].splitlines()[0].strip())
    return None


def _voxray_error_classes() -> list[type[VoxrayError]]:
    out, stack = [], [VoxrayError]
    while stack:
        cls = stack.pop()
        out.append(cls)
        stack += cls.__subclasses__()
    return sorted(out, key=lambda c: -len(c.__mro__))  # most specific first


def _is_timeout(exc: BaseException) -> bool:
    import ray

    return isinstance(exc, ray.exceptions.GetTimeoutError) or "Timed out while starting actors" in str(exc)


# ---------------------------------------------------------------- the loop
@dataclass
class PipelineResult:
    counts: RunCounts
    writer: ShardWriter
    passes: int
    state: dict[str, Any] = field(default_factory=dict)


def block_bounds(n: int, rows_per_block: int, first: int = 64) -> list[tuple[int, int]]:
    """Row ranges of the input blocks: the first ones small (the first model batch starts after a
    few dozen headers, not a whole window), doubling up to ``rows_per_block``."""
    bounds, start, size = [], 0, min(first, rows_per_block)
    while start < n:
        stop = min(n, start + size)
        bounds.append((start, stop))
        start, size = stop, min(rows_per_block, size * 2)
    return bounds


def input_dataset(table: pa.Table, rows_per_block: int, task_retries: int) -> Any:
    """``table`` as a dataset of blocks of up to ``rows_per_block`` rows, put in the object store once.

    The blocks are cut by read tasks, in parallel and as the pipeline pulls them: the driver makes
    one ``ray.put`` (a few tens of MB for a million rows), not one per block.
    """
    import ray
    from ray.data import Datasource, ReadTask
    from ray.data.block import BlockMetadata

    ref = ray.put(table)
    bounds = block_bounds(table.num_rows, rows_per_block)
    schema = table.schema

    class TableSlices(Datasource):
        def estimate_inmemory_data_size(self) -> int:
            return table.nbytes

        def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None,
                           data_context: Any = None) -> list[Any]:
            tasks = []
            for start, stop in bounds:

                def read(start: int = start, stop: int = stop) -> list[pa.Table]:
                    import ray

                    whole = ray.get(ref)  # zero-copy from the object store
                    return [whole.take(pa.array(range(start, stop), pa.int64()))]  # a copy of just these rows

                tasks.append(ReadTask(read, BlockMetadata(num_rows=stop - start, size_bytes=None, input_files=None,
                                                          exec_stats=None), schema=schema))
            return tasks

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*ray_remote_args.*deprecated")
        return ray.data.read_datasource(TableSlices(), override_num_blocks=len(bounds), num_cpus=0.25,
                                        ray_remote_args=remote_retry_args(task_retries))


def block_rows(n: int, cpus: float, lo: int = 16, hi: int = 512) -> int:
    """Rows per input block: the bucketing window (sorted by duration), small enough that the
    first batch starts in seconds, large enough for a million rows in a few thousand blocks."""
    return int(min(hi, max(lo, math.ceil(n / max(4.0, 4 * cpus)))))


def run_pipeline(
    *,
    name: str,
    job: JobOptions,
    todo: pa.Table,
    schema: pa.Schema,
    plan: PoolPlan,
    view: ClusterView,
    build: Callable[[Any, Any], Any],
    report: RunReport,
    progress: ProgressFn | None = None,
    rows_per_block: int | None = None,
) -> PipelineResult:
    """Stream ``todo`` through ``build(input_dataset, job_state)`` and commit what comes back.

    Raises a :class:`VoxrayError` with one clear line for what a user can fix (no capacity, no
    CUDA device, a model that does not load); rebuilds the pipeline over uncommitted ids after a
    stage ran out of retries (``retries.pipeline_reruns`` times at most, and only while it progresses).
    """
    import ray

    check_capacity(plan, view)
    counts = RunCounts()
    committed: list[pa.Array] = []
    shown = JobProgress(job=name, total=todo.num_rows)
    t0 = time.perf_counter()
    lock = threading.Lock()

    timeline: list[dict[str, Any]] = []  # one event per commit, for run.json (report.html plots it)
    actors_seen = [0]

    def on_commit(_url: str, table: pa.Table) -> None:
        counts.add(table)
        committed.append(table.column("id").combine_chunks())
        if len(timeline) < 5000:
            timeline.append({"t": round(time.perf_counter() - t0, 3), "rows": table.num_rows,
                             "actors": actors_seen[0]})

    writer = ShardWriter(job.out, schema, job.commit_rows, job.commit_s, on_commit=on_commit)
    stop = threading.Event()

    def tick() -> None:  # keeps the age bound while the consumer waits for the next batch
        last_poll = 0.0
        while not stop.wait(min(1.0, job.commit_s / 4)):
            writer.flush_if_due()
            if time.perf_counter() - last_poll > 5:  # actors started so far, for the timeline
                last_poll = time.perf_counter()
                with suppress(Exception):
                    actors_seen[0] = len(ray.get(state.summary.remote(), timeout=5)["actors"])
            if progress is not None:
                with lock:
                    shown.elapsed_s = time.perf_counter() - t0
                    progress(shown)

    state = job_state_cls().remote()
    timer = threading.Thread(target=tick, name="voxray-commit", daemon=True)
    timer.start()
    remaining, passes, summary = todo, 0, {}
    rows = rows_per_block or block_rows(todo.num_rows, view.cpus)
    if progress is not None:
        shown.status = f"waiting for {plan.ask()}" if plan.wait_s else f"starting {plan.ask()}"
        progress(shown)
    try:
        with data_context(plan, job.retries):
            while remaining.num_rows:
                before = writer.committed_rows, ray.get(state.summary.remote())["deaths_seen"]
                ds = build(input_dataset(remaining, rows, job.retries.task_retries), state)
                try:
                    for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=1):
                        writer.add(batch)
                        with lock:
                            shown.status = ""
                            shown.done += batch.num_rows
                            errs = batch.column("error").to_pylist()
                            shown.errors += sum(1 for e in errs if e)
                            if "duration_s" in batch.column_names:
                                shown.audio_s += sum(d for d, e in zip(batch.column("duration_s").to_pylist(), errs,
                                                                       strict=True) if d and not e and d == d)
                            shown.elapsed_s = time.perf_counter() - t0
                            if progress is not None:
                                progress(shown)
                    writer.flush()
                    break
                except KeyboardInterrupt:
                    raise
                except Exception as exc:
                    writer.flush()
                    clean = user_error(exc)
                    if clean is not None:
                        raise clean from None
                    if _is_timeout(exc):
                        has = cluster_view(view.local).describe()
                        raise CapacityError(
                            f"waited {plan.wait_s:g} s for {plan.ask()} but the cluster has {has}; "
                            "raise --wait-for-actors-s, lower --min-actors, or add nodes"
                        ) from None
                    done = pa.concat_arrays(committed) if committed else pa.array([], pa.string())
                    remaining = remaining.filter(pc.invert(pc.is_in(remaining.column("id"), value_set=done)))
                    progressed = (writer.committed_rows, ray.get(state.summary.remote())["deaths_seen"]) != before
                    if not remaining.num_rows:
                        break
                    if passes >= job.retries.pipeline_reruns or not progressed:
                        raise
                    passes += 1
                    logger.warning("%s: a stage ran out of retries (%s: %s); pass %d resumes the %d uncommitted "
                                   "inputs", name, type(exc).__name__, str(exc).splitlines()[0][:200], passes + 1,
                                   remaining.num_rows)
        summary = ray.get(state.summary.remote())
    finally:
        stop.set()
        timer.join(timeout=5)
        writer.flush()
        with suppress(Exception):
            ray.kill(state)
        if progress is not None:
            shown.elapsed_s = time.perf_counter() - t0
            shown.finished = True
            progress(shown)
    report.extra.update(passes=passes + 1, shards=len(writer.shards), commit_rows=job.commit_rows,
                        commit_s=job.commit_s, timeline=timeline)
    return PipelineResult(counts, writer, passes + 1, summary)


def actor_kwargs(plan: PoolPlan, job: JobOptions) -> dict[str, Any]:
    """``map_batches`` keywords of a job's model stage: the elastic pool, its resources and retry bounds."""
    from ray.data import ActorPoolStrategy

    return {
        "compute": ActorPoolStrategy(min_size=plan.min_actors, max_size=plan.max_actors),
        "num_cpus": plan.num_cpus,
        "num_gpus": plan.num_gpus or None,
        **remote_retry_args(job.retries.task_retries, job.retries.actor_restarts),
    }


def check_runner_device(device: str) -> None:
    """A job's device is ``resources.device`` (``--device``): one home, so the runner's stays auto."""
    if device != "auto":
        raise ValueError(f"set the job's device with resources.device (--device cpu|gpu|auto), "
                         f"not the runner's device={device!r}")


def as_float_list(values: Any) -> list[float | None]:
    """Durations as JSON/Arrow-friendly floats (NaN -> None)."""
    out = []
    for d in values:
        out.append(None if d is None or (isinstance(d, float | np.floating) and np.isnan(d)) else float(d))
    return out
