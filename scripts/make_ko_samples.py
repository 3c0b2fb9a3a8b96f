"""Make the committed Korean round-trip samples (``samples/ko``) for the demo and the exact-transcript tests.

Sentences are new ones from the shipped model's word list (never in its training data: the
corpus recipe is deterministic, so this script checks against ``--train-manifest`` when given).
Writes ``samples/ko/sentences.csv`` (the Kokoro synthesis manifest: ``id,text,voice,lang``) and
the same sentences spoken by the two held-out espeak-ng voices (``ko+f3``, ``ko+m4``) as 16 kHz
FLAC under ``samples/ko/espeak/`` with ``samples/ko/espeak.csv`` (``id,path,text,voice``).

    python scripts/make_ko_samples.py [--out samples/ko] [--n 12] [--train-manifest out/ko-synthetic-data/train.csv]
"""

from __future__ import annotations

import argparse
import csv
import os
import random

# The embedded Kokoro has five voices, none Korean (it speaks espeak `ko` phonemes); jf_tebukuro is
# the one the demo model's Kokoro data leaves out (scripts/make_ko_kokoro.py).
KOKORO_VOICES = ["jf_alpha", "jm_kumo", "jf_nezumi", "jf_tebukuro"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="samples/ko")
    ap.add_argument("--n", type=int, default=12)
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--train-manifest", default=None, help="exclude sentences present in this training CSV")
    args = ap.parse_args()

    import numpy as np

    from voxray.audio import resample, write_audio
    from voxray.data_synth.espeak import Espeak
    from voxray.data_synth.korean import HELDOUT_VOICES, load_words, make_sentence

    seen: set[str] = set()
    if args.train_manifest:
        with open(args.train_manifest, encoding="utf-8") as fh:
            seen = {row["text"] for row in csv.DictReader(fh)}
    rng = random.Random(args.seed)
    words = load_words()
    sentences: list[str] = []
    while len(sentences) < args.n:
        s = make_sentence(rng, words, 3, 6)
        if s not in seen and s not in sentences:
            sentences.append(s)

    os.makedirs(os.path.join(args.out, "espeak"), exist_ok=True)
    with open(os.path.join(args.out, "sentences.csv"), "w", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "text", "voice", "lang"])
        for i, s in enumerate(sentences):
            w.writerow([f"rt-{i:03d}", s, KOKORO_VOICES[i % len(KOKORO_VOICES)], "ko"])
    tts = Espeak()
    rows = []
    for i, s in enumerate(sentences):
        voice = HELDOUT_VOICES[i % len(HELDOUT_VOICES)]
        audio = resample(tts.synth(s, voice, 160, 50), tts.sample_rate, 16000)
        audio = audio * (0.9 / max(float(np.abs(audio).max()), 1e-6))
        rel = f"espeak/rt-{i:03d}.flac"
        write_audio(os.path.join(args.out, rel), audio, 16000, fmt="flac")
        rows.append({"id": f"rt-{i:03d}", "path": rel, "text": s, "voice": voice})
    with open(os.path.join(args.out, "espeak.csv"), "w", encoding="utf-8", newline="") as fh:
        w2 = csv.DictWriter(fh, fieldnames=["id", "path", "text", "voice"])
        w2.writeheader()
        w2.writerows(rows)
    print(f"{len(sentences)} sentences -> {args.out}/sentences.csv, {args.out}/espeak.csv")


if __name__ == "__main__":
    main()
