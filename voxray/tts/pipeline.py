"""Text -> chunks -> phonemes -> audio, as a generator (callers can stream chunk by chunk).

One :class:`TTSPipeline` holds one loaded model and voice bank and creates a G2P per language on
first use, so a job actor serves rows in any language with one model in memory.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from voxray.errors import InputError, TextError
from voxray.text import chunk_text, normalize_text
from voxray.tts.config import SAMPLE_RATE, TTSOptions

logger = logging.getLogger("voxray.tts")


@dataclass
class TTSResult:
    """One chunk of speech: the text it says, its phonemes and its audio (24 kHz float32 mono)."""

    index: int
    graphemes: str
    phonemes: str
    audio: np.ndarray
    sample_rate: int = SAMPLE_RATE
    tokens: int = 0
    dropped: str = ""  # phoneme symbols outside the model's vocab (reported, not spoken)

    @property
    def duration_s(self) -> float:
        return len(self.audio) / self.sample_rate


@dataclass
class Synthesis:
    """A whole utterance: the chunks' audio joined, plus what each chunk said."""

    audio: np.ndarray
    sample_rate: int
    phonemes: str
    voice: str
    lang: str
    chunks: list[TTSResult] = field(default_factory=list)

    @property
    def duration_s(self) -> float:
        return len(self.audio) / self.sample_rate


@dataclass
class PlannedChunk:
    """A chunk before synthesis: graphemes, phonemes and their token ids (within the budget)."""

    graphemes: str
    phonemes: str
    tokens: list[int]
    dropped: str = ""


class TTSPipeline:
    """Kokoro TTS: ``for r in pipe(text, voice=..., lang=..., speed=...)`` yields :class:`TTSResult`.

    ``options`` (or keyword overrides) pick the model, extra voice files, defaults and the
    onnxruntime session. A loaded ``runner`` or ``voices`` bank can be shared between pipelines.
    """

    def __init__(
        self,
        options: TTSOptions | None = None,
        *,
        runner: Any = None,
        voices: Any = None,
        **overrides: Any,
    ) -> None:
        from voxray.tts.assets import embedded_vocab, resolve_model
        from voxray.tts.onnx_runner import KokoroONNX
        from voxray.tts.voices import VoiceBank

        base = options or TTSOptions()
        self.options = TTSOptions(**{**base.model_dump(), **overrides}) if overrides else base
        opts = self.options
        self.runner = runner or KokoroONNX(resolve_model(opts.model), threads=opts.threads, device=opts.device)
        self.voices = voices or VoiceBank(extra=opts.voices)
        self.vocab: dict[str, int] = embedded_vocab()
        self.sample_rate = SAMPLE_RATE
        self._g2p: dict[str, Callable[[str], str]] = {}
        self._lock = threading.Lock()
        self._reported: set[str] = set()

    # ------------------------------------------------------------------ text side
    def g2p(self, lang: str) -> Callable[[str], str]:
        """The (cached) phonemizer of ``lang``."""
        from voxray.tts.g2p import canonical_lang, make_g2p

        code = canonical_lang(lang)
        with self._lock:
            if code not in self._g2p:
                self._g2p[code] = make_g2p(code)
            return self._g2p[code]

    def phonemize(self, text: str, lang: str | None = None) -> str:
        """Phonemes of ``text`` (normalised first), as one string."""
        g2p = self.g2p(lang or self.options.lang)
        return g2p(normalize_text(text))

    def _report_missing(self, phonemes: str, text: str) -> str:
        """Symbols not in the vocab: each logged once per pipeline, all returned for the result."""
        missing = "".join(sorted({c for c in phonemes if c not in self.vocab}))
        for sym in missing:
            if sym not in self._reported:
                self._reported.add(sym)
                logger.warning(
                    "phoneme %r (U+%04X) is not in Kokoro's vocabulary and is dropped (first seen in %r)",
                    sym, ord(sym), text[:60],
                )
        return missing

    def plan(self, text: str, lang: str | None = None) -> list[PlannedChunk]:
        """Normalise, split and pack ``text`` into chunks within ``max_tokens`` (no synthesis)."""
        g2p = self.g2p(lang or self.options.lang)
        cache: dict[str, str] = {}

        def cost(piece: str) -> int:
            if piece not in cache:
                cache[piece] = g2p(piece)
            return sum(1 for c in cache[piece] if c in self.vocab)

        chunks = chunk_text(text, cost, self.options.max_tokens)
        planned = []
        for chunk in chunks:
            phonemes = " ".join(p for p in (cache[u] for u in chunk.units) if p)
            dropped = self._report_missing(phonemes, chunk.text)
            tokens = [self.vocab[c] for c in phonemes if c in self.vocab]
            planned.append(PlannedChunk(chunk.text, phonemes, tokens, dropped))
        if not any(p.tokens for p in planned):
            raise TextError(f"nothing to say: no phoneme of {text[:60]!r} is in Kokoro's vocabulary")
        return planned

    # ------------------------------------------------------------------ audio side
    def style_for(self, table: np.ndarray, n_tokens: int) -> np.ndarray:
        """Kokoro's style row for an utterance of ``n_tokens`` content tokens.

        The row index is the content-token count (design doc); a 510-token chunk would index
        one past a 510-row table, so the index is clamped to the last row.
        """
        return table[min(n_tokens, table.shape[0] - 1)].reshape(1, -1)

    def _check_speed(self, speed: float | None) -> float:
        value = self.options.speed if speed is None else speed
        try:
            value = float(value)
        except (TypeError, ValueError) as exc:
            raise InputError(f"speed must be a number between 0.5 and 2.0, got {speed!r}") from exc
        if not 0.5 <= value <= 2.0:
            raise InputError(f"speed must be between 0.5 and 2.0, got {value}")
        return value

    def __call__(
        self,
        text: str,
        voice: str | np.ndarray | None = None,
        lang: str | None = None,
        speed: float | None = None,
    ) -> Iterator[TTSResult]:
        """Yield one :class:`TTSResult` per chunk of ``text``; validation errors raise before any audio."""
        speed_value = self._check_speed(speed)
        table = self.voices.get(self.options.voice if voice is None else voice)
        planned = self.plan(text, lang)
        return self._synthesize(planned, table, speed_value)

    def _synthesize(self, planned: list[PlannedChunk], table: np.ndarray, speed: float) -> Iterator[TTSResult]:
        from voxray.tts.onnx_runner import repair_output

        for i, chunk in enumerate(planned):
            if not chunk.tokens:
                continue
            raw = self.runner.infer(chunk.tokens, self.style_for(table, len(chunk.tokens)), speed)
            audio = repair_output(raw, self.options.fade_in_ms, self.options.level_fix)
            yield TTSResult(i, chunk.graphemes, chunk.phonemes, audio, SAMPLE_RATE, len(chunk.tokens), chunk.dropped)

    def synthesize(
        self,
        text: str,
        voice: str | np.ndarray | None = None,
        lang: str | None = None,
        speed: float | None = None,
    ) -> Synthesis:
        """The whole utterance at once (the chunks' audio concatenated)."""
        chunks = list(self(text, voice=voice, lang=lang, speed=speed))
        audio = np.concatenate([c.audio for c in chunks]) if chunks else np.zeros(0, np.float32)
        return Synthesis(
            audio=audio,
            sample_rate=SAMPLE_RATE,
            phonemes=" ".join(c.phonemes for c in chunks),
            voice=voice if isinstance(voice, str) else (self.options.voice if voice is None else "<array>"),
            lang=lang or self.options.lang,
            chunks=chunks,
        )
