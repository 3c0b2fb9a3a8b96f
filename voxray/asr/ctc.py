"""Greedy CTC decoding with frame offsets, turned into char or word timestamps."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from voxray.text_ko import compose_units, has_jamo


@dataclass(frozen=True)
class Span:
    """A decoded unit (char or word) and its time span in seconds."""

    text: str
    start: float
    end: float

    def as_dict(self) -> dict[str, float | str]:
        return {"text": self.text, "start": self.start, "end": self.end}


def collapse(ids: np.ndarray, blank_id: int) -> list[tuple[int, int, int]]:
    """Merge repeats and drop blanks: ``[(token_id, first_frame, end_frame_exclusive), ...]``."""
    if ids.size == 0:
        return []
    change = np.flatnonzero(np.diff(ids)) + 1
    starts = np.concatenate([[0], change])
    ends = np.concatenate([change, [ids.size]])
    return [(int(ids[s]), int(s), int(e)) for s, e in zip(starts, ends, strict=True) if ids[s] != blank_id]


@dataclass
class CTCDecoder:
    """Maps CTC ids to text using the tokenizer's vocabulary (no tokenizer call per frame).

    ``seconds_per_frame`` is the encoder stride (e.g. 320 samples / 16 kHz = 20 ms).
    """

    vocab: Sequence[str]
    blank_id: int
    word_delimiter: str = "|"
    skip_ids: frozenset[int] = frozenset()
    seconds_per_frame: float = 0.02
    compose_jamo: bool = False  # the vocabulary spells Korean in conjoining jamo: output syllables

    @classmethod
    def from_tokenizer(cls, tokenizer, seconds_per_frame: float) -> CTCDecoder:
        vocab_map = tokenizer.get_vocab()
        vocab = [""] * (max(vocab_map.values()) + 1)
        for tok, i in vocab_map.items():
            vocab[i] = tok
        blank = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        delimiter = getattr(tokenizer, "word_delimiter_token", None) or "|"
        # bos/eos/unk carry no text; the word delimiter is "special" to some tokenizers but is a space
        special = {i for i in tokenizer.all_special_ids if i != blank and vocab[i] != delimiter}
        return cls(
            vocab=vocab,
            blank_id=int(blank),
            word_delimiter=delimiter,
            skip_ids=frozenset(special),
            seconds_per_frame=seconds_per_frame,
            compose_jamo=has_jamo(vocab),
        )

    def _units(self, ids: np.ndarray) -> list[tuple[str, int, int]]:
        out = []
        for tok, s, e in collapse(np.asarray(ids), self.blank_id):
            if tok in self.skip_ids or tok >= len(self.vocab):
                continue
            out.append((self.vocab[tok], s, e))
        return compose_units(out) if self.compose_jamo else out

    def decode(self, ids: np.ndarray, timestamps: str = "none") -> tuple[str, list[dict]]:
        """Text, plus char or word spans when asked (``timestamps`` = none|char|word)."""
        units = self._units(ids)
        words: list[list[tuple[str, int, int]]] = [[]]
        for tok, s, e in units:
            if tok == self.word_delimiter:
                if words[-1]:
                    words.append([])
            else:
                words[-1].append((tok, s, e))
        if not words[-1]:
            words.pop()
        text = " ".join("".join(t for t, _, _ in w) for w in words)
        spf = self.seconds_per_frame
        if timestamps == "char":
            spans = [Span(t, s * spf, e * spf) for w in words for t, s, e in w]
        elif timestamps == "word":
            spans = [Span("".join(t for t, _, _ in w), w[0][1] * spf, w[-1][2] * spf) for w in words]
        else:
            spans = []
        return text, [sp.as_dict() for sp in spans]
