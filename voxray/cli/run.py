"""``voxray run SPEC``: run a YAML job spec (``jobs/*.yaml``), the same path KubeRay RayJobs take.

stdout carries the run report as JSON and nothing else (the RayJob's logs, or a script, parse it);
progress and messages go to stderr.
"""

from __future__ import annotations

import argparse
from typing import Any


def _cmd_run(args: argparse.Namespace) -> int:
    from voxray.jobs.specs import parse_spec, run_spec

    console = args._console_obj
    console.json_mode = True
    job = parse_spec(args.spec, overrides={"out": args.out} if args.out else {})
    report = run_spec(args.spec, overrides={"out": args.out} if args.out else {},
                      progress=console.progress_fn(getattr(job, "progress", None)))
    console.result(report, "")
    return 0


def register(subparsers: Any) -> None:
    from voxray.cli.options import add_job_output_flags

    run = subparsers.add_parser("run", help="run a job spec (jobs/*.yaml)")
    run.add_argument("spec", help="YAML job spec")
    run.add_argument("--out", help="override the spec's output directory")
    add_job_output_flags(run)
    run.set_defaults(_handler=_cmd_run)
