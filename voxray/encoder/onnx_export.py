"""Export a wav2vec2-family model to ONNX for the onnxruntime backend (``voxray export asr``).

Two graphs per export, split where the HF model itself computes the frame mask:

- ``features``: the conv feature encoder, samples ``[B, N]`` -> frames ``[B, T, C]``;
- ``encoder``: feature projection, transformer (and CTC head), frames + frame mask ``[B, T]`` ->
  ``logits`` and ``last_hidden_state`` (ASR), or the stacked hidden-state entries an embedding needs.

Why split: streaming caches conv features and reruns only the transformer; int8 touches only the
encoder graph (dynamic quantisation of its MatMuls; convs stay float, since quantised convs make
speech encoders slower or wrong); and padding is masked per frame exactly as the HF forward does
after its conv stack, so padded batches keep parity. The dynamo exporter (``torch.export``) keeps
batch and time dynamic; the legacy TorchScript exporter bakes the masking to the traced shape.

An export directory is a complete model: the graphs, ``onnx_export.json`` (what it holds and the
parity measured at export) and the source's config, vocabulary and processor files.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from voxray.config import Options
from voxray.errors import ModelUnavailableError

logger = logging.getLogger("voxray.encoder.onnx")

MANIFEST = "onnx_export.json"
FORMAT = "voxray-onnx"
FORMAT_VERSION = 1
ONNX_DIR = "onnx"
VARIANTS = ("float32", "int8", "float16")
# the source files an export leaves behind: weights and other exports
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".onnx", ".data")
_TWO_GB = 2**31 - 2**26  # protobuf's 2 GiB limit, with room for the graph itself


class ExportOptions(Options):
    """``voxray export asr``: a CTC checkpoint -> an ONNX model directory for ``--backend onnx``."""

    model: str = Field(..., description="HF hub id or local dir of a wav2vec2-family CTC model")
    revision: str | None = Field(None, description="hub revision (branch, tag or commit)")
    out: str = Field(..., description="output directory (becomes a complete model dir: graphs + processor files)")
    int8: bool = Field(False, description="also write an int8 encoder graph (dynamic MatMul quantisation; convs float)")
    fp16: bool = Field(False, description="also write float16 graphs (for onnxruntime-gpu; float32 inputs/outputs)")


# ---------------------------------------------------------------- the graphs as torch modules
def split_model(model: Any) -> tuple[Any, Any]:
    """``(base encoder, CTC head or None)`` of a wav2vec2-family model (``*ForCTC`` or a bare encoder)."""
    base = getattr(model, "base_model", model)
    if not all(hasattr(base, a) for a in ("feature_extractor", "feature_projection", "encoder")):
        raise ModelUnavailableError(
            f"{type(model).__name__} is not a wav2vec2-family model: expected a conv feature_extractor, a "
            f"feature_projection and a transformer encoder"
        )
    head = getattr(model, "lm_head", None) if model is not base else None
    return base, head


def _features_module(base: Any) -> Any:
    import torch

    class Features(torch.nn.Module):
        """Samples [B, N] -> conv features [B, T, C] (what the HF forward computes before masking)."""

        def __init__(self) -> None:
            super().__init__()
            self.conv = base.feature_extractor

        def forward(self, input_values: torch.Tensor) -> torch.Tensor:
            return self.conv(input_values).transpose(1, 2)

    return Features().eval()


def _encoder_module(base: Any, head: Any, entries: Sequence[int] | None) -> Any:
    """Frames + frame mask -> (logits, last_hidden_state) or, given ``entries``, their hidden states stacked.

    Entries follow :mod:`voxray.embed.runner`'s numbering: 0 is the first transformer layer's input,
    k the output of layer k, L the encoder output. Layers above the highest entry feed nothing the
    graph returns, so the exporter drops them.
    """
    import torch

    layers = base.encoder.layers
    top = len(layers)

    class Encoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.base = base
            self.head = head

        def forward(self, features: torch.Tensor, frame_mask: torch.Tensor) -> Any:
            projected = self.base.feature_projection(features)
            hidden = projected[0] if isinstance(projected, tuple) else projected
            captured: dict[int, Any] = {}
            handles = []
            if entries is not None:
                if 0 in entries and top > 0:
                    handles.append(layers[0].register_forward_pre_hook(
                        lambda _m, args, kwargs: captured.__setitem__(0, args[0] if args else kwargs["hidden_states"]),
                        with_kwargs=True,
                    ))
                for e in sorted(set(entries)):
                    if 0 < e < top:
                        handles.append(layers[e - 1].register_forward_hook(
                            lambda _m, _a, out, e=e: captured.__setitem__(e, out[0] if isinstance(out, tuple) else out)
                        ))
            try:
                last = self.base.encoder(hidden, attention_mask=frame_mask)[0]
            finally:
                for h in handles:
                    h.remove()
            if getattr(self.base, "adapter", None) is not None:
                last = self.base.adapter(last)
            if entries is not None:
                captured[top] = last
                return torch.stack([captured[e] for e in sorted(set(entries))], dim=2)
            return self.head(last), last

    return Encoder().eval()


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The exporter and the quantiser print progress and advice (stdout, warnings, their loggers and
    bare ``logging.warning`` calls on the root logger): keep them off the user's console."""
    import warnings

    class _DropRootRecords(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return False  # a root-logger filter sees only records logged on the root logger itself

    root, drop = logging.getLogger(), _DropRootRecords()
    noisy = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript", "onnx_ir")]
    levels = [lg.level for lg in noisy]
    root.addFilter(drop)
    for lg in noisy:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        root.removeFilter(drop)
        for lg, level in zip(noisy, levels, strict=True):
            lg.setLevel(level)


def _example_inputs(base: Any, frame: int) -> tuple[Any, Any, Any]:
    """Two items of different lengths, so the traced graph masks padding (not a shape-baked no-op)."""
    import torch

    samples = 24 * frame + 80  # any length: the export is dynamic in batch and time
    x = torch.randn(2, samples)
    with torch.inference_mode():
        feats = base.feature_extractor(x).transpose(1, 2).contiguous()
    mask = torch.ones(feats.shape[:2], dtype=torch.bool)
    mask[1, feats.shape[1] // 2 :] = False
    return x, feats.clone(), mask


def export_graphs(model: Any, onnx_dir: str, entries: Sequence[int] | None = None) -> dict[str, str]:
    """Write ``features.onnx`` and ``encoder.onnx`` (float32) into ``onnx_dir``; return their names."""
    import torch

    base, head = split_model(model)
    if entries is None and head is None:
        raise ModelUnavailableError(
            f"{type(model).__name__} has no CTC head (lm_head): `voxray export asr` needs a *ForCTC model"
        )
    model = model.float().eval()
    os.makedirs(onnx_dir, exist_ok=True)
    frame = int(np.prod(base.config.conv_stride))
    x, feats, mask = _example_inputs(base, frame)
    batch = torch.export.Dim("batch")
    samples = torch.export.Dim("samples", min=frame + 80)
    frames = torch.export.Dim("frames")
    outputs = ["hidden_states"] if entries is not None else ["logits", "last_hidden_state"]
    jobs = [
        ("features", _features_module(base), (x,), ["input_values"], ["features"],
         {"input_values": {0: batch, 1: samples}}),
        ("encoder", _encoder_module(base, head, entries), (feats, mask), ["features", "frame_mask"], outputs,
         {"features": {0: batch, 1: frames}, "frame_mask": {0: batch, 1: frames}}),
    ]
    written = {}
    for name, module, args, inputs, outs, dynamic in jobs:
        t0 = time.perf_counter()
        with _quiet(), torch.inference_mode(False), torch.no_grad():
            program = torch.onnx.export(
                module, args, dynamo=True, input_names=inputs, output_names=outs, dynamic_shapes=dynamic,
                optimize=True, verbose=False,
            )
        path = os.path.join(onnx_dir, f"{name}.onnx")
        big = sum(p.numel() * p.element_size() for p in module.parameters()) > _TWO_GB
        program.save(path, external_data=big)
        written[name] = f"{name}.onnx"
        logger.info("exported %s graph in %.1f s", name, time.perf_counter() - t0)
    return written


def quantize_int8(src: str, dst: str) -> None:
    """Dynamic int8 of the MatMuls whose B is a weight (linear layers); convs and attention stay float."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _quiet():
        quantize_dynamic(
            src, dst, op_types_to_quantize=["MatMul"], weight_type=QuantType.QInt8, per_channel=False,
            extra_options={"MatMulConstBOnly": True}, use_external_data_format=os.path.getsize(src) > _TWO_GB,
        )


def convert_fp16(src: str, dst: str) -> None:
    """Float16 weights and compute, float32 inputs and outputs (so callers feed the same arrays)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    with _quiet():
        model = convert_float_to_float16(onnx.load(src), keep_io_types=True)
        onnx.save(model, dst, save_as_external_data=model.ByteSize() > _TWO_GB)


# ---------------------------------------------------------------- parity at export
def probe_audio(seconds: float = 2.0, sample_rate: int = 16000) -> np.ndarray:
    """A deterministic, speech-like probe (harmonics, pitch glide, syllable envelope, noise), normalised."""
    rng = np.random.default_rng(1234)
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    phase = 2 * np.pi * np.cumsum(140 + 30 * np.sin(2 * np.pi * 1.3 * t)) / sample_rate
    x = sum(np.sin(k * phase) / k for k in range(1, 8)) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t)) ** 2
    x = x + 0.05 * rng.standard_normal(t.size)
    return ((x - x.mean()) / x.std()).astype(np.float32)


