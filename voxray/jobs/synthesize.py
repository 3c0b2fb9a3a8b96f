"""``voxray synthesize``: a text manifest -> one audio file per row + Parquet manifest, on Ray.

Pipeline: read manifests (CSV/TSV/JSONL/Parquet with ``text`` and optional ``id``, ``voice``,
``lang``, ``speed``; or ``.txt``, one row per line) -> skip ids already written -> longest text
first (so the pool's tail is short) -> TTS actors (one utterance at a time: the Kokoro ONNX export
takes batch size 1, so throughput comes from actors) which write the audio files themselves (audio
never crosses the object store) -> Parquet shards -> ``run.json``. A row that fails carries an
``error`` and no audio; the job goes on. A rerun skips what is already written.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import math
import os
import re
import time
from typing import Any

import pyarrow as pa

from voxray.cluster import ActorPlan
from voxray.config import ResourceOptions
from voxray.errors import InputError, TextError, row_error
from voxray.jobs.common import (
    MANIFEST_EXTENSIONS,
    RunReport,
    completed_ids,
    ensure_dir,
    list_shards,
    now_iso,
    read_manifest,
    read_results,
    read_shards,
    summarize,
    write_report,
)
from voxray.tts.config import SAMPLE_RATE, SynthesizeJob, TTSOptions

logger = logging.getLogger("voxray.jobs.synthesize")

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


def _join(base: str, *parts: str) -> str:
    if "://" in base:
        return "/".join([base.rstrip("/"), *parts])
    return os.path.join(base, *parts)


# ---------------------------------------------------------------- model stage (Ray actors)
class SynthesizeActor:
    """Holds one :class:`TTSPipeline` (model loaded once per actor); writes each row's audio file."""

    def __init__(self, options: dict[str, Any], audio_root: str, fmt: str = "wav") -> None:
        from voxray.tts.pipeline import TTSPipeline

        self.pipeline = TTSPipeline(TTSOptions(**options))
        self.audio_root = audio_root
        self.fmt = fmt

    def synthesize_row(self, row: dict[str, Any]) -> dict[str, Any]:
        """One row -> its output record; every failure becomes the record's ``error``."""
        from voxray.audio import write_audio

        opts = self.pipeline.options
        text = _cell(row.get("text"))
        out: dict[str, Any] = {
            "id": str(row["id"]), "path": None, "duration_s": None, "sample_rate": SAMPLE_RATE,
            "phonemes": None, "voice": _cell(row.get("voice")).strip() or opts.voice,
            "lang": _cell(row.get("lang")).strip() or opts.lang, "speed": None, "chars": len(text),
            "synth_s": None, "error": None,
        }
        t0 = time.perf_counter()
        try:
            speed_text = _cell(row.get("speed")).strip()
            try:
                out["speed"] = float(speed_text) if speed_text else opts.speed
            except ValueError as exc:
                raise InputError(f"speed must be a number between 0.5 and 2.0, got {speed_text!r}") from exc
            if not text.strip():
                raise TextError("text is empty: give the row some words to speak")
            result = self.pipeline.synthesize(text, voice=out["voice"], lang=out["lang"], speed=out["speed"])
            path = _join(self.audio_root, f"{safe_name(out['id'])}.{self.fmt}")
            write_audio(path, result.audio, result.sample_rate, self.fmt)
            out.update(path=path, duration_s=result.duration_s, phonemes=result.phonemes)
        except Exception as exc:  # per-row: recorded, never raised
            out["error"] = row_error(exc)
            logger.info("row %s failed: %s", out["id"], out["error"])
        out["synth_s"] = time.perf_counter() - t0
        return out

    def __call__(self, batch: dict[str, Any]) -> pa.Table:
        n = len(batch["id"])
        rows = [{k: batch[k][i] for k in ROW_FIELDS if k in batch} for i in range(n)]
        records = [self.synthesize_row(row) for row in rows]
        return pa.Table.from_pylist(records, schema=SCHEMA)


# ---------------------------------------------------------------- driver
def run_synthesize(job: SynthesizeJob) -> dict[str, Any]:
    """Run the job to completion and return the ``run.json`` report as a dict."""
    t0 = time.perf_counter()
    out = job.out if "://" in job.out else os.path.abspath(job.out)
    report = RunReport(job="synthesize", out=out, started_at=now_iso())
    ensure_dir(out)
    if not job.inputs:
        raise InputError("give at least one manifest (CSV/TSV/JSONL/Parquet with a 'text' column) or .txt file")
    rows = read_text_inputs(job.inputs)
    done = completed_ids(out)
    pending = [r for r in rows if r["id"] not in done]
    todo = pending[: job.limit] if job.limit else pending
    report.inputs = len(rows)
    report.skipped_already_done = len(rows) - len(pending)
    logger.info("%d rows, %d already done, %d to synthesize", len(rows), report.skipped_already_done, len(todo))
    before = set(list_shards(out))
    if todo:
        _run_pipeline(job, out, todo, report)
    report.wall_s = time.perf_counter() - t0
    new_shards = [s for s in list_shards(out) if s not in before]
    new_rows = read_shards(new_shards, ["duration_s", "error", "chars", "synth_s"])
    summarize(report, new_rows, read_results(out, ["error"]))
    chars = sum(new_rows.column("chars").to_pylist()) if new_rows.num_rows else 0
    synth = sum(s or 0.0 for s in new_rows.column("synth_s").to_pylist()) if new_rows.num_rows else 0.0
    report.extra.update(
        model=job.tts.model,
        format=job.format,
        audio_dir=_join(out, job.audio_dir),
        chars=chars,
        chars_per_s=chars / report.wall_s if report.wall_s > 0 else 0.0,
        real_time_factor=report.wall_s / report.audio_s if report.audio_s > 0 else 0.0,
        actor_real_time_factor=synth / report.audio_s if report.audio_s > 0 else 0.0,
    )
    write_report(out, report)
    return report.to_dict()


