"""Voices (embedded, files, blends) and the embedded model cache (no inference)."""

from __future__ import annotations

import numpy as np
import pytest

from voxray.errors import InputError, ModelUnavailableError, UnknownVoiceError
from voxray.storage import sha256_file
from voxray.tts import assets
from voxray.tts.voices import VoiceBank, load_voices, parse_blend

EMBEDDED = ["jf_alpha", "jf_gongitsune", "jf_nezumi", "jf_tebukuro", "jm_kumo"]


@pytest.fixture(scope="module")
def bank() -> VoiceBank:
    return VoiceBank()


def test_embedded_voices(bank):
    assert bank.names == EMBEDDED
    assert bank.get("jf_alpha").shape == (510, 1, 256)


def test_blend_is_a_normalised_weighted_mean(bank):
    a, k = bank.get("jf_alpha").astype(np.float64), bank.get("jm_kumo").astype(np.float64)
    np.testing.assert_allclose(bank.get("jf_alpha(2)+jm_kumo(1)"), (2 * a + k) / 3, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(bank.get("jf_alpha + jm_kumo"), (a + k) / 2, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(bank.get("jf_alpha(0.5)+jm_kumo(0.5)"), (a + k) / 2, rtol=1e-6, atol=1e-7)
    assert parse_blend("x(1.5)+y") == [("x", 1.5), ("y", 1.0)]


def test_unknown_voice_lists_the_known_ones(bank):
    with pytest.raises(UnknownVoiceError) as exc:
        bank.get("af_heart(1)+jf_alpha(1)")
    assert "'af_heart'" in exc.value.message
    assert all(name in exc.value.message for name in EMBEDDED)
    for bad in ["", "jf_alpha(", "jf_alpha(0)", "jf alpha"]:
        with pytest.raises(UnknownVoiceError):
            bank.get(bad)


def test_voice_files_npz_bin_npy_pt_and_folder(tmp_path, bank):
    import torch
    a = bank.get("jf_alpha")
    k = bank.get("jm_kumo")
    np.savez(tmp_path / "pack.npz", v_one=a, v_two=k)  # kokoro-onnx archive layout
    (tmp_path / "pack.npz").rename(tmp_path / "voices-v1.0.bin")  # kokoro-onnx names it .bin
    a.astype("<f4").tofile(tmp_path / "raw_voice.bin")  # onnx-community layout: raw float32
    np.save(tmp_path / "np_voice.npy", k)
    torch.save(torch.from_numpy(a.copy()), tmp_path / "pt_voice.pt")  # hexgrad layout
    voices = load_voices([tmp_path])
    assert sorted(voices) == ["np_voice", "pt_voice", "raw_voice", "v_one", "v_two"]
    for name, ref in [("v_one", a), ("v_two", k), ("raw_voice", a), ("np_voice", k), ("pt_voice", a)]:
        np.testing.assert_array_equal(voices[name], ref)
    extended = VoiceBank(extra=[str(tmp_path / "raw_voice.bin")])
    assert "raw_voice" in extended and "jf_alpha" in extended
    np.testing.assert_allclose(extended.get("raw_voice(1)+jm_kumo(1)"), (a + k) / 2, atol=1e-6)


def test_bad_voice_files_are_input_errors(tmp_path):
    np.zeros(100, dtype=np.float32).tofile(tmp_path / "short.bin")
    with pytest.raises(InputError, match="shape"):
        load_voices([tmp_path / "short.bin"])
    with pytest.raises(InputError, match="not found"):
        load_voices([tmp_path / "missing.npz"])
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(InputError, match="unsupported"):
        load_voices([tmp_path / "notes.txt"])


def test_embedded_model_cache_is_checked_and_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv("VOXRAY_CACHE", str(tmp_path))
    path = assets.resolve_model("embedded")
    assert path == tmp_path / "kokoro" / assets.EMBEDDED_FILE
    assert path.stat().st_size == assets.EMBEDDED_SIZE
    assert sha256_file(path) == assets.embedded_sha256()
    # partial cache (a killed copy): detected by size, rebuilt
    with open(path, "r+b") as fh:
        fh.truncate(1000)
    assert assets.resolve_model("embedded").stat().st_size == assets.EMBEDDED_SIZE
    # corrupted cache of the right size: detected by hash, rebuilt
    with open(path, "r+b") as fh:
        fh.seek(5000)
        fh.write(b"\xff" * 64)
    assets._verified.clear()
    assert sha256_file(assets.resolve_model("embedded")) == assets.embedded_sha256()
    assert not list(path.parent.glob("*.tmp"))  # no temp files left behind


def test_model_spec_errors_say_what_to_do(tmp_path):
    with pytest.raises(ModelUnavailableError, match="embedded"):
        assets.resolve_model(str(tmp_path / "missing.onnx"))
    with pytest.raises(ModelUnavailableError, match="without an .onnx"):
        assets.resolve_model(tmp_path)
    # hub ids are fetched through huggingface_hub; offline (tests set HF_HUB_OFFLINE) that fails cleanly
    with pytest.raises(ModelUnavailableError, match="local Kokoro .onnx"):
        assets.resolve_model("onnx-community/Kokoro-82M-v1.0-ONNX:onnx/model_quantized.onnx")
