"""``voxray`` command line. Flags are derived from the pydantic option models, never re-declared.

Subcommands: transcribe, run (a YAML job spec), models; the TTS, embedding and serving modules
register theirs through :func:`register_commands` hooks listed in ``COMMAND_MODULES``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import re
import sys
import types
import typing
from collections.abc import Callable, Sequence
from typing import Any

from pydantic import BaseModel, ValidationError

from voxray.errors import VoxrayError

logger = logging.getLogger("voxray.cli")

# Modules exposing ``register(subparsers)``; imported lazily so a missing optional extra
# (e.g. TTS without onnxruntime) only disables its own commands.
COMMAND_MODULES = [
    "voxray.jobs.transcribe",
    "voxray.tts.commands",
    "voxray.embed.commands",
    "voxray.deployments.commands",
    "voxray.audiobook.commands",
    "voxray.finetune.commands",
]


def _unwrap_optional(tp: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def restate_defaults(
    parser: argparse.ArgumentParser, group: str, defaults: BaseModel, label: str,
    overrides: dict[str, str] | None = None,
) -> None:
    """Shared option groups describe their own defaults; a job that changes them (the TTS jobs'
    resources) restates them in ``--help`` as ``(default for LABEL: value)``. ``overrides`` replace
    whole help texts by dest."""
    overrides = overrides or {}
    for action in parser._actions:
        if action.dest in overrides:
            action.help = overrides[action.dest]
        elif action.dest.startswith(f"{group}__") and action.help:
            value = getattr(defaults, action.dest.split("__", 1)[1], None)
            if value is not None:
                action.help = re.sub(r" \(default: [^)]*\)$", "", action.help) + f" (default for {label}: {value})"


def add_options(
    parser: argparse.ArgumentParser,
    model: type[BaseModel],
    prefix: str = "",
    positional: Sequence[str] = (),
    skip: Sequence[str] = (),
    flatten: Sequence[str] = (),
    flag_prefix: str = "",
) -> None:
    """Add one flag per field of ``model``; nested models recurse as ``--section-field``.

    Sections named in ``flatten`` keep their nesting in the parsed result but drop the section
    from the flag (``asr.batch_seconds`` -> ``--batch-seconds``). Flags default to None so only
    what the user typed overrides YAML values and pydantic defaults.
    """
    for name, info in model.model_fields.items():
        if name in skip:
            continue
        tp = _unwrap_optional(info.annotation)
        dest = f"{prefix}{name}"
        if _is_model(tp):
            sub_flag_prefix = flag_prefix if name in flatten else f"{flag_prefix}{name}-"
            add_options(parser, tp, f"{dest}__", skip=skip, flag_prefix=sub_flag_prefix)
            continue
        flag = "--" + (flag_prefix + name).replace("_", "-")
        help_text = info.description or ""
        if not info.is_required() and info.default is not None and info.default_factory is None:
            help_text += f" (default: {info.default})"
        origin = typing.get_origin(tp)
        if name in positional:
            parser.add_argument(dest, nargs="*", default=None, metavar=name.upper(), help=help_text)
        elif origin is list:
            parser.add_argument(flag, dest=dest, nargs="+", default=None, metavar=name.upper(), help=help_text)
        elif tp is bool:
            parser.add_argument(
                flag, dest=dest, action=argparse.BooleanOptionalAction, default=None, help=help_text
            )
        elif origin is typing.Literal:
            choices = [str(c) for c in typing.get_args(tp)]
            parser.add_argument(flag, dest=dest, choices=choices, default=None, help=help_text)
        else:
            conv = tp if tp in (int, float) else str
            parser.add_argument(flag, dest=dest, type=conv, default=None, metavar=name.upper(), help=help_text)


def collect_options(args: argparse.Namespace, prefix: str = "") -> dict[str, Any]:
    """Nested dict of the flags the user actually gave (``a__b`` -> ``{"a": {"b": ...}}``)."""
    out: dict[str, Any] = {}
    for key, value in vars(args).items():
        if value is None or key.startswith("_") or not key.startswith(prefix) or key == "command":
            continue
        parts = key[len(prefix):].split("__")
        cur = out
        for part in parts[:-1]:
            cur = cur.setdefault(part, {})
        cur[parts[-1]] = value
    return out


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``override`` wins; nested dicts merge key by key."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, ensure_ascii=False, default=str))


def _cmd_models(args: argparse.Namespace) -> int:
    from voxray.models import describe_models

    print_json(describe_models())
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from voxray.jobs.specs import run_spec

    report = run_spec(args.spec, overrides={"out": args.out} if args.out else {})
    print_json(report)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="voxray", description=__doc__.splitlines()[0])
    parser.add_argument(
        "-v", "--verbose", dest="_verbose", action="count", default=0, help="-v info, -vv debug logging"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a job spec (jobs/*.yaml)")
    run.add_argument("spec", help="YAML job spec")
    run.add_argument("--out", help="override the spec's output directory")
    run.set_defaults(_handler=_cmd_run)
    models = sub.add_parser("models", help="list the models voxray knows and where they load from")
    models.set_defaults(_handler=_cmd_models)
    for module_name in COMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.startswith("voxray"):
                continue  # the module is not part of this build yet
            logger.debug("commands of %s unavailable: %s", module_name, exc)
            continue
        register: Callable[[Any], None] = module.register
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING if args._verbose == 0 else logging.INFO if args._verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("voxray").setLevel(min(level, logging.INFO))
    try:
        return int(args._handler(args) or 0)
    except VoxrayError as exc:
        print(f"voxray: error: {exc.message}", file=sys.stderr)
        return 2
    except ValidationError as exc:  # an option out of range or a typo in a YAML key
        lines = [f"  {'.'.join(map(str, e['loc']))} (--{str(e['loc'][-1]).replace('_', '-')}): {e['msg']}"
                 for e in exc.errors() if e["loc"]] or [f"  {exc}"]
        print("voxray: invalid options:\n" + "\n".join(lines), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("voxray: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
