"""ASR throughput on a CPU: voxray's runner on each backend vs the HF ASR pipeline, in one run.

The full XLSR-large architecture (kresnik/wav2vec2-large-xlsr-korean's shape) with random
weights: speed does not depend on weight values, and no hub is reachable here. Files of 1-20 s
(1-8 s with ``--quick``; log-uniform: many short, a few long) arrive in random order; every mode gets the same in-memory
arrays and the same thread count. Shared machines are noisy, so the modes run interleaved in
``--rounds`` rounds and each keeps its best round:

- ``hf_pipeline``: the HF ASR pipeline, ``batch_size=8``, fed in arrival order (what a user writes first);
- ``hf_pipeline_sorted``: the same pipeline fed the files sorted by length: the fair baseline,
  since sorting is what anyone can do in one line;
- ``torch_fp32`` / ``torch_bf16``: voxray's runner (batches capped by padded seconds, attention mask);
- ``ort_fp32`` / ``ort_int8``: the same runner on onnxruntime, from a ``voxray export asr --int8`` dir;
- ``job`` (full runs, or ``--job``): the Ray Data job, decoding in CPU tasks.

Speed says nothing about accuracy, so each backend is also run on the shipped Korean model
(``models/ko-synthetic-ctc``) over the committed clips (``samples/ko``): its CER minus fp32 torch's
is its parity figure, and ``best_cpu_vs_sorted_pipeline`` only counts backends within 0.5 CER points.

    python benchmarks/asr_throughput.py [--quick] [--json PATH] [--job] [--rounds N]
"""

from __future__ import annotations

import argparse
import csv
import gc
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from _bench import finish

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "models" / "ko-synthetic-ctc"
CER_GATE = 0.005  # 0.5 CER points
# mode -> ASROptions overrides on the torch checkpoint (None) or the export dir ("export")
BACKENDS: dict[str, tuple[str | None, dict[str, Any]]] = {
    "torch_fp32": (None, {"backend": "torch", "dtype": "float32"}),
    "torch_bf16": (None, {"backend": "torch", "dtype": "bfloat16"}),
    "ort_fp32": ("export", {"backend": "onnx", "dtype": "float32"}),
    "ort_int8": ("export", {"backend": "onnx", "dtype": "int8"}),
}


def make_corpus(root: str, count: int, max_s: float, seed: int = 0) -> tuple[list[str], list[np.ndarray]]:
    """``count`` speech-like files of 1..max_s seconds, log-uniform, in random (arrival) order."""
    from voxray.audio import write_audio
    from voxray.testing import synth_speechlike

    rng = np.random.default_rng(seed)
    paths, audios = [], []
    os.makedirs(root, exist_ok=True)
    for i in range(count):
        seconds = float(np.exp(rng.uniform(0.0, np.log(max_s))))
        audio = synth_speechlike(seconds, seed=seed * 10_000 + i)
        path = os.path.join(root, f"clip{i:04d}.flac")
        write_audio(path, audio, 16000)
        paths.append(path)
        audios.append(audio)
    return paths, audios


class PipelineMode:
    """The HF ASR pipeline (float32, ``batch_size`` items per forward), fed in arrival or length order."""

    def __init__(self, asr: Any, audios: list[np.ndarray], batch_size: int, sort: bool) -> None:
        self.asr, self.audios = asr, audios
        self.order = sorted(range(len(audios)), key=lambda i: len(audios[i])) if sort else list(range(len(audios)))
        padded = total = 0  # padding of consecutive batches of `batch_size`, in samples (frames scale the same)
        for k in range(0, len(self.order), batch_size):
            group = [len(audios[i]) for i in self.order[k : k + batch_size]]
            total += max(group) * len(group)
            padded += max(group) * len(group) - sum(group)
        self.info = {"padding_waste": padded / total}

    def __call__(self) -> float:
        inputs = [{"raw": self.audios[i], "sampling_rate": 16000} for i in self.order]  # the pipeline pops keys
        t0 = time.perf_counter()
        out = self.asr(inputs)
        wall = time.perf_counter() - t0
        assert len(out) == len(self.audios)
        return wall


