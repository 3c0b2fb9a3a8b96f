"""``voxray`` command line. Flags are derived from the pydantic option models, never re-declared.

The composition root: one module per verb, listed in :data:`COMMANDS` in ``--help`` order, each
exposing ``register(subparsers)``. Nothing in voxray imports this package; a command module that
fails to import is an error (a broken install), never a silently missing verb.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from pydantic import ValidationError

from voxray.cli.options import add_options, collect_options, deep_merge, print_json
from voxray.errors import VoxrayError

__all__ = ["COMMANDS", "add_options", "build_parser", "collect_options", "deep_merge", "main", "print_json"]

# verb modules under voxray.cli, in the order ``voxray --help`` lists them
COMMANDS = (
    "run", "models", "transcribe", "say", "voices", "synthesize", "embed", "embed_search", "serve", "audiobook",
    "finetune",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="voxray", description=__doc__.splitlines()[0])
    parser.add_argument(
        "-v", "--verbose", dest="_verbose", action="count", default=0, help="-v info, -vv debug logging"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        importlib.import_module(f"voxray.cli.{name}").register(sub)
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
