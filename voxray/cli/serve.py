"""``voxray serve``: start the Serve application from a config file, flags overriding it."""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

from voxray.cli.options import deep_merge

DEFAULT_CONFIG = os.path.join("deployments", "serve.yaml")


def load_serve_config(path: str | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """(http_options, app args) from a Serve config file (first application), or defaults."""
    from voxray.config import load_yaml

    if path is None:
        if not os.path.exists(DEFAULT_CONFIG):
            return {}, {}
        path = DEFAULT_CONFIG
    data = load_yaml(path)
    apps = data.get("applications") or [{}]
    return dict(data.get("http_options") or {}), dict(apps[0].get("args") or {})


def _cmd_serve(args: argparse.Namespace) -> int:
    from ray import serve

    from voxray.cluster import init_ray
    from voxray.config import RayOptions
    from voxray.deployments.app import build_app
    from voxray.deployments.config import ServeAppConfig

    http, app_args = load_serve_config(args.config)
    overrides: dict[str, Any] = {}
    for kind, model in (("asr", args.asr_model), ("embed", args.embed_model), ("tts", args.tts_model)):
        if model:
            overrides[kind] = {"model": model}
    config = ServeAppConfig(**deep_merge(app_args, overrides))
    http = {**http, **{k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}}
    init_ray(RayOptions(address=args.address))
    serve.start(http_options=http)
    serve.run(build_app(config), name="voxray", route_prefix="/")
    host, port = http.get("host", "127.0.0.1"), http.get("port", 8000)
    print(f"voxray serving on http://{host}:{port} (OpenAI-compatible /v1/audio/*); Ctrl-C stops", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        serve.shutdown()
    return 0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "serve", help="serve ASR, embeddings and TTS over HTTP (Ray Serve, OpenAI-compatible)",
        description="Start the Serve app from --config (default deployments/serve.yaml); flags override it.",
    )
    p.add_argument("--config", help="Serve config YAML (its first application's args are used)")
    p.add_argument("--asr-model", help="ASR model (hub id or local dir)")
    p.add_argument("--embed-model", help="embedding model (hub id or local dir)")
    p.add_argument("--tts-model", help="Kokoro ONNX model ('embedded', a file, or a hub id)")
    p.add_argument("--host", help="HTTP host (default from the config, else 127.0.0.1)")
    p.add_argument("--port", type=int, help="HTTP port (default from the config, else 8000)")
    p.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS, else local)")
    p.set_defaults(_handler=_cmd_serve)
