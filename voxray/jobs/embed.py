"""``voxray embed``: a corpus of audio -> one embedding per file in Parquet, on a Ray cluster.

The transcription job's pipeline with the embedder in the actors: list inputs -> skip ids already
written -> probe durations (headers only) -> sort by length -> decode + resample (CPU tasks) -> embedding actors
(GPU when present) -> Parquet shards (+ frame shards with ``--frames``) -> ``run.json``.

The vector width is fixed before any actor starts, from the model config and the options
(:func:`voxray.embed.config.embedding_layout`), so every shard has the same Arrow type:
``embedding`` is ``fixed_size_list<float32>[dim]``. ``embedding.json`` in the output directory
records the model, options and layout; a rerun with different options into the same directory is
refused instead of mixing incompatible vectors.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from typing import Any

import numpy as np
import pyarrow as pa

from voxray.embed.config import EmbeddingLayout, EmbedJob, EmbedOptions, embedding_layout
from voxray.errors import InputError
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

logger = logging.getLogger("voxray.embed")

META_NAME = "embedding.json"
# what must match for vectors of two runs to share one output directory
COMPATIBLE_KEYS = ("model", "revision", "layer", "layer_combine", "pooling", "normalize", "frames", "frames_dtype")


def embed_schema(dim: int) -> pa.Schema:
    """The Parquet schema of every shard: ``embedding`` is a fixed-size list of ``dim`` float32."""
    return pa.schema(
        [
            ("id", pa.string()),
            ("path", pa.string()),
            ("duration_s", pa.float64()),
            ("embedding", pa.list_(pa.float32(), dim)),
            ("layer", pa.string()),
            ("pooling", pa.string()),
            ("model", pa.string()),
            ("error", pa.string()),
            ("frames_file", pa.string()),
            ("frames_offset", pa.int64()),
            ("frames_len", pa.int64()),
        ]
    )


def embedding_column(vectors: list[np.ndarray | None], dim: int) -> pa.FixedSizeListArray:
    """Vectors (None for error rows) as one fixed-size-list array, without a Python loop per value."""
    values = np.zeros((len(vectors), dim), dtype=np.float32)
    nulls = np.ones(len(vectors), dtype=bool)
    for i, v in enumerate(vectors):
        if v is not None:
            values[i] = v
            nulls[i] = False
    return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), dim, mask=pa.array(nulls))


# ---------------------------------------------------------------- model stage (Ray actors)
class EmbedActor:
    """Holds one :class:`Embedder` (model loaded once per actor) for ``map_batches``."""

    def __init__(self, options: dict[str, Any], out: str, dim: int, stats: Any = None) -> None:
        from voxray.embed.runner import Embedder

        self.embedder = Embedder(EmbedOptions(**options))
        if self.embedder.dim != dim:  # the driver and the actor must agree on the schema
            raise RuntimeError(f"embedding width {self.embedder.dim} != planned {dim}")
        self.out, self.dim, self.stats = out, dim, stats
        self.schema = embed_schema(dim)

    def __call__(self, batch: dict[str, Any]) -> pa.Table:
        from voxray.embed.frames import write_frames_shard

        s = self.embedder.stats
        before = (s.frames, s.padded_frames, s.forward_passes)
        out = self.embedder(batch)
        if self.stats is not None:
            self.stats.add.remote(
                frames=s.frames - before[0], padded_frames=s.padded_frames - before[1],
                forward_passes=s.forward_passes - before[2],
            )
        n = len(out["id"])
        files: list[str | None] = [None] * n
        offsets: list[int | None] = [None] * n
        lengths: list[int | None] = [None] * n
        if self.embedder.options.frames:
            try:
                rel, offsets, lengths = write_frames_shard(self.out, out["frames"], self.embedder.options.frames_dtype)
                files = [rel if o is not None else None for o in offsets]
            except Exception as exc:  # the vectors are still good; the rows say why frames are missing
                logger.warning("writing a frames shard failed: %s", exc)
                out["error"] = [e or f"internal: frames not written: {exc}" for e in out["error"]]
        durations = [None if d is None or np.isnan(d) else float(d) for d in out["duration_s"]]
        return pa.table(
            {
                "id": [str(x) for x in out["id"]],
                "path": [str(x) for x in out["path"]],
                "duration_s": durations,
                "embedding": embedding_column(out["embedding"], self.dim),
                "layer": out["layer"],
                "pooling": out["pooling"],
                "model": out["model"],
                "error": out["error"],
                "frames_file": files,
                "frames_offset": offsets,
                "frames_len": lengths,
            },
            schema=self.schema,
        )


# ---------------------------------------------------------------- driver
def plan_layout(options: EmbedOptions) -> EmbeddingLayout:
    """The layout (and so the Arrow width) from the model's config: never assumed."""
    from transformers import AutoConfig

    from voxray.models import resolve_hf_model

    path = resolve_hf_model(options.model, options.revision)  # fails fast, with the fix-it message
    config = AutoConfig.from_pretrained(path)
    try:
        return embedding_layout(options, config.num_hidden_layers, config.hidden_size)
    except ValueError as exc:
        raise InputError(str(exc)) from exc


