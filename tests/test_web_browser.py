"""The page in a real headless Chromium (Debian's `chromium`, driven by Python playwright through
executable_path; no browser download), against a small test server: FastAPI + add_web_routes + the
OpenAI routes the page calls, backed in-process by voxray's runners (Kokoro, the shipped Korean CTC
model). Screenshots go to out/screenshots/."""

from __future__ import annotations

import asyncio
import io
import json
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
SHOTS = ROOT / "out" / "screenshots"
KEY = "browser-key"
KO_CLIP = ROOT / "samples" / "ko" / "espeak" / "rt-000.flac"
#: In-browser synthesis (onnxruntime-web WASM) vs the server's Python path. The JS code is the one
#: that is bit-identical to Python under onnxruntime-node (test_web_parity), but WASM's int8 kernels
#: round differently from native x86 ones (measured: waveform SNR 13 dB, and on some inputs one
#: duration frame, 600 samples, apart), so the tolerance is on what is heard, not on samples:
#: length within 2%, RMS level within 1 dB (the 1/1.5 level fix is 3.5 dB), long-term log spectrum
#: correlation >= 0.95, and the click removed (first 16 samples exactly 0).
MAX_LEN_DIFF = 0.02
MAX_LEVEL_DB = 1.0
MIN_SPECTRUM_CORR = 0.95
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--autoplay-policy=no-user-gesture-required"]

pytestmark = pytest.mark.slow


class Speech(BaseModel):
    input: str
    voice: str = "jf_alpha"
    speed: float = 1.0
    lang: str | None = None
    model: str | None = None
    response_format: str = "pcm"


def _app():
    from voxray.asr import ASRRunner
    from voxray.asr.config import ASROptions
    from voxray.audio import decode_audio
    from voxray.deployments.formats import pcm16
    from voxray.deployments.web import add_web_routes
    from voxray.tts.pipeline import TTSPipeline

    tts = TTSPipeline(threads=1)
    asr = ASRRunner(ASROptions(model=str(ROOT / "models" / "ko-synthetic-ctc"), timestamps="word"))
    from voxray.embed.config import EmbedOptions
    from voxray.embed.runner import Embedder

    embedder = Embedder(EmbedOptions(model=str(ROOT / "models" / "ko-synthetic-ctc")))
    app = FastAPI()

    @app.middleware("http")
    async def auth(request: Request, call_next):
        if request.url.path.startswith("/v1/") and request.headers.get("authorization") != f"Bearer {KEY}":
            return JSONResponse({"error": {"message": "missing or invalid API key"}}, status_code=401)
        return await call_next(request)

    @app.post("/v1/audio/speech")
    async def speech(req: Speech):
        chunks = await asyncio.to_thread(lambda: [c.audio for c in tts(req.input, req.voice, req.lang, req.speed)])
        return StreamingResponse((pcm16(c) for c in chunks), media_type="audio/pcm")

    @app.get("/v1/audio/voices")
    async def voices():
        return {"voices": tts.voices.names}

    @app.post("/v1/audio/transcriptions")
    async def transcriptions(file: UploadFile = File(...), response_format: str = Form("json")):
        data = await file.read()
        audio = await asyncio.to_thread(decode_audio, io.BytesIO(data))
        result = (await asyncio.to_thread(asr.transcribe, [audio]))[0]
        words = [{"word": c["text"], "start": c["start"], "end": c["end"]} for c in result.chunks]
        return {"text": result.text, "words": words, "duration": result.duration_s}

    @app.post("/v1/audio/embeddings")
    async def embeddings(file: UploadFile = File(...)):
        audio = await asyncio.to_thread(decode_audio, io.BytesIO(await file.read()))
        result = (await asyncio.to_thread(embedder.embed, [audio]))[0]
        return {"object": "list", "data": [{"object": "embedding", "index": 0,
                                            "embedding": result.embedding.tolist()}]}

    add_web_routes(app)  # the ingress's auth covers /v1; here the middleware above does
    return app, tts, asr


@pytest.fixture(scope="module")
def server():
    import uvicorn

    app, tts, asr = _app()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.time() + 60
    while not srv.started and time.time() < deadline:
        time.sleep(0.1)
    yield f"http://127.0.0.1:{port}", tts, asr
    srv.should_exit = True
    thread.join(10)


@pytest.fixture(scope="module")
def page(server):
    if not Path(CHROMIUM).exists():
        pytest.fail("Debian chromium is not installed: apt-get install -y chromium (.ci/run does it)")
    from playwright.sync_api import sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        pg = browser.new_page()
        errors: list[str] = []
        pg.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        pg.on("pageerror", lambda e: errors.append(str(e)))
        pg.errors = errors
        pg.goto(server[0] + "/")
        yield pg
        browser.close()


def _snr_db(ref, test):
    m = min(len(ref), len(test))
    noise = float(np.sum((ref[:m].astype(np.float64) - test[:m]) ** 2))
    return float("inf") if noise == 0 else 10 * np.log10(float(np.sum(ref[:m].astype(np.float64) ** 2)) / noise)


def _ltas_db(x, n=1024, hop=256):
    frames = np.lib.stride_tricks.sliding_window_view(x.astype(np.float64), n)[::hop] * np.hanning(n)
    return 10 * np.log10(np.mean(np.abs(np.fft.rfft(frames, axis=1)) ** 2, axis=0) + 1e-12)


