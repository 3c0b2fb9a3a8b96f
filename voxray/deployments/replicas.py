"""Model deployments: the batch jobs' runners behind ``@serve.batch``.

Each class holds one runner (built from options, or injected) and keeps per-replica counters
(requests, batches, largest batch) that the ingress exposes as Prometheus metrics. Inputs arrive
already decoded (the ingress decodes on CPU), so the batched call only runs the model.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from ray import serve

from voxray.asr.config import ASROptions
from voxray.audio import SAMPLE_RATE
from voxray.deployments.config import DeploymentOptions

logger = logging.getLogger("voxray.deployments")


class BatchCounters:
    """Per-replica batching statistics (what ``/metrics`` and the batching test read)."""

    def __init__(self) -> None:
        self.requests = 0
        self.batches = 0
        self.max_batch = 0
        self.audio_s = 0.0
        self.sizes: dict[int, int] = {}

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
            "audio_s": self.audio_s, "sizes": dict(self.sizes),
        }


class ModelThread:
    """One thread per replica runs every model call, so the replica's event loop stays free to
    accept requests and form the next batch while a forward runs, and forwards never overlap
    (overlapping forwards would split the replica's cores between them)."""

    def __init__(self, name: str) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)

    async def run(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)


ITEM_SECONDS_CAP = 30  # one long file counts as a full chunk, so it always fits a batch


def _audio_seconds(items: list[Any]) -> int:
    """``batch_size_fn`` for audio: whole seconds per item (capped), so batches fill by audio."""
    return sum(
        min(ITEM_SECONDS_CAP, max(1, math.ceil(len(a[0] if isinstance(a, tuple) else a) / SAMPLE_RATE)))
        for a in items
    )


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
        self.batched = self.deployment.max_batch_size > 1
        self.transcribe_batch.set_max_batch_size(int(self.deployment.max_batch_seconds))
        self.transcribe_batch.set_batch_wait_timeout_s(self.deployment.batch_wait_timeout_s)
        self.max_items = self.deployment.max_batch_size

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

    @serve.batch(max_batch_size=120, batch_wait_timeout_s=0.02, batch_size_fn=_audio_seconds)
    async def transcribe_batch(self, items: list[tuple[np.ndarray, str]]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        # the count cap: more requests than max_batch_size run as consecutive model calls
        for k in range(0, len(items), self.max_items):
            out += await self.model_thread.run(self._run, items[k : k + self.max_items])
        return out

    async def transcribe(self, audio: np.ndarray, timestamps: str = "none") -> dict[str, Any]:
        """One request; joins a dynamic batch unless batching is configured off."""
        if self.batched:
            return await self.transcribe_batch((audio, timestamps))
        return (await self.model_thread.run(self._run, [(audio, timestamps)]))[0]

    def info(self) -> dict[str, Any]:
        return {"model": self.options.model, "policy": self.runner.policy, "counters": self.counters.as_dict()}


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
        self.embed_batch.set_max_batch_size(int(self.deployment.max_batch_seconds))
        self.embed_batch.set_batch_wait_timeout_s(self.deployment.batch_wait_timeout_s)

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

    @serve.batch(max_batch_size=120, batch_wait_timeout_s=0.02, batch_size_fn=_audio_seconds)
    async def embed_batch(self, audios: list[np.ndarray]) -> list[dict[str, Any]]:
        return await self.model_thread.run(self._run, list(audios))

    async def embed(self, audio: np.ndarray) -> dict[str, Any]:
        return await self.embed_batch(audio)

    def info(self) -> dict[str, Any]:
        return {
            "model": self.options.model, "dim": self.embedder.dim, "layer": self.options.layer,
            "pooling": self.options.pooling, "counters": self.counters.as_dict(),
        }


@serve.deployment(name="TTS")
class TTSDeployment:
    """Kokoro: one utterance at a time per replica (the int8 graph has batch size 1), streamed
    chunk by chunk so the first audio leaves before the whole text is synthesised."""

    def __init__(self, options: dict[str, Any], deployment: dict[str, Any], pipeline: Any = None) -> None:
        from voxray.tts.config import TTSOptions
        from voxray.tts.pipeline import TTSPipeline

        self.options = TTSOptions(**options)
        self.pipeline = pipeline or TTSPipeline(self.options)
        self.counters = BatchCounters()
        self.model_thread = ModelThread("tts")

    def voices(self) -> list[dict[str, Any]]:
        return self.pipeline.voices.describe()

    async def stream(
        self, text: str, voice: str | None = None, lang: str | None = None, speed: float | None = None
    ) -> AsyncIterator[np.ndarray]:
        """Yield float32 24 kHz audio per chunk; validation errors raise before the first chunk."""
        from voxray.errors import TextError
        from voxray.text import normalize_text, split_sentences

        start = time.perf_counter()
        sentences = split_sentences(normalize_text(text))
        if not sentences:
            raise TextError("input is empty: give the text to speak")
        # The first sentence goes alone so its audio leaves early; the rest is packed into
        # full-size chunks. Both calls validate voice/lang/speed before producing audio.
        total = 0
        for part in (sentences[0], " ".join(sentences[1:])):
            if not part:
                continue
            chunks = await self.model_thread.run(self.pipeline, part, voice, lang, speed)
            while (result := await self.model_thread.run(next, chunks, None)) is not None:
                total += len(result.audio)
                yield result.audio
        self.counters.record(1, total / self.pipeline.sample_rate)
        logger.debug("synthesised %.2f s in %.2f s", total / 24000, time.perf_counter() - start)

    def info(self) -> dict[str, Any]:
        return {"model": self.options.model, "voice": self.options.voice, "counters": self.counters.as_dict()}
