"""Embedding throughput on a CPU: voxray's Embedder on each backend vs plain HF loops, same run, same model.

The model is the XLSR-large architecture (24 layers, 1024 hidden; kresnik/wav2vec2-large-xlsr-korean's)
with random weights: speed does not depend on weight values. The corpus is speech-like audio of
mixed lengths written to disk as WAV, in arrival order (shuffled lengths). Every path decodes the
same files and runs with the same thread count; the paths run interleaved in ``--rounds`` rounds
and each keeps its best (shared machines are noisy).

- ``hf_loop``: what a user writes first: per file, in arrival order, the HF feature extractor and
  ``model(**inputs).last_hidden_state.mean(1)``;
- ``hf_batched``: the batched baseline: files sorted by length, 8 per batch, padded with the
  attention mask, mean pooled over each file's real frames (a careful user's loop);
- ``torch_fp32`` / ``torch_bf16``: ``Embedder.embed`` (batches capped by padded seconds, masked pooling);
- ``ort_fp32`` / ``ort_int8``: the Embedder on onnxruntime (``--backend onnx``: the checkpoint is
  exported once into the cache, int8 added there);
- ``job`` (``--job``, not in ``--quick``): ``voxray embed`` on a local Ray cluster.

Each backend's vectors are compared with the float32 torch ones (worst cosine over files); the
``best_cpu_vs_hf_batched`` ratio only counts backends whose worst cosine is >= 0.999.
Usage: ``python benchmarks/embed_throughput.py [--quick] [--json PATH] [--threads N] [--rounds N] [--job]``.
"""

from __future__ import annotations

import argparse
import functools
import gc
import os
import platform
import sys
import tempfile
import time
from typing import Any

import numpy as np
from _bench import finish

MIN_COSINE = 0.999
BACKENDS: dict[str, dict[str, Any]] = {
    "torch_fp32": {"backend": "torch", "dtype": "float32"},
    "torch_bf16": {"backend": "torch", "dtype": "bfloat16"},
    "ort_fp32": {"backend": "onnx", "dtype": "float32"},
    "ort_int8": {"backend": "onnx", "dtype": "int8"},
}


def build_model(model_dir: str, size: str = "xlsr-large") -> str:
    """A randomly initialised ``Wav2Vec2Model`` (default XLSR-large's configuration, no CTC head), saved."""
    import torch
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

    from voxray.testing import SIZES

    config = Wav2Vec2Config(
        feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True, hidden_dropout=0.0,
        attention_dropout=0.0, activation_dropout=0.0, feat_proj_dropout=0.0, layerdrop=0.0,
        mask_time_prob=0.0, **SIZES[size],
    )
    torch.manual_seed(0)
    Wav2Vec2Model(config).eval().save_pretrained(model_dir)
    Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=True).save_pretrained(model_dir)
    return model_dir


def make_corpus(root: str, total_s: float, seed: int = 0) -> tuple[list[str], float]:
    """Speech-like WAVs of 1-12 s in shuffled (arrival) order; returns paths and total seconds."""
    from voxray.audio import write_audio
    from voxray.testing import synth_speechlike

    rng = np.random.default_rng(seed)
    paths, total, i = [], 0.0, 0
    while total < total_s:
        seconds = float(rng.uniform(1.0, 12.0))
        path = os.path.join(root, f"utt{i:04d}.wav")
        write_audio(path, synth_speechlike(seconds, seed=seed * 10000 + i), 16000)
        paths.append(path)
        total += seconds
        i += 1
    return paths, total


def run_hf_loop(model: Any, paths: list[str]) -> tuple[float, list[np.ndarray]]:
    import torch
    from transformers import Wav2Vec2FeatureExtractor

    from voxray.audio import decode_audio

    fe = Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=True)
    vectors = []
    t0 = time.perf_counter()
    for path in paths:
        inputs = fe(decode_audio(path, 16000), sampling_rate=16000, return_tensors="pt")
        with torch.inference_mode():
            hidden = model(inputs.input_values).last_hidden_state
        vectors.append(hidden.mean(1)[0].float().numpy())
    return time.perf_counter() - t0, vectors


