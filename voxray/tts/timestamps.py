"""Word timestamps from Kokoro's predicted durations.

Kokoro predicts how many frames (600 samples, 25 ms at 24 kHz, speed applied) each phoneme token
lasts, so every token has an exact start and end in the audio. Words are the runs of tokens
between space tokens; punctuation tokens (pauses) are not part of a word's span. Phoneme words
are matched to the chunk's written words one to one when the counts agree (the usual case);
otherwise (numbers read out, symbols) each written word is placed at the phoneme-word boundary
nearest its position by letters, so timings stay monotonic and inside the audio.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from voxray.tts.batching import FRAME_SAMPLES
from voxray.tts.config import SAMPLE_RATE

PUNCTUATION = set(';:,.!?—…"()“”«»¡¿-–')
_WRITTEN_WORD = re.compile(r"\S+")


@dataclass
class WordTiming:
    """A written word and where it is spoken, in seconds from the start of its audio."""

    word: str
    start: float
    end: float
    phonemes: str = ""


def _phoneme_words(symbols: Sequence[str], starts: np.ndarray, ends: np.ndarray) -> list[tuple[str, float, float]]:
    """(phonemes, start_s, end_s) per run of non-space tokens that has a non-punctuation token."""
    words: list[tuple[str, float, float]] = []
    run: list[int] = []
    for i, sym in enumerate([*symbols, " "]):
        if sym != " ":
            run.append(i)
            continue
        spoken = [j for j in run if symbols[j] not in PUNCTUATION]
        if spoken:
            words.append(("".join(symbols[j] for j in run), float(starts[spoken[0]]), float(ends[spoken[-1]])))
        run = []
    return words


def _letters(word: str) -> int:
    return max(1, sum(ch.isalnum() for ch in word))


def word_timings(
    graphemes: str,
    tokens: Sequence[int],
    durations: np.ndarray | None,
    id_to_symbol: Mapping[int, str],
    n_samples: int,
    sample_rate: int = SAMPLE_RATE,
) -> list[WordTiming]:
    """Word start/end times of one chunk.

    ``tokens`` are the chunk's content tokens, ``durations`` the model's frames for
    ``[pad, *tokens, pad]`` (None: spread ``n_samples`` evenly over the tokens, an estimate).
    """
    written = [w for w in _WRITTEN_WORD.findall(graphemes) if any(ch.isalnum() for ch in w)]
    if not written or not len(tokens):
        return []
    if durations is None or len(durations) != len(tokens) + 2:
        per = n_samples / (len(tokens) + 2) / FRAME_SAMPLES
        durations = np.full(len(tokens) + 2, per)
    frames = np.asarray(durations, np.float64)
    ends_f = np.cumsum(frames)
    starts_f = ends_f - frames
    scale = FRAME_SAMPLES / sample_rate
    starts, ends = starts_f[1:-1] * scale, ends_f[1:-1] * scale  # content tokens only
    symbols = [id_to_symbol.get(int(t), "") for t in tokens]
    spoken = _phoneme_words(symbols, starts, ends)
    if not spoken:
        return []
    if len(spoken) == len(written):
        return [WordTiming(w, round(s, 3), round(e, 3), p) for w, (p, s, e) in zip(written, spoken, strict=True)]
    # counts differ: place each written word by its letter position on the phoneme-word grid
    total = sum(_letters(w) for w in written)
    bounds = [s for _, s, _ in spoken] + [spoken[-1][2]]
    grid = np.linspace(0.0, 1.0, len(bounds))
    out: list[WordTiming] = []
    pos = 0
    for i, word in enumerate(written):
        a, b = pos / total, (pos + _letters(word)) / total
        pos += _letters(word)
        start = float(np.interp(a, grid, bounds))
        end = float(np.interp(b, grid, bounds)) if i < len(written) - 1 else spoken[-1][2]
        k = int(np.argmin(np.abs(grid - a)))
        out.append(WordTiming(word, round(start, 3), round(max(end, start), 3), spoken[min(k, len(spoken) - 1)][0]))
    return out
