import random

import pytest

from voxray.encoder.batching import plan_batches
from voxray.encoder.chunking import plan_chunks


def test_every_item_once_and_budget_respected():
    rng = random.Random(0)
    lengths = [rng.randint(16000, 20 * 16000) for _ in range(300)]
    budget = 60 * 16000
    plan = plan_batches(lengths, budget, max_items=16, policy="mask", max_padding=0.1)
    flat = sorted(i for b in plan.batches for i in b)
    assert flat == list(range(300))
    for b in plan.batches:
        longest = max(lengths[i] for i in b)
        assert len(b) <= 16
        assert len(b) == 1 or longest * len(b) <= budget
        assert 1 - sum(lengths[i] for i in b) / (longest * len(b)) <= 0.1 + 1e-9
    assert plan.padding_waste < 0.1


def test_exact_policy_never_mixes_lengths():
    lengths = [100, 200, 100, 300, 200, 100]
    plan = plan_batches(lengths, 10_000, policy="exact")
    for b in plan.batches:
        assert len({lengths[i] for i in b}) == 1
    assert plan.padded == 0
    assert sorted(len(b) for b in plan.batches) == [1, 2, 3]


def test_none_policy_is_batch_size_one():
    plan = plan_batches([5, 5, 5], 100, policy="none")
    assert plan.batches == [[0], [1], [2]]


@pytest.mark.parametrize("n", [1, 319, 320, 16000 * 30, 16000 * 30 + 1, 16000 * 95 + 17, 16000 * 600])
def test_chunks_tile_the_input(n):
    chunks = plan_chunks(n, 16000 * 30, 16000 * 5, 320)
    assert chunks[0].start == 0 and chunks[-1].end == n
    assert chunks[0].keep_start == 0 and chunks[-1].keep_end == n
    for a, b in zip(chunks, chunks[1:], strict=False):
        assert a.keep_end == b.keep_start  # kept regions tile without gaps or overlaps
        assert b.start % 320 == 0 and b.keep_start % 320 == 0
        assert b.start < a.end  # overlapping context
    assert all(c.end - c.start <= 16000 * 30 for c in chunks)
