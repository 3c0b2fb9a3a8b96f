"""Real Ray Serve over HTTP: the official openai client, dynamic batching, the honest OpenAI
surface, limits before work, hostile input, client disconnects, health probes, metrics, auth.

One application per module (``server``); tests that need other limits deploy a second small app
beside it. Everything goes through the real proxy on a real port.
"""

from __future__ import annotations

import base64
import concurrent.futures as cf
import io
import json
import re
import socket
import time

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from net import free_port, serve_on, wait_healthy
from test_serve_units import HOSTILE, flac_with_unknown_length

from voxray.audio import decode_audio, encode_audio
from voxray.testing import build_ctc_model, synth_speechlike

pytestmark = pytest.mark.slow

LONG_TEXT = " ".join(f"This is sentence number {i} of a long answer that takes a while to say." for i in range(24))


def _config(model_dir: str, **ingress) -> dict:
    small = {"num_cpus": 0.1, "autoscaling": {"min_replicas": 1, "max_replicas": 1},
             "health_check_period_s": 2, "probe_interval_s": 2}
    return {
        "asr": {"model": model_dir},
        "asr_deployment": {**small, "max_batch_size": 16, "max_ongoing_requests": 32, "max_batch_seconds": 60,
                           "batch_wait_timeout_s": 0.2},
        "embed": {"model": model_dir, "layer": -1, "pooling": "mean"},
        "embed_deployment": {**small, "max_batch_size": 4, "max_ongoing_requests": 4, "max_queued_requests": 2},
        "tts": {"threads": 1, "max_tokens": 100},  # small chunks: many per long text
        "tts_deployment": {**small, "max_batch_size": 1, "max_ongoing_requests": 1, "max_queued_requests": 1},
        "ingress": {"num_cpus": 0.1, "max_upload_mb": 0.5, "max_audio_s": 30, "max_text_chars": 4000, **ingress},
    }


@pytest.fixture(scope="module")
def server(ray_cluster, tmp_path_factory):
    from ray import serve

    from voxray.deployments.app import build_app

    model_dir = build_ctc_model(str(tmp_path_factory.mktemp("serve-model") / "ko-tiny"), "tiny", seed=9)
    port = free_port()
    with serve_on(port) as base:
        serve.run(build_app(_config(model_dir)), name="voxray", route_prefix="/")
        wait_healthy(base)
        yield base, model_dir, port


def _wav(seconds: float, seed: int = 0, sr: int = 16000) -> bytes:
    return encode_audio(synth_speechlike(seconds, sr, seed=seed), sr, "wav")


def _metric(base: str, deployment: str, stat: str) -> float:
    text = httpx.get(f"{base}/metrics", timeout=60).text
    key = f'voxray_deployment_batch{{deployment="{deployment}",stat="{stat}"}}'
    return float(next(x for x in text.splitlines() if x.startswith(key)).split()[-1])


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
        timestamp_granularities=["word"], language="ko",
    )
    assert verbose.text == expected and verbose.words and verbose.duration == pytest.approx(2.0)
    assert verbose.language == "korean"  # the model's language, not an echo of the request
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
    assert {"whisper-1", "tts-1", "ko-tiny", "kokoro-82m"} <= ids
    assert not any("/" in i and i.startswith("/") for i in ids)  # no server paths


def test_language_is_checked_against_the_model(server):
    base = server[0]
    r = httpx.post(f"{base}/v1/audio/transcriptions", files={"file": ("x.wav", _wav(1.0))},
                   data={"language": "en"}, timeout=60)
    assert r.status_code == 400 and "ko (korean)" in r.json()["error"]["message"]
    ok = httpx.post(f"{base}/v1/audio/transcriptions", files={"file": ("x.wav", _wav(1.0))},
                    data={"language": "ko", "response_format": "verbose_json"}, timeout=60)
    assert ok.status_code == 200 and ok.json()["language"] == "korean"


