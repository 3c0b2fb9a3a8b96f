"""CTC vocabulary from training transcripts: Korean as conjoining jamo (default) or syllables.

Why jamo: 67 units cover every modern Hangul syllable (11,172 of them), so a model trained on a
few thousand sentences can still spell syllables it never heard, each unit gets far more
examples than a syllable would, and the output layer stays tiny. The output is recomposed into
syllables (:mod:`voxray.text_ko`); ``vocab="syllable"`` keeps one unit per character instead.
"""

from __future__ import annotations

import json
import os
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable
from typing import Any, Literal

from voxray import text_ko

VocabKind = Literal["jamo", "syllable"]

PAD, BOS, EOS, UNK, DELIM = "<pad>", "<s>", "</s>", "<unk>", "|"
SPECIALS = [PAD, BOS, EOS, UNK, DELIM]  # pad doubles as the CTC blank (id 0)

_DROP = re.compile(r"[^\w\s]", re.UNICODE)  # punctuation carries no sound
_SPACE = re.compile(r"\s+")


def normalize_transcript(text: str) -> str:
    """NFC, lower case, punctuation removed, whitespace collapsed: what a CTC model can hear."""
    text = unicodedata.normalize("NFC", str(text)).lower().replace("_", " ")
    return _SPACE.sub(" ", _DROP.sub(" ", text)).strip()


def to_units(text: str, kind: VocabKind = "jamo") -> list[str]:
    """Normalised transcript -> CTC units, with ``|`` between words."""
    norm = normalize_transcript(text)
    if kind == "jamo":
        norm = text_ko.decompose(norm)
    return [DELIM if ch == " " else ch for ch in norm]


def build_vocab(texts: Iterable[str], kind: VocabKind = "jamo", min_count: int = 1) -> dict[str, int]:
    """Specials first (blank = 0), then the units seen in ``texts`` (sorted, so builds repeat).

    Jamo vocabularies always include all 67 modern jamo so unseen syllables remain spellable.
    """
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(u for u in to_units(text, kind) if u != DELIM)
    units = {u for u, c in counts.items() if c >= min_count}
    if kind == "jamo":
        units |= set(text_ko.JAMO)
    vocab = {tok: i for i, tok in enumerate(SPECIALS)}
    for u in sorted(units):
        vocab.setdefault(u, len(vocab))
    return vocab


def encode(text: str, vocab: dict[str, int], kind: VocabKind = "jamo") -> list[int]:
    """Label ids for CTC (unknown units -> ``<unk>``; leading/trailing delimiters dropped)."""
    unk = vocab[UNK]
    return [vocab.get(u, unk) for u in to_units(text, kind)]


def vocab_kind(vocab: dict[str, int] | Iterable[str]) -> VocabKind:
    """Which kind a saved vocabulary is (jamo when it holds conjoining jamo)."""
    return "jamo" if text_ko.has_jamo(vocab) else "syllable"


def make_processor(vocab: dict[str, int], out_dir: str) -> Any:
    """Write vocab.json and build the ``Wav2Vec2Processor`` that is saved with the model."""
    from transformers import Wav2Vec2CTCTokenizer, Wav2Vec2FeatureExtractor, Wav2Vec2Processor

    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "vocab.json")
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(vocab, fh, ensure_ascii=False)
    tokenizer = Wav2Vec2CTCTokenizer(
        path, unk_token=UNK, pad_token=PAD, bos_token=BOS, eos_token=EOS, word_delimiter_token=DELIM
    )
    fe = Wav2Vec2FeatureExtractor(
        feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True, return_attention_mask=True
    )
    return Wav2Vec2Processor(feature_extractor=fe, tokenizer=tokenizer)


def processor_vocab(processor: Any) -> dict[str, int]:
    tok = getattr(processor, "tokenizer", processor)
    return dict(tok.get_vocab())


def covers(vocab: dict[str, int], texts: Iterable[str]) -> bool:
    """True when every unit of ``texts`` (in the vocabulary's own kind) is in ``vocab``."""
    kind = vocab_kind(vocab)
    return all(u in vocab for t in texts for u in to_units(t, kind))
