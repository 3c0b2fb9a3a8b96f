"""Real Ray Serve over HTTP: the official openai client, dynamic batching, error paths, auth."""

from __future__ import annotations

import concurrent.futures as cf
import io
import time

import httpx
import numpy as np
import pytest
from net import free_port, wait_healthy

from voxray.audio import decode_audio, encode_audio
from voxray.testing import build_ctc_model, synth_speechlike

pytestmark = pytest.mark.slow


def _config(model_dir: str, **ingress) -> dict:
    small = {"num_cpus": 0.1, "autoscaling": {"min_replicas": 1, "max_replicas": 1}}
    return {
        "asr": {"model": model_dir},
        "asr_deployment": {**small, "max_batch_size": 16, "max_batch_seconds": 60, "batch_wait_timeout_s": 0.2},
        "embed": {"model": model_dir, "layer": -1, "pooling": "mean"},
        "embed_deployment": {**small},
        "tts": {"threads": 1},
        "tts_deployment": {**small, "max_batch_size": 1, "max_ongoing_requests": 1, "max_queued_requests": 1},
        "ingress": {"num_cpus": 0.1, "max_upload_mb": 0.5, "max_text_chars": 400, **ingress},
    }


@pytest.fixture(scope="module")
def server(ray_cluster, tmp_path_factory):
    from ray import serve

    from voxray.deployments.app import build_app

    model_dir = build_ctc_model(str(tmp_path_factory.mktemp("serve-model")), "tiny", seed=9)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app(_config(model_dir)), name="voxray", route_prefix="/")
    base = f"http://127.0.0.1:{port}"
    wait_healthy(base)
    yield base, model_dir, port
    serve.shutdown()


def _wav(seconds: float, seed: int = 0, sr: int = 16000) -> bytes:
    return encode_audio(synth_speechlike(seconds, sr, seed=seed), sr, "wav")


def test_openai_client_transcription_speech_and_models(server):
    import openai

    from voxray.asr import ASRRunner
    from voxray.asr.config import ASROptions

    base, model_dir, _ = server
    client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused")
    data = _wav(2.0, seed=1)
    got = client.audio.transcriptions.create(model="whisper-1", file=("a.wav", data, "audio/wav"))
    expected = ASRRunner(ASROptions(model=model_dir)).transcribe([decode_audio(data)])[0].text
    assert got.text == expected and got.text

    verbose = client.audio.transcriptions.create(
        model="whisper-1", file=("a.wav", data, "audio/wav"), response_format="verbose_json",
        timestamp_granularities=["word"],
    )
    assert verbose.text == expected and verbose.words and verbose.duration == pytest.approx(2.0)
    srt = client.audio.transcriptions.create(model="whisper-1", file=("a.wav", data), response_format="srt")
    assert "-->" in srt

    with client.audio.speech.with_streaming_response.create(
        model="tts-1", voice="jf_alpha", input="Hello from voxray. This is a streamed answer.",
        response_format="wav",
    ) as response:
        audio_bytes = b"".join(response.iter_bytes())
    import soundfile as sf

    audio, sr = sf.read(io.BytesIO(audio_bytes), dtype="float32")
    assert sr == 24000 and len(audio) / sr > 1.0 and np.abs(audio).max() > 0.05

    ids = {m.id for m in client.models.list().data}
    assert {"whisper-1", "tts-1", model_dir} <= ids


def test_speech_streams_first_bytes_before_synthesis_ends(server):
    base = server[0]
    text = " ".join(f"This is sentence number {i} of a long answer that takes a while to say." for i in range(4))
    start = time.perf_counter()
    with httpx.stream("POST", f"{base}/v1/audio/speech", timeout=120,
                      json={"input": text, "voice": "jm_kumo", "response_format": "pcm"}) as r:
        assert r.status_code == 200
        arrivals = []
        for chunk in r.iter_bytes():
            if chunk:
                arrivals.append(time.perf_counter() - start)
    assert len(arrivals) >= 2
    assert arrivals[0] < 0.75 * arrivals[-1]  # first audio left well before the last chunk


