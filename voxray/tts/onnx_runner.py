"""Kokoro ONNX runner: token ids + style + speed -> 24 kHz audio, one utterance per call.

The int8 export takes batch size 1, so throughput comes from running several runners (actors),
each with few onnxruntime threads. Outputs are repaired for two defects of the kokoro-onnx
export (measured): a click in the first ~10 samples (its inverse STFT divides by a one-frame
window sum, amplifying them up to ~2500x) and a 1.5x output level.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from voxray.errors import InferenceError, InputError, ModelUnavailableError
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


class KokoroONNX:
    """One onnxruntime session of a Kokoro export; ``infer`` runs one utterance.

    Accepts the kokoro-onnx exports (input ``tokens``) and the hub's onnx-community export
    (input ``input_ids``), with float or int speed inputs.
    """

    sample_rate = SAMPLE_RATE
    max_tokens = 510

    def __init__(
        self,
        model_path: str | os.PathLike,
        threads: int | None = None,
        device: str = "auto",
        providers: Sequence[str] | None = None,
    ) -> None:
        import onnxruntime as ort

        path = Path(model_path)
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = int(threads)
            opts.inter_op_num_threads = 1
        opts.log_severity_level = 3  # the int8 graph triggers harmless shape-inference warnings
        self.providers = list(providers) if providers else choose_providers(device)
        try:
            self.session = ort.InferenceSession(str(path), sess_options=opts, providers=self.providers)
        except Exception as exc:
            raise ModelUnavailableError(f"cannot load Kokoro ONNX model {path}: {exc}") from exc
        self.model_path = path
        self.threads = threads
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
        logger.info("loaded %s on %s (threads=%s)", path.name, self.providers[0], threads or "auto")

    @property
    def device(self) -> str:
        return "cuda" if self.providers[0] == "CUDAExecutionProvider" else "cpu"

    def infer(self, tokens: Sequence[int], style: np.ndarray, speed: float = 1.0) -> np.ndarray:
        """Raw model output for one utterance (``tokens`` without the pads; at most 510)."""
        if not len(tokens):
            raise InputError("nothing to synthesize: no phoneme of the text is in Kokoro's vocabulary")
        if len(tokens) > self.max_tokens:
            raise InputError(f"{len(tokens)} tokens exceed Kokoro's limit of {self.max_tokens}; chunk the text")
        speed_value = round(speed) if self._speed_int else speed
        feeds = {
            self._tokens_name: np.array([[0, *tokens, 0]], dtype=np.int64),
            "style": np.asarray(style, dtype=self._style_dtype).reshape(1, -1),
            "speed": np.array([speed_value], dtype=self._speed_dtype),
        }
        try:
            (audio, *_) = self.session.run(None, feeds)
        except Exception as exc:
            raise InferenceError(f"Kokoro inference failed on {len(tokens)} tokens: {exc}") from exc
        return np.asarray(audio, dtype=np.float32).reshape(-1)