def compare(reference: np.ndarray, got: np.ndarray) -> dict[str, float]:
    """Max abs difference, worst per-frame cosine and argmax agreement of two ``[..., frames, dim]`` arrays."""
    a = reference.reshape(-1, reference.shape[-1]).astype(np.float64)
    b = got.reshape(-1, got.shape[-1]).astype(np.float64)
    cos = (a * b).sum(-1) / np.maximum(np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1), 1e-12)
    return {
        "max_abs_diff": float(np.abs(a - b).max()),
        "min_frame_cosine": float(cos.min()),
        "argmax_agreement": float((a.argmax(-1) == b.argmax(-1)).mean()),
    }


def _probe_parity(model: Any, export_dir: str, variants: Sequence[str], frame: int) -> dict[str, dict[str, float]]:
    """Each variant against the torch float32 model on a padded batch of the probe (a full and a cut copy)."""
    import torch

    from voxray.encoder.onnx_backend import OnnxEncoder

    audio = probe_audio()
    cut = len(audio) * 3 // 5
    x = np.zeros((2, len(audio)), np.float32)
    x[0], x[1, :cut] = audio, audio[:cut]
    sample_mask = np.zeros(x.shape, np.int64)
    sample_mask[0], sample_mask[1, :cut] = 1, 1
    with torch.inference_mode():
        ref = model(input_values=torch.from_numpy(x), attention_mask=torch.from_numpy(sample_mask)).logits.numpy()
    out: dict[str, dict[str, float]] = {}
    for variant in variants:
        encoder = OnnxEncoder(export_dir, variant=variant, device="cpu", threads=None)
        frames = [encoder.num_frames(len(audio)), encoder.num_frames(cut)]
        got = encoder.run(x, encoder.frame_mask(frames))["logits"]
        out[variant] = compare(
            np.concatenate([ref[0], ref[1, : frames[1]]]), np.concatenate([got[0], got[1, : frames[1]]])
        )
    return out


