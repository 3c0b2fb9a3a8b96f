"""The Kokoro pipeline on the real embedded int8 model, real misaki + espeak-ng G2P."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from voxray.errors import InputError, TextError, UnknownLanguageError, UnknownVoiceError
from voxray.text import normalize_text
from voxray.tts import TTSPipeline, TTSResult
from voxray.tts.onnx_runner import LEVEL_DEFECT, repair_output


@pytest.fixture(scope="module")
def pipe() -> TTSPipeline:
    return TTSPipeline(threads=2)


def _rms(audio: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(audio, dtype=np.float64))))


@pytest.mark.parametrize(
    ("lang", "text"),
    [("en-us", "Hello world, this is a test."), ("ko", "안녕하세요. 날씨가 좋네요.")],
)
def test_short_text_gives_plausible_speech(pipe, lang, text):
    result = pipe.synthesize(text, lang=lang)
    assert result.sample_rate == 24000
    assert result.audio.dtype == np.float32 and result.audio.ndim == 1
    # ~10-20 characters per second of speech; generous bounds around that
    assert len(text) / 30 < result.duration_s < len(text) / 3
    assert _rms(result.audio) > 0.01 and np.abs(result.audio).max() < 1.0
    assert result.phonemes and not any("\uac00" <= c <= "\ud7a3" for c in result.phonemes)  # IPA, not Hangul


def test_faster_speed_gives_shorter_audio(pipe):
    text = "The quick brown fox."
    fast = pipe.synthesize(text, speed=1.25).duration_s
    slow = pipe.synthesize(text, speed=0.8).duration_s
    assert fast < slow * 0.8


def test_generator_yields_chunks_that_round_trip(pipe):
    small = TTSPipeline(runner=pipe.runner, voices=pipe.voices, max_tokens=24)  # shares the loaded model
    text = "Chunks stream early. Playback can start!\n\nA paragraph, then more."
    results = list(small(text))
    assert len(results) >= 3 and all(isinstance(r, TTSResult) for r in results)
    assert [r.index for r in results] == list(range(len(results)))
    assert " ".join(r.graphemes for r in results) == normalize_text(text)
    assert all(r.tokens <= 24 and r.phonemes and r.duration_s > 0.3 for r in results)


def test_5000_characters_chunk_within_the_model_limit(pipe):
    sentences = [
        "Kokoro turns phonemes into speech at twenty four kilohertz.",
        "Long documents are split at sentence boundaries, then packed into chunks.",
        "No chunk may exceed five hundred and ten phoneme tokens, and no word is ever cut",
        "Numbers like 1,234 and abbreviations like Dr. Smith are read aloud correctly.",
    ]
    text, i = "", 0
    while len(text) < 5000:
        text += sentences[i % len(sentences)] + (" " if i % 7 else "\n\n")
        i += 1
    text = text[:5000].rsplit(" ", 1)[0]
    text = text[:1500] + " " + " ".join(["and on"] * 200) + " " + text[1500:]  # one sentence over the limit
    planned = pipe.plan(text)
    assert " ".join(p.graphemes for p in planned) == normalize_text(text)
    assert max(len(p.tokens) for p in planned) <= 510
    assert len(planned) >= 10 and sum(len(p.tokens) for p in planned) > 4000
    # the style row for a full chunk exists (the table has 510 rows: index 510 would overflow)
    table = pipe.voices.get("jf_alpha")
    assert pipe.style_for(table, 510).shape == (1, 256)


def test_blend_and_voice_choice_change_the_audio(pipe):
    text = "Voices differ."
    a = pipe.synthesize(text, voice="jf_alpha").audio
    b = pipe.synthesize(text, voice="jf_alpha(1)+jm_kumo(3)").audio
    assert len(a) != len(b) or not np.allclose(a, b)


def test_errors_are_typed_and_say_what_to_fix(pipe):
    with pytest.raises(UnknownVoiceError, match="jf_alpha"):
        pipe("Hello.", voice="af_nobody")
    with pytest.raises(UnknownLanguageError, match="en-us"):
        pipe("Hello.", lang="tlh")
    with pytest.raises(TextError):
        pipe("   \n ")
    with pytest.raises(InputError, match="between 0.5 and 2.0"):
        pipe("Hello.", speed=3.0)


def test_vocab_misses_are_reported_once(pipe, caplog):
    caplog.set_level(logging.WARNING, logger="voxray.tts")
    text = "Say [click](/ʘæk/) twice, [click](/ʘæk/)."
    first = list(pipe(text))
    second = list(pipe(text))
    assert all("ʘ" in r.dropped for r in first + second)
    warnings = [r for r in caplog.records if "ʘ" in r.getMessage()]
    assert len(warnings) == 1 and "not in Kokoro's vocabulary" in warnings[0].getMessage()


def test_fade_in_removes_the_export_click(pipe):
    chunk = pipe.plan("Pop goes the weasel.")[0]
    style = pipe.style_for(pipe.voices.get("jf_alpha"), len(chunk.tokens))
    raw = pipe.runner.infer(chunk.tokens, style, 1.0)
    fixed = repair_output(raw)
    ms = 24  # one millisecond at 24 kHz

    def spike(audio: np.ndarray) -> float:
        return float(np.abs(audio[:ms]).max() / (np.abs(audio[ms : 10 * ms]).max() + 1e-12))

    assert spike(raw) > 10  # the export's defect is there in the raw output...
    assert spike(fixed) <= 1.0  # ...and gone after the fade-in
    interior = slice(len(raw) // 4, 3 * len(raw) // 4)
    np.testing.assert_allclose(fixed[interior] * LEVEL_DEFECT, raw[interior], rtol=1e-5, atol=1e-7)
    streamed = next(iter(pipe("Pop goes the weasel.")))
    assert float(np.abs(streamed.audio[:ms]).max()) <= float(np.abs(streamed.audio[ms : 10 * ms]).max())


def test_cli_say_and_voices(tmp_path, capsys):
    import soundfile as sf

    from voxray.cli import main

    out = tmp_path / "hi.flac"
    assert main(["say", "Hi", "there.", "-o", str(out), "--voice", "jm_kumo", "--speed", "1.1"]) == 0
    audio, sr = sf.read(out)
    assert sr == 24000 and 0.3 < len(audio) / sr < 5
    assert main(["voices", "--json"]) == 0
    assert '"jm_kumo"' in capsys.readouterr().out
    assert main(["say", "Hi", "-o", str(tmp_path / "x.wav"), "--voice", "nobody"]) == 2
