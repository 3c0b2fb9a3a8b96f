"""Model deployments: the batch jobs' runners behind ``@serve.batch``.

Each class holds one runner (built from options, or injected) and keeps per-replica counters
(requests, batches, largest batch) that the ingress exposes as Prometheus metrics. Inputs arrive
already decoded (the ingress decodes on CPU), so the batched call only runs the model.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
from ray import serve

from voxray.config import ASROptions
from voxray.deployments.config import DeploymentOptions

logger = logging.getLogger("voxray.deployments")

SAMPLE_RATE = 16000


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
        self.batched = self.deployment.max_batch_size > 1
        self.transcribe_batch.set_max_batch_size(int(self.deployment.max_batch_seconds))
        self.transcribe_batch.set_batch_wait_timeout_s(self.deployment.batch_wait_timeout_s)
        self.max_items = self.deployment.max_batch_size

    @serve.batch(max_batch_size=120, batch_wait_timeout_s=0.02, batch_size_fn=_audio_seconds)
    async def transcribe_batch(self, items: list[tuple[np.ndarray, str]]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        # the count cap: more requests than max_batch_size run as consecutive model calls
        for k in range(0, len(items), self.max_items):
            group = items[k : k + self.max_items]
            self.counters.record(len(group), sum(len(a) for a, _ in group) / SAMPLE_RATE)
            by_ts: dict[str, list[int]] = {}
            for i, (_, ts) in enumerate(group):
                by_ts.setdefault(ts, []).append(i)
            results: list[Any] = [None] * len(group)
            for ts, idx in by_ts.items():
                for i, r in zip(idx, self.runner.transcribe([group[i][0] for i in idx], ts), strict=True):
                    results[i] = r
            out += [
                {"text": r.text, "duration_s": r.duration_s, "chunks": r.chunks, "error": r.error} for r in results
            ]
        return out

    async def transcribe(self, audio: np.ndarray, timestamps: str = "none") -> dict[str, Any]:
        """One request; joins a dynamic batch unless batching is configured off."""
        if self.batched:
            return await self.transcribe_batch((audio, timestamps))
        self.counters.record(1, len(audio) / SAMPLE_RATE)
        r = self.runner.transcribe([audio], timestamps)[0]
        return {"text": r.text, "duration_s": r.duration_s, "chunks": r.chunks, "error": r.error}

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
        self.embed_batch.set_max_batch_size(int(self.deployment.max_batch_seconds))
        self.embed_batch.set_batch_wait_timeout_s(self.deployment.batch_wait_timeout_s)

    @serve.batch(max_batch_size=120, batch_wait_timeout_s=0.02, batch_size_fn=_audio_seconds)
    async def embed_batch(self, audios: list[np.ndarray]) -> list[dict[str, Any]]:
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
        first = self.pipeline(sentences[0], voice=voice, lang=lang, speed=speed)
        rest = " ".join(sentences[1:])
        total = 0
        for result in first:
            total += len(result.audio)
            yield result.audio
        if rest:
            for result in self.pipeline(rest, voice=voice, lang=lang, speed=speed):
                total += len(result.audio)
                yield result.audio
        self.counters.record(1, total / self.pipeline.sample_rate)
        logger.debug("synthesised %.2f s in %.2f s", total / 24000, time.perf_counter() - start)

    def info(self) -> dict[str, Any]:
        return {"model": self.options.model, "voice": self.options.voice, "counters": self.counters.as_dict()}
