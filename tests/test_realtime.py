"""The realtime WebSocket on real Serve: OpenAI Realtime transcription events with a real client.

One realtime application (the shipped Korean model) per module; a real ``websockets`` client
speaks the protocol: deltas then completed, server-VAD segments, commit without VAD, bad frames,
auth, disconnects freeing their session, and concurrent sessions reading like each alone.
"""

from __future__ import annotations

import asyncio
import base64
import csv
import json
from pathlib import Path

import httpx
import numpy as np
import pytest
import websockets
from net import free_port, serve_on

from voxray.audio import SAMPLE_RATE, decode_audio, resample

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
CLIPS = ROOT / "samples" / "ko"
KEY = "test-realtime-key"


@pytest.fixture(scope="module")
def clips():
    rows = list(csv.DictReader((CLIPS / "espeak.csv").read_text(encoding="utf-8").splitlines()))
    return [decode_audio(str(CLIPS / r["path"])) for r in rows[:4]]


@pytest.fixture(scope="module")
def realtime(ray_cluster, tmp_path_factory):
    from ray import serve

    from voxray.deployments.realtime import build_realtime_app

    key_file = tmp_path_factory.mktemp("secret") / "key"
    key_file.write_text(KEY + "\n")  # read by the replica on its node, as a mounted Secret would be
    port = free_port()
    with serve_on(port):
        app = build_realtime_app({"asr": {"model": str(ROOT / "models" / "ko-synthetic-ctc")},
                                  "realtime_deployment": {"num_cpus": 0.2, "max_sessions": 4,
                                                          "autoscaling": {"max_replicas": 1}},
                                  "ingress": {"api_key_file": str(key_file)}})
        serve.run(app, name="voxray-realtime", route_prefix="/v1/realtime")
        yield f"127.0.0.1:{port}"


def _pcm16_b64(audio: np.ndarray, rate: int = 24000) -> str:
    audio = resample(audio, SAMPLE_RATE, rate) if rate != SAMPLE_RATE else audio
    return base64.b64encode((np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()).decode()


async def _connect(base: str, key: str | None = KEY):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return await websockets.connect(f"ws://{base}/v1/realtime?intent=transcription", additional_headers=headers,
                                    open_timeout=60)


async def _events_until(ws, kind: str, timeout: float = 60) -> list[dict]:
    out = []
    while True:
        ev = json.loads(await asyncio.wait_for(ws.recv(), timeout))
        out.append(ev)
        if ev["type"] == kind:
            return out


async def _send_audio(ws, audio: np.ndarray, rate: int = 24000, packet_s: float = 0.1):
    src = resample(audio, SAMPLE_RATE, rate) if rate != SAMPLE_RATE else audio
    step = int(packet_s * rate)
    for i in range(0, len(src), step):
        piece = (np.clip(src[i: i + step], -1, 1) * 32767).astype("<i2").tobytes()
        await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(piece).decode()}))


def _run(coro):
    return asyncio.run(coro)


def _offline(text_audio: np.ndarray, rate: int = 24000) -> str:
    """The library's own streaming result for the same samples the server receives."""
    from voxray.asr import ASRRunner
    from voxray.asr.config import ASROptions
    from voxray.asr.streaming import StreamingASR

    runner = ASRRunner(ASROptions(model=str(ROOT / "models" / "ko-synthetic-ctc")))
    engine = StreamingASR.from_runner(runner)
    src = resample(text_audio, SAMPLE_RATE, rate)
    pcm = (np.clip(src, -1, 1) * 32767).astype("<i2").astype(np.float32) / 32768
    session = engine.session(endpointing=False)
    events = session.feed(resample(pcm, rate, SAMPLE_RATE)) + session.finish()
    return " ".join(e.text for e in events if e.kind == "final")


