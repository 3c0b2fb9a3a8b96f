"""``voxray embed``: a corpus of audio -> one embedding per file in Parquet, on a Ray cluster.

The transcription job's pipeline (:mod:`voxray.jobs.audio_stages`) with the embedder in the actors:
probe and decode in CPU tasks -> an elastic pool of embedding actors on the job's device -> shards
committed as rows come back (+ frame shards, written by the actors, with ``--frames``) -> ``run.json``.

The vector width is fixed before any actor starts, from the model config and the options
(:func:`voxray.embed.config.embedding_layout`), so every shard has the same Arrow type:
``embedding`` is ``fixed_size_list<float32>[dim]``. ``embedding.json`` in the output directory
records the model, options and layout; a rerun with different options into the same directory is
refused instead of mixing incompatible vectors.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Literal

import numpy as np
import pyarrow as pa
from pydantic import Field, model_validator

from voxray.config import JobOptions
from voxray.embed.config import EmbeddingLayout, EmbedOptions, embedding_layout
from voxray.errors import InputError
from voxray.jobs.audio_stages import counter_deltas, null_table, result_columns, run_audio_job
from voxray.jobs.runtime import ModelActor, ProgressFn, check_runner_device
from voxray.storage import fs_join

logger = logging.getLogger("voxray.embed")

META_NAME = "embedding.json"
# what must match for vectors of two runs to share one output directory
COMPATIBLE_KEYS = ("model", "revision", "layer", "layer_combine", "pooling", "normalize", "frames", "frames_dtype")


class EmbedJob(JobOptions):
    """``voxray embed``: one pooled vector per input file, Parquet out (optionally frame features)."""

    job: Literal["embed"] = "embed"
    embed: EmbedOptions = Field(default_factory=EmbedOptions)

    @model_validator(mode="after")
    def _one_device_option(self) -> EmbedJob:
        check_runner_device(self.embed.device)
        return self


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
class EmbedActor(ModelActor):
    """Holds one :class:`Embedder` (model loaded once per actor) for ``map_batches``."""

    def __init__(self, options: dict[str, Any], out: str, dim: int, state: Any = None, device: str = "cpu",
                 crashes_per_input: int = 2) -> None:
        super().__init__(state=state, device=device, crashes_per_input=crashes_per_input)
        from voxray.embed.runner import Embedder

        self.embedder = Embedder(EmbedOptions(**{**options, "device": self.device}))
        if self.embedder.dim != dim:  # the driver and the actor must agree on the schema
            raise RuntimeError(f"embedding width {self.embedder.dim} != planned {dim}")
        self.out, self.dim = out, dim
        self.schema = embed_schema(dim)

    def process(self, batch: dict[str, Any]) -> pa.Table:
        from voxray.embed.frames import write_frames_shard

        s = self.embedder.stats
        before = (s.frames, s.padded_frames, s.forward_passes)
        out = self.embedder(batch)
        if self.state is not None:
            self.state.add.remote(**counter_deltas(s, before))
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
                out["error"] = [e or f"io: frames not written: {exc}" for e in out["error"]]
        return pa.table(
            {
                **result_columns(out),
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

    def crash_rows(self, batch: dict[str, Any], message: str) -> pa.Table:
        opts = self.embedder.options
        return null_table(self.schema, batch, message, layer=opts.layer_label, pooling=opts.pooling,
                          model=opts.model)


# ---------------------------------------------------------------- driver
def plan_layout(options: EmbedOptions) -> EmbeddingLayout:
    """The layout (and so the Arrow width) from the model's config: never assumed."""
    from transformers import AutoConfig

    from voxray.model_sources import resolve_hf_model

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
    url = fs_join(out, META_NAME)
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


def run_embed(
    job: EmbedJob, progress: ProgressFn | None = None, actor_cls: type[EmbedActor] = EmbedActor
) -> dict[str, Any]:
    """Run the job to completion and return the ``run.json`` report as a dict (``progress`` and
    ``actor_cls`` as in :func:`voxray.jobs.transcribe.run_transcribe`)."""
    extra: dict[str, Any] = {
        "model": job.embed.model, "layer": job.embed.layer_label, "pooling": job.embed.pooling, "dim": None,
    }

    def prepare() -> dict[str, Any]:
        layout = plan_layout(job.embed)
        _check_or_write_meta(job.out, job.embed, layout)
        extra["dim"] = layout.dim  # reported in run.json (read after prepare runs)
        return {"out": job.out, "dim": layout.dim}

    return run_audio_job(job, "embed", job.embed, actor_cls, lambda: embed_schema(extra["dim"]), prepare, extra,
                         progress=progress)
