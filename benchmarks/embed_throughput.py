"""Embedding throughput: voxray's Embedder vs a plain HF ``AutoModel`` loop, same run, same model.

The model is the XLSR-large architecture (24 layers, 1024 hidden; kresnik/wav2vec2-large-xlsr-korean's)
with random weights: speed does not depend on weight values. The corpus is speech-like audio of
mixed lengths written to disk as WAV, in arrival order (shuffled lengths).

- ``hf_loop``: what a user writes first: per file, in arrival order, decode, run the HF feature
  extractor, ``model(**inputs).last_hidden_state.mean(1)``.
- ``embedder``: decode the same files, then ``Embedder.embed`` (length-sorted batches with the
  attention mask, per-file normalisation, masked mean pooling of the last layer).
- ``job`` (``--job``, not in ``--quick``): ``voxray embed`` on a local Ray cluster, model saved to disk.

Both paths share one model instance, thread count and dtype; the vectors are checked to agree.
Usage: ``python benchmarks/embed_throughput.py [--quick] [--json PATH] [--threads N] [--job]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from typing import Any

import numpy as np


def build_model() -> Any:
    """A randomly initialised ``Wav2Vec2Model`` with XLSR-large's configuration (no CTC head)."""
    import torch
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    from voxray.testing import SIZES

    config = Wav2Vec2Config(
        feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True, hidden_dropout=0.0,
        attention_dropout=0.0, activation_dropout=0.0, feat_proj_dropout=0.0, layerdrop=0.0,
        mask_time_prob=0.0, **SIZES["xlsr-large"],
    )
    torch.manual_seed(0)
    return Wav2Vec2Model(config).eval()


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
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    vectors = []
    t0 = time.perf_counter()
    for path in paths:
        inputs = fe(decode_audio(path, 16000), sampling_rate=16000, return_tensors="pt")
        with torch.inference_mode():
            hidden = model(inputs.input_values.to(device, dtype=dtype)).last_hidden_state
        vectors.append(hidden.mean(1)[0].float().cpu().numpy())
    return time.perf_counter() - t0, vectors


def run_embedder(embedder: Any, paths: list[str]) -> tuple[float, list[np.ndarray]]:
    from voxray.audio import decode_audio

    t0 = time.perf_counter()
    results = embedder.embed([decode_audio(p, 16000) for p in paths])
    elapsed = time.perf_counter() - t0
    if any(r.error for r in results):
        raise RuntimeError(f"embedder errors: {[r.error for r in results if r.error][:3]}")
    return elapsed, [r.embedding for r in results]


def run_job(model: Any, paths: list[str], root: str, threads: int) -> float:
    from voxray.config import RayOptions, ResourceOptions
    from voxray.embed.config import EmbedOptions
    from voxray.jobs.embed import EmbedJob, run_embed

    model_dir = os.path.join(root, "model")
    model.save_pretrained(model_dir)
    from transformers import Wav2Vec2FeatureExtractor

    Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=True).save_pretrained(model_dir)
    job = EmbedJob(
        inputs=paths, out=os.path.join(root, "out"), progress=False,
        embed=EmbedOptions(model=model_dir),
        ray=RayOptions(num_cpus=threads, temp_dir=os.path.join(root, "ray")),
        resources=ResourceOptions(actors=1, cpus_per_actor=1.0, threads_per_actor=threads),
    )
    t0 = time.perf_counter()
    report = run_embed(job)
    if report["errors"]:
        raise RuntimeError(f"job errors: {report['errors_by_kind']}")
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="~80 s of audio (CI: < 10 min on 2 cores)")
    parser.add_argument("--seconds", type=float, default=None, help="audio seconds (default 80 quick, 600 full)")
    parser.add_argument("--threads", type=int, default=min(os.cpu_count() or 1, 16), help="torch threads")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--job", action="store_true", help="also time the Ray Data job (starts a local cluster)")
    parser.add_argument("--json", dest="json_path", default=None, help="write results here")
    args = parser.parse_args(argv)

    import torch

    from voxray.embed import Embedder, EmbedOptions

    torch.set_num_threads(args.threads)
    seconds = args.seconds or (80.0 if args.quick else 600.0)
    with tempfile.TemporaryDirectory(prefix="vxr-bench-embed-") as root:
        paths, audio_s = make_corpus(root, seconds)
        t0 = time.perf_counter()
        model = build_model()
        build_s = time.perf_counter() - t0
        embedder = Embedder(
            EmbedOptions(model="xlsr-large-random", device=args.device, threads=args.threads), model=model
        )
        model = embedder.model  # moved to the embedder's device/dtype: the HF loop uses the same
        # warm-up both paths (allocator, kernels) on a short file
        run_hf_loop(model, paths[:1])
        run_embedder(embedder, paths[:1])
        hf_s, hf_vecs = run_hf_loop(model, paths)
        emb_s, emb_vecs = run_embedder(embedder, paths)
        max_diff = max(float(np.abs(a - b).max()) for a, b in zip(hf_vecs, emb_vecs, strict=True))
        results: dict[str, Any] = {
            "hf_loop": {"seconds": hf_s, "audio_s_per_s": audio_s / hf_s},
            "embedder": {
                "seconds": emb_s, "audio_s_per_s": audio_s / emb_s,
                "forward_passes": embedder.stats.forward_passes, "padding_waste": embedder.stats.padding_waste,
            },
        }
        if args.job and not args.quick:
            job_s = run_job(model.cpu(), paths, root, args.threads)
            results["job"] = {"seconds": job_s, "audio_s_per_s": audio_s / job_s}

    ratios = {"embedder_vs_hf_loop": hf_s / emb_s}
    if "job" in results:
        ratios["job_vs_hf_loop"] = hf_s / results["job"]["seconds"]
    report = {
        "benchmark": "embed_throughput",
        "model": "XLSR-large architecture (24x1024), random weights",
        "device": embedder.core.device, "dtype": str(embedder.core.dtype).replace("torch.", ""),
        "threads": args.threads, "cpu_count": os.cpu_count(), "machine": platform.machine(),
        "python": sys.version.split()[0], "torch": torch.__version__,
        "files": len(paths), "audio_s": audio_s, "model_build_s": build_s,
        "max_abs_diff_embedder_vs_hf": max_diff,
        "results": results, "ratios": ratios,
    }
    print(f"XLSR-large (random weights) on {report['device']} ({report['dtype']}), {args.threads} threads, "
          f"{len(paths)} files, {audio_s:.1f} s of audio")
    print(f"{'path':<10} {'wall s':>8} {'audio s/s':>10} {'vs hf_loop':>11}")
    for name, r in results.items():
        print(f"{name:<10} {r['seconds']:>8.2f} {r['audio_s_per_s']:>10.2f} {hf_s / r['seconds']:>10.2f}x")
    print(f"max |embedder - hf_loop| over vectors: {max_diff:.2e}")
    if args.json_path:
        with open(args.json_path, "w") as fh:
            json.dump(report, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
