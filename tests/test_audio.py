import numpy as np
import pytest

from voxray.audio import decode_audio, encode_audio, probe, resample, write_audio
from voxray.errors import AudioDecodeError, EmptyAudioError, InputNotFoundError
from voxray.testing import synth_speechlike


@pytest.mark.parametrize("fmt", ["wav", "flac", "ogg", "mp3"])
@pytest.mark.parametrize("sr", [8000, 22050, 48000])
def test_decode_any_format_and_rate_to_16k_mono(fmt, sr):
    audio = resample(synth_speechlike(1.5), 16000, sr)
    stereo = np.stack([audio, audio], axis=1)
    out = decode_audio(encode_audio(stereo, sr, fmt), 16000)
    assert out.dtype == np.float32 and out.ndim == 1
    # lossy codecs add/remove a few priming samples; length is within 60 ms of 1.5 s
    assert abs(len(out) - 24000) < 0.06 * 16000
    if fmt in ("wav", "flac"):
        ref = synth_speechlike(1.5)
        n = min(len(ref), len(out))
        assert np.corrcoef(ref[:n], out[:n])[0, 1] > 0.99


def test_stereo_is_channel_mean(tmp_path):
    left = synth_speechlike(1.0, seed=1)
    right = synth_speechlike(1.0, seed=2)
    path = tmp_path / "s.wav"
    write_audio(path, np.stack([left, right], axis=1) * 0.5, 16000)
    out = decode_audio(str(path))
    np.testing.assert_allclose(out, (left + right) * 0.25, atol=2e-4)


def test_probe_reads_header_only(tmp_path):
    path = tmp_path / "a.flac"
    write_audio(path, synth_speechlike(2.0, 22050), 22050)
    info = probe(path)
    assert info is not None and info.sample_rate == 22050 and abs(info.duration_s - 2.0) < 0.01
    assert probe(tmp_path / "missing.wav") is None


def test_bad_inputs_raise_typed_errors(tmp_path):
    with pytest.raises(EmptyAudioError, match="empty"):
        decode_audio(b"")
    with pytest.raises(AudioDecodeError, match="not a supported audio file"):
        decode_audio(b"definitely not audio" * 50)
    wav = encode_audio(synth_speechlike(1.0), 16000, "wav")
    with pytest.raises(AudioDecodeError, match="truncated"):
        decode_audio(wav[: len(wav) // 2])
    with pytest.raises(InputNotFoundError, match="not found"):
        decode_audio(str(tmp_path / "nope.wav"))
    with pytest.raises(AudioDecodeError, match="directory"):
        decode_audio(str(tmp_path))


def test_fsspec_memory_url():
    import fsspec

    data = encode_audio(synth_speechlike(0.5), 16000, "flac")
    with fsspec.open("memory://bucket/a.flac", "wb") as fh:
        fh.write(data)
    assert len(decode_audio("memory://bucket/a.flac")) == 8000


def test_write_audio_is_atomic_and_roundtrips(tmp_path):
    path = tmp_path / "x" / "out.flac"
    write_audio(path, synth_speechlike(0.5, 24000), 24000)
    assert [p.name for p in path.parent.iterdir()] == ["out.flac"]
    assert len(decode_audio(str(path), 24000)) == 12000
