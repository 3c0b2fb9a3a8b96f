"""``voxray synthesize MANIFEST... --out DIR``: the Ray Data Kokoro synthesis job."""

from __future__ import annotations

import argparse
from typing import Any

from voxray.cli.options import (
    HelpRestatement,
    add_job_output_flags,
    add_options,
    add_tts_model_flag,
    collect_options,
    summary_line,
)


def _cmd_synthesize(args: argparse.Namespace) -> int:
    from voxray.jobs.synthesize import SynthesizeJob, run_synthesize

    job = SynthesizeJob(**collect_options(args))  # cli.main reports invalid options
    if not job.inputs:
        raise SystemExit("voxray synthesize: give at least one MANIFEST (CSV/JSONL/Parquet with 'text') or .txt")
    console = args._console_obj
    report = run_synthesize(job, progress=console.progress_fn(job.progress))
    console.result(report, summary_line("synthesize", report) + f"; audio in {report['extra']['audio_dir']}")
    return 0 if report["processed"] == 0 or report["ok"] > 0 else 1


def register(subparsers: Any) -> None:
    from voxray.jobs.synthesize import SynthesizeJob
    from voxray.tts.config import TTSOptions

    p = subparsers.add_parser(
        "synthesize",
        help="synthesize a text manifest into audio files with Kokoro (Ray Data job)",
        description="Synthesize INPUTS (CSV/TSV/JSONL/Parquet manifests with id, text[, voice, lang, speed], "
        "or .txt files with one utterance per line) into audio files plus Parquet shards in --out.",
    )
    restate = HelpRestatement(  # shared descriptions speak of audio inputs and ASR defaults
        "resources", SynthesizeJob.model_fields["resources"].default_factory(), "TTS",  # type: ignore[call-arg,misc]
        {
            "inputs": "manifests (CSV/TSV/JSONL/Parquet with 'text'; optional id, voice, lang, speed) or .txt",
            "resources__actors": "a fixed pool of this many TTS actors (default: elastic, a quarter GPU each on "
            "GPUs, else one single-threaded actor per CPU)",
            "resources__gpus_per_actor": "GPUs per TTS actor on a GPU job (default for TTS: 0.25, four actors per "
            "GPU: Kokoro-82M is small)",
        },
    )
    add_options(p, SynthesizeJob, positional=("inputs",), skip=("job", "model", "decode_cpus", "tts__device"),
                flatten=("tts", "ray", "resources", "retries"), restate=restate)
    add_tts_model_flag(p, TTSOptions.model_fields["model"].description or "")
    add_job_output_flags(p)
    p.set_defaults(_handler=_cmd_synthesize)
