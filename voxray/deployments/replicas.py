"""Model deployments: the batch jobs' runners behind dynamic batching (:mod:`.batching`).

Each class holds one runner (built from options, or injected) and keeps per-replica counters
(requests, batches, largest batch, memory, health probes, cancelled streams) that the ingress
exposes as Prometheus metrics. Inputs arrive already decoded (the ingress decodes on CPU), so
the batched call only runs the model. Every model call runs in one model thread per replica.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

import numpy as np
from ray import serve

from voxray import procmem
from voxray.asr.config import ASROptions
from voxray.audio import SAMPLE_RATE
from voxray.deployments.batching import DynamicBatcher
from voxray.deployments.config import DeploymentOptions
from voxray.errors import UnknownLanguageError

logger = logging.getLogger("voxray.deployments")

# ISO 639-1 codes and the names OpenAI's API uses for them (verbose_json says the name).
LANGUAGE_NAMES = {
    "ko": "korean", "en": "english", "ja": "japanese", "zh": "chinese", "es": "spanish", "fr": "french",
    "de": "german", "it": "italian", "pt": "portuguese", "ru": "russian", "ar": "arabic", "hi": "hindi",
    "th": "thai", "el": "greek", "he": "hebrew", "uk": "ukrainian", "vi": "vietnamese", "tr": "turkish",
}
# Scripts whose letters name one language when they dominate a CTC vocabulary.
_SCRIPTS = (
    ("ko", ((0xAC00, 0xD7A3), (0x1100, 0x11FF), (0x3130, 0x318F))),
    ("ja", ((0x3040, 0x30FF),)),
    ("zh", ((0x4E00, 0x9FFF),)),
    ("ru", ((0x0400, 0x04FF),)),
    ("ar", ((0x0600, 0x06FF),)),
    ("hi", ((0x0900, 0x097F),)),
    ("th", ((0x0E00, 0x0E7F),)),
    ("el", ((0x0370, 0x03FF),)),
    ("he", ((0x0590, 0x05FF),)),
)


def vocab_languages(tokens: list[str]) -> list[str]:
    """Languages a CTC vocabulary can write, by the script of its letters (``[]`` = cannot tell:
    Latin letters serve many languages)."""
    counts: dict[str, int] = {}
    for tok in tokens:
        for ch in tok:
            cp = ord(ch)
            for lang, ranges in _SCRIPTS:
                if any(lo <= cp <= hi for lo, hi in ranges):
                    counts[lang] = counts.get(lang, 0) + 1
                    break
    if "ja" in counts:  # kana mean Japanese even though its vocabularies carry kanji too
        counts.pop("zh", None)
    return [lang for lang, n in sorted(counts.items(), key=lambda kv: -kv[1]) if n >= 10]


def normalize_language(language: str) -> str:
    """``'ko'``, ``'KO-kr'`` and ``'korean'`` -> ``'ko'``; an unknown name is returned lowercased."""
    value = language.strip().lower().replace("_", "-")
    by_name = {name: code for code, name in LANGUAGE_NAMES.items()}
    return by_name.get(value, value.split("-")[0])


def check_language(language: str | None, languages: list[str]) -> str | None:
    """The ISO code of ``language`` if the model transcribes it; ``None`` when not asked.

    Raises :class:`UnknownLanguageError` (400) naming what the model can do. A model whose
    languages are unknown (``[]``) accepts any well-formed code.
    """
    if language is None or not language.strip():
        return None
    code = normalize_language(language)
    if languages and code not in languages:
        names = ", ".join(f"{c} ({LANGUAGE_NAMES.get(c, c)})" for c in languages)
        raise UnknownLanguageError(f"language {language!r} is not one this model transcribes: {names}")
    if not languages and not (code.isalpha() and 2 <= len(code) <= 3):
        raise UnknownLanguageError(f"language {language!r} is not an ISO 639-1 code such as 'ko' or 'en'")
    return code


def memory_mb() -> dict[str, float]:
    """This process's resident memory now and at its peak (Linux /proc; zeros elsewhere)."""
    rss, peak = procmem.memory_mb()
    return {"rss_mb": rss, "peak_rss_mb": peak}


