"""Chunks back into a book: per-chapter audio in book order, chapters.json, subtitles.srt, .m4b.

Memory stays bounded by one chunk: each chapter is streamed chunk by chunk from the chunk store
into a 16-bit WAV on local disk (a staging folder), which ffmpeg then encodes. Times are kept in
samples, so chapter boundaries, subtitles and the .m4b chapter markers agree exactly.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from voxray.audiobook.book import Book, BookChunk
from voxray.audiobook.config import AudiobookOptions
from voxray.audiobook.ffmpeg import run_ffmpeg
from voxray.audiobook.store import ChunkStore
from voxray.storage import fs_join, join
from voxray.subtitles import srt_cue
from voxray.subtitles import srt_time as srt_time  # part of this module's interface
from voxray.tts.config import SAMPLE_RATE

logger = logging.getLogger("voxray.audiobook")

CHAPTER_EXT = {"m4b": "m4a", "mp3": "mp3", "wav": "wav"}
_UNSAFE_TITLE = re.compile(r'[\x00-\x1f\x7f/\\:*?"<>|]+')


def safe_title(title: str, max_len: int = 80) -> str:
    """A chapter title usable in a file name on any OS (spaces kept; separators and reserved
    characters become spaces; never empty, never starting with a dot)."""
    text = re.sub(r"\s+", " ", _UNSAFE_TITLE.sub(" ", title)).strip().strip(".").strip()
    return text[:max_len].rstrip() or "Chapter"


@dataclass
class ChapterOut:
    """One chapter of the finished book (``chapters.json`` entry)."""

    index: int
    title: str
    file: str
    start_s: float
    end_s: float
    duration_s: float
    chars: int
    chunks: int
    source: str
    start_sample: int = 0
    end_sample: int = 0


@dataclass
class Assembly:
    """What the assembler wrote, for ``run.json``."""

    chapters: list[ChapterOut] = field(default_factory=list)
    samples: int = 0
    failed: list[dict[str, Any]] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    m4b: str | None = None

    @property
    def audio_s(self) -> float:
        return self.samples / SAMPLE_RATE


def _ffmetadata_escape(value: str) -> str:
    return re.sub(r"([=;#\\\n])", r"\\\1", value)


def _ffmetadata(book: Book, chapters: list[ChapterOut]) -> str:
    lines = [";FFMETADATA1", f"title={_ffmetadata_escape(book.title)}", f"album={_ffmetadata_escape(book.title)}",
             "genre=Audiobook"]
    if book.author:
        lines += [f"artist={_ffmetadata_escape(book.author)}", f"album_artist={_ffmetadata_escape(book.author)}"]
    for ch in chapters:
        lines += ["", "[CHAPTER]", f"TIMEBASE=1/{SAMPLE_RATE}", f"START={ch.start_sample}", f"END={ch.end_sample}",
                  f"title={_ffmetadata_escape(ch.title)}"]
    return "\n".join(lines) + "\n"


def _tags(book: Book, ch: ChapterOut, total: int) -> list[str]:
    tags = ["-metadata", f"title={ch.title}", "-metadata", f"album={book.title}",
            "-metadata", f"track={ch.index + 1}/{total}", "-metadata", "genre=Audiobook"]
    if book.author:
        tags += ["-metadata", f"artist={book.author}"]
    return tags


class _Publisher:
    """Moves finished files from the local staging folder to ``out`` (local rename or fsspec put)."""

    def __init__(self, out: str) -> None:
        import fsspec

        self.out = out
        self.remote = "://" in out and not out.startswith("file://")
        self.fs, self.path = fsspec.core.url_to_fs(out)
        if self.remote:
            self.staging = tempfile.mkdtemp(prefix="voxray-audiobook-")
        else:
            self.staging = os.path.join(self.path, ".assembly")
            os.makedirs(self.staging, exist_ok=True)

    def local(self, name: str) -> str:
        return os.path.join(self.staging, name)

    def publish(self, name: str, as_name: str | None = None) -> str:
        src, dest = self.local(name), join(self.out, as_name or name)
        if self.remote:
            self.fs.put(src, fs_join(self.path, as_name or name))
            os.remove(src)
        else:
            os.replace(src, dest)
        return dest

    def close(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)


def assemble_book(
    book: Book,
    chunks: list[BookChunk],
    keys: dict[str, str],
    failed: set[str],
    store: ChunkStore,
    out: str,
    options: AudiobookOptions,
) -> Assembly:
    """Write the chapter files, ``chapters.json``, ``subtitles.srt`` and (format m4b) the .m4b.

    ``keys`` maps chunk id -> storage key; keys in ``failed`` become ``pause.failed_chunk``
    seconds of silence and an entry in ``Assembly.failed``. Every chunk must be done or failed.
    """
    import soundfile as sf

    pub = _Publisher(out)
    result = Assembly()
    by_chapter: dict[int, list[BookChunk]] = {}
    for chunk in chunks:
        by_chapter.setdefault(chunk.chapter, []).append(chunk)
    present = [c for c in book.chapters if by_chapter.get(c.index)]
    width = max(2, len(str(len(present))))
    para_pause = np.zeros(round(options.pause.paragraph * SAMPLE_RATE), np.float32)
    chapter_pause = np.zeros(round(options.pause.chapter * SAMPLE_RATE), np.float32)
    fail_silence = np.zeros(round(options.pause.failed_chunk * SAMPLE_RATE), np.float32)
    ext = CHAPTER_EXT[options.format]
    position = 0  # samples since the start of the book
    cue = 0
    wavs: list[str] = []
    try:
        with open(pub.local("subtitles.srt"), "w", encoding="utf-8") as srt:
            for n, chapter in enumerate(present):
                wav_name = f"chapter-{n:04d}.wav"
                start = position
                todo = by_chapter[chapter.index]
                with sf.SoundFile(pub.local(wav_name), "w", SAMPLE_RATE, 1, "PCM_16", format="WAV") as fh:

                    def put(audio: np.ndarray) -> None:
                        nonlocal position
                        fh.write(np.clip(audio, -1.0, 1.0))
                        position += len(audio)

                    for k, chunk in enumerate(todo):
                        key = keys[chunk.id]
                        if key in failed:
                            meta = store.read_meta(key, failed=True)
                            result.failed.append({
                                "chunk": chunk.id, "chapter": chapter.index, "chapter_title": chapter.title,
                                "position": chunk.position, "paragraph": chunk.paragraph,
                                "error": meta.get("error"), "attempts": meta.get("attempts"),
                                "at_s": round(position / SAMPLE_RATE, 3), "text": chunk.text[:120],
                            })
                            put(fail_silence)
                        else:
                            meta = store.read_meta(key)
                            offset = position / SAMPLE_RATE
                            for s0, s1, text in _cues(meta, options.subtitles):
                                cue += 1
                                srt.write(srt_cue(cue, offset + s0, offset + s1, text))
                            put(store.read_audio(key))
                        if chunk.paragraph_end and k < len(todo) - 1:
                            put(para_pause)
                    if n < len(present) - 1:
                        put(chapter_pause)
                wavs.append(wav_name)
                final = f"{n + 1:0{width}d} - {safe_title(chapter.title)}.{ext}"
                result.chapters.append(ChapterOut(
                    index=n, title=chapter.title, file=final, start_s=start / SAMPLE_RATE,
                    end_s=position / SAMPLE_RATE, duration_s=(position - start) / SAMPLE_RATE, chars=chapter.chars,
                    chunks=len(todo), source=chapter.source, start_sample=start, end_sample=position,
                ))
        result.samples = position
        total = len(result.chapters)
        for wav_name, ch in zip(wavs, result.chapters, strict=True):
            if options.format == "wav":
                result.files.append(pub.publish(wav_name, ch.file))
                continue
            codec = ["-c:a", "aac"] if options.format == "m4b" else ["-c:a", "libmp3lame"]
            run_ffmpeg(["-i", pub.local(wav_name), "-map", "0:a", *codec, "-b:a", options.bitrate,
                        *_tags(book, ch, total), pub.local(ch.file)])
            result.files.append(pub.publish(ch.file))
        if options.format == "m4b":
            with open(pub.local("concat.txt"), "w", encoding="utf-8") as fh:
                fh.writelines(f"file '{w}'\n" for w in wavs)
            with open(pub.local("metadata.txt"), "w", encoding="utf-8") as fh:
                fh.write(_ffmetadata(book, result.chapters))
            name = f"{safe_title(book.title)}.m4b"
            run_ffmpeg(["-f", "concat", "-safe", "0", "-i", pub.local("concat.txt"), "-i", pub.local("metadata.txt"),
                        "-map", "0:a", "-map_metadata", "1", "-map_chapters", "1", "-c:a", "aac",
                        "-b:a", options.bitrate, "-movflags", "+faststart", "-f", "ipod", "-brand", "M4B ",
                        pub.local(name)])
            result.m4b = pub.publish(name)
            result.files.append(result.m4b)
        doc = {
            "title": book.title, "author": book.author, "source": book.source,
            "duration_s": result.audio_s, "format": options.format, "m4b": result.m4b,
            "chapters": [{k: v for k, v in asdict(ch).items() if k not in ("start_sample", "end_sample")}
                         for ch in result.chapters],
        }
        with open(pub.local("chapters.json"), "w", encoding="utf-8") as fh:
            json.dump(doc, fh, indent=2, ensure_ascii=False)
        result.files.append(pub.publish("chapters.json"))
        result.files.append(pub.publish("subtitles.srt"))
    finally:
        pub.close()
    return result


def _cues(meta: dict[str, Any], level: str) -> list[tuple[float, float, str]]:
    """A chunk's subtitle cues: its words (when ``level`` is word and the chunk has word times:
    chunks written before word timings existed fall back to sentences), else its sentences."""
    if level == "word" and meta.get("words"):
        return [(s0, s1, w) for s0, s1, w in meta["words"]]
    return [tuple(x) for x in meta["sentences"]]
