"""Kokoro-82M torch weights: from the embedded int8 ONNX graph (offline), a local ``.pth`` or the hub.

The embedded int8 export holds every inference weight of Kokoro v1.0. :func:`state_dict_from_onnx`
dequantises them and renames them to the module names of ``kokoro==0.9.4``'s ``KModel``, so the
torch model needs nothing beyond the PyPI packages voxray already embeds. Names are read from
the graph itself: a named initializer keeps its module path (``encoder.predictor.F0.0.norm1.fc.bias``),
and an anonymous one (a weight-normed conv folded into ``/.../Mul_output_0``) takes the module path
of the node that consumes it. The result must cover every key of the model exactly (a strict load),
or the conversion fails loudly instead of leaving random weights in place.

The conversion takes a few seconds, so its output is cached per machine (``$VOXRAY_CACHE/kokoro``),
keyed by the source model's SHA-256 and this converter's version, written atomically and checked.
"""

from __future__ import annotations

import io
import logging
import os
import re
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from voxray.errors import ModelUnavailableError
from voxray.storage import cache_dir, sha256_file

logger = logging.getLogger("voxray.tts")

#: Bump when the conversion changes: cached state dicts of another version are rebuilt.
CONVERTER_VERSION = 2
HUB_REPO = "hexgrad/Kokoro-82M"
HUB_WEIGHTS = "kokoro-v1_0.pth"
KOKORO_INSTALL_HINT = (
    "the torch TTS backend needs the kokoro package without its CUDA-pulling extras: "
    "pip install --no-deps kokoro==0.9.4 && pip install loguru"
)

#: Kokoro v1.0's architecture (the ``config.json`` of hexgrad/Kokoro-82M, less the vocab, which
#: comes from the embedded ``vocab.json``): kept here so the offline path needs no download.
ARCHITECTURE: dict[str, Any] = {
    "istftnet": {
        "upsample_kernel_sizes": [20, 12],
        "upsample_rates": [10, 6],
        "gen_istft_hop_size": 5,
        "gen_istft_n_fft": 20,
        "resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5], [1, 3, 5]],
        "resblock_kernel_sizes": [3, 7, 11],
        "upsample_initial_channel": 512,
    },
    "dim_in": 64,
    "dropout": 0.2,
    "hidden_dim": 512,
    "max_conv_dim": 512,
    "max_dur": 50,
    "multispeaker": True,
    "n_layer": 3,
    "n_mels": 80,
    "n_token": 178,
    "style_dim": 128,
    "text_encoder_kernel_size": 5,
    "plbert": {
        "hidden_size": 768,
        "num_attention_heads": 12,
        "intermediate_size": 2048,
        "max_position_embeddings": 512,
        "num_hidden_layers": 12,
        "dropout": 0.1,
    },
}
SUBMODULES = ("bert", "bert_encoder", "predictor", "text_encoder", "decoder")


def kokoro_config() -> dict[str, Any]:
    """The full KModel config: the architecture plus the embedded phoneme vocabulary."""
    from voxray.tts.assets import embedded_vocab

    return {**ARCHITECTURE, "vocab": embedded_vocab()}


# --------------------------------------------------------------------------- ONNX -> state dict
_REPEAT = re.compile(r"_\d+$")  # "query_3": the 4th call of a shared ALBERT layer


def _module_path(node_name: str) -> str:
    """Torch module path of the module that emitted ``node_name`` in the kokoro-onnx export.

    Scopes nest like ``/encoder/text_encoder/cnn.0/cnn.0.0/Conv``: a child of a container is
    named by its qualified name (``cnn.0.0``), repeated calls get ``_N``, and the export's
    wrapper inlined the prosody predictor's F0/N branches (``/encoder/F0.0``).
    """
    segments = [s for s in node_name.split("/") if s][:-1]  # drop the op's own name
    out: list[str] = []
    for seg in segments:
        seg = _REPEAT.sub("", seg)
        if out and seg.startswith(out[-1] + "."):
            out[-1] = seg
        else:
            out.append(seg)
    if out[:2] == ["decoder", "decoder"]:
        return ".".join(["decoder", *out[2:]])
    if out and out[0] == "encoder":
        rest = out[1:]
        if rest and rest[0] not in ("bert", "bert_encoder", "text_encoder", "predictor"):
            rest = ["predictor", *rest]
        return ".".join(rest)
    raise ValueError(f"unexpected scope {node_name!r}")