def _check_or_write_meta(out: str, options: EmbedOptions, layout: EmbeddingLayout) -> None:
    import fsspec

    meta = {
        "model": options.model,
        "options": options.model_dump(),
        "layer": options.layer_label,
        "layout": layout.as_dict(),
        "layout_doc": "vector.reshape(blocks, stats, hidden); stats = [mean, std] for mean+std; "
        "blocks = entries for concat/all, else 1; frames rows are blocks*hidden wide",
    }
    url = out.rstrip("/") + "/" + META_NAME
    fs, path = fsspec.core.url_to_fs(url)
    if fs.exists(path):
        with fs.open(path, "r") as fh:
            old = json.load(fh)
        theirs = {k: old.get("options", {}).get(k) for k in COMPATIBLE_KEYS}
        ours = {k: meta["options"][k] for k in COMPATIBLE_KEYS}
        if theirs != ours or old.get("layout", {}).get("dim") != layout.dim:
            diff = {k: (theirs[k], ours[k]) for k in COMPATIBLE_KEYS if theirs[k] != ours[k]}
            raise InputError(
                f"{out} already holds embeddings made with other options {diff or 'width'}; "
                f"use a new --out (vectors of different options cannot be compared)"
            )
        return
    with fs.open(path, "w") as fh:
        json.dump(meta, fh, indent=2)


def run_embed(job: EmbedJob) -> dict[str, Any]:
    """Run the job to completion and return the ``run.json`` report as a dict."""
    t0 = time.perf_counter()
    report = RunReport(job="embed", out=job.out, started_at=now_iso())
    ensure_dir(job.out)
    rows = expand_inputs(job.inputs)
    done = completed_ids(job.out)
    pending = [r for r in rows if r["id"] not in done]
    todo = pending[: job.limit] if job.limit else pending
    report.inputs = len(rows)
    report.skipped_already_done = len(rows) - len(pending)
    logger.info("%d inputs, %d already done, %d to embed", len(rows), report.skipped_already_done, len(todo))
    before = set(list_shards(job.out))
    counters: dict[str, float] = {}
    layout = None
    if todo:
        layout = plan_layout(job.embed)
        _check_or_write_meta(job.out, job.embed, layout)
        counters = _run_pipeline(job, todo, layout, report)
    report.wall_s = time.perf_counter() - t0
    new_shards = [s for s in list_shards(job.out) if s not in before]
    summarize(report, read_shards(new_shards, ["duration_s", "error"]), read_results(job.out, ["error"]))
    frames = counters.get("frames", 0)
    report.extra.update(
        model=job.embed.model,
        layer=job.embed.layer_label,
        pooling=job.embed.pooling,
        dim=layout.dim if layout else None,
        padding_waste=(counters.get("padded_frames", 0) / frames) if frames else 0.0,
        frames=frames,
        padded_frames=counters.get("padded_frames", 0),
        forward_passes=counters.get("forward_passes", 0),
    )
    write_report(job.out, report)
    return report.to_dict()


def _run_pipeline(
    job: EmbedJob, todo: list[dict[str, Any]], layout: EmbeddingLayout, report: RunReport
) -> dict[str, float]:
    import ray
    from ray.data import ActorPoolStrategy, DataContext

    from voxray.cluster import init_ray, plan_actors

    started = init_ray(job.ray)
    try:
        DataContext.get_current().enable_progress_bars = job.progress
        plan = plan_actors(job.resources)
        options = job.embed.model_dump()
        if options.get("threads") is None and not plan.uses_gpu:
            options["threads"] = plan.threads
        report.extra.update(actors=plan.actors, cpus_per_actor=plan.num_cpus, gpus_per_actor=plan.num_gpus)
        stats = stats_actor_cls().remote()
        # sorted by header duration in the driver: similar lengths meet in a batch (less padding)
        rows = [{"id": r["id"], "path": str(r["path"])} for r in sort_by_duration(todo)]
        ds = (
            ray.data.from_items(rows, override_num_blocks=max(1, min(len(rows) // 8 or 1, 1024)))
            .map_batches(decode_batch, batch_size=8, num_cpus=job.decode_cpus)
            .map_batches(
                EmbedActor,
                fn_constructor_kwargs={"options": options, "out": job.out, "dim": layout.dim, "stats": stats},
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
def cmd_embed(args: argparse.Namespace) -> int:
    from voxray.cli import collect_options, print_json

    job = EmbedJob(**collect_options(args))
    if not job.inputs:
        raise SystemExit("voxray embed: give at least one INPUT (file, directory, glob, URL or manifest)")
    report = run_embed(job)
    print_json(report)
    return 0 if report["processed"] == 0 or report["ok"] > 0 else 1
