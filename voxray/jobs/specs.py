"""Job specs: one YAML per job (``jobs/*.yaml``), parsed strictly into its pydantic model.

``voxray run SPEC`` and the KubeRay RayJob entrypoints go through here, so a spec that parses
in a test is a spec that runs on a cluster.
"""

from __future__ import annotations

import importlib
import inspect
import os
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel

from voxray.config import load_yaml
from voxray.errors import InputError

# job name -> (options model "module:Class", runner "module:function")
JOBS: dict[str, tuple[str, str]] = {
    "transcribe": ("voxray.jobs.transcribe:TranscribeJob", "voxray.jobs.transcribe:run_transcribe"),
    "embed": ("voxray.jobs.embed:EmbedJob", "voxray.jobs.embed:run_embed"),
    "synthesize": ("voxray.jobs.synthesize:SynthesizeJob", "voxray.jobs.synthesize:run_synthesize"),
    "audiobook": ("voxray.jobs.audiobook:AudiobookJob", "voxray.jobs.audiobook:run_audiobook"),
    "finetune": ("voxray.finetune.config:FinetuneJob", "voxray.finetune.train:run_finetune"),
}


def _load(ref: str) -> Any:
    module, name = ref.split(":")
    return getattr(importlib.import_module(module), name)


def parse_spec(path: str | os.PathLike, overrides: dict[str, Any] | None = None) -> BaseModel:
    """Parse a job spec into its options model; ``job:`` picks the model."""
    data = {**load_yaml(path), **(overrides or {})}
    name = data.get("job")
    if name not in JOBS:
        raise InputError(f"{path}: 'job' must be one of {sorted(JOBS)}, got {name!r}")
    model_cls = _load(JOBS[name][0])
    return model_cls(**data)


def run_spec(
    path: str | os.PathLike, overrides: dict[str, Any] | None = None, progress: Callable[[Any], None] | None = None
) -> dict[str, Any]:
    """Parse and run a job spec; returns its run report. ``progress`` goes to jobs that report it."""
    job = parse_spec(path, overrides)
    runner = _load(JOBS[job.job][1])  # type: ignore[attr-defined]
    if progress is not None and "progress" in inspect.signature(runner).parameters:
        return runner(job, progress=progress)
    return runner(job)
