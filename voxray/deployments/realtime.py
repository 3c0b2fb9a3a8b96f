"""Real-time transcription over WebSocket with the OpenAI Realtime transcription events.

``GET /v1/realtime?intent=transcription`` is its own Serve application (route prefix
``/v1/realtime``): the replica that accepts a socket holds that session's state (audio buffer,
cached conv features, decoder) and the model, so no state crosses replicas. Every live session on a
replica hands its ready windows to one :class:`WindowBatcher`, which runs the windows of all
sessions as one padded forward (the cross-stream batching) and routes the logits back.

Protocol (client -> server): ``transcription_session.update`` (``input_audio_format: "pcm16"``,
``turn_detection`` ``{"type": "server_vad", "silence_duration_ms": N}`` or null,
``input_audio_transcription.language``; voxray extension ``input_audio_sample_rate``: 16000 or
24000, default 24000 as OpenAI), ``input_audio_buffer.append`` (``audio``: base64 little-endian pcm16
mono), ``input_audio_buffer.commit``, ``input_audio_buffer.clear``. Server -> client:
``transcription_session.created/updated``, ``input_audio_buffer.speech_started/stopped`` (server
VAD), ``input_audio_buffer.committed``, ``input_audio_buffer.cleared``,
``conversation.item.input_audio_transcription.delta`` (voxray adds ``audio_end_ms``: the stream time its
text ends) and ``.completed``, ``error``. A bad frame
gets an ``error`` event and the session goes on.

Failure behaviour: beyond ``max_sessions`` on a replica a new socket is closed with 1013 (try
again later) and a reason; a bad or missing API key closes with 1008. When a replica dies its
sockets drop (the client sees 1006/1011) and the session's state is gone: the client reconnects
and Serve routes it to a live replica.
"""


import asyncio
import base64
import binascii
import json
import logging
import time
import uuid
from typing import Any

import numpy as np
from fastapi import FastAPI, WebSocket, WebSocketDisconnect
from ray import serve

from voxray.asr.streaming import StreamEvent, StreamingASR, StreamSession
from voxray.audio import SAMPLE_RATE
from voxray.deployments.config import RealtimeDeploymentOptions, ServeAppConfig
from voxray.deployments.ingress import served_name
from voxray.deployments.replicas import check_language, vocab_languages
from voxray.errors import VoxrayError

logger = logging.getLogger("voxray.deployments.realtime")

INPUT_RATES = (16000, 24000)
CLOSE_POLICY = 1008  # bad credentials
CLOSE_TRY_AGAIN = 1013  # replica full


class WindowBatcher:
    """Collects windows from all sessions of a replica and runs them through one forward."""

    def __init__(self, engine: StreamingASR, options: RealtimeDeploymentOptions) -> None:
        self.engine = engine
        self.max_windows = options.max_batch_windows if options.batch_streams else 1
        self.wait_s = options.batch_wait_s if options.batch_streams else 0.0
        self.queue: asyncio.Queue[tuple[list[Any], asyncio.Future[list[np.ndarray]]]] = asyncio.Queue()
        self.forwards = 0
        self.windows = 0
        self._task: asyncio.Task[None] | None = None

    async def run(self, windows: list[Any]) -> list[np.ndarray]:
        if not windows:
            return []
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._loop())
        future: asyncio.Future[list[np.ndarray]] = asyncio.get_running_loop().create_future()
        if self.max_windows == 1 and len(windows) > 1:  # unbatched: one window per forward
            results = []
            for w in windows:
                results += await self.run([w])
            return results
        await self.queue.put((windows, future))
        return await future

    async def _loop(self) -> None:
        while True:
            batch = [await self.queue.get()]
            count = len(batch[0][0])
            deadline = time.monotonic() + self.wait_s
            while count < self.max_windows:
                timeout = deadline - time.monotonic()
                try:
                    item = self.queue.get_nowait() if timeout <= 0 else await asyncio.wait_for(self.queue.get(),
                                                                                               timeout)
                except (asyncio.QueueEmpty, TimeoutError):
                    break
                batch.append(item)
                count += len(item[0])
            windows = [w for ws, _ in batch for w in ws]
            try:
                logits = await asyncio.to_thread(self.engine.forward_windows, windows)
            except Exception as exc:  # every waiting session gets the error, the loop goes on
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            self.forwards += 1
            self.windows += len(windows)
            at = 0
            for ws, fut in batch:
                if not fut.done():
                    fut.set_result(logits[at: at + len(ws)])
                at += len(ws)


