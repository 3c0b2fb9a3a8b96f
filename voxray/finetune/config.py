"""Options of ``voxray finetune`` (one pydantic home; CLI flags and ``jobs/finetune.yaml`` derive)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from voxray.config import Options, RayOptions


class SpecAugmentOptions(Options):
    """SpecAugment-style masking of encoder features in training (written into the HF config)."""

    mask_time_prob: float = Field(0.05, ge=0, le=1, description="share of frames that start a time mask")
    mask_time_length: int = Field(10, ge=1, description="frames per time mask")
    mask_time_min_masks: int = Field(2, ge=0, description="at least this many time masks per utterance")
    mask_feature_prob: float = Field(0.0, ge=0, le=1, description="share of channels that start a channel mask")
    mask_feature_length: int = Field(10, ge=1, description="channels per channel mask")


class FinetuneOptions(Options):
    """Model, vocabulary, optimisation, batching and evaluation of a CTC fine-tuning run."""

    train: list[str] = Field(default_factory=list, description="training manifests (CSV/JSONL/Parquet: path,text)")
    eval: list[str] = Field(default_factory=list, description="eval manifests, scored separately and together")
    base: str | None = Field(
        None, description="HF hub id or local dir: a pretrained wav2vec2 encoder (new CTC head) or a CTC model"
    )
    revision: str | None = Field(None, description="hub revision of --base")
    from_config: Literal["tiny", "mini", "small", "base", "xlsr-large"] | None = Field(
        None, description="randomly initialised architecture instead of --base (small = issue 8's 3.7M model)"
    )
    vocab: Literal["auto", "jamo", "syllable", "base"] = Field(
        "auto",
        description="CTC units: jamo (Korean letters, recomposed on output), syllable, base (keep the base "
        "model's vocabulary and head); auto = base if it covers the transcripts, else jamo",
    )
    freeze: Literal["auto", "feature_encoder", "encoder", "none"] = Field(
        "auto",
        description="feature_encoder (CNN frozen), encoder (train the CTC head only), none; auto = "
        "feature_encoder for a pretrained --base, none for --from-config (random weights must all train)",
    )
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="autocast dtype: auto = bf16 on GPUs that support it, else fp32; fp16 is GPU-only"
    )
    lr: float = Field(1e-3, gt=0, description="peak learning rate (AdamW)")
    adam_beta1: float = Field(0.9, ge=0, lt=1, description="AdamW beta1")
    adam_beta2: float = Field(0.98, ge=0, lt=1, description="AdamW beta2")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    warmup_steps: int = Field(300, ge=0, description="linear warm-up steps, then cosine decay to 0 at max_steps")
    max_steps: int = Field(3000, ge=1, description="optimizer steps in total (a resumed run continues to this)")
    grad_accum: int = Field(1, ge=1, description="micro-batches per optimizer step")
    max_grad_norm: float = Field(5.0, gt=0, description="gradient clipping norm")
    batch_seconds: float = Field(
        24.0, gt=0, description="padded audio seconds per micro-batch per worker (batches grouped by length)"
    )
    max_batch_items: int = Field(64, ge=1, description="cap on utterances per micro-batch")
    max_audio_s: float = Field(20.0, gt=0, description="training utterances longer than this are skipped")
    dropout: float | None = Field(
        None, ge=0, lt=1, description="hidden/attention/activation/projection dropout (default: 0 for "
        "--from-config, the base model's own otherwise)"
    )
    spec_augment: SpecAugmentOptions = Field(default_factory=SpecAugmentOptions)
    eval_every: int = Field(200, ge=1, description="evaluate and checkpoint every N steps (and at the end)")
    log_every: int = Field(50, ge=1, description="log training loss every N steps")
    eval_batch_seconds: float = Field(60.0, gt=0, description="padded audio seconds per eval forward pass")
    keep_checkpoints: int = Field(2, ge=1, description="checkpoints kept (best by CER, plus always the latest)")
    seed: int = Field(0, description="seed for init, shuffling and masking")


class FinetuneJob(FinetuneOptions):
    """``voxray finetune``: the options plus where it runs and writes."""

    job: Literal["finetune"] = "finetune"
    out: str = Field(..., description="output dir: the best model (HF format) + checkpoints/ + finetune.json")
    resume: bool = Field(True, description="continue from the last checkpoint in OUT/checkpoints if there is one")
    num_workers: int = Field(1, ge=1, description="data-parallel training workers (one per GPU when use_gpu)")
    use_gpu: bool | None = Field(None, description="train on GPUs (default: when the cluster has them)")
    cpus_per_worker: float | None = Field(
        None, gt=0, description="CPUs reserved per worker (default: 1 with GPUs, else the cluster's CPUs shared)"
    )
    threads_per_worker: int | None = Field(
        None, ge=1, description="torch threads per worker (default: its CPUs, at least 1)"
    )
    ray: RayOptions = Field(default_factory=RayOptions)

    @model_validator(mode="after")
    def _model_source(self) -> FinetuneJob:
        if (self.base is None) == (self.from_config is None):
            raise ValueError("give exactly one of base (hub id or local dir) or from_config (a size)")
        if self.vocab == "base" and self.base is None:
            raise ValueError("vocab=base needs --base")
        return self

    @property
    def freeze_mode(self) -> Literal["feature_encoder", "encoder", "none"]:
        """``freeze`` with ``auto`` resolved: freezing randomly initialised layers would keep them random."""
        if self.freeze == "auto":
            return "none" if self.from_config is not None else "feature_encoder"
        return self.freeze
