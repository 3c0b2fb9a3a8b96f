"""Paths that may be local folders or fsspec URLs (``s3://bucket/prefix``). Core module: no Ray."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any


def join(base: str, *parts: str) -> str:
    """``base`` joined with ``parts``: with ``/`` for a URL (``"://"`` in it), else :func:`os.path.join`."""
    if "://" in base:
        return fs_join(base, *parts)
    return os.path.join(base, *parts)


def fs_join(path: str, *parts: str) -> str:
    """A path inside an fsspec filesystem (or a URL) joined with ``parts``: always ``/``, any OS."""
    return "/".join([path.rstrip("/"), *parts])


def fs_and_path(url: str) -> tuple[Any, str]:
    """The fsspec filesystem for ``url`` and the path within it."""
    import fsspec

    fs, path = fsspec.core.url_to_fs(url)
    return fs, path


def is_remote(url: str) -> bool:
    return "://" in url and not url.startswith("file://")


def unstrip(url: str, fs: Any, path: str) -> str:
    """Turn a path returned by ``fs`` back into a URL the workers can open (``url`` says which kind)."""
    if not is_remote(url):
        return path
    return fs.unstrip_protocol(path)


def ensure_dir(out: str) -> None:
    fs, path = fs_and_path(out)
    fs.makedirs(path, exist_ok=True)


def cache_dir() -> Path:
    """``$VOXRAY_CACHE`` or ``$XDG_CACHE_HOME/voxray`` or ``~/.cache/voxray``: one per machine/user
    (assembled Kokoro weights, converted torch weights, on-the-fly ONNX exports)."""
    base = os.environ.get("VOXRAY_CACHE")
    if not base:
        xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        base = os.path.join(xdg, "voxray")
    return Path(base)


def sha256_file(path: str | os.PathLike) -> str:
    """SHA-256 of a local file, read in 1 MiB blocks (model files are ~100 MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
