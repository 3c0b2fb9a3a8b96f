"""Response formats of the OpenAI-compatible audio API: transcripts (json/text/srt/vtt) and
streamable speech encodings (pcm/wav/mp3 chunk by chunk; flac/opus once complete)."""

from __future__ import annotations

import struct
from typing import Any

import numpy as np

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


def words_to_segments(words: list[dict[str, Any]], max_s: float = 8.0, gap_s: float = 0.6) -> list[dict]:
    """Group word spans into subtitle segments at pauses or every ``max_s`` seconds."""
    segments: list[dict[str, Any]] = []
    for w in words:
        cur = segments[-1] if segments else None
        if cur is None or w["start"] - cur["end"] > gap_s or w["end"] - cur["start"] > max_s:
            segments.append({"id": len(segments), "start": w["start"], "end": w["end"], "text": w["text"]})
        else:
            cur["end"] = w["end"]
            cur["text"] += " " + w["text"]
    return segments


def _clock(t: float, sep: str) -> str:
    ms = int(round(t * 1000))
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def to_srt(segments: list[dict[str, Any]]) -> str:
    return "".join(
        f"{i + 1}\n{_clock(s['start'], ',')} --> {_clock(s['end'], ',')}\n{s['text']}\n\n"
        for i, s in enumerate(segments)
    )


def to_vtt(segments: list[dict[str, Any]]) -> str:
    body = "".join(f"{_clock(s['start'], '.')} --> {_clock(s['end'], '.')}\n{s['text']}\n\n" for s in segments)
    return "WEBVTT\n\n" + body
