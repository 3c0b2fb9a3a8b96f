"""``voxray audiobook``: a book -> chaptered audio on Ray, resumable after a kill.

Pipeline: read the book and plan its chunks once in the driver (whole sentences of one
paragraph, ids ``chapter-position``) -> skip chunks already in ``OUT/chunks`` -> Ray Data
streams the rest, in book order, through Kokoro actors (:class:`voxray.tts.TTSPipeline`, one
model per actor) that write each chunk's audio as it completes -> the driver consumes only small
status rows (progress bar with ETA) -> when every chunk is done or failed, the assembler streams
chunk files into chapter files, ``chapters.json``, ``subtitles.srt`` and the .m4b -> ``run.json``.

A chunk that raises is retried once in the actor; a second failure is written as
``KEY.failed.json``, listed in ``run.json`` and replaced by silence (so is a chunk that keeps
killing its actor, after bounded retries). A rerun retries failed chunks and skips finished ones,
so a killed job picks up where it stopped.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any, Literal

from pydantic import Field, model_validator

from voxray.audiobook.book import Book, BookChunk, plan_chunks, read_book, settings_fingerprint
from voxray.audiobook.config import AudiobookOptions
from voxray.audiobook.store import ChunkStore
from voxray.config import RayOptions, ResourceOptions, RetryOptions
from voxray.errors import InferenceError, TextError, row_error
from voxray.jobs.audio_stages import concat_columns
from voxray.jobs.faults import guarded
from voxray.jobs.runtime import check_runner_device
from voxray.jobs.tts_stages import TTSActor, report_forwards, tts_stage
from voxray.procmem import peak_rss_mb
from voxray.results import RunReport, now_iso, write_report
from voxray.storage import ensure_dir, join
from voxray.tts.config import SAMPLE_RATE, TTSOptions

logger = logging.getLogger("voxray.audiobook")


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
    retries: RetryOptions = Field(default_factory=RetryOptions)
    progress: bool = Field(True, description="show a progress bar over chunks, with an ETA")
    limit: int | None = Field(
        None, ge=1, description="synthesize at most this many new chunks, then stop (a rerun resumes)"
    )

    @model_validator(mode="after")
    def _one_device_option(self) -> AudiobookJob:
        check_runner_device(self.tts.device)
        return self

CHUNK_DIR = "chunks"


def sentence_times(graphemes: str, start_s: float, duration_s: float) -> list[tuple[float, float, str]]:
    """Split one model call's audio time over its sentences in proportion to their length.

    The call boundary itself is exact (from the audio length); inside a call Kokoro gives no
    alignment, and speech time tracks characters closely enough for subtitles.
    """
    from voxray.errors import TextError
    from voxray.text import split_sentences

    try:
        sentences = split_sentences(graphemes)
    except TextError:
        sentences = [graphemes]
    total = sum(len(s) for s in sentences) or 1
    out, t = [], start_s
    for s in sentences:
        d = duration_s * len(s) / total
        out.append((round(t, 4), round(t + d, 4), s))
        t += d
    return out


# ---------------------------------------------------------------- model stage (Ray actors)
class AudiobookActor(TTSActor):
    """One :class:`TTSPipeline` per actor; synthesises a chunk, retries once, writes it to the store.

    A chunk whose synthesis kills the actor (bounded, :mod:`voxray.jobs.faults`) is written as
    failed, like one that raised twice, and becomes silence.
    """

    def __init__(self, options: dict[str, Any], chunk_root: str, state: Any = None, device: str = "cpu",
                 crashes_per_input: int = 2) -> None:
        super().__init__(state=state, device=device, crashes_per_input=crashes_per_input)
        from voxray.tts.pipeline import TTSPipeline

        self.pipeline = TTSPipeline(TTSOptions(**{**options, "device": self.device}))
        self.store = ChunkStore(chunk_root)

    def _synthesize(self, chunk_id: str, text: str, attempt: int) -> tuple[Any, dict[str, Any]]:
        return self._assemble(chunk_id, list(self.pipeline(text)))

    @staticmethod
    def _assemble(chunk_id: str, results: list[Any]) -> tuple[Any, dict[str, Any]]:
        """One book chunk's model calls -> its audio and timing meta (sentences, and words from
        Kokoro's predicted durations), in seconds from the chunk's start."""
        import numpy as np

        pieces, sentences, words, t = [], [], [], 0.0
        for result in results:
            d = len(result.audio) / SAMPLE_RATE
            sentences += sentence_times(result.graphemes, t, d)
            words += [(round(t + w.start, 4), round(t + w.end, 4), w.word) for w in result.words]
            pieces.append(result.audio)
            t += d
        if not pieces:
            raise InferenceError(f"chunk {chunk_id} produced no audio")
        return np.concatenate(pieces).astype(np.float32), {"sentences": sentences, "words": words}

    def _write(self, chunk_id: str, key: str, audio: Any, timing: dict[str, Any], attempt: int) -> None:
        self.store.write_ok(key, audio, {"id": chunk_id, "samples": len(audio), **timing, "attempts": attempt})

    def run_chunk(self, chunk_id: str, key: str, text: str) -> dict[str, Any]:
        t0 = time.perf_counter()
        error: str | None = None
        samples = 0
        attempts = 0
        for attempt in (1, 2):  # the first try and one retry
            attempts = attempt
            try:
                audio, timing = self._synthesize(chunk_id, text, attempt)
                self._write(chunk_id, key, audio, timing, attempt)
                samples, error = len(audio), None
                break
            except Exception as exc:  # per chunk: recorded, never raised
                error = row_error(exc)
                logger.warning("chunk %s attempt %d failed: %s", chunk_id, attempt, error)
        if error is not None:
            self.store.write_failed(key, {"id": chunk_id, "error": error, "attempts": attempts, "text": text[:200]})
        return {"id": chunk_id, "samples": samples, "chars": len(text), "error": error or "",
                "attempts": attempts, "synth_s": time.perf_counter() - t0}

    def run_batched(self, chunks: list[tuple[str, str, str]]) -> list[dict[str, Any]]:
        """Every model call of these book chunks in shared padded forwards (a batching runner);
        a chunk with any failure goes the one-by-one way (its retry included)."""
        from voxray.errors import VoxrayError
        from voxray.tts.pipeline import TTSRequest

        t0 = time.perf_counter()
        results = self.pipeline.synthesize_batch([TTSRequest(text) for _, _, text in chunks])
        share = (time.perf_counter() - t0) / max(1, sum(len(t) for _, _, t in chunks))
        rows = []
        for (chunk_id, key, text), got in zip(chunks, results, strict=True):
            if isinstance(got, VoxrayError):  # run_chunk records the error (and retries once)
                rows.append(self.run_chunk(chunk_id, key, text))
                continue
            try:
                audio, timing = self._assemble(chunk_id, got.chunks)
                self._write(chunk_id, key, audio, timing, 1)
            except Exception:  # the store failed, say: the one-by-one path records it
                rows.append(self.run_chunk(chunk_id, key, text))
                continue
            rows.append({"id": chunk_id, "samples": len(audio), "chars": len(text), "error": "",
                         "attempts": 1, "synth_s": share * len(text)})
        return rows

    def process(self, batch: dict[str, Any]) -> dict[str, Any]:
        chunks = [(str(i), str(k), str(t)) for i, k, t in zip(batch["id"], batch["key"], batch["text"], strict=True)]
        before = self.pipeline.stats.as_dict()
        if len(chunks) > 1 and getattr(self.pipeline.runner, "batches", False):
            rows = self.run_batched(chunks)
        else:
            rows = [self.run_chunk(*c) for c in chunks]
        report_forwards(self.state, self.pipeline, before)
        return {name: [r[name] for r in rows] for name in rows[0]} if rows else {}

    def crash_rows(self, batch: dict[str, Any], message: str) -> dict[str, Any]:
        rows = []
        for chunk_id, key, text in zip(batch["id"], batch["key"], batch["text"], strict=True):
            self.store.write_failed(str(key), {"id": str(chunk_id), "error": message, "attempts": 0,
                                               "text": str(text)[:200]})
            rows.append({"id": str(chunk_id), "samples": 0, "chars": len(str(text)), "error": message,
                         "attempts": 0, "synth_s": 0.0})
        return {name: [r[name] for r in rows] for name in rows[0]}

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        return guarded(self.state, self.stage, batch, self.process, self.crash_rows, concat_columns,
                       self.crashes_per_input)


# ---------------------------------------------------------------- driver
def run_audiobook(job: AudiobookJob, actor_cls: type[AudiobookActor] | None = None) -> dict[str, Any]:
    """Run the job to completion (or to ``limit`` new chunks) and return ``run.json`` as a dict.

    ``actor_cls`` replaces the Kokoro stage (a subclass, e.g. in tests).
    """
    from voxray.audiobook.assemble import assemble_book

    t0 = time.perf_counter()
    out = job.out if "://" in job.out else os.path.abspath(job.out)
    report = RunReport(job="audiobook", out=out, started_at=now_iso())
    book = read_book(job.book, title=job.title, author=job.author)
    chunks = plan_chunks(book, job.chunk_chars)
    if not chunks:
        raise TextError(f"{job.book}: no sentence to read in the book")
    ensure_dir(out)
    settings = settings_fingerprint(job.tts.model_dump())
    keys = {c.id: c.key(settings) for c in chunks}
    store = ChunkStore(join(out, CHUNK_DIR))
    done, _ = store.listing()
    pending = [c for c in chunks if keys[c.id] not in done]
    todo = pending[: job.limit] if job.limit else pending
    report.inputs = len(chunks)
    report.skipped_already_done = len(chunks) - len(pending)
    logger.info("%s: %d chapters, %d characters, %d chunks (%d done, %d to synthesize)", job.book,
                len(book.chapters), book.chars, len(chunks), report.skipped_already_done, len(todo))
    rows: list[dict[str, Any]] = []
    if todo:
        rows = _run_pipeline(job, todo, keys, store, report, actor_cls or AudiobookActor)
    synth_wall = time.perf_counter() - t0
    done, failed = store.listing()
    failed -= done
    missing = [c for c in chunks if keys[c.id] not in done and keys[c.id] not in failed]
    report.processed = len(rows)
    report.errors = sum(1 for r in rows if r["error"])
    report.ok = report.processed - report.errors
    errors_by_kind: dict[str, int] = {}
    for r in rows:
        if r["error"]:
            kind = r["error"].split(":", 1)[0]
            errors_by_kind[kind] = errors_by_kind.get(kind, 0) + 1
    report.errors_by_kind = errors_by_kind
    new_audio_s = sum(r["samples"] for r in rows) / SAMPLE_RATE
    extra: dict[str, Any] = {
        "book": job.book, "title": book.title, "author": book.author, "characters": book.chars,
        "chapters": len(book.chapters), "chunks": len(chunks), "chunks_synthesized": report.ok,
        "chunks_failed_total": len([c for c in chunks if keys[c.id] in failed]),
        "chunks_pending": len(missing), "chars_synthesized": sum(r["chars"] for r in rows),
        "new_audio_s": new_audio_s, "synthesis_wall_s": synth_wall,
        "actor_real_time_factor": (sum(r["synth_s"] for r in rows) / new_audio_s) if new_audio_s else 0.0,
        "format": job.format, "model": job.tts.model, "voice": job.tts.voice, "lang": job.tts.lang,
        "speed": job.tts.speed, "complete": not missing, "failed_chunks": [], "files": [],
        "backend": job.tts.backend, **report.extra.get("forwards", {}),
    }
    report.extra = extra
    if missing:
        logger.warning("%d of %d chunks are not synthesized yet (limit=%s): rerun to finish the book",
                       len(missing), len(chunks), job.limit)
    else:
        assembly = assemble_book(book, chunks, keys, failed, store, out, job)
        report.audio_s = assembly.audio_s
        report.audio_hours = assembly.audio_s / 3600
        extra.update(
            failed_chunks=assembly.failed, files=assembly.files, m4b=assembly.m4b,
            chapter_files=[ch.file for ch in assembly.chapters], duration_s=assembly.audio_s,
        )
    report.wall_s = time.perf_counter() - t0
    report.rtfx = report.audio_s / report.wall_s if report.audio_s and report.wall_s else 0.0
    extra["wall_s"] = report.wall_s
    # RTF over this run's new audio (what the run computed); chars/s over this run's chunks.
    extra["real_time_factor"] = report.wall_s / new_audio_s if new_audio_s else 0.0
    extra["chars_per_s"] = extra["chars_synthesized"] / report.wall_s if report.wall_s else 0.0
    extra["driver_peak_rss_mb"] = peak_rss_mb()
    report.totals = {"chunks": len(chunks), "failed": extra["chunks_failed_total"], "pending": len(missing)}
    write_report(out, report)
    return report.to_dict()


def _run_pipeline(
    job: AudiobookJob, todo: list[BookChunk], keys: dict[str, str], store: ChunkStore, report: RunReport,
    actor_cls: type[AudiobookActor],
) -> list[dict[str, Any]]:
    """Synthesize ``todo`` on a Ray actor pool; returns the small per-chunk status rows."""
    from tqdm import tqdm

    items = [{"id": c.id, "key": keys[c.id], "text": c.text} for c in todo]  # book order
    rows: list[dict[str, Any]] = []
    chars_total = sum(len(i["text"]) for i in items)
    chars_done = failures = 0
    with (
        tts_stage(  # one bar over chunks (below) instead of Ray's per-operator bars
            items, actor_cls, {"chunk_root": store.root}, job=job, report=report, max_blocks=2000,
        ) as ds,
        tqdm(total=len(items), unit="chunk", desc="audiobook", disable=not job.progress, dynamic_ncols=True,
             smoothing=0.1) as bar,
    ):
        for row in ds.iter_rows():
            rec = {k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()}
            rows.append(rec)
            chars_done += rec["chars"]
            failures += bool(rec["error"])
            bar.update(1)
            bar.set_postfix(chars=f"{chars_done}/{chars_total}", failed=failures, refresh=False)
    return rows


def describe(book: Book, chunks: list[BookChunk]) -> dict[str, Any]:
    """The plan without synthesis (``voxray audiobook --dry-run``): chapters, characters, chunks."""
    per: dict[int, int] = {}
    for c in chunks:
        per[c.chapter] = per.get(c.chapter, 0) + 1
    return {
        "title": book.title, "author": book.author, "characters": book.chars, "chunks": len(chunks),
        "chapters": [{"index": ch.index, "title": ch.title, "chars": ch.chars, "paragraphs": len(ch.paragraphs),
                      "chunks": per.get(ch.index, 0), "source": ch.source} for ch in book.chapters],
    }