def _initializer_key(name: str) -> str:
    """``encoder.predictor.X`` -> ``predictor.X``; ``decoder.decoder.X`` -> ``decoder.X``."""
    if name.startswith("decoder.decoder."):
        return "decoder." + name[len("decoder.decoder.") :]
    if name.startswith("encoder."):
        return name[len("encoder.") :]
    return name


def _dequantize(q: np.ndarray, scale: np.ndarray, zero: np.ndarray, axis: int) -> np.ndarray:
    shape = [1] * q.ndim
    if scale.size > 1:
        shape[axis] = scale.size
    s = scale.astype(np.float32).reshape(shape)
    z = zero.astype(np.float32).reshape(shape) if zero.size > 1 else zero.astype(np.float32).reshape(())
    return (q.astype(np.float32) - z) * s


def _lstm_gates(w: np.ndarray) -> np.ndarray:
    """ONNX gate order (i, o, f, c) -> torch's (i, f, g, o), along axis 0."""
    i, o, f, c = np.split(w, 4, axis=0)
    return np.concatenate([i, f, c, o], axis=0)


def state_dict_from_onnx(onnx_path: str | os.PathLike, expected_keys: Mapping[str, tuple[int, ...]]) -> dict[str, Any]:
    """Dequantised, renamed weights of a kokoro-onnx export, as ``{submodule: state_dict}``.

    ``expected_keys`` maps every KModel state-dict key to its shape; the result covers exactly
    those keys (weight-normed layers get ``weight_v = W`` and ``weight_g = ||W||``, so the effective
    weight is the graph's), or :class:`ModelUnavailableError` names what is missing.
    """
    import onnx
    import torch
    from onnx import numpy_helper

    model = onnx.load(str(onnx_path))
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    arrays: dict[str, np.ndarray] = {}

    def arr(name: str) -> np.ndarray:
        if name not in arrays:
            arrays[name] = numpy_helper.to_array(inits[name])
        return arrays[name]

    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    found: dict[str, np.ndarray] = {}

    def put(key: str, value: np.ndarray) -> None:
        if key not in expected_keys and key + "_v" not in expected_keys:
            raise ModelUnavailableError(f"{onnx_path}: weight {key!r} has no place in Kokoro's KModel")
        found[key] = np.ascontiguousarray(value, dtype=np.float32)

    for node in graph.node:
        op, inputs = node.op_type, list(node.input)
        if op == "DynamicQuantizeLSTM":
            path = _module_path(node.name)
            w = _dequantize(arr(inputs[1]), arr(inputs[8]), arr(inputs[9]), 0)  # [dir, in, 4H]
            r = _dequantize(arr(inputs[2]), arr(inputs[10]), arr(inputs[11]), 0)  # [dir, H, 4H]
            b = arr(inputs[3])  # [dir, 8H]: input biases then recurrent biases
            for d, suffix in enumerate(("", "_reverse")):
                four_h = w.shape[-1]
                put(f"{path}.weight_ih_l0{suffix}", _lstm_gates(w[d].T))
                put(f"{path}.weight_hh_l0{suffix}", _lstm_gates(r[d].T))
                put(f"{path}.bias_ih_l0{suffix}", _lstm_gates(b[d, :four_h]))
                put(f"{path}.bias_hh_l0{suffix}", _lstm_gates(b[d, four_h:]))
            continue
        if op == "LSTM" and inputs[1] in inits:  # a float export: W [dir, 4H, in], R [dir, 4H, H]
            path = _module_path(node.name)
            w, r, b = arr(inputs[1]), arr(inputs[2]), arr(inputs[3])
            four_h = w.shape[1]
            for d, suffix in enumerate(("", "_reverse")):
                put(f"{path}.weight_ih_l0{suffix}", _lstm_gates(w[d]))
                put(f"{path}.weight_hh_l0{suffix}", _lstm_gates(r[d]))
                put(f"{path}.bias_ih_l0{suffix}", _lstm_gates(b[d, :four_h]))
                put(f"{path}.bias_hh_l0{suffix}", _lstm_gates(b[d, four_h:]))
            continue
        if op in ("ConvInteger", "MatMulInteger"):
            name = inputs[1]
            base = name.removesuffix("_quantized")
            transpose = op == "MatMulInteger"
            value = _dequantize(arr(name), arr(base + "_scale"), arr(inputs[3]), 1 if transpose else 0)
            named = base.startswith(("encoder.", "decoder."))
            key = _initializer_key(base) if named else _module_path(node.name) + ".weight"
            put(key, value.T if transpose else value)
            continue
        if op == "Gather" and inputs[0].endswith("_quantized") and inputs[0] in inits:
            base = inputs[0].removesuffix("_quantized")
            (dq,) = consumers[node.output[0]]  # the DequantizeLinear holding scale and zero point
            value = _dequantize(arr(inputs[0]), arr(dq.input[1]), arr(dq.input[2]), 0)
            put(_initializer_key(base), value)
            continue
        if op in ("Conv", "ConvTranspose", "MatMul") and len(inputs) > 1 and inputs[1] in inits:
            if "istft" in node.name:
                continue  # the export's own (defective) inverse STFT: not a model weight
            value = arr(inputs[1])
            put(_module_path(node.name) + ".weight", value.T if op == "MatMul" else value)
    # Named float initializers (biases, norms, snake alphas) keep their module paths.
    for name in inits:
        key = _initializer_key(name)
        if key in expected_keys and key not in found and inits[name].data_type == 1:
            found[key] = arr(name).astype(np.float32)

    out: dict[str, dict[str, Any]] = {m: {} for m in SUBMODULES}
    missing = []
    for key, shape in expected_keys.items():
        sub, _, rest = key.partition(".")
        if key in found:
            value = found[key]
        elif key.endswith(("weight_g", "weight_v")) and key[:-2] in found:
            w = torch.from_numpy(found[key[:-2]].copy())
            norms = torch.linalg.vector_norm(w.reshape(w.shape[0], -1), dim=1)  # weight_norm(dim=0)
            if key.endswith("_v"):
                # int8 rounding left some slices all zero: v/||v|| would be 0/0 = NaN, so such a
                # slice gets v = 1 and g = 0 (the same zero weight, finite)
                value = torch.where((norms == 0).reshape(-1, *[1] * (w.ndim - 1)), torch.ones_like(w), w)
            else:
                value = norms.reshape(shape)
        elif re.search(r"\.norm\d?\.(weight|bias)$", key) and len(shape) == 1:
            # AdaIN1d's InstanceNorm1d(affine=True) is identity-affine in Kokoro v1.0 (trained
            # without affine; the export has no such weight): ones and zeros, as upstream loads it.
            value = np.ones(shape, np.float32) if key.endswith("weight") else np.zeros(shape, np.float32)
        elif key.startswith("bert.pooler."):
            # ALBERT's pooler feeds nothing Kokoro uses (CustomAlbert returns last_hidden_state),
            # so the export pruned it: zeros keep the load strict without inventing a weight.
            value = np.zeros(shape, np.float32)
        else:
            missing.append(key)
            continue
        tensor = value if isinstance(value, torch.Tensor) else torch.from_numpy(np.array(value, np.float32))
        if tuple(tensor.shape) != tuple(shape):
            raise ModelUnavailableError(f"{onnx_path}: {key} has shape {tuple(tensor.shape)}, KModel wants {shape}")
        out[sub][rest] = tensor.contiguous()
    if missing:
        raise ModelUnavailableError(
            f"{onnx_path} lacks {len(missing)} of Kokoro's weights (e.g. {', '.join(missing[:3])}): "
            "is it a Kokoro v1.0 export?"
        )
    return out


