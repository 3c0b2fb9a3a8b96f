"""Ray Data stages shared by the audio-in jobs (transcribe, embed): probe, decode, counters.

Decoding and resampling run here, in CPU tasks, so model actors (GPU) never wait on FFmpeg.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from voxray.audio import SAMPLE_RATE
from voxray.errors import row_error

logger = logging.getLogger("voxray.jobs")


def sort_by_duration(rows: list[dict[str, Any]], threads: int = 32) -> list[dict[str, Any]]:
    """Probe headers (I/O bound: a thread pool in the driver) and sort rows by duration.

    Sorting before decoding gives actors length-homogeneous batches (less padding) without a
    distributed shuffle of decoded audio. Unreadable headers sort first: they fail fast later.
    """
    from concurrent.futures import ThreadPoolExecutor

    from voxray.audio import probe

    def duration(row: dict[str, Any]) -> float:
        info = probe(row["path"])
        return info.duration_s if info else -1.0

    with ThreadPoolExecutor(max_workers=threads) as pool:
        durations = list(pool.map(duration, rows))
    order = sorted(range(len(rows)), key=lambda i: durations[i])
    return [rows[i] for i in order]


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
            errors.append(row_error(exc))
    return {
        "id": list(batch["id"]),
        "path": list(batch["path"]),
        "duration_s": np.asarray(durations, dtype=np.float64),
        "audio": audios,
        "error": errors,
    }


def stats_actor_cls() -> Any:
    import ray

    @ray.remote(num_cpus=0)
    class Stats:
        """Sums per-batch counters from every model actor (padding waste for ``run.json``)."""

        def __init__(self) -> None:
            self.totals: dict[str, float] = {}

        def add(self, **counters: float) -> None:
            for k, v in counters.items():
                self.totals[k] = self.totals.get(k, 0) + v

        def get(self) -> dict[str, float]:
            return dict(self.totals)

    return Stats


def counter_deltas(stats: Any, before: tuple[int, int, int]) -> dict[str, int]:
    """Padding counters a runner accumulated since ``before`` (for the stats actor)."""
    return {
        "frames": stats.frames - before[0],
        "padded_frames": stats.padded_frames - before[1],
        "forward_passes": stats.forward_passes - before[2],
    }


def run_audio_job(
    job: Any,
    name: str,
    runner_options: Any,
    actor_cls: type,
    prepare: Callable[[], dict[str, Any]],
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The driver every audio-in job shares (transcribe, embed).

    List inputs -> skip ids already written -> (``prepare()``: fail fast on the model, returns
    extra actor kwargs) -> sort by header duration -> decode in CPU tasks -> ``actor_cls`` pool
    -> Parquet shards -> ``run.json`` with padding waste from every actor's counters.
    """
    from voxray.corpus import expand_inputs
    from voxray.results import (
        RunReport,
        completed_ids,
        list_shards,
        now_iso,
        read_results,
        read_shards,
        summarize,
        write_report,
    )
    from voxray.storage import ensure_dir

    t0 = time.perf_counter()
    report = RunReport(job=name, out=job.out, started_at=now_iso())
    ensure_dir(job.out)
    rows = expand_inputs(job.inputs)
    done = completed_ids(job.out)
    pending = [r for r in rows if r["id"] not in done]
    todo = pending[: job.limit] if job.limit else pending
    report.inputs = len(rows)
    report.skipped_already_done = len(rows) - len(pending)
    logger.info("%s: %d inputs, %d already done, %d to do", name, len(rows), report.skipped_already_done, len(todo))
    before = set(list_shards(job.out))
    counters: dict[str, float] = {}
    if todo:
        actor_kwargs = prepare()
        counters = _run_actor_pipeline(job, todo, runner_options, actor_cls, actor_kwargs, report)
    report.wall_s = time.perf_counter() - t0
    new_shards = [s for s in list_shards(job.out) if s not in before]
    summarize(report, read_shards(new_shards, ["duration_s", "error"]), read_results(job.out, ["error"]))
    frames = counters.get("frames", 0)
    report.extra.update(
        extra or {},
        padding_waste=(counters.get("padded_frames", 0) / frames) if frames else 0.0,
        frames=frames,
        padded_frames=counters.get("padded_frames", 0),
        forward_passes=counters.get("forward_passes", 0),
    )
    write_report(job.out, report)
    return report.to_dict()


def _run_actor_pipeline(
    job: Any,
    todo: list[dict[str, Any]],
    runner_options: Any,
    actor_cls: type,
    actor_kwargs: dict[str, Any],
    report: Any,
) -> dict[str, float]:
    import ray
    from ray.data import ActorPoolStrategy, DataContext

    from voxray.cluster import init_ray, plan_actors

    started = init_ray(job.ray)
    try:
        DataContext.get_current().enable_progress_bars = job.progress
        plan = plan_actors(job.resources)
        options = runner_options.model_dump()
        if options.get("threads") is None and not plan.uses_gpu:
            options["threads"] = plan.threads
        report.extra.update(actors=plan.actors, cpus_per_actor=plan.num_cpus, gpus_per_actor=plan.num_gpus)
        stats = stats_actor_cls().remote()
        rows = [{"id": r["id"], "path": str(r["path"])} for r in sort_by_duration(todo)]
        ds = (
            ray.data.from_items(rows, override_num_blocks=max(1, min(len(rows) // 8 or 1, 1024)))
            .map_batches(decode_batch, batch_size=8, num_cpus=job.decode_cpus)
            .map_batches(
                actor_cls,
                fn_constructor_kwargs={"options": options, "stats": stats, **actor_kwargs},
                compute=ActorPoolStrategy(size=plan.actors),
                batch_size=job.resources.rows_per_call,
                num_cpus=plan.num_cpus,
                num_gpus=plan.num_gpus,
                batch_format="numpy",
            )
        )
        ds.write_parquet(job.out)
        totals = ray.get(stats.get.remote())
        ray.kill(stats)
        return totals
    finally:
        if started:
            ray.shutdown()
