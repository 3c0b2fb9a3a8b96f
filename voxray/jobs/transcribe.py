"""``voxray transcribe``: a corpus of audio -> Parquet transcripts, on a Ray cluster.

Pipeline (:mod:`voxray.jobs.audio_stages`): list inputs -> skip ids already committed -> probe
durations in tasks and sort each block -> decode + resample (CPU tasks, never in model actors) ->
an elastic pool of ASR actors on the job's device -> shards committed as rows come back ->
``run.json``. A row that fails carries an ``error`` (a poison input: one ``crash`` row); the job
goes on.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

import pyarrow as pa
from pydantic import Field, model_validator

from voxray.asr.config import ASROptions
from voxray.config import JobOptions
from voxray.jobs.audio_stages import counter_deltas, null_table, result_columns, run_audio_job
from voxray.jobs.runtime import ModelActor, ProgressFn, check_runner_device

logger = logging.getLogger("voxray.jobs.transcribe")


class TranscribeJob(JobOptions):
    """``voxray transcribe``: Korean ASR over a corpus, Parquet out."""

    job: Literal["transcribe"] = "transcribe"
    asr: ASROptions = Field(default_factory=ASROptions)

    @model_validator(mode="after")
    def _one_device_option(self) -> TranscribeJob:
        check_runner_device(self.asr.device)
        return self


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
class TranscribeActor(ModelActor):
    """Holds one :class:`ASRRunner` (model loaded once per actor) for ``map_batches``."""

    def __init__(self, options: dict[str, Any], state: Any = None, device: str = "cpu",
                 crashes_per_input: int = 2) -> None:
        super().__init__(state=state, device=device, crashes_per_input=crashes_per_input)
        from voxray.asr import ASRRunner

        self.runner = ASRRunner(ASROptions(**{**options, "device": self.device}))

    def process(self, batch: dict[str, Any]) -> pa.Table:
        s = self.runner.stats
        before = (s.frames, s.padded_frames, s.forward_passes)
        out = self.runner(batch)
        if self.state is not None:
            self.state.add.remote(**counter_deltas(s, before))
        cols = result_columns(out)
        n = len(cols["id"])
        return pa.table(
            {**cols, "text": out["text"], "chunks": out["chunks"], "model": [self.runner.model_name] * n,
             "error": out["error"]},
            schema=SCHEMA,
        )

    def crash_rows(self, batch: dict[str, Any], message: str) -> pa.Table:
        return null_table(SCHEMA, batch, message, model=self.runner.model_name)


# ---------------------------------------------------------------- driver
def run_transcribe(
    job: TranscribeJob, progress: ProgressFn | None = None, actor_cls: type[TranscribeActor] = TranscribeActor
) -> dict[str, Any]:
    """Run the job to completion and return the ``run.json`` report as a dict.

    ``progress`` receives :class:`~voxray.jobs.runtime.JobProgress` updates (the CLI draws them);
    ``actor_cls`` is the model stage (a subclass may change how it runs, e.g. in tests).
    """

    def prepare() -> dict[str, Any]:
        from voxray.model_sources import resolve_hf_model

        resolve_hf_model(job.asr.model, job.asr.revision)  # fail fast, with the fix-it message
        return {}

    return run_audio_job(job, "transcribe", job.asr, actor_cls, SCHEMA, prepare, {"model": job.asr.model},
                         progress=progress)