# --------------------------------------------------------------------------- model construction
def _empty_checkpoint() -> io.BytesIO:
    """A serialized empty state dict: KModel's constructor loads it, we load real weights after."""
    import torch

    buf = io.BytesIO()
    torch.save({}, buf)
    buf.seek(0)
    return buf


def new_kmodel(config: Mapping[str, Any] | None = None) -> Any:
    """An uninitialised ``kokoro.model.KModel`` (no download: empty weights, config given)."""
    try:
        from kokoro.model import KModel
    except ImportError as exc:
        raise ModelUnavailableError(KOKORO_INSTALL_HINT) from exc
    return KModel(repo_id=HUB_REPO, config=dict(config or kokoro_config()), model=_empty_checkpoint())  # type: ignore[arg-type]


def expected_shapes(kmodel: Any) -> dict[str, tuple[int, ...]]:
    """Every (submodule-prefixed) state-dict key of ``kmodel`` with its shape."""
    return {
        f"{sub}.{k}": tuple(v.shape) for sub in SUBMODULES for k, v in getattr(kmodel, sub).state_dict().items()
    }


def load_into(kmodel: Any, weights: Mapping[str, Mapping[str, Any]], strict: bool = True) -> None:
    """Load ``{submodule: state_dict}`` into ``kmodel``; strict unless the source is upstream's .pth."""
    for sub in SUBMODULES:
        if sub not in weights:
            raise ModelUnavailableError(f"Kokoro weights lack the {sub!r} submodule")
        state = weights[sub]
        if state and all(k.startswith("module.") for k in state):
            state = {k[len("module.") :]: v for k, v in state.items()}  # upstream's DataParallel names
        result = getattr(kmodel, sub).load_state_dict(state, strict=strict)
        if not strict:
            # upstream's checkpoint has no InstanceNorm affine weights (they stay ones/zeros)
            missing = [k for k in result.missing_keys if not re.search(r"\.norm\d?\.(weight|bias)$", k)]
            if missing or result.unexpected_keys:
                raise ModelUnavailableError(
                    f"Kokoro checkpoint does not fit KModel.{sub}: missing {missing[:3]}, "
                    f"unexpected {list(result.unexpected_keys)[:3]}"
                )


