"""Text -> chunks -> phonemes -> audio, as a generator (callers can stream chunk by chunk).

One :class:`TTSPipeline` holds one loaded model (the ONNX or the torch backend) and voice bank and
creates a G2P per language on first use, so a job actor serves rows in any language with one model
in memory. Every chunk's result carries word timestamps from the model's predicted durations.

Batched synthesis for jobs and Serve: :meth:`TTSPipeline.prepare` turns a request into
:class:`ChunkJob` s (all validation happens there, before any audio), :meth:`TTSPipeline.synthesize_chunks`
runs any mix of chunk jobs (from many requests) in length-sorted batched forwards under
``max_batch_tokens``, and :meth:`TTSPipeline.synthesize_batch` does both for whole requests, with
per-request errors.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from voxray.errors import TextError, VoxrayError
from voxray.text import chunk_text, normalize_text
from voxray.tts.batching import SynthItem, plan_batches
from voxray.tts.config import SAMPLE_RATE, TTSOptions, check_speed
from voxray.tts.timestamps import WordTiming, word_timings

logger = logging.getLogger("voxray.tts")


@dataclass
class TTSResult:
    """One chunk of speech: the text it says, its phonemes and its audio (24 kHz float32 mono)."""

    index: int
    graphemes: str
    phonemes: str
    audio: np.ndarray
    sample_rate: int = SAMPLE_RATE
    tokens: int = 0
    dropped: str = ""  # phoneme symbols outside the model's vocab (reported, not spoken)
    words: list[WordTiming] = field(default_factory=list)  # seconds from this chunk's start
    durations: np.ndarray | None = None  # frames (600 samples) per [pad, *tokens, pad], when known

    @property
    def duration_s(self) -> float:
        return len(self.audio) / self.sample_rate


@dataclass
class Synthesis:
    """A whole utterance: the chunks' audio joined, plus what each chunk said."""

    audio: np.ndarray
    sample_rate: int
    phonemes: str
    voice: str
    lang: str
    chunks: list[TTSResult] = field(default_factory=list)

    @property
    def duration_s(self) -> float:
        return len(self.audio) / self.sample_rate

    @property
    def words(self) -> list[WordTiming]:
        """Every chunk's word timings, in seconds from the start of the joined audio."""
        out: list[WordTiming] = []
        offset = 0.0
        for chunk in self.chunks:
            out.extend(WordTiming(w.word, round(w.start + offset, 3), round(w.end + offset, 3), w.phonemes)
                       for w in chunk.words)
            offset += chunk.duration_s
        return out


@dataclass
class ForwardStats:
    """What a pipeline's model calls did: forwards, the chunks in them and their padded tokens
    (a job's report says how full its batches were)."""

    forwards: int = 0
    chunks: int = 0
    tokens: int = 0
    padded_tokens: int = 0

    def as_dict(self) -> dict[str, int]:
        return {"tts_forwards": self.forwards, "tts_chunks": self.chunks, "tts_tokens": self.tokens,
                "tts_padded_tokens": self.padded_tokens}


@dataclass
class PlannedChunk:
    """A chunk before synthesis: graphemes, phonemes and their token ids (within the budget)."""

    graphemes: str
    phonemes: str
    tokens: list[int]
    dropped: str = ""


@dataclass
class ChunkJob:
    """One chunk ready for the model: what it says, its style row, speed and noise seed."""

    index: int
    chunk: PlannedChunk
    style: np.ndarray
    speed: float
    seed: int | None = None


@dataclass
class TTSRequest:
    """One utterance for :meth:`TTSPipeline.synthesize_batch` (None fields take the options' defaults)."""

    text: str
    voice: str | np.ndarray | None = None
    lang: str | None = None
    speed: float | None = None


