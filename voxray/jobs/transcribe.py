"""``voxray transcribe``: a corpus of audio -> Parquet transcripts, on a Ray cluster.

Pipeline: list inputs -> skip ids already written -> probe durations (headers only) -> sort by
length -> decode + resample (CPU tasks, never in model actors) -> ASR actors (GPU when present)
-> Parquet shards -> ``run.json``. A row that fails carries an ``error``; the job goes on.
"""

from __future__ import annotations

import argparse
import logging
import time
from typing import Any

import numpy as np
import pyarrow as pa

from voxray.config import ASROptions, TranscribeJob
from voxray.jobs.audio_stages import decode_batch, sort_by_duration, stats_actor_cls
from voxray.jobs.common import (
    RunReport,
    completed_ids,
    ensure_dir,
    expand_inputs,
    list_shards,
    now_iso,
    read_results,
    read_shards,
    summarize,
    write_report,
)

logger = logging.getLogger("voxray.jobs.transcribe")

SPAN = pa.struct([("text", pa.string()), ("start", pa.float64()), ("end", pa.float64())])
SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("path", pa.string()),
        ("duration_s", pa.float64()),
        ("text", pa.string()),
        ("chunks", pa.list_(SPAN)),
        ("model", pa.string()),
        ("error", pa.string()),
    ]
)


# ---------------------------------------------------------------- model stage (Ray actors)
class TranscribeActor:
    """Holds one :class:`ASRRunner` (model loaded once per actor) for ``map_batches``."""

    def __init__(self, options: dict[str, Any], stats: Any = None) -> None:
        from voxray.asr import ASRRunner

        self.runner = ASRRunner(ASROptions(**options))
        self.stats = stats

    def __call__(self, batch: dict[str, Any]) -> pa.Table:
        s = self.runner.stats
        before = (s.frames, s.padded_frames, s.forward_passes)
        out = self.runner(batch)
        if self.stats is not None:
            self.stats.add.remote(
                frames=s.frames - before[0], padded_frames=s.padded_frames - before[1],
                forward_passes=s.forward_passes - before[2],
            )
        durations = [None if d is None or np.isnan(d) else float(d) for d in out["duration_s"]]
        return pa.table(
            {
                "id": [str(x) for x in out["id"]],
                "path": [str(x) for x in out["path"]],
                "duration_s": durations,
                "text": out["text"],
                "chunks": out["chunks"],
                "model": [self.runner.model_name] * len(durations),
                "error": out["error"],
            },
            schema=SCHEMA,
        )


# ---------------------------------------------------------------- driver
def run_transcribe(job: TranscribeJob) -> dict[str, Any]:
    """Run the job to completion and return the ``run.json`` report as a dict."""
    t0 = time.perf_counter()
    report = RunReport(job="transcribe", out=job.out, started_at=now_iso())
    ensure_dir(job.out)
    rows = expand_inputs(job.inputs)
    done = completed_ids(job.out)
    todo = [r for r in rows if r["id"] not in done]
    if job.limit:
        todo = todo[: job.limit]
    report.inputs = len(rows)
    report.skipped_already_done = len(rows) - len([r for r in rows if r["id"] not in done])
    logger.info("%d inputs, %d already done, %d to transcribe", len(rows), report.skipped_already_done, len(todo))
    before = set(list_shards(job.out))
    stats: dict[str, float] = {}
    if todo:
        from voxray.models import resolve_hf_model


        resolve_hf_model(job.asr.model, job.asr.revision)  # fail fast, with the fix-it message
        stats = _run_pipeline(job, todo, report)
    report.wall_s = time.perf_counter() - t0
    new_shards = [s for s in list_shards(job.out) if s not in before]
    summarize(report, read_shards(new_shards, ["duration_s", "error"]), read_results(job.out, ["error"]))
    frames = stats.get("frames", 0)
    report.extra.update(
        model=job.asr.model,
        padding_waste=(stats.get("padded_frames", 0) / frames) if frames else 0.0,
        frames=frames,
        padded_frames=stats.get("padded_frames", 0),
        forward_passes=stats.get("forward_passes", 0),
    )
    write_report(job.out, report)
    return report.to_dict()


def _run_pipeline(job: TranscribeJob, todo: list[dict[str, Any]], report: RunReport) -> dict[str, float]:
    import ray
    from ray.data import ActorPoolStrategy, DataContext

    from voxray.cluster import init_ray, plan_actors

    started = init_ray(job.ray)
    try:
        ctx = DataContext.get_current()
        ctx.enable_progress_bars = job.progress
        plan = plan_actors(job.resources)
        options = job.asr.model_dump()
        if options.get("threads") is None and not plan.uses_gpu:
            options["threads"] = plan.threads
        report.extra.update(actors=plan.actors, cpus_per_actor=plan.num_cpus, gpus_per_actor=plan.num_gpus)
        stats = stats_actor_cls().remote()
        rows = [{"id": r["id"], "path": str(r["path"])} for r in sort_by_duration(todo)]
        blocks = max(1, min(len(rows) // 8 or 1, 1024))
        ds = (
            ray.data.from_items(rows, override_num_blocks=blocks)
            .map_batches(decode_batch, batch_size=8, num_cpus=job.decode_cpus)
            .map_batches(
                TranscribeActor,
                fn_constructor_kwargs={"options": options, "stats": stats},
                compute=ActorPoolStrategy(size=plan.actors),
                batch_size=job.resources.rows_per_call,
                num_cpus=plan.num_cpus,
                num_gpus=plan.num_gpus,
                batch_format="numpy",
            )
        )
        ds.write_parquet(job.out)
        totals = ray.get(stats.get.remote())
        ray.kill(stats)
        return totals
    finally:
        if started:
            ray.shutdown()


# ---------------------------------------------------------------- CLI
def _cmd_transcribe(args: argparse.Namespace) -> int:
    from voxray.cli import collect_options, print_json

    opts = collect_options(args)
    job = TranscribeJob(**opts)
    if not job.inputs:
        raise SystemExit("voxray transcribe: give at least one INPUT (file, directory, glob, URL or manifest)")
    report = run_transcribe(job)
    print_json(report)
    return 0 if report["processed"] == 0 or report["ok"] > 0 else 1


def register(subparsers: Any) -> None:
    from voxray.cli import add_options

    p = subparsers.add_parser(
        "transcribe", help="transcribe audio files with a wav2vec2 CTC model (Ray Data job)",
        description="Transcribe INPUT... (files, dirs, globs, fsspec URLs, manifests) into Parquet shards in --out.",
    )
    add_options(p, TranscribeJob, positional=("inputs",), skip=("job",), flatten=("asr", "ray", "resources"))
    p.set_defaults(_handler=_cmd_transcribe)
