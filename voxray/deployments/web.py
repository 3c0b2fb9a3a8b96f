"""The web page and the routes the browser's own Kokoro needs (voxray extensions).

``add_web_routes(app)`` adds to a FastAPI app:

- ``GET /`` and ``GET /static/{file}``: the page bundled from ``web/`` into ``voxray/web_static``
  (built by ``make web``; no CDN). Static files hold no secret, so they are served before any
  auth middleware (browsers cannot send a key with a page load); everything else keeps auth.
- ``POST /v1/audio/phonemes``: ``{"input", "lang"}`` -> voxray's G2P as Kokoro token ids, chunked
  exactly as the server synthesises (``[{text, phonemes, tokens}]``).
- ``GET /v1/audio/voices/{name}/style``: a voice's style table as raw little-endian float32
  ``[rows, 256]`` (``X-Voxray-Shape``); blends are computed in the browser, by the same rule.
- ``GET /v1/audio/kokoro/model.onnx``: the Kokoro graph the server itself runs.

The G2P runs in this process (the ingress), in a worker thread; it loads on first use.
"""

from __future__ import annotations

import asyncio
import hmac
import mimetypes
import threading
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from voxray.errors import InputError, VoxrayError

STATIC_PREFIX = "/static/"
MAX_PHONEME_CHARS = 20_000


def static_dir() -> Path:
    """Where the built page lives (inside the installed package)."""
    return Path(str(resources.files("voxray") / "web_static"))


class PhonemesRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    input: str = Field(..., description="text to phonemize")
    lang: str | None = Field(None, description="language code (default: the TTS default, en-us)")
    voice: str | None = Field(None, description="accepted and ignored (the token ids do not depend on it)")


class _Planner:
    """TTSPipeline's text side only (normalise, G2P, chunk, vocab): no model is loaded."""

    def __init__(self, voices: tuple[str, ...] = ()) -> None:
        self._voices = voices
        self._pipe: Any = None
        self._lock = threading.Lock()

    @property
    def pipe(self) -> Any:
        with self._lock:
            if self._pipe is None:
                from voxray.tts.pipeline import TTSPipeline
                from voxray.tts.voices import VoiceBank

                self._pipe = TTSPipeline(runner=object(), voices=VoiceBank(extra=self._voices))
            return self._pipe


class _StaticFirst:
    """ASGI wrapper that answers GET ``/`` and ``/static/*`` from the package before other middleware."""

    def __init__(self, app: Any, root: Callable[[], Path]) -> None:
        self.app = app
        self.root = root

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope.get("method") in ("GET", "HEAD"):
            path = scope.get("path", "")
            rootp = scope.get("root_path", "") or ""
            if rootp and path.startswith(rootp):
                path = path[len(rootp):] or "/"
            name = "index.html" if path in ("/", "/index.html") else (
                path[len(STATIC_PREFIX):] if path.startswith(STATIC_PREFIX) else None)
            if name is not None:
                response = _static_response(self.root(), name)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _static_response(root: Path, name: str) -> Response:
    base = root.resolve()
    target = (base / name).resolve()
    if not target.is_relative_to(base) or not target.is_file():
        if name == "index.html":
            return JSONResponse({"error": {"message": "the web page is not built: run `make web`",
                                           "type": "not_found", "code": 404}}, status_code=404)
        return JSONResponse({"error": {"message": f"no static file {name!r}", "type": "not_found", "code": 404}},
                            status_code=404)
    media = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
    if target.suffix == ".mjs":
        media = "text/javascript"
    elif target.suffix == ".wasm":
        media = "application/wasm"
    return FileResponse(target, media_type=media, headers={"Cache-Control": "no-cache"})


def _error(exc: Exception) -> JSONResponse:
    if isinstance(exc, VoxrayError):
        status = getattr(exc, "status", 400)
        return JSONResponse({"error": {"message": str(exc), "type": exc.kind, "code": status}}, status_code=status)
    return JSONResponse({"error": {"message": f"{type(exc).__name__}: {exc}", "type": "internal", "code": 500}},
                        status_code=500)


