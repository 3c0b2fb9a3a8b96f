"""What a book becomes (format, metadata, pauses, chunking): the options the assembler reads.

The job options (``voxray audiobook``, ``jobs/audiobook.yaml``) extend them in :mod:`voxray.jobs.audiobook`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from voxray.config import Options

BookFormat = Literal["m4b", "mp3", "wav"]
SubtitleLevel = Literal["sentence", "word"]


class PauseOptions(Options):
    """Silences the assembler inserts (Kokoro's own ~0.2-0.4 s edges come on top)."""

    paragraph: float = Field(0.6, ge=0, le=10, description="seconds of silence between paragraphs")
    chapter: float = Field(2.0, ge=0, le=30, description="seconds of silence at the end of each chapter but the last")
    failed_chunk: float = Field(
        1.0, ge=0, le=30, description="seconds of silence standing in for a chunk that failed twice"
    )


class AudiobookOptions(Options):
    """What the book becomes: format, metadata, pauses and how the text is cut into chunks."""

    book: str = Field(..., description="the book: a .txt, .md or .epub file (local path or fsspec URL)")
    format: BookFormat = Field(
        "m4b",
        description="m4b: AAC chapter files (.m4a) plus one .m4b with chapter markers; mp3 or wav: chapter files only",
    )
    bitrate: str = Field("64k", pattern=r"^\d+k$", description="AAC/MP3 bitrate for m4b and mp3 output")
    title: str | None = Field(None, description="book title (default: the book's metadata, first heading or file name)")
    author: str | None = Field(None, description="author (default: the book's metadata)")
    pause: PauseOptions = Field(default_factory=PauseOptions)
    subtitles: SubtitleLevel = Field(
        "sentence", description="cues of subtitles.srt: one per sentence, or one per word (times from Kokoro's "
        "predicted durations)",
    )
    chunk_chars: int = Field(
        400, ge=50, le=5000,
        description="characters per chunk: whole sentences of one paragraph are packed up to this size "
        "(one chunk is one unit of parallel work and of resume)",
    )
