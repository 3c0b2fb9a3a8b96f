"""The wav2vec2-family encoder core shared by the ASR and embedding runners.

One place owns what both runners must do identically: backend and device/dtype resolution, the
padding policy read from the model config, per-file normalisation, long-audio chunking,
length-aware batching with the attention mask, per-item error isolation and the keep-region
arithmetic that stitches chunks. The runners differ only in what they keep from each forward
pass: the CTC runner keeps logits, the embedder reduces hidden states to pooling statistics.

Two backends run the same plan: a torch module (``forward(tensor [B, N], attention mask or None)``)
or an :class:`~voxray.encoder.onnx_backend.OnnxEncoder` (``forward(array [B, N], frame mask [B, T])``;
the frame mask is always given, all True without padding).

Imports no Ray; torch and onnxruntime are imported lazily.
"""

from __future__ import annotations

import copy
import functools
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
from voxray.errors import InferenceError, InputError, ModelUnavailableError, VoxrayError

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
    """The torch dtype before the CPU rule: auto = float16 on CUDA, float32 on CPU (see :func:`cpu_prefers_bf16`)."""
    import torch

    if dtype == "int8":
        raise ModelUnavailableError("dtype int8 needs backend onnx (dynamic int8 MatMuls in onnxruntime)")
    if dtype == "auto":
        return torch.float16 if device.startswith("cuda") else torch.float32
    return getattr(torch, dtype)


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (``/proc/cpuinfo``; empty where that file does not exist)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_prefers_bf16() -> bool:
    """bfloat16 beats float32 in torch only with AMX tiles: 2.3x on XLSR-large with AMX-BF16, but
    0.61x with avx512_bf16 alone (measured on a Xeon without AMX). So auto asks for AMX-BF16."""
    return "amx_bf16" in cpu_flags()


# bf16 is kept only if the probe's every output frame stays this close to float32 (measured: the
# shipped model's worst frame 0.99995, XLSR-large's 0.9998; a model that overflows in bf16 fails)
BF16_MIN_COSINE = 0.999


def resolve_backend(options: EncoderOptions, path: str | None) -> str:
    """auto: onnx for an ONNX export directory (or when int8 is asked for), torch otherwise."""
    from voxray.encoder.onnx_export import is_onnx_export

    if options.backend != "auto":
        if options.backend == "torch" and is_onnx_export(path):
            raise ModelUnavailableError(
                f"{path} is an ONNX export (no torch weights): use --backend onnx (or auto), or the torch checkpoint"
            )
        return options.backend
    if options.dtype == "int8" or is_onnx_export(path):
        return "onnx"
    return "torch"


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


# torch: forward(inputs [B, N] tensor on device, sample attention mask or None) -> whatever ``take`` slices;
# onnx: forward(inputs [B, N] float32 array, frame mask [B, T] bool array) -> the same
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

        from voxray.encoder.onnx_backend import OnnxEncoder

        self.options = options
        if options.threads:
            torch.set_num_threads(options.threads)
        self.dtype_reason = "as asked"
        if isinstance(model, OnnxEncoder):
            self.backend = "onnx"
            self.device, self.dtype, self.model = model.device, model.variant, model
            if options.dtype == "auto":
                self.dtype_reason = f"auto: the export's {model.variant} graph"
        else:
            self.backend = "torch"
            self.device = resolve_device(options.device)
            self.dtype = resolve_dtype(options.dtype, self.device)
            self.model = model.to(self.device, dtype=self.dtype).eval()
            if options.dtype == "auto" and self.device == "cpu":
                self._auto_cpu_dtype(do_normalize)
        self.config = self.model.config
        self.do_normalize = do_normalize
        self.policy = padding_policy(self.config, options.padding)
        self.frame = int(np.prod(self.config.conv_stride))
        self.receptive_field = receptive_field(self.config)
        self.stats = PaddingStats()
        self.lock = threading.Lock()  # Serve may call from several threads; torch modules are not reentrant

    def _auto_cpu_dtype(self, do_normalize: bool) -> None:
        """bfloat16 on AMX CPUs if a probe through both precisions agrees; float32 otherwise (logged)."""
        import torch

        from voxray.encoder.onnx_export import compare, probe_audio

        if not cpu_prefers_bf16():
            self.dtype_reason = "auto: float32 (no AMX-BF16 on this CPU)"
            return
        probe = torch.from_numpy(probe_audio())[None]

        def output(model: Any, dtype: Any) -> np.ndarray:
            with torch.inference_mode():
                out = model(input_values=probe.to(dtype))
            value = out.logits if getattr(out, "logits", None) is not None else out.last_hidden_state
            return value.float().numpy()

        candidate = copy.deepcopy(self.model).to(torch.bfloat16)
        figures = compare(output(self.model, torch.float32), output(candidate, torch.bfloat16))
        if figures["min_frame_cosine"] >= BF16_MIN_COSINE:
            self.model, self.dtype = candidate, torch.bfloat16
            self.dtype_reason = f"auto: bfloat16 (AMX-BF16; probe worst-frame cosine {figures['min_frame_cosine']:.5f})"
        else:
            self.dtype_reason = (
                f"auto: float32 (bfloat16 failed the parity probe: worst-frame cosine "
                f"{figures['min_frame_cosine']:.5f} < {BF16_MIN_COSINE})"
            )
        logger.info("%s", self.dtype_reason)

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
        frames = [self.num_frames(n) for n in lengths]
        padded = self.num_frames(longest)
        if self.backend == "onnx":  # the export masks per frame, as the HF forward does after its convs
            with torch.inference_mode():
                out = forward(x, self.model.frame_mask(frames))
        else:
            inputs = torch.from_numpy(x).to(self.device, dtype=self.dtype)
            attention_mask = None
            if self.policy == "mask" and len(set(lengths)) > 1:
                attention_mask = torch.from_numpy(mask).to(self.device)
            with torch.inference_mode():
                out = forward(inputs, attention_mask)
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
