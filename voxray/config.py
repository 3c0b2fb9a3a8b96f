"""The options base and the options every batch job shares (``extra="forbid"``): one home each.

CLI flags (:mod:`voxray.cli`), YAML job specs (``jobs/*.yaml``) and HTTP request models derive
from pydantic option classes, so a typo in a YAML key or a wrong type fails loudly at load time.
Each option lives beside the code it configures: encoder options in :mod:`voxray.encoder.options`,
ASR in :mod:`voxray.asr.config`, embeddings in :mod:`voxray.embed.config`, TTS in
:mod:`voxray.tts.config`, each job's own in its :mod:`voxray.jobs` module. Job options that every
batch job shares (cluster, device and actor pool, retries, commits) live here.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Device = Literal["auto", "cpu", "gpu"]

# error kinds worth retrying with ``--retry-errors``: a worker died, a read timed out, storage failed
TRANSIENT_ERROR_KINDS = ("crash", "timeout", "io")


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
    """Where model actors run and how many: requested by resources, never sized by luck.

    The pool is elastic (``min_actors``..``max_actors``): a GPU job asks for GPUs whether or not
    they exist yet, so an autoscaling cluster brings GPU nodes and the pool grows as they join.
    """

    device: Device = Field(
        "auto",
        description="cpu | gpu | auto (gpu when the cluster has GPUs or its autoscaler declares GPU capacity "
        "it can add, else cpu). A GPU actor without a CUDA device fails; it never falls back to CPU",
    )
    actors: int | None = Field(None, ge=1, description="a fixed pool of this many model actors (min = max)")
    min_actors: int | None = Field(None, ge=1, description="model actors the job needs to start (default 1)")
    max_actors: int | None = Field(
        None,
        ge=1,
        description="upper bound of the elastic pool (default: GPU jobs as many as the cluster's GPUs, present "
        "or declared, allow, unbounded when the cluster declares nothing; CPU jobs one per CPU beyond the first)",
    )
    cpus_per_actor: float = Field(1.0, gt=0, description="CPUs reserved by each model actor")
    gpus_per_actor: float | None = Field(
        None,
        ge=0,
        description="GPUs per model actor on a GPU job (default 1; a fraction packs several actors per GPU). "
        "Setting it above 0 with --device auto asks for GPUs",
    )
    threads_per_actor: int | None = Field(
        None,
        ge=1,
        description="torch/onnxruntime threads per actor (default: GPU actors their CPUs; CPU actors share all cores)",
    )
    rows_per_call: int = Field(64, ge=1, description="rows handed to a model actor per call")
    wait_for_actors_s: float = Field(
        600.0,
        ge=0,
        description="how long to wait for min_actors to start (an autoscaler adding GPU nodes) before failing; "
        "a local cluster started by voxray cannot grow, so a job it cannot place fails at once",
    )

    @model_validator(mode="after")
    def _pool_bounds(self) -> ResourceOptions:
        if self.actors is not None and (
            (self.min_actors is not None and self.min_actors != self.actors)
            or (self.max_actors is not None and self.max_actors != self.actors)
        ):
            raise ValueError("give either actors (a fixed pool) or min_actors/max_actors, not both")
        if self.min_actors and self.max_actors and self.min_actors > self.max_actors:
            raise ValueError(f"min_actors={self.min_actors} > max_actors={self.max_actors}")
        if self.device == "cpu" and self.gpus_per_actor:
            raise ValueError("device=cpu with gpus_per_actor > 0: drop one of them")
        return self


class RetryOptions(Options):
    """Bounded fault handling: every Ray retry knob is explicit and small (Ray's defaults retry forever)."""

    crashes_per_input: int = Field(
        2,
        ge=1,
        description="times an input may kill its worker while processed alone before it becomes a 'crash' "
        "error row (the rest of its batch is still processed)",
    )
    task_retries: int = Field(
        4, ge=0, description="retries of one decode task or model-actor call after its worker died"
    )
    actor_restarts: int = Field(6, ge=0, description="restarts of one model actor after its process died")
    pipeline_reruns: int = Field(
        3,
        ge=0,
        description="rebuilds of the pipeline over the inputs not yet committed after a stage ran out of "
        "retries (only while the previous attempt made progress)",
    )


class JobOptions(Options):
    """What every batch job shares: inputs, output directory, cluster, resources, retries, commits."""

    inputs: list[str] = Field(
        default_factory=list,
        description="files, directories, globs, fsspec URLs or manifests (CSV/JSONL/Parquet with 'path', "
        "optional 'id' and 'duration_s')",
    )
    out: str = Field(..., description="output directory (local path or fsspec URL)")
    ray: RayOptions = Field(default_factory=RayOptions)
    resources: ResourceOptions = Field(default_factory=ResourceOptions)
    retries: RetryOptions = Field(default_factory=RetryOptions)
    decode_cpus: float = Field(0.5, gt=0, description="CPUs per decode task (CPU-only, never in model actors)")
    commit_rows: int = Field(
        2000, ge=1, description="commit a Parquet shard once this many rows are waiting (bounds lost work)"
    )
    commit_s: float = Field(
        30.0, gt=0, description="...or once the oldest waiting row is this many seconds old"
    )
    retry_errors: list[str] = Field(
        default_factory=list,
        description="redo rows whose error kind is listed; 'transient' means crash, timeout, io "
        "(default: none, a rerun skips every id already written)",
        json_schema_extra={"bare_flag": ["transient"]},
    )
    progress: bool | None = Field(
        None, description="live progress line (default: on when stderr is a terminal)"
    )
    limit: int | None = Field(None, ge=1, description="process at most this many (new) inputs")

    @field_validator("retry_errors")
    @classmethod
    def _expand_transient(cls, kinds: list[str]) -> list[str]:
        out: list[str] = []
        for kind in (k.strip() for item in kinds for k in item.split(",") if k.strip()):
            if not re.fullmatch(r"[a-z][a-z_]*", kind):  # e.g. a path swallowed by the bare flag
                raise ValueError(f"{kind!r} is not an error kind (like crash, io, timeout, decode or 'transient')")
            for k in TRANSIENT_ERROR_KINDS if kind == "transient" else (kind,):
                if k not in out:
                    out.append(k)
        return out


def load_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """Parse a YAML file into a dict, with an error that names the file."""
    text = Path(path).read_text(encoding="utf-8")
    data = yaml.safe_load(text) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data
