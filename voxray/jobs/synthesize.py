"""``voxray synthesize``: a text manifest -> one audio file per row + Parquet manifest, on Ray.

Pipeline: read manifests (CSV/TSV/JSONL/Parquet with ``text`` and optional ``id``, ``voice``,
``lang``, ``speed``; or ``.txt``, one row per line) -> skip ids already committed -> longest text
first (so the pool's tail is short) -> an elastic pool of TTS actors (one utterance at a time: the
Kokoro ONNX export takes batch size 1, so throughput comes from actors) which write the audio files
themselves (audio never crosses the object store) -> shards committed as rows come back
(:mod:`voxray.jobs.runtime`) -> ``run.json``. A row that fails carries an ``error`` and no audio
(a row that kills its actor: one ``crash`` row); the job goes on. A rerun skips what is committed.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import re
import time
from typing import TYPE_CHECKING, Any, Literal

import pyarrow as pa
from pydantic import Field, model_validator

from voxray.config import JobOptions, ResourceOptions
from voxray.corpus import MANIFEST_EXTENSIONS, read_manifest
from voxray.errors import InputError, TextError, row_error
from voxray.jobs.runtime import ProgressFn, check_runner_device, map_stage
from voxray.jobs.tts_stages import TTSActor, forward_report, plan_tts_actors, report_forwards, tts_map_kwargs
from voxray.results import RunReport, now_iso, read_shards, write_report
from voxray.storage import ensure_dir, join
from voxray.tts.config import SAMPLE_RATE, AudioFormat, TTSOptions, check_speed

if TYPE_CHECKING:
    from voxray.tts.pipeline import TTSRequest

logger = logging.getLogger("voxray.jobs.synthesize")


def _tts_resources() -> ResourceOptions:
    # One onnxruntime thread per actor and one actor per core: Kokoro's intra-op scaling is
    # sublinear (measured: 2 threads ~1.5x of 1), so two 1-thread actors beat one 2-thread actor.
    # Half a CPU reserved per actor leaves room for the driver and Ray's own tasks on a small
    # machine. On GPUs an actor takes a quarter of one (tts_stages.TTS_GPUS_PER_ACTOR).
    return ResourceOptions(cpus_per_actor=0.5, threads_per_actor=1, rows_per_call=2)


class SynthesizeJob(JobOptions):
    """``voxray synthesize``: a text manifest (id, text[, voice, lang, speed]) -> audio files + Parquet."""

    job: Literal["synthesize"] = "synthesize"
    tts: TTSOptions = Field(default_factory=TTSOptions)
    resources: ResourceOptions = Field(default_factory=_tts_resources)
    format: AudioFormat = Field("wav", description="audio file format: wav | flac | ogg | mp3")
    audio_dir: str = Field("audio", description="folder under --out for the audio files")

    @model_validator(mode="after")
    def _one_device_option(self) -> SynthesizeJob:
        check_runner_device(self.tts.device)
        return self


SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("path", pa.string()),
        ("duration_s", pa.float64()),
        ("sample_rate", pa.int32()),
        ("phonemes", pa.string()),
        ("voice", pa.string()),
        ("lang", pa.string()),
        ("speed", pa.float64()),
        ("chars", pa.int64()),
        ("synth_s", pa.float64()),
        ("error", pa.string()),
    ]
)
ROW_FIELDS = ("id", "text", "voice", "lang", "speed")
TEXT_SCHEMA = pa.schema([(k, pa.string()) for k in ROW_FIELDS])
_UNSAFE = re.compile(r"[^\w.\-]+", re.UNICODE)


def safe_name(row_id: str, max_len: int = 80) -> str:
    """A file name for ``row_id`` that cannot leave its folder.

    Keeps letters (any script), digits, ``.``, ``-`` and ``_``; anything else (``/``, ``..``,
    spaces) becomes ``_``. When the id had to change, a short hash of it is appended so two ids
    that sanitise alike ("a/b", "a_b") still get different files.
    """
    base = _UNSAFE.sub("_", row_id).strip("._")[:max_len]
    if base != row_id or not base:
        digest = hashlib.sha1(row_id.encode("utf-8")).hexdigest()[:8]
        base = f"{base or 'row'}-{digest}"
    return base


def _cell(value: Any) -> str:
    """A manifest cell as a string ('' for missing/NaN), so every column has one Arrow type."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value)


