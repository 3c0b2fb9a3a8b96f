"""`make demo`: the main jobs end to end, fully offline, on the embedded defaults.

1. Synthesis job: the bundled English + Korean sample manifest and 12 Korean round-trip sentences
   (``samples/ko/sentences.csv``) with the embedded Kokoro-82M int8 model.
2. Transcription job: the Korean Kokoro clips with the shipped demo model ``models/ko-synthetic-ctc``
   (or ``$ASR_MODEL``: a local dir, or a hub id where the hub is reachable); CER against the text
   that was synthesised. Then the committed espeak-ng clips of the same sentences (two voices the
   model never heard), with their own CER; when the model was not trained on Kokoro speech (its
   ``training_data.json`` says so) the demo says so next to the Kokoro CER.
3. Embedding job: one vector per clip from the same encoder; how often a clip's nearest
   neighbour (cosine) is a clip of the same voice.
4. A report: every stage's items, audio seconds, wall time and throughput, and the CERs.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
import sys
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "demo-out")
SHIPPED_MODEL = os.path.join(ROOT, "models", "ko-synthetic-ctc")


def trained_on_kokoro(model: str) -> bool | None:
    """What the shipped model's ``training_data.json`` says (None: unknown, e.g. a hub model)."""
    path = os.path.join(model, "training_data.json")
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as fh:
        return "kokoro" in json.load(fh).get("sources", [])


def stage_row(name: str, report: dict[str, Any], unit: str = "audio s/s") -> dict[str, Any]:
    wall = float(report["wall_s"])
    audio = float(report.get("audio_s", 0.0))
    return {"stage": name, "items": int(report["ok"]), "audio_s": audio, "wall_s": wall,
            "throughput": audio / wall if wall else 0.0, "unit": unit}


def transcribe(model: str, paths: list[str], out: str) -> tuple[dict[str, Any], dict[str, str]]:
    from voxray.asr.config import ASROptions
    from voxray.jobs.transcribe import TranscribeJob, run_transcribe
    from voxray.results import read_results

    report = run_transcribe(TranscribeJob(inputs=paths, out=out, progress=False, asr=ASROptions(model=model)))
    texts: dict[str, str] = {}
    for r in read_results(out).to_pylist():
        texts[r["path"]] = "" if r["error"] else r["text"] or ""
        if r["error"]:
            print(f"  ERROR {r['path']}: {r['error']}")
    return report, texts