def run_hf_batched(model: Any, paths: list[str], batch_size: int = 8) -> tuple[float, list[np.ndarray]]:
    """Sorted by length, padded batches with the attention mask, mean over each file's real frames."""
    import torch
    from transformers import Wav2Vec2FeatureExtractor

    from voxray.audio import decode_audio

    fe = Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=True)
    t0 = time.perf_counter()
    audios = [decode_audio(p, 16000) for p in paths]
    order = sorted(range(len(audios)), key=lambda i: len(audios[i]))
    vectors: list[np.ndarray | None] = [None] * len(audios)
    for k in range(0, len(order), batch_size):
        idx = order[k : k + batch_size]
        inputs = fe([audios[i] for i in idx], sampling_rate=16000, return_tensors="pt", padding=True)
        with torch.inference_mode():
            hidden = model(inputs.input_values, attention_mask=inputs.attention_mask).last_hidden_state
            lengths = model._get_feat_extract_output_lengths(inputs.attention_mask.sum(-1))
        for row, i in enumerate(idx):
            vectors[i] = hidden[row, : int(lengths[row])].mean(0).float().numpy()
    return time.perf_counter() - t0, vectors  # type: ignore[return-value]


def run_embedder(embedder: Any, paths: list[str]) -> tuple[float, list[np.ndarray]]:
    from voxray.audio import decode_audio

    t0 = time.perf_counter()
    results = embedder.embed([decode_audio(p, 16000) for p in paths])
    elapsed = time.perf_counter() - t0
    if any(r.error for r in results):
        raise RuntimeError(f"embedder errors: {[r.error for r in results if r.error][:3]}")
    return elapsed, [r.embedding for r in results]


def run_job(model_dir: str, paths: list[str], root: str, threads: int) -> float:
    from voxray.config import RayOptions, ResourceOptions
    from voxray.embed.config import EmbedOptions
    from voxray.jobs.embed import EmbedJob, run_embed

    job = EmbedJob(
        inputs=paths, out=os.path.join(root, "out"), progress=False,
        embed=EmbedOptions(model=model_dir, dtype="float32"),
        ray=RayOptions(num_cpus=threads, temp_dir=os.path.join(root, "ray")),
        resources=ResourceOptions(actors=1, cpus_per_actor=1.0, threads_per_actor=threads),
    )
    t0 = time.perf_counter()
    report = run_embed(job)
    if report["errors"]:
        raise RuntimeError(f"job errors: {report['errors_by_kind']}")
    return time.perf_counter() - t0


