"""Kokoro on torch: ``kokoro==0.9.4``'s KModel with the masked batched forward.

Weights come from the embedded int8 graph (dequantised, offline; see :mod:`voxray.tts.kokoro_weights`),
an ``.onnx`` export, a local ``kokoro-v1_0.pth`` or a hub id. ``infer_batch`` runs B chunks of
different lengths, voices and speeds in one forward (:class:`voxray.tts.kokoro_forward.BatchedKokoro`);
each item's audio equals its solo render (durations identical, waveform within float error when
its noise seed is fixed). The output needs no repair: the level is right and there is no click.

On a CPU a batched forward is not faster than one-by-one (GEMMs over a few hundred frames are
already efficient and padding costs); batching pays on GPUs.
"""

from __future__ import annotations

import logging
import os
import random
import threading
from collections.abc import Sequence

import numpy as np

from voxray.errors import InferenceError, InputError, ModelUnavailableError
from voxray.tts.batching import RawOutput, SynthItem
from voxray.tts.config import MAX_TOKENS, SAMPLE_RATE

logger = logging.getLogger("voxray.tts")


def torch_available() -> bool:
    """Whether the torch backend can load (kokoro 0.9.4 importable)."""
    import importlib.util

    return importlib.util.find_spec("kokoro") is not None and importlib.util.find_spec("loguru") is not None


def cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


class KokoroTorch:
    """One loaded Kokoro model on torch; ``infer`` (one chunk) and ``infer_batch`` (many)."""

    sample_rate = SAMPLE_RATE
    max_tokens = MAX_TOKENS
    needs_repair = False  # correct level, no start click
    batches = True

    def __init__(
        self,
        model: str | os.PathLike | None = "embedded",
        device: str = "auto",
        threads: int | None = None,
    ) -> None:
        import torch

        from voxray.tts.kokoro_forward import BatchedKokoro
        from voxray.tts.kokoro_weights import load_into, load_weights, new_kmodel

        if device == "cuda" and not torch.cuda.is_available():
            raise ModelUnavailableError("device=cuda but torch sees no CUDA GPU")
        self.device = "cuda" if device in ("auto", "cuda") and torch.cuda.is_available() else "cpu"
        if threads and self.device == "cpu":
            torch.set_num_threads(int(threads))
        weights, strict = load_weights(model)
        kmodel = new_kmodel()
        load_into(kmodel, weights, strict=strict)
        _remove_weight_norm(kmodel)
        self.kmodel = kmodel.eval().to(self.device)
        self.net = BatchedKokoro(self.kmodel).eval().to(self.device)
        self.model = str(model or "embedded")
        self._lock = threading.Lock()  # one forward at a time per model (they would split the cores)
        self._rng = random.Random()
        logger.info("loaded Kokoro on torch (%s) from %s", self.device, self.model)

    def infer(self, tokens: Sequence[int], style: np.ndarray, speed: float = 1.0) -> np.ndarray:
        """Audio for one chunk (``tokens`` without the pads; at most 510)."""
        return self.infer_batch([SynthItem(tokens, style, speed)])[0].audio

    def infer_batch(self, items: Sequence[SynthItem]) -> list[RawOutput]:
        """Audio and per-token durations for each item, from one padded forward."""
        import torch

        from voxray.tts.kokoro_forward import seeded_noise

        if not items:
            return []
        for item in items:
            if not len(item.tokens):
                raise InputError("nothing to synthesize: no phoneme of the text is in Kokoro's vocabulary")
            if len(item.tokens) > self.max_tokens:
                raise InputError(
                    f"{len(item.tokens)} tokens exceed Kokoro's limit of {self.max_tokens}; chunk the text"
                )
        width = max(len(item.tokens) for item in items) + 2
        ids = torch.zeros(len(items), width, dtype=torch.long)
        for b, item in enumerate(items):
            ids[b, 1 : len(item.tokens) + 1] = torch.as_tensor(list(item.tokens), dtype=torch.long)
        lengths = torch.tensor([len(item.tokens) + 2 for item in items], dtype=torch.long)
        styles = torch.from_numpy(np.stack([np.asarray(i.style, np.float32).reshape(-1) for i in items]))
        speeds = torch.tensor([float(i.speed) for i in items], dtype=torch.float32)
        seeds = [i.seed if i.seed is not None else self._rng.getrandbits(63) for i in items]
        harmonics = int(self.kmodel.decoder.generator.m_source.l_sin_gen.dim)
        try:
            with self._lock, torch.inference_mode():
                audio, audio_lengths, durations = self.net(
                    ids.to(self.device), lengths.to(self.device), styles.to(self.device), speeds.to(self.device),
                    seeded_noise(seeds, harmonics, self.device),
                )
                audio = audio.float().cpu().numpy()
                audio_lengths = audio_lengths.cpu().numpy()
                durations = durations.cpu().numpy()
        except Exception as exc:
            raise InferenceError(f"Kokoro (torch) failed on a batch of {len(items)}: {exc}") from exc
        return [
            RawOutput(audio[b, : audio_lengths[b]].copy(), durations[b, : lengths[b]].copy())
            for b in range(len(items))
        ]


def _remove_weight_norm(kmodel: object) -> None:
    """Fold weight-norm parametrisations into plain weights (recomputed every forward otherwise)."""
    import torch

    for module in kmodel.modules():  # type: ignore[attr-defined]
        if hasattr(module, "weight_g") and hasattr(module, "weight_v"):
            torch.nn.utils.remove_weight_norm(module)
