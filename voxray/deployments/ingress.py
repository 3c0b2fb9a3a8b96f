"""FastAPI ingress: the OpenAI audio API (+ embeddings, voices, health, metrics) in front of the
model deployments. Validation, size limits, auth and audio decoding happen here, on CPU, so a
bad request costs no model time and never reaches (or crashes) a model replica."""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import time
from typing import Any

import numpy as np
from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from ray import serve

from voxray.audio import SAMPLE_RATE
from voxray.deployments.config import ServeAppConfig
from voxray.deployments.formats import (
    SPEECH_MEDIA_TYPES,
    STREAMED_FORMATS,
    TRANSCRIPT_FORMATS,
    pcm16,
    streaming_wav_header,
    to_srt,
    to_vtt,
    words_to_segments,
)
from voxray.errors import (
    InputError,
    ModelUnavailableError,
    OverloadedError,
    PayloadTooLargeError,
    VoxrayError,
    from_row_error,
)

logger = logging.getLogger("voxray.deployments")


class SpeechRequest(BaseModel):
    """``POST /v1/audio/speech`` body (OpenAI's fields, plus ``lang``)."""

    model_config = ConfigDict(extra="ignore", protected_namespaces=())
    model: str = "kokoro"
    input: str
    voice: str | None = None
    response_format: str = "mp3"
    speed: float = Field(1.0)
    lang: str | None = None
    instructions: str | None = None  # accepted for compatibility, not used by Kokoro


def _unwrap(exc: BaseException) -> BaseException:
    """A replica's exception arrives wrapped (RayTaskError); find the voxray error inside."""
    seen = 0
    while seen < 5 and not isinstance(exc, VoxrayError):
        cause = getattr(exc, "cause", None) or exc.__cause__
        if cause is None:
            break
        exc, seen = cause, seen + 1
    return exc


def error_response(exc: BaseException, retry_after: int = 2) -> JSONResponse:
    from ray.serve.exceptions import BackPressureError

    exc = _unwrap(exc)
    if isinstance(exc, BackPressureError):
        exc = OverloadedError("server is overloaded: too many queued requests; retry shortly")
    if not isinstance(exc, VoxrayError):
        logger.exception("internal error", exc_info=exc)
        exc = VoxrayError(f"internal error: {type(exc).__name__}")
    headers = {"Retry-After": str(retry_after)} if exc.status == 503 else None
    body = {"error": {"message": exc.message, "type": exc.kind, "code": exc.status}}
    return JSONResponse(body, status_code=exc.status, headers=headers)


