"""``voxray embed INPUT... --out DIR``: the Ray Data embedding job."""

from __future__ import annotations

import argparse
from typing import Any

from voxray.cli.options import JOB_SKIP, add_job_output_flags, add_options, collect_options, run_corpus_job


def _cmd_embed(args: argparse.Namespace) -> int:
    from voxray.jobs.embed import EmbedJob, run_embed

    return run_corpus_job("embed", EmbedJob(**collect_options(args)), run_embed, args)


def register(subparsers: Any) -> None:
    from voxray.jobs.embed import EmbedJob

    p = subparsers.add_parser(
        "embed", help="extract acoustic embeddings with a wav2vec2-family encoder (Ray Data job)",
        description="Embed INPUT... (files, dirs, globs, fsspec URLs, manifests) into Parquet shards in --out: "
        "one pooled vector per file (fixed-size float32 list), optionally frame-level features.",
    )
    add_options(p, EmbedJob, positional=("inputs",), skip=JOB_SKIP, flatten=("embed", "ray", "resources", "retries"))
    add_job_output_flags(p)
    p.set_defaults(_handler=_cmd_embed)