def main() -> int:
    import numpy as np
    import ray

    from voxray.cluster import init_ray
    from voxray.config import RayOptions
    from voxray.embed.config import EmbedOptions
    from voxray.encoder.options import DEFAULT_ASR_MODEL
    from voxray.errors import ModelUnavailableError
    from voxray.jobs.embed import EmbedJob, run_embed
    from voxray.jobs.synthesize import SynthesizeJob, run_synthesize
    from voxray.model_sources import resolve_hf_model
    from voxray.results import read_results
    from voxray.text_ko import cer_ignoring_spaces

    shutil.rmtree(OUT, ignore_errors=True)  # every run measures every stage afresh (jobs would resume)
    stages: list[dict[str, Any]] = []
    cers: dict[str, float] = {}
    init_ray(RayOptions(num_cpus=os.cpu_count(), temp_dir=None))
    import ray.data  # noqa: F401  (it configures its loggers on import: quiet them after)

    logging.getLogger("ray.data").setLevel(logging.WARNING)  # the demo prints its own progress, not Ray Data's
    try:
        # ---- 1. synthesis
        manifests = [os.path.join(ROOT, "samples", d, "sentences.csv") for d in ("tts", "ko")]
        tts_out = os.path.join(OUT, "tts")
        print("[1/4] synthesising the sample manifests with the embedded Kokoro-82M (int8 ONNX) ...", flush=True)
        report = run_synthesize(SynthesizeJob(inputs=manifests, out=tts_out, progress=False))
        text_of: dict[str, str] = {}
        for manifest in manifests:
            with open(manifest, encoding="utf-8") as fh:
                text_of.update({row["id"]: row["text"] for row in csv.DictReader(fh)})
        rows = sorted(read_results(tts_out).to_pylist(), key=lambda r: r["id"])
        for r in rows:
            r["text"] = text_of[r["id"]]
            where = f"{r['duration_s']:6.2f} s  {os.path.relpath(r['path'], ROOT)}"
            status = where if not r["error"] else f"ERROR {r['error']}"
            print(f"  {r['id']:<10} {status}")
        chars = sum(len(r["text"]) for r in rows if not r["error"])
        stages.append({**stage_row("synthesise (TTS job)", report), "chars_per_s": chars / report["wall_s"]})
        print(f"  {report['ok']} clips, {report['audio_s']:.1f} s of audio in {report['wall_s']:.1f} s")

        # ---- 2. transcription
        model = os.environ.get("ASR_MODEL") or (SHIPPED_MODEL if os.path.isdir(SHIPPED_MODEL) else DEFAULT_ASR_MODEL)
        shown = os.path.relpath(model, ROOT) if os.path.isdir(model) else model
        print(f"\n[2/4] transcribing the Korean clips with {shown} ...", flush=True)
        try:
            model = resolve_hf_model(model)
        except ModelUnavailableError as exc:
            print(f"  ASR step stopped: {exc.message}")
            return 0
        kokoro = [r for r in rows if not r["error"] and str(r["id"]).startswith("rt-")]
        report, texts = transcribe(model, [r["path"] for r in kokoro], os.path.join(OUT, "asr-kokoro"))
        stages.append(stage_row("transcribe Kokoro clips", report))
        hyps = [texts.get(r["path"], "") for r in kokoro]
        for r, h in zip(kokoro, hyps, strict=True):
            print(f"  {r['id']}  ref: {r['text']}\n          hyp: {h}")
        cers["kokoro_round_trip"] = cer_ignoring_spaces([r["text"] for r in kokoro], hyps)
        print(f"  round-trip CER (Kokoro TTS -> ASR): {cers['kokoro_round_trip']:.1%}")
        card = os.path.join(model, "finetune.json")
        if os.path.isfile(card):
            with open(card, encoding="utf-8") as fh:
                by_set = json.load(fh).get("best_by_set", {})
            print("  the model's own eval CERs (model card): "
                  + ", ".join(f"{k} {v['cer']:.1%}" for k, v in by_set.items()))
        if trained_on_kokoro(model) is False:
            print("  note: this model was trained on espeak-ng speech only, never on Kokoro's voices; the CER\n"
                  "  above is what it measured on that unfamiliar audio.")
        print("  the same sentences from two espeak-ng voices the model never heard (committed clips):")
        with open(os.path.join(ROOT, "samples", "ko", "espeak.csv"), encoding="utf-8") as fh:
            espeak = list(csv.DictReader(fh))
        espeak_paths = [os.path.join(ROOT, "samples", "ko", e["path"]) for e in espeak]
        report, texts = transcribe(model, espeak_paths, os.path.join(OUT, "asr-espeak"))
        stages.append(stage_row("transcribe espeak-ng clips", report))
        hyps = [texts.get(p, "") for p in espeak_paths]
        for e, h in zip(espeak, hyps, strict=True):
            print(f"  {e['id']} ({e['voice']})  ref: {e['text']}\n          hyp: {h}")
        cers["espeak_heldout_voices"] = cer_ignoring_spaces([e["text"] for e in espeak], hyps)
        print(f"  CER on held-out espeak-ng voices: {cers['espeak_heldout_voices']:.1%}")

        # ---- 3. embeddings
        print("\n[3/4] embedding every clip with the same encoder (mean-pooled last layer) ...", flush=True)
        clips = [r["path"] for r in rows if not r["error"]] + espeak_paths
        voice_of = {r["path"]: f"kokoro:{r['voice'] or 'default'}" for r in rows if not r["error"]}
        voice_of.update({p: f"espeak:{e['voice']}" for p, e in zip(espeak_paths, espeak, strict=True)})
        emb_out = os.path.join(OUT, "embed")
        report = run_embed(EmbedJob(inputs=clips, out=emb_out, progress=False, embed=EmbedOptions(model=model)))
        stages.append(stage_row("embed (embedding job)", report))
        emb = [r for r in read_results(emb_out).to_pylist() if not r["error"]]
        vecs = np.asarray([r["embedding"] for r in emb], dtype=np.float32)
        vecs /= np.linalg.norm(vecs, axis=1, keepdims=True) + 1e-9
        sim = vecs @ vecs.T
        np.fill_diagonal(sim, -np.inf)
        nearest = sim.argmax(axis=1)
        labels = [voice_of.get(r["path"], "?") for r in emb]
        same = float(np.mean([labels[i] == labels[j] for i, j in enumerate(nearest)]))
        print(f"  {len(emb)} vectors of {vecs.shape[1]} dims in {emb_out}; nearest neighbour has the same voice "
              f"for {same:.0%} of clips")

        # ---- 4. report
        print("\n[4/4] report")
        print(f"  {'stage':<28}{'items':>6}{'audio s':>9}{'wall s':>8}{'audio s/s':>11}")
        for s in stages:
            print(f"  {s['stage']:<28}{s['items']:>6}{s['audio_s']:>9.1f}{s['wall_s']:>8.1f}{s['throughput']:>11.2f}")
        print(f"  TTS: {stages[0]['chars_per_s']:.1f} characters/s")
        for k, v in cers.items():
            print(f"  CER {k}: {v:.1%}")
        summary = {"model": model, "stages": stages, "cer": cers, "nearest_same_voice": same}
        with open(os.path.join(OUT, "report.json"), "w", encoding="utf-8") as fh:
            json.dump(summary, fh, indent=2)
        print(f"  report in {os.path.join(OUT, 'report.json')}; each job's page (open in a browser):")
        for job_out in ("tts", "asr-kokoro", "asr-espeak", "embed"):
            page = os.path.join(OUT, job_out, "report.html")
            if os.path.exists(page):
                print(f"    {page}")
        return 0
    finally:
        ray.shutdown()


if __name__ == "__main__":
    sys.exit(main())
