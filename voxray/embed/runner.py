"""The embedding runner: any wav2vec2-family encoder -> one pooled vector (and frames) per input.

Shares the ASR runner's forward machinery (:mod:`voxray.encoder`): per-file normalisation,
length-aware batches with the padding policy read from the config, chunked long audio. Each
chunk's hidden states are reduced to pooling statistics over its keep region right after its
forward pass (count, mean, sum of squared deviations, max), and the chunks' statistics are merged
exactly (Chan et al.), which equals stitching the frames then pooling, with memory bounded by one
forward batch. Only real frames are pooled: each row is cut to the frame count of its true length,
the frame-level form of the attention mask, so padding never leaks into a vector.

Hidden-state entries are numbered 0..L for an encoder of L transformer layers: 0 is the input to
the first transformer layer (features after projection and positional convolution), k is the
output of layer k, and L is the encoder's output (``last_hidden_state``, after the final layer
norm of stable-layer-norm models: what a CTC head sees). Entries are captured with forward hooks,
and the forward stops after the highest entry needed, so ``--layer 6`` on a 24-layer model runs 6.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, overload

import numpy as np

from voxray.audio import SAMPLE_RATE
from voxray.embed.config import EmbeddingLayout, EmbedOptions, embedding_layout
from voxray.encoder.core import EncoderCore, PaddingStats, resolve_backend
from voxray.encoder.onnx_backend import OnnxEncoder, load_onnx_encoder
from voxray.encoder.onnx_export import is_onnx_export, read_config, read_manifest
from voxray.errors import InputError, ModelUnavailableError, VoxrayError, row_error
from voxray.model_sources import load_pretrained, resolve_hf_model

logger = logging.getLogger("voxray.embed")


@dataclass
class EmbeddingResult:
    """One input's vector (float32, ``layout.dim`` wide), its frames if asked for, or its error."""

    embedding: np.ndarray | None
    duration_s: float
    frames: np.ndarray | None = None
    error: str | None = None


@dataclass
class _Moments:
    """Pooling statistics of one chunk's kept frames, per (block, hidden) cell."""

    count: int
    mean: np.ndarray | None
    m2: np.ndarray | None
    max: np.ndarray | None
    frames: np.ndarray | None

    def merge(self, other: _Moments) -> _Moments:
        """Exact parallel merge: the statistics of both frame sets laid side by side."""
        n = self.count + other.count
        mean = m2 = mx = None
        if self.mean is not None and other.mean is not None:
            delta = other.mean - self.mean
            mean = self.mean + delta * (other.count / n)
            if self.m2 is not None and other.m2 is not None:
                m2 = self.m2 + other.m2 + delta**2 * (self.count * other.count / n)
        if self.max is not None and other.max is not None:
            mx = np.maximum(self.max, other.max)
        return _Moments(n, mean, m2, mx, None)


class _StopForward(Exception):
    """Raised by a hook once the highest needed hidden state is captured: skips the layers above."""


def _hidden(output: Any) -> Any:
    return output[0] if isinstance(output, tuple | list) else output


