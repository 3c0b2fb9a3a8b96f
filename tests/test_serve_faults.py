"""Faults on real Serve: an ASR replica SIGKILLed under load, and ASR back-pressure.

Two small apps share one Serve instance: ``faults`` (room to queue, for the kill) and ``tight``
(one request at a time, one queued, for overload)."""

from __future__ import annotations

import concurrent.futures as cf
import os
import signal
import threading
import time

import httpx
import pytest
from net import free_port, serve_on, wait_healthy

from voxray.audio import encode_audio
from voxray.testing import build_ctc_model, synth_speechlike

pytestmark = pytest.mark.slow


def _config(model_dir: str, ongoing: int, queued: int) -> dict:
    dep = {"num_cpus": 0.1, "autoscaling": {"min_replicas": 1, "max_replicas": 1}, "max_batch_size": 1,
           "max_ongoing_requests": ongoing, "max_queued_requests": queued}
    return {
        "asr": {"model": model_dir}, "asr_deployment": dep,
        "embed_deployment": {"enabled": False}, "tts_deployment": {"enabled": False},
        "ingress": {"num_cpus": 0.1},
    }


@pytest.fixture(scope="module")
def apps(ray_cluster, tmp_path_factory):
    from ray import serve

    from voxray.deployments.app import build_app

    model_dir = build_ctc_model(str(tmp_path_factory.mktemp("faults-model")), "tiny", seed=3)
    port = free_port()
    with serve_on(port) as base:
        serve._run(build_app(_config(model_dir, 8, 64)), name="faults", route_prefix="/faults", _blocking=False)
        serve.run(build_app(_config(model_dir, 1, 1)), name="tight", route_prefix="/tight")
        wait_healthy(f"{base}/faults")
        wait_healthy(f"{base}/tight")
        yield base


CLIP = encode_audio(synth_speechlike(6.0, seed=2), 16000, "flac")


def _post(url: str) -> httpx.Response:
    return httpx.post(f"{url}/v1/audio/transcriptions", files={"file": ("x.flac", CLIP)}, timeout=180)


def _counter(url: str, name: str, **labels: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=60).text
    sel = ",".join(f'{k}="{v}"' for k, v in labels.items())
    line = next((x for x in text.splitlines() if x.startswith(f"{name}{{{sel}}}")), None)
    return float(line.split()[-1]) if line else 0.0


def test_asr_overload_gives_503_with_retry_after(apps):
    url = f"{apps}/tight"
    with cf.ThreadPoolExecutor(24) as pool:
        responses = list(pool.map(lambda _: _post(url), range(48)))
    codes = [r.status_code for r in responses]
    assert 200 in codes and 503 in codes and set(codes) <= {200, 503}, codes
    busy = next(r for r in responses if r.status_code == 503)
    assert busy.headers.get("retry-after") and "overloaded" in busy.json()["error"]["message"]


def test_replica_killed_under_load_fails_at_most_its_in_flight_requests(apps):
    """SIGKILL the ASR replica under load. A tiny model's forward is short next to the ingress's
    decode, so a kill can land while no request is inside the replica: then it is repeated (up to
    three kills) until the ingress has seen in-flight requests die; every bound holds per kill."""
    url = f"{apps}/faults"
    clients, kills = 4, 0
    results: list[tuple[float, int]] = []
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            r = _post(url)
            results.append((time.monotonic(), r.status_code))

    def deaths_seen() -> float:
        return sum(_counter(url, "voxray_replica_failures_total", deployment="asr", outcome=o)
                   for o in ("retried", "failed"))

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    pids = []
    try:
        while kills < 3 and (kills == 0 or deaths_seen() < 1):
            old_pid = int(_counter(url, "voxray_deployment_batch", deployment="asr", stat="pid"))
            assert old_pid > 0 and old_pid not in pids
            pids.append(old_pid)
            time.sleep(4)
            killed_at = time.monotonic()
            os.kill(old_pid, signal.SIGKILL)  # a replica process this test session's cluster started
            kills += 1
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:  # until the replacement has answered for a while
                if sum(1 for t, c in results if t > killed_at + 1 and c == 200) >= 2 * clients:
                    break
                time.sleep(0.5)
            assert sum(1 for t, c in results if t > killed_at and c == 200) >= 2 * clients  # it recovered
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=180)
    failed = [c for _, c in results if c != 200]
    assert len(failed) <= clients * kills, failed  # at most the requests in flight at each kill
    assert set(failed) <= {503}  # each with Retry-After, never a 500
    new_pid = int(_counter(url, "voxray_deployment_batch", deployment="asr", stat="pid"))
    assert new_pid not in (0, *pids)
    seen = deaths_seen()
    retried = _counter(url, "voxray_replica_failures_total", deployment="asr", outcome="retried")
    print(f"\nreplica kills: {kills}, {len(results)} requests by {clients} clients, {len(failed)} failed {failed}, "
          f"{seen:g} in-flight deaths seen by the ingress ({retried:g} retried), pids {pids} -> {new_pid}")
    assert seen >= 1  # the ingress saw in-flight requests die, and counted them