def test_commit_without_vad_gives_deltas_then_the_completed_transcript(realtime, clips):
    async def go():
        ws = await _connect(realtime)
        created = json.loads(await ws.recv())
        assert created["type"] == "transcription_session.created" and created["event_id"]
        await ws.send(json.dumps({"type": "transcription_session.update",
                                  "session": {"turn_detection": None, "input_audio_format": "pcm16",
                                              "input_audio_transcription": {"language": "ko"}}}))
        updated = (await _events_until(ws, "transcription_session.updated"))[-1]
        assert updated["session"]["turn_detection"] is None
        await _send_audio(ws, clips[0])
        await ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
        events = await _events_until(ws, "conversation.item.input_audio_transcription.completed")
        await ws.close()
        return events

    events = _run(go())
    kinds = [e["type"] for e in events]
    deltas = [e for e in events if e["type"].endswith(".delta")]
    done = events[-1]
    assert deltas and kinds.index("input_audio_buffer.committed") > kinds.index(deltas[0]["type"])
    assert "".join(d["delta"] for d in deltas) == done["transcript"] and done["transcript"]
    assert {d["item_id"] for d in deltas} == {done["item_id"]}
    # the server's text is the library's text for the same 24 kHz pcm16 samples
    assert done["transcript"] == _offline(clips[0])


def test_server_vad_closes_segments_at_pauses(realtime, clips):
    silence = np.zeros(int(1.6 * SAMPLE_RATE), np.float32)
    audio = np.concatenate([clips[1], silence, clips[2], silence, silence])

    async def go():
        ws = await _connect(realtime)
        await ws.recv()
        await ws.send(json.dumps({"type": "transcription_session.update",
                                  "session": {"turn_detection": {"type": "server_vad", "silence_duration_ms": 600},
                                              "input_audio_sample_rate": 16000}}))
        await _events_until(ws, "transcription_session.updated")
        await _send_audio(ws, audio, rate=16000)
        first = await _events_until(ws, "conversation.item.input_audio_transcription.completed")
        second = await _events_until(ws, "conversation.item.input_audio_transcription.completed")
        await ws.close()
        return first, second

    first, second = _run(go())
    for events in (first, second):
        kinds = [e["type"] for e in events]
        assert kinds.count("input_audio_buffer.speech_started") == 1 and "input_audio_buffer.speech_stopped" in kinds
        assert kinds.index("input_audio_buffer.speech_started") < kinds.index("input_audio_buffer.speech_stopped")
        done = events[-1]
        assert done["transcript"] == "".join(e["delta"] for e in events if e["type"].endswith(".delta"))
    committed = [e for e in second if e["type"] == "input_audio_buffer.committed"][0]
    assert committed["previous_item_id"] == first[-1]["item_id"] != second[-1]["item_id"]


def test_bad_frames_get_error_events_and_the_session_goes_on(realtime, clips):
    bad = [
        "not json at all",
        json.dumps([1, 2, 3]),
        json.dumps({"type": "no.such.event"}),
        json.dumps({"type": "input_audio_buffer.append", "audio": "%%% not base64 %%%"}),
        json.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(b"\x01\x02\x03").decode()}),
        json.dumps({"type": "input_audio_buffer.append", "audio": 12}),
        json.dumps({"type": "transcription_session.update", "session": {"input_audio_format": "g711_ulaw"}}),
        json.dumps({"type": "transcription_session.update",
                    "session": {"input_audio_transcription": {"language": "fr"}}}),
        json.dumps({"type": "transcription_session.update", "session": {"input_audio_sample_rate": 44100}}),
    ]

    async def go():
        ws = await _connect(realtime)
        await ws.recv()
        errors = []
        for frame in bad:
            await ws.send(frame)
            errors.append(json.loads(await asyncio.wait_for(ws.recv(), 30)))
        await ws.send(b"\x00binary")
        errors.append(json.loads(await asyncio.wait_for(ws.recv(), 30)))
        await ws.send(json.dumps({"type": "transcription_session.update", "session": {"turn_detection": None}}))
        await _events_until(ws, "transcription_session.updated")
        await _send_audio(ws, clips[3])
        await ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
        done = (await _events_until(ws, "conversation.item.input_audio_transcription.completed"))[-1]
        await ws.close()
        return errors, done

    errors, done = _run(go())
    assert [e["type"] for e in errors] == ["error"] * (len(bad) + 1)
    assert all(e["error"]["message"] for e in errors)
    assert "fr" in errors[7]["error"]["message"]
    assert done["transcript"]  # the session survived every bad frame


