"""The web routes (voxray/deployments/web.py) on a plain FastAPI app: the page without auth, the
browser's Kokoro inputs (token ids from voxray's G2P, voice style tables) with it."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from voxray.deployments.web import add_web_routes, static_dir

KEY = "test-key-123"


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    root = tmp_path_factory.mktemp("static")
    (root / "index.html").write_text("<!doctype html><title>voxray</title>")
    (root / "app.js").write_text("console.log(1)")
    (root / "x.wasm").write_bytes(b"\0asm")
    app = FastAPI()
    add_web_routes(app, api_key=lambda: KEY, static_root=root)
    with TestClient(app) as c:
        yield c


AUTH = {"Authorization": f"Bearer {KEY}"}


def test_static_page_needs_no_key_and_stays_inside(client):
    r = client.get("/")
    assert r.status_code == 200 and "voxray" in r.text and r.headers["content-type"].startswith("text/html")
    assert client.get("/static/app.js").headers["content-type"].startswith("text/javascript")
    assert client.get("/static/x.wasm").headers["content-type"] == "application/wasm"
    assert client.get("/static/../../etc/passwd").status_code == 404
    assert client.get("/static/%2e%2e/%2e%2e/etc/passwd").status_code == 404
    assert client.get("/static/missing.js").status_code == 404


def test_api_routes_need_the_key(client):
    assert client.post("/v1/audio/phonemes", json={"input": "hi"}).status_code == 401
    assert client.get("/v1/audio/voices/jf_alpha/style").status_code == 401
    assert client.get("/v1/audio/kokoro/model.onnx", headers={"Authorization": "Bearer nope"}).status_code == 401


def test_phonemes_are_the_pipelines_tokens(client):
    from voxray.tts.pipeline import TTSPipeline

    text = "Hello from voxray. This is a test."
    r = client.post("/v1/audio/phonemes", json={"input": text, "lang": "en-us"}, headers=AUTH)
    assert r.status_code == 200, r.text
    body = r.json()
    pipe = TTSPipeline(runner=object())
    planned = pipe.plan(text, "en-us")
    assert [c["tokens"] for c in body["chunks"]] == [p.tokens for p in planned]
    assert body["chunks"][0]["tokens"] and body["sample_rate"] == 24000
    bad = client.post("/v1/audio/phonemes", json={"input": "hi", "lang": "xx"}, headers=AUTH)
    assert bad.status_code == 400 and "language" in bad.json()["error"]["message"]
    assert client.post("/v1/audio/phonemes", json={"input": "  "}, headers=AUTH).status_code == 400


def test_voice_style_tables(client):
    from voxray.tts.voices import embedded_voices

    r = client.get("/v1/audio/voices/jm_kumo/style", headers=AUTH)
    assert r.status_code == 200 and r.headers["x-voxray-shape"] == "510,256"
    table = np.frombuffer(r.content, "<f4").reshape(510, 256)
    np.testing.assert_array_equal(table, embedded_voices()["jm_kumo"].reshape(510, 256))
    unknown = client.get("/v1/audio/voices/nobody/style", headers=AUTH)
    assert unknown.status_code == 400 and "jf_alpha" in unknown.json()["error"]["message"]


def test_built_page_is_in_the_package():
    """`make web` (a dependency of `make test`) put the bundle where the wheel ships it from."""
    root = static_dir()
    for name in ("index.html", "app.js", "app.css", "ort-wasm-simd-threaded.wasm", "ort-wasm-simd-threaded.mjs"):
        assert (root / name).is_file(), f"{name} missing from {root}: run `make web`"
    assert "cdn" not in (root / "index.html").read_text().lower()


def test_page_bypasses_an_earlier_auth_middleware(tmp_path):
    """As in the ingress (auth on every route but /healthz): the page loads, the API stays closed."""
    from fastapi import Request
    from fastapi.responses import JSONResponse

    (tmp_path / "index.html").write_text("<!doctype html><title>voxray</title>")
    app = FastAPI()

    @app.middleware("http")
    async def deny(request: Request, call_next):
        if request.url.path != "/healthz":
            return JSONResponse({"error": "unauthorized"}, status_code=401)
        return await call_next(request)

    add_web_routes(app, static_root=tmp_path)
    with TestClient(app) as c:
        assert c.get("/").status_code == 200
        assert c.post("/v1/audio/phonemes", json={"input": "hi"}).status_code == 401
        assert c.get("/v1/audio/kokoro/model.onnx").status_code == 401
