"""The one typed entry point of the Serve application (``import_path`` in the Serve config).

``serve run deployments/serve.yaml``, ``voxray serve`` and the RayService all call
:func:`build_app` with the same ``args`` block, parsed strictly into :class:`ServeAppConfig`.
"""

from __future__ import annotations

import os
from typing import Any

from voxray.deployments.config import ServeAppConfig


def build_app(args: dict[str, Any] | ServeAppConfig | None = None) -> Any:
    """Bind the enabled model deployments and the ingress into a Serve application."""
    from voxray.deployments.ingress import make_ingress
    from voxray.deployments.replicas import ASRDeployment, EmbedDeployment, TTSDeployment

    config = args if isinstance(args, ServeAppConfig) else ServeAppConfig(**(args or {}))
    handles: dict[str, Any] = {}
    for kind, cls, options, dep in (
        ("asr", ASRDeployment, config.asr, config.asr_deployment),
        ("embed", EmbedDeployment, config.embed, config.embed_deployment),
        ("tts", TTSDeployment, config.tts, config.tts_deployment),
    ):
        if dep.enabled:
            handles[kind] = cls.options(**dep.serve_options()).bind(options.model_dump(), dep.model_dump())
    actor_options: dict[str, Any] = {"num_cpus": config.ingress.num_cpus}
    key = os.environ.get(config.ingress.api_key_env)
    if key:  # the ingress replicas check the same key the operator started the app with
        actor_options["runtime_env"] = {"env_vars": {config.ingress.api_key_env: key}}
    ingress = make_ingress(config).options(
        ray_actor_options=actor_options, max_ongoing_requests=config.ingress.max_ongoing_requests
    )
    return ingress.bind(config.model_dump(), **handles)
