"""ASR throughput: voxray's runner and Ray Data job vs the HF ASR pipeline, in one run.

The full XLSR-large architecture (kresnik/wav2vec2-large-xlsr-korean's shape) with random
weights: speed does not depend on weight values, and no hub is reachable here. Files of 1-20 s
arrive in random order; (a) the HF pipeline batches them as they come, (b) voxray's runner
in-process sorts and caps batches by padded seconds, (c) the Ray Data job does the same across
actors, decoding in CPU tasks. Decoding is outside (a) and (b) (arrays in memory) and inside (c).

    python benchmarks/asr_throughput.py [--quick] [--json PATH]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np
from _bench import finish


def make_corpus(root: str, total_s: float, seed: int = 0) -> tuple[list[str], list[np.ndarray]]:
    from voxray.audio import write_audio
    from voxray.testing import synth_speechlike

    rng = np.random.default_rng(seed)
    paths, audios, acc, i = [], [], 0.0, 0
    while acc < total_s:
        seconds = float(rng.uniform(1.0, 20.0))
        audio = synth_speechlike(seconds, seed=seed * 10_000 + i)
        path = os.path.join(root, f"clip{i:04d}.flac")
        write_audio(path, audio, 16000)
        paths.append(path)
        audios.append(audio)
        acc += seconds
        i += 1
    return paths, audios


def bench_pipeline(model_dir: str, audios: list[np.ndarray], batch_size: int, threads: int) -> dict:
    import torch
    from transformers import pipeline

    torch.set_num_threads(threads)
    asr = pipeline("automatic-speech-recognition", model=model_dir, batch_size=batch_size, device="cpu")
    asr([{"raw": audios[0], "sampling_rate": 16000}])  # warm-up (the pipeline pops keys: fresh dicts)
    inputs = [{"raw": a, "sampling_rate": 16000} for a in audios]
    # padding waste of arrival-order batches of `batch_size`, in samples (frames scale the same)
    padded = total = 0
    for k in range(0, len(audios), batch_size):
        group = [len(a) for a in audios[k : k + batch_size]]
        total += max(group) * len(group)
        padded += max(group) * len(group) - sum(group)
    t0 = time.perf_counter()
    out = asr(inputs)
    wall = time.perf_counter() - t0
    assert len(out) == len(audios)
    return {"wall_s": wall, "padding_waste": padded / total}


def bench_runner(model_dir: str, audios: list[np.ndarray], threads: int, batch_seconds: float) -> dict:
    from voxray.asr import ASRRunner
    from voxray.asr.config import ASROptions

    runner = ASRRunner(ASROptions(model=model_dir, threads=threads, batch_seconds=batch_seconds))
    runner.transcribe(audios[:1])
    runner.stats.__init__()  # reset counters after warm-up
    t0 = time.perf_counter()
    results = runner.transcribe(audios)
    wall = time.perf_counter() - t0
    assert all(r.error is None for r in results)
    return {"wall_s": wall, "padding_waste": runner.stats.padding_waste, "forward_passes": runner.stats.forward_passes}


def bench_job(model_dir: str, paths: list[str], out: str, batch_seconds: float) -> dict:
    from voxray.asr.config import ASROptions
    from voxray.config import RayOptions
    from voxray.jobs.transcribe import TranscribeJob, run_transcribe

    job = TranscribeJob(
        inputs=paths, out=out, progress=False, ray=RayOptions(num_cpus=os.cpu_count()),
        asr=ASROptions(model=model_dir, batch_seconds=batch_seconds),
    )
    t0 = time.perf_counter()
    report = run_transcribe(job)
    wall = time.perf_counter() - t0
    assert report["errors"] == 0, report
    return {"wall_s": wall, "padding_waste": report["extra"]["padding_waste"], "actors": report["extra"]["actors"]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="~70 s of audio instead of ~220 s")
    ap.add_argument("--json", help="write results here")
    ap.add_argument("--batch-size", type=int, default=8, help="HF pipeline batch size")
    ap.add_argument("--batch-seconds", type=float, default=80.0, help="voxray padded seconds per forward")
    ap.add_argument("--size", default="xlsr-large", help="model size from voxray.testing.SIZES")
    args = ap.parse_args(argv)
    total_s = 70.0 if args.quick else 220.0
    threads = os.cpu_count() or 1
    work = tempfile.mkdtemp(prefix="vxr-bench-asr-")
    from voxray.testing import build_ctc_model

    model_dir = build_ctc_model(os.path.join(work, "model"), args.size)
    paths, audios = make_corpus(os.path.join(work, "audio"), total_s)
    audio_s = sum(len(a) for a in audios) / 16000
    print(f"{len(paths)} files, {audio_s:.1f} s of audio, model {args.size}, {threads} CPU threads", flush=True)

    results = {
        "hf_pipeline": bench_pipeline(model_dir, audios, args.batch_size, threads),
        "voxray_runner": bench_runner(model_dir, audios, threads, args.batch_seconds),
        "voxray_job": bench_job(model_dir, paths, os.path.join(work, "out"), args.batch_seconds),
    }
    for r in results.values():
        r["audio_s_per_s"] = audio_s / r["wall_s"]
    base = results["hf_pipeline"]["audio_s_per_s"]
    ratios = {
        "runner_vs_pipeline": results["voxray_runner"]["audio_s_per_s"] / base,
        "job_vs_pipeline": results["voxray_job"]["audio_s_per_s"] / base,
        "padding_waste": results["voxray_runner"]["padding_waste"],
    }
    print(f"\n{'mode':<16}{'wall s':>9}{'audio s/s':>11}{'padding':>9}{'vs HF':>8}")
    for name, r in results.items():
        print(f"{name:<16}{r['wall_s']:>9.1f}{r['audio_s_per_s']:>11.2f}{r['padding_waste']:>9.3f}"
              f"{r['audio_s_per_s'] / base:>8.2f}")
    payload = {
        "benchmark": "asr_throughput", "quick": args.quick, "files": len(paths), "audio_s": audio_s,
        "model": args.size, "threads": threads, "hf_batch_size": args.batch_size,
        "batch_seconds": args.batch_seconds, "results": results, "ratios": ratios,
    }
    finish(payload, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