# ---------------------------------------------------------------- export directories
def _copy_model_files(src: str, dst: str) -> list[str]:
    """Config, vocabulary, processor files and the model card: everything but weights."""
    copied = []
    for entry in sorted(os.listdir(src)):
        path = os.path.join(src, entry)
        if os.path.isfile(path) and not entry.endswith(_WEIGHT_SUFFIXES) and entry != MANIFEST:
            shutil.copy2(path, os.path.join(dst, entry))
            copied.append(entry)
    return copied


def write_export(
    model: Any,
    out: str,
    *,
    source: str,
    source_dir: str | None = None,
    entries: Sequence[int] | None = None,
    int8: bool = False,
    fp16: bool = False,
) -> dict[str, Any]:
    """Export ``model`` into ``out`` (created; replaced atomically if it was an export) and return the manifest."""
    import onnxruntime
    import torch

    out = os.path.abspath(out)
    if os.path.exists(out) and os.listdir(out) and not os.path.exists(os.path.join(out, MANIFEST)):
        raise ModelUnavailableError(f"{out} exists and is not a voxray ONNX export: choose an empty or new --out")
    parent = os.path.dirname(out) or "."
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".export-", dir=parent)
    try:
        t0 = time.perf_counter()
        onnx_dir = os.path.join(tmp, ONNX_DIR)
        files = export_graphs(model, onnx_dir, entries)
        graphs = {"float32": {k: f"{ONNX_DIR}/{v}" for k, v in files.items()}}
        if int8:
            quantize_int8(os.path.join(onnx_dir, "encoder.onnx"), os.path.join(onnx_dir, "encoder.int8.onnx"))
            graphs["int8"] = {"features": graphs["float32"]["features"], "encoder": f"{ONNX_DIR}/encoder.int8.onnx"}
        if fp16:
            for name in ("features", "encoder"):
                convert_fp16(os.path.join(onnx_dir, f"{name}.onnx"), os.path.join(onnx_dir, f"{name}.fp16.onnx"))
            graphs["float16"] = {n: f"{ONNX_DIR}/{n}.fp16.onnx" for n in ("features", "encoder")}
        base, _ = split_model(model)
        copied = _copy_model_files(source_dir, tmp) if source_dir else []
        if "config.json" not in copied:
            model.config.save_pretrained(tmp)
        manifest: dict[str, Any] = {
            "format": FORMAT, "version": FORMAT_VERSION, "source": source,
            "kind": "asr" if entries is None else "hidden_states",
            "outputs": ["logits", "last_hidden_state"] if entries is None else ["hidden_states"],
            "entries": None if entries is None else sorted(set(entries)),
            "num_hidden_layers": len(base.encoder.layers), "hidden_size": int(base.config.hidden_size),
            "graphs": graphs, "parity": {}, "export_s": None,
            "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
        }
        _write_json(os.path.join(tmp, MANIFEST), manifest)
        if entries is None:
            manifest["parity"] = _probe_parity(model, tmp, list(graphs), int(np.prod(base.config.conv_stride)))
        manifest["export_s"] = round(time.perf_counter() - t0, 1)
        _write_json(os.path.join(tmp, MANIFEST), manifest)
        if os.path.exists(out):
            old = tempfile.mkdtemp(prefix=".old-", dir=parent)
            os.rename(out, os.path.join(old, "x"))
            os.rename(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def _write_json(path: str, data: dict[str, Any]) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=2)