def add_web_routes(
    app: FastAPI,
    *,
    tts_model: str | None = None,
    voices: tuple[str, ...] | list[str] = (),
    api_key: Callable[[], str | None] | None = None,
    max_text_chars: int = MAX_PHONEME_CHARS,
    static_root: Path | None = None,
) -> FastAPI:
    """Add the page, ``/v1/audio/phonemes``, voice style tables and the Kokoro graph to ``app``.

    ``tts_model``/``voices``: the TTS deployment's ``model`` and extra voice files (so the browser
    gets what the server runs). ``api_key``: when given, these ``/v1`` routes check
    ``Authorization: Bearer`` themselves (for apps without voxray's ingress middleware; the ingress
    already checks every route but ``/healthz``). Must be called before the app starts.
    """
    planner = _Planner(tuple(voices))
    model_lock = threading.Lock()
    model_path: list[Path] = []

    def check_key(request: Request) -> JSONResponse | None:
        key = api_key() if api_key else None
        if not key:
            return None
        given = request.headers.get("authorization", "")
        token = given[7:] if given.lower().startswith("bearer ") else ""
        if hmac.compare_digest(token.encode(), key.encode()):
            return None
        return JSONResponse({"error": {"message": "missing or invalid API key: send 'Authorization: Bearer <key>'",
                                       "type": "unauthorized", "code": 401}},
                            status_code=401, headers={"WWW-Authenticate": "Bearer"})

    @app.post("/v1/audio/phonemes", tags=["web"])
    async def phonemes(req: PhonemesRequest, request: Request) -> Any:
        """voxray's G2P as Kokoro token ids, chunked as the server synthesises (voxray extension)."""
        if (denied := check_key(request)) is not None:
            return denied
        try:
            if not req.input.strip():
                raise InputError("input is empty: give the text to phonemize")
            if len(req.input) > max_text_chars:
                raise InputError(f"input is {len(req.input)} characters; the limit is {max_text_chars}")
            pipe = await asyncio.to_thread(lambda: planner.pipe)
            lang = req.lang or pipe.options.lang
            chunks = await asyncio.to_thread(pipe.plan, req.input, lang)
        except Exception as exc:
            return _error(exc)
        return {"lang": lang, "sample_rate": 24000,
                "chunks": [{"text": c.graphemes, "phonemes": c.phonemes, "tokens": list(c.tokens), "dropped": c.dropped}
                           for c in chunks]}

    @app.get("/v1/audio/voices/{name}/style", tags=["web"])
    async def voice_style(name: str, request: Request) -> Any:
        """A voice's style table, raw little-endian float32 [rows, 256] (voxray extension)."""
        if (denied := check_key(request)) is not None:
            return denied
        try:
            pipe = await asyncio.to_thread(lambda: planner.pipe)
            if name not in pipe.voices:
                from voxray.errors import UnknownVoiceError

                raise UnknownVoiceError(f"unknown voice {name!r}; known voices: {', '.join(pipe.voices.names)}")
            table = np.ascontiguousarray(pipe.voices.get(name), dtype="<f4").reshape(-1, 256)
        except Exception as exc:
            return _error(exc)
        return Response(table.tobytes(), media_type="application/octet-stream",
                        headers={"X-Voxray-Shape": f"{table.shape[0]},{table.shape[1]}",
                                 "Cache-Control": "max-age=3600"})

    @app.get("/v1/audio/kokoro/model.onnx", tags=["web"])
    async def kokoro_model(request: Request) -> Any:
        """The Kokoro ONNX graph the server runs (for in-browser synthesis)."""
        if (denied := check_key(request)) is not None:
            return denied
        try:
            def resolve() -> Path:
                with model_lock:
                    if not model_path:
                        from voxray.tts.assets import resolve_model

                        model_path.append(resolve_model(tts_model))
                    return model_path[0]

            path = await asyncio.to_thread(resolve)
        except Exception as exc:
            return _error(exc)
        return FileResponse(path, media_type="application/octet-stream", headers={"Cache-Control": "max-age=86400"})

    root = static_root
    app.add_middleware(_StaticFirst, root=lambda: root or static_dir())
    return app
