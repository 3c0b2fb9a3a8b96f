"""The Serve replicas' dynamic batcher: forwards take what queued while the last one ran.

Pure asyncio, the same class the ASR/embedding/TTS replicas run; the forward here sleeps like a
model thread would, so the test is about when batches close, not about a model.
"""

from __future__ import annotations

import asyncio

import pytest

from voxray.deployments.batching import DynamicBatcher


class SlowForward:
    """A forward that takes ``seconds`` and records each batch it was given."""

    def __init__(self, seconds: float = 0.05, fail_on: object = None) -> None:
        self.seconds, self.fail_on = seconds, fail_on
        self.batches: list[list[object]] = []
        self.running = 0
        self.overlap = False

    async def __call__(self, items: list[object]) -> list[object]:
        self.running += 1
        self.overlap |= self.running > 1
        self.batches.append(list(items))
        try:
            await asyncio.sleep(self.seconds)
            if self.fail_on is not None and self.fail_on in items:
                raise ValueError(f"bad item {self.fail_on}")
            return [f"out-{i}" for i in items]
        finally:
            self.running -= 1


def test_arrivals_during_a_forward_join_the_next_one_up_to_the_cap():
    """32 clients that send one after another while the model is busy: Ray's eager batch queue
    closed small batches here; this one runs forwards of max_items once a backlog exists."""
    forward = SlowForward(0.2)
    batcher = DynamicBatcher(forward, max_items=16, wait_s=0.01)

    async def main():
        tasks = []
        for i in range(32):  # one arrival every 10 ms: 0.32 s of arrivals, forwards of 0.2 s
            tasks.append(asyncio.create_task(batcher.submit(i)))
            await asyncio.sleep(0.01)
        return await asyncio.gather(*tasks)

    out = asyncio.run(main())
    assert out == [f"out-{i}" for i in range(32)]  # every caller got its own result, in order
    sizes = [len(b) for b in forward.batches]
    assert not forward.overlap  # one forward at a time
    assert max(sizes) == 16 and all(s <= 16 for s in sizes), sizes
    assert len(sizes) <= 4, sizes  # 1-2 small starts, then full forwards (eager closing gives ~10)
    assert [i for b in forward.batches for i in b] == list(range(32))  # FIFO


def test_idle_replica_waits_for_companions_then_runs_alone():
    forward = SlowForward(0.01)
    batcher = DynamicBatcher(forward, max_items=8, wait_s=0.2)

    async def main():
        burst = await asyncio.gather(*(batcher.submit(i) for i in range(5)))
        alone = await batcher.submit(99)
        return burst, alone

    burst, alone = asyncio.run(main())
    assert burst == [f"out-{i}" for i in range(5)] and alone == "out-99"
    assert [len(b) for b in forward.batches] == [5, 1]


def test_full_batch_does_not_wait_out_the_window():
    forward = SlowForward(0.0)
    batcher = DynamicBatcher(forward, max_items=4, wait_s=30.0)

    async def main():
        return await asyncio.wait_for(asyncio.gather(*(batcher.submit(i) for i in range(4))), 5)

    assert asyncio.run(main()) == [f"out-{i}" for i in range(4)]


def test_units_cap_and_an_oversize_item_runs_alone():
    forward = SlowForward(0.0)
    batcher = DynamicBatcher(forward, max_items=10, max_units=10, units=float)

    async def main():
        return await asyncio.gather(*(batcher.submit(x) for x in (4, 4, 4, 30, 2)))

    asyncio.run(main())
    assert forward.batches == [[4, 4], [4], [30], [2]]
    assert all(sum(b) <= 10 or len(b) == 1 for b in forward.batches)


def test_a_caller_that_left_is_never_run():
    forward = SlowForward(0.1)
    batcher = DynamicBatcher(forward, max_items=4)

    async def main():
        first = asyncio.create_task(batcher.submit("busy"))
        await asyncio.sleep(0.02)  # the model is now busy with "busy"
        gone = [asyncio.create_task(batcher.submit(f"gone-{i}")) for i in range(3)]
        kept = asyncio.create_task(batcher.submit("kept"))
        await asyncio.sleep(0.01)
        for t in gone:
            t.cancel()  # clients disconnected while queued
        return await first, await kept

    assert asyncio.run(main()) == ("out-busy", "out-kept")
    assert forward.batches == [["busy"], ["kept"]]
    assert batcher.dropped == 3


def test_a_failing_forward_fails_only_its_items():
    forward = SlowForward(0.05, fail_on="bad")
    batcher = DynamicBatcher(forward, max_items=2)

    async def main():
        tasks = [asyncio.create_task(batcher.submit(x)) for x in ("a", "bad", "c", "d")]
        return await asyncio.gather(*tasks, return_exceptions=True)

    a, bad, c, d = asyncio.run(main())
    assert isinstance(a, ValueError) and isinstance(bad, ValueError)  # same forward
    assert (c, d) == ("out-c", "out-d")  # the batcher went on


def test_a_forward_returning_the_wrong_count_is_an_error_not_a_hang():
    async def short(items):
        return items[:-1]

    batcher = DynamicBatcher(short, max_items=4)

    async def main():
        return await asyncio.wait_for(asyncio.gather(*(batcher.submit(i) for i in range(3)), return_exceptions=True), 5)

    assert all(isinstance(r, RuntimeError) for r in asyncio.run(main()))


def test_max_items_must_be_positive():
    with pytest.raises(ValueError, match="max_items"):
        DynamicBatcher(SlowForward(), max_items=0)
