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
AudioFormat = Literal["wav", "flac", "ogg", "mp3"]


class TTSOptions(Options):
    """The Kokoro runner and pipeline: model, voices, language, speed, onnxruntime session."""

    model: str = Field(
        "embedded",
        description="Kokoro ONNX model: 'embedded' (int8 from PyPI, offline), a local .onnx file "
        "(e.g. kokoro-onnx's fp32/fp16 export) or a hub id owner/repo[:file]",
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
    speed: float = Field(1.0, ge=0.5, le=2.0, description="speaking rate, 0.5-2.0")
    max_tokens: int = Field(
        MAX_TOKENS, ge=16, le=MAX_TOKENS, description="phoneme tokens per model call (Kokoro's limit: 510)"
    )
    threads: int | None = Field(
        None, ge=1, description="onnxruntime intra-op threads (default: onnxruntime's, one per core)"
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="auto uses CUDA when onnxruntime-gpu sees a GPU, else CPU"
    )
    fade_in_ms: float = Field(
        5.0, ge=0, le=50, description="fade-in per chunk, hiding the int8 ONNX export's click (0: off)"
    )
    level_fix: bool = Field(
        True, description="scale by 1/1.5 to undo the kokoro-onnx export's 1.5x output level"
    )