class BadFrame(Exception):
    """A client frame voxray cannot use: becomes an ``error`` event, the session goes on."""

    def __init__(self, message: str, code: str = "invalid_request_error", param: str | None = None) -> None:
        super().__init__(message)
        self.message, self.code, self.param = message, code, param


class RealtimeSession:
    """One socket: its settings, resampler and the streaming session of the current item."""

    def __init__(self, engine: StreamingASR, model: str, languages: list[str]) -> None:
        self.engine, self.model, self.languages = engine, model, languages
        self.sample_rate = 24000
        self.vad = True
        self.silence_s: float | None = None
        self.language: str | None = None
        self._resampler: Any = None
        self.stream = self._new_stream()
        self.item_id = _new_id("item")
        self.previous_item_id: str | None = None
        self.speech_announced = False
        self.received_s = 0.0

    def _new_stream(self) -> StreamSession:
        return self.engine.session(endpointing=self.vad, endpoint_s=self.silence_s)

    def describe(self) -> dict[str, Any]:
        turn = {"type": "server_vad", "silence_duration_ms": round(1000 * (self.silence_s or
                                                                            self.engine.options.endpoint_s))}
        return {
            "object": "realtime.transcription_session",
            "input_audio_format": "pcm16",
            "input_audio_sample_rate": self.sample_rate,
            "input_audio_transcription": {"model": self.model, "language": self.language},
            "turn_detection": turn if self.vad else None,
        }

    def update(self, session: Any) -> None:
        if not isinstance(session, dict):
            raise BadFrame("'session' must be an object", param="session")
        fmt = session.get("input_audio_format", "pcm16")
        if fmt != "pcm16":
            raise BadFrame(f"input_audio_format {fmt!r} is not supported: send 'pcm16'", param="input_audio_format")
        rate = session.get("input_audio_sample_rate", self.sample_rate)
        if rate not in INPUT_RATES:
            raise BadFrame(f"input_audio_sample_rate must be one of {list(INPUT_RATES)}, got {rate!r}",
                           param="input_audio_sample_rate")
        transcription = session.get("input_audio_transcription") or {}
        language = transcription.get("language") if isinstance(transcription, dict) else None
        if language is not None:
            if not isinstance(language, str):
                raise BadFrame("language must be a string such as 'ko'", param="input_audio_transcription.language")
            try:
                language = check_language(language, self.languages)
            except VoxrayError as exc:
                raise BadFrame(str(exc), param="input_audio_transcription.language") from None
        vad, silence = self.vad, self.silence_s
        if "turn_detection" in session:
            turn = session["turn_detection"]
            if turn is None:
                vad = False
            elif isinstance(turn, dict) and turn.get("type", "server_vad") == "server_vad":
                vad = True
                ms = turn.get("silence_duration_ms")
                if ms is not None:
                    if not isinstance(ms, int | float) or not 100 <= ms <= 10_000:
                        raise BadFrame("silence_duration_ms must be 100-10000", param="turn_detection")
                    silence = ms / 1000
            else:
                raise BadFrame("turn_detection must be null or {'type': 'server_vad'}", param="turn_detection")
        self.language = language
        if (vad, silence, rate) != (self.vad, self.silence_s, self.sample_rate):
            self.vad, self.silence_s, self.sample_rate = vad, silence, rate
            self._resampler = None
            self.stream = self._new_stream()  # new settings start a new item

    def pcm(self, audio_b64: Any) -> np.ndarray:
        """base64 pcm16 -> 16 kHz float32 (streamed resampling: no seams between appends)."""
        if not isinstance(audio_b64, str):
            raise BadFrame("'audio' must be a base64 string", param="audio")
        try:
            raw = base64.b64decode(audio_b64, validate=True)
        except (binascii.Error, ValueError):
            raise BadFrame("'audio' is not valid base64", param="audio") from None
        if len(raw) % 2:
            raise BadFrame("'audio' must hold whole 16-bit samples (an even number of bytes)", param="audio")
        samples = np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0
        self.received_s += len(samples) / self.sample_rate
        if self.sample_rate == SAMPLE_RATE:
            return samples
        if self._resampler is None:
            import soxr

            self._resampler = soxr.ResampleStream(self.sample_rate, SAMPLE_RATE, 1, dtype="float32")
        return self._resampler.resample_chunk(samples)

    def flush_resampler(self) -> np.ndarray:
        if self._resampler is None:
            return np.zeros(0, np.float32)
        tail = self._resampler.resample_chunk(np.zeros(0, np.float32), last=True)
        self._resampler = None
        return tail

    def clear(self) -> None:
        self._resampler = None
        self.stream = self._new_stream()
        self.speech_announced = False

    def events(self, stream_events: list[StreamEvent]) -> list[dict[str, Any]]:
        """Library events -> Realtime events (VAD start/stop, committed, deltas, completed)."""
        out: list[dict[str, Any]] = []
        for ev in stream_events:
            if self.vad and not self.speech_announced:
                start = self.stream.speech_start_s if ev.kind == "delta" else ev.start_s
                out.append({"type": "input_audio_buffer.speech_started", "item_id": self.item_id,
                            "audio_start_ms": round(1000 * (start if start is not None else ev.start_s))})
                self.speech_announced = True
            if ev.kind == "delta":
                out.append({"type": "conversation.item.input_audio_transcription.delta", "item_id": self.item_id,
                            "content_index": 0, "delta": ev.text,
                            "audio_end_ms": round(1000 * ev.end_s)})  # voxray extension: where the text ends
                continue
            if self.vad:
                out.append({"type": "input_audio_buffer.speech_stopped", "item_id": self.item_id,
                            "audio_end_ms": round(1000 * ev.end_s)})
                out.append(self._committed())
            out.append({"type": "conversation.item.input_audio_transcription.completed", "item_id": self.item_id,
                        "content_index": 0, "transcript": ev.text})
            self._next_item()
        return out

    def _committed(self) -> dict[str, Any]:
        return {"type": "input_audio_buffer.committed", "item_id": self.item_id,
                "previous_item_id": self.previous_item_id}

    def _next_item(self) -> None:
        self.previous_item_id, self.item_id = self.item_id, _new_id("item")
        self.speech_announced = False


