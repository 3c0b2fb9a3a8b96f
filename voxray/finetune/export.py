"""Copy a fine-tuning run's best model (HF files only) into a shippable dir with a model card.

    python -m voxray.finetune.export out/ko-synthetic-ctc models/ko-synthetic-ctc
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys

MODEL_FILES = (
    "config.json", "model.safetensors", "vocab.json", "tokenizer_config.json", "special_tokens_map.json",
    "added_tokens.json", "preprocessor_config.json", "processor_config.json", "finetune.json",
)

CARD = """# {name}

A small Korean CTC speech recogniser (wav2vec2 architecture, {params:,} parameters, jamo output
recomposed to Hangul syllables) trained from random weights by `voxray finetune` on **synthetic
speech only**: Korean sentences built from the word list `voxray/data/ko_words.txt`, spoken by espeak-ng
`ko` voice variants (speed 130-190, pitch 30-70){kokoro_line}, resampled to 16 kHz.

**For demos and tests, not for real Korean speech.** It has never heard a human voice, and its
vocabulary is closed: sentences with words outside the list score much worse. {kokoro_note}

## Measured (this run, greedy CTC decoding, jiwer)

| eval set | CER | WER |
|---|---|---|
{rows}

{stages}
`eval` = new sentences from the training voices; `heldout` = new sentences from the held-out espeak-ng
voices `ko+f3` and `ko+m4`; `kokoro_eval` = new sentences from the Kokoro voices in training;
`kokoro_heldout` = new sentences from the Kokoro voice `jf_tebukuro`, never heard in training.

## Reproduce

    make train-demo-model

(the espeak-ng corpus `scripts/make_ko_synthetic.py`, training from random weights `jobs/finetune.yaml`,
Kokoro-spoken sentences `scripts/make_ko_kokoro.py`, the second stage `jobs/finetune-kokoro.yaml`,
then `python -m voxray.finetune.export out/ko-synthetic-ctc-kokoro models/ko-synthetic-ctc --sources espeak-ng,kokoro`.)

## Use

    voxray transcribe --model models/ko-synthetic-ctc --out out/tr clip.wav

License: Apache-2.0 (weights trained by this project; espeak-ng output used as training data).
"""


SOURCES = ("espeak-ng", "kokoro")


def export(src: str, dest: str, sources: tuple[str, ...] = ("espeak-ng",)) -> str:
    """Copy the model files, write README.md from ``finetune.json`` and ``training_data.json``
    (which speech the model heard: the demo reads it to say whether a Kokoro round trip is fair).
    Returns ``dest``."""
    unknown = sorted(set(sources) - set(SOURCES))
    if unknown:
        raise ValueError(f"unknown training source(s) {unknown}; known: {list(SOURCES)}")
    os.makedirs(dest, exist_ok=True)
    for name in MODEL_FILES:
        if os.path.exists(os.path.join(src, name)):
            shutil.copy2(os.path.join(src, name), os.path.join(dest, name))
    with open(os.path.join(src, "finetune.json"), encoding="utf-8") as fh:
        rep = json.load(fh)
    rows = [f"| all | {rep['best_cer']:.2%} | {rep['best_wer']:.2%} |"]
    chain = [rep]  # earlier stages: a run whose base was another run's output dir
    while len(chain) < 8 and os.path.isfile(prev := os.path.join(str(chain[-1]["model_source"]), "finetune.json")):
        with open(prev, encoding="utf-8") as fh:
            chain.append(json.load(fh))
    stages = "".join(
        f"Stage {n}: best checkpoint at step {r['best_step']} of {r['steps']} (overall CER {r['best_cer']:.2%}); "
        f"{r['train_utterances']:,} training utterances ({r['train_hours']:.1f} h); {r['audio_hours_seen']:.1f} audio "
        f"hours seen in {r['train_wall_s'] / 60:.0f} minutes on {r['num_workers']} CPU worker(s) "
        f"({r['audio_hours_per_wall_hour']:.1f} audio hours per wall hour), precision {r['precision']}.\n"
        for n, r in enumerate(reversed(chain), 1)
    )
    rows += [f"| {k} | {v['cer']:.2%} | {v['wer']:.2%} |" for k, v in rep["best_by_set"].items()]
    card = CARD.format(
        name=os.path.basename(os.path.normpath(dest)), params=rep["parameters"], rows="\n".join(rows),
        stages=stages,
        kokoro_line=", and the same kind of sentences synthesised by the Kokoro-82M pipeline (espeak `ko` "
        "phonemes, several Kokoro voices)" if "kokoro" in sources else "",
        kokoro_note="Its Kokoro speech came from a few voices only." if "kokoro" in sources
        else "It was not trained on Kokoro speech.",
    )
    with open(os.path.join(dest, "training_data.json"), "w", encoding="utf-8") as fh:
        json.dump({"sources": list(sources), "word_list": "voxray/data/ko_words.txt",
                   "heldout_espeak_voices": ["ko+f3", "ko+m4"], "language": "ko", "synthetic_only": True}, fh, indent=2)
    with open(os.path.join(dest, "README.md"), "w", encoding="utf-8") as fh:
        fh.write(card)
    return dest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src", help="the --out dir of a finished `voxray finetune` run")
    ap.add_argument("dest", help="where the shippable model goes (e.g. models/ko-synthetic-ctc)")
    ap.add_argument("--sources", default="espeak-ng", help=f"comma-separated training speech sources: {SOURCES}")
    args = ap.parse_args(argv)
    print(export(args.src, args.dest, tuple(s.strip() for s in args.sources.split(",") if s.strip())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
