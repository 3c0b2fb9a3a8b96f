"""Kokoro ONNX runner: token ids + style + speed -> 24 kHz audio (and per-token durations).

Two kinds of graph:

- kokoro-onnx's exports (the embedded int8 one, fp32/fp16 from the hub): batch size 1, so
  ``infer_batch`` loops and throughput comes from several runners (actors) with few threads each.
  Their outputs are repaired for two defects (measured): a click in the first ~10 samples (the
  inverse STFT divides by a one-frame window sum, amplifying them up to ~2500x) and a 1.5x level.
  Their durations are not an output; for the embedded graph voxray derives, once per machine, a
  copy that also outputs the duration tensor (for word timestamps).
- ``voxray export tts`` graphs (metadata ``voxray.kokoro``): dynamic batch, per-item lengths,
  a durations output, correct level and no click: ``infer_batch`` runs one padded call, no repair.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from voxray.errors import InferenceError, InputError, ModelUnavailableError
from voxray.tts.batching import RawOutput, SynthItem
from voxray.tts.config import SAMPLE_RATE

logger = logging.getLogger("voxray.tts")

LEVEL_DEFECT = 1.5
_CLICK_SAMPLES = 16  # samples zeroed outright: the amplified region (~10) plus margin
_TAIL_SAMPLES = 4  # the last 3 samples come out 1.4-1.5x too loud; fade them out


def choose_providers(device: str = "auto") -> list[str]:
    """onnxruntime providers for ``device``: CUDA first when requested/available, CPU always last."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if device == "cuda" and "CUDAExecutionProvider" not in available:
        raise ModelUnavailableError(
            "device=cuda but this onnxruntime has no CUDA provider: pip install onnxruntime-gpu "
            f"(available: {', '.join(available)})"
        )
    if device in ("auto", "cuda") and "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def repair_output(audio: np.ndarray, fade_in_ms: float = 5.0, level_fix: bool = True) -> np.ndarray:
    """Remove the export's start-of-utterance click (fade-in) and 1.5x level; returns float32."""
    out = np.asarray(audio, dtype=np.float32).reshape(-1).copy()
    if level_fix:
        out *= np.float32(1.0 / LEVEL_DEFECT)
    n = len(out)
    if fade_in_ms > 0 and n:
        head = min(n, _CLICK_SAMPLES)
        out[:head] = 0.0
        ramp = min(n - head, int(SAMPLE_RATE * fade_in_ms / 1000))
        if ramp > 0:  # raised-cosine ramp from 0 to 1 after the zeroed samples
            out[head : head + ramp] *= (0.5 - 0.5 * np.cos(np.pi * np.arange(1, ramp + 1) / (ramp + 1))).astype(
                np.float32
            )
        tail = min(n - head, _TAIL_SAMPLES)
        if tail > 0:
            out[n - tail :] *= np.linspace(1.0, 0.0, tail + 1, dtype=np.float32)[1:]
    return out


#: The duration tensor inside kokoro-onnx's v1.0 graphs (rounded, clipped at 1; [1, T] float).
_INNER_DURATIONS = "/encoder/Clip_output_0"


