"""``voxray audiobook BOOK --out DIR``: a chaptered audiobook from a .txt/.md/.epub (Ray Data job).

``--dry-run`` prints the chapter/chunk plan and synthesizes nothing.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from voxray.cli.options import HelpRestatement, add_job_output_flags, add_options, collect_options


def _cmd_audiobook(args: argparse.Namespace) -> int:
    from voxray.jobs.audiobook import AudiobookJob

    console = args._console_obj
    opts = collect_options(args)
    dry_run = bool(opts.pop("dry_run", False))
    if dry_run and "out" not in opts:
        opts["out"] = "."
    job = AudiobookJob(**opts)  # cli.main reports invalid options
    if dry_run:
        from voxray.audiobook.book import plan_chunks, read_book
        from voxray.jobs.audiobook import describe

        book = read_book(job.book, title=job.title, author=job.author)
        plan = describe(book, plan_chunks(book, job.chunk_chars))
        console.result(plan, json.dumps(plan, indent=2, ensure_ascii=False))
        return 0
    from voxray.jobs.audiobook import run_audiobook

    if args._quiet:
        job = job.model_copy(update={"progress": False})
    report = run_audiobook(job)
    extra = report["extra"]
    summary = {k: extra.get(k) for k in ("title", "author", "characters", "chapters", "chunks", "duration_s",
                                          "wall_s", "real_time_factor", "chars_per_s", "complete", "m4b")}
    summary["errors"] = extra.get("failed_chunks", [])
    if extra.get("complete"):
        line = f"audiobook in {report['out']} ({len(extra.get('chapter_files', []))} chapter files; run.json there)"
    else:
        line = f"{extra['chunks_pending']} chunks still to synthesize: rerun the same command to finish"
    console.result(summary, json.dumps(summary, indent=2, ensure_ascii=False, default=str) + "\n" + line)
    return 0


def register(subparsers: Any) -> None:
    from voxray.jobs.audiobook import AudiobookJob

    p = subparsers.add_parser(
        "audiobook",
        help="turn a book (.txt/.md/.epub) into a chaptered audiobook with Kokoro (Ray Data job)",
        description="Read BOOK, synthesize its chunks in parallel on Ray, and write per-chapter audio, an .m4b "
        "with chapter markers, chapters.json, subtitles.srt and run.json into --out. Rerun to resume.",
    )
    p.add_argument("book", help=AudiobookJob.model_fields["book"].description)
    restate = HelpRestatement(  # the shared resource descriptions state the ASR defaults
        "resources", AudiobookJob.model_fields["resources"].default_factory(), "audiobooks",  # type: ignore[call-arg,misc]
        {"resources__actors": "a fixed pool of this many Kokoro actors (default: elastic, a quarter GPU each on "
         "GPUs, else one single-threaded actor per CPU)",
         "resources__gpus_per_actor": "GPUs per Kokoro actor on a GPU job (default for audiobooks: 0.25)"},
    )
    add_options(p, AudiobookJob, skip=("job", "book", "tts__device"), flatten=("tts", "ray", "resources", "retries"),
                restate=restate)
    p.add_argument("--dry-run", dest="dry_run", action="store_true", default=None,
                   help="print the chapters and chunk plan, synthesize nothing")
    add_job_output_flags(p)
    p.set_defaults(_handler=_cmd_audiobook)
