"""Python/JS Kokoro parity: the embedded int8 graph run by onnxruntime-node (web/src/kokoro.js, the
code the page runs) against voxray's Python path (TTSPipeline's style row + repair_output), on fixed
token sequences, voices (one a blend) and speeds. Also pins the style-row rule on both sides."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
WEB = ROOT / "web"
#: Stated tolerance: same sample count; max |diff| <= 1e-4 of full scale and SNR >= 60 dB (measured: bit-identical)
#: (the two onnxruntime builds may order int8 accumulations differently).
MAX_ABS = 1e-4
MIN_SNR_DB = 60.0
PHONEMES = {
    "hello": "həlˈO wˈɜɹld",
    "kokoro": "kˈOkəɹO",
    "ko": "annjʌŋhasejo",
}
CASES = [
    {"id": "hello-alpha-1.0", "text": "hello", "voice": "jf_alpha", "speed": 1.0},
    {"id": "kokoro-kumo-1.3", "text": "kokoro", "voice": "jm_kumo", "speed": 1.3},
    {"id": "ko-blend-0.8", "text": "ko", "voice": "jf_alpha(2)+jm_kumo(1)", "speed": 0.8},
]


def _node() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not installed: the parity suite needs node + npm (on every machine of this kind)")
    if not (WEB / "node_modules" / "onnxruntime-node").is_dir():
        pytest.fail("web/node_modules is missing: run `make web` (npm ci in web/)")
    return node


def test_js_rules_selftest():
    """The JS style-row rule is the content-token count, clamped to the table (as in Python)."""
    from voxray.tts.pipeline import TTSPipeline

    out = subprocess.run([_node(), "parity/run.mjs", "--selftest"], cwd=WEB, capture_output=True, text=True,
                         timeout=60, check=True)
    rules = json.loads(out.stdout)
    assert (rules["row_1"], rules["row_9"], rules["row_509"], rules["row_510"]) == (1, 9, 509, 509)
    table = np.arange(510 * 256, dtype=np.float32).reshape(510, 1, 256)
    for n in (1, 9, 509, 510):
        row = TTSPipeline.style_for(None, table, n)  # uses no pipeline state
        assert np.array_equal(row, table[rules[f"row_{n}"]].reshape(1, -1)), n
    assert rules["blend"] == [["jf_alpha", 2], ["jm_kumo", 1]]
    from voxray.tts.onnx_runner import repair_output

    py = repair_output(np.full(200, 1.5, np.float32))[:20]
    np.testing.assert_array_equal(np.asarray(rules["repaired_head"], np.float32), py)


def _snr_db(ref: np.ndarray, test: np.ndarray) -> float:
    noise = float(np.sum((ref.astype(np.float64) - test) ** 2))
    return float("inf") if noise == 0 else 10 * np.log10(float(np.sum(ref.astype(np.float64) ** 2)) / noise)


def test_node_matches_python(tmp_path):
    node = _node()
    from voxray.tts.assets import embedded_vocab, resolve_model
    from voxray.tts.onnx_runner import KokoroONNX
    from voxray.tts.pipeline import PlannedChunk, TTSPipeline
    from voxray.tts.voices import VoiceBank, embedded_voices

    model = resolve_model(None)
    vocab = embedded_vocab()
    voices = embedded_voices()
    pipe = TTSPipeline(runner=KokoroONNX(model, threads=1), voices=VoiceBank(voices))
    files = {}
    for name in ("jf_alpha", "jm_kumo"):
        files[name] = str(tmp_path / f"{name}.f32")
        np.ascontiguousarray(voices[name], np.float32).tofile(files[name])
    cases = [{**c, "tokens": [vocab[ch] for ch in PHONEMES[c["text"]] if ch in vocab]} for c in CASES]
    spec = {"model": str(model), "voices": files, "threads": 1, "cases": cases}
    (tmp_path / "cases.json").write_text(json.dumps(spec))
    out_dir = tmp_path / "js"
    proc = subprocess.run([node, "parity/run.mjs", str(tmp_path / "cases.json"), str(out_dir)], cwd=WEB,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    js = json.loads((out_dir / "results.json").read_text())["results"]
    report = {}
    for c in cases:
        table = pipe.voices.get(c["voice"])
        chunk = PlannedChunk(c["text"], PHONEMES[c["text"]], c["tokens"])
        (py,) = [r.audio for r in pipe._synthesize([chunk], table, c["speed"])]
        got = np.fromfile(out_dir / f"{c['id']}.f32", dtype=np.float32)
        # the style row: content-token count on both sides
        assert js[c["id"]]["row"] == len(c["tokens"])
        assert np.array_equal(pipe.style_for(table, len(c["tokens"])), table[len(c["tokens"])].reshape(1, -1))
        assert got.shape == py.shape, (c["id"], got.shape, py.shape)  # same duration, to the sample
        diff = float(np.max(np.abs(got - py)))
        snr = _snr_db(py, got)
        report[c["id"]] = {"samples": len(py), "max_abs": diff, "snr_db": snr}
        assert diff <= MAX_ABS and snr >= MIN_SNR_DB, report[c["id"]]
        assert float(np.max(np.abs(py[:16]))) == 0.0 and float(np.max(np.abs(got[:16]))) == 0.0  # click removed
    # the suite can see a style-row change: the upstream rule (one row earlier) is far outside the tolerance
    c = cases[0]
    n = len(c["tokens"])
    from voxray.tts.onnx_runner import repair_output

    table = pipe.voices.get(c["voice"])
    upstream = repair_output(pipe.runner.infer(c["tokens"], table[n - 1].reshape(1, -1), c["speed"]))
    got = np.fromfile(out_dir / f"{c['id']}.f32", dtype=np.float32)
    m = min(len(upstream), len(got))
    assert np.max(np.abs(upstream[:m] - got[:m])) > 100 * MAX_ABS or len(upstream) != len(got)
    print(json.dumps(report))