def _new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:20]}"


def _offered_key(ws: WebSocket) -> str | None:
    """``Authorization: Bearer KEY``, or (browsers cannot set headers) the subprotocol
    ``openai-insecure-api-key.KEY`` as OpenAI's own browser clients send it."""
    header = ws.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip()
    for proto in ws.scope.get("subprotocols", []):
        if proto.startswith("openai-insecure-api-key."):
            return proto.split(".", 1)[1]
    return None


class _PrefixRoot:
    """Route ``/v1/realtime`` itself (not just ``/v1/realtime/``) to ``/``: clients written for
    OpenAI connect to the bare path, which Starlette would otherwise refuse (403) under the prefix."""

    def __init__(self, asgi: Any) -> None:
        self.asgi = asgi

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] in ("websocket", "http"):
            root = scope.get("root_path", "")
            if scope.get("path") in ("", root):
                scope = {**scope, "path": root + "/", "raw_path": (root + "/").encode()}
        await self.asgi(scope, receive, send)


app = FastAPI(title="voxray realtime transcription")
app.add_middleware(_PrefixRoot)


@serve.deployment(name="RealtimeTranscription")
@serve.ingress(app)
class RealtimeDeployment:
    """One streaming model per replica; all its sessions' windows batched together."""

    def __init__(self, config: dict[str, Any]) -> None:
        from voxray.asr import ASRRunner

        app = ServeAppConfig(**config)
        self.options = app.realtime_deployment
        runner = ASRRunner(app.asr)
        self.engine = StreamingASR.from_runner(runner, app.streaming)
        self.batcher = WindowBatcher(self.engine, self.options)
        self.model = served_name(app.asr.model, app.asr_deployment.name)
        self.languages = app.asr_deployment.languages or vocab_languages(list(runner.decoder.vocab))
        self.sessions: set[int] = set()
        self.sessions_total = 0
        self.api_key = app.ingress.api_key()  # the HTTP routes' key, read on this node
        if app.ingress.auth_required and not self.api_key:
            raise RuntimeError("auth_required is set but no API key was found on this node "
                               f"(${app.ingress.api_key_env} or api_key_file)")

    def check_health(self) -> None:  # a tiny real input through the whole streaming path
        session = self.engine.session()
        session.push(np.zeros(self.engine.receptive_field * 4, np.float32), final=True)

    @app.get("/stats")
    def stats(self) -> dict[str, Any]:
        b = self.batcher
        return {"live_sessions": len(self.sessions), "sessions_total": self.sessions_total, "forwards": b.forwards,
                "windows": b.windows, "windows_per_forward": b.windows / b.forwards if b.forwards else 0.0,
                "batch_streams": self.options.batch_streams}

    @app.websocket("/")
    async def realtime(self, ws: WebSocket, intent: str = "transcription") -> None:
        protocols = ws.scope.get("subprotocols", [])
        chosen = "realtime" if "realtime" in protocols else None
        await ws.accept(subprotocol=chosen)
        if self.api_key and _offered_key(ws) != self.api_key:
            await ws.close(code=CLOSE_POLICY, reason="missing or invalid API key: send 'Authorization: Bearer <key>'")
            return
        if intent != "transcription":
            await ws.close(code=CLOSE_POLICY, reason="only intent=transcription is served here")
            return
        if len(self.sessions) >= self.options.max_sessions:
            await ws.close(code=CLOSE_TRY_AGAIN,
                           reason=f"replica full ({self.options.max_sessions} live sessions): retry shortly")
            return
        key = id(ws)
        self.sessions.add(key)
        self.sessions_total += 1
        session = RealtimeSession(self.engine, self.model, self.languages)
        try:
            await self._send(ws, {"type": "transcription_session.created", "session": session.describe()})
            while True:
                message = await ws.receive()
                if message["type"] == "websocket.disconnect":
                    break
                try:
                    for event in await self._handle(session, message):
                        await self._send(ws, event)
                except BadFrame as exc:
                    await self._send(ws, {"type": "error", "error": {"type": "invalid_request_error",
                                                                      "code": exc.code, "message": exc.message,
                                                                      "param": exc.param}})
        except WebSocketDisconnect:
            pass
        finally:
            self.sessions.discard(key)

    async def _send(self, ws: WebSocket, event: dict[str, Any]) -> None:
        await ws.send_text(json.dumps({"event_id": _new_id("event"), **event}, ensure_ascii=False))

    async def _handle(self, session: RealtimeSession, message: dict[str, Any]) -> list[dict[str, Any]]:
        text = message.get("text")
        if text is None:
            raise BadFrame("send JSON text frames (binary frames are not part of the protocol)")
        if len(text) > self.options.max_message_bytes:
            raise BadFrame(f"frame of {len(text)} bytes is over the {self.options.max_message_bytes}-byte limit")
        try:
            frame = json.loads(text)
        except json.JSONDecodeError:
            raise BadFrame("frame is not valid JSON") from None
        if not isinstance(frame, dict) or not isinstance(frame.get("type"), str):
            raise BadFrame("frame must be a JSON object with a 'type'")
        kind = frame["type"]
        if kind in ("transcription_session.update", "session.update"):
            session.update(frame.get("session"))
            return [{"type": "transcription_session.updated", "session": session.describe()}]
        if kind == "input_audio_buffer.append":
            pcm = session.pcm(frame.get("audio"))
            return session.events(await self._step(session.stream, pcm))
        if kind == "input_audio_buffer.commit":
            # everything buffered becomes one item: no lookahead left to wait for
            events = session.events(await self._step(session.stream, session.flush_resampler(), final=True))
            tail = session.stream.close_segment()
            events += session.events([e for e in tail if e.kind == "delta"])
            final = next((e for e in tail if e.kind == "final"), None)
            events += [session._committed(),
                       {"type": "conversation.item.input_audio_transcription.completed", "item_id": session.item_id,
                        "content_index": 0, "transcript": final.text if final else ""}]
            session._next_item()
            session.stream = session._new_stream()
            return events
        if kind == "input_audio_buffer.clear":
            session.clear()
            return [{"type": "input_audio_buffer.cleared"}]
        raise BadFrame(f"unknown event type {kind!r}", param="type")

    async def _step(self, stream: StreamSession, pcm: np.ndarray, final: bool = False) -> list[StreamEvent]:
        windows = await asyncio.to_thread(stream.push, pcm, final)
        events: list[StreamEvent] = []
        for window, logits in zip(windows, await self.batcher.run(windows), strict=True):
            events += stream.accept(window, logits)
        return events


def build_realtime_app(args: dict[str, Any] | ServeAppConfig | None = None) -> Any:
    """The realtime application (``import_path: voxray.deployments.realtime:build_realtime_app``).

    It takes the same ``args`` as :func:`voxray.deployments.app.build_app` (one config for both
    applications): the ``asr`` model, ``streaming`` windows, ``realtime_deployment`` placement and
    limits, and the ingress's auth settings.
    """
    config = args if isinstance(args, ServeAppConfig) else ServeAppConfig(**(args or {}))
    if not config.realtime_deployment.enabled:
        raise VoxrayError("realtime_deployment.enabled is false in this config: drop the realtime application "
                          "from it, or enable the deployment")
    deployment = RealtimeDeployment.options(**config.realtime_deployment.serve_options())
    return deployment.bind(config.model_dump())
