"""The options base and the options every batch job shares (``extra="forbid"``): one home each.

CLI flags (:mod:`voxray.cli`), YAML job specs (``jobs/*.yaml``) and HTTP request models derive
from pydantic option classes, so a typo in a YAML key or a wrong type fails loudly at load time.
Each option lives beside the code it configures: encoder options in :mod:`voxray.encoder.options`,
ASR in :mod:`voxray.asr.config`, embeddings in :mod:`voxray.embed.config`, TTS in
:mod:`voxray.tts.config`, each job's own in its :mod:`voxray.jobs` module.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field


class Options(BaseModel):
    """Base: unknown keys are errors, values are validated on assignment too."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


class RayOptions(Options):
    """How to reach (or start) the Ray cluster a job runs on."""

    address: str | None = Field(
        None, description="Ray cluster address (default: $RAY_ADDRESS, else start a local cluster)"
    )
    num_cpus: int | None = Field(None, description="CPUs for a local cluster started by voxray")
    temp_dir: str | None = Field(None, description="Ray session/spill directory for a local cluster")
    include_dashboard: bool = Field(False, description="start the dashboard with a local cluster")


class ResourceOptions(Options):
    """How model actors are placed: by resources, never by luck."""

    actors: int | None = Field(
        None, ge=1, description="model actors (default: one per GPU, else one per 2 CPUs, at least 1)"
    )
    cpus_per_actor: float = Field(1.0, gt=0, description="CPUs reserved by each model actor")
    gpus_per_actor: float | None = Field(
        None, ge=0, description="GPUs per model actor (default: 1 when the cluster has GPUs, else 0)"
    )
    threads_per_actor: int | None = Field(
        None,
        ge=1,
        description="torch/onnxruntime threads per actor (default: GPU actors their CPUs; CPU actors share all cores)",
    )
    rows_per_call: int = Field(64, ge=1, description="rows handed to a model actor per call")


class JobOptions(Options):
    """What every batch job shares: inputs, output directory, cluster, resources."""

    inputs: list[str] = Field(
        default_factory=list,
        description="files, directories, globs, fsspec URLs or manifests (CSV/JSONL/Parquet with 'path')",
    )
    out: str = Field(..., description="output directory (local path or fsspec URL)")
    ray: RayOptions = Field(default_factory=RayOptions)
    resources: ResourceOptions = Field(default_factory=ResourceOptions)
    decode_cpus: float = Field(0.5, gt=0, description="CPUs per decode task (CPU-only, never in model actors)")
    progress: bool = Field(True, description="show progress bars")
    limit: int | None = Field(None, ge=1, description="process at most this many (new) inputs")


def load_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """Parse a YAML file into a dict, with an error that names the file."""
    text = Path(path).read_text(encoding="utf-8")
    data = yaml.safe_load(text) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data
