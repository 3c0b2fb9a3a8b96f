"""The Kokoro stage shared by the synthesis and audiobook jobs: size the TTS actor pool, then
stream the rows through it with Ray Data (one model per actor, one call in flight per actor)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from voxray.cluster import ActorPlan
from voxray.config import RayOptions, ResourceOptions
from voxray.results import RunReport
from voxray.tts.config import TTSOptions

if TYPE_CHECKING:
    from ray.data import Dataset


def plan_tts_actors(
    resources: ResourceOptions, tts: TTSOptions, rows: int, report: RunReport
) -> tuple[ActorPlan, int, dict[str, Any]]:
    """Size the TTS actor pool (shared by the synthesis and audiobook jobs).

    No decode stage competes for CPUs in TTS jobs, so without GPUs it is one single-threaded actor
    per core, never more than there are rows. The embedded model cache is built here, once, not
    racing in every actor. Returns the plan, the actor count and the actors' TTS options.
    """
    import ray

    from voxray.cluster import plan_actors

    cluster = ray.cluster_resources()
    plan = plan_actors(resources, cluster)
    actors = plan.actors
    if resources.actors is None and not plan.uses_gpu:
        actors = max(1, int(float(cluster.get("CPU", 1)) // max(1.0, plan.num_cpus)))
    actors = min(actors, rows)
    options = tts.model_dump()
    if options.get("threads") is None and not plan.uses_gpu:
        options["threads"] = plan.threads
    if tts.model == "embedded":
        from voxray.tts.assets import resolve_model

        resolve_model("embedded")
    report.extra.update(
        actors=actors, cpus_per_actor=plan.num_cpus, gpus_per_actor=plan.num_gpus, threads=options["threads"]
    )
    return plan, actors, options


@contextmanager
def tts_stage(
    items: list[dict[str, Any]],
    actor: type,
    actor_kwargs: dict[str, Any],
    *,
    ray_options: RayOptions,
    resources: ResourceOptions,
    tts: TTSOptions,
    report: RunReport,
    max_blocks: int,
    ray_progress_bars: bool,
) -> Iterator[Dataset]:
    """``items`` (in the order given) mapped through a pool of ``actor``, for the caller to consume.

    Starts Ray unless connected, sizes the pool (:func:`plan_tts_actors`) and builds each actor with
    ``options`` (the actors' TTS options) plus ``actor_kwargs``; ``rows_per_call`` rows a call, in
    at most ``max_blocks`` blocks. Consume the dataset inside the ``with`` block: leaving it
    restores Ray Data's progress-bar setting and shuts down a Ray that this call started.
    """
    import ray
    from ray.data import ActorPoolStrategy, DataContext

    from voxray.cluster import init_ray

    started = init_ray(ray_options)
    ctx = DataContext.get_current()
    bars = ctx.enable_progress_bars
    try:
        ctx.enable_progress_bars = ray_progress_bars
        plan, actors, options = plan_tts_actors(resources, tts, len(items), report)
        batch = resources.rows_per_call
        blocks = max(1, min(math.ceil(len(items) / batch), max_blocks))
        yield ray.data.from_items(items, override_num_blocks=blocks).map_batches(
            actor,
            fn_constructor_kwargs={"options": options, **actor_kwargs},
            compute=ActorPoolStrategy(size=actors, max_tasks_in_flight_per_actor=1),
            batch_size=batch,
            num_cpus=plan.num_cpus,
            num_gpus=plan.num_gpus,
            batch_format="numpy",
        )
    finally:
        ctx.enable_progress_bars = bars
        if started:
            ray.shutdown()
