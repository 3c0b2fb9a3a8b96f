"""Bounded crash handling: an input that kills its worker becomes one ``crash`` error row.

Ray retries a task or actor call whose process died (bounded by the stage's ``max_retries`` /
``max_task_retries``), but it cannot tell which input of a batch killed it. :class:`JobState`, one
small actor per job, remembers which ids were in flight in each call that never finished:

1. A call starts clean: its ids are marked in flight as a group, processed together, unmarked.
2. A retried call finds marks left by a call that died. It processes ids nobody suspects together,
   then every suspect alone (marked "alone"), so a second death is pinned on one input.
3. An id that died ``crashes_per_input`` times while alone is not processed again: it becomes a
   ``crash: ...`` row naming the stage, and the rest of the batch goes on.

Marks live in the job's driver (the actor dies with it), so a rerun of the job starts clean.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np

logger = logging.getLogger("voxray.jobs")

# mark kinds per id: (calls begun as a group and never ended, calls begun alone and never ended)
Marks = tuple[int, int]


def job_state_cls() -> Any:
    import ray

    @ray.remote(num_cpus=0, max_restarts=0)
    class JobState:
        """Crash marks per (stage, id), per-batch counters and actor starts, for one job run."""

        def __init__(self) -> None:
            self.group: dict[str, int] = {}
            self.alone: dict[str, int] = {}
            self.counters: dict[str, float] = {}
            self.actors: dict[str, dict[str, Any]] = {}
            self.deaths = 0
            self.crash_rows = 0

        def begin(self, stage: str, ids: list[str], alone: bool = False, force: bool = False) -> list[Marks] | None:
            """Mark ``ids`` in flight; returns None when they were all clean (unless ``force``),
            else their marks without marking them (the caller isolates suspects)."""
            keys = [f"{stage}\0{i}" for i in ids]
            marks = [(self.group.get(k, 0), self.alone.get(k, 0)) for k in keys]
            if not force and any(g or a for g, a in marks):
                return marks
            target = self.alone if alone else self.group
            for k in keys:
                target[k] = target.get(k, 0) + 1
            return None

        def end(self, stage: str, ids: list[str]) -> None:
            for i in ids:
                self.group.pop(f"{stage}\0{i}", None)
                self.alone.pop(f"{stage}\0{i}", None)

        def note(self, deaths: int = 0, crash_rows: int = 0) -> None:
            self.deaths += deaths
            self.crash_rows += crash_rows

        def add(self, **counters: float) -> None:
            for k, v in counters.items():
                self.counters[k] = self.counters.get(k, 0) + v

        def actor_started(self, actor_id: str, node_id: str, pid: int) -> None:
            info = self.actors.setdefault(actor_id, {"node": node_id, "starts": 0, "pids": []})
            info["starts"] += 1
            info["node"] = node_id
            info["pids"].append(pid)

        def summary(self) -> dict[str, Any]:
            return {
                "counters": dict(self.counters), "actors": dict(self.actors), "deaths_seen": self.deaths,
                "crash_rows": self.crash_rows, "marked": len(self.group) + len(self.alone),
            }

    return JobState


def take(batch: dict[str, Any], index: list[int]) -> dict[str, Any]:
    """Rows ``index`` of a columnar batch (numpy arrays or lists)."""
    out = {}
    for k, v in batch.items():
        out[k] = v[np.asarray(index, dtype=np.int64)] if isinstance(v, np.ndarray) else [v[i] for i in index]
    return out


def crash_message(stage: str, crashes: int) -> str:
    return (f"crash: the {stage} worker died {crashes} times while processing this input alone "
            f"(a native crash or out of memory); rerun with --retry-errors crash to try again")


def guarded(
    state: Any,
    stage: str,
    batch: dict[str, Any],
    process: Callable[[dict[str, Any]], Any],
    crash_rows: Callable[[dict[str, Any], str], Any],
    concat: Callable[[list[Any]], Any],
    crashes_per_input: int,
) -> Any:
    """Run ``process(batch)`` so that a worker death is pinned on one input (see module doc).

    ``crash_rows(sub_batch, message)`` builds the output rows of inputs given up on; ``concat``
    joins partial outputs (order within a batch is not kept in that case).
    """
    import ray

    if state is None:
        return process(batch)
    ids = [str(i) for i in batch["id"]]
    marks = ray.get(state.begin.remote(stage, ids))
    if marks is None:  # the common case: nobody in this batch is suspect
        out = process(batch)
        ray.get(state.end.remote(stage, ids))
        return out
    clean = [n for n, (g, a) in enumerate(marks) if not g and not a]
    doomed = [n for n, (_, a) in enumerate(marks) if a >= crashes_per_input]
    suspects = [n for n in range(len(ids)) if n not in set(clean) | set(doomed)]
    logger.warning("%s: a worker died with %d input(s) of this batch in flight; processing them one at a time "
                   "(pid %d)", stage, len(suspects) + len(doomed), os.getpid())
    state.note.remote(deaths=1, crash_rows=len(doomed))
    parts = []
    if clean:
        sub = [ids[n] for n in clean]
        ray.get(state.begin.remote(stage, sub, force=True))
        parts.append(process(take(batch, clean)))
        ray.get(state.end.remote(stage, sub))
    for n in suspects:
        ray.get(state.begin.remote(stage, [ids[n]], alone=True, force=True))
        t0 = time.perf_counter()
        parts.append(process(take(batch, [n])))
        ray.get(state.end.remote(stage, [ids[n]]))
        logger.debug("%s: suspect %s passed alone in %.2f s", stage, ids[n], time.perf_counter() - t0)
    if doomed:
        for n in doomed:
            logger.warning("%s: input %s killed its worker %d times: written as a crash row", stage, ids[n],
                           marks[n][1])
        parts.append(crash_rows(take(batch, doomed), crash_message(stage, crashes_per_input)))
        ray.get(state.end.remote(stage, [ids[n] for n in doomed]))
    return concat(parts)