def with_durations_output(src: Path, cache: Path | None = None) -> Path | None:
    """A copy of a kokoro-onnx graph that also outputs its durations (None: it has no such tensor).

    The copy is the source's bytes plus a tiny protobuf suffix: a ModelProto whose graph holds one
    more output. Protobuf merges concatenated messages (repeated fields append), so nothing is
    parsed or held in memory to build it. Built once per source (atomically, keyed by its size and
    mtime) next to it or in ``cache``.
    """
    import shutil
    import uuid

    import onnx

    st = src.stat()
    dest = (cache or src.parent) / f"{src.stem}.durations-{st.st_size}-{st.st_mtime_ns}.onnx"
    if dest.exists() and dest.stat().st_size > st.st_size:
        return dest
    name = _INNER_DURATIONS.encode()
    found, tail = False, b""
    with open(src, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            if name in tail + block:
                found = True
                break
            tail = block[-len(name):]
    if not found:
        return None
    extra = onnx.ModelProto(graph=onnx.GraphProto(output=[
        onnx.helper.make_tensor_value_info(_INNER_DURATIONS, onnx.TensorProto.FLOAT, None)
    ])).SerializeToString()
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(src, "rb") as fin, open(tmp, "wb") as fout:
            shutil.copyfileobj(fin, fout, 1 << 20)
            fout.write(extra)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    logger.info("derived %s (the same graph, plus its durations output)", dest.name)
    return dest


class KokoroONNX:
    """One onnxruntime session of a Kokoro export; ``infer`` runs one chunk, ``infer_batch`` many.

    Accepts the kokoro-onnx exports (input ``tokens``), the hub's onnx-community export (input
    ``input_ids``), with float or int speed inputs, and ``voxray export tts`` graphs (batched).
    """

    sample_rate = SAMPLE_RATE
    max_tokens = 510

    def __init__(
        self,
        model_path: str | os.PathLike,
        threads: int | None = None,
        device: str = "auto",
        providers: Sequence[str] | None = None,
        shrink_arena: bool = True,
    ) -> None:
        import onnxruntime as ort

        path = Path(model_path)
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = int(threads)
            opts.inter_op_num_threads = 1
        opts.log_severity_level = 3  # the int8 graph triggers harmless shape-inference warnings
        # Memory patterns are planned and cached per input shape; every text length is a new shape,
        # so they add peak memory (measured: 977 -> 858 MB peak RSS for 200-token chunks) and grow
        # with traffic. The arena itself stays: without it peak RSS tripled (malloc per tensor).
        opts.enable_mem_pattern = False
        self.providers = list(providers) if providers else choose_providers(device)
        # The arena keeps the largest blocks any input length ever needed; shrinking it at the end
        # of each run hands the unused ones back, so RSS follows the current input, not the history.
        self.run_options = ort.RunOptions()
        if shrink_arena:
            self.run_options.add_run_config_entry("memory.enable_memory_arena_shrinkage",
                                                  "cpu:0" if "CUDAExecutionProvider" not in self.providers
                                                  else "cpu:0;gpu:0")
        try:
            self.session = ort.InferenceSession(str(path), sess_options=opts, providers=self.providers)
        except Exception as exc:
            raise ModelUnavailableError(f"cannot load Kokoro ONNX model {path}: {exc}") from exc
        self.model_path = path
        self.threads = threads
        meta = self.session.get_modelmeta().custom_metadata_map
        self.batches = meta.get("voxray.kokoro", "").startswith("batched")
        self.needs_repair = not self.batches  # voxray's export has neither the click nor the 1.5x level
        outputs = [o.name for o in self.session.get_outputs()]
        self._audio_name = outputs[0]
        self._durations_name = next((n for n in outputs if n in ("durations", "duration", _INNER_DURATIONS)), None)
        inputs = {i.name: i.type for i in self.session.get_inputs()}
        self._tokens_name = "input_ids" if "input_ids" in inputs else "tokens"
        missing = {self._tokens_name, "style", "speed"} - set(inputs)
        if missing:
            raise ModelUnavailableError(
                f"{path} is not a Kokoro model: inputs {sorted(inputs)} lack {sorted(missing)}"
            )
        self._speed_int = inputs["speed"] in ("tensor(int32)", "tensor(int64)")
        self._speed_dtype = np.int32 if inputs["speed"] == "tensor(int32)" else (
            np.int64 if inputs["speed"] == "tensor(int64)" else np.float32
        )
        self._style_dtype = np.float16 if inputs["style"] == "tensor(float16)" else np.float32
        logger.info("loaded %s on %s (threads=%s%s)", path.name, self.providers[0], threads or "auto",
                    ", batched" if self.batches else "")

    @property
    def device(self) -> str:
        return "cuda" if self.providers[0] == "CUDAExecutionProvider" else "cpu"

    def infer(self, tokens: Sequence[int], style: np.ndarray, speed: float = 1.0) -> np.ndarray:
        """Raw model output for one utterance (``tokens`` without the pads; at most 510)."""
        return self.infer_batch([SynthItem(tokens, style, speed)])[0].audio

    def _check(self, tokens: Sequence[int]) -> None:
        if not len(tokens):
            raise InputError("nothing to synthesize: no phoneme of the text is in Kokoro's vocabulary")
        if len(tokens) > self.max_tokens:
            raise InputError(f"{len(tokens)} tokens exceed Kokoro's limit of {self.max_tokens}; chunk the text")

    def infer_batch(self, items: Sequence[SynthItem]) -> list[RawOutput]:
        """Audio and durations per item: one padded call on a batched graph, else one call each.

        Item seeds are not honoured here: onnxruntime draws the vocoder noise itself.
        """
        for item in items:
            self._check(item.tokens)
        if not items:
            return []
        if not self.batches:
            return [self._infer_one(i) for i in items]
        width = max(len(i.tokens) for i in items) + 2
        ids = np.zeros((len(items), width), np.int64)
        for b, item in enumerate(items):
            ids[b, 1 : len(item.tokens) + 1] = item.tokens
        lengths = np.array([len(i.tokens) + 2 for i in items], np.int64)
        feeds = {
            "input_ids": ids,
            "input_lengths": lengths,
            "style": np.stack([np.asarray(i.style, np.float32).reshape(-1) for i in items]).astype(self._style_dtype),
            "speed": np.array([i.speed for i in items], np.float32),
        }
        try:
            audio, audio_lengths, durations = self.session.run(["audio", "audio_lengths", "durations"], feeds,
                                                               self.run_options)
        except Exception as exc:
            raise InferenceError(f"Kokoro inference failed on a batch of {len(items)}: {exc}") from exc
        return [
            RawOutput(np.asarray(audio[b, : audio_lengths[b]], np.float32), np.asarray(durations[b, : lengths[b]]))
            for b in range(len(items))
        ]

    def _infer_one(self, item: SynthItem) -> RawOutput:
        tokens = item.tokens
        speed_value = round(item.speed) if self._speed_int else item.speed
        feeds = {
            self._tokens_name: np.array([[0, *tokens, 0]], dtype=np.int64),
            "style": np.asarray(item.style, dtype=self._style_dtype).reshape(1, -1),
            "speed": np.array([speed_value], dtype=self._speed_dtype),
        }
        names = [self._audio_name] + ([self._durations_name] if self._durations_name else [])
        try:
            outs = self.session.run(names, feeds, self.run_options)
        except Exception as exc:
            raise InferenceError(f"Kokoro inference failed on {len(tokens)} tokens: {exc}") from exc
        audio = np.asarray(outs[0], dtype=np.float32).reshape(-1)
        durations = np.rint(np.asarray(outs[1], np.float64).reshape(-1)).astype(np.int64) if len(outs) > 1 else None
        return RawOutput(audio, durations)
