"""``voxray transcribe INPUT... --out DIR``: the Ray Data transcription job."""

from __future__ import annotations

import argparse
from typing import Any

from voxray.cli.options import JOB_SKIP, add_job_output_flags, add_options, collect_options, run_corpus_job


def _cmd_transcribe(args: argparse.Namespace) -> int:
    from voxray.jobs.transcribe import TranscribeJob, run_transcribe

    return run_corpus_job("transcribe", TranscribeJob(**collect_options(args)), run_transcribe, args)


def register(subparsers: Any) -> None:
    from voxray.jobs.transcribe import TranscribeJob

    p = subparsers.add_parser(
        "transcribe", help="transcribe audio files with a wav2vec2 CTC model (Ray Data job)",
        description="Transcribe INPUT... (files, dirs, globs, fsspec URLs, manifests) into Parquet shards in --out, "
        "committed as the job goes; rerun the same command to resume.",
    )
    add_options(p, TranscribeJob, positional=("inputs",), skip=JOB_SKIP,
                flatten=("asr", "ray", "resources", "retries"))
    add_job_output_flags(p)
    p.set_defaults(_handler=_cmd_transcribe)
