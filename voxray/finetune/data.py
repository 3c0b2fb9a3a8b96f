"""Manifests -> in-memory utterances, length-grouped batches and padded tensors.

Each worker decodes only its shard (``rows[rank::world]``) and keeps 16-bit audio in memory:
synthetic corpora of a few hours fit easily and decoding once beats decoding every epoch.
Batches are cut by padded audio seconds over a length-sorted (jittered) order, so padding waste
stays small while batch composition still changes every epoch.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from voxray.audio import SAMPLE_RATE
from voxray.encoder.batching import plan_batches
from voxray.finetune.vocab import VocabKind, encode, normalize_transcript

logger = logging.getLogger("voxray.finetune")


@dataclass
class Utterance:
    """One decoded example: 16-bit audio, label ids, normalised reference, eval-set index."""

    audio: np.ndarray
    labels: np.ndarray
    text: str
    group: int

    @property
    def seconds(self) -> float:
        return len(self.audio) / SAMPLE_RATE


def set_name(manifest: str) -> str:
    """Short name of an eval set (the manifest's file stem)."""
    return os.path.splitext(os.path.basename(manifest))[0]


def read_rows(manifests: list[str]) -> list[dict[str, Any]]:
    """Manifest rows (``path``, ``text``) tagged with the index of the manifest they came from."""
    from voxray.corpus import expand_inputs
    from voxray.errors import InputError

    rows: list[dict[str, Any]] = []
    for group, manifest in enumerate(manifests):
        for row in expand_inputs([manifest], required=("path", "text")):
            if "text" not in row:
                raise InputError(f"{manifest}: fine-tuning manifests need a 'text' column (columns: {sorted(row)})")
            path = str(row["path"])
            if "://" not in path:  # Ray workers run in their own working directory
                path = os.path.abspath(path)
            rows.append({"path": path, "text": str(row["text"] or ""), "group": group})
    return rows


def load_utterances(
    rows: list[dict[str, Any]],
    vocab: dict[str, int],
    kind: VocabKind,
    min_frames: Any,
    max_audio_s: float | None = None,
) -> tuple[list[Utterance], int]:
    """Decode rows; skip (and count) unreadable, empty-transcript, too-long or too-short ones.

    ``min_frames(num_samples)`` gives encoder frames: CTC needs at least one frame per label.
    """
    from voxray.audio import decode_audio
    from voxray.errors import VoxrayError

    out: list[Utterance] = []
    skipped = 0
    for row in rows:
        labels = np.asarray(encode(row["text"], vocab, kind), dtype=np.int64)
        if labels.size == 0:
            skipped += 1
            continue
        try:
            audio = decode_audio(row["path"], SAMPLE_RATE)
        except VoxrayError as exc:
            logger.warning("skipping %s: %s", row["path"], exc.message)
            skipped += 1
            continue
        if (max_audio_s and len(audio) > max_audio_s * SAMPLE_RATE) or min_frames(len(audio)) < labels.size:
            skipped += 1
            continue
        pcm = np.clip(np.round(audio * 32767.0), -32768, 32767).astype(np.int16)
        out.append(Utterance(pcm, labels, normalize_transcript(row["text"]), int(row["group"])))
    return out, skipped


def length_grouped_batches(
    lengths: np.ndarray, batch_samples: float, max_items: int, seed: int, shuffle: bool = True
) -> list[list[int]]:
    """Index batches whose padded size (items x longest) stays within ``batch_samples``.

    Sorting by length with +-10% jitter groups similar lengths (little padding) while the
    grouping differs per seed; the batch order is then shuffled.
    """
    lengths = np.asarray(lengths, dtype=np.float64)
    if lengths.size == 0:
        return []
    rng = np.random.default_rng(seed)
    keys = lengths * rng.uniform(0.9, 1.1, size=lengths.size) if shuffle else lengths
    order = np.argsort(-keys, kind="stable")
    batches = plan_batches(lengths.tolist(), batch_samples, max_items, max_padding=1.0, order=order).batches
    if shuffle:
        perm = rng.permutation(len(batches))
        batches = [batches[j] for j in perm]
    return batches


def collate(utts: list[Utterance], with_labels: bool = True) -> dict[str, Any]:
    """Per-utterance zero-mean/unit-variance audio (as the feature extractor does), zero-padded,
    with an attention mask; labels padded with -100 (ignored by the CTC loss)."""
    import torch

    n = max(len(u.audio) for u in utts)
    x = np.zeros((len(utts), n), dtype=np.float32)
    mask = np.zeros((len(utts), n), dtype=np.int64)
    for i, u in enumerate(utts):
        a = u.audio.astype(np.float32) / 32767.0
        x[i, : len(a)] = (a - a.mean()) / np.sqrt(a.var() + 1e-7)
        mask[i, : len(a)] = 1
    batch: dict[str, Any] = {"input_values": torch.from_numpy(x), "attention_mask": torch.from_numpy(mask)}
    if with_labels:
        m = max(len(u.labels) for u in utts)
        labels = np.full((len(utts), m), -100, dtype=np.int64)
        for i, u in enumerate(utts):
            labels[i, : len(u.labels)] = u.labels
        batch["labels"] = torch.from_numpy(labels)
    return batch


class BatchStream:
    """Endless length-grouped batches over epochs; its position is saved in checkpoints so a
    resumed run sees exactly the batches the interrupted one would have seen next."""

    def __init__(self, utts: list[Utterance], batch_seconds: float, max_items: int, seed: int) -> None:
        self.utts = utts
        self.lengths = np.array([len(u.audio) for u in utts])
        self.batch_samples = batch_seconds * SAMPLE_RATE
        self.max_items = max_items
        self.seed = seed
        self.epoch, self.pos = 0, 0
        self._batches = self._make(0)

    def _make(self, epoch: int) -> list[list[int]]:
        return length_grouped_batches(self.lengths, self.batch_samples, self.max_items, self.seed * 100003 + epoch)

    def state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "pos": self.pos}

    def restore(self, state: dict[str, int]) -> None:
        self.epoch, self.pos = int(state.get("epoch", 0)), int(state.get("pos", 0))
        self._batches = self._make(self.epoch)

    def next(self) -> list[Utterance]:
        if not self._batches:
            raise ValueError("no training utterances on this worker")
        if self.pos >= len(self._batches):
            self.epoch, self.pos = self.epoch + 1, 0
            self._batches = self._make(self.epoch)
        batch = self._batches[self.pos]
        self.pos += 1
        return [self.utts[i] for i in batch]
