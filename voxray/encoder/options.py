"""The encoder options both runners share: declared once, extended by ASR and embedding options.

Model source, backend, device/dtype, the padding policy and the batch and chunk planners' budgets
mean the same for transcription and embeddings, so they have one declaration (and one help text each).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from voxray.config import Options

DEFAULT_ASR_MODEL = "kresnik/wav2vec2-large-xlsr-korean"


class EncoderOptions(Options):
    """A wav2vec2-family encoder and how its forward passes are batched and chunked."""

    model: str = Field(
        DEFAULT_ASR_MODEL,
        description="HF hub id or local dir of a wav2vec2-family model (transcription needs a CTC head, "
        "Wav2Vec2ForCTC; embeddings take any wav2vec2/XLS-R/HuBERT encoder)",
    )
    revision: str | None = Field(None, description="hub revision (branch, tag or commit)")
    backend: Literal["auto", "torch", "onnx"] = Field(
        "auto",
        description="inference engine: auto = onnx for a directory written by `voxray export`, torch otherwise; "
        "onnx on a torch checkpoint exports it once (cached under $VOXRAY_CACHE/onnx)",
    )
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    dtype: Literal["auto", "float32", "float16", "bfloat16", "int8"] = Field(
        "auto",
        description="compute dtype. auto: float16 on CUDA; on CPU bfloat16 where the CPU has AMX-BF16 and a "
        "parity probe at load passes, else float32; with onnx the export's int8 graph when it has one "
        "(float16 on CUDA), else float32. int8 (onnx only): MatMuls dynamically quantised, convs float",
    )
    batch_seconds: float = Field(
        160.0, gt=0, description="cap on padded audio seconds per forward pass (batch size x longest item)"
    )
    max_batch_items: int = Field(64, ge=1, description="cap on items per forward pass")
    max_padding: float = Field(
        0.1, ge=0, le=1, description="close a batch before its padded fraction would exceed this"
    )
    chunk_s: float = Field(30.0, gt=0, description="files longer than this run in chunks (bounded memory), stitched")
    stride_s: float | None = Field(
        None, ge=0, description="context on each side of a chunk, dropped after inference (default chunk_s/6)"
    )
    padding: Literal["auto", "mask", "exact", "none"] = Field(
        "auto",
        description="auto reads the model config: attention mask for layer-norm models, "
        "exact-length buckets for group-norm models (padding would change their outputs); "
        "'none' forces batch size 1",
    )
    threads: int | None = Field(
        None, ge=1, description="torch and onnxruntime intra-op threads (default: torch's, for both)"
    )

    @field_validator("stride_s")
    @classmethod
    def _stride_fits(cls, v: float | None, info: ValidationInfo) -> float | None:
        chunk = info.data.get("chunk_s", 30.0)
        if v is not None and 2 * v >= chunk:
            raise ValueError(f"stride_s={v} leaves no centre in chunk_s={chunk}: need 2*stride_s < chunk_s")
        return v

    @model_validator(mode="after")
    def _dtype_fits_backend(self) -> EncoderOptions:
        if self.dtype == "int8" and self.backend == "torch":
            raise ValueError("dtype int8 needs backend onnx (dynamic int8 MatMuls in onnxruntime)")
        if self.dtype == "bfloat16" and self.backend == "onnx":
            raise ValueError("dtype bfloat16 needs backend torch (onnxruntime has no bfloat16 CPU kernels)")
        return self

    @property
    def effective_stride_s(self) -> float:
        return self.chunk_s / 6 if self.stride_s is None else self.stride_s