def audio_close(ref, got) -> dict:
    """The stated in-browser tolerance's measures."""
    rms = lambda a: float(np.sqrt(np.mean(a.astype(np.float64) ** 2)))  # noqa: E731
    return {
        "len_diff": abs(len(got) - len(ref)) / len(ref),
        "level_db": abs(20 * np.log10(rms(got) / rms(ref))),
        "spectrum_corr": float(np.corrcoef(_ltas_db(ref), _ltas_db(got))[0, 1]),
        "snr_db": _snr_db(ref, got),
        "head_zero": bool(np.all(got[:16] == 0)),
    }


def test_page_loads_without_console_errors(page):
    page.wait_for_load_state("networkidle")
    page.fill("#key", KEY)
    page.click("#key-save")
    page.wait_for_function("document.querySelectorAll('#voice-list option').length >= 5", timeout=30_000)
    page.screenshot(path=str(SHOTS / "01-loaded.png"), full_page=True)
    assert page.errors == [], page.errors
    assert page.evaluate("sessionStorage.getItem('voxray.apiKey')") == KEY


def test_speak_on_server_plays(page):
    page.fill("#speak-text", "Hello from voxray.")
    page.check("input[name=engine][value=server]")
    page.click("#speak-go")
    page.wait_for_function("document.querySelector('#speak-result').dataset.engine === 'server'", timeout=120_000)
    duration = float(page.get_attribute("#speak-result", "data-duration"))
    assert duration > 0.5
    assert page.evaluate("window.voxray.lastAudio.length") == round(duration * 24000)
    page.screenshot(path=str(SHOTS / "02-speak-server.png"), full_page=True)
    assert page.errors == [], page.errors


def test_speak_in_browser_matches_python(page, server):
    _, tts, _ = server
    text, voice, speed = "Kokoro in the browser.", "jf_alpha(2)+jm_kumo(1)", 1.1
    page.fill("#speak-text", text)
    page.fill("#speak-voice", voice)
    page.fill("#speak-speed", str(speed))
    page.check("input[name=engine][value=browser]")
    page.click("#speak-go")
    page.wait_for_function("document.querySelector('#speak-result').dataset.engine === 'browser'", timeout=400_000)
    got = np.asarray(page.evaluate("Array.from(window.voxray.lastAudio)"), np.float32)
    ref = tts.synthesize(text, voice=voice, lang="en-us", speed=speed).audio
    page.screenshot(path=str(SHOTS / "03-speak-browser.png"), full_page=True)
    m = audio_close(ref, got)
    print(f"in-browser (onnxruntime-web WASM) vs python: {m}")
    (SHOTS / "browser-parity.json").write_text(json.dumps(m))
    assert m["len_diff"] <= MAX_LEN_DIFF and m["level_db"] <= MAX_LEVEL_DB, m
    assert m["spectrum_corr"] >= MIN_SPECTRUM_CORR and m["head_zero"], m
    # the measures can tell: the raw export's level (no 1/1.5 fix) is outside the tolerance
    assert audio_close(ref, got * 1.5)["level_db"] > MAX_LEVEL_DB
    assert page.errors == [], page.errors


def test_upload_and_transcribe_matches_api(page, server):
    import httpx

    url, _, _ = server
    with open(KO_CLIP, "rb") as fh:
        api = httpx.post(url + "/v1/audio/transcriptions", files={"file": (KO_CLIP.name, fh.read())},
                         data={"response_format": "verbose_json"}, headers={"Authorization": f"Bearer {KEY}"},
                         timeout=120).json()
    page.set_input_files("#asr-file", str(KO_CLIP))
    page.click("#asr-go")
    page.wait_for_function("document.querySelector('#asr-text').textContent.length > 0", timeout=120_000)
    assert page.text_content("#asr-text") == api["text"] and api["text"]
    assert page.locator("#asr-words span").count() == len(api["words"])
    page.screenshot(path=str(SHOTS / "04-transcribe.png"), full_page=True)
    assert page.errors == [], page.errors


def test_embeddings_cosine_matches_api(page, server):
    import httpx

    url, _, _ = server
    clips = [ROOT / "samples" / "ko" / "espeak" / f"rt-00{i}.flac" for i in (0, 1)]
    vecs = []
    for clip in clips:
        r = httpx.post(url + "/v1/audio/embeddings", files={"file": (clip.name, clip.read_bytes())},
                       headers={"Authorization": f"Bearer {KEY}"}, timeout=120)
        vecs.append(np.asarray(r.json()["data"][0]["embedding"], np.float64))
    want = float(vecs[0] @ vecs[1] / np.linalg.norm(vecs[0]) / np.linalg.norm(vecs[1]))
    page.set_input_files("#emb-a", str(clips[0]))
    page.set_input_files("#emb-b", str(clips[1]))
    page.click("#emb-go")
    page.wait_for_function("document.querySelector('#emb-result').textContent.includes('cosine')", timeout=120_000)
    shown = float(page.text_content("#emb-result").split(":")[1])
    assert abs(shown - want) < 1e-4
    page.screenshot(path=str(SHOTS / "05-embeddings.png"), full_page=True)
    assert page.errors == [], page.errors