def plan_tts_actors(
    resources: ResourceOptions, tts: TTSOptions, rows: int, report: RunReport
) -> tuple[ActorPlan, int, dict[str, Any]]:
    """Size the TTS actor pool (shared by the synthesis and audiobook jobs).

    No decode stage competes for CPUs in TTS jobs, so without GPUs it is one single-threaded actor
    per core, never more than there are rows. The embedded model cache is built here, once, not
    racing in every actor. Returns the plan, the actor count and the actors' TTS options.
    """
    import ray

    from voxray.cluster import plan_actors

    cluster = ray.cluster_resources()
    plan = plan_actors(resources, cluster)
    actors = plan.actors
    if resources.actors is None and not plan.uses_gpu:
        actors = max(1, int(float(cluster.get("CPU", 1)) // max(1.0, plan.num_cpus)))
    actors = min(actors, rows)
    options = tts.model_dump()
    if options.get("threads") is None and not plan.uses_gpu:
        options["threads"] = plan.threads
    if tts.model == "embedded":
        from voxray.tts.assets import resolve_model

        resolve_model("embedded")
    report.extra.update(
        actors=actors, cpus_per_actor=plan.num_cpus, gpus_per_actor=plan.num_gpus, threads=options["threads"]
    )
    return plan, actors, options


def _run_pipeline(job: SynthesizeJob, out: str, todo: list[dict[str, str]], report: RunReport) -> None:
    import ray
    from ray.data import ActorPoolStrategy, DataContext

    from voxray.cluster import init_ray

    started = init_ray(job.ray)
    try:
        ctx = DataContext.get_current()
        ctx.enable_progress_bars = job.progress
        plan, actors, options = plan_tts_actors(job.resources, job.tts, len(todo), report)
        todo = sorted(todo, key=lambda r: len(r["text"]), reverse=True)
        batch = job.resources.rows_per_call
        blocks = max(1, min(math.ceil(len(todo) / batch), 1000))
        ds = ray.data.from_items(todo, override_num_blocks=blocks).map_batches(
            SynthesizeActor,
            fn_constructor_kwargs={
                "options": options, "audio_root": _join(out, job.audio_dir), "fmt": job.format,
            },
            compute=ActorPoolStrategy(size=actors, max_tasks_in_flight_per_actor=1),
            batch_size=batch,
            num_cpus=plan.num_cpus,
            num_gpus=plan.num_gpus,
            batch_format="numpy",
        )
        ds.write_parquet(out)
    finally:
        if started:
            ray.shutdown()


# ---------------------------------------------------------------- CLI
def _cmd_synthesize(args: argparse.Namespace) -> int:
    from voxray.cli import collect_options, print_json

    job = SynthesizeJob(**collect_options(args))  # cli.main reports invalid options
    if not job.inputs:
        raise SystemExit("voxray synthesize: give at least one MANIFEST (CSV/JSONL/Parquet with 'text') or .txt")
    report = run_synthesize(job)
    print_json(report)
    print(f"audio in {report['extra']['audio_dir']}, manifest shards and run.json in {report['out']}")
    return 0 if report["processed"] == 0 or report["ok"] > 0 else 1


def register(subparsers: Any) -> None:
    from voxray.cli import add_options, restate_defaults

    p = subparsers.add_parser(
        "synthesize",
        help="synthesize a text manifest into audio files with Kokoro (Ray Data job)",
        description="Synthesize INPUTS (CSV/TSV/JSONL/Parquet manifests with id, text[, voice, lang, speed], "
        "or .txt files with one utterance per line) into audio files plus Parquet shards in --out.",
    )
    add_options(p, SynthesizeJob, positional=("inputs",), skip=("job", "model", "decode_cpus"),
                flatten=("tts", "ray", "resources"))
    p.add_argument("--tts-model", dest="tts__model", default=None,
                   help=TTSOptions.model_fields["model"].description)
    restate_defaults(  # shared descriptions speak of audio inputs and ASR defaults
        p, "resources", SynthesizeJob.model_fields["resources"].default_factory(), "TTS",  # type: ignore[misc]
        {
            "inputs": "manifests (CSV/TSV/JSONL/Parquet with 'text'; optional id, voice, lang, speed) or .txt",
            "resources__actors": "model actors (default for TTS: one per GPU, else one single-threaded actor per CPU)",
        },
    )
    p.set_defaults(_handler=_cmd_synthesize)
