"""Text for speech: normalisation, sentence splitting and packing into model-sized chunks.

A TTS model takes a bounded number of tokens per call (Kokoro: 510 phonemes), so long text is
split at sentence boundaries and consecutive sentences are packed into chunks under that budget.
A sentence over the budget is split at clause punctuation, then between words: a word is never
cut. Chunks are spans of the normalised text, so ``" ".join(chunk.text for chunk in chunks)``
gives the normalised text back (for text whose sentences are separated by spaces).

The cost of a piece of text (its phoneme count) is supplied by the caller, so this module stays
free of any G2P or model dependency.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field

from voxray.errors import TextError

# Inline pronunciation overrides, ``[word](/phonemes/)`` (misaki's syntax): one unbreakable unit.
MARKUP = r"\[[^\]\n]*\]\([^)\n]*\)"
_MARKUP_RE = re.compile(MARKUP)

_TERMINAL = ".!?…。！？"
_CLOSERS = "\"'”’»)]}」』"
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"

# Words whose trailing period does not end a sentence.
_ABBREVIATIONS_TEXT = """mr mrs ms dr prof sr jr st vs etc e.g i.e cf fig no vol ch p pp approx dept est inc
ltd co corp jan feb mar apr jun jul aug sep sept oct nov dec mt ave rd gen col lt sgt capt gov rev"""
ABBREVIATIONS = frozenset(_ABBREVIATIONS_TEXT.split())

_SENTENCE_END = re.compile(
    rf"(?:{MARKUP})|[{re.escape(_TERMINAL)}]+[{re.escape(_CLOSERS)}]*(?=\s|$)|[。！？]+[{re.escape(_CLOSERS)}]*"
)
_CLAUSE_END = re.compile(rf"(?:{MARKUP})|[,;:—–]+[{re.escape(_CLOSERS)}]*(?=\s)|[、，；：]")
_WORD = re.compile(rf"{MARKUP}|[{_CJK}][^\s{_CJK}]*|[^\s{_CJK}]+")

_SPACE_LIKE = re.compile(r"[\s\u00a0\u2000-\u200b\u2028\u2029\u202f\u205f\u3000\ufeff]+")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\u200c\u200d\u2060]")


def normalize_text(text: str) -> str:
    """Canonical form that chunking and G2P see.

    Unicode NFC (composed Hangul, accents), control characters dropped, all whitespace runs
    collapsed to one space. A paragraph (blank-line separated, e.g. a heading) that lacks closing
    punctuation and is followed by another gets a period, so the voice pauses there instead of
    running it into the next sentence. Raises :class:`TextError` on empty or whitespace-only text.
    """
    if not isinstance(text, str):
        raise TextError(f"text must be a string, got {type(text).__name__}")
    text = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n")
    text = _CONTROL.sub("", text)
    paragraphs = [_SPACE_LIKE.sub(" ", p).strip() for p in re.split(r"\n[ \t\u00a0\u3000]*\n", text)]
    paragraphs = [p for p in paragraphs if p]
    if not paragraphs:
        raise TextError("text is empty or only whitespace: give some words to speak")
    for i, para in enumerate(paragraphs[:-1]):
        if para[-1] not in _TERMINAL + _CLOSERS + ",;:":
            paragraphs[i] = para + "."
    return " ".join(paragraphs)


@dataclass(frozen=True)
class Span:
    """A piece of the normalised text: ``text == source[start:end]``."""

    start: int
    end: int
    text: str


def _spans_by_ends(text: str, offset: int, pattern: re.Pattern[str]) -> list[Span]:
    """Split ``text`` after each match of ``pattern`` (markup matches are skipped as boundaries)."""
    spans: list[Span] = []
    start = 0
    for m in pattern.finditer(text):
        if m.group(0).startswith("[") and _MARKUP_RE.fullmatch(m.group(0)):
            continue  # inline markup: never a boundary, and its punctuation does not count
        end = m.end()
        if pattern is _SENTENCE_END and _is_abbreviation(text, m.start(), m.group(0)):
            continue
        piece = text[start:end]
        if piece.strip():
            lead = len(piece) - len(piece.lstrip())
            spans.append(Span(offset + start + lead, offset + end, piece.strip()))
        start = end
    rest = text[start:]
    if rest.strip():
        lead = len(rest) - len(rest.lstrip())
        spans.append(Span(offset + start + lead, offset + start + lead + len(rest.strip()), rest.strip()))
    return spans


def _is_abbreviation(text: str, pos: int, mark: str) -> bool:
    """True when the period at ``pos`` closes an abbreviation or an initial ("Dr.", "J. R. R.")."""
    if mark.startswith(("..", "…")):  # an ellipsis before a lowercase word trails off mid-sentence
        nxt = text[pos + len(mark) :].lstrip()
        return bool(nxt) and nxt[0].islower()
    if not mark.startswith("."):
        return False
    word = text[:pos].rsplit(None, 1)[-1] if text[:pos].strip() else ""
    word = word.lstrip(_CLOSERS + "([{\"'“‘").lower()
    if not word:
        return False
    if word in ABBREVIATIONS or (len(word) == 1 and word.isalpha()):
        return True
    # dotted acronyms like "U.S" or "e.g"; a following lowercase word means the sentence goes on
    if re.fullmatch(r"(?:[a-z]\.)+[a-z]", word):
        nxt = text[pos + len(mark) :].lstrip()
        return bool(nxt) and not nxt[0].isupper()
    return False


def split_sentences(text: str) -> list[str]:
    """Sentences of ``normalize_text(text)``, in order (abbreviation- and markup-aware)."""
    norm = normalize_text(text)
    return [s.text for s in _spans_by_ends(norm, 0, _SENTENCE_END)]


def _clauses(span: Span) -> list[Span]:
    return _spans_by_ends(span.text, span.start, _CLAUSE_END)


def _words(span: Span) -> list[Span]:
    return [Span(span.start + m.start(), span.start + m.end(), m.group(0)) for m in _WORD.finditer(span.text)]


@dataclass
class TextChunk:
    """One model call's worth of text: a span of the normalised text and its ``cost`` in tokens."""

    text: str
    start: int
    end: int
    cost: int
    units: list[str] = field(default_factory=list)


