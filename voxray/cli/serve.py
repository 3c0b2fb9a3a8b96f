"""``voxray serve``: start the Serve application from a config file, flags overriding it.

On a local cluster it starts itself, replicas whose ``num_cpus`` is unset get a fitted share of
the machine; any cluster gets a bounded wait for the replicas, then a message naming each
deployment that did not start. It binds 127.0.0.1 unless told otherwise, and SIGTERM or Ctrl-C
drain in-flight requests (bounded), stop what it started, print one line and exit 0.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import signal
import sys
import threading
import time
from typing import Any

from pydantic import Field

from voxray.cli.options import add_options, collect_options, deep_merge
from voxray.config import Options
from voxray.deployments.config import REALTIME_APP, REALTIME_ROUTE

DEFAULT_CONFIG = os.path.join("deployments", "serve.yaml")
APP_NAME = "voxray"
logger = logging.getLogger("voxray.serve")


class ServeCommandOptions(Options):
    """How ``voxray serve`` runs the application (the application itself is the config file)."""

    config: str | None = Field(None, description=f"Serve config YAML (default {DEFAULT_CONFIG}; its first "
                                                  "application's args are used)")
    host: str = Field("127.0.0.1", description="HTTP host to bind; 0.0.0.0 exposes it to the network")
    port: int | None = Field(None, ge=1, le=65535, description="HTTP port (default from the config, else 8000)")
    address: str | None = Field(None, description="Ray cluster address (default: $RAY_ADDRESS, else local)")
    num_cpus: int | None = Field(None, ge=1, description="CPUs of the local cluster voxray starts (default: all)")
    startup_timeout_s: float | None = Field(
        None, gt=0, description="fail when the replicas are not running after this long (default from the config: 120)"
    )
    drain_timeout_s: float = Field(30.0, ge=0, description="on SIGTERM/Ctrl-C, wait this long for in-flight requests")
    api_key_file: str | None = Field(None, description="file with the bearer token (else $VOXRAY_API_KEY)")


class _Stop(BaseException):
    """Raised by the SIGTERM/SIGINT handler in the main thread."""


def load_serve_config(path: str | None) -> tuple[dict[str, Any], dict[str, Any], str | None]:
    """(http_options, app args, proxy_location) from a Serve config file (its first application's
    args: the realtime application shares them), or defaults."""
    from voxray.config import load_yaml

    if path is None:
        if not os.path.exists(DEFAULT_CONFIG):
            return {}, {}, None
        path = DEFAULT_CONFIG
    if not os.path.exists(path):
        raise SystemExit(f"voxray serve: config file not found: {path}")
    data = load_yaml(path)
    apps = data.get("applications") or [{}]
    return dict(data.get("http_options") or {}), dict(apps[0].get("args") or {}), data.get("proxy_location")


def _is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _raise_stop(signum: int, _frame: Any) -> None:
    raise _Stop(signal.Signals(signum).name)


def _drain(timeout_s: float, apps: tuple[str, ...] = (APP_NAME, REALTIME_APP)) -> None:
    """Delete the apps: replicas finish their in-flight requests (each within its
    graceful_shutdown_timeout_s) before they stop. Gives up after ``timeout_s``; Serve itself is
    left to ``ray.shutdown`` (local) or to the cluster's other applications (remote)."""
    from ray import serve

    done = threading.Event()

    def stop() -> None:
        try:
            for app in apps:
                try:
                    serve.delete(app)
                except Exception as exc:  # already gone
                    logger.debug("serve delete %s: %s", app, exc)
        finally:
            done.set()

    threading.Thread(target=stop, daemon=True, name="voxray-drain").start()
    if not done.wait(timeout_s):
        logger.warning("in-flight requests did not finish within %.0f s; stopping anyway", timeout_s)


def _wait_http(url: str, timeout_s: float) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)


