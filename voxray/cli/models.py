"""``voxray models``: the models voxray knows and where they load from."""

from __future__ import annotations

import argparse
from typing import Any

from voxray.cli.options import print_json


def describe_models() -> dict[str, Any]:
    """Defaults and whether each is available offline (the CLI is the one place that knows every runner)."""
    from voxray.encoder.options import DEFAULT_ASR_MODEL
    from voxray.errors import ModelUnavailableError
    from voxray.model_sources import resolve_hf_model

    info: dict[str, Any] = {"asr": {"default": DEFAULT_ASR_MODEL}}
    try:
        info["asr"]["local_path"] = resolve_hf_model(DEFAULT_ASR_MODEL)
    except ModelUnavailableError as exc:
        info["asr"]["available"] = False
        info["asr"]["hint"] = exc.message
    try:
        from voxray.tts.assets import resolve_model

        info["tts"] = {"default": "embedded", "local_path": str(resolve_model("embedded"))}
    except ImportError:
        info["tts"] = {"available": False, "hint": "install the TTS extra: pip install 'voxray[tts]'"}
    except ModelUnavailableError as exc:
        info["tts"] = {"default": "embedded", "available": False, "hint": exc.message}
    return info


def _cmd_models(args: argparse.Namespace) -> int:
    print_json(describe_models())
    return 0


def register(subparsers: Any) -> None:
    models = subparsers.add_parser("models", help="list the models voxray knows and where they load from")
    models.set_defaults(_handler=_cmd_models)
