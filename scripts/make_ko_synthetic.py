"""Make the synthetic Korean corpus for ``make train-demo-model`` (espeak-ng voices, 16 kHz FLAC).

    python scripts/make_ko_synthetic.py --out out/ko-synthetic-data --train 10000
"""

from __future__ import annotations

import argparse
import json
import logging
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="output directory (audio + train/eval/heldout.csv)")
    parser.add_argument("--train", type=int, default=10000, help="training utterances")
    parser.add_argument("--eval", type=int, default=400, help="eval utterances (training voices, new sentences)")
    parser.add_argument("--heldout", type=int, default=400, help="utterances in the held-out voices ko+f3, ko+m4")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--words", default=None, help="word list (default: voxray/data/ko_words.txt)")
    parser.add_argument("--backend", default="auto", choices=["auto", "lib", "cli"],
                        help="espeak-ng: bundled library (espeakng-loader) or the espeak-ng command")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    from voxray.data_synth.korean import make_corpus

    t0 = time.perf_counter()
    report = make_corpus(args.out, args.train, args.eval, args.heldout, seed=args.seed,
                         words_path=args.words, backend=args.backend)
    print(json.dumps({**report.to_dict(), "wall_s": round(time.perf_counter() - t0, 1)}, ensure_ascii=False, indent=2))


if __name__ == "__main__":
    main()