def _cmd_serve(args: argparse.Namespace) -> int:
    import ray
    from ray import serve

    from voxray.cluster import init_ray
    from voxray.config import RayOptions
    from voxray.deployments.app import build_app
    from voxray.deployments.config import ServeAppConfig
    from voxray.deployments.placement import check_placeable, fit_to_cluster, wait_running
    from voxray.deployments.realtime import build_realtime_app

    logging.getLogger("ray.serve").setLevel(logging.WARNING)  # voxray says what matters, once
    cmd = ServeCommandOptions(**collect_options(args, "serve__"))
    http, app_args, proxy_location = load_serve_config(cmd.config)
    overrides: dict[str, Any] = {}
    for kind, model in (("asr", args.asr_model), ("embed", args.embed_model), ("tts", args.tts_model)):
        if model:
            overrides[kind] = {"model": model}
    if cmd.startup_timeout_s:
        overrides["startup_timeout_s"] = cmd.startup_timeout_s
    if cmd.api_key_file:
        overrides["ingress"] = {"api_key_file": os.path.abspath(cmd.api_key_file)}
    config = ServeAppConfig(**deep_merge(app_args, overrides))
    # A key where voxray serve starts means auth on: an ingress replica that cannot see it
    # (a remote node without the env var) refuses to start rather than serve without auth.
    if config.ingress.api_key():
        config = config.model_copy(update={"ingress": config.ingress.model_copy(update={"auth_required": True})})
    elif not _is_loopback(cmd.host):
        print(f"voxray serve: warning: binding {cmd.host} with auth off: anyone who can reach this port can use "
              f"it; set ${config.ingress.api_key_env} or --api-key-file", file=sys.stderr)
    http = {**http, "host": cmd.host, "port": cmd.port or http.get("port", 8000)}

    local = not (cmd.address or os.environ.get("RAY_ADDRESS"))
    started = init_ray(RayOptions(address=cmd.address, num_cpus=cmd.num_cpus))
    previous = {s: signal.signal(s, _raise_stop) for s in (signal.SIGTERM, signal.SIGINT)}  # after ray.init
    deployed = False
    try:
        if local:
            config = fit_to_cluster(config, float(ray.cluster_resources().get("CPU", 0)))
            check_placeable(config, wait_s=0)  # nothing can add nodes to a cluster voxray just started
        else:
            check_placeable(config, wait_s=config.startup_timeout_s)
        serve.start(http_options=http, **({"proxy_location": proxy_location} if proxy_location else {}))
        deployed = True
        serve._run(build_app(config, check=False), _blocking=False, name=APP_NAME, route_prefix="/")
        realtime = config.realtime_enabled
        if realtime:  # the same config: the ASR model, streamed over WebSocket
            serve._run(build_realtime_app(config), _blocking=False, name=REALTIME_APP, route_prefix=REALTIME_ROUTE)
        deadline = time.monotonic() + config.startup_timeout_s
        for app in (APP_NAME, REALTIME_APP) if realtime else (APP_NAME,):
            wait_running(app, config, max(1.0, deadline - time.monotonic()))
        shown = "127.0.0.1" if http["host"] in ("0.0.0.0", "::") else http["host"]
        url = f"http://{shown}:{http['port']}"
        _wait_http(url, 30)
        auth = ' -H "Authorization: Bearer $VOXRAY_API_KEY"' if config.ingress.auth_required else ""
        live = f"; realtime ASR on ws://{shown}:{http['port']}{REALTIME_ROUTE}" if realtime else ""
        print(f"voxray serving on {url} (OpenAI-compatible /v1/audio/*{live}); SIGTERM or Ctrl-C stops\n"
              f"  try: curl -s{auth} {url}/v1/audio/speech -H 'Content-Type: application/json' "
              f"-d '{{\"input\": \"Hello from voxray.\", \"response_format\": \"wav\"}}' -o hello.wav", flush=True)
        while True:
            time.sleep(3600)
    except _Stop as stop:
        t0 = time.monotonic()
        _drain(cmd.drain_timeout_s)
        print(f"voxray serve: {stop} received; drained and stopped in {time.monotonic() - t0:.1f} s", flush=True)
        deployed = False
        return 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, signal.SIG_IGN if sig == signal.SIGTERM else handler)
        if deployed:
            _drain(10)
        if started and local:
            ray.shutdown()


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "serve", help="serve ASR, embeddings and TTS over HTTP (Ray Serve, OpenAI-compatible)",
        description="Start the Serve app from --config (default deployments/serve.yaml); flags override it.",
    )
    p.add_argument("--asr-model", help="ASR model (hub id or local dir)")
    p.add_argument("--embed-model", help="embedding model (hub id or local dir)")
    p.add_argument("--tts-model", help="Kokoro ONNX model ('embedded', a file, or a hub id)")
    add_options(p, ServeCommandOptions, prefix="serve__")
    p.set_defaults(_handler=_cmd_serve)
