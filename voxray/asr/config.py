"""ASR runner options: the shared encoder options plus CTC decoding."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from voxray.config import Options
from voxray.encoder.options import EncoderOptions


class ASROptions(EncoderOptions):
    """The wav2vec2 CTC runner: model, batching, chunking and decoding."""

    timestamps: Literal["none", "char", "word"] = Field("none", description="none | char | word")


class StreamingOptions(Options):
    """Window sizes and endpointing of a live stream (seconds; rounded to encoder frames)."""

    chunk_s: float = Field(0.64, gt=0, le=10, description="audio per step: text comes out in steps of this")
    left_s: float = Field(3.2, ge=0, le=30, description="past audio the transformer sees before each chunk")
    lookahead_s: float = Field(
        0.64, ge=0, le=5, description="future audio each chunk waits for (latency = chunk + lookahead)"
    )
    endpoint_s: float = Field(0.8, gt=0, le=10, description="blank frames after speech that close a segment")
    max_segment_s: float = Field(20.0, gt=0, le=300, description="a segment without a pause is closed here")
    timestamps: Literal["none", "char", "word"] = Field("none", description="spans in deltas (char) and finals")

    @model_validator(mode="after")
    def _segment_fits(self) -> StreamingOptions:
        if self.max_segment_s < self.chunk_s:
            raise ValueError(f"max_segment_s={self.max_segment_s} is shorter than chunk_s={self.chunk_s}")
        return self