def test_unhonoured_fields_are_named_in_a_header(server):
    base = server[0]
    r = httpx.post(f"{base}/v1/audio/transcriptions", files={"file": ("x.wav", _wav(1.0))},
                   data={"prompt": "names: Kim", "temperature": "0.7"}, timeout=60)
    assert r.status_code == 200 and r.headers["x-voxray-ignored-fields"] == "prompt, temperature"
    plain = httpx.post(f"{base}/v1/audio/transcriptions", files={"file": ("x.wav", _wav(1.0))},
                       data={"temperature": "0"}, timeout=60)
    assert "x-voxray-ignored-fields" not in plain.headers  # greedy CTC is temperature 0
    s = httpx.post(f"{base}/v1/audio/speech", timeout=120,
                   json={"input": "Hi.", "instructions": "whisper", "response_format": "pcm", "seed": 3})
    assert s.status_code == 200 and s.headers["x-voxray-ignored-fields"] == "instructions, seed"


def test_mp3_over_http_is_one_stream(server):
    base = server[0]
    text = "One sentence first. Then a second one follows it. And a third, to make several chunks."
    r = httpx.post(f"{base}/v1/audio/speech", json={"input": text, "response_format": "mp3"}, timeout=120)
    pcm = httpx.post(f"{base}/v1/audio/speech", json={"input": text, "response_format": "pcm"}, timeout=120)
    assert r.status_code == 200 and pcm.status_code == 200
    mp3_s = len(decode_audio(r.content, 24000)) / 24000
    assert abs(mp3_s - len(pcm.content) / 2 / 24000) < 0.15  # same duration: no per-chunk gaps


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