def chunk_text(
    text: str,
    cost: Callable[[str], int],
    budget: int,
    joiner_cost: int = 1,
) -> list[TextChunk]:
    """Pack ``text`` into chunks whose cost stays within ``budget``, never cutting a word.

    ``cost(piece)`` is the number of model tokens ``piece`` becomes (e.g. in-vocab phonemes);
    joining two pieces costs ``joiner_cost`` more (the space between their phonemes). A chunk's
    cost is the sum of its units' costs plus the joiners, which is exact when the caller joins
    the units' phonemes with one space. Raises :class:`TextError` for a single word over budget.
    """
    if budget < 1:
        raise ValueError(f"budget must be >= 1, got {budget}")
    norm = normalize_text(text)
    units: list[tuple[Span, int]] = []
    for sentence in _spans_by_ends(norm, 0, _SENTENCE_END):
        units.extend(_fit(sentence, cost, budget, level=0))
    return _pack(norm, units, budget, joiner_cost)


_SPLITTERS: tuple[Callable[[Span], list[Span]], ...] = (_clauses, _words)


def _fit(span: Span, cost: Callable[[str], int], budget: int, level: int) -> list[tuple[Span, int]]:
    """``span`` as units within budget: itself, else its clauses, else its words (never less)."""
    c = cost(span.text)
    if c <= budget:
        return [(span, c)]
    for depth in range(level, len(_SPLITTERS)):
        parts = _SPLITTERS[depth](span)
        if len(parts) > 1:
            out: list[tuple[Span, int]] = []
            for part in parts:
                out.extend(_fit(part, cost, budget, depth + 1))
            return out
    preview = span.text if len(span.text) <= 40 else span.text[:37] + "..."
    raise TextError(
        f"the word {preview!r} alone needs {c} tokens, over the model's limit of {budget}: "
        "break it up with spaces or punctuation"
    )


def _pack(norm: str, units: list[tuple[Span, int]], budget: int, joiner_cost: int) -> list[TextChunk]:
    chunks: list[TextChunk] = []
    for span, c in units:
        last = chunks[-1] if chunks else None
        if last is not None and last.cost + joiner_cost + c <= budget:
            last.end = span.end
            last.cost += joiner_cost + c
            last.units.append(span.text)
            last.text = norm[last.start : last.end]
        else:
            chunks.append(TextChunk(span.text, span.start, span.end, cost=c, units=[span.text]))
    return chunks