def test_clear_discards_buffered_audio(realtime, clips):
    async def go():
        ws = await _connect(realtime)
        await ws.recv()
        await ws.send(json.dumps({"type": "transcription_session.update", "session": {"turn_detection": None}}))
        await _events_until(ws, "transcription_session.updated")
        await _send_audio(ws, clips[0][: SAMPLE_RATE // 2])
        await ws.send(json.dumps({"type": "input_audio_buffer.clear"}))
        await _events_until(ws, "input_audio_buffer.cleared")
        await ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
        done = (await _events_until(ws, "conversation.item.input_audio_transcription.completed"))[-1]
        await ws.close()
        return done

    assert _run(go())["transcript"] == ""


def test_auth_and_the_session_limit(realtime):
    async def go():
        codes = []
        for key in (None, "wrong-key"):
            ws = await _connect(realtime, key)
            with pytest.raises(websockets.ConnectionClosed) as err:
                await asyncio.wait_for(ws.recv(), 30)
            codes.append(err.value.rcvd.code)
        held = [await _connect(realtime) for _ in range(4)]  # max_sessions=4
        for ws in held:
            await ws.recv()
        extra = await _connect(realtime)
        with pytest.raises(websockets.ConnectionClosed) as err:
            await asyncio.wait_for(extra.recv(), 30)
        codes.append(err.value.rcvd.code)
        for ws in held:
            await ws.close()
        return codes

    assert _run(go()) == [1008, 1008, 1013]


def test_disconnect_frees_the_session_and_concurrent_sessions_read_like_alone(realtime, clips):
    stats_url = f"http://{realtime}/v1/realtime/stats"

    async def one(audio):
        ws = await _connect(realtime)
        await ws.recv()
        await ws.send(json.dumps({"type": "transcription_session.update", "session": {"turn_detection": None}}))
        await _events_until(ws, "transcription_session.updated")
        await _send_audio(ws, audio)
        await ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
        done = (await _events_until(ws, "conversation.item.input_audio_transcription.completed"))[-1]
        await ws.close()
        return done["transcript"]

    async def dropped():
        ws = await _connect(realtime)
        await ws.recv()
        await _send_audio(ws, clips[0][:SAMPLE_RATE])
        await ws.close()  # mid-utterance

    async def go():
        await dropped()
        before = httpx.get(stats_url, timeout=30).json()
        together = await asyncio.gather(*(one(c) for c in clips))
        return before, together

    before, together = _run(go())
    assert before["live_sessions"] == 0
    alone = [_run(one(c)) for c in clips]
    assert together == alone
    stats = httpx.get(stats_url, timeout=30).json()
    assert stats["live_sessions"] == 0 and stats["windows_per_forward"] > 1.0  # sessions shared forwards


def test_listen_command_against_the_server(realtime, clips, tmp_path):
    import subprocess
    import sys

    from voxray.audio import write_audio

    clip = tmp_path / "clip.wav"
    write_audio(str(clip), clips[0], SAMPLE_RATE)
    out = subprocess.run([sys.executable, "-m", "voxray.cli", "listen", str(clip), "--server", f"http://{realtime}",
                          "--api-key", KEY], capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert lines and " ".join(lines).replace(" ", "") == _offline(clips[0], rate=SAMPLE_RATE).replace(" ", "")
    bad = subprocess.run([sys.executable, "-m", "voxray.cli", "listen", str(clip), "--server", f"http://{realtime}",
                          "--api-key", "wrong"], capture_output=True, text=True, timeout=180)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and "API key" in bad.stderr
