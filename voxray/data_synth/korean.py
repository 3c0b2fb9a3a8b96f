"""Synthetic Korean ASR corpus: word-list sentences spoken by espeak-ng voice variants.

Recipe (issue 8): 2-6-word sentences from a committed word list (nouns with particles,
adverbs, a predicate), 22 training voice variants of espeak-ng ``ko`` and two held-out ones
(``ko+f3``, ``ko+m4``), speed 130-190 wpm, pitch 30-70, resampled to 16 kHz FLAC. Writes
``train.csv``, ``eval.csv`` (new sentences, training voices) and ``heldout.csv`` (new sentences,
held-out voices) with columns ``path,text,voice,duration_s``. Deterministic for a seed.
"""

from __future__ import annotations

import csv
import logging
import os
import random
from dataclasses import asdict, dataclass, field
from importlib import resources

import numpy as np

logger = logging.getLogger("voxray.data_synth")

TRAIN_VOICES = [
    "ko", "ko+m1", "ko+m2", "ko+m3", "ko+m5", "ko+m6", "ko+m7", "ko+m8",
    "ko+f1", "ko+f2", "ko+f4", "ko+f5", "ko+klatt", "ko+klatt2", "ko+klatt3", "ko+klatt4",
    "ko+Andy", "ko+announcer", "ko+Alex", "ko+Annie", "ko+Gene", "ko+Lee",
]
HELDOUT_VOICES = ["ko+f3", "ko+m4"]
PARTICLES = ["", "", "이", "가", "을", "를", "은", "는", "에", "에서", "도", "와", "의", "로"]


def load_words(path: str | None = None) -> dict[str, list[str]]:
    """Words by section (``noun``, ``adverb``, ``predicate``) from the committed list or ``path``."""
    if path:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    else:
        text = resources.files("voxray").joinpath("data/ko_words.txt").read_text(encoding="utf-8")
    sections: dict[str, list[str]] = {}
    current = "noun"
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("##"):
            current = line[2:].strip()
        elif line and not line.startswith("#"):
            words = sections.setdefault(current, [])
            if line not in words:
                words.append(line)
    return sections


def _attach(noun: str, particle: str) -> str:
    """Pick the particle form that fits the final consonant (이/가, 을/를, 은/는, 와/과)."""
    if not particle:
        return noun
    last = noun[-1]
    batchim = 0xAC00 <= ord(last) <= 0xD7A3 and (ord(last) - 0xAC00) % 28 != 0
    pairs = {"이": "가", "가": "가", "을": "를", "를": "를", "은": "는", "는": "는", "와": "와"}
    if particle in pairs:
        vowel_form = pairs[particle]
        cons_form = {"가": "이", "를": "을", "는": "은", "와": "과"}[vowel_form]
        particle = cons_form if batchim else vowel_form
    elif particle == "로" and batchim and (ord(last) - 0xAC00) % 28 != 8:  # 8 = ㄹ final
        particle = "으로"
    return noun + particle


def make_sentence(rng: random.Random, words: dict[str, list[str]], min_words: int = 2, max_words: int = 6) -> str:
    """Noun phrases (+ particle), maybe an adverb, then a predicate: Korean word order, random content."""
    n = rng.randint(min_words, max_words)
    parts: list[str] = []
    adverbs, nouns, preds = words.get("adverb", []), words["noun"], words.get("predicate", [])
    if adverbs and n >= 3 and rng.random() < 0.5:
        parts.append(rng.choice(adverbs))
    while len(parts) < n - (1 if preds else 0):
        parts.append(_attach(rng.choice(nouns), rng.choice(PARTICLES)))
    if preds:
        parts.append(rng.choice(preds))
    return " ".join(parts)


@dataclass
class CorpusReport:
    """What :func:`make_corpus` wrote."""

    out: str
    manifests: dict[str, str] = field(default_factory=dict)
    utterances: dict[str, int] = field(default_factory=dict)
    hours: dict[str, float] = field(default_factory=dict)
    words: int = 0
    backend: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def make_corpus(
    out: str,
    n_train: int = 10000,
    n_eval: int = 400,
    n_heldout: int = 400,
    seed: int = 0,
    words_path: str | None = None,
    min_words: int = 2,
    max_words: int = 6,
    speed: tuple[int, int] = (130, 190),
    pitch: tuple[int, int] = (30, 70),
    train_voices: list[str] | None = None,
    heldout_voices: list[str] | None = None,
    backend: str = "auto",
) -> CorpusReport:
    """Synthesise the corpus into ``out`` (audio under ``out/wav``); reuses files already there."""
    from voxray.audio import resample, write_audio
    from voxray.data_synth.espeak import Espeak

    rng = random.Random(seed)
    words = load_words(words_path)
    train_voices = train_voices or TRAIN_VOICES
    heldout_voices = heldout_voices or HELDOUT_VOICES
    tts = Espeak(backend)
    # sentences: eval/held-out sentences never occur in training
    seen: set[str] = set()

    def fresh(n: int) -> list[str]:
        out_s: list[str] = []
        tries = 0
        while len(out_s) < n and tries < 50 * n + 100:
            s = make_sentence(rng, words, min_words, max_words)
            tries += 1
            if s not in seen:
                seen.add(s)
                out_s.append(s)
        return out_s

    splits = {
        "eval": (fresh(n_eval), train_voices),
        "heldout": (fresh(n_heldout), heldout_voices),
        "train": (fresh(n_train), train_voices),
    }
    report = CorpusReport(out=out, words=sum(len(v) for v in words.values()), backend=tts.backend)
    os.makedirs(os.path.join(out, "wav"), exist_ok=True)
    for split, (sentences, voices) in splits.items():
        rows = []
        total = 0.0
        for i, text in enumerate(sentences):
            voice = voices[i % len(voices)] if split != "train" else rng.choice(voices)
            spd, pit = rng.randint(*speed), rng.randint(*pitch)
            rel = f"wav/{split}-{i:06d}.flac"
            path = os.path.join(out, rel)
            audio = tts.synth(text, voice, spd, pit)
            audio = resample(audio, tts.sample_rate, 16000)
            peak = float(np.abs(audio).max()) if audio.size else 0.0
            if peak > 0.99:
                audio = audio * (0.99 / peak)
            if not os.path.exists(path):
                write_audio(path, audio, 16000, fmt="flac")
            dur = len(audio) / 16000
            total += dur
            rows.append({"path": rel, "text": text, "voice": voice, "speed": spd, "pitch": pit,
                         "duration_s": round(dur, 3)})
        manifest = os.path.join(out, f"{split}.csv")
        with open(manifest, "w", encoding="utf-8", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]) if rows else ["path", "text"])
            writer.writeheader()
            writer.writerows(rows)
        report.manifests[split] = manifest
        report.utterances[split] = len(rows)
        report.hours[split] = total / 3600
        logger.info("%s: %d utterances, %.2f h", split, len(rows), total / 3600)
    return report
