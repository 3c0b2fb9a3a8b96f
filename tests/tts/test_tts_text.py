"""Text normalisation, sentence splitting and token-budget chunking (no model needed)."""

from __future__ import annotations

import random

import pytest

from voxray.errors import TextError
from voxray.text import chunk_text, normalize_text, split_sentences


def test_normalize_collapses_whitespace_and_composes_unicode():
    decomposed = "ᄒ" + "ᅡ" + "ᆫ"  # Hangul jamo, NFC-composes to 한
    assert normalize_text(f"  Hello\t\u00a0 world\n{decomposed}  ") == "Hello world 한"


def test_normalize_ends_paragraphs_with_a_pause():
    assert normalize_text("Chapter One\n\nIt was a dark night") == "Chapter One. It was a dark night"


@pytest.mark.parametrize("text", ["", "   ", "\n\n\t", "\u200b"])
def test_empty_text_is_a_text_error(text):
    with pytest.raises(TextError, match="empty"):
        normalize_text(text)


def test_sentence_split_respects_abbreviations_initials_and_markup():
    text = (
        'Dr. Smith met J. R. Tolkien in Washington, D.C. on Jan. 5th. He said: "Hi!" '
        "Then he trailed off... and left. Say [Kokoro](/kˈOkəɹO/) now. 안녕하세요. 좋네요!"
    )
    assert split_sentences(text) == [
        "Dr. Smith met J. R. Tolkien in Washington, D.C. on Jan. 5th.",
        'He said: "Hi!"',
        "Then he trailed off... and left.",
        "Say [Kokoro](/kˈOkəɹO/) now.",
        "안녕하세요.",
        "좋네요!",
    ]


def _random_text(n_chars: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "kokoro", "voxray", "speech", "model", "chunk"]
    out, sentence = [], []
    while sum(len(s) + 1 for s in out) < n_chars:
        sentence.append(rng.choice(words))
        if rng.random() < 0.12:
            out.append(" ".join(sentence).capitalize() + rng.choice([".", "!", "?", ",", ";"]))
            sentence = []
    # one long unpunctuated run, longer than any budget below, must still be split between words
    out.insert(len(out) // 2, " ".join(rng.choice(words) for _ in range(120)) + ".")
    return "\n".join(out)


@pytest.mark.parametrize("budget", [40, 120, 510])
def test_chunks_round_trip_and_respect_the_budget(budget):
    text = _random_text(5000)
    chunks = chunk_text(text, cost=len, budget=budget)
    norm = normalize_text(text)
    assert " ".join(c.text for c in chunks) == norm
    assert all(c.cost <= budget for c in chunks)
    assert all(c.cost == len(" ".join(c.units)) for c in chunks)  # exact when units join with a space
    words = set(norm.split())
    assert all(w in words for c in chunks for w in c.text.split())  # no word was cut


def test_sentences_are_packed_but_never_split_when_they_fit():
    text = "One two three. Four five six. Seven eight nine."
    chunks = chunk_text(text, cost=len, budget=30)
    assert [c.text for c in chunks] == ["One two three. Four five six.", "Seven eight nine."]


def test_a_word_over_the_budget_is_a_text_error():
    with pytest.raises(TextError, match="over the model's limit"):
        chunk_text("short " + "x" * 50 + " words", cost=len, budget=20)
