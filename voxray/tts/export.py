"""``voxray export tts``: Kokoro-82M as an ONNX graph that batches and has no output defects.

The graph is traced from :class:`voxray.tts.kokoro_forward.BatchedKokoro` (weights converted
from the embedded int8 graph, or a user's checkpoint), so it has what the kokoro-onnx export lacks:

- a dynamic batch axis with per-item lengths: inputs ``input_ids`` int64 [B, T] (rows
  ``[0, *tokens, 0]`` zero-padded), ``input_lengths`` int64 [B], ``style`` float32 [B, 256],
  ``speed`` float32 [B] (fractional; the hexgrad export traces it as an integer);
- outputs ``audio`` float32 [B, N] (item b is ``audio[b, :audio_lengths[b]]``), ``audio_lengths``
  int64 [B] and ``durations`` int64 [B, T] (frames of 600 samples per token: word timestamps);
- an inverse STFT normalised by the window envelope: the right level (the kokoro-onnx graph is
  1.5x too loud) and no click in the first samples (it divides them by a near-zero one-frame
  window sum); the STFT is a convolution, so no complex tensors are needed.

The vocoder's noise is drawn in the graph (RandomNormalLike), as in the original model.
``--fp16`` stores the weights of the heavy convolution and LSTM stacks in float16 and keeps the
sine source, the STFTs and all inputs/outputs in float32 (phase accumulation needs the precision).
The file records ``voxray.kokoro=batched-v1`` in its metadata; voxray's ONNX runner then batches
and skips the output repair.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from voxray.config import Options

logger = logging.getLogger("voxray.tts")

EXPORT_FORMAT = "batched-v1"
METADATA_KEY = "voxray.kokoro"
INPUTS = ("input_ids", "input_lengths", "style", "speed")
OUTPUTS = ("audio", "audio_lengths", "durations")
# nodes kept in float32 by --fp16: the phase accumulator and (inverse) STFTs
_FP32_SCOPES = ("_source", "_stft", "_istft", "m_source", "f0_upsamp")


class TTSExportOptions(Options):
    """``voxray export tts``: Kokoro -> a batched, defect-free ONNX graph."""

    out: str = Field(..., description="output .onnx file")
    model: str = Field(
        "embedded", description="weights: 'embedded' (converted from the int8 graph, offline), an .onnx "
        "export, a kokoro-v1_0.pth, or a hub id"
    )
    fp16: bool = Field(False, description="store the weights in float16 (float32 inputs/outputs and vocoder source)")
    opset: int = Field(17, ge=17, le=20, description="ONNX opset")
    check: bool = Field(True, description="run the written graph on a short batch and compare with torch")


class _Graph:
    """The traced callable: the batched forward with in-graph noise and the conv STFT."""

    @staticmethod
    def build(net: Any) -> Any:
        import torch

        class Graph(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.net = net

            def forward(self, input_ids: Any, input_lengths: Any, style: Any, speed: Any) -> Any:
                return self.net(input_ids, input_lengths, style, speed, None)

        return Graph().eval()


def _example(vocab_size: int = 178) -> tuple[Any, ...]:
    import torch

    g = torch.Generator().manual_seed(0)
    lengths = torch.tensor([14, 9], dtype=torch.long)
    ids = torch.zeros(2, 14, dtype=torch.long)
    for b, n in enumerate(lengths.tolist()):
        ids[b, 1 : n - 1] = torch.randint(1, vocab_size, (n - 2,), generator=g)
    style = torch.randn(2, 256, generator=g) * 0.2
    return ids, lengths, style, torch.tensor([1.0, 1.25])


def export_onnx(net: Any, path: Path, opset: int = 17) -> None:
    """Trace ``net`` (a BatchedKokoro) to ``path`` with dynamic batch, token and audio axes."""
    import torch

    net.stft_mode = "conv"
    try:
        graph = _Graph.build(net)
        with torch.no_grad():
            torch.onnx.export(
                graph, _example(), str(path), input_names=list(INPUTS), output_names=list(OUTPUTS),
                dynamic_axes={
                    "input_ids": {0: "batch", 1: "tokens"}, "input_lengths": {0: "batch"},
                    "style": {0: "batch"}, "speed": {0: "batch"},
                    "audio": {0: "batch", 1: "samples"}, "audio_lengths": {0: "batch"},
                    "durations": {0: "batch", 1: "tokens"},
                },
                opset_version=opset, dynamo=False, do_constant_folding=True,
            )
    finally:
        net.stft_mode = "torch"


def _stamp(path: Path, fp16: bool, source: str) -> None:
    import onnx

    model = onnx.load(str(path))
    if fp16:
        from onnxruntime.transformers import float16

        keep = [n.name for n in model.graph.node if any(s in n.name for s in _FP32_SCOPES)]
        model = float16.convert_float_to_float16(model, keep_io_types=True, node_block_list=keep)
    for key, value in ((METADATA_KEY, EXPORT_FORMAT), ("voxray.source", source), ("voxray.precision",
                                                                                   "float16" if fp16 else "float32")):
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(path))


def export_tts(options: TTSExportOptions) -> dict[str, Any]:
    """Write the graph (atomically) and return a manifest: inputs, outputs, parity vs torch."""
    import torch

    from voxray.tts.torch_runner import KokoroTorch

    start = time.perf_counter()
    runner = KokoroTorch(options.model, device="cpu")
    out = Path(options.out).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        torch.manual_seed(0)
        export_onnx(runner.net, tmp, options.opset)
        _stamp(tmp, options.fp16, options.model)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    manifest: dict[str, Any] = {
        "out": str(out), "format": EXPORT_FORMAT, "precision": "float16" if options.fp16 else "float32",
        "inputs": list(INPUTS), "outputs": list(OUTPUTS), "bytes": out.stat().st_size,
    }
    if options.check:
        manifest["parity"] = check_export(out, runner)
    manifest["export_s"] = round(time.perf_counter() - start, 1)
    return manifest


def loudness_db(audio: np.ndarray) -> float:
    """RMS level in dB full scale (a plain, dependency-free loudness measure)."""
    x = np.asarray(audio, np.float64)
    return float(10 * np.log10(max(np.mean(x**2), 1e-20)))


def check_export(path: Path, runner: Any) -> dict[str, Any]:
    """Run ``path`` and ``runner`` on the same short batch (real voices, lengths unlike the trace's).

    The graph draws its own vocoder noise, so waveforms are compared by level; durations must match.
    """
    from voxray.tts.batching import SynthItem
    from voxray.tts.onnx_runner import KokoroONNX
    from voxray.tts.voices import embedded_voices

    voices = embedded_voices()
    # "hello world, this is a test." and "speech." in misaki's phonemes, as token ids
    texts = ([50, 83, 54, 156, 57, 16, 65, 156, 87, 54, 46, 3, 16, 156, 102, 61, 16, 102, 68, 16, 83, 16,
              62, 156, 86, 61, 62, 4], [61, 58, 156, 51, 158, 133, 4])
    items = [SynthItem(t, voices[v][len(t)].reshape(-1), sp, seed=1)
             for t, v, sp in ((texts[0], "jf_alpha", 1.0), (texts[1], "jm_kumo", 1.25))]
    onnx_out = KokoroONNX(path).infer_batch(items)
    torch_out = runner.infer_batch(items)
    same = [bool(np.array_equal(a.durations, b.durations)) for a, b in zip(onnx_out, torch_out, strict=True)]
    level = [round(loudness_db(a.audio) - loudness_db(b.audio), 2) for a, b in zip(onnx_out, torch_out, strict=True)]
    head = [float(np.abs(a.audio[:16]).max() / max(np.abs(a.audio).max(), 1e-9)) for a in onnx_out]
    return {"durations_equal": same, "level_diff_db": level, "first_16_samples_peak_ratio": [round(h, 4) for h in head]}
