"""The wav2vec2 CTC runner: loads a model once, maps audio arrays (16 kHz float32) to text.

Imports no Ray and no HTTP: batch jobs wrap it for ``map_batches``, Serve wraps it behind
``@serve.batch``. Batching is length-aware and the padding policy is read from the model config
(see :mod:`voxray.asr.batching`); long audio is chunked and stitched at the logit level.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from voxray.asr.batching import plan_batches
from voxray.asr.chunking import Chunk, plan_chunks
from voxray.asr.ctc import CTCDecoder
from voxray.config import ASROptions
from voxray.errors import InferenceError, InputError, ModelUnavailableError, VoxrayError, row_error
from voxray.models import resolve_hf_model

logger = logging.getLogger("voxray.asr")

SAMPLE_RATE = 16000


@dataclass
class ASRResult:
    """One transcript; ``chunks`` holds char/word spans when timestamps were asked for."""

    text: str | None
    duration_s: float
    chunks: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None


@dataclass
class PaddingStats:
    """Frames the encoder produced, and how many of them were padding (for ``run.json``)."""

    frames: int = 0
    padded_frames: int = 0
    forward_passes: int = 0
    items: int = 0

    @property
    def padding_waste(self) -> float:
        return self.padded_frames / self.frames if self.frames else 0.0

    def as_dict(self) -> dict[str, float]:
        return {
            "frames": self.frames,
            "padded_frames": self.padded_frames,
            "padding_waste": self.padding_waste,
            "forward_passes": self.forward_passes,
            "items": self.items,
        }


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def resolve_dtype(dtype: str, device: str):
    import torch

    if dtype == "auto":
        return torch.float16 if device.startswith("cuda") else torch.float32
    return getattr(torch, dtype)


def padding_policy(config: Any, requested: str = "auto") -> str:
    """``mask`` for layer-norm feature encoders, ``exact`` for group-norm ones (padding leaks)."""
    if requested != "auto":
        return requested
    norm = getattr(config, "feat_extract_norm", "layer")
    return "mask" if norm == "layer" else "exact"


class ASRRunner:
    """Load a CTC model once; transcribe lists of 16 kHz arrays or columnar batches.

    ``model`` (a loaded ``*ForCTC``) and ``processor`` may be injected, e.g. by tests or by a
    Serve replica that already holds them; otherwise they load from ``options.model``.
    """

    def __init__(
        self,
        options: ASROptions | None = None,
        *,
        model: Any = None,
        processor: Any = None,
    ) -> None:
        import torch

        self.options = options or ASROptions()
        if self.options.threads:
            torch.set_num_threads(self.options.threads)
        self.device = resolve_device(self.options.device)
        self.dtype = resolve_dtype(self.options.dtype, self.device)
        if model is None or processor is None:
            model, processor = self._load(self.options.model, self.options.revision)
        self.model = model.to(self.device, dtype=self.dtype).eval()
        self.processor = processor
        fe = getattr(processor, "feature_extractor", processor)
        self.do_normalize = bool(getattr(fe, "do_normalize", True))
        fe_rate = getattr(fe, "sampling_rate", SAMPLE_RATE)
        if fe_rate != SAMPLE_RATE:
            raise ModelUnavailableError(f"model expects {fe_rate} Hz audio; voxray feeds {SAMPLE_RATE} Hz")
        config = self.model.config
        self.policy = padding_policy(config, self.options.padding)
        self.frame = int(np.prod(config.conv_stride))
        self.receptive_field = self._receptive_field(config)
        tokenizer = getattr(processor, "tokenizer", processor)
        self.decoder = CTCDecoder.from_tokenizer(tokenizer, self.frame / SAMPLE_RATE)
        self.stats = PaddingStats()
        self._lock = threading.Lock()  # Serve may call from several threads; torch modules are not reentrant
        logger.info(
            "ASR model %s on %s (%s), padding policy %s", self.options.model, self.device, self.dtype, self.policy
        )

    @staticmethod
    def _load(name: str, revision: str | None) -> tuple[Any, Any]:
        from transformers import AutoModelForCTC, AutoProcessor

        path = resolve_hf_model(name, revision)
        try:
            processor = AutoProcessor.from_pretrained(path)
            kwargs: dict[str, Any] = {}
            try:
                model = AutoModelForCTC.from_pretrained(path, attn_implementation="sdpa", **kwargs)
            except (ValueError, ImportError):  # an architecture without SDPA support
                model = AutoModelForCTC.from_pretrained(path, **kwargs)
        except (OSError, ValueError, KeyError) as exc:
            raise ModelUnavailableError(
                f"cannot load a CTC model + processor from {path} ({name}): {exc}. Expected a "
                f"Wav2Vec2ForCTC-style directory with config.json, weights, vocab.json and "
                f"preprocessor_config.json"
            ) from exc
        return model, processor

    @staticmethod
    def _receptive_field(config: Any) -> int:
        rf, jump = 1, 1
        for k, s in zip(config.conv_kernel, config.conv_stride, strict=True):
            rf += (k - 1) * jump
            jump *= s
        return rf

    @property
    def model_name(self) -> str:
        return self.options.model

    def num_frames(self, num_samples: int) -> int:
        """Encoder output frames for an input of ``num_samples`` (exact conv arithmetic)."""
        n = num_samples
        for k, s in zip(self.model.config.conv_kernel, self.model.config.conv_stride, strict=True):
            n = (n - k) // s + 1
        return max(n, 0)

    # ---------------------------------------------------------------- core
    def _normalize(self, audio: np.ndarray) -> np.ndarray:
        audio = np.asarray(audio, dtype=np.float32)
        if not self.do_normalize:
            return audio
        # Per file, as the feature extractor does per utterance; before chunking so every chunk
        # of a long file sees the same scale.
        return (audio - audio.mean()) / np.sqrt(audio.var() + 1e-7)

    def _forward_batch(self, segments: Sequence[np.ndarray]) -> list[np.ndarray]:
        import torch

        lengths = [len(s) for s in segments]
        longest = max(lengths)
        x = np.zeros((len(segments), longest), dtype=np.float32)
        mask = np.zeros((len(segments), longest), dtype=np.int64)
        for i, s in enumerate(segments):
            x[i, : len(s)] = s
            mask[i, : len(s)] = 1
        inputs = torch.from_numpy(x).to(self.device, dtype=self.dtype)
        kwargs = {}
        if self.policy == "mask" and len(set(lengths)) > 1:
            kwargs["attention_mask"] = torch.from_numpy(mask).to(self.device)
        with torch.inference_mode():
            logits = self.model(input_values=inputs, **kwargs).logits.float().cpu().numpy()
        frames = [self.num_frames(n) for n in lengths]
        self.stats.forward_passes += 1
        self.stats.frames += logits.shape[1] * len(segments)
        self.stats.padded_frames += sum(logits.shape[1] - f for f in frames)
        return [logits[i, : frames[i]] for i in range(len(segments))]

    def _forward_all(self, segments: list[np.ndarray]) -> list[np.ndarray | VoxrayError]:
        """Run every segment through the model in planned batches; per-item errors stay per item."""
        budget = int(self.options.batch_seconds * SAMPLE_RATE)
        plan = plan_batches(
            [len(s) for s in segments], budget, self.options.max_batch_items, self.policy, self.options.max_padding
        )
        out: list[np.ndarray | VoxrayError] = [InferenceError("not run")] * len(segments)
        for batch in plan.batches:
            try:
                results = self._forward_batch([segments[i] for i in batch])
            except Exception as exc:  # e.g. out of memory: retry one by one, isolate the culprit
                logger.warning("batch of %d failed (%s); retrying items one by one", len(batch), exc)
                results = []
                for i in batch:
                    try:
                        results.append(self._forward_batch([segments[i]])[0])
                    except Exception as item_exc:
                        results.append(InferenceError(f"model failed on this input: {item_exc}"))
            for i, r in zip(batch, results, strict=True):
                out[i] = r
        return out

    def _chunks(self, num_samples: int) -> list[Chunk]:
        chunk = int(self.options.chunk_s * SAMPLE_RATE)
        stride = int(self.options.effective_stride_s * SAMPLE_RATE)
        return plan_chunks(num_samples, chunk, stride, self.frame)

    def logits(self, audios: Sequence[np.ndarray]) -> list[np.ndarray | VoxrayError]:
        """Stitched per-frame logits for each 16 kHz input (or the error it raised)."""
        with self._lock:
            return self._logits(audios)

    def _logits(self, audios: Sequence[np.ndarray]) -> list[np.ndarray | VoxrayError]:
        segments: list[np.ndarray] = []
        owners: list[tuple[int, Chunk]] = []
        results: list[np.ndarray | VoxrayError | None] = [None] * len(audios)
        for idx, audio in enumerate(audios):
            if audio is None or len(audio) < self.receptive_field:
                ms = 1000 * self.receptive_field / SAMPLE_RATE
                results[idx] = InputError(f"audio is too short: need at least {ms:.0f} ms")
                continue
            norm = self._normalize(audio)
            for c in self._chunks(len(norm)):
                segments.append(norm[c.start : c.end])
                owners.append((idx, c))
        self.stats.items += len(audios)
        outputs = self._forward_all(segments) if segments else []
        pieces: dict[int, list[tuple[Chunk, np.ndarray]]] = {}
        for (idx, c), out in zip(owners, outputs, strict=True):
            if isinstance(out, VoxrayError):
                results[idx] = out
            elif not isinstance(results[idx], VoxrayError):
                pieces.setdefault(idx, []).append((c, out))
        for idx, parts in pieces.items():
            if results[idx] is None:
                results[idx] = self._stitch(len(audios[idx]), parts)
        return results  # type: ignore[return-value]

    def _stitch(self, num_samples: int, parts: list[tuple[Chunk, np.ndarray]]) -> np.ndarray:
        if len(parts) == 1:
            return parts[0][1]
        total = self.num_frames(num_samples)
        vocab = parts[0][1].shape[1]
        out = np.empty((total, vocab), dtype=np.float32)
        for c, logit in parts:
            g0 = c.keep_start // self.frame
            g1 = total if c.keep_end == num_samples else c.keep_end // self.frame
            j0 = g0 - c.start // self.frame
            out[g0:g1] = logit[j0 : j0 + (g1 - g0)]
        return out

    # ---------------------------------------------------------------- public API
    def transcribe(self, audios: Sequence[np.ndarray], timestamps: str | None = None) -> list[ASRResult]:
        """Transcribe 16 kHz mono float32 arrays; errors are per item, never raised."""
        ts = timestamps or self.options.timestamps
        results = []
        for audio, logit in zip(audios, self.logits(audios), strict=True):
            duration = len(audio) / SAMPLE_RATE if audio is not None else 0.0
            if isinstance(logit, VoxrayError):
                results.append(ASRResult(None, duration, error=logit.as_row_error()))
                continue
            text, spans = self.decoder.decode(logit.argmax(axis=-1), ts)
            results.append(ASRResult(text, duration, spans))
        return results

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Columnar: ``audio`` (+ optional ``error`` from decoding) -> ``text``, ``chunks``, ``error``.

        Rows that already carry an error (failed decode) pass through untouched.
        """
        audios = list(batch["audio"])
        prior = list(batch.get("error", [None] * len(audios)))
        todo = [i for i, e in enumerate(prior) if not e]
        texts: list[str | None] = [None] * len(audios)
        chunks: list[list[dict]] = [[] for _ in audios]
        errors: list[str | None] = [e or None for e in prior]
        try:
            results = self.transcribe([audios[i] for i in todo])
        except Exception as exc:  # never lose the batch: every row gets the error
            results = [ASRResult(None, 0.0, error=row_error(exc)) for _ in todo]
        for i, r in zip(todo, results, strict=True):
            texts[i], chunks[i], errors[i] = r.text, r.chunks, r.error
        out = {k: v for k, v in batch.items() if k != "audio"}
        out.update(text=texts, chunks=chunks, error=errors)
        return out