def make_runner(options: TTSOptions) -> Any:
    """The runner ``options`` ask for: torch's KModel or an onnxruntime session."""
    from voxray.tts.torch_runner import cuda_available, torch_available

    backend = options.backend
    if backend == "auto" and str(options.model).endswith((".pth", ".pt")):
        backend = "torch"  # a torch checkpoint only runs on torch
    if backend == "auto":
        backend = "torch" if options.device != "cpu" and cuda_available() and torch_available() else "onnx"
    if backend == "torch":
        from voxray.tts.torch_runner import KokoroTorch

        return KokoroTorch(options.model, device=options.device, threads=options.threads)
    from voxray.tts.assets import EMBEDDED, resolve_model
    from voxray.tts.onnx_runner import KokoroONNX, with_durations_output

    path = resolve_model(options.model)
    if options.model in ("", EMBEDDED):
        try:  # the same int8 graph plus its durations output (word timestamps)
            path = with_durations_output(path) or path
        except Exception as exc:  # a read-only cache: timestamps are then estimated
            logger.warning("cannot derive the durations graph (%s); word timestamps will be estimates", exc)
    return KokoroONNX(path, threads=options.threads, device=options.device)


class TTSPipeline:
    """Kokoro TTS: ``for r in pipe(text, voice=..., lang=..., speed=...)`` yields :class:`TTSResult`.

    ``options`` (or keyword overrides) pick the model, extra voice files, defaults and the
    onnxruntime session. A loaded ``runner`` or ``voices`` bank can be shared between pipelines.
    """

    def __init__(
        self,
        options: TTSOptions | None = None,
        *,
        runner: Any = None,
        voices: Any = None,
        **overrides: Any,
    ) -> None:
        from voxray.tts.assets import embedded_vocab
        from voxray.tts.voices import VoiceBank

        base = options or TTSOptions()
        self.options = TTSOptions(**{**base.model_dump(), **overrides}) if overrides else base
        opts = self.options
        self.runner = runner or make_runner(opts)
        self.voices = voices or VoiceBank(extra=opts.voices)
        self.vocab: dict[str, int] = embedded_vocab()
        self._symbols = {i: sym for sym, i in self.vocab.items()}
        self.sample_rate = SAMPLE_RATE
        self._g2p: dict[str, Callable[[str], str]] = {}
        self._lock = threading.Lock()
        self._reported: set[str] = set()
        self.stats = ForwardStats()

    # ------------------------------------------------------------------ text side
    def g2p(self, lang: str) -> Callable[[str], str]:
        """The (cached) phonemizer of ``lang``."""
        from voxray.tts.g2p import canonical_lang, make_g2p

        code = canonical_lang(lang)
        with self._lock:
            if code not in self._g2p:
                self._g2p[code] = make_g2p(code)
            return self._g2p[code]

    def phonemize(self, text: str, lang: str | None = None) -> str:
        """Phonemes of ``text`` (normalised first), as one string."""
        g2p = self.g2p(lang or self.options.lang)
        return g2p(normalize_text(text))

    def _report_missing(self, phonemes: str, text: str) -> str:
        """Symbols not in the vocab: each logged once per pipeline, all returned for the result."""
        missing = "".join(sorted({c for c in phonemes if c not in self.vocab}))
        for sym in missing:
            if sym not in self._reported:
                self._reported.add(sym)
                logger.warning(
                    "phoneme %r (U+%04X) is not in Kokoro's vocabulary and is dropped (first seen in %r)",
                    sym, ord(sym), text[:60],
                )
        return missing

    def plan(self, text: str, lang: str | None = None) -> list[PlannedChunk]:
        """Normalise, split and pack ``text`` into chunks within ``max_tokens`` (no synthesis)."""
        g2p = self.g2p(lang or self.options.lang)
        cache: dict[str, str] = {}

        def cost(piece: str) -> int:
            if piece not in cache:
                cache[piece] = g2p(piece)
            return sum(1 for c in cache[piece] if c in self.vocab)

        chunks = chunk_text(text, cost, self.options.max_tokens)
        planned = []
        for chunk in chunks:
            phonemes = " ".join(p for p in (cache[u] for u in chunk.units) if p)
            dropped = self._report_missing(phonemes, chunk.text)
            tokens = [self.vocab[c] for c in phonemes if c in self.vocab]
            planned.append(PlannedChunk(chunk.text, phonemes, tokens, dropped))
        if not any(p.tokens for p in planned):
            raise TextError(f"nothing to say: no phoneme of {text[:60]!r} is in Kokoro's vocabulary")
        return planned

    # ------------------------------------------------------------------ audio side
    def style_for(self, table: np.ndarray, n_tokens: int) -> np.ndarray:
        """Kokoro's style row for an utterance of ``n_tokens`` content tokens.

        The row index is the content-token count, as kokoro-onnx and kokoro.js pick it
        (``voice[len(tokens)]``); upstream's KPipeline uses ``len(phonemes) - 1``, one row earlier
        for a chunk whose phonemes are all in the vocabulary. A 510-token chunk would index one
        past a 510-row table, so the index is clamped to the last row (kokoro-onnx crashes there).
        """
        return table[min(n_tokens, table.shape[0] - 1)].reshape(1, -1)

    def _check_speed(self, speed: float | None) -> float:
        return check_speed(self.options.speed if speed is None else speed)

    def __call__(
        self,
        text: str,
        voice: str | np.ndarray | None = None,
        lang: str | None = None,
        speed: float | None = None,
        cancel: Callable[[], bool] | None = None,
    ) -> Iterator[TTSResult]:
        """Yield one :class:`TTSResult` per chunk of ``text``; validation errors raise before any audio.

        ``cancel`` is polled before each chunk: once it returns True the generator ends, so a
        consumer that went away (a closed HTTP stream) costs at most the chunk being computed.
        """
        speed_value = self._check_speed(speed)
        table = self.voices.get(self.options.voice if voice is None else voice)
        planned = self.plan(text, lang)
        return self._synthesize(planned, table, speed_value, cancel)

    def _synthesize(
        self, planned: list[PlannedChunk], table: np.ndarray, speed: float, cancel: Callable[[], bool] | None = None
    ) -> Iterator[TTSResult]:
        for i, chunk in enumerate(planned):
            if cancel is not None and cancel():
                logger.debug("synthesis cancelled before chunk %d of %d", i, len(planned))
                return
            if not chunk.tokens:
                continue
            job = ChunkJob(i, chunk, self.style_for(table, len(chunk.tokens)), speed, self.options.noise_seed)
            yield self.synthesize_chunks([job])[0]  # raises on failure (return_errors=False)

    # ------------------------------------------------------------------ batched API (jobs, Serve)
    def prepare(
        self,
        text: str,
        voice: str | np.ndarray | None = None,
        lang: str | None = None,
        speed: float | None = None,
    ) -> list[ChunkJob]:
        """A request's chunks, ready for :meth:`synthesize_chunks`; raises on invalid input."""
        speed_value = self._check_speed(speed)
        table = self.voices.get(self.options.voice if voice is None else voice)
        return [
            ChunkJob(i, chunk, self.style_for(table, len(chunk.tokens)), speed_value, self.options.noise_seed)
            for i, chunk in enumerate(self.plan(text, lang))
            if chunk.tokens
        ]

    def synthesize_chunks(self, jobs: Sequence[ChunkJob], return_errors: bool = False) -> list[Any]:
        """Results for ``jobs`` (any requests mixed), in order, from batched forwards.

        Jobs are sorted by length and cut into batches of at most ``max_batch_tokens`` padded
        tokens and ``max_batch_items`` chunks; a runner that cannot batch runs them one by one.
        A batch that fails is retried item by item, so one bad chunk fails alone: with
        ``return_errors`` its place holds the :class:`VoxrayError`, otherwise it raises.
        """
        results: list[TTSResult | VoxrayError | None] = [None] * len(jobs)
        if getattr(self.runner, "batches", False):
            groups = plan_batches([len(j.chunk.tokens) for j in jobs], self.options.max_batch_tokens,
                                  self.options.max_batch_items)
        else:
            groups = [[i] for i in range(len(jobs))]
        repair = getattr(self.runner, "needs_repair", True)
        for group in groups:
            try:
                outputs = self._infer([jobs[i] for i in group])
            except VoxrayError as exc:
                if len(group) == 1:
                    if not return_errors:
                        raise
                    results[group[0]] = exc
                    continue
                logger.warning("a batch of %d chunks failed (%s); retrying them one by one", len(group), exc)
                for i in group:
                    try:
                        results[i] = self._result(jobs[i], self._infer([jobs[i]])[0], repair)
                    except VoxrayError as item_exc:
                        if not return_errors:
                            raise
                        results[i] = item_exc
                continue
            for i, out in zip(group, outputs, strict=True):
                results[i] = self._result(jobs[i], out, repair)
        return results

    def _infer(self, jobs: Sequence[ChunkJob]) -> list[Any]:
        items = [SynthItem(j.chunk.tokens, j.style, j.speed, j.seed) for j in jobs]
        lengths = [len(j.chunk.tokens) for j in jobs]
        self.stats.forwards += 1
        self.stats.chunks += len(jobs)
        self.stats.tokens += sum(lengths)
        self.stats.padded_tokens += len(jobs) * max(lengths, default=0)
        if hasattr(self.runner, "infer_batch"):
            return list(self.runner.infer_batch(items))
        from voxray.tts.batching import RawOutput  # a minimal runner (tests, plugins): infer() only

        return [RawOutput(self.runner.infer(it.tokens, it.style, it.speed)) for it in items]

    def _result(self, job: ChunkJob, out: Any, repair: bool) -> TTSResult:
        from voxray.tts.onnx_runner import repair_output

        audio = repair_output(out.audio, self.options.fade_in_ms, self.options.level_fix) if repair else (
            np.asarray(out.audio, np.float32).reshape(-1))
        words = word_timings(job.chunk.graphemes, job.chunk.tokens, out.durations, self._symbols, len(audio))
        return TTSResult(job.index, job.chunk.graphemes, job.chunk.phonemes, audio, SAMPLE_RATE,
                         len(job.chunk.tokens), job.chunk.dropped, words, out.durations)

    def synthesize_batch(self, requests: Sequence[TTSRequest]) -> list[Synthesis | VoxrayError]:
        """Whole utterances for many requests, their chunks batched together.

        A request that fails validation (unknown voice, empty text, bad speed) gets its error in
        its place; the others are synthesised.
        """
        prepared: list[list[ChunkJob] | VoxrayError] = []
        for req in requests:
            try:
                prepared.append(self.prepare(req.text, req.voice, req.lang, req.speed))
            except VoxrayError as exc:
                prepared.append(exc)
        flat = [job for p in prepared if not isinstance(p, VoxrayError) for job in p]
        done = iter(self.synthesize_chunks(flat, return_errors=True))
        out: list[Synthesis | VoxrayError] = []
        for req, p in zip(requests, prepared, strict=True):
            if isinstance(p, VoxrayError):
                out.append(p)
                continue
            chunks = [next(done) for _ in p]
            failed = next((c for c in chunks if isinstance(c, VoxrayError)), None)
            out.append(failed if failed is not None else self._join(chunks, req.voice, req.lang))
        return out

    def _join(self, chunks: list[TTSResult], voice: str | np.ndarray | None, lang: str | None) -> Synthesis:
        audio = np.concatenate([c.audio for c in chunks]) if chunks else np.zeros(0, np.float32)
        return Synthesis(
            audio=audio,
            sample_rate=SAMPLE_RATE,
            phonemes=" ".join(c.phonemes for c in chunks),
            voice=voice if isinstance(voice, str) else (self.options.voice if voice is None else "<array>"),
            lang=lang or self.options.lang,
            chunks=chunks,
        )

    def synthesize(
        self,
        text: str,
        voice: str | np.ndarray | None = None,
        lang: str | None = None,
        speed: float | None = None,
    ) -> Synthesis:
        """The whole utterance at once (the chunks' audio concatenated)."""
        chunks = list(self(text, voice=voice, lang=lang, speed=speed))
        return self._join(chunks, voice, lang)