# (path, size, mtime_ns) of converted weights this process has already hashed
_verified: set[tuple[str, int, int]] = set()


def converted_weights_path(onnx_path: str | os.PathLike, cache: Path | None = None) -> Path:
    """The cached torch state dict converted from ``onnx_path`` (built now if absent or stale)."""
    import torch

    from voxray.tts.assets import EMBEDDED_FILE, embedded_sha256

    src = Path(onnx_path)
    # resolve_model has already checked the embedded graph against its shipped SHA-256
    source_sha = embedded_sha256() if src.name == EMBEDDED_FILE else sha256_file(src)
    dest = (cache or cache_dir() / "kokoro") / f"kokoro-torch-{source_sha[:16]}-v{CONVERTER_VERSION}.pt"
    sidecar = dest.with_suffix(".sha256")
    if dest.exists() and sidecar.exists():
        st = dest.stat()
        key = (str(dest), st.st_size, st.st_mtime_ns)
        if key in _verified or sidecar.read_text().strip() == sha256_file(dest):
            _verified.add(key)
            return dest
        logger.warning("cached torch weights %s fail their SHA-256 check; rebuilding", dest)
    shapes = expected_shapes(new_kmodel())
    weights = state_dict_from_onnx(src, shapes)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        torch.save({"source_sha256": source_sha, "converter": CONVERTER_VERSION, **weights}, tmp)
        digest = sha256_file(tmp)
        os.replace(tmp, dest)
        sidecar.write_text(digest + "\n")
    finally:
        tmp.unlink(missing_ok=True)
    logger.info("converted %s into torch weights at %s", src.name, dest)
    return dest


def load_weights(spec: str | os.PathLike | None) -> tuple[dict[str, Any], bool]:
    """``(weights, strict)`` for a ``--tts-model`` value on the torch backend.

    ``embedded``/``None`` or an ``.onnx`` file: converted from the graph (strict). A ``.pth``:
    upstream's checkpoint (``kokoro-v1_0.pth``). ``owner/repo``: that repo's checkpoint from the hub.
    """
    import torch

    from voxray.tts.assets import resolve_model

    text = "" if spec is None else os.fspath(spec)
    path = Path(text).expanduser() if text else None
    if path is not None and path.suffix in (".pth", ".pt") and path.exists():
        return dict(torch.load(path, map_location="cpu", weights_only=True)), False
    if path is not None and path.suffix in (".pth", ".pt"):
        raise ModelUnavailableError(f"Kokoro checkpoint {path} not found")
    if text and "/" in text and not text.endswith(".onnx") and not (path and path.exists()):
        repo_id, _, filename = text.removeprefix("hf://").partition(":")
        if not filename or filename.endswith((".pth", ".pt")):
            try:
                from huggingface_hub import hf_hub_download

                local = hf_hub_download(repo_id=repo_id, filename=filename or HUB_WEIGHTS)
            except Exception as exc:
                raise ModelUnavailableError(
                    f"cannot fetch {filename or HUB_WEIGHTS} from hub repo {repo_id} ({type(exc).__name__}). "
                    "Offline? Use --tts-model embedded (converted from the embedded graph) or a local .pth"
                ) from exc
            return dict(torch.load(local, map_location="cpu", weights_only=True)), False
    onnx_file = resolve_model(spec if text else None)
    state = torch.load(converted_weights_path(onnx_file), map_location="cpu", weights_only=True)
    return {k: state[k] for k in SUBMODULES}, True
