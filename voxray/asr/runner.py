"""The wav2vec2 CTC runner: loads a model once, maps audio arrays (16 kHz float32) to text.

Imports no Ray and no HTTP: batch jobs wrap it for ``map_batches``, Serve wraps it behind
``@serve.batch``. Batching is length-aware and the padding policy is read from the model config
(see :mod:`voxray.encoder.batching`); long audio is chunked and stitched at the logit level. The
forward/batching/chunking machinery is shared with the embedder (:mod:`voxray.encoder`), and so
is the backend: torch, or onnxruntime on a `voxray export` directory (``backend``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from voxray.asr.config import ASROptions
from voxray.asr.ctc import CTCDecoder
from voxray.audio import SAMPLE_RATE
from voxray.encoder.core import (  # re-exported: part of this module's public API
    EncoderCore,
    PaddingStats,
    padding_policy,
    resolve_backend,
    resolve_device,
    resolve_dtype,
)
from voxray.encoder.onnx_backend import OnnxEncoder, load_onnx_encoder
from voxray.encoder.onnx_export import is_onnx_export
from voxray.errors import ModelUnavailableError, VoxrayError, row_error
from voxray.model_sources import load_pretrained, resolve_hf_model

logger = logging.getLogger("voxray.asr")


__all__ = [
    "ASRResult", "ASRRunner", "PaddingStats", "padding_policy", "resolve_backend", "resolve_device", "resolve_dtype",
]


@dataclass
class ASRResult:
    """One transcript; ``chunks`` holds char/word spans when timestamps were asked for."""

    text: str | None
    duration_s: float
    chunks: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None


class ASRRunner:
    """Load a CTC model once; transcribe lists of 16 kHz arrays or columnar batches.

    ``model`` (a loaded ``*ForCTC``) and ``processor`` may be injected, e.g. by tests or by a
    Serve replica that already holds them; otherwise they load from ``options.model``. With the
    onnx backend, ``model`` is an :class:`~voxray.encoder.onnx_backend.OnnxEncoder` (streaming can
    call its ``conv_features``/``from_features`` halves); an injected torch model is exported first.
    """

    def __init__(
        self,
        options: ASROptions | None = None,
        *,
        model: Any = None,
        processor: Any = None,
    ) -> None:
        self.options = options or ASROptions()
        path = None
        if model is None or processor is None:
            path = resolve_hf_model(self.options.model, self.options.revision)
        self.backend = resolve_backend(self.options, path)
        if path is not None and self.backend == "onnx" and is_onnx_export(path):
            model, processor = None, self._load_processor(path, self.options.model)
        elif path is not None:
            model, processor = self._load(path, self.options.model)
        if self.backend == "onnx" and not isinstance(model, OnnxEncoder):
            model = load_onnx_encoder(self.options, path, torch_model=model)
        self.processor = processor
        fe = getattr(processor, "feature_extractor", processor)
        fe_rate = getattr(fe, "sampling_rate", SAMPLE_RATE)
        if fe_rate != SAMPLE_RATE:
            raise ModelUnavailableError(f"model expects {fe_rate} Hz audio; voxray feeds {SAMPLE_RATE} Hz")
        self.core = EncoderCore(model, self.options, do_normalize=bool(getattr(fe, "do_normalize", True)))
        self.model = self.core.model
        self.backend = self.core.backend
        self.device, self.dtype, self.policy = self.core.device, self.core.dtype, self.core.policy
        self.frame, self.receptive_field = self.core.frame, self.core.receptive_field
        self.do_normalize = self.core.do_normalize
        tokenizer = getattr(processor, "tokenizer", processor)
        self.decoder = CTCDecoder.from_tokenizer(tokenizer, self.frame / SAMPLE_RATE)
        logger.info(
            "ASR model %s: %s on %s (%s; %s), padding policy %s", self.options.model, self.backend, self.device,
            self.dtype, self.core.dtype_reason, self.policy,
        )

    @classmethod
    def _load(cls, path: str, name: str) -> tuple[Any, Any]:
        from transformers import AutoModelForCTC

        expected = (
            "a Wav2Vec2ForCTC-style directory with config.json, weights, vocab.json and preprocessor_config.json"
        )
        model = load_pretrained(AutoModelForCTC, path, name, expected)
        return model, cls._load_processor(path, name)

    @staticmethod
    def _load_processor(path: str, name: str) -> Any:
        from transformers import AutoProcessor

        try:
            return AutoProcessor.from_pretrained(path)
        except (OSError, ValueError, KeyError) as exc:
            raise ModelUnavailableError(f"cannot load the processor of {name} from {path}: {exc}") from exc

    @property
    def model_name(self) -> str:
        return self.options.model

    @property
    def stats(self) -> PaddingStats:
        return self.core.stats

    def num_frames(self, num_samples: int) -> int:
        """Encoder output frames for an input of ``num_samples`` (exact conv arithmetic)."""
        return self.core.num_frames(num_samples)

    def _normalize(self, audio: np.ndarray) -> np.ndarray:
        return self.core.normalize(audio)

    # ---------------------------------------------------------------- core
    def _forward(self, inputs: Any, attention_mask: Any) -> np.ndarray:
        if self.backend == "onnx":
            return self.model.run(inputs, attention_mask)["logits"]
        return self.model(input_values=inputs, attention_mask=attention_mask).logits.float().cpu().numpy()

    @staticmethod
    def _take(logits: np.ndarray, row: int, keep: slice) -> np.ndarray:
        return logits[row, keep]

    def logits(self, audios: Sequence[np.ndarray]) -> list[np.ndarray | VoxrayError]:
        """Stitched per-frame logits for each 16 kHz input (or the error it raised)."""
        with self.core.lock:
            parts = self.core.run(audios, self._forward, self._take)
        return [p if isinstance(p, VoxrayError) else p[0] if len(p) == 1 else np.concatenate(p) for p in parts]

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
        # Arrow turns an all-null string column into NaNs; only a non-empty str is an error.
        prior = [e if isinstance(e, str) and e else None for e in batch.get("error", [None] * len(audios))]
        todo = [i for i, e in enumerate(prior) if e is None]
        texts: list[str | None] = [None] * len(audios)
        chunks: list[list[dict]] = [[] for _ in audios]
        errors: list[str | None] = list(prior)
        try:
            results = self.transcribe([audios[i] for i in todo])
        except Exception as exc:  # never lose the batch: every row gets the error
            results = [ASRResult(None, 0.0, error=row_error(exc)) for _ in todo]
        for i, r in zip(todo, results, strict=True):
            texts[i], chunks[i], errors[i] = r.text, r.chunks, r.error
        out = {k: v for k, v in batch.items() if k != "audio"}
        out.update(text=texts, chunks=chunks, error=errors)
        return out
