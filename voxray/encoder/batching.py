"""Length-aware batch planning: cap each forward pass by padded audio, not item count.

Two policies, chosen from the model config by the runner:
- ``mask``: sort by length, fill a batch while ``items x longest <= budget``; the attention mask
  keeps padding out of layer-norm models' outputs, so batching is exact.
- ``exact``: group-norm feature encoders normalise over the padded length, so padding changes
  outputs; only items of identical length share a batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class BatchPlan:
    """Indices per forward pass, and the padding it costs (in samples)."""

    batches: list[list[int]]
    padded: int
    total: int

    @property
    def padding_waste(self) -> float:
        """Padded / total samples processed (0 = no padding)."""
        return self.padded / self.total if self.total else 0.0


def plan_batches(
    lengths: Sequence[float],
    max_batch_samples: float,
    max_items: int = 64,
    policy: str = "mask",
    max_padding: float = 0.1,
    order: Sequence[int] | None = None,
) -> BatchPlan:
    """Plan forward passes over items of the given lengths (samples).

    Items are taken in ``order`` (default: sorted by length); a batch closes when the next item
    would push its padded size over ``max_batch_samples``, its size over ``max_items``, or its
    padding fraction (padded / total samples) over ``max_padding``. Training passes its own
    order (lengths with jitter, so batches differ per epoch) and ``max_padding=1``.

    An item longer than ``max_batch_samples`` still gets a batch of its own (the caller chunks
    long audio before planning, so this only happens with tiny budgets).
    """
    if policy not in ("mask", "exact", "none"):
        raise ValueError(f"unknown padding policy {policy!r}")
    if order is None:
        order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches: list[list[int]] = []
    padded = total = 0
    current: list[int] = []
    longest = 0
    real = 0

    def flush() -> None:
        nonlocal current, longest, padded, total, real
        if current:
            batches.append(current)
            total += longest * len(current)
            padded += sum(longest - lengths[j] for j in current)
        current, longest, real = [], 0, 0

    for i in map(int, order):
        n = lengths[i]
        if current:
            new_longest = max(longest, n)
            padded_size = new_longest * (len(current) + 1)
            too_big = padded_size > max_batch_samples or len(current) >= max_items
            too_padded = 1 - (real + n) / padded_size > max_padding
            if policy == "none" or too_big or too_padded or (policy == "exact" and n != longest):
                flush()
        current.append(i)
        longest = max(longest, n)
        real += n
    flush()
    return BatchPlan(batches=batches, padded=padded, total=total)
