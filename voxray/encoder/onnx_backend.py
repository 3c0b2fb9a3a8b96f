"""The onnxruntime backend: an exported encoder behind the same numpy-in, arrays-out calls.

:class:`OnnxEncoder` holds the two sessions of an export (:mod:`voxray.encoder.onnx_export`):
conv features, then the transformer on frames with a frame mask. :class:`~voxray.encoder.core.EncoderCore`
drives it exactly like a torch model, so the padding policy, chunking and per-item errors are
the same code for both backends. Streaming can call the two halves separately
(:meth:`OnnxEncoder.conv_features`, :meth:`OnnxEncoder.from_features`) to reuse cached conv features.

Threads are set like torch's: ``options.threads`` when given, else torch's own intra-op count,
so the two backends compare on the same cores. Imports no Ray; onnxruntime is imported lazily.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from voxray.encoder.core import conv_frames
from voxray.encoder.onnx_export import VARIANTS, cached_export, is_onnx_export, read_config, read_manifest
from voxray.errors import ModelUnavailableError

logger = logging.getLogger("voxray.encoder.onnx")


def onnx_device(device: str) -> str:
    """``auto`` -> ``cuda`` when onnxruntime has its CUDA provider (onnxruntime-gpu), else ``cpu``."""
    import onnxruntime as ort

    has_cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    if device == "auto":
        return "cuda" if has_cuda else "cpu"
    if device.startswith("cuda") and not has_cuda:
        raise ModelUnavailableError(
            f"device {device} with backend onnx needs onnxruntime-gpu (this onnxruntime has no CUDA provider); "
            f"use --device cpu or --backend torch"
        )
    return device


def resolve_variant(dtype: str, device: str, available: Sequence[str]) -> str:
    """The graph variant for a dtype: auto = int8 on CPU / float16 on CUDA when exported, else float32."""
    if dtype == "auto":
        preferred = "float16" if device.startswith("cuda") else "int8"
        return preferred if preferred in available else "float32"
    if dtype not in VARIANTS:
        raise ModelUnavailableError(
            f"dtype {dtype} is not available with backend onnx (choose from {', '.join(VARIANTS)})"
        )
    return dtype


class OnnxEncoder:
    """The two onnxruntime sessions of one export variant, plus the model config the core reads."""

    def __init__(self, export_dir: str, variant: str = "float32", device: str = "cpu", threads: int | None = None,
                 keepalive: Any = None) -> None:
        import onnxruntime as ort
        import torch

        self.export_dir = export_dir
        self.manifest = read_manifest(export_dir)
        graphs = self.manifest["graphs"]
        if variant not in graphs:
            flag = {"int8": "--int8", "float16": "--fp16"}.get(variant, "")
            raise ModelUnavailableError(
                f"{export_dir} has no {variant} graph (it has {', '.join(graphs)}): re-export with "
                f"`voxray export asr {flag}`, or pass the torch checkpoint with --backend onnx"
            )
        self.variant = variant
        self.device = device
        self.outputs: list[str] = list(self.manifest["outputs"])
        self.entries: list[int] | None = self.manifest.get("entries")
        self.config = read_config(export_dir)
        self.frame = int(np.prod(self.config.conv_stride))
        self.threads = threads or torch.get_num_threads()
        self._keepalive = keepalive  # a temporary export directory lives as long as its sessions
        so = ort.SessionOptions()
        so.intra_op_num_threads = self.threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3  # constant-folding notes on weight-norm nodes are not errors
        if device.startswith("cuda"):
            index = int(device.split(":", 1)[1]) if ":" in device else 0
            providers: list[Any] = [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]
        else:
            providers = ["CPUExecutionProvider"]
        files = {k: os.path.join(export_dir, v) for k, v in graphs[variant].items()}
        try:
            self.features_session = ort.InferenceSession(files["features"], so, providers=providers)
            self.encoder_session = ort.InferenceSession(files["encoder"], so, providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types (file, graph, provider)
            raise ModelUnavailableError(f"onnxruntime cannot load {export_dir} ({variant}): {exc}") from exc
        logger.info("onnxruntime %s graphs of %s on %s, %d threads", variant, export_dir, device, self.threads)

    # ------------------------------------------------------------ shape arithmetic
    def num_frames(self, num_samples: int) -> int:
        return conv_frames(self.config, num_samples)

    @staticmethod
    def frame_mask(frames: Sequence[int]) -> np.ndarray:
        """``[B, max(frames)]`` bool, True on each row's real frames (HF's feature-vector attention mask)."""
        return np.arange(max(frames))[None, :] < np.asarray(frames)[:, None]

    # ------------------------------------------------------------ the two halves, and both
    def conv_features(self, input_values: np.ndarray) -> np.ndarray:
        """Normalised samples ``[B, N]`` float32 -> conv features ``[B, T, C]`` float32."""
        x = np.ascontiguousarray(input_values, dtype=np.float32)
        return self.features_session.run(["features"], {"input_values": x})[0]

    def from_features(self, features: np.ndarray, frame_mask: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Conv features ``[B, T, C]`` + frame mask ``[B, T]`` (None: all real) -> the export's outputs by name."""
        feats = np.ascontiguousarray(features, dtype=np.float32)
        mask = np.ones(feats.shape[:2], bool) if frame_mask is None else np.ascontiguousarray(frame_mask, dtype=bool)
        values = self.encoder_session.run(self.outputs, {"features": feats, "frame_mask": mask})
        return dict(zip(self.outputs, values, strict=True))

    def run(self, input_values: np.ndarray, frame_mask: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Samples ``[B, N]`` (padded) + frame mask -> outputs: the HF forward with an attention mask."""
        return self.from_features(self.conv_features(input_values), frame_mask)


def load_onnx_encoder(
    options: Any,
    path: str | None,
    *,
    torch_model: Any = None,
    entries: Sequence[int] | None = None,
) -> OnnxEncoder:
    """The ONNX encoder for ``options`` (:class:`~voxray.encoder.options.EncoderOptions`).

    ``path`` is an export directory (used as is) or a torch checkpoint dir whose loaded model is
    ``torch_model`` (exported once into the cache); ``path=None`` with ``torch_model`` exports an
    injected model into a temporary directory. ``entries``: hidden-state entries an embedding needs
    (None: the ASR graph, logits + last hidden state).
    """
    device = onnx_device(options.device)
    if is_onnx_export(path):
        manifest = read_manifest(str(path))
        variant = resolve_variant(options.dtype, device, list(manifest["graphs"]))
        return OnnxEncoder(str(path), variant, device, options.threads)
    if torch_model is None:
        raise ModelUnavailableError(f"{path} is neither an ONNX export nor a loaded torch checkpoint")
    variant = resolve_variant(options.dtype, device, ())
    if options.dtype == "auto" and device.startswith("cuda"):
        variant = "float16"
    export_dir, keepalive = cached_export(torch_model, path, entries, variant)
    return OnnxEncoder(export_dir, variant, device, options.threads, keepalive=keepalive)