class RunnerMode:
    """voxray's runner on one backend/dtype; loaded once, warmed up on a short clip."""

    def __init__(self, model: str, audios: list[np.ndarray], threads: int, batch_seconds: float, **opts: Any) -> None:
        from voxray.asr import ASRRunner
        from voxray.asr.config import ASROptions

        self.runner = ASRRunner(ASROptions(model=model, threads=threads, batch_seconds=batch_seconds, **opts))
        self.audios = audios
        self.runner.transcribe([audios[0][:16000]])  # warm-up: allocator, kernels, ORT's first-run planning
        self.info: dict[str, Any] = {
            "backend": self.runner.backend, "dtype": str(self.runner.dtype).replace("torch.", ""),
        }

    def __call__(self) -> float:
        self.runner.stats.__init__()
        t0 = time.perf_counter()
        results = self.runner.transcribe(self.audios)
        wall = time.perf_counter() - t0
        assert all(r.error is None for r in results)
        s = self.runner.stats
        self.info.update(padding_waste=s.padding_waste, forward_passes=s.forward_passes)
        return wall


def bench_job(model_dir: str, paths: list[str], out: str, batch_seconds: float) -> dict:
    from voxray.asr.config import ASROptions
    from voxray.config import RayOptions
    from voxray.jobs.transcribe import TranscribeJob, run_transcribe

    job = TranscribeJob(
        inputs=paths, out=out, progress=False, ray=RayOptions(num_cpus=os.cpu_count()),
        asr=ASROptions(model=model_dir, batch_seconds=batch_seconds, dtype="float32"),
    )
    t0 = time.perf_counter()
    report = run_transcribe(job)
    wall = time.perf_counter() - t0
    assert report["errors"] == 0, report
    return {"wall_s": wall, "padding_waste": report["extra"]["padding_waste"], "actors": report["extra"]["actors"]}


