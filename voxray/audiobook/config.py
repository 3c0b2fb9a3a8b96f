"""Pydantic options for ``voxray audiobook``: one home for its CLI flags and ``jobs/audiobook.yaml``."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from voxray.config import Options, RayOptions, ResourceOptions
from voxray.tts.config import TTSOptions

BookFormat = Literal["m4b", "mp3", "wav"]


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
    chunk_chars: int = Field(
        400, ge=50, le=5000,
        description="characters per chunk: whole sentences of one paragraph are packed up to this size "
        "(one chunk is one unit of parallel work and of resume)",
    )


def _audiobook_resources() -> ResourceOptions:
    # Same reasoning as the synthesis job: one single-threaded Kokoro actor per core, half a CPU
    # reserved each so the driver and Ray Data's own tasks are not starved; one chunk per call.
    return ResourceOptions(cpus_per_actor=0.5, threads_per_actor=1, rows_per_call=1)


class AudiobookJob(AudiobookOptions):
    """``voxray audiobook`` / ``voxray run jobs/audiobook.yaml``: a book -> an audiobook, on Ray."""

    job: Literal["audiobook"] = "audiobook"
    out: str = Field(..., description="output directory (local path or fsspec URL)")
    tts: TTSOptions = Field(default_factory=TTSOptions)
    ray: RayOptions = Field(default_factory=RayOptions)
    resources: ResourceOptions = Field(default_factory=_audiobook_resources)
    progress: bool = Field(True, description="show a progress bar over chunks, with an ETA")
    limit: int | None = Field(
        None, ge=1, description="synthesize at most this many new chunks, then stop (a rerun resumes)"
    )
    inject_failures: dict[str, int] = Field(
        default_factory=dict,
        description="TESTS ONLY: chunk id -> how many attempts of that chunk raise an injected error "
        "(1: the retry succeeds; 2 or more: the chunk fails and becomes silence)",
    )
