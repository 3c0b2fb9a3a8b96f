"""``voxray run SPEC``: run a YAML job spec (``jobs/*.yaml``), the same path KubeRay RayJobs take."""

from __future__ import annotations

import argparse
from typing import Any

from voxray.cli.options import print_json


def _cmd_run(args: argparse.Namespace) -> int:
    from voxray.jobs.specs import run_spec

    report = run_spec(args.spec, overrides={"out": args.out} if args.out else {})
    print_json(report)
    return 0


def register(subparsers: Any) -> None:
    run = subparsers.add_parser("run", help="run a job spec (jobs/*.yaml)")
    run.add_argument("spec", help="YAML job spec")
    run.add_argument("--out", help="override the spec's output directory")
    run.set_defaults(_handler=_cmd_run)