def shipped_cer(work: str, threads: int) -> dict[str, float]:
    """CER of each backend on the committed Korean clips, with the shipped model (real weights)."""
    from voxray.asr import ASRRunner
    from voxray.asr.config import ASROptions
    from voxray.audio import decode_audio
    from voxray.encoder.onnx_export import ExportOptions, export_asr
    from voxray.text_ko import cer_ignoring_spaces

    samples = ROOT / "samples" / "ko"
    with open(samples / "espeak.csv", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    audios = [decode_audio(str(samples / r["path"]), 16000) for r in rows]
    export = os.path.join(work, "shipped-onnx")
    export_asr(ExportOptions(model=str(SHIPPED), out=export, int8=True))
    cers = {}
    for name, (source, opts) in BACKENDS.items():
        runner = ASRRunner(ASROptions(model=export if source else str(SHIPPED), threads=threads, **opts))
        cers[name] = cer_ignoring_spaces([r["text"] for r in rows], [r.text for r in runner.transcribe(audios)])
    return cers


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="12 files of 1-8 s (~40 s) instead of 40 of 1-20 s, no job")
    ap.add_argument("--rounds", type=int, default=None, help="interleaved rounds, best kept (default 2 quick, 3)")
    ap.add_argument("--json", help="write results here")
    ap.add_argument("--job", action="store_true", help="also time the Ray Data job in --quick")
    ap.add_argument("--batch-size", type=int, default=8, help="HF pipeline batch size")
    ap.add_argument("--batch-seconds", type=float, default=80.0, help="voxray padded seconds per forward")
    ap.add_argument("--size", default="xlsr-large", help="model size from voxray.testing.SIZES")
    args = ap.parse_args(argv)
    count, max_s = (12, 8.0) if args.quick else (40, 20.0)
    rounds = args.rounds or (2 if args.quick else 3)
    threads = os.cpu_count() or 1
    work = tempfile.mkdtemp(prefix="vxr-bench-asr-")
    os.environ.setdefault("VOXRAY_CACHE", os.path.join(work, "cache"))
    from voxray.encoder.core import cpu_flags
    from voxray.encoder.onnx_export import ExportOptions, export_asr
    from voxray.testing import build_ctc_model

    t0 = time.perf_counter()
    model_dir = build_ctc_model(os.path.join(work, "model"), args.size)
    export_dir = os.path.join(work, "model-onnx")
    manifest = export_asr(ExportOptions(model=model_dir, out=export_dir, int8=True))
    prepare_s = time.perf_counter() - t0
    paths, audios = make_corpus(os.path.join(work, "audio"), count, max_s)
    audio_s = sum(len(a) for a in audios) / 16000
    cpu = sorted(f for f in cpu_flags() if f.startswith("amx") or f == "avx512_bf16")
    print(f"{len(paths)} files, {audio_s:.1f} s of audio, model {args.size}, {threads} CPU threads, "
          f"CPU bf16 flags {cpu or 'none'}; model build + export {prepare_s:.0f} s", flush=True)

    import torch
    from transformers import pipeline

    torch.set_num_threads(threads)
    asr = pipeline("automatic-speech-recognition", model=model_dir, batch_size=args.batch_size, device="cpu")
    asr([{"raw": audios[0][:16000], "sampling_rate": 16000}])  # warm-up
    modes: dict[str, Any] = {
        "hf_pipeline": PipelineMode(asr, audios, args.batch_size, sort=False),
        "hf_pipeline_sorted": PipelineMode(asr, audios, args.batch_size, sort=True),
    }
    for name, (source, opts) in BACKENDS.items():
        modes[name] = RunnerMode(export_dir if source else model_dir, audios, threads, args.batch_seconds, **opts)
    walls: dict[str, list[float]] = {name: [] for name in modes}
    for k in range(rounds):  # interleaved, so a burst of load elsewhere hits every mode alike
        for name, mode in modes.items():
            walls[name].append(mode())
        print(f"  round {k + 1}: " + ", ".join(f"{n} {audio_s / w[-1]:.2f}" for n, w in walls.items())
              + " audio s/s", flush=True)
    results: dict[str, dict[str, Any]] = {
        name: {"wall_s": min(walls[name]), "rounds_s": walls[name], **mode.info} for name, mode in modes.items()
    }
    del modes, asr
    gc.collect()
    if args.job or not args.quick:
        results["job"] = bench_job(model_dir, paths, os.path.join(work, "out"), args.batch_seconds)
    for r in results.values():
        r["audio_s_per_s"] = audio_s / r["wall_s"]
    cers = shipped_cer(work, threads)
    deltas = {name: cers[name] - cers["torch_fp32"] for name in BACKENDS}
    gated = [name for name in BACKENDS if abs(deltas[name]) <= CER_GATE]
    best = max(gated, key=lambda n: results[n]["audio_s_per_s"])
    speed = {name: r["audio_s_per_s"] for name, r in results.items()}
    ratios = {
        "runner_vs_sorted_pipeline": speed["torch_fp32"] / speed["hf_pipeline_sorted"],
        "bf16_vs_fp32": speed["torch_bf16"] / speed["torch_fp32"],
        "ort_fp32_vs_torch": speed["ort_fp32"] / speed["torch_fp32"],
        "ort_int8_vs_torch": speed["ort_int8"] / speed["torch_fp32"],
        "best_cpu_vs_sorted_pipeline": speed[best] / speed["hf_pipeline_sorted"],
        "runner_vs_pipeline": speed["torch_fp32"] / speed["hf_pipeline"],
        "sorted_pipeline_vs_pipeline": speed["hf_pipeline_sorted"] / speed["hf_pipeline"],
        "padding_waste": results["torch_fp32"]["padding_waste"],
    }
    if "job" in results:
        ratios["job_vs_pipeline"] = speed["job"] / speed["hf_pipeline"]
    base = speed["hf_pipeline_sorted"]
    print(f"\n{'mode':<20}{'wall s':>9}{'audio s/s':>11}{'padding':>9}{'vs sorted HF':>14}{'CER delta':>11}")
    for name, r in results.items():
        delta = f"{100 * deltas[name]:+.2f} pt" if name in deltas else ""
        print(f"{name:<20}{r['wall_s']:>9.1f}{r['audio_s_per_s']:>11.2f}{r['padding_waste']:>9.3f}"
              f"{r['audio_s_per_s'] / base:>14.2f}{delta:>11}")
    print(f"best CPU backend within the {100 * CER_GATE:.1f}-point CER gate: {best}; shipped-model CER "
          + ", ".join(f"{k} {100 * v:.2f}%" for k, v in cers.items()))
    payload = {
        "benchmark": "asr_throughput", "quick": args.quick, "files": len(paths), "audio_s": audio_s,
        "model": args.size, "threads": threads, "cpu_bf16_flags": cpu, "hf_batch_size": args.batch_size,
        "batch_seconds": args.batch_seconds, "rounds": rounds, "results": results, "ratios": ratios,
        "best_cpu_backend": best,
        "shipped_model_cer": cers, "cer_delta_vs_torch_fp32": deltas, "cer_gate": CER_GATE,
        "export_parity_on_probe": manifest["parity"], "export_s": manifest["export_s"],
    }
    finish(payload, args.json)
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
