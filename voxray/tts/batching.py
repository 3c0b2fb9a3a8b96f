"""What every Kokoro runner takes and returns, and how chunks are grouped into batched forwards.

Both runners (:class:`voxray.tts.onnx_runner.KokoroONNX`, :class:`voxray.tts.torch_runner.KokoroTorch`)
implement ``infer_batch(items) -> list[RawOutput]``; a runner that cannot batch (the int8 graph)
loops. :func:`plan_batches` is the one grouping rule: sort by token count, then cut batches whose
padded size (items x longest) stays under a token budget, so similar lengths share a forward and
padding stays small. Jobs and Serve group rows with it too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: Samples per Kokoro duration frame at 24 kHz (25 ms).
FRAME_SAMPLES = 600


@dataclass
class SynthItem:
    """One model call's input: content token ids (no pads), a 256-d style row, speed, noise seed."""

    tokens: Sequence[int]
    style: np.ndarray
    speed: float = 1.0
    seed: int | None = None


@dataclass
class RawOutput:
    """A runner's output for one item: raw audio and the per-token durations in frames.

    ``durations`` covers ``[pad, *tokens, pad]`` (frames of 600 samples, speed applied); it is
    None when the model does not expose them (then timestamps are estimated).
    """

    audio: np.ndarray
    durations: np.ndarray | None = None


def plan_batches(token_counts: Sequence[int], max_batch_tokens: int, max_batch_items: int) -> list[list[int]]:
    """Indices of ``token_counts`` grouped into batches, longest first.

    A batch's padded cost is ``len(batch) * (longest + 2)`` (the two pad tokens); it stays within
    ``max_batch_tokens`` (a single item always fits) and ``max_batch_items``.
    """
    order = sorted(range(len(token_counts)), key=lambda i: -token_counts[i])
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for i in order:
        n = token_counts[i] + 2
        width = max(longest, n)
        if current and (len(current) >= max_batch_items or (len(current) + 1) * width > max_batch_tokens):
            batches.append(current)
            current, longest, width = [], 0, n
        current.append(i)
        longest = width
    if current:
        batches.append(current)
    return batches
