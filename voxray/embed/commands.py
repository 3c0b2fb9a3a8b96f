"""CLI: ``voxray embed INPUT... --out DIR`` and ``voxray embed-search DIR --query FILE -k 5``.

Flags derive from :class:`~voxray.embed.config.EmbedJob` and
:class:`~voxray.embed.config.SearchOptions`; nothing is re-declared here but the short ``-k``.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from voxray.embed.config import EmbedJob, SearchOptions


def _cmd_search(args: argparse.Namespace) -> int:
    from voxray.cli import collect_options, print_json
    from voxray.embed.search import search

    opts = SearchOptions(**collect_options(args))
    hits = search(opts.index, opts.query, opts.k)
    print_json([dataclasses.asdict(h) for h in hits])
    return 0


def register(subparsers: Any) -> None:
    from voxray.cli import add_options
    from voxray.jobs.embed import cmd_embed

    p = subparsers.add_parser(
        "embed", help="extract acoustic embeddings with a wav2vec2-family encoder (Ray Data job)",
        description="Embed INPUT... (files, dirs, globs, fsspec URLs, manifests) into Parquet shards in --out: "
        "one pooled vector per file (fixed-size float32 list), optionally frame-level features.",
    )
    add_options(p, EmbedJob, positional=("inputs",), skip=("job",), flatten=("embed", "ray", "resources"))
    p.set_defaults(_handler=cmd_embed)

    s = subparsers.add_parser(
        "embed-search", help="cosine nearest neighbours in the output of `voxray embed`",
        description="Print the K rows of DIR most similar to --query (an indexed id/path or an audio file).",
    )
    s.add_argument("index", metavar="DIR", help=SearchOptions.model_fields["index"].description)
    s.add_argument("-k", dest="k", type=int, default=None, help=SearchOptions.model_fields["k"].description)
    add_options(s, SearchOptions, skip=("index", "k"))
    s.set_defaults(_handler=_cmd_search)
