"""Localhost helpers for the tests that start a real Serve HTTP proxy."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(base: str, timeout_s: float = 120) -> None:
    """Poll ``/healthz`` until the app answers 200 (Serve starts replicas asynchronously)."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        try:
            if httpx.get(f"{base}/healthz", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{base}/healthz did not answer 200 within {timeout_s:g} s")


@contextlib.contextmanager
def serve_on(port: int) -> Iterator[str]:
    """Start Serve's proxy on ``port`` and always shut Serve down afterwards, even when setup fails.

    A module that leaves Serve running breaks every later one: ``serve.start`` with a new port is then
    ignored (the old proxy keeps its port), and the leftover replicas hold the session cluster's CPUs,
    so the next Ray Data job waits for them until its no-progress timeout.
    """
    from ray import serve

    serve.shutdown()  # a previous module's leftovers must not decide this one's outcome
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