def read_text_inputs(inputs: list[str]) -> list[dict[str, str]]:
    """Rows (id, text, voice, lang, speed as strings) from manifests and ``.txt`` files.

    Missing ids become ``row-000001``-style ids (per file); a repeated id gets ``-2``, ``-3``...
    in input order, so reruns over the same manifests map rows to the same ids.
    """
    rows: list[dict[str, str]] = []
    for item in inputs:
        lower = item.lower()
        if lower.endswith(MANIFEST_EXTENSIONS):
            records = read_manifest(item)
            if records and not any("text" in r for r in records):
                raise InputError(f"{item}: a synthesis manifest needs a 'text' column (found {sorted(records[0])})")
        elif lower.endswith(".txt"):
            import fsspec

            with fsspec.open(item, "r", encoding="utf-8") as fh:
                records = [{"text": line.rstrip("\n")} for line in fh if line.strip()]
            stem = os.path.splitext(os.path.basename(item))[0]
            records = [{**r, "id": f"{stem}-{n + 1:06d}"} for n, r in enumerate(records)]
        else:
            raise InputError(
                f"{item}: give a manifest ({', '.join(MANIFEST_EXTENSIONS)}) with a 'text' column, or a .txt file"
            )
        for n, rec in enumerate(records):
            row = {k: _cell(rec.get(k)) for k in ROW_FIELDS}
            row["id"] = row["id"].strip() or f"row-{n + 1:06d}"
            rows.append(row)
    seen: dict[str, int] = {}
    for row in rows:
        count = seen.get(row["id"], 0) + 1
        seen[row["id"]] = count
        if count > 1:
            row["id"] = f"{row['id']}-{count}"
    return rows