def test_speech_as_server_sent_events_carries_the_audio_and_word_timings(server):
    """OpenAI's ``stream_format: sse`` (speech.audio.delta/done), with voxray's ``words`` per delta:
    the deltas' bytes are the same WAV stream, and every word of the text has a time inside it."""
    base = server[0]
    text = "The quiet harbour was bright. A small boat left the dock before noon."
    events = []
    with httpx.stream("POST", f"{base}/v1/audio/speech", timeout=120,
                      json={"input": text, "voice": "jf_alpha", "response_format": "wav", "stream_format": "sse"}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
    assert [e["type"] for e in events[:-1]] == ["speech.audio.delta"] * (len(events) - 1)
    assert events[-1]["type"] == "speech.audio.done" and len(events) >= 3  # header, >= 1 chunk, done
    wav = b"".join(base64.b64decode(e["audio"]) for e in events[:-1])
    import soundfile as sf

    audio, sr = sf.read(io.BytesIO(_fix_streaming_wav(wav)))
    duration = len(audio) / sr
    assert sr == 24000 and abs(duration - events[-1]["duration_s"]) < 0.01
    words = [w for e in events[:-1] for w in e["words"]]
    spoken = [re.sub(r"[^a-z]", "", w["word"].lower()) for w in words]
    assert [x for x in spoken if x] == re.sub(r"[^a-z ]", "", text.lower()).split()
    starts = [w["start"] for w in words]
    assert starts == sorted(starts) and all(w["start"] < w["end"] <= duration + 0.05 for w in words)
    assert words[-1]["end"] > 0.6 * duration  # timings span the speech, not one chunk's worth


def _fix_streaming_wav(data: bytes) -> bytes:
    """A streamed WAV's header leaves the sizes open (0xFFFFFFFF); fill them in to read it as a file."""
    import struct

    riff = struct.pack("<I", len(data) - 8)
    size = struct.pack("<I", len(data) - 44)
    return data[:4] + riff + data[8:40] + size + data[44:]


def test_client_disconnect_stops_synthesis_within_one_chunk(server):
    base = server[0]
    before = {k: _metric(base, "tts", k) for k in ("cancelled", "chunks", "chunks_after_cancel")}
    got = 0
    with httpx.stream("POST", f"{base}/v1/audio/speech", timeout=120,
                      json={"input": LONG_TEXT, "response_format": "pcm"}) as r:
        assert r.status_code == 200
        for chunk in r.iter_bytes():
            got += len(chunk)
            if got > 24000 * 2:  # a second of audio, then hang up
                break
    deadline = time.time() + 60
    while time.time() < deadline and _metric(base, "tts", "cancelled") <= before["cancelled"]:
        time.sleep(0.5)
    time.sleep(3)  # room for more chunks, were synthesis still running
    after = {k: _metric(base, "tts", k) for k in ("cancelled", "chunks", "chunks_after_cancel")}
    assert after["cancelled"] == before["cancelled"] + 1
    assert after["chunks_after_cancel"] - before["chunks_after_cancel"] <= 1
    assert after["chunks"] - before["chunks"] <= 4  # of ~15 planned chunks
    # the single-slot TTS replica is free again at once
    r = httpx.post(f"{base}/v1/audio/speech", json={"input": "Next.", "response_format": "pcm"}, timeout=60)
    assert r.status_code == 200


def test_tts_replica_peak_memory_stays_under_a_gigabyte(server):
    peak = _metric(server[0], "tts", "peak_rss_mb")  # after the long and streamed syntheses above
    assert 0 < peak < 1024, peak


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
    assert _metric(base, "asr", "max_batch") > 1
    metrics = httpx.get(f"{base}/metrics", timeout=30).text
    assert "voxray_requests_total" in metrics and "voxray_request_latency_seconds" in metrics


def test_health_checks_run_real_probes(server):
    base = server[0]
    deadline = time.time() + 60
    while time.time() < deadline:
        if all(_metric(base, d, "health_probes") >= 1 for d in ("asr", "embed", "tts")):
            return
        time.sleep(1)
    pytest.fail("health checks ran no probe through the models")


def test_embeddings_endpoint(server):
    base = server[0]
    data = encode_audio(synth_speechlike(1.0), 16000, "flac")
    r = httpx.post(f"{base}/v1/audio/embeddings", files={"file": ("x.flac", data)})
    assert r.status_code == 200
    body = r.json()
    assert len(body["data"][0]["embedding"]) == 32 and body["model"] == "ko-tiny"  # tiny model's hidden size


def _asr(data: bytes, **form: str):
    return lambda b: httpx.post(f"{b}/v1/audio/transcriptions", files={"file": ("x.wav", data)}, data=form,
                                timeout=60)


def _emb(data: bytes, **form: str):
    return lambda b: httpx.post(f"{b}/v1/audio/embeddings", files={"file": ("x.wav", data)}, data=form, timeout=60)


def _speech(**body: object):
    return lambda b: httpx.post(f"{b}/v1/audio/speech", json=body, timeout=60)


ERROR_CASES = {
    "undecodable": (_asr(b"not audio" * 100), 400, "decode"),
    "too-large": (_asr(_wav(20.0)), 413, "limit"),
    "too-long": (_asr(encode_audio(np.zeros(16000 * 40, np.float32), 16000, "flac")), 413, "30 s"),
    "unknown-asr-model": (_asr(_wav(1.0), model="nope"), 404, "whisper-1"),
    "bad-format": (_asr(_wav(1.0), response_format="xml"), 400, "response_format"),
    "bad-granularity": (_asr(_wav(1.0), **{"timestamp_granularities[]": "char"}), 400, "word"),
    "bad-temperature": (_asr(_wav(1.0), temperature="hot"), 400, "temperature"),
    "asr-empty-file": (_asr(b""), 400, "empty"),
    "emb-undecodable": (_emb(b"\x00\x01garbage" * 50), 400, "decode"),
    "emb-empty-file": (_emb(b""), 400, "empty"),
    "emb-too-large": (_emb(_wav(20.0)), 413, "limit"),
    "emb-too-long": (_emb(encode_audio(np.zeros(16000 * 40, np.float32), 16000, "flac")), 413, "30 s"),
    "emb-unknown-model": (_emb(_wav(1.0), model="nope"), 404, "ko-tiny"),
    "emb-truncated-wav": (_emb(_wav(1.0)[:2000]), 400, "truncated"),
    "emb-no-file": (lambda b: httpx.post(f"{b}/v1/audio/embeddings", data={"model": "x"}), 400, "file"),
    "unknown-voice": (_speech(input="hi", voice="nobody"), 400, "jf_alpha"),
    "text-too-long": (_speech(input="x" * 4500), 400, "limit"),
    "empty-text": (_speech(input="   "), 400, "empty"),
    "unknown-tts-model": (_speech(input="hi", model="gpt-4o-mini-tts"), 404, "tts-1"),
    "bad-speech-format": (_speech(input="hi", response_format="aac"), 400, "pcm"),
    "missing-input": (_speech(voice="jf_alpha"), 400, "input"),
    "speed-too-high": (_speech(input="hi", speed=3.0), 400, "speed"),
    "speed-not-a-number": (_speech(input="hi", speed="fast"), 400, "speed"),
    "bad-stream-format": (_speech(input="hi", stream_format="ws"), 400, "stream_format"),
    "sse-needs-a-streamed-format": (_speech(input="hi", stream_format="sse", response_format="flac"), 400, "pcm"),
}


@pytest.mark.parametrize("call,status,needle", ERROR_CASES.values(), ids=ERROR_CASES.keys())
def test_error_paths(server, call, status, needle):
    r = call(server[0])
    assert r.status_code == status, r.text
    assert needle in r.json()["error"]["message"]
    assert "\n" not in r.json()["error"]["message"] and "Traceback" not in r.text  # one line, no trace
    assert httpx.get(f"{server[0]}/healthz").status_code == 200  # the server survives


def _raw_request(port: int, head: bytes, body_chunks: list[bytes] = (), wait_s: float = 10.0) -> tuple[int, int]:
    """Send ``head`` then ``body_chunks`` until the server answers; (status, body bytes sent)."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait_s) as s:
        s.sendall(head)
        sent = 0
        s.settimeout(0.3)
        chunks = list(body_chunks)
        deadline = time.time() + wait_s
        data = b""
        while time.time() < deadline:
            try:
                part = s.recv(65536)
                if part:
                    data += part
                    if b"\r\n\r\n" in data:
                        break
                else:
                    break
            except TimeoutError:
                if chunks:
                    try:
                        s.sendall(chunks.pop(0))
                        sent += 1
                    except OSError:
                        break
    status = int(re.match(rb"HTTP/1.1 (\d+)", data).group(1)) if data else 0
    return status, sent


def test_oversize_content_length_is_refused_before_the_body_is_sent(server):
    port = server[2]
    head = (b"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; "
            b"boundary=b\r\nContent-Length: 104857600\r\n\r\n")
    start = time.perf_counter()
    status, sent = _raw_request(port, head)  # headers only: not one byte of the 100 MB body
    assert status == 413 and sent == 0
    assert time.perf_counter() - start < 10


def test_oversize_chunked_body_is_cut_off_while_streaming(server):
    port = server[2]
    head = (b"POST /v1/audio/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; "
            b"boundary=b\r\nTransfer-Encoding: chunked\r\n\r\n")
    def chunk(data: bytes) -> bytes:
        return b"%x\r\n" % len(data) + data + b"\r\n"

    part = (b'--b\r\nContent-Disposition: form-data; name="file"; filename="x.wav"\r\n'
            b"Content-Type: application/octet-stream\r\n\r\n")
    body = [chunk(part)] + [chunk(b"x" * 65536)] * 64  # offers 4 MB against a 0.5 MB limit
    status, sent = _raw_request(port, head, body, wait_s=60)
    assert status == 413 and sent < 20


def test_decode_bomb_is_refused(server):
    base = server[0]
    bomb = flac_with_unknown_length(300)  # 5 minutes of silence in a small file, header says 'unknown'
    for route in ("transcriptions", "embeddings"):
        r = httpx.post(f"{base}/v1/audio/{route}", files={"file": ("bomb.flac", bomb)}, timeout=60)
        assert r.status_code == 413 and "max_audio_s" in r.json()["error"]["message"]


@pytest.mark.parametrize("route", ["transcriptions", "embeddings"])
def test_hostile_audio_over_http(server, route):
    base = server[0]
    seen: dict[int, int] = {}

    @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(HOSTILE, st.sampled_from(["x.wav", "x.mp3", "x", "../../etc/passwd"]))
    def post(data: bytes, name: str) -> None:
        r = httpx.post(f"{base}/v1/audio/{route}", files={"file": (name, data)}, timeout=60)
        seen[r.status_code] = seen.get(r.status_code, 0) + 1
        assert r.status_code in (200, 400, 413), r.text
        if r.status_code != 200:
            assert r.json()["error"]["message"]

    post()
    print(f"\nhostile audio via /v1/audio/{route}: status codes {seen}")
    assert sum(v for k, v in seen.items() if k >= 400) > sum(seen.values()) / 2, seen
    assert httpx.get(f"{base}/healthz").status_code == 200


def test_schemathesis_finds_no_undocumented_5xx(server):
    import schemathesis

    base = server[0]
    schema = schemathesis.openapi.from_url(f"{base}/openapi.json")
    problems: list[str] = []
    calls: dict[str, int] = {}
    statuses: dict[str, int] = {}
    operations = 0
    for result in schema.get_all_operations():
        op = result.ok()
        operations += 1
        examples = 6 if op.path == "/v1/audio/speech" else 15

        @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        @given(case=op.as_strategy())
        def call(case) -> None:
            r = case.call(base_url=base, timeout=120)
            calls[f"{case.method} {case.path}"] = calls.get(f"{case.method} {case.path}", 0) + 1
            key = f"{case.method} {case.path} {r.status_code}"
            statuses[key] = statuses.get(key, 0) + 1
            documented_503 = r.status_code == 503 and r.headers.get("retry-after")
            if r.status_code >= 500 and not documented_503:
                problems.append(f"{case.method} {case.path}: {r.status_code} {r.text[:200]}")

        call()
    print(f"\nschemathesis: {statuses}")
    assert not problems, problems
    ours = {"GET /healthz", "GET /metrics", "GET /v1/models", "GET /v1/audio/voices", "POST /v1/audio/speech",
            "POST /v1/audio/transcriptions", "POST /v1/audio/embeddings"}
    assert ours <= set(calls) and len(calls) == operations, calls  # every route, multipart too
    assert all(n >= 3 for k, n in calls.items() if k.startswith("POST")), calls
    assert httpx.get(f"{base}/healthz").status_code == 200


def test_metrics_use_route_templates(server):
    base = server[0]
    for i in range(3):
        httpx.get(f"{base}/no/such/path/{i}")
    text = httpx.get(f"{base}/metrics").text
    assert "/no/such/path" not in text and 'endpoint="<unmatched>"' in text
    assert 'endpoint="/v1/audio/transcriptions"' in text


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


def test_embedding_overload_gives_503_with_retry_after(server):
    base = server[0]
    data = encode_audio(synth_speechlike(8.0, seed=5), 16000, "flac")

    def post(_: int) -> httpx.Response:
        return httpx.post(f"{base}/v1/audio/embeddings", files={"file": ("x.flac", data)}, timeout=120)

    with cf.ThreadPoolExecutor(24) as pool:
        responses = list(pool.map(post, range(48)))
    codes = [r.status_code for r in responses]
    assert 200 in codes and 503 in codes, codes
    assert set(codes) <= {200, 503}
    busy = next(r for r in responses if r.status_code == 503)
    assert busy.headers.get("retry-after") and "overloaded" in busy.json()["error"]["message"]


def _sent_to_the_cluster(app) -> str:
    """Everything the app's deployments carry (actor options incl. runtime_env, bound args)."""
    from ray.serve import Application

    out, stack = [], [app]
    while stack:
        dep = stack.pop()._bound_deployment
        args = [*dep.init_args, *dep.init_kwargs.values()]
        out += [repr(dep.ray_actor_options), repr([a for a in args if not isinstance(a, Application)])]
        stack += [a for a in args if isinstance(a, Application)]
    return "\n".join(out)


def test_auth_from_a_key_file_and_the_key_never_travels(server, tmp_path, monkeypatch):
    from ray import serve

    from voxray.deployments.app import build_app

    base, model_dir, _ = server
    key_file = tmp_path / "key"
    key_file.write_text("s3cret-key-value\n")
    cfg = _config(model_dir, api_key_file=str(key_file), auth_required=True)
    for kind in ("asr", "embed", "tts"):
        cfg[f"{kind}_deployment"]["enabled"] = False
    monkeypatch.setenv("VOXRAY_API_KEY", "env-key-value")  # the driver's env is not shipped either
    app = build_app(cfg)
    sent = _sent_to_the_cluster(app)
    assert "auth_required" in sent and "runtime_env" not in sent
    assert "s3cret-key-value" not in sent and "env-key-value" not in sent
    serve.run(app, name="secure", route_prefix="/secure")
    url = f"{base}/secure"
    assert httpx.get(f"{url}/healthz").status_code == 200
    denied = httpx.get(f"{url}/v1/models")
    assert denied.status_code == 401 and "API key" in denied.json()["error"]["message"]
    ok = httpx.get(f"{url}/v1/models", headers={"Authorization": "Bearer s3cret-key-value"})
    assert ok.status_code == 200
    assert httpx.get(f"{base}/v1/models").status_code == 200  # the open app is unaffected
    serve.delete("secure")