def test_dynamic_batching_and_parity(server):
    base = server[0]
    clips = [_wav(1.0 + 0.1 * (i % 5), seed=100 + i) for i in range(16)]

    def post(data: bytes) -> str:
        r = httpx.post(f"{base}/v1/audio/transcriptions", files={"file": ("x.wav", data)}, timeout=120)
        assert r.status_code == 200, r.text
        return r.json()["text"]

    singles = [post(c) for c in clips[:4]]  # sequential: batches of one
    with cf.ThreadPoolExecutor(16) as pool:
        concurrent = list(pool.map(post, clips))
    assert concurrent[:4] == singles
    metrics = httpx.get(f"{base}/metrics", timeout=30).text
    key = 'voxray_deployment_batch{deployment="asr",stat="max_batch"}'
    line = next(x for x in metrics.splitlines() if x.startswith(key))
    assert float(line.split()[-1]) > 1
    assert "voxray_requests_total" in metrics and "voxray_request_latency_seconds" in metrics


def test_embeddings_endpoint(server):
    base = server[0]
    data = encode_audio(synth_speechlike(1.0), 16000, "flac")
    r = httpx.post(f"{base}/v1/audio/embeddings", files={"file": ("x.flac", data)})
    assert r.status_code == 200
    assert len(r.json()["data"][0]["embedding"]) == 32  # tiny model's hidden size


def _asr(data: bytes, **form: str):
    return lambda b: httpx.post(f"{b}/v1/audio/transcriptions", files={"file": ("x.wav", data)}, data=form)


def _speech(**body: object):
    return lambda b: httpx.post(f"{b}/v1/audio/speech", json=body)


ERROR_CASES = {
    "undecodable": (_asr(b"not audio" * 100), 400, "decode"),
    "too-large": (_asr(_wav(20.0)), 413, "limit"),
    "unknown-asr-model": (_asr(_wav(1.0), model="nope"), 404, "whisper-1"),
    "bad-format": (_asr(_wav(1.0), response_format="xml"), 400, "response_format"),
    "unknown-voice": (_speech(input="hi", voice="nobody"), 400, "jf_alpha"),
    "text-too-long": (_speech(input="x" * 500), 400, "limit"),
    "empty-text": (_speech(input="   "), 400, "empty"),
    "unknown-tts-model": (_speech(input="hi", model="gpt-4o-mini-tts"), 404, "tts-1"),
    "bad-speech-format": (_speech(input="hi", response_format="aac"), 400, "pcm"),
    "missing-input": (_speech(voice="jf_alpha"), 400, "input"),
}


@pytest.mark.parametrize("call,status,needle", ERROR_CASES.values(), ids=ERROR_CASES.keys())
def test_error_paths(server, call, status, needle):
    r = call(server[0])
    assert r.status_code == status, r.text
    assert needle in r.json()["error"]["message"]
    assert httpx.get(f"{server[0]}/healthz").status_code == 200  # the server survives


def test_overload_gives_503_with_retry_after(server):
    base = server[0]
    text = "A sentence long enough to keep the single TTS replica busy for a little while, again and again."

    def post(_: int) -> httpx.Response:
        return httpx.post(f"{base}/v1/audio/speech", json={"input": text, "response_format": "wav"}, timeout=120)

    with cf.ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(post, range(8)))
    codes = [r.status_code for r in responses]
    assert 200 in codes and 503 in codes, codes
    busy = next(r for r in responses if r.status_code == 503)
    assert busy.headers.get("retry-after") and "overloaded" in busy.json()["error"]["message"]


def test_auth_when_api_key_is_set(server, monkeypatch):
    from ray import serve

    from voxray.deployments.app import build_app

    base, model_dir, port = server
    monkeypatch.setenv("VOXRAY_API_KEY", "s3cret")
    cfg = _config(model_dir)
    cfg["tts_deployment"]["enabled"] = False
    cfg["embed_deployment"]["enabled"] = False
    serve.run(build_app(cfg), name="secure", route_prefix="/secure")
    url = f"{base}/secure"
    assert httpx.get(f"{url}/healthz").status_code == 200
    denied = httpx.get(f"{url}/v1/models")
    assert denied.status_code == 401 and "API key" in denied.json()["error"]["message"]
    ok = httpx.get(f"{url}/v1/models", headers={"Authorization": "Bearer s3cret"})
    assert ok.status_code == 200 and ok.json()["data"]
    assert httpx.get(f"{base}/v1/models").status_code == 200  # the open app is unaffected
    serve.delete("secure")
