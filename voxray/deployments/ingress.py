"""FastAPI ingress: the OpenAI audio API (+ embeddings, voices, health, metrics) in front of the
model deployments. Validation, size limits, auth and audio decoding happen here, on CPU, so a
bad request costs no model time and never reaches (or crashes) a model replica.

Limits come before work: a body whose ``Content-Length`` is over the limit is refused before a
byte of it is read, a chunked body as soon as it passes the limit, and audio by its header before
it is decoded. Fields voxray cannot honour (``prompt``, a non-zero ``temperature``,
``instructions``, unknown keys) are accepted, as OpenAI clients send them, and named in the
``X-Voxray-Ignored-Fields`` response header.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
import logging
import re
import time
from typing import Annotated, Any

import numpy as np
from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from ray import serve

from voxray.deployments.config import ServeAppConfig
from voxray.deployments.formats import (
    SPEECH_MEDIA_TYPES,
    STREAMED_FORMATS,
    TRANSCRIPT_FORMATS,
    Mp3Stream,
    pcm16,
    streaming_wav_header,
    to_srt,
    to_vtt,
    words_to_segments,
)
from voxray.deployments.uploads import AudioLimits, decode_upload
from voxray.errors import (
    InputError,
    ModelUnavailableError,
    OverloadedError,
    PayloadTooLargeError,
    VoxrayError,
    from_row_error,
)
from voxray.tts.config import SAMPLE_RATE as TTS_SAMPLE_RATE
from voxray.tts.config import TTSOptions

logger = logging.getLogger("voxray.deployments")

IGNORED_HEADER = "X-Voxray-Ignored-Fields"
BODY_SLACK = 64 * 1024  # multipart boundaries and form fields around the file
# The speaking-rate rule has one home, TTSOptions.speed; the request model reuses its constraints.
Speed = Annotated[(float, *TTSOptions.model_fields["speed"].metadata)]


class SpeechRequest(BaseModel):
    """``POST /v1/audio/speech`` body (OpenAI's fields, plus ``lang``)."""

    model_config = ConfigDict(extra="allow", protected_namespaces=())
    model: str = "kokoro"
    input: str
    voice: str | None = None
    response_format: str = "mp3"
    speed: Speed | None = Field(None, description=TTSOptions.model_fields["speed"].description)
    lang: str | None = Field(None, description=TTSOptions.model_fields["lang"].description)
    instructions: str | None = Field(None, description="accepted and ignored: Kokoro takes no style prompt")
    stream_format: str | None = Field(
        None, description="'audio' (the default: the encoded stream) or 'sse': server-sent events "
        "`speech.audio.delta` (base64 of the stream's next bytes, plus the voxray field `words`: "
        "[{word, start, end}] in seconds from the start) and `speech.audio.done`",
    )


class ReplicaUnavailable(VoxrayError):
    """The replica serving a request died or is restarting; the client may retry."""

    status = 503
    kind = "replica_unavailable"


def _unwrap(exc: BaseException) -> BaseException:
    """A replica's exception arrives wrapped (RayTaskError); find the voxray error inside."""
    seen = 0
    while seen < 5 and not isinstance(exc, VoxrayError):
        cause = getattr(exc, "cause", None) or exc.__cause__
        if cause is None:
            break
        exc, seen = cause, seen + 1
    return exc


def _replica_died(exc: BaseException) -> bool:
    from ray.exceptions import RayActorError
    from ray.serve.exceptions import DeploymentUnavailableError, ReplicaUnavailableError

    return isinstance(_unwrap(exc), RayActorError | ReplicaUnavailableError | DeploymentUnavailableError)


def error_response(exc: BaseException, retry_after: int = 2) -> JSONResponse:
    from ray.serve.exceptions import BackPressureError

    exc = _unwrap(exc)
    if isinstance(exc, BackPressureError):
        exc = OverloadedError("server is overloaded: too many queued requests; retry shortly")
    elif _replica_died(exc):
        exc = ReplicaUnavailable("the model replica for this request failed or is restarting; retry shortly")
    if not isinstance(exc, VoxrayError):
        logger.exception("internal error", exc_info=exc)
        exc = VoxrayError(f"internal error: {type(exc).__name__}")
    headers = {"Retry-After": str(retry_after)} if exc.status == 503 else None
    body = {"error": {"message": exc.message, "type": exc.kind, "code": exc.status}}
    return JSONResponse(body, status_code=exc.status, headers=headers)


class Metrics:
    """Request counts, latency and audio seconds per route template, in a private registry."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter("voxray_requests", "HTTP requests", ["endpoint", "status"], registry=self.registry)
        self.latency = Histogram(
            "voxray_request_latency_seconds", "request latency", ["endpoint"], registry=self.registry,
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60),
        )
        self.audio = Counter("voxray_audio_seconds", "audio seconds processed", ["endpoint"], registry=self.registry)
        self.body_bytes = Counter(
            "voxray_request_body_bytes", "request body bytes read by the ingress", ["endpoint"], registry=self.registry
        )
        self.replica_failures = Counter(
            "voxray_replica_failures", "requests whose model replica died, by outcome (retried/failed)",
            ["deployment", "outcome"], registry=self.registry,
        )
        self.batch = Gauge(
            "voxray_deployment_batch", "dynamic batching, health probes, cancelled streams and memory of one "
            "model replica", ["deployment", "stat"], registry=self.registry,
        )

    def observe(self, endpoint: str, status: int, seconds: float) -> None:
        self.requests.labels(endpoint, str(status)).inc()
        self.latency.labels(endpoint).observe(seconds)

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


def route_template(scope: dict[str, Any]) -> str:
    """The matched route's template (``/v1/audio/speech``), never the raw path: a scanner's random
    URLs would otherwise each create a metrics series."""
    route = scope.get("route")
    return getattr(route, "path", None) or "<unmatched>"


class BodyLimit:
    """ASGI middleware: 413 from ``Content-Length`` before the body is read; a chunked body is
    counted as it streams and answered 413 the moment it passes ``max_bytes``."""

    def __init__(self, app: Any, max_bytes: int, metrics: Any) -> None:
        self.app, self.max_bytes, self.metrics = app, max_bytes, metrics

    def _too_large(self) -> JSONResponse:
        return error_response(PayloadTooLargeError(
            f"request body is larger than the {self.max_bytes / 1024 / 1024:g} MB limit (max_upload_mb)"
        ))

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length", b"").decode("latin-1")
        if declared.isdigit() and int(declared) > self.max_bytes:
            return await self._too_large()(scope, receive, send)
        state = {"read": 0, "over": False, "started": False}

        async def limited_receive() -> dict[str, Any]:
            message = await receive()
            if message["type"] == "http.request":
                state["read"] += len(message.get("body", b""))
                if state["read"] > self.max_bytes:
                    state["over"] = True
                    return {"type": "http.disconnect"}  # the app stops parsing; we answer 413
            return message

        async def guarded_send(message: dict[str, Any]) -> None:
            if state["over"]:
                if message["type"] == "http.response.start" and not state["started"]:
                    state["started"] = True
                    await self._too_large()(scope, receive, send)
                return
            state["started"] = state["started"] or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            if not state["over"]:
                raise
        if state["over"] and not state["started"]:
            await self._too_large()(scope, receive, send)
        self.metrics().body_bytes.labels(route_template(scope)).inc(state["read"])


_FIELD_NAME = re.compile(r"[A-Za-z0-9_.\[\]-]{1,40}")


def _ignored(names: dict[str, bool]) -> dict[str, str]:
    """The ``X-Voxray-Ignored-Fields`` header: names that are safe in a header, the rest counted."""
    ignored = [k for k, used in names.items() if used]
    shown = [k for k in ignored if _FIELD_NAME.fullmatch(k)][:10]
    if len(shown) < len(ignored):
        shown.append(f"{len(ignored) - len(shown)} more")
    return {IGNORED_HEADER: ", ".join(shown)} if shown else {}


def create_app(config: ServeAppConfig, ingress: Any) -> FastAPI:
    """Build the FastAPI app; ``ingress`` is the object holding the deployment handles."""
    app = FastAPI(title="voxray", version="0.1.0", description="ASR, embeddings and TTS on Ray Serve")
    opts = config.ingress
    limits = AudioLimits(opts.max_audio_s, opts.max_sample_rate, opts.max_channels)

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, exc: RequestValidationError) -> JSONResponse:
        details = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        return error_response(InputError(f"invalid request: {details}"))

    @app.middleware("http")
    async def _auth_and_metrics(request: Request, call_next: Any) -> Response:
        start = time.perf_counter()
        key = ingress.api_key
        root = request.scope.get("root_path", "") or ""
        path = request.url.path
        path = path[len(root) :] or "/" if root and path.startswith(root) else path  # the app's own route
        if key and path != "/healthz":
            given = request.headers.get("authorization", "")
            token = given[7:] if given.lower().startswith("bearer ") else ""
            if not hmac.compare_digest(token.encode(), key.encode()):
                ingress.metrics.observe("<unauthorized>", 401, time.perf_counter() - start)
                return JSONResponse(
                    {"error": {"message": "missing or invalid API key: send 'Authorization: Bearer <key>'",
                               "type": "unauthorized", "code": 401}},
                    status_code=401, headers={"WWW-Authenticate": "Bearer"},
                )
        response = await call_next(request)
        endpoint = route_template(request.scope)
        if endpoint != "/metrics":
            ingress.metrics.observe(endpoint, response.status_code, time.perf_counter() - start)
        return response

    app.add_middleware(BodyLimit, max_bytes=opts.max_bytes + BODY_SLACK, metrics=lambda: ingress.metrics)

    async def read_upload(file: UploadFile) -> bytes:
        data = await file.read(opts.max_bytes + 1)
        if len(data) > opts.max_bytes:
            raise PayloadTooLargeError(f"upload is larger than the {opts.max_upload_mb:g} MB limit (max_upload_mb)")
        return data

    async def upload_audio(file: UploadFile) -> np.ndarray:
        data = await read_upload(file)
        return await asyncio.to_thread(decode_upload, data, file.filename or "upload", limits)

    def check_model(kind: str, model: str | None) -> None:
        names = ingress.model_names(kind)
        if model and model not in names:
            raise ModelUnavailableError(f"unknown {kind} model {model!r}; available: {', '.join(names)}")

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/metrics")
    async def metrics() -> Response:
        await ingress.refresh_batch_metrics()
        return Response(ingress.metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        data = []
        for kind in ("asr", "embed", "tts"):
            if ingress.enabled(kind):
                for name in ingress.model_names(kind):
                    data.append({"id": name, "object": "model", "owned_by": "voxray", "created": 0, "kind": kind})
        return {"object": "list", "data": data}

    @app.get("/v1/audio/voices")
    async def voices() -> Any:
        try:
            ingress.require("tts")
            return {"voices": await ingress.voices()}
        except Exception as exc:
            return error_response(exc, opts.retry_after_s)

    @app.post("/v1/audio/transcriptions")
    async def transcriptions(
        file: UploadFile = File(...),
        model: str = Form(""),
        response_format: str = Form("json"),
        language: str | None = Form(None, description="ISO 639-1; must be a language the model transcribes"),
        prompt: str | None = Form(None, description="accepted and ignored (CTC decoding takes no prompt)"),
        temperature: float | None = Form(None, description="0 is what greedy CTC decoding does; others ignored"),
        timestamp_granularities: list[str] | None = Form(None, alias="timestamp_granularities[]"),
    ) -> Any:
        from voxray.deployments.replicas import check_language

        try:
            ingress.require("asr")
            check_model("asr", model)
            if response_format not in TRANSCRIPT_FORMATS:
                raise InputError(f"response_format must be one of {', '.join(TRANSCRIPT_FORMATS)}")
            grans = set(timestamp_granularities or [])
            if grans - {"word", "segment"}:
                raise InputError("timestamp_granularities[] takes 'word' and/or 'segment'")
            check_language(language, await ingress.asr_languages())  # before the upload is decoded
            audio = await upload_audio(file)
            want_words = response_format in ("verbose_json", "srt", "vtt")
            result = await ingress.call("asr", "transcribe", audio, "word" if want_words else "none", language)
            if result["error"]:
                raise from_row_error(result["error"])
        except Exception as exc:
            return error_response(exc, opts.retry_after_s)
        headers = _ignored({"prompt": bool(prompt), "temperature": bool(temperature)})
        ingress.metrics.audio.labels("/v1/audio/transcriptions").inc(result["duration_s"])
        text = result["text"] or ""
        if response_format == "json":
            return JSONResponse({"text": text}, headers=headers)
        if response_format == "text":
            return PlainTextResponse(text, headers=headers)
        words = [{"word": w["text"], "start": w["start"], "end": w["end"]} for w in result["chunks"]]
        segments = words_to_segments(result["chunks"])
        if response_format == "srt":
            return PlainTextResponse(to_srt(segments), headers=headers)
        if response_format == "vtt":
            return PlainTextResponse(to_vtt(segments), media_type="text/vtt", headers=headers)
        body: dict[str, Any] = {
            "task": "transcribe", "language": result.get("language") or "unknown", "duration": result["duration_s"],
            "text": text, "segments": [{**s, "tokens": [], "temperature": 0.0} for s in segments],
        }
        if "word" in grans or not grans:
            body["words"] = words
        return JSONResponse(body, headers=headers)

    @app.post("/v1/audio/embeddings")
    async def embeddings(file: UploadFile = File(...), model: str = Form("")) -> Any:
        try:
            ingress.require("embed")
            check_model("embed", model)
            audio = await upload_audio(file)
            result = await ingress.call("embed", "embed", audio)
            if result["error"]:
                raise from_row_error(result["error"])
        except Exception as exc:
            return error_response(exc, opts.retry_after_s)
        ingress.metrics.audio.labels("/v1/audio/embeddings").inc(result["duration_s"])
        return {
            "object": "list", "model": ingress.model_names("embed")[0],
            "data": [{"object": "embedding", "index": 0, "embedding": result["embedding"]}],
            "dim": len(result["embedding"]), "duration_s": result["duration_s"],
        }

    @app.post("/v1/audio/speech")
    async def speech(req: SpeechRequest) -> Any:
        fmt = req.response_format
        try:
            ingress.require("tts")
            check_model("tts", req.model)
            if fmt not in SPEECH_MEDIA_TYPES:
                raise InputError(f"response_format must be one of {', '.join(SPEECH_MEDIA_TYPES)}")
            if req.stream_format not in (None, "audio", "sse"):
                raise InputError("stream_format must be 'audio' or 'sse'")
            if req.stream_format == "sse" and fmt not in STREAMED_FORMATS:
                raise InputError(f"stream_format 'sse' sends the audio as it is made: use response_format "
                                 f"{', '.join(sorted(STREAMED_FORMATS))}")
            if len(req.input) > opts.max_text_chars:
                raise InputError(f"input is {len(req.input)} characters; the limit is {opts.max_text_chars}")
            if not req.input.strip():
                raise InputError("input is empty: give the text to speak")
            gen = ingress.tts.options(stream=True).stream.remote(req.input, req.voice, req.lang, req.speed)
            first = await gen.__anext__()  # validation errors surface here, before any byte is sent
        except StopAsyncIteration:
            return error_response(InputError("nothing to say in this input"))
        except Exception as exc:
            return error_response(exc, opts.retry_after_s)
        sr = TTS_SAMPLE_RATE
        headers = _ignored({"instructions": bool(req.instructions), **{k: True for k in req.model_extra or {}}})

        async def pieces() -> Any:  # (encoded bytes, words, samples) per chunk; header/trailer alone
            if fmt == "wav":
                yield streaming_wav_header(sr), [], 0
            mp3 = Mp3Stream(sr) if fmt == "mp3" else None
            async for audio, words in _chain(first, gen):
                yield (mp3.encode(audio) if mp3 else pcm16(audio)), words, len(audio)
            if mp3:
                yield mp3.close(), [], 0

        async def body() -> Any:
            done = False
            try:
                if req.stream_format == "sse":
                    offset = 0.0
                    async for data, words, samples in pieces():
                        event = {"type": "speech.audio.delta", "audio": base64.b64encode(data).decode(),
                                 "words": [{"word": w, "start": round(offset + a, 3), "end": round(offset + b, 3)}
                                           for w, a, b in words]}
                        yield f"data: {json.dumps(event, ensure_ascii=False)}\n\n".encode()
                        offset += samples / sr
                    done_event = {"type": "speech.audio.done", "duration_s": round(offset, 3)}
                    yield f"data: {json.dumps(done_event)}\n\n".encode()
                elif fmt in STREAMED_FORMATS:
                    async for data, _, _ in pieces():
                        yield data
                else:  # flac/opus headers need the whole stream: encode once complete
                    from voxray.audio import encode_audio

                    parts = [audio async for audio, _ in _chain(first, gen)]
                    yield encode_audio(np.concatenate(parts), sr, fmt)
                done = True
            finally:
                if not done:  # the client went away: stop the replica's synthesis now
                    gen.cancel()

        media = "text/event-stream" if req.stream_format == "sse" else SPEECH_MEDIA_TYPES[fmt]
        return StreamingResponse(body(), media_type=media, headers=headers)

    from voxray.deployments.web import add_web_routes  # last: the page itself is served before auth

    add_web_routes(app, tts_model=config.tts.model, voices=config.tts.voices)
    return app


def served_name(model: str, configured: str | None, default: str | None = None) -> str:
    """The id clients see for a model: the configured name, else the hub id, else the local
    directory's or file's name (a server path never leaves the server)."""
    import os

    if configured:
        return configured
    if model == "embedded" and default:
        return default
    if os.path.isabs(model) or model.startswith((".", "~")) or os.path.exists(model):
        base = os.path.basename(os.path.normpath(model))
        return os.path.splitext(base)[0] if os.path.isfile(model) else base
    return model


async def _chain(first: Any, rest: Any) -> Any:
    """The first item already awaited, then the rest of an async iterator."""
    yield first
    async for item in rest:
        yield item


def make_ingress(config: ServeAppConfig) -> Any:
    """The Serve ingress deployment class wrapping :func:`create_app` (built per config)."""

    class Ingress:
        def __init__(self, config: dict[str, Any], asr: Any = None, embed: Any = None, tts: Any = None) -> None:
            self.config = ServeAppConfig(**config)
            self.asr, self.embed, self.tts = asr, embed, tts
            self.metrics = Metrics()
            self._voices: list[dict[str, Any]] | None = None
            self._asr_languages: list[str] | None = None
            ing = self.config.ingress
            self.api_key = ing.api_key()
            if ing.auth_required and not self.api_key:
                where = f"file {ing.api_key_file}" if ing.api_key_file else f"${ing.api_key_env}"
                raise RuntimeError(
                    f"auth is required but this ingress replica finds no API key in {where}: set it on every "
                    "node (a Kubernetes Secret as env or file) or use ingress.api_key_file"
                )

        def enabled(self, kind: str) -> bool:
            return getattr(self, kind) is not None

        def require(self, kind: str) -> None:
            if not self.enabled(kind):
                raise ModelUnavailableError(f"the {kind} deployment is not enabled in this application")

        def model_names(self, kind: str) -> list[str]:
            c = self.config
            name = {
                "asr": served_name(c.asr.model, c.asr_deployment.name),
                "embed": served_name(c.embed.model, c.embed_deployment.name),
                "tts": served_name(c.tts.model, c.tts_deployment.name, "kokoro-82m"),
            }[kind]
            aliases = {"asr": c.ingress.asr_aliases, "embed": c.ingress.embed_aliases, "tts": c.ingress.tts_aliases}
            return list(dict.fromkeys([name, *aliases[kind]]))

        async def call(self, kind: str, method: str, *args: Any) -> Any:
            """Call a model deployment; an idempotent request whose replica died is retried
            (``replica_retries``) on a live one, and each such failure is counted."""
            handle = getattr(self, kind)
            retries = self.config.ingress.replica_retries
            for attempt in range(retries + 1):
                try:
                    return await getattr(handle, method).remote(*args)
                except Exception as exc:
                    if not _replica_died(exc):
                        raise
                    last = attempt == retries
                    self.metrics.replica_failures.labels(kind, "failed" if last else "retried").inc()
                    logger.warning("%s replica died under a request (%s)%s", kind, type(_unwrap(exc)).__name__,
                                   "" if last else "; retrying")
                    if last:
                        raise
            raise AssertionError("unreachable")

        async def asr_languages(self) -> list[str]:
            if self._asr_languages is None:
                self._asr_languages = (await self.call("asr", "describe"))["languages"]
            return self._asr_languages

        async def voices(self) -> list[dict[str, Any]]:
            if self._voices is None:
                self._voices = await self.tts.voices.remote()
            return self._voices

        async def refresh_batch_metrics(self) -> None:
            stats = ("requests", "batches", "max_batch", "mean_batch", "audio_s", "health_probes", "cancelled",
                     "chunks", "chunks_after_cancel", "rss_mb", "peak_rss_mb", "pid")
            for kind in ("asr", "embed", "tts"):
                handle = getattr(self, kind)
                if handle is None:
                    continue
                try:
                    counters = (await asyncio.wait_for(handle.info.remote(), 10))["counters"]
                except Exception:  # a replica restarting or busy must not break /metrics
                    continue
                for stat in stats:
                    self.metrics.batch.labels(kind, stat).set(counters[stat])

    @serve.deployment(name="Ingress")
    @serve.ingress(create_app(config, _ReplicaIngress()))
    class IngressDeployment(Ingress):
        def __init__(self, config: dict[str, Any], asr: Any = None, embed: Any = None, tts: Any = None) -> None:
            super().__init__(config, asr, embed, tts)
            _ReplicaIngress.current = self  # one ingress object per replica process

    return IngressDeployment


class _ReplicaIngress:
    """The routes close over this stand-in; it forwards to the replica's live ingress object,
    which only exists once Serve has constructed the deployment inside the replica."""

    current: Any = None

    def __getattr__(self, name: str) -> Any:
        return getattr(type(self).current, name)
