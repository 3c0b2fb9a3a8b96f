"""The Kokoro stage shared by the synthesis and audiobook jobs: plan the TTS actor pool, then stream
rows through it with Ray Data (one model per actor, one call in flight per actor).

Kokoro-82M is small: on GPUs an actor takes a quarter of one by default (four per GPU), and
without GPUs one single-threaded actor per core (its intra-op scaling is sublinear).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from voxray.cluster import ClusterView, PoolPlan, plan_pool
from voxray.config import ResourceOptions, RetryOptions
from voxray.jobs.runtime import ModelActor
from voxray.results import RunReport
from voxray.tts.config import TTSOptions

if TYPE_CHECKING:
    from ray.data import Dataset

TTS_GPUS_PER_ACTOR = 0.25  # an 82M model: four actors share a GPU unless --gpus-per-actor says otherwise


def plan_tts_actors(
    resources: ResourceOptions, tts: TTSOptions, rows: int, report: RunReport, view: ClusterView
) -> tuple[PoolPlan, dict[str, Any]]:
    """Size the TTS pool (shared by the synthesis and audiobook jobs); returns it and the actors' TTS options.

    The embedded model cache is built here, once, not racing in every actor.
    """
    plan = plan_pool(resources, view, default_gpus_per_actor=TTS_GPUS_PER_ACTOR, cpu_actor_per_core=True, rows=rows)
    options = tts.model_dump()
    if options.get("threads") is None and not plan.uses_gpu:
        options["threads"] = plan.threads
    if tts.model == "embedded":
        from voxray.tts.assets import resolve_model

        resolve_model("embedded")
    report.extra.update(
        plan=plan.as_dict(), device=plan.device, actors_max=plan.max_actors, cpus_per_actor=plan.num_cpus,
        gpus_per_actor=plan.num_gpus, threads=options["threads"], cluster=view.describe(),
    )
    return plan, options


class TTSActor(ModelActor):
    """Base of the Kokoro actors: a GPU actor needs CUDA in torch (the torch backend, which batches
    rows into shared forwards) or onnxruntime's CUDA provider (onnxruntime-gpu)."""

    stage = "tts"

    def cuda_available(self) -> bool:
        import onnxruntime as ort

        from voxray.tts.torch_runner import cuda_available, torch_available

        if torch_available() and cuda_available():
            return True
        return "CUDAExecutionProvider" in ort.get_available_providers()


def report_forwards(state: Any, pipeline: Any, before: dict[str, int]) -> None:
    """Add what this call's forwards did (since ``before``) to the job's state actor."""
    if state is not None:
        state.add.remote(**{k: v - before.get(k, 0) for k, v in pipeline.stats.as_dict().items()})


def forward_report(counters: dict[str, float]) -> dict[str, Any]:
    """run.json's view of the TTS forwards: how many, chunks per forward, padding waste."""
    forwards, chunks = int(counters.get("tts_forwards", 0)), int(counters.get("tts_chunks", 0))
    padded = counters.get("tts_padded_tokens", 0)
    return {"forward_passes": forwards, "chunks_per_forward": chunks / forwards if forwards else 0.0,
            "padding_waste": 1 - counters.get("tts_tokens", 0) / padded if padded else 0.0}


def tts_map_kwargs(plan: PoolPlan, retries: RetryOptions, batch: int) -> dict[str, Any]:
    """``map_batches`` keywords of a TTS stage: elastic pool, one call in flight per actor, bounded retries.

    With one call in flight an actor's utilization never passes Ray Data's scale-up threshold, so a
    bounded pool starts at its maximum (longest text first keeps the tail short); an unbounded one
    (GPUs that may still join) queues two calls per actor so it can grow.
    """
    from ray.data import ActorPoolStrategy

    from voxray.cluster import remote_retry_args

    bounded = plan.max_actors is not None
    return {
        "compute": ActorPoolStrategy(min_size=plan.min_actors, max_size=plan.max_actors,
                                     initial_size=plan.max_actors if bounded else plan.min_actors,
                                     max_tasks_in_flight_per_actor=1 if bounded else 2),
        "batch_size": batch,
        "num_cpus": plan.num_cpus,
        "num_gpus": plan.num_gpus or None,
        "batch_format": "numpy",
        **remote_retry_args(retries.task_retries, retries.actor_restarts),
    }


@contextmanager
def tts_stage(
    items: list[dict[str, Any]],
    actor: type,
    actor_kwargs: dict[str, Any],
    *,
    job: Any,
    report: RunReport,
    max_blocks: int,
) -> Iterator[Dataset]:
    """``items`` (in the order given) mapped through an elastic pool of ``actor``, for the caller to consume.

    Starts Ray unless connected, plans the pool (:func:`plan_tts_actors`), checks it can ever be
    placed, and builds each actor with its TTS options plus ``actor_kwargs``; ``rows_per_call``
    rows a call, in at most ``max_blocks`` blocks. Consume the dataset inside the ``with`` block.
    """
    import ray

    from voxray.cluster import check_capacity, cluster_view
    from voxray.jobs.faults import job_state_cls
    from voxray.jobs.runtime import data_context, map_stage, ray_session

    with ray_session(job) as local:
        view = cluster_view(local)
        plan, options = plan_tts_actors(job.resources, job.tts, len(items), report, view)
        check_capacity(plan, view)
        state = job_state_cls().remote()
        batch = job.resources.rows_per_call
        blocks = max(1, min(math.ceil(len(items) / batch), max_blocks))
        retries: RetryOptions = getattr(job, "retries", RetryOptions())
        with data_context(plan, retries):
            yield map_stage(
                ray.data.from_items(items, override_num_blocks=blocks), actor,
                fn_constructor_kwargs={"options": options, "state": state, "device": plan.device,
                                       "crashes_per_input": retries.crashes_per_input, **actor_kwargs},
                **tts_map_kwargs(plan, retries, batch),
            )
        report.extra["forwards"] = forward_report(ray.get(state.summary.remote(), timeout=60)["counters"])
