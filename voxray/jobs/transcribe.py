"""``voxray transcribe``: a corpus of audio -> Parquet transcripts, on a Ray cluster.

Pipeline: list inputs -> skip ids already written -> probe durations (headers only) -> sort by
length -> decode + resample (CPU tasks, never in model actors) -> ASR actors (GPU when present)
-> Parquet shards -> ``run.json``. A row that fails carries an ``error``; the job goes on.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

import numpy as np
import pyarrow as pa
from pydantic import Field

from voxray.asr.config import ASROptions
from voxray.config import JobOptions
from voxray.jobs.audio_stages import counter_deltas, run_audio_job

logger = logging.getLogger("voxray.jobs.transcribe")


class TranscribeJob(JobOptions):
    """``voxray transcribe``: Korean ASR over a corpus, Parquet out."""

    job: Literal["transcribe"] = "transcribe"
    asr: ASROptions = Field(default_factory=ASROptions)


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
            self.stats.add.remote(**counter_deltas(s, before))
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

    def prepare() -> dict[str, Any]:
        from voxray.model_sources import resolve_hf_model

        resolve_hf_model(job.asr.model, job.asr.revision)  # fail fast, with the fix-it message
        return {}

    return run_audio_job(job, "transcribe", job.asr, TranscribeActor, prepare, {"model": job.asr.model})