def export_asr(options: ExportOptions) -> dict[str, Any]:
    """``voxray export asr``: load the CTC checkpoint, write the export directory, return its manifest."""
    from transformers import AutoModelForCTC

    from voxray.model_sources import load_pretrained, resolve_hf_model

    path = resolve_hf_model(options.model, options.revision)
    if os.path.exists(os.path.join(path, MANIFEST)):
        raise ModelUnavailableError(
            f"{options.model} is already an ONNX export: pass the torch checkpoint it came from"
        )
    model = load_pretrained(AutoModelForCTC, path, options.model, "a Wav2Vec2ForCTC-style directory (config + weights)")
    return write_export(
        model.eval(), options.out, source=options.model, source_dir=path, int8=options.int8, fp16=options.fp16
    )


# ---------------------------------------------------------------- the on-the-fly cache (--backend onnx on a checkpoint)
def cache_root() -> Path:
    """``$VOXRAY_CACHE/onnx``: the machine's voxray cache (:func:`voxray.storage.cache_dir`)."""
    from voxray.storage import cache_dir

    return cache_dir() / "onnx"


def _source_key(source_dir: str, entries: Sequence[int] | None) -> str:
    """Content of the config plus size and mtime of each weight file: a retrained checkpoint re-exports."""
    import torch

    h = hashlib.sha256()
    wanted = None if entries is None else sorted(set(entries))
    h.update(json.dumps([FORMAT_VERSION, torch.__version__, wanted]).encode())
    h.update(Path(source_dir, "config.json").read_bytes())
    for entry in sorted(os.listdir(source_dir)):
        if entry.endswith(_WEIGHT_SUFFIXES):
            st = os.stat(os.path.join(source_dir, entry))
            h.update(f"{entry}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:20]


def ensure_variant(export_dir: str, variant: str) -> None:
    """Add an int8/float16 graph to a cached export that lacks it (under the caller's lock)."""
    manifest = read_manifest(export_dir)
    if variant in manifest["graphs"]:
        return
    onnx_dir = os.path.join(export_dir, ONNX_DIR)
    if variant == "int8":
        quantize_int8(os.path.join(onnx_dir, "encoder.onnx"), os.path.join(onnx_dir, "encoder.int8.onnx"))
        manifest["graphs"]["int8"] = {
            "features": f"{ONNX_DIR}/features.onnx", "encoder": f"{ONNX_DIR}/encoder.int8.onnx"
        }
    elif variant == "float16":
        for name in ("features", "encoder"):
            convert_fp16(os.path.join(onnx_dir, f"{name}.onnx"), os.path.join(onnx_dir, f"{name}.fp16.onnx"))
        manifest["graphs"]["float16"] = {n: f"{ONNX_DIR}/{n}.fp16.onnx" for n in ("features", "encoder")}
    _write_json(os.path.join(export_dir, MANIFEST), manifest)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """One exporter per cache entry across processes (Ray actors start together); the others wait."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def cached_export(model: Any, source_dir: str | None, entries: Sequence[int] | None, variant: str) -> tuple[str, Any]:
    """An export of ``model`` holding ``variant``: from the cache for a checkpoint on disk, else in a temp dir.

    Returns ``(directory, keepalive)``: hold ``keepalive`` as long as the directory is in use (a
    temporary directory for injected models; None for cache entries).
    """
    if source_dir is None:  # an injected in-memory model: nothing stable to key a cache entry on
        tmp = tempfile.TemporaryDirectory(prefix="vxr-onnx-")
        out = os.path.join(tmp.name, "export")
        write_export(model, out, source=type(model).__name__, entries=entries, int8=variant == "int8",
                     fp16=variant == "float16")
        return out, tmp
    key = _source_key(source_dir, entries)
    out = cache_root() / key
    with _locked(cache_root() / f"{key}.lock"):
        if not (out / MANIFEST).exists():
            logger.info("exporting %s to ONNX (once; cached in %s)", source_dir, out)
            write_export(model, str(out), source=source_dir, source_dir=source_dir, entries=entries)
        ensure_variant(str(out), variant)
    return str(out), None


def read_manifest(export_dir: str) -> dict[str, Any]:
    """The export's ``onnx_export.json``, checked to be one this version reads."""
    path = os.path.join(export_dir, MANIFEST)
    try:
        with open(path, encoding="utf-8") as fh:
            manifest = json.load(fh)
    except (OSError, ValueError) as exc:
        raise ModelUnavailableError(f"cannot read {path}: {exc}") from exc
    if manifest.get("format") != FORMAT or manifest.get("version", 0) > FORMAT_VERSION:
        raise ModelUnavailableError(f"{path} is not a voxray ONNX export this version reads (format {FORMAT} v1)")
    return manifest


def read_config(export_dir: str) -> Any:
    """The model config an export carries (conv arithmetic, padding policy, sizes)."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(export_dir)
    except (OSError, ValueError) as exc:
        raise ModelUnavailableError(f"cannot read the model config of {export_dir}: {exc}") from exc


def is_onnx_export(path: str | None) -> bool:
    return bool(path) and os.path.isfile(os.path.join(str(path), MANIFEST))