# ---------------------------------------------------------------- model stage (Ray actors)
class SynthesizeActor(TTSActor):
    """Holds one :class:`TTSPipeline` (model loaded once per actor); writes each row's audio file."""

    def __init__(self, options: dict[str, Any], audio_root: str, fmt: str = "wav", state: Any = None,
                 device: str = "cpu", crashes_per_input: int = 2) -> None:
        super().__init__(state=state, device=device, crashes_per_input=crashes_per_input)
        from voxray.tts.pipeline import TTSPipeline

        self.pipeline = TTSPipeline(TTSOptions(**{**options, "device": self.device}))
        self.audio_root = audio_root
        self.fmt = fmt

    def _request(self, row: dict[str, Any], out: dict[str, Any]) -> TTSRequest:
        """The row's utterance, its cells checked (raises on an unusable row)."""
        from voxray.tts.pipeline import TTSRequest

        text = _cell(row.get("text"))
        speed_text = _cell(row.get("speed")).strip()
        out["speed"] = check_speed(speed_text) if speed_text else self.pipeline.options.speed
        if not text.strip():
            raise TextError("text is empty: give the row some words to speak")
        return TTSRequest(text, voice=out["voice"], lang=out["lang"], speed=out["speed"])

    def _write(self, out: dict[str, Any], result: Any) -> None:
        from voxray.audio import write_audio

        path = join(self.audio_root, f"{safe_name(out['id'])}.{self.fmt}")
        write_audio(path, result.audio, result.sample_rate, self.fmt)
        out.update(path=path, duration_s=result.duration_s, phonemes=result.phonemes)

    def _fail(self, out: dict[str, Any], exc: BaseException) -> None:
        out["error"] = row_error(exc)
        logger.info("row %s failed: %s", out["id"], out["error"])

    def synthesize_row(self, row: dict[str, Any]) -> dict[str, Any]:
        """One row -> its output record; every failure becomes the record's ``error``."""
        out = self._record(row)
        t0 = time.perf_counter()
        try:
            req = self._request(row, out)
            self._write(out, self.pipeline.synthesize(req.text, voice=req.voice, lang=req.lang, speed=req.speed))
        except Exception as exc:  # per-row: recorded, never raised
            self._fail(out, exc)
        out["synth_s"] = time.perf_counter() - t0
        return out

    def synthesize_rows(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Many rows through shared padded forwards (a batching runner: torch, voxray's export).

        The chunks of all rows are length-sorted and cut by ``max_batch_tokens``/``max_batch_items``
        (:func:`voxray.tts.batching.plan_batches`); a failing forward is retried chunk by chunk, so a
        bad row fails alone. ``synth_s`` is the call's time shared out by characters.
        """
        from voxray.errors import VoxrayError

        t0 = time.perf_counter()
        outs = [self._record(row) for row in rows]
        requests: list[tuple[dict[str, Any], TTSRequest]] = []
        for row, out in zip(rows, outs, strict=True):
            try:
                requests.append((out, self._request(row, out)))
            except Exception as exc:
                self._fail(out, exc)
        results = self.pipeline.synthesize_batch([req for _, req in requests])
        for (out, _), result in zip(requests, results, strict=True):
            try:
                if isinstance(result, VoxrayError):
                    raise result
                self._write(out, result)
            except Exception as exc:
                self._fail(out, exc)
        share = (time.perf_counter() - t0) / max(1, sum(o["chars"] for o in outs))
        for out in outs:
            out["synth_s"] = share * out["chars"]
        return outs

    def _record(self, row: dict[str, Any]) -> dict[str, Any]:
        opts = self.pipeline.options
        return {
            "id": str(row["id"]), "path": None, "duration_s": None, "sample_rate": SAMPLE_RATE,
            "phonemes": None, "voice": _cell(row.get("voice")).strip() or opts.voice,
            "lang": _cell(row.get("lang")).strip() or opts.lang, "speed": None, "chars": len(_cell(row.get("text"))),
            "synth_s": None, "error": None,
        }

    @staticmethod
    def _rows(batch: dict[str, Any]) -> list[dict[str, Any]]:
        return [{k: batch[k][i] for k in ROW_FIELDS if k in batch} for i in range(len(batch["id"]))]

    def process(self, batch: dict[str, Any]) -> pa.Table:
        rows = self._rows(batch)
        before = self.pipeline.stats.as_dict()
        if len(rows) > 1 and getattr(self.pipeline.runner, "batches", False):
            out = self.synthesize_rows(rows)
        else:
            out = [self.synthesize_row(row) for row in rows]
        report_forwards(self.state, self.pipeline, before)
        return pa.Table.from_pylist(out, schema=SCHEMA)

    def crash_rows(self, batch: dict[str, Any], message: str) -> pa.Table:
        return pa.Table.from_pylist([{**self._record(r), "error": message} for r in self._rows(batch)], schema=SCHEMA)


# ---------------------------------------------------------------- driver
def run_synthesize(
    job: SynthesizeJob, progress: ProgressFn | None = None, actor_cls: type[SynthesizeActor] = SynthesizeActor
) -> dict[str, Any]:
    """Run the job to completion and return the ``run.json`` report as a dict (``progress`` and
    ``actor_cls`` as in :func:`voxray.jobs.transcribe.run_transcribe`)."""
    import pyarrow.compute as pc

    from voxray.cluster import cluster_view
    from voxray.jobs.runtime import ray_session, run_pipeline
    from voxray.results import RunCounts, fill_report, scan_output

    t0 = time.perf_counter()
    out = job.out if "://" in job.out else os.path.abspath(job.out)
    job = job.model_copy(update={"out": out})
    report = RunReport(job="synthesize", out=out, started_at=now_iso())
    ensure_dir(out)
    if not job.inputs:
        raise InputError("give at least one manifest (CSV/TSV/JSONL/Parquet with a 'text' column) or .txt file")
    rows = pa.Table.from_pylist(read_text_inputs(job.inputs), schema=TEXT_SCHEMA)
    scan = scan_output(out, job.retry_errors)
    pending = rows.filter(pc.invert(pc.is_in(rows.column("id"), value_set=scan.done_ids)))
    todo = pending.slice(0, job.limit) if job.limit else pending
    report.inputs = rows.num_rows
    report.skipped_already_done = rows.num_rows - pending.num_rows
    logger.info("%d rows, %d already done, %d to synthesize", rows.num_rows, report.skipped_already_done, todo.num_rows)
    report.extra.update(quarantined=scan.quarantined)
    counts, summary, chars, synth = RunCounts(), {}, 0, 0.0
    if todo.num_rows:
        # longest text first: the pool's tail is short
        todo = todo.take(pc.array_sort_indices(pc.utf8_length(todo.column("text")), order="descending"))
        with ray_session(job) as local:
            view = cluster_view(local)
            plan, options = plan_tts_actors(job.resources, job.tts, todo.num_rows, report, view)
            kwargs = {"options": options, "audio_root": join(out, job.audio_dir), "fmt": job.format,
                      "device": plan.device, "crashes_per_input": job.retries.crashes_per_input}

            def build(ds: Any, state: Any) -> Any:
                return map_stage(ds, actor_cls, fn_constructor_kwargs={**kwargs, "state": state},
                                 **tts_map_kwargs(plan, job.retries, job.resources.rows_per_call))

            result = run_pipeline(name="synthesize", job=job, todo=todo, schema=SCHEMA, plan=plan, view=view,
                                  build=build, report=report, progress=progress,
                                  rows_per_block=max(job.resources.rows_per_call, math.ceil(todo.num_rows / 1000)))
            counts, summary = result.counts, result.state
            for shard in result.writer.shards:
                t = read_shards([shard], ["chars", "synth_s"])
                chars += sum(t.column("chars").to_pylist())
                synth += sum(x or 0.0 for x in t.column("synth_s").to_pylist())
    report.wall_s = time.perf_counter() - t0
    fill_report(report, counts, scan_output(out) if counts.rows or job.retry_errors else scan)
    report.extra.update(
        model=job.tts.model,
        format=job.format,
        audio_dir=join(out, job.audio_dir),
        chars=chars,
        chars_per_s=chars / report.wall_s if report.wall_s > 0 else 0.0,
        real_time_factor=report.wall_s / report.audio_s if report.audio_s > 0 else 0.0,
        actor_real_time_factor=synth / report.audio_s if report.audio_s > 0 else 0.0,
        actors=len(summary.get("actors", {})),
        crash_rows=counts.by_kind.get("crash", 0),
        backend=job.tts.backend,
        **forward_report(summary.get("counters", {})),
    )
    write_report(out, report)
    return report.to_dict()