class Metrics:
    """Request counts, latency and audio seconds per endpoint, in a private Prometheus registry."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter(
            "voxray_requests", "HTTP requests", ["endpoint", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "voxray_request_latency_seconds", "request latency", ["endpoint"], registry=self.registry,
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60),
        )
        self.audio = Counter("voxray_audio_seconds", "audio seconds processed", ["endpoint"], registry=self.registry)
        self.batch = Gauge(
            "voxray_deployment_batch", "dynamic batching of one model replica", ["deployment", "stat"],
            registry=self.registry,
        )

    def observe(self, endpoint: str, status: int, seconds: float, audio_s: float = 0.0) -> None:
        self.requests.labels(endpoint, str(status)).inc()
        self.latency.labels(endpoint).observe(seconds)
        if audio_s:
            self.audio.labels(endpoint).inc(audio_s)

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


def create_app(config: ServeAppConfig, ingress: Any) -> FastAPI:
    """Build the FastAPI app; ``ingress`` is the object holding the deployment handles."""
    app = FastAPI(title="voxray", version="0.1.0", description="ASR, embeddings and TTS on Ray Serve")
    opts = config.ingress
    max_bytes = int(opts.max_upload_mb * 1024 * 1024)

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, exc: RequestValidationError) -> JSONResponse:
        details = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        return error_response(InputError(f"invalid request: {details}"))

    @app.middleware("http")
    async def _auth_and_metrics(request: Request, call_next: Any) -> Response:
        start = time.perf_counter()
        key = os.environ.get(opts.api_key_env)
        root = request.scope.get("root_path", "") or ""
        path = request.url.path
        path = path[len(root) :] or "/" if root and path.startswith(root) else path  # the app's own route
        if key and path != "/healthz":
            given = request.headers.get("authorization", "")
            token = given[7:] if given.lower().startswith("bearer ") else ""
            if not hmac.compare_digest(token.encode(), key.encode()):
                ingress.metrics.observe(path, 401, time.perf_counter() - start)
                return JSONResponse(
                    {"error": {"message": "missing or invalid API key: send 'Authorization: Bearer <key>'",
                               "type": "unauthorized", "code": 401}},
                    status_code=401, headers={"WWW-Authenticate": "Bearer"},
                )
        response = await call_next(request)
        if path != "/metrics":
            ingress.metrics.observe(path, response.status_code, time.perf_counter() - start)
        return response

    async def read_upload(request: Request, file: UploadFile) -> bytes:
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > max_bytes + 64 * 1024:
            raise PayloadTooLargeError(f"upload is larger than the {opts.max_upload_mb:g} MB limit")
        data = await file.read(max_bytes + 1)
        if len(data) > max_bytes:
            raise PayloadTooLargeError(f"upload is larger than the {opts.max_upload_mb:g} MB limit")
        return data

    async def decode_upload(data: bytes, name: str) -> np.ndarray:
        from voxray.audio import decode_audio

        audio = await asyncio.to_thread(decode_audio, data, SAMPLE_RATE)
        if len(audio) / SAMPLE_RATE > opts.max_audio_s:
            raise InputError(f"{name}: audio is {len(audio) / SAMPLE_RATE:.0f} s; the limit is {opts.max_audio_s:g} s")
        return audio

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
            return error_response(exc)

    @app.post("/v1/audio/transcriptions")
    async def transcriptions(
        request: Request,
        file: UploadFile = File(...),
        model: str = Form(""),
        response_format: str = Form("json"),
        language: str | None = Form(None),
        prompt: str | None = Form(None),
        temperature: float | None = Form(None),
        timestamp_granularities: list[str] | None = Form(None, alias="timestamp_granularities[]"),
    ) -> Any:
        try:
            ingress.require("asr")
            check_model("asr", model)
            if response_format not in TRANSCRIPT_FORMATS:
                raise InputError(f"response_format must be one of {', '.join(TRANSCRIPT_FORMATS)}")
            grans = set(timestamp_granularities or [])
            if grans - {"word", "segment"}:
                raise InputError("timestamp_granularities[] takes 'word' and/or 'segment'")
            audio = await decode_upload(await read_upload(request, file), file.filename or "upload")
            want_words = response_format in ("verbose_json", "srt", "vtt")
            result = await ingress.asr.transcribe.remote(audio, "word" if want_words else "none")
            if result["error"]:
                raise from_row_error(result["error"])
        except Exception as exc:
            return error_response(exc, opts.retry_after_s)
        ingress.metrics.audio.labels("/v1/audio/transcriptions").inc(result["duration_s"])
        text = result["text"] or ""
        if response_format == "json":
            return {"text": text}
        if response_format == "text":
            return PlainTextResponse(text)
        words = [{"word": w["text"], "start": w["start"], "end": w["end"]} for w in result["chunks"]]
        segments = words_to_segments(result["chunks"])
        if response_format == "srt":
            return PlainTextResponse(to_srt(segments))
        if response_format == "vtt":
            return PlainTextResponse(to_vtt(segments), media_type="text/vtt")
        body: dict[str, Any] = {
            "task": "transcribe", "language": language or "korean", "duration": result["duration_s"],
            "text": text, "segments": [{**s, "tokens": [], "temperature": 0.0} for s in segments],
        }
        if "word" in grans or not grans:
            body["words"] = words
        return body

    @app.post("/v1/audio/embeddings")
    async def embeddings(request: Request, file: UploadFile = File(...), model: str = Form("")) -> Any:
        try:
            ingress.require("embed")
            check_model("embed", model)
            audio = await decode_upload(await read_upload(request, file), file.filename or "upload")
            result = await ingress.embed.embed.remote(audio)
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
        sr = 24000

        async def body() -> Any:
            if fmt in STREAMED_FORMATS:
                from voxray.audio import encode_audio

                if fmt == "wav":
                    yield streaming_wav_header(sr)

                def enc(chunk: np.ndarray) -> bytes:
                    return encode_audio(chunk, sr, "mp3") if fmt == "mp3" else pcm16(chunk)

                yield enc(first)
                async for chunk in gen:
                    yield enc(chunk)
            else:  # flac/opus headers need the whole stream: encode once complete
                from voxray.audio import encode_audio

                parts = [first] + [c async for c in gen]
                yield encode_audio(np.concatenate(parts), sr, fmt)

        return StreamingResponse(body(), media_type=SPEECH_MEDIA_TYPES[fmt])

    return app


def make_ingress(config: ServeAppConfig) -> Any:
    """The Serve ingress deployment class wrapping :func:`create_app` (built per config)."""

    class Ingress:
        def __init__(self, config: dict[str, Any], asr: Any = None, embed: Any = None, tts: Any = None) -> None:
            self.config = ServeAppConfig(**config)
            self.asr, self.embed, self.tts = asr, embed, tts
            self.metrics = Metrics()
            self._voices: list[dict[str, Any]] | None = None

        def enabled(self, kind: str) -> bool:
            return getattr(self, kind) is not None

        def require(self, kind: str) -> None:
            if not self.enabled(kind):
                raise ModelUnavailableError(f"the {kind} deployment is not enabled in this application")

        def model_names(self, kind: str) -> list[str]:
            c = self.config
            name = {"asr": c.asr.model, "embed": c.embed.model, "tts": f"kokoro-82m:{c.tts.model}"}[kind]
            aliases = {"asr": c.ingress.asr_aliases, "embed": c.ingress.embed_aliases, "tts": c.ingress.tts_aliases}
            return [name, *aliases[kind]]

        async def voices(self) -> list[dict[str, Any]]:
            if self._voices is None:
                self._voices = await self.tts.voices.remote()
            return self._voices

        async def refresh_batch_metrics(self) -> None:
            for kind in ("asr", "embed", "tts"):
                handle = getattr(self, kind)
                if handle is None:
                    continue
                try:
                    counters = (await handle.info.remote())["counters"]
                except Exception:  # a replica restarting must not break /metrics
                    continue
                for stat in ("requests", "batches", "max_batch", "mean_batch", "audio_s"):
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
