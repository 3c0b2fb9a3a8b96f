"""Response formats of the OpenAI-compatible audio API: transcripts (json/text/srt/vtt) and
streamable speech encodings (pcm/wav/mp3 chunk by chunk; flac/opus once complete)."""

from __future__ import annotations

import struct

import numpy as np

from voxray.subtitles import to_srt as to_srt  # transcripts as subtitles: one writer for the API and audiobooks
from voxray.subtitles import to_vtt as to_vtt
from voxray.subtitles import words_to_segments as words_to_segments

SPEECH_MEDIA_TYPES = {
    "mp3": "audio/mpeg", "wav": "audio/wav", "pcm": "audio/pcm", "flac": "audio/flac", "opus": "audio/ogg",
}
STREAMED_FORMATS = {"pcm", "wav", "mp3"}  # containers that can be cut per chunk
TRANSCRIPT_FORMATS = ("json", "text", "verbose_json", "srt", "vtt")


def pcm16(audio: np.ndarray) -> bytes:
    return (np.clip(audio, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()


def streaming_wav_header(sample_rate: int) -> bytes:
    """A WAV header with unknown length (0xFFFFFFFF), as streaming servers send it."""
    unknown = 0xFFFFFFFF
    fmt = struct.pack("<HHIIHH", 1, 1, sample_rate, sample_rate * 2, 2, 16)
    return b"RIFF" + struct.pack("<I", unknown) + b"WAVEfmt " + struct.pack("<I", 16) + fmt + b"data" + struct.pack(
        "<I", unknown
    )