def min_cosine(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    return min(float(x @ y / np.linalg.norm(x) / np.linalg.norm(y)) for x, y in zip(a, b, strict=True))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="~40 s of audio (< 10 min on 2 cores)")
    parser.add_argument("--seconds", type=float, default=None, help="audio seconds (default 40 quick, 600 full)")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds, best kept (default 2 quick, 3)")
    parser.add_argument("--threads", type=int, default=min(os.cpu_count() or 1, 16), help="torch/ORT threads")
    parser.add_argument("--job", action="store_true", help="also time the Ray Data job (starts a local cluster)")
    parser.add_argument("--json", dest="json_path", default=None, help="write results here")
    parser.add_argument("--size", default="xlsr-large", help="model size from voxray.testing.SIZES")
    args = parser.parse_args(argv)

    import torch
    from transformers import AutoModel

    from voxray.embed import Embedder, EmbedOptions

    torch.set_num_threads(args.threads)
    seconds = args.seconds or (40.0 if args.quick else 600.0)
    rounds = args.rounds or (2 if args.quick else 3)
    with tempfile.TemporaryDirectory(prefix="vxr-bench-embed-") as root:
        os.environ.setdefault("VOXRAY_CACHE", os.path.join(root, "cache"))
        paths, audio_s = make_corpus(root, seconds)
        t0 = time.perf_counter()
        model_dir = build_model(os.path.join(root, "model"), args.size)
        model = AutoModel.from_pretrained(model_dir).eval()
        build_s = time.perf_counter() - t0
        run_hf_loop(model, paths[:1])  # warm-up (allocator, kernels) on a short file
        modes: dict[str, Any] = {
            "hf_loop": functools.partial(run_hf_loop, model, paths),
            "hf_batched": functools.partial(run_hf_batched, model, paths),
        }
        embedders: dict[str, Any] = {}
        load_s: dict[str, float] = {}
        for name, opts in BACKENDS.items():
            t0 = time.perf_counter()
            embedders[name] = Embedder(EmbedOptions(model=model_dir, threads=args.threads, **opts))
            load_s[name] = time.perf_counter() - t0  # ORT: the one-off export (cached afterwards)
            run_embedder(embedders[name], paths[:1])
            modes[name] = functools.partial(run_embedder, embedders[name], paths)
        walls: dict[str, list[float]] = {name: [] for name in modes}
        vectors: dict[str, list[np.ndarray]] = {}
        for k in range(rounds):  # interleaved, so a burst of load elsewhere hits every path alike
            for name, fn in modes.items():
                elapsed, vectors[name] = fn()
                walls[name].append(elapsed)
            print(f"  round {k + 1}: " + ", ".join(f"{n} {audio_s / w[-1]:.2f}" for n, w in walls.items())
                  + " audio s/s", flush=True)
        results: dict[str, dict[str, Any]] = {}
        for name, w in walls.items():
            results[name] = {"seconds": min(w), "audio_s_per_s": audio_s / min(w), "rounds_s": w}
            if name in embedders:
                e = embedders[name]
                results[name].update(
                    load_s=load_s[name], forward_passes=e.stats.forward_passes, padding_waste=e.stats.padding_waste,
                    backend=e.backend, dtype=str(e.core.dtype).replace("torch.", ""),
                )
        modes.clear()
        embedders.clear()
        gc.collect()
        if args.job and not args.quick:
            job_s = run_job(model_dir, paths, root, args.threads)
            results["job"] = {"seconds": job_s, "audio_s_per_s": audio_s / job_s}

    cosines = {name: min_cosine(vectors["torch_fp32"], vectors[name]) for name in (*BACKENDS, "hf_batched")}
    gated = [name for name in BACKENDS if cosines[name] >= MIN_COSINE]
    speed = {name: r["audio_s_per_s"] for name, r in results.items()}
    best = max(gated, key=lambda n: speed[n])
    ratios = {
        "embedder_vs_hf_loop": speed["torch_fp32"] / speed["hf_loop"],
        "embedder_vs_hf_batched": speed["torch_fp32"] / speed["hf_batched"],
        "bf16_vs_fp32": speed["torch_bf16"] / speed["torch_fp32"],
        "ort_fp32_vs_torch": speed["ort_fp32"] / speed["torch_fp32"],
        "ort_int8_vs_torch": speed["ort_int8"] / speed["torch_fp32"],
        "best_cpu_vs_hf_batched": speed[best] / speed["hf_batched"],
    }
    if "job" in results:
        ratios["job_vs_hf_loop"] = speed["job"] / speed["hf_loop"]
    report = {
        "benchmark": "embed_throughput", "quick": args.quick,
        "model": f"{args.size} architecture, random weights",
        "threads": args.threads, "cpu_count": os.cpu_count(), "machine": platform.machine(),
        "python": sys.version.split()[0], "torch": torch.__version__,
        "files": len(paths), "audio_s": audio_s, "model_build_s": build_s,
        "rounds": rounds, "min_cosine_vs_torch_fp32": cosines, "cosine_gate": MIN_COSINE, "best_cpu_backend": best,
        "max_abs_diff_embedder_vs_hf_batched": max(
            float(np.abs(a - b).max()) for a, b in zip(vectors["hf_batched"], vectors["torch_fp32"], strict=True)
        ),
        "results": results, "ratios": ratios,
    }
    print(f"{args.size} (random weights), {args.threads} threads, {len(paths)} files, {audio_s:.1f} s of audio")
    print(f"{'path':<12} {'wall s':>8} {'audio s/s':>10} {'vs batched':>11} {'min cos':>9}")
    for name, r in results.items():
        cos = f"{cosines[name]:.5f}" if name in cosines else ""
        print(f"{name:<12} {r['seconds']:>8.2f} {r['audio_s_per_s']:>10.2f} "
              f"{r['audio_s_per_s'] / speed['hf_batched']:>10.2f}x {cos:>9}")
    finish(report, args.json_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
