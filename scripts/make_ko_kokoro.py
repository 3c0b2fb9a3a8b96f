"""Add Kokoro-spoken Korean to the synthetic corpus (stage 2 of ``make train-demo-model``).

An espeak-only model reads Kokoro's Korean at ~94% CER (issue 8), so the demo's TTS -> ASR round
trip needs Kokoro audio in training. The sentences are taken from the espeak corpus manifests
(``train.csv``, ``eval.csv``, ``heldout.csv``); they are spoken with the project's own synthesis
job (Ray Data, embedded Kokoro int8, espeak ``ko`` phonemes) by four of the five embedded voices
and blends of them, speed 0.85-1.2; ``jf_tebukuro`` is held out. Writes ``kokoro_train.csv``,
``kokoro_eval.csv`` (new sentences, training voices) and ``kokoro_heldout.csv`` (new sentences,
held-out voice) with ``path,text,voice``. Rerunning reuses what is already synthesised.

    python scripts/make_ko_kokoro.py --data out/ko-synthetic-data [--train 900] [--eval 80]
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import random

TRAIN_VOICES = [
    "jf_alpha", "jm_kumo", "jf_nezumi", "jf_gongitsune", "jf_alpha(1)+jm_kumo(1)", "jm_kumo(2)+jf_nezumi(1)",
]
HELDOUT_VOICE = "jf_tebukuro"


def _texts(path: str, n: int) -> list[str]:
    with open(path, encoding="utf-8") as fh:
        out: list[str] = []
        for row in csv.DictReader(fh):
            if row["text"] not in out:
                out.append(row["text"])
            if len(out) == n:
                break
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="the espeak corpus dir (scripts/make_ko_synthetic.py --out)")
    ap.add_argument("--train", type=int, default=900)
    ap.add_argument("--eval", type=int, default=80)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    from voxray.jobs.synthesize import SynthesizeJob, run_synthesize
    from voxray.results import read_results

    rng = random.Random(args.seed)
    splits = {
        "train": (_texts(os.path.join(args.data, "train.csv"), args.train), TRAIN_VOICES),
        "eval": (_texts(os.path.join(args.data, "eval.csv"), args.eval), TRAIN_VOICES),
        "heldout": (_texts(os.path.join(args.data, "heldout.csv"), args.eval), [HELDOUT_VOICE]),
    }
    root = os.path.join(args.data, "kokoro")
    os.makedirs(root, exist_ok=True)
    text_manifest = os.path.join(root, "text.csv")
    text_of: dict[str, str] = {}
    with open(text_manifest, "w", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "text", "voice", "lang", "speed"])
        for split, (texts, voices) in splits.items():
            for i, text in enumerate(texts):
                text_of[f"{split}-{i:05d}"] = text
                w.writerow([f"{split}-{i:05d}", text, voices[i % len(voices)], "ko", round(rng.uniform(0.85, 1.2), 2)])
    job_out = os.path.join(root, "job")
    report = run_synthesize(SynthesizeJob(inputs=[text_manifest], out=job_out, format="flac", progress=False))
    rows = read_results(job_out).to_pylist()
    for split in splits:
        good = sorted((r for r in rows if r["id"].startswith(split + "-") and not r["error"]), key=lambda r: r["id"])
        with open(os.path.join(args.data, f"kokoro_{split}.csv"), "w", encoding="utf-8", newline="") as fh:
            w2 = csv.DictWriter(fh, fieldnames=["path", "text", "voice"])
            w2.writeheader()
            w2.writerows({"path": r["path"], "text": text_of[r["id"]], "voice": r["voice"]} for r in good)
    keys = ("processed", "ok", "errors", "audio_s", "wall_s")
    print(json.dumps({k: report[k] for k in keys} | {"chars_per_s": report["extra"]["chars_per_s"]}, indent=2))


if __name__ == "__main__":
    main()
