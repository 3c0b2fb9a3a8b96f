"""Fine-tuning throughput: voxray's Ray Train job vs plain torch loops on the same data, one run.

Data: the synthetic Korean corpus (espeak-ng voices, :mod:`voxray.data_synth.korean`); model:
issue 8's small wav2vec2 (``--size small``, 3.7M parameters), jamo CTC. Three ways to train the
same number of optimizer steps: (a) a plain torch loop with fixed-count batches in random order
(what a default DataLoader does), (b) the same loop with voxray's length-grouped batches by
audio seconds, (c) ``voxray finetune`` on Ray Train (TorchTrainer, one worker with every CPU)
with periodic evaluation. Throughput is audio hours trained per wall hour of training steps
(evaluation and start-up excluded, reported separately); (c) also gives eval CER against
training wall time as a curve.

    python benchmarks/finetune_throughput.py [--quick] [--json PATH]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np
from _bench import finish


def _loop(utts, vocab, args, grouped: bool, threads: int) -> dict:
    import torch

    from voxray.finetune.base_model import apply_freeze, build_model
    from voxray.finetune.config import FinetuneJob
    from voxray.finetune.data import BatchStream, collate
    from voxray.finetune.train import autocast_dtype, lr_lambda

    torch.set_num_threads(threads)
    job = FinetuneJob(train=["-"], eval=["-"], from_config=args.size, out="-", precision=args.precision)
    model = build_model(job, vocab, None, False)
    apply_freeze(model, job.freeze_mode)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=job.lr, betas=(job.adam_beta1, job.adam_beta2))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_lambda(s, job.warmup_steps, job.max_steps))
    dtype = autocast_dtype(args.precision, "cpu")
    mean_s = float(np.mean([u.seconds for u in utts]))
    per_batch = max(1, round(args.batch_seconds / max(u.seconds for u in utts) * 1.6))  # ~same items as grouped
    rng = np.random.default_rng(0)
    stream = BatchStream(utts, args.batch_seconds, 64, 0) if grouped else None
    audio_s, padded_s, items = 0.0, 0.0, 0
    t0 = time.perf_counter()
    for _ in range(args.steps):
        if stream is not None:
            batch = stream.next()
        else:
            batch = [utts[i] for i in rng.choice(len(utts), size=per_batch, replace=False)]
        inputs = collate(batch)
        with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
            loss = model(**inputs).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, job.max_grad_norm)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        audio_s += sum(u.seconds for u in batch)
        padded_s += max(u.seconds for u in batch) * len(batch)
        items += len(batch)
    wall = time.perf_counter() - t0
    return {
        "steps": args.steps, "train_wall_s": wall, "audio_hours": audio_s / 3600,
        "audio_hours_per_wall_hour": (audio_s / 3600) / (wall / 3600), "padding_waste": 1 - audio_s / padded_s,
        "items_per_step": items / args.steps, "mean_utterance_s": mean_s, "final_loss": float(loss.detach()),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="600 utterances, 40 steps per mode (< 10 min)")
    ap.add_argument("--json", help="write results here")
    ap.add_argument("--size", default="small", help="architecture (voxray.finetune.model.ARCHITECTURES)")
    ap.add_argument("--steps", type=int, default=None, help="optimizer steps per mode")
    ap.add_argument("--batch-seconds", type=float, default=24.0)
    ap.add_argument("--precision", default="bf16", choices=["fp32", "bf16"])
    ap.add_argument("--data", default=None, help="an existing corpus dir (train.csv, eval.csv) to reuse")
    args = ap.parse_args(argv)
    args.steps = args.steps or (40 if args.quick else 300)
    threads = os.cpu_count() or 1
    work = tempfile.mkdtemp(prefix="vxr-bench-ft-")

    from voxray.encoder.architectures import ARCHITECTURES
    from voxray.encoder.core import conv_frames
    from voxray.finetune.config import FinetuneJob
    from voxray.finetune.data import load_utterances, read_rows
    from voxray.finetune.train import run_finetune
    from voxray.finetune.vocab import build_vocab

    data = args.data
    t0 = time.perf_counter()
    if data is None:
        from voxray.data_synth.korean import make_corpus

        data = os.path.join(work, "data")
        n = 600 if args.quick else 3000
        make_corpus(data, n_train=n, n_eval=60 if args.quick else 200, n_heldout=0)
    synth_s = time.perf_counter() - t0
    train_csv, eval_csv = os.path.join(data, "train.csv"), os.path.join(data, "eval.csv")
    rows = read_rows([train_csv])
    vocab = build_vocab([r["text"] for r in rows])

    class _Cfg:  # conv arithmetic only needs the kernel/stride lists
        conv_kernel = ARCHITECTURES[args.size]["conv_kernel"]
        conv_stride = ARCHITECTURES[args.size]["conv_stride"]

    utts, _ = load_utterances(rows, vocab, "jamo", lambda n: conv_frames(_Cfg, n), 20.0)
    hours = sum(u.seconds for u in utts) / 3600
    print(f"{len(utts)} utterances, {hours:.2f} h, model {args.size}, {args.steps} steps, {threads} threads",
          flush=True)

    results = {
        "torch_loop": _loop(utts, vocab, args, grouped=False, threads=threads),
        "torch_loop_grouped": _loop(utts, vocab, args, grouped=True, threads=threads),
    }
    job = FinetuneJob(
        train=[train_csv], eval=[eval_csv], from_config=args.size, out=os.path.join(work, "ray"),
        max_steps=args.steps, eval_every=max(1, args.steps // 4), batch_seconds=args.batch_seconds,
        precision=args.precision, warmup_steps=min(300, args.steps // 3), log_every=max(1, args.steps // 10),
    )
    t1 = time.perf_counter()
    report = run_finetune(job)
    ray_wall = time.perf_counter() - t1
    results["ray_train"] = {
        "steps": report["steps"], "train_wall_s": report["train_wall_s"], "audio_hours": report["audio_hours_seen"],
        "audio_hours_per_wall_hour": report["audio_hours_per_wall_hour"], "total_wall_s": ray_wall,
        "eval_s": sum(p["eval_s"] for p in report["curve"]), "best_cer": report["best_cer"],
    }
    curve = [{"step": p["step"], "train_wall_s": p["train_wall_s"], "audio_hours": p["audio_hours"],
              "train_loss": p["train_loss"], "cer": p["cer"], "wer": p["wer"]} for p in report["curve"]]
    base = results["torch_loop"]["audio_hours_per_wall_hour"]
    ray_ahph = results["ray_train"]["audio_hours_per_wall_hour"]
    ratios = {
        "ray_train_vs_torch_loop": ray_ahph / base,
        "ray_train_vs_grouped_torch_loop": ray_ahph / results["torch_loop_grouped"]["audio_hours_per_wall_hour"],
        "grouped_vs_random_batches": results["torch_loop_grouped"]["audio_hours_per_wall_hour"] / base,
        "audio_hours_per_wall_hour": ray_ahph,
    }
    print(f"\n{'mode':<20}{'train s':>9}{'audio h':>9}{'audio h/h':>11}")
    for name, r in results.items():
        print(f"{name:<20}{r['train_wall_s']:>9.1f}{r['audio_hours']:>9.3f}{r['audio_hours_per_wall_hour']:>11.2f}")
    print("\neval curve (CER vs training wall time):")
    for p in curve:
        print(f"  step {p['step']:>5}  {p['train_wall_s']:>8.1f}s  loss {p['train_loss']:.3f}  CER {p['cer']:.3f}")
    payload = {
        "benchmark": "finetune_throughput", "quick": args.quick, "device": "cpu", "threads": threads,
        "model": args.size, "precision": args.precision, "batch_seconds": args.batch_seconds,
        "utterances": len(utts), "corpus_hours": hours, "corpus_synthesis_s": synth_s,
        "results": results, "cer_curve": curve, "ratios": ratios,
    }
    finish(payload, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
