"""``voxray embed-search DIR --query FILE -k 5``: cosine neighbours in an embedding job's output."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from voxray.cli.options import add_options, collect_options, print_json
from voxray.embed.config import SearchOptions


def _cmd_search(args: argparse.Namespace) -> int:
    from voxray.embed.search import search

    opts = SearchOptions(**collect_options(args))
    hits = search(opts.index, opts.query, opts.k)
    print_json([dataclasses.asdict(h) for h in hits])
    return 0


def register(subparsers: Any) -> None:
    s = subparsers.add_parser(
        "embed-search", help="cosine nearest neighbours in the output of `voxray embed`",
        description="Print the K rows of DIR most similar to --query (an indexed id/path or an audio file).",
    )
    s.add_argument("index", metavar="DIR", help=SearchOptions.model_fields["index"].description)
    s.add_argument("-k", dest="k", type=int, default=None, help=SearchOptions.model_fields["k"].description)
    add_options(s, SearchOptions, skip=("index", "k"))
    s.set_defaults(_handler=_cmd_search)
