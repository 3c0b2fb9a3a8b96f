"""pydantic -> argparse: one flag per option field, so flags are never re-declared.

Built on argparse's public API only (``add_argument`` with the final help text): a job that
restates shared defaults (the TTS jobs' resources) passes them in when the flags are created,
instead of editing the parser's actions afterwards. pydantic-settings' CLI support was the other
candidate; it would change every flag's spelling and ``--help`` layout, which users script against.
"""

from __future__ import annotations

import argparse
import json
import re
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel


@dataclass(frozen=True)
class HelpRestatement:
    """Restate a shared option group's defaults for one command.

    The shared groups describe their own defaults (the ASR ones); a job that changes them says
    ``(default for LABEL: value)`` instead. ``overrides`` replace whole help texts by dest.
    """

    group: str = ""
    defaults: BaseModel | None = None
    label: str = ""
    overrides: Mapping[str, str] = field(default_factory=dict)

    def help_for(self, dest: str, help_text: str) -> str:
        if dest in self.overrides:
            return self.overrides[dest]
        if self.defaults is not None and self.group and dest.startswith(f"{self.group}__") and help_text:
            value = getattr(self.defaults, dest.split("__", 1)[1], None)
            if value is not None:  # the group's own "(default: ...)" gives way to this command's
                return re.sub(r" \(default: [^)]*\)$", "", help_text) + f" (default for {self.label}: {value})"
        return help_text


NO_RESTATEMENT = HelpRestatement()


def _unwrap_optional(tp: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def add_options(
    parser: argparse.ArgumentParser,
    model: type[BaseModel],
    prefix: str = "",
    positional: Sequence[str] = (),
    skip: Sequence[str] = (),
    flatten: Sequence[str] = (),
    flag_prefix: str = "",
    restate: HelpRestatement = NO_RESTATEMENT,
) -> None:
    """Add one flag per field of ``model``; nested models recurse as ``--section-field``.

    Sections named in ``flatten`` keep their nesting in the parsed result but drop the section
    from the flag (``asr.batch_seconds`` -> ``--batch-seconds``). Flags default to None so only
    what the user typed overrides YAML values and pydantic defaults.
    """
    for name, info in model.model_fields.items():
        if name in skip or f"{prefix}{name}" in skip:  # a name anywhere, or one dest ("asr__device")
            continue
        tp = _unwrap_optional(info.annotation)
        dest = f"{prefix}{name}"
        if _is_model(tp):
            sub_flag_prefix = flag_prefix if name in flatten else f"{flag_prefix}{name}-"
            add_options(parser, tp, f"{dest}__", skip=skip, flag_prefix=sub_flag_prefix, restate=restate)
            continue
        flag = "--" + (flag_prefix + name).replace("_", "-")
        help_text = info.description or ""
        if not info.is_required() and info.default is not None and info.default_factory is None:
            help_text += f" (default: {info.default})"
        help_text = restate.help_for(dest, help_text)
        origin = typing.get_origin(tp)
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        if name in positional:
            parser.add_argument(dest, nargs="*", default=None, metavar=name.upper(), help=help_text)
        elif origin is list and "bare_flag" in extra:  # "--retry-errors" alone means its bare_flag value
            parser.add_argument(flag, dest=dest, nargs="*", default=None, metavar=name.upper().rstrip("S"),
                                action=_BareFlag, bare=list(extra["bare_flag"]), help=help_text)
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


class _BareFlag(argparse.Action):
    """``nargs="*"`` that stores ``bare`` when the flag is given without values."""

    def __init__(self, *args: Any, bare: list[str], **kwargs: Any) -> None:
        self.bare = bare
        super().__init__(*args, **kwargs)

    def __call__(self, parser: Any, namespace: Any, values: Any, option_string: str | None = None) -> None:
        setattr(namespace, self.dest, list(values) if values else list(self.bare))


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


def add_tts_model_flag(parser: argparse.ArgumentParser, description: str) -> None:
    """``--tts-model`` (the TTS options' ``model`` field, renamed so it is not taken for the ASR model)."""
    parser.add_argument("--tts-model", dest="tts__model", default=None, help=description)


# ---------------------------------------------------------------- job commands: flags and body
JOB_SKIP = ("job", "asr__device", "embed__device", "tts__device")  # a job's device is --device (resources)


def add_job_output_flags(parser: argparse.ArgumentParser) -> None:
    """``--json`` and ``--quiet`` for a job command (drawn by :class:`voxray.cli.Console`)."""
    parser.add_argument("--json", dest="_json", action="store_true",
                        help="print the run report as JSON, and nothing else, on stdout")
    parser.add_argument("-q", "--quiet", dest="_quiet", action="store_true",
                        help="no progress line, only errors on stderr")
    parser.set_defaults(_console=True)


def summary_line(verb: str, report: dict[str, Any]) -> str:
    """One human line for a finished job (stdout without ``--json``)."""
    kinds = ", ".join(f"{k} {n}" for k, n in sorted(report.get("errors_by_kind", {}).items()))
    errors = f", {report['errors']} errors: {kinds}" if report.get("errors") else ""
    skipped = f", {report['skipped_already_done']} already done" if report.get("skipped_already_done") else ""
    audio = f", {report['audio_hours'] * 60:.1f} min of audio" if report.get("audio_s") else ""
    return (f"voxray {verb}: {report['processed']} rows ({report['ok']} ok{errors}){skipped}{audio} in "
            f"{report['wall_s']:.1f} s; results and run.json in {report['out']}")


def run_corpus_job(verb: str, job: Any, run: Callable[..., dict[str, Any]], args: argparse.Namespace) -> int:
    """The row-per-input jobs' command body: inputs required, a progress line, the report at the end.

    Exit 1 when every processed row failed (a wrong model or corpus), else 0.
    """
    if not job.inputs:
        raise SystemExit(f"voxray {verb}: give at least one INPUT (file, directory, glob, URL or manifest)")
    console = args._console_obj
    report = run(job, progress=console.progress_fn(job.progress))
    console.result(report, summary_line(verb, report))
    return 0 if report["processed"] == 0 or report["ok"] > 0 else 1
