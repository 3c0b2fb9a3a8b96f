"""Pydantic models for every option (``extra="forbid"``): one home each.

CLI flags (:mod:`voxray.cli`), YAML job specs (``jobs/*.yaml``) and HTTP request models derive
from these classes, so a typo in a YAML key or a wrong type fails loudly at load time.
TTS options live beside the TTS code in :mod:`voxray.tts.config` and follow the same rules.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator

DEFAULT_ASR_MODEL = "kresnik/wav2vec2-large-xlsr-korean"


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


class ASROptions(Options):
    """The wav2vec2 CTC runner: model, batching, chunking and decoding."""

    model: str = Field(DEFAULT_ASR_MODEL, description="HF hub id or local dir of a Wav2Vec2ForCTC model")
    revision: str | None = Field(None, description="hub revision (branch, tag or commit)")
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        "auto", description="auto = float16 on CUDA, float32 on CPU"
    )
    batch_seconds: float = Field(
        160.0, gt=0, description="cap on padded audio seconds per forward pass (batch size x longest item)"
    )
    max_batch_items: int = Field(64, ge=1, description="cap on items per forward pass")
    max_padding: float = Field(
        0.1, ge=0, le=1, description="close a batch before its padded fraction would exceed this"
    )
    chunk_s: float = Field(30.0, gt=0, description="files longer than this are transcribed in chunks")
    stride_s: float | None = Field(
        None, ge=0, description="context on each side of a chunk, dropped after inference (default chunk_s/6)"
    )
    timestamps: Literal["none", "char", "word"] = Field("none", description="none | char | word")
    padding: Literal["auto", "mask", "exact", "none"] = Field(
        "auto",
        description="auto reads the model config: attention mask for layer-norm models, "
        "exact-length buckets for group-norm models; 'none' forces batch size 1",
    )
    threads: int | None = Field(None, ge=1, description="torch intra-op threads (default: torch's)")

    @field_validator("stride_s")
    @classmethod
    def _stride_fits(cls, v: float | None, info: Any) -> float | None:
        chunk = info.data.get("chunk_s", 30.0)
        if v is not None and 2 * v >= chunk:
            raise ValueError(f"stride_s={v} leaves no centre in chunk_s={chunk}: need 2*stride_s < chunk_s")
        return v

    @property
    def effective_stride_s(self) -> float:
        return self.chunk_s / 6 if self.stride_s is None else self.stride_s


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


class TranscribeJob(JobOptions):
    """``voxray transcribe``: Korean ASR over a corpus, Parquet out."""

    job: Literal["transcribe"] = "transcribe"
    asr: ASROptions = Field(default_factory=ASROptions)


def load_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """Parse a YAML file into a dict, with an error that names the file."""
    text = Path(path).read_text(encoding="utf-8")
    data = yaml.safe_load(text) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data
