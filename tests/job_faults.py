"""Test-side fault injection for the batch jobs (never production options).

- :class:`PoisonTranscribeActor` kills its own process (SIGKILL, like a native crash or the OOM
  killer) whenever it processes an input whose id contains ``POISON``.
- :class:`PacedTranscribeActor` takes at least ``PACE_S`` per call, like a real model: the tiny test
  model is so fast that a whole small corpus can pass the actor before the first commit, and a kill
  after that commit would then hit an idle actor with nothing left to restart for.
- :class:`LogicalGPUTranscribeActor` runs on CPU although Ray gave it a (logical) GPU: the one
  test-only way past the CUDA check, for ``ray.cluster_utils.Cluster`` nodes with ``num_gpus``.
- :class:`FlakyAudiobookActor` raises on the first attempts of chosen chunks (``FAILURES``).

Ray workers cannot import the tests directory, so the module is pickled by value.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import ray.cloudpickle

from voxray.errors import InferenceError
from voxray.jobs.audiobook import AudiobookActor
from voxray.jobs.transcribe import TranscribeActor

POISON = "poison"


class PoisonTranscribeActor(TranscribeActor):
    def process(self, batch: dict[str, Any]) -> Any:
        if any(POISON in str(i) for i in batch["id"]):
            os.kill(os.getpid(), signal.SIGKILL)
        return super().process(batch)


class PacedTranscribeActor(TranscribeActor):
    PACE_S = 0.3

    def process(self, batch: dict[str, Any]) -> Any:
        time.sleep(self.PACE_S)
        return super().process(batch)


class LogicalGPUTranscribeActor(TranscribeActor):
    def resolve_device(self, device: str) -> str:
        return "cpu"  # Ray scheduled us on a logical GPU; torch has none: run on CPU


class FlakyAudiobookActor(AudiobookActor):
    FAILURES = {"000-00002": 2, "000-00003": 1}  # chunk id -> attempts that raise (2: the chunk fails)

    def _synthesize(self, chunk_id: str, text: str, attempt: int) -> Any:
        if attempt <= self.FAILURES.get(chunk_id, 0):
            raise InferenceError(f"injected failure of chunk {chunk_id} (attempt {attempt}; tests only)")
        return super()._synthesize(chunk_id, text, attempt)


ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


def pids_with_title(fragment: str) -> list[int]:
    """Processes whose title (Ray sets ``ray::MapWorker(MapBatches(TranscribeActor))`` etc.) has ``fragment``."""
    out = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if fragment in cmd and cmd.startswith("ray::"):
            out.append(int(proc.name))
    return out


def descendants(pid: int) -> dict[int, int]:
    """pid -> start time of every process below ``pid`` (to check nothing of a run is left)."""
    from voxray.cluster import _processes, _start_time

    procs = _processes()
    children: dict[int, list[int]] = {}
    for p, (ppid, _) in procs.items():
        children.setdefault(ppid, []).append(p)
    found, stack = {}, list(children.get(pid, []))
    while stack:
        p = stack.pop()
        if p in found:
            continue
        st = _start_time(p)
        if st is not None:
            found[p] = st
        stack += children.get(p, [])
    return found


def alive(procs: dict[int, int]) -> list[int]:
    from voxray.cluster import _start_time

    return [p for p, st in procs.items() if _start_time(p) == st]
