"""ASR runner options: the shared encoder options plus CTC decoding."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from voxray.encoder.options import EncoderOptions


class ASROptions(EncoderOptions):
    """The wav2vec2 CTC runner: model, batching, chunking and decoding."""

    timestamps: Literal["none", "char", "word"] = Field("none", description="none | char | word")