class BatchCounters:
    """Per-replica batching statistics (what ``/metrics`` and the batching test read)."""

    def __init__(self) -> None:
        self.requests = 0
        self.batches = 0
        self.max_batch = 0
        self.audio_s = 0.0
        self.sizes: dict[int, int] = {}
        self.health_probes = 0
        self.cancelled = 0
        self.chunks = 0
        self.chunks_after_cancel = 0

    def record(self, size: int, audio_s: float = 0.0) -> None:
        self.requests += size
        self.batches += 1
        self.max_batch = max(self.max_batch, size)
        self.audio_s += audio_s
        self.sizes[size] = self.sizes.get(size, 0) + 1

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests, "batches": self.batches, "max_batch": self.max_batch,
            "mean_batch": self.requests / self.batches if self.batches else 0.0,
            "audio_s": self.audio_s, "sizes": dict(self.sizes), "health_probes": self.health_probes,
            "cancelled": self.cancelled, "chunks": self.chunks, "chunks_after_cancel": self.chunks_after_cancel,
            "pid": os.getpid(), **memory_mb(),
        }


class ModelThread:
    """One thread per replica runs every model call, so the replica's event loop stays free to
    accept requests and form the next batch while a forward runs, and forwards never overlap
    (overlapping forwards would split the replica's cores between them)."""

    def __init__(self, name: str) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self.busy_since: float | None = None
        self._pending = 0

    def _timed(self, fn: Callable[..., Any], *args: Any) -> Any:
        self.busy_since = time.monotonic()
        try:
            return fn(*args)
        finally:
            self.busy_since = None

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        self._pending += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, self._timed, fn, *args)
        finally:
            self._pending -= 1

    @property
    def idle(self) -> bool:
        return self._pending == 0


class HealthProbe:
    """``check_health`` of a model replica: a tiny real input through the model thread when it is
    idle (at most every ``probe_interval_s``), or, while it is busy, a bound on how long the current
    call has run: a wedged model fails its checks and Serve replaces the replica."""

    def __init__(self, thread: ModelThread, probe: Callable[[], None], options: DeploymentOptions,
                 counters: BatchCounters) -> None:
        self.thread, self.probe, self.options, self.counters = thread, probe, options, counters
        self._last = -math.inf

    async def check(self) -> None:
        busy = self.thread.busy_since
        if busy is not None:
            running = time.monotonic() - busy
            if running > self.options.stuck_after_s:
                raise RuntimeError(f"a model call has run for {running:.0f} s (stuck_after_s)")
            return
        if time.monotonic() - self._last < self.options.probe_interval_s or not self.thread.idle:
            return
        await self.thread.run(self.probe)
        self._last = time.monotonic()
        self.counters.health_probes += 1


def keep_torch_out() -> None:
    """Make ``import torch`` fail in this process unless it is loaded already. Kokoro runs on
    onnxruntime; only spaCy (misaki's English G2P, via thinc) would import torch, for nothing:
    185 MB of a TTS replica's RSS (measured; phonemes identical without it)."""
    if "torch" not in sys.modules:
        sys.modules["torch"] = None  # type: ignore[assignment]  # the import system's 'blocked' marker


M_MMAP_THRESHOLD, M_ARENA_MAX = -3, -8  # glibc mallopt parameters (malloc.h)


