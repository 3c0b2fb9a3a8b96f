"""Subtitles: SRT/VTT timestamps and cues, for API transcripts and audiobook ``subtitles.srt``.

Times are seconds; a cue is written from its start, end and text. Core module: no Ray, no web.
"""

from __future__ import annotations

from typing import Any


def timestamp(seconds: float, sep: str = ",") -> str:
    """``HH:MM:SS,mmm`` (SRT; ``sep="."`` for VTT), rounded to the millisecond, never negative."""
    ms = max(0, int(round(seconds * 1000)))
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def srt_time(seconds: float) -> str:
    return timestamp(seconds, ",")


def vtt_time(seconds: float) -> str:
    return timestamp(seconds, ".")


def srt_cue(number: int, start: float, end: float, text: str) -> str:
    """One SRT cue (``number`` counts from 1), with the blank line that ends it."""
    return f"{number}\n{srt_time(start)} --> {srt_time(end)}\n{text}\n\n"


def vtt_cue(start: float, end: float, text: str) -> str:
    """One WebVTT cue, with the blank line that ends it."""
    return f"{vtt_time(start)} --> {vtt_time(end)}\n{text}\n\n"


VTT_HEADER = "WEBVTT\n\n"


def to_srt(segments: list[dict[str, Any]]) -> str:
    """Segments (``start``, ``end``, ``text``) as an SRT document."""
    return "".join(srt_cue(i + 1, s["start"], s["end"], s["text"]) for i, s in enumerate(segments))


def to_vtt(segments: list[dict[str, Any]]) -> str:
    """Segments (``start``, ``end``, ``text``) as a WebVTT document."""
    return VTT_HEADER + "".join(vtt_cue(s["start"], s["end"], s["text"]) for s in segments)


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
