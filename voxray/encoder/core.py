"""The wav2vec2-family encoder core shared by the ASR and embedding runners.

One place owns what both runners must do identically: device/dtype resolution, the padding
policy read from the model config, per-file normalisation, long-audio chunking, length-aware
batching with the attention mask, per-item error isolation and the keep-region arithmetic that
stitches chunks. The runners differ only in what they keep from each forward pass: the CTC
runner keeps logits, the embedder reduces hidden states to pooling statistics on the fly.

Imports no Ray; torch is imported lazily.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from voxray.audio import SAMPLE_RATE
from voxray.encoder.batching import plan_batches
from voxray.encoder.chunking import AudioChunk, plan_chunks
from voxray.encoder.options import EncoderOptions
from voxray.errors import InferenceError, InputError, VoxrayError

logger = logging.getLogger("voxray.encoder")

R = TypeVar("R")


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


def resolve_dtype(dtype: str, device: str) -> Any:
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


def conv_frames(config: Any, num_samples: int) -> int:
    """Encoder output frames for ``num_samples`` input samples (the conv stack's exact arithmetic)."""
    n = num_samples
    for k, s in zip(config.conv_kernel, config.conv_stride, strict=True):
        n = (n - k) // s + 1
    return max(n, 0)


def receptive_field(config: Any) -> int:
    """Samples one output frame sees through the conv stack: the shortest input that yields a frame."""
    rf, jump = 1, 1
    for k, s in zip(config.conv_kernel, config.conv_stride, strict=True):
        rf += (k - 1) * jump
        jump *= s
    return rf


@dataclass(frozen=True)
class Piece:
    """One chunk of one input: ``owner`` indexes the input, ``keep`` the chunk's frames to keep."""

    owner: int
    chunk: AudioChunk
    keep: slice


# forward(inputs [B, T] on device, attention mask or None) -> whatever ``take`` slices
Forward = Callable[[Any, Any], Any]
# take(forward output, row in batch, frames to keep of that row) -> a per-piece result
Take = Callable[[Any, int, slice], R]


class EncoderCore:
    """A loaded wav2vec2-family model plus the batching/chunking machinery around its forward.

    ``run`` maps many 16 kHz inputs to, per input, the list of per-chunk results of ``take`` in
    time order (a single element when the file fits one chunk) or the error that input raised.
    Concatenating the kept slices of all chunks gives the stitched frame sequence.
    """

    def __init__(self, model: Any, options: EncoderOptions, do_normalize: bool) -> None:
        import torch

        self.options = options
        if options.threads:
            torch.set_num_threads(options.threads)
        self.device = resolve_device(options.device)
        self.dtype = resolve_dtype(options.dtype, self.device)
        self.model = model.to(self.device, dtype=self.dtype).eval()
        self.config = self.model.config
        self.do_normalize = do_normalize
        self.policy = padding_policy(self.config, options.padding)
        self.frame = int(np.prod(self.config.conv_stride))
        self.receptive_field = receptive_field(self.config)
        self.stats = PaddingStats()
        self.lock = threading.Lock()  # Serve may call from several threads; torch modules are not reentrant

    def num_frames(self, num_samples: int) -> int:
        return conv_frames(self.config, num_samples)

    def normalize(self, audio: np.ndarray) -> np.ndarray:
        audio = np.asarray(audio, dtype=np.float32)
        if not self.do_normalize:
            return audio
        # Per file, as the feature extractor does per utterance; before chunking so every chunk
        # of a long file sees the same scale.
        return (audio - audio.mean()) / np.sqrt(audio.var() + 1e-7)

    def too_short(self, audio: np.ndarray | None) -> VoxrayError | None:
        if audio is None or len(audio) < self.receptive_field:
            ms = 1000 * self.receptive_field / SAMPLE_RATE
            return InputError(f"audio is too short: need at least {ms:.0f} ms")
        return None

    def chunks(self, num_samples: int) -> list[AudioChunk]:
        chunk = int(self.options.chunk_s * SAMPLE_RATE)
        stride = int(self.options.effective_stride_s * SAMPLE_RATE)
        return plan_chunks(num_samples, chunk, stride, self.frame)

    def keep_slice(self, chunk: AudioChunk, num_samples: int) -> slice:
        """The chunk-local frames that belong to its keep region (all frames for a whole file)."""
        total = self.num_frames(num_samples)
        g0 = chunk.keep_start // self.frame
        g1 = total if chunk.keep_end == num_samples else chunk.keep_end // self.frame
        j0 = g0 - chunk.start // self.frame
        return slice(j0, j0 + (g1 - g0))

    # ---------------------------------------------------------------- forward passes
    def forward_batch(self, segments: Sequence[np.ndarray], forward: Forward) -> tuple[Any, list[int]]:
        """One padded forward pass; returns the raw output and each segment's true frame count."""
        import torch

        lengths = [len(s) for s in segments]
        longest = max(lengths)
        x = np.zeros((len(segments), longest), dtype=np.float32)
        mask = np.zeros((len(segments), longest), dtype=np.int64)
        for i, s in enumerate(segments):
            x[i, : len(s)] = s
            mask[i, : len(s)] = 1
        inputs = torch.from_numpy(x).to(self.device, dtype=self.dtype)
        attention_mask = None
        if self.policy == "mask" and len(set(lengths)) > 1:
            attention_mask = torch.from_numpy(mask).to(self.device)
        with torch.inference_mode():
            out = forward(inputs, attention_mask)
        frames = [self.num_frames(n) for n in lengths]
        padded = self.num_frames(longest)
        self.stats.forward_passes += 1
        self.stats.frames += padded * len(segments)
        self.stats.padded_frames += sum(padded - f for f in frames)
        return out, frames

    def _run_batch(self, segments: list[np.ndarray], pieces: list[Piece], forward: Forward, take: Take) -> list[Any]:
        import torch

        out, _ = self.forward_batch(segments, forward)
        with torch.inference_mode():
            return [take(out, row, p.keep) for row, p in enumerate(pieces)]

    def run(self, audios: Sequence[np.ndarray | None], forward: Forward, take: Take) -> list[list[R] | VoxrayError]:
        """Per input: ``take`` results of its chunks in time order, or the error it raised."""
        segments: list[np.ndarray] = []
        pieces: list[Piece] = []
        results: list[list[Any] | VoxrayError] = [[] for _ in audios]
        for idx, audio in enumerate(audios):
            error = self.too_short(audio)
            if error is not None:
                results[idx] = error
                continue
            norm = self.normalize(audio)  # type: ignore[arg-type]
            for c in self.chunks(len(norm)):
                segments.append(norm[c.start : c.end])
                pieces.append(Piece(idx, c, self.keep_slice(c, len(norm))))
        self.stats.items += len(audios)
        if not segments:
            return results
        budget = int(self.options.batch_seconds * SAMPLE_RATE)
        plan = plan_batches(
            [len(s) for s in segments], budget, self.options.max_batch_items, self.policy, self.options.max_padding
        )
        outputs: list[Any] = [None] * len(segments)
        for batch in plan.batches:
            try:
                got = self._run_batch([segments[i] for i in batch], [pieces[i] for i in batch], forward, take)
            except Exception as exc:  # e.g. out of memory: retry one by one, isolate the culprit
                logger.warning("batch of %d failed (%s); retrying items one by one", len(batch), exc)
                got = []
                for i in batch:
                    try:
                        got.append(self._run_batch([segments[i]], [pieces[i]], forward, take)[0])
                    except Exception as item_exc:
                        got.append(InferenceError(f"model failed on this input: {item_exc}"))
            for i, r in zip(batch, got, strict=True):
                outputs[i] = r
        # pieces were appended in time order per owner, so this keeps each input's chunks in order
        for piece, out in zip(pieces, outputs, strict=True):
            current = results[piece.owner]
            if isinstance(current, VoxrayError):
                continue
            if isinstance(out, VoxrayError):
                results[piece.owner] = out
            else:
                current.append(out)
        return results