def bound_allocator(mmap_threshold: int = 2 << 20, arenas: int = 2) -> bool:
    """Keep a long-lived replica's heap from ratcheting: glibc raises its mmap threshold after each
    large free (up to 32 MB), so later large buffers land in the heap and fragment it, and every
    thread may get an arena of its own that keeps what it freed. A fixed threshold sends large
    buffers (audio, onnxruntime's shrunk arena regions) back to the OS on free; two arenas bound
    the per-thread copies. Returns False where the C library is not glibc (nothing is changed)."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, int(mmap_threshold))) and bool(mallopt(M_ARENA_MAX, int(arenas)))


ITEM_SECONDS_CAP = 30  # one long file counts as a full chunk, so it always fits a batch
PROBE_AUDIO_S = 0.5


def _item_seconds(item: Any) -> float:
    """Batch units of one ASR/embedding item: whole seconds of audio (capped), so forwards fill by
    audio, not by count alone."""
    audio = item[0] if isinstance(item, tuple) else item
    return min(ITEM_SECONDS_CAP, max(1, math.ceil(len(audio) / SAMPLE_RATE)))


def audio_batcher(forward: Callable[[list[Any]], Any], deployment: DeploymentOptions) -> DynamicBatcher[Any, Any]:
    """ASR/embedding forwards: at most ``max_batch_size`` requests and ``max_batch_seconds`` of audio
    (with ``max_batch_size`` 1 nothing waits: a lone request already fills its forward)."""
    return DynamicBatcher(
        forward, max_items=deployment.max_batch_size, max_units=deployment.max_batch_seconds,
        wait_s=deployment.batch_wait_timeout_s, units=_item_seconds,
    )


def _probe_audio() -> np.ndarray:
    t = np.arange(int(PROBE_AUDIO_S * SAMPLE_RATE)) / SAMPLE_RATE
    return (0.1 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


@serve.deployment(name="ASR")
class ASRDeployment:
    """wav2vec2 CTC: requests are batched by audio seconds and count, results per request."""

    def __init__(self, options: dict[str, Any], deployment: dict[str, Any], runner: Any = None) -> None:
        from voxray.asr import ASRRunner

        self.options = ASROptions(**options)
        self.deployment = DeploymentOptions(**deployment)
        self.runner = runner or ASRRunner(self.options)
        self.counters = BatchCounters()
        self.model_thread = ModelThread("asr")
        self.batcher = audio_batcher(partial(self.model_thread.run, self._run), self.deployment)
        tokenizer = getattr(self.runner.processor, "tokenizer", self.runner.processor)
        self.languages = self.deployment.languages or vocab_languages(list(tokenizer.get_vocab()))
        self.health = HealthProbe(self.model_thread, self._probe, self.deployment, self.counters)

    def _probe(self) -> None:
        (result,) = self.runner.transcribe([_probe_audio()], "none")
        if result.error:
            raise RuntimeError(f"health probe failed: {result.error}")

    async def check_health(self) -> None:
        await self.health.check()

    def _run(self, items: list[tuple[np.ndarray, str]]) -> list[dict[str, Any]]:
        """The model call (in the model thread): one runner call per timestamp kind."""
        self.counters.record(len(items), sum(len(a) for a, _ in items) / SAMPLE_RATE)
        by_ts: dict[str, list[int]] = {}
        for i, (_, ts) in enumerate(items):
            by_ts.setdefault(ts, []).append(i)
        results: list[Any] = [None] * len(items)
        for ts, idx in by_ts.items():
            for i, r in zip(idx, self.runner.transcribe([items[i][0] for i in idx], ts), strict=True):
                results[i] = r
        return [{"text": r.text, "duration_s": r.duration_s, "chunks": r.chunks, "error": r.error} for r in results]

    async def transcribe(
        self, audio: np.ndarray, timestamps: str = "none", language: str | None = None
    ) -> dict[str, Any]:
        """One request; joins the replica's next forward (alone when ``max_batch_size`` is 1).
        ``language`` is checked against what the model writes (a CTC model transcribes its own
        language only)."""
        code = check_language(language, self.languages)
        result = await self.batcher.submit((audio, timestamps))
        lang = code or (self.languages[0] if self.languages else None)
        return {**result, "language": LANGUAGE_NAMES.get(lang, lang) if lang else None}

    def describe(self) -> dict[str, Any]:
        """Static facts the ingress caches: what the model can transcribe."""
        return {"languages": self.languages}

    def info(self) -> dict[str, Any]:
        return {
            "policy": self.runner.policy, "languages": self.languages, "counters": self.counters.as_dict(),
        }


@serve.deployment(name="Embed")
class EmbedDeployment:
    """wav2vec2 embeddings with masked pooling, batched like ASR."""

    def __init__(self, options: dict[str, Any], deployment: dict[str, Any], embedder: Any = None) -> None:
        from voxray.embed.config import EmbedOptions
        from voxray.embed.runner import Embedder

        self.options = EmbedOptions(**options)
        self.deployment = DeploymentOptions(**deployment)
        self.embedder = embedder or Embedder(self.options)
        self.counters = BatchCounters()
        self.model_thread = ModelThread("embed")
        self.batcher = audio_batcher(partial(self.model_thread.run, self._run), self.deployment)
        self.health = HealthProbe(self.model_thread, self._probe, self.deployment, self.counters)

    def _probe(self) -> None:
        (result,) = self.embedder.embed([_probe_audio()])
        if result.error or result.embedding is None or not np.isfinite(result.embedding).all():
            raise RuntimeError(f"health probe failed: {result.error or 'no finite embedding'}")

    async def check_health(self) -> None:
        await self.health.check()

    def _run(self, audios: list[np.ndarray]) -> list[dict[str, Any]]:
        self.counters.record(len(audios), sum(len(a) for a in audios) / SAMPLE_RATE)
        results = self.embedder.embed(list(audios))
        return [
            {
                "embedding": None if r.embedding is None else np.asarray(r.embedding, np.float32).tolist(),
                "duration_s": r.duration_s, "error": r.error,
            }
            for r in results
        ]

    async def embed(self, audio: np.ndarray) -> dict[str, Any]:
        return await self.batcher.submit(audio)

    def info(self) -> dict[str, Any]:
        return {
            "dim": self.embedder.dim, "layer": self.options.layer,
            "pooling": self.options.pooling, "counters": self.counters.as_dict(),
        }


@serve.deployment(name="TTS")
class TTSDeployment:
    """Kokoro, streamed chunk by chunk so the first audio leaves before the whole text is synthesised.

    With a runner that batches (the torch backend, or a ``voxray export tts`` graph) and
    ``max_batch_size`` > 1, the chunks of all concurrent requests meet in the replica's batcher and run
    as one padded forward (the pipeline cuts it by ``max_batch_tokens``); each request's first
    sentence is its own chunk so its audio still leaves early. The int8 graph (batch 1) runs one
    utterance at a time. A client that goes away stops its synthesis: unbatched, a flag the pipeline
    checks between chunks; batched, its chunks not yet in a forward are cancelled.
    """

    def __init__(self, options: dict[str, Any], deployment: dict[str, Any], pipeline: Any = None) -> None:
        from voxray.tts.config import TTSOptions

        self.options = TTSOptions(**options)
        self.deployment = DeploymentOptions(**deployment)
        bound_allocator()
        backend = getattr(self.options, "backend", "onnx")
        if pipeline is None and (backend == "onnx" or (backend == "auto" and not self.deployment.num_gpus)):
            keep_torch_out()  # the onnxruntime backend: torch would only be dead weight
        from voxray.tts.pipeline import TTSPipeline

        self.pipeline = pipeline or TTSPipeline(self.options)
        self.counters = BatchCounters()
        self.model_thread = ModelThread("tts")
        runner_batches = bool(getattr(self.pipeline.runner, "batches", False))
        self.batched = self.deployment.max_batch_size > 1 and runner_batches
        if self.deployment.max_batch_size > 1 and not runner_batches:
            logger.warning("tts_deployment.max_batch_size=%d ignored: this Kokoro graph takes one utterance "
                           "(use backend: torch or a `voxray export tts` graph to batch)",
                           self.deployment.max_batch_size)
        self.batcher = DynamicBatcher(
            partial(self.model_thread.run, self._run_chunks), max_items=self.deployment.max_batch_size,
            wait_s=self.deployment.batch_wait_timeout_s,
        )
        self.health = HealthProbe(self.model_thread, self._probe, self.deployment, self.counters)
        self._probe()  # warm-up: loads the default language's G2P before the first request

    def _probe(self) -> None:
        audio = self.pipeline.synthesize("Hi.").audio
        if not len(audio) or not np.isfinite(audio).all():
            raise RuntimeError("health probe failed: Kokoro produced no finite audio")

    async def check_health(self) -> None:
        await self.health.check()

    def voices(self) -> list[dict[str, Any]]:
        return self.pipeline.voices.describe()

    def _next(self, chunks: Iterator[Any], cancel: threading.Event) -> Any:
        result = next(chunks, None)
        if result is not None:
            self.counters.chunks += 1
        if result is not None and cancel.is_set():
            self.counters.chunks_after_cancel += 1  # finished after the client left: wasted work
        return result

    def _run_chunks(self, jobs: list[Any]) -> list[Any]:
        """Chunks of any concurrent requests -> one batched forward (results or errors, in order)."""
        results = self.pipeline.synthesize_chunks(jobs, return_errors=True)
        self.counters.record(len(jobs), sum(len(r.audio) for r in results if hasattr(r, "audio")) / 24000)
        self.counters.chunks += len(jobs)
        return results

    @staticmethod
    def _piece(result: Any) -> tuple[np.ndarray, list[tuple[str, float, float]]]:
        """What the ingress gets per chunk: the audio and its words (seconds from the chunk's start)."""
        return result.audio, [(w.word, w.start, w.end) for w in result.words]

    async def stream(
        self, text: str, voice: str | None = None, lang: str | None = None, speed: float | None = None
    ) -> AsyncIterator[tuple[np.ndarray, list[tuple[str, float, float]]]]:
        """Yield (float32 24 kHz audio, word timings) per chunk; validation errors raise before the first."""
        from voxray.errors import TextError
        from voxray.text import normalize_text, split_sentences

        start = time.perf_counter()
        sentences = split_sentences(normalize_text(text))
        if not sentences:
            raise TextError("input is empty: give the text to speak")
        cancel = threading.Event()
        total = 0
        try:
            # The first sentence goes alone so its audio leaves early; the rest is packed into
            # full-size chunks. Both calls validate voice/lang/speed before producing audio.
            for part in (sentences[0], " ".join(sentences[1:])):
                if not part:
                    continue
                if self.batched:
                    async for result in self._batched(part, voice, lang, speed):
                        total += len(result.audio)
                        yield self._piece(result)
                    continue
                chunks = await self.model_thread.run(
                    lambda p=part: self.pipeline(p, voice, lang, speed, cancel=cancel.is_set)
                )
                while (result := await self.model_thread.run(self._next, chunks, cancel)) is not None:
                    total += len(result.audio)
                    yield self._piece(result)
        except (asyncio.CancelledError, GeneratorExit):
            cancel.set()
            self.counters.cancelled += 1
            logger.info("client went away after %.1f s of audio; synthesis stopped", total / 24000)
            raise
        if not self.batched:
            self.counters.record(1, total / self.pipeline.sample_rate)
        logger.debug("synthesised %.2f s in %.2f s", total / 24000, time.perf_counter() - start)

    async def _batched(self, text: str, voice: str | None, lang: str | None, speed: float | None) -> AsyncIterator[Any]:
        """This part's chunks, each joining the replica's next batched forward; yielded in order."""
        from voxray.errors import VoxrayError

        jobs = await self.model_thread.run(self.pipeline.prepare, text, voice, lang, speed)
        pending = [asyncio.ensure_future(self.batcher.submit(job)) for job in jobs]
        try:
            for fut in pending:
                result = await fut
                if isinstance(result, VoxrayError):
                    raise result
                yield result
        finally:
            for fut in pending:
                fut.cancel()  # a client that left: chunks not yet in a forward are dropped

    def info(self) -> dict[str, Any]:
        return {"voice": self.options.voice, "batched": self.batched, "counters": self.counters.as_dict()}
