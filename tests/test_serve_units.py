"""The Serve adapter's pure parts, without Ray: config rules, fitting and placement messages,
bounded decoding of hostile uploads, the continuous MP3 stream, languages and served names."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from voxray.audio import decode_audio, encode_audio
from voxray.deployments.config import ServeAppConfig
from voxray.deployments.formats import Mp3Stream
from voxray.deployments.ingress import SpeechRequest, served_name
from voxray.deployments.placement import (
    UnschedulableError,
    _pack,
    demands,
    fit_to_cluster,
    unschedulable_message,
)
from voxray.deployments.replicas import check_language, vocab_languages
from voxray.deployments.uploads import AudioLimits, decode_upload
from voxray.errors import InputError, PayloadTooLargeError, UnknownLanguageError
from voxray.testing import KOREAN_CHARS, synth_speechlike
from voxray.tts.config import TTSOptions

LIMITS = AudioLimits(max_audio_s=60)


def test_batches_that_cannot_fill_are_refused_at_load():
    with pytest.raises(ValidationError, match="max_ongoing_requests=8 is below max_batch_size=16"):
        ServeAppConfig(asr_deployment={"max_ongoing_requests": 8, "max_batch_size": 16})
    with pytest.raises(ValidationError, match="min_replicas=3 exceeds max_replicas=2"):
        ServeAppConfig(tts_deployment={"max_batch_size": 1, "autoscaling": {"min_replicas": 3, "max_replicas": 2}})


def test_shipped_config_fits_two_cpus_and_keeps_pins():
    import yaml

    shipped = Path(__file__).resolve().parents[1] / "deployments" / "serve.yaml"
    args = yaml.safe_load(shipped.read_text())["applications"][0]["args"]
    config = ServeAppConfig(**args)
    unfitted = sum(d.replicas * d.resources["CPU"] for d in demands(config))
    assert unfitted > 2  # Serve's defaults would never start on this machine
    fitted = fit_to_cluster(config, 2.0)
    asked = demands(fitted)
    assert sum(d.replicas * d.resources["CPU"] for d in asked) <= 2.0 + 1e-9
    assert _pack([d.resources for d in asked for _ in range(d.replicas)], [{"CPU": 2.0}])
    assert all(d.autoscaling.max_replicas * d.num_cpus <= 2.0 for d in fitted.model_deployments().values())
    # the realtime application is part of the fit (it starts beside the HTTP one), unless its ASR is off
    assert "RealtimeTranscription" in [d.deployment for d in asked] and 0 < fitted.realtime_deployment.num_cpus < 1
    no_asr = ServeAppConfig(**{**args, "asr_deployment": {**args["asr_deployment"], "enabled": False}})
    assert "RealtimeTranscription" not in [d.deployment for d in demands(no_asr)]
    pinned = fit_to_cluster(ServeAppConfig(**{**args, "tts_deployment": {**args["tts_deployment"], "num_cpus": 1}}), 2)
    assert pinned.tts_deployment.num_cpus == 1 and pinned.asr_deployment.num_cpus < 0.5


def test_unschedulable_message_names_each_deployment_its_ask_and_the_cluster():
    config = ServeAppConfig(asr_deployment={"num_cpus": 4}, tts_deployment={"num_gpus": 1, "max_batch_size": 1,
                                                                          "max_ongoing_requests": 4})
    nodes = [{"CPU": 2.0}]
    assert not _pack([d.resources for d in demands(config) for _ in range(d.replicas)], nodes)
    msg = unschedulable_message(config, nodes, "cannot place the Serve application")
    for needle in ("ASR 1 x {CPU: 4}", "Embed 1 x {CPU: 1}", "TTS 1 x {CPU: 1, GPU: 1}", "Ingress 1 x {CPU: 0.5}",
                   "the cluster has {CPU: 2} on 1 node(s)"):
        assert needle in msg, msg
    assert UnschedulableError(msg).status == 503


def test_packing_is_per_node_not_the_sum():
    assert not _pack([{"CPU": 1.5}, {"CPU": 1.5}], [{"CPU": 2.0}, {"CPU": 1.0}])
    assert _pack([{"CPU": 1.5}, {"CPU": 1.0}], [{"CPU": 2.0}, {"CPU": 1.0}])


def test_speed_rule_is_the_tts_options_rule():
    rule = TTSOptions.model_fields["speed"].metadata
    assert {type(m).__name__ for m in rule} >= {"Ge", "Le"}
    for value in (0.5, 1.0, 2.0):
        assert SpeechRequest(input="x", speed=value).speed == value
    for value in (0.49, 2.01, -1):
        with pytest.raises(ValidationError):
            SpeechRequest(input="x", speed=value)
        with pytest.raises(ValidationError):
            TTSOptions(speed=value)


def test_languages_from_the_vocabulary():
    assert vocab_languages(KOREAN_CHARS) == ["ko"]
    assert vocab_languages(list("abcdefghijklmnopqrstuvwxyz")) == []
    assert check_language("ko", ["ko"]) == "ko" and check_language("Korean", ["ko"]) == "ko"
    assert check_language(None, ["ko"]) is None
    with pytest.raises(UnknownLanguageError, match="ko \\(korean\\)"):
        check_language("en", ["ko"])
    with pytest.raises(UnknownLanguageError):
        check_language("definitely not", [])


def test_served_names_never_leak_server_paths(tmp_path):
    model_dir = tmp_path / "models" / "my-ctc"
    model_dir.mkdir(parents=True)
    assert served_name(str(model_dir), None) == "my-ctc"
    assert served_name("kresnik/wav2vec2-large-xlsr-korean", None) == "kresnik/wav2vec2-large-xlsr-korean"
    assert served_name("embedded", None, "kokoro-82m") == "kokoro-82m"
    onnx = tmp_path / "kokoro-v1.0.fp16.onnx"
    onnx.write_bytes(b"x")
    assert served_name(str(onnx), None) == "kokoro-v1.0.fp16"
    assert served_name(str(model_dir), "ko-asr") == "ko-asr"


def test_mp3_stream_is_one_continuous_stream():
    sr = 24000
    chunks = [synth_speechlike(d, sr, seed=i) for i, d in enumerate((0.7, 1.3, 2.1, 0.4))]
    enc = Mp3Stream(sr)
    data = b"".join(enc.encode(c) for c in chunks) + enc.close()
    total = sum(len(c) for c in chunks) / sr
    decoded = decode_audio(data, sr)
    assert abs(len(decoded) / sr - total) < 0.08  # one encoder delay, no per-chunk padding
    # per-chunk files (the old way) decode to the first chunk only, or with gaps
    separate = decode_audio(b"".join(encode_audio(c, sr, "mp3") for c in chunks), sr)
    assert abs(len(separate) / sr - total) > 0.2


# ------------------------------------------------------------------ hostile uploads, decoded in-process

def _wav_header(channels: int, rate: int, bits: int, data_size: int) -> bytes:
    block = max(1, channels * max(bits, 8) // 8)
    fmt = struct.pack("<HHIIHH", 1, channels & 0xFFFF, rate, (rate * block) & 0xFFFFFFFF, block & 0xFFFF, bits)
    return b"RIFF" + struct.pack("<I", 36 + data_size & 0xFFFFFFFF) + b"WAVEfmt " + struct.pack("<I", 16) + fmt + (
        b"data" + struct.pack("<I", data_size & 0xFFFFFFFF)
    )


def flac_with_unknown_length(seconds: float, sr: int = 16000) -> bytes:
    """A FLAC of silence whose STREAMINFO says 'length unknown' (0 samples): only decoding tells."""
    data = bytearray(encode_audio(np.zeros(int(seconds * sr), np.float32), sr, "flac"))
    assert data[:4] == b"fLaC"
    info = 8  # after 'fLaC' and the metadata block header
    data[info + 13] &= 0xF0  # the 36-bit total-samples field: bits in bytes 13 (low nibble) .. 17
    data[info + 14 : info + 18] = b"\0\0\0\0"
    return bytes(data)


def test_decode_bomb_with_a_lying_header_stops_at_the_limit():
    bomb = flac_with_unknown_length(600)
    assert len(bomb) < 200_000  # ten minutes of silence in a small upload
    with pytest.raises(PayloadTooLargeError, match="limit is 60 s"):
        decode_upload(bomb, "bomb.flac", LIMITS)
    honest = encode_audio(np.zeros(16000 * 600, np.float32), 16000, "flac")
    with pytest.raises(PayloadTooLargeError, match="600 s long"):
        decode_upload(honest, "long.flac", LIMITS)


def test_absurd_rates_and_channels_are_refused_by_header():
    with pytest.raises(InputError):
        decode_upload(_wav_header(1, 4_000_000_000, 16, 3200) + b"\0" * 3200, "x.wav", LIMITS)
    with pytest.raises(InputError):
        decode_upload(_wav_header(60000, 16000, 16, 3200) + b"\0" * 3200, "x.wav", LIMITS)


def test_bounded_decode_matches_the_decoder():
    for sr, fmt in ((16000, "wav"), (44100, "flac"), (8000, "ogg")):
        data = encode_audio(synth_speechlike(2.3, sr, seed=sr), sr, fmt)
        np.testing.assert_allclose(decode_upload(data, "x", LIMITS), decode_audio(data), atol=1e-6)


HOSTILE = st.one_of(
    st.binary(max_size=3000),
    st.builds(lambda c, r, b, n, body: _wav_header(c, r, b, n) + body,
              st.integers(0, 70000), st.integers(0, 2**32 - 1), st.sampled_from([0, 1, 8, 16, 24, 32, 64, 7]),
              st.integers(0, 2**32 - 1), st.binary(max_size=2000)),
    st.builds(lambda cut: encode_audio(synth_speechlike(0.5, 16000), 16000, "flac")[:cut], st.integers(0, 400)),
    st.builds(lambda cut: encode_audio(synth_speechlike(0.5, 16000), 16000, "mp3")[:cut], st.integers(0, 400)),
)


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(HOSTILE)
def test_hostile_bytes_raise_typed_errors_only(data):
    try:
        audio = decode_upload(data, "upload", LIMITS)
    except InputError as exc:  # 400/413 with a message; anything else would be a 500
        assert exc.message
        return
    assert audio.dtype == np.float32 and audio.ndim == 1 and np.isfinite(audio).all()
    assert len(audio) <= LIMITS.max_audio_s * 16000 + 16000


def test_a_failed_deploy_is_reported_by_its_cause_in_one_line():
    from voxray.deployments.placement import failure_summary

    status = (
        "The deployment failed to start 3 times in a row. This may be due to a problem with its constructor.\n"
        "Traceback (most recent call last):\n  File \"replicas.py\", line 9, in __init__\n"
        "ray.exceptions.RayTaskError(ModelUnavailableError): ray::ServeReplica:voxray:ASR (pid=1, ip=2)\n"
        "voxray.errors.ModelUnavailableError: cannot load /srv/m: no config.json"
    )
    assert failure_summary(status) == "ModelUnavailableError: cannot load /srv/m: no config.json"
    assert failure_summary("") == "no reason given"
