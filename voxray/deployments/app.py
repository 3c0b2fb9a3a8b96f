"""The one typed entry point of the Serve application (``import_path`` in the Serve config).

``serve run deployments/serve.yaml``, ``voxray serve`` and the RayService all call
:func:`build_app` with the same ``args`` block, parsed strictly into :class:`ServeAppConfig`.
Before binding anything it checks that the minimum replicas can be placed on the cluster (waiting
up to ``startup_timeout_s`` for an autoscaler), so an impossible config fails with a message
instead of waiting forever. Secrets never enter the application: the ingress reads the API key
from its own node's environment or a file.
"""

from __future__ import annotations

from typing import Any

from voxray.deployments.config import DEFAULT_INGRESS_CPUS, ServeAppConfig
from voxray.deployments.placement import check_placeable


def build_app(args: dict[str, Any] | ServeAppConfig | None = None, *, check: bool = True) -> Any:
    """Bind the enabled model deployments and the ingress into a Serve application."""
    from voxray.deployments.ingress import make_ingress
    from voxray.deployments.replicas import ASRDeployment, EmbedDeployment, TTSDeployment

    config = args if isinstance(args, ServeAppConfig) else ServeAppConfig(**(args or {}))
    if check:
        check_placeable(config, wait_s=config.startup_timeout_s, realtime=False)  # its own app checks itself
    classes = {"asr": ASRDeployment, "embed": EmbedDeployment, "tts": TTSDeployment}
    options = {"asr": config.asr, "embed": config.embed, "tts": config.tts}
    handles: dict[str, Any] = {
        kind: classes[kind].options(**dep.serve_options()).bind(options[kind].model_dump(), dep.model_dump())
        for kind, dep in config.model_deployments().items()
    }
    ing = config.ingress
    ingress = make_ingress(config).options(
        ray_actor_options=ing.actor_options(DEFAULT_INGRESS_CPUS),
        max_ongoing_requests=ing.max_ongoing_requests,
        graceful_shutdown_timeout_s=ing.graceful_shutdown_timeout_s,
    )
    return ingress.bind(config.model_dump(), **handles)