class Embedder:
    """Load a wav2vec2-family encoder once; embed lists of 16 kHz arrays or columnar batches.

    ``model`` (any loaded wav2vec2-family model: ``Wav2Vec2Model``, ``HubertModel``, a ``*ForCTC``
    whose base encoder is used, or an :class:`~voxray.encoder.onnx_backend.OnnxEncoder`) and
    ``feature_extractor`` may be injected, e.g. by a Serve replica that already holds the ASR
    model; otherwise they load from ``options.model``. With the onnx backend a torch checkpoint is
    exported once with exactly the hidden-state entries the options need; a `voxray export asr`
    directory serves ``--layer -1`` (its ``last_hidden_state``).
    """

    def __init__(
        self,
        options: EmbedOptions | None = None,
        *,
        model: Any = None,
        feature_extractor: Any = None,
    ) -> None:
        self.options = options or EmbedOptions()
        path = None
        if model is None:
            path = resolve_hf_model(self.options.model, self.options.revision)
        backend = resolve_backend(self.options, path)
        export_dir = path if is_onnx_export(path) else None
        if export_dir is not None:
            feature_extractor = self._load_feature_extractor(export_dir)
        elif path is not None:
            model, feature_extractor = self._load(path, self.options.model)
        if isinstance(model, OnnxEncoder):
            backend, config, num_layers = "onnx", model.config, int(model.manifest["num_hidden_layers"])
        elif export_dir is not None:
            config = read_config(export_dir)
            num_layers = int(read_manifest(export_dir)["num_hidden_layers"])
        else:
            base = getattr(model, "base_model", model)
            config = base.config
            layers = getattr(getattr(base, "encoder", None), "layers", None)
            if layers is None or not hasattr(config, "conv_stride"):
                raise ModelUnavailableError(
                    f"{self.options.model} ({type(base).__name__}) is not a wav2vec2-family encoder: expected a "
                    f"conv feature encoder (conv_stride in its config) and transformer layers at .encoder.layers"
                )
            num_layers = len(layers)
        fe = getattr(feature_extractor, "feature_extractor", feature_extractor)
        if fe is None:  # no preprocessor_config.json: follow HF's convention for the two norm styles
            do_normalize = getattr(config, "feat_extract_norm", "layer") == "layer"
            logger.warning("no feature extractor config for %s; do_normalize=%s", self.options.model, do_normalize)
        else:
            do_normalize = bool(getattr(fe, "do_normalize", True))
            rate = getattr(fe, "sampling_rate", SAMPLE_RATE)
            if rate != SAMPLE_RATE:
                raise ModelUnavailableError(f"model expects {rate} Hz audio; voxray feeds {SAMPLE_RATE} Hz")
        self.num_hidden_layers = num_layers
        try:
            self.layout: EmbeddingLayout = embedding_layout(self.options, self.num_hidden_layers, config.hidden_size)
        except ValueError as exc:
            raise InputError(str(exc)) from exc
        if backend == "onnx" and not isinstance(model, OnnxEncoder):
            torch_base = None if model is None else getattr(model, "base_model", model)
            model = load_onnx_encoder(self.options, path, torch_model=torch_base, entries=self.layout.entries)
        if isinstance(model, OnnxEncoder):
            self._onnx_index = self._onnx_outputs(model)
            self.core = EncoderCore(model, self.options, do_normalize=do_normalize)
            self._layers = None
        else:
            base = getattr(model, "base_model", model)
            self.core = EncoderCore(base, self.options, do_normalize=do_normalize)
            self._layers = base.encoder.layers
        self.model = self.core.model
        self.backend = self.core.backend
        self._mean_layers = isinstance(self.options.layer, list) and self.options.layer_combine == "mean"
        logger.info(
            "embedding model %s: %s on %s (%s; %s), padding policy %s, entries %s, pooling %s, dim %d",
            self.options.model, self.backend, self.core.device, self.core.dtype, self.core.dtype_reason,
            self.core.policy, list(self.layout.entries), self.options.pooling, self.layout.dim,
        )

    def _onnx_outputs(self, encoder: OnnxEncoder) -> list[int] | None:
        """Where each needed entry sits in the export's ``hidden_states`` (None: ``last_hidden_state``)."""
        needed = self.layout.entries
        if "hidden_states" in encoder.outputs and encoder.entries is not None and set(needed) <= set(encoder.entries):
            return [encoder.entries.index(e) for e in needed]
        if "last_hidden_state" in encoder.outputs and set(needed) == {self.num_hidden_layers}:
            return None
        has = encoder.entries or [self.num_hidden_layers]
        raise ModelUnavailableError(
            f"the ONNX export {encoder.export_dir} has hidden-state entries {has}, not {list(needed)} "
            f"(--layer {self.options.layer_label}): pass the torch checkpoint with --backend onnx to export "
            f"those layers, or use --backend torch"
        )

    @staticmethod
    def _load(path: str, name: str) -> tuple[Any, Any]:
        from transformers import AutoModel

        expected = (
            "a wav2vec2-family directory (config.json + weights), e.g. a Wav2Vec2/HuBERT checkpoint "
            "with or without a CTC head"
        )
        model = load_pretrained(AutoModel, path, name, expected)
        return model, Embedder._load_feature_extractor(path)

    @staticmethod
    def _load_feature_extractor(path: str) -> Any:
        from transformers import AutoFeatureExtractor

        try:
            return AutoFeatureExtractor.from_pretrained(path)
        except (OSError, ValueError):
            return None

    # ---------------------------------------------------------------- properties
    @property
    def model_name(self) -> str:
        return self.options.model

    @property
    def stats(self) -> PaddingStats:
        return self.core.stats

    @property
    def dim(self) -> int:
        return self.layout.dim

    def num_frames(self, num_samples: int) -> int:
        """Encoder frames for ``num_samples`` input samples (the model's conv arithmetic)."""
        return self.core.num_frames(num_samples)

    # ---------------------------------------------------------------- forward + reduction
    def hidden_states(self, inputs: Any, attention_mask: Any) -> Any:
        """Selected entries as a float32 tensor ``[batch, frames, blocks', hidden]`` (layer-averaged
        to one block when ``layer_combine`` is mean). Padded frames are still there: callers cut."""
        import torch

        entries = self.layout.entries
        top = self.num_hidden_layers
        highest = max(entries)
        captured: dict[int, Any] = {}

        def pre_hook(_module: Any, args: tuple, kwargs: dict) -> None:
            captured[0] = args[0] if args else kwargs["hidden_states"]
            if highest == 0:
                raise _StopForward

        def post_hook(entry: int) -> Any:
            def hook(_module: Any, _args: Any, output: Any) -> None:
                captured[entry] = _hidden(output)
                if entry == highest:
                    raise _StopForward

            return hook

        handles = []
        if 0 in entries and top > 0:  # with no transformer layers, entry 0 is the encoder output
            handles.append(self._layers[0].register_forward_pre_hook(pre_hook, with_kwargs=True))
        for e in sorted(set(entries)):
            if 0 < e < top:
                handles.append(self._layers[e - 1].register_forward_hook(post_hook(e)))
        try:
            out = self.model(input_values=inputs, attention_mask=attention_mask)
            captured[top] = out.last_hidden_state
        except _StopForward:
            pass
        finally:
            for h in handles:
                h.remove()
        x = torch.stack([captured[e] for e in entries], dim=2).float()
        return x.mean(dim=2, keepdim=True) if self._mean_layers else x

    def _onnx_hidden_states(self, inputs: np.ndarray, frame_mask: np.ndarray) -> Any:
        """:meth:`hidden_states` through the ONNX export: the same ``[batch, frames, blocks', hidden]`` tensor."""
        import torch

        out = self.model.run(inputs, frame_mask)
        if self._onnx_index is None:
            hidden = out["last_hidden_state"][:, :, None]
        else:
            hidden = out["hidden_states"][:, :, self._onnx_index]
        x = torch.from_numpy(np.ascontiguousarray(hidden, dtype=np.float32))
        return x.mean(dim=2, keepdim=True) if self._mean_layers else x

    def _reduce(self, hidden: Any, row: int, keep: slice) -> _Moments:
        x = hidden[row, keep]  # [frames kept, blocks, hidden]
        pooling = self.options.pooling
        mean = x.mean(dim=0) if pooling != "max" else None
        m2 = ((x - mean) ** 2).sum(dim=0) if pooling == "mean+std" else None
        mx = x.amax(dim=0) if pooling == "max" else None
        frames = None
        if self.options.frames:
            frames = x.reshape(x.shape[0], -1).cpu().numpy().astype(self.options.frames_dtype)

        def np64(t: Any) -> np.ndarray | None:
            return None if t is None else t.double().cpu().numpy()

        return _Moments(int(x.shape[0]), np64(mean), np64(m2), np64(mx), frames)

    def _finish(self, parts: list[_Moments]) -> tuple[np.ndarray, np.ndarray | None]:
        total = parts[0]
        for p in parts[1:]:
            total = total.merge(p)
        pooling = self.options.pooling
        if pooling == "mean":
            stats = [total.mean]
        elif pooling == "max":
            stats = [total.max]
        else:
            stats = [total.mean, np.sqrt(np.maximum(total.m2 / total.count, 0.0))]  # type: ignore[operator]
        vec = np.stack(stats, axis=1)  # [blocks, stats, hidden]
        if self.options.normalize:
            if self.options.layer == "all":  # a stack of per-layer embeddings: each one unit length
                norms = np.linalg.norm(vec.reshape(vec.shape[0], -1), axis=1)[:, None, None]
            else:
                norms = np.linalg.norm(vec)
            vec = vec / np.maximum(norms, 1e-12)
        frames = None
        if self.options.frames:
            frames = np.concatenate([p.frames for p in parts]) if len(parts) > 1 else parts[0].frames
        return vec.reshape(-1).astype(np.float32), frames

    # ---------------------------------------------------------------- public API
    def embed_arrays(self, audios: Sequence[np.ndarray | None]) -> list[EmbeddingResult]:
        """Embed 16 kHz mono float32 arrays; errors are per item, never raised."""
        forward = self._onnx_hidden_states if self.backend == "onnx" else self.hidden_states
        with self.core.lock:
            parts = self.core.run(audios, forward, self._reduce)
        results = []
        for audio, part in zip(audios, parts, strict=True):
            duration = len(audio) / SAMPLE_RATE if audio is not None else 0.0
            if isinstance(part, VoxrayError):
                results.append(EmbeddingResult(None, duration, error=part.as_row_error()))
                continue
            try:
                vec, frames = self._finish(part)
            except Exception as exc:  # a numeric surprise stays with its row
                results.append(EmbeddingResult(None, duration, error=row_error(exc)))
                continue
            results.append(EmbeddingResult(vec, duration, frames))
        return results

    @overload
    def embed(self, batch: dict[str, Any]) -> dict[str, Any]: ...

    @overload
    def embed(self, batch: Sequence[np.ndarray]) -> list[EmbeddingResult]: ...

    def embed(self, batch: dict[str, Any] | Sequence[np.ndarray]) -> dict[str, Any] | list[EmbeddingResult]:
        """A columnar batch (``audio`` + optional ``error``) -> columns, or arrays -> results."""
        if isinstance(batch, dict):
            return self(batch)
        return self.embed_arrays(batch)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Columnar: ``audio`` (+ ``error`` from decoding) -> ``embedding``, ``error``, labels.

        Rows that already carry an error (failed decode) pass through with a null embedding.
        Adds ``frames`` when ``options.frames``; keeps every other input column but ``audio``.
        """
        audios = list(batch["audio"])
        # Ray Data hands an all-null ``error`` column over as float NaN: only strings are errors
        prior = batch.get("error", [None] * len(audios))
        errors: list[str | None] = [e if isinstance(e, str) and e else None for e in prior]
        todo = [i for i, e in enumerate(errors) if e is None]
        embeddings: list[np.ndarray | None] = [None] * len(audios)
        frames: list[np.ndarray | None] = [None] * len(audios)
        try:
            results = self.embed_arrays([audios[i] for i in todo])
        except Exception as exc:  # never lose the batch: every row gets the error
            results = [EmbeddingResult(None, 0.0, error=row_error(exc)) for _ in todo]
        for i, r in zip(todo, results, strict=True):
            embeddings[i], frames[i], errors[i] = r.embedding, r.frames, r.error
        out = {k: v for k, v in batch.items() if k != "audio"}
        if "duration_s" not in out:
            out["duration_s"] = [len(a) / SAMPLE_RATE if a is not None else float("nan") for a in audios]
        n = len(audios)
        out.update(
            embedding=embeddings,
            layer=[self.options.layer_label] * n,
            pooling=[self.options.pooling] * n,
            model=[self.model_name] * n,
            error=errors,
        )
        if self.options.frames:
            out["frames"] = frames
        return out
