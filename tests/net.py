"""Localhost helpers for the tests that start a real Serve HTTP proxy."""

from __future__ import annotations

import socket
import time

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
