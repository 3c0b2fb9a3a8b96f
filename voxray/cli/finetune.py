"""``voxray finetune``: CTC fine-tuning on Ray Train, flags derived from :class:`FinetuneJob`."""

from __future__ import annotations

import argparse
from typing import Any

from voxray.cli.options import add_options, collect_options, print_json


def _cmd_finetune(args: argparse.Namespace) -> int:
    from voxray.finetune.config import FinetuneJob
    from voxray.finetune.train import run_finetune

    job = FinetuneJob(**collect_options(args))
    report = run_finetune(job)
    print_json({k: v for k, v in report.items() if k != "curve"})
    return 0


def register(subparsers: Any) -> None:
    from voxray.finetune.config import FinetuneJob

    parser = subparsers.add_parser(
        "finetune",
        help="CTC fine-tuning of a wav2vec2 model on Ray Train (manifests with path,text)",
        description="Fine-tune (or train from a config) a wav2vec2 CTC model; writes an HF model dir "
        "that `voxray transcribe --model OUT` loads. Rerunning the same command resumes.",
    )
    add_options(parser, FinetuneJob, skip=("job",))
    parser.set_defaults(_handler=_cmd_finetune)
