"""Connect to a Ray cluster or start a local one, and size model actors from its resources."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from voxray.config import RayOptions, ResourceOptions

logger = logging.getLogger("voxray.cluster")


def init_ray(options: RayOptions | None = None) -> bool:
    """Join ``options.address`` / ``$RAY_ADDRESS``, else start a local cluster.

    Returns True when this call started Ray (so the caller should shut it down).
    """
    import ray

    if ray.is_initialized():
        return False
    options = options or RayOptions()
    address = options.address or os.environ.get("RAY_ADDRESS")
    kwargs: dict = {"log_to_driver": False, "logging_level": logging.WARNING}
    if address:
        ray.init(address=address, **kwargs)
        logger.info("joined Ray cluster at %s", address)
        return True
    ray.init(
        num_cpus=options.num_cpus,
        include_dashboard=options.include_dashboard,
        _temp_dir=options.temp_dir,
        **kwargs,
    )
    logger.info("started a local Ray cluster: %s", ray.cluster_resources())
    return True


@dataclass(frozen=True)
class ActorPlan:
    """Resolved placement of model actors."""

    actors: int
    num_cpus: float
    num_gpus: float
    threads: int

    @property
    def uses_gpu(self) -> bool:
        return self.num_gpus > 0


def plan_actors(options: ResourceOptions, cluster: dict[str, float] | None = None) -> ActorPlan:
    """Size the model actor pool from cluster resources.

    With GPUs: ``gpus_per_actor`` (default 1) each, so a node with G GPUs runs G/gpus_per_actor
    actors (0.25 puts 4 small-model actors on a GPU). Without: one actor per ``cpus_per_actor``
    CPUs, leaving headroom for the CPU decode tasks; CPU actors run ``cpus / actors`` threads.
    """
    if cluster is None:
        import ray

        cluster = ray.cluster_resources()
    gpus = float(cluster.get("GPU", 0))
    cpus = float(cluster.get("CPU", 1))
    gpa = options.gpus_per_actor if options.gpus_per_actor is not None else (1.0 if gpus else 0.0)
    if gpa > 0 and gpus == 0:
        raise ValueError(f"gpus_per_actor={gpa} but the Ray cluster has no GPUs")
    if options.actors is not None:
        actors = options.actors
    elif gpa > 0:
        actors = max(1, int(gpus // gpa))
    else:
        actors = max(1, int((cpus - 1) // max(options.cpus_per_actor, 1.0)))
    if options.threads_per_actor:
        threads = options.threads_per_actor
    elif gpa > 0:
        threads = max(1, round(options.cpus_per_actor))
    else:
        # CPU inference: the actors share the machine's cores between them (decode tasks are
        # light next to the model), capped where intra-op scaling flattens out.
        threads = max(1, min(8, int(cpus // actors)))
    return ActorPlan(actors=actors, num_cpus=options.cpus_per_actor, num_gpus=gpa, threads=threads)
