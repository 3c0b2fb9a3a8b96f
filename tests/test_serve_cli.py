"""``voxray serve`` as a user runs it: the shipped config on this 2-CPU machine becomes healthy,
the official openai client works through it, SIGTERM drains; an impossible config fails fast
with a message naming every deployment (and so does ``build_app``, as ``serve run`` calls it)."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import pytest
import yaml
from net import free_port

from voxray.audio import encode_audio
from voxray.testing import build_ctc_model, synth_speechlike

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
VOXRAY = [sys.executable, "-m", "voxray.cli"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    return build_ctc_model(str(tmp_path_factory.mktemp("cli") / "ko-cli"), "tiny", seed=4)


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "VOXRAY_API_KEY")}
    env.update(extra)
    return env


@pytest.fixture()
def ray_tmp():
    path = tempfile.mkdtemp(prefix="vxs-", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_build_app_fails_fast_when_replicas_cannot_be_placed(ray_cluster):
    from voxray.deployments.app import build_app
    from voxray.deployments.placement import UnschedulableError

    start = time.monotonic()
    with pytest.raises(UnschedulableError) as info:
        build_app({"asr_deployment": {"num_cpus": 64}, "tts_deployment": {"num_gpus": 1, "max_batch_size": 1,
                                                                           "max_ongoing_requests": 4},
                   "startup_timeout_s": 3})
    assert time.monotonic() - start < 30
    msg = info.value.message
    for needle in ("ASR 1 x {CPU: 64}", "Embed 1 x {CPU: 1}", "TTS 1 x {CPU: 1, GPU: 1}", "Ingress 1 x {CPU: 0.5}",
                   "the cluster has {CPU: 2}"):
        assert needle in msg, msg


def test_cli_fails_fast_on_an_unschedulable_config(model_dir, tmp_path, ray_tmp):
    shipped = yaml.safe_load((ROOT / "deployments" / "serve.yaml").read_text())
    shipped["applications"][0]["args"]["asr_deployment"]["num_cpus"] = 4  # pinned: more than this machine
    cfg = tmp_path / "serve.yaml"
    cfg.write_text(yaml.safe_dump(shipped))
    start = time.monotonic()
    proc = subprocess.run(
        [*VOXRAY, "serve", "--config", str(cfg), "--asr-model", model_dir, "--embed-model", model_dir,
         "--num-cpus", "2", "--port", str(free_port())],
        cwd=ROOT, env=_env(RAY_TMPDIR=ray_tmp), capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode != 0
    assert time.monotonic() - start < 120
    err = [line for line in proc.stderr.splitlines() if line.startswith("voxray: error:")]
    assert len(err) == 1, proc.stderr[-3000:]
    for needle in ("ASR 1 x {CPU: 4}", "Embed 1 x", "TTS 1 x", "RealtimeTranscription 1 x", "Ingress 1 x",
                   "the cluster has {CPU: 2}"):
        assert needle in err[0], err[0]
    assert "Traceback" not in proc.stderr


async def _realtime_hello(url: str, key: str) -> tuple[str, int]:
    """The first event of a keyed session, and the close code of an unkeyed one."""
    import json

    import websockets

    async with websockets.connect(url, additional_headers={"Authorization": f"Bearer {key}"}, open_timeout=60) as ws:
        first = json.loads(await asyncio.wait_for(ws.recv(), 60))["type"]
    async with websockets.connect(url, open_timeout=60) as ws:
        with pytest.raises(websockets.ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 60)
        return first, ws.close_code


def test_cli_shipped_defaults_healthy_openai_and_sigterm_drains(model_dir, ray_tmp):
    import openai

    port = free_port()
    key = "cli-test-key-4711"
    proc = subprocess.Popen(
        [*VOXRAY, "serve", "--asr-model", model_dir, "--embed-model", model_dir, "--port", str(port)],
        cwd=ROOT, env=_env(RAY_TMPDIR=ray_tmp, VOXRAY_API_KEY=key), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True,
    )
    lines: list[str] = []
    ready = threading.Event()

    def reader() -> None:
        for line in proc.stdout:
            lines.append(line)
            if line.strip().startswith("try: curl"):  # printed right after "voxray serving on URL"
                ready.set()

    threading.Thread(target=reader, daemon=True).start()
    try:
        assert ready.wait(420), "".join(lines)[-4000:]
        base = f"http://127.0.0.1:{port}"
        assert any(line.startswith(f"voxray serving on {base}") for line in lines)
        assert httpx.get(f"{base}/v1/models").status_code == 401  # the key turned auth on
        client = openai.OpenAI(base_url=f"{base}/v1", api_key=key)
        clip = encode_audio(synth_speechlike(1.5, seed=7), 16000, "wav")
        text = client.audio.transcriptions.create(model="whisper-1", file=("a.wav", clip)).text
        assert isinstance(text, str)
        speech = client.audio.speech.create(model="tts-1", voice="jf_alpha", input="Hello.", response_format="wav")
        assert speech.content[:4] == b"RIFF"
        assert {m.id for m in client.models.list().data} >= {"ko-cli", "whisper-1", "tts-1"}
        # the realtime application came up beside it, from the same config and behind the same key
        assert any(f"realtime ASR on ws://127.0.0.1:{port}/v1/realtime" in line for line in lines)
        assert asyncio.run(_realtime_hello(f"ws://127.0.0.1:{port}/v1/realtime?intent=transcription", key)) == (
            "transcription_session.created", 1008)

        # an in-flight stream, then SIGTERM: it must finish, then the process stops cleanly
        long_text = " ".join(f"Sentence {i} of an answer that is still being spoken." for i in range(3))
        got: dict[str, object] = {}

        def stream() -> None:
            got["bytes"] = 0
            try:
                with httpx.stream("POST", f"{base}/v1/audio/speech", timeout=300,
                                  headers={"Authorization": f"Bearer {key}"},
                                  json={"input": long_text, "response_format": "pcm"}) as r:
                    got["status"] = r.status_code
                    for c in r.iter_bytes():
                        got["bytes"] += len(c)
            except httpx.HTTPError as exc:  # a cut stream: reported by the assertion below
                got["error"] = repr(exc)

        t = threading.Thread(target=stream)
        t.start()
        time.sleep(1.0)
        proc.send_signal(signal.SIGTERM)
        t.join(300)
        assert proc.wait(180) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    out = "".join(lines)
    assert got.get("status") == 200 and got.get("bytes", 0) > 24000 * 2 * 3, (got, out[-3000:])  # not cut
    assert "drained and stopped" in out
    assert "SIGTERM received at" not in out and "Aborted" not in out and "Traceback" not in out
    assert key not in out
