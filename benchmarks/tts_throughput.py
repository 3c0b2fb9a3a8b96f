"""TTS throughput: kokoro-onnx (a peer) vs voxray's pipeline vs the voxray synthesis job.

All three use the same model file (the embedded Kokoro-82M int8 ONNX), the same voice and the
same English sentences, measured in one run:

  (a) ``kokoro_onnx.Kokoro.create`` per sentence, sequential (onnxruntime's default threads);
  (b) ``voxray.tts.TTSPipeline`` in-process, per sentence, same threads;
  (c) ``voxray.jobs.synthesize.run_synthesize`` over a manifest of the sentences with 2
      single-threaded actors on a local Ray cluster that is already up (the job's wall time
      includes actor start, model load, writing audio files and Parquet).

(a) and (b) alternate sentence by sentence so background load hits both alike. Throughput is
characters of text per second of wall time; RTF is wall time / seconds of audio produced
(kokoro-onnx trims the ~0.8 s of leading/trailing silence the model generates, voxray keeps it,
so the same compute yields different audio lengths: compare characters/s).
A small side measurement gives the RTF of one runner at 1 and 2 onnxruntime threads, the basis
of the one-thread-per-actor default.

    python benchmarks/tts_throughput.py [--quick] [--json PATH]
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import platform
import shutil
import sys
import tempfile
import time
import warnings
from typing import Any

SUBJECTS = [
    "The old lighthouse keeper", "A curious student", "Our research team", "The city council",
    "My neighbour's dog", "The orchestra", "A small startup", "The night train to Busan",
    "Every morning, the baker", "The museum guide", "A tired programmer", "The weather station",
]
VERBS = [
    "explained the new system",
    "finished the report at last",
    "walked along the river",
    "measured it twice",
    "asked a good question",
    "wrote a short letter",
]
ENDINGS = [".", ", and nobody was surprised.", " in the rain.", "; it took a while.", " today!", "?"]


def make_sentences(n: int) -> list[str]:
    """``n`` distinct, deterministic English sentences of varied length (about 25-80 characters)."""
    out = []
    for i in range(n):
        s = SUBJECTS[i % len(SUBJECTS)]
        v = VERBS[(i * 5 + i // len(SUBJECTS)) % len(VERBS)]
        e = ENDINGS[(i * 7 + i // 3) % len(ENDINGS)]
        out.append(f"{s} {v}{e}")
    return out


def _timed(fn, sentences: list[str]) -> tuple[float, float]:
    """(wall seconds, audio seconds) for running ``fn`` over ``sentences`` sequentially."""
    audio_s = 0.0
    t0 = time.perf_counter()
    for s in sentences:
        audio_s += fn(s)
    return time.perf_counter() - t0, audio_s


def _row(name: str, chars: int, n: int, wall: float, audio: float, **extra: Any) -> dict[str, Any]:
    return {
        "name": name, "sentences": n, "chars": chars, "wall_s": wall, "audio_s": audio,
        "chars_per_s": chars / wall if wall else 0.0, "rtf": wall / audio if audio else 0.0, **extra,
    }


def bench_threads(pipe_factory, sentences: list[str]) -> dict[str, float]:
    """RTF of one runner at 1 and 2 onnxruntime threads (model inference only)."""
    out = {}
    for threads in (1, 2):
        pipe = pipe_factory(threads)
        plans = [pipe.plan(s)[0] for s in sentences]
        table = pipe.voices.get("jf_alpha")
        pipe.runner.infer(plans[0].tokens, pipe.style_for(table, len(plans[0].tokens)))  # warm-up
        t0, audio = time.perf_counter(), 0.0
        for p in plans:
            audio += len(pipe.runner.infer(p.tokens, pipe.style_for(table, len(p.tokens)))) / 24000
        out[str(threads)] = (time.perf_counter() - t0) / audio
        del pipe
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="60 sentences (under 10 minutes on 2 cores)")
    parser.add_argument("--sentences", type=int, help="number of sentences (default 60 quick, 120 full)")
    parser.add_argument("--voice", default="jf_alpha")
    parser.add_argument("--json", help="write results here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("phonemizer").setLevel(logging.ERROR)  # kokoro-onnx's per-call word-count notices
    warnings.filterwarnings("ignore")
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")

    from kokoro_onnx import Kokoro

    from voxray.config import RayOptions, ResourceOptions
    from voxray.jobs.synthesize import SynthesizeJob
    from voxray.tts import TTSPipeline
    from voxray.tts.assets import embedded_voices_file, resolve_model

    load_before = os.getloadavg()  # other work on the machine skews every number: record it
    n = args.sentences or (60 if args.quick else 120)
    sentences = make_sentences(n)
    chars = sum(len(s) for s in sentences)
    model = str(resolve_model("embedded"))
    voices_file = str(embedded_voices_file())
    print(f"{n} sentences, {chars} characters, model {os.path.basename(model)}, voice {args.voice}, "
          f"{os.cpu_count()} CPUs, load average {load_before[0]:.2f}", flush=True)

    # ------------------------------------------------------------------ (a) and (b), alternating
    peer = Kokoro(model, voices_file)
    pipe = TTSPipeline(voice=args.voice, lang="en-us")

    def run_peer(s: str) -> float:
        audio, sr = peer.create(s, voice=args.voice, speed=1.0, lang="en-us")
        return len(audio) / sr

    def run_pipe(s: str) -> float:
        return pipe.synthesize(s).duration_s

    run_peer(sentences[0])  # warm-up: model load and first-call costs excluded for both
    run_pipe(sentences[0])
    totals = {"a": [0.0, 0.0], "b": [0.0, 0.0]}
    for i, sentence in enumerate(sentences):  # alternate per sentence, flipping who goes first
        order = [("a", run_peer), ("b", run_pipe)] if i % 2 == 0 else [("b", run_pipe), ("a", run_peer)]
        for key, fn in order:
            wall, audio = _timed(fn, [sentence])
            totals[key][0] += wall
            totals[key][1] += audio
        if (i + 1) % max(1, n // 4) == 0:
            print(f"  {i + 1}/{n}: kokoro-onnx {totals['a'][0]:.1f}s, voxray {totals['b'][0]:.1f}s", flush=True)
    results = [
        _row("kokoro-onnx (peer, sequential)", chars, n, *totals["a"], threads="onnxruntime default"),
        _row("voxray TTSPipeline (in-process)", chars, n, *totals["b"], threads="onnxruntime default"),
    ]
    peer = pipe = None  # free both sessions before the job starts its own

    # ------------------------------------------------------------------ thread scaling of one runner
    probe = sentences[: 6 if args.quick else 12]
    threads_rtf = bench_threads(lambda t: TTSPipeline(threads=t, voice=args.voice), probe)
    print(f"  one runner: RTF {threads_rtf['1']:.3f} at 1 thread, {threads_rtf['2']:.3f} at 2 threads", flush=True)

    # ------------------------------------------------------------------ (c) the Ray job, 2 actors
    import ray

    from voxray.cluster import init_ray
    from voxray.jobs.synthesize import run_synthesize

    tmp = tempfile.mkdtemp(prefix="vxr-bench-")
    try:
        manifest = os.path.join(tmp, "sentences.csv")
        with open(manifest, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(["id", "text"])
            w.writerows([f"s{i:04d}", s] for i, s in enumerate(sentences))
        t0 = time.perf_counter()
        init_ray(RayOptions(num_cpus=os.cpu_count(), temp_dir=os.path.join(tmp, "ray")))
        ray_start_s = time.perf_counter() - t0
        job = SynthesizeJob(
            inputs=[manifest], out=os.path.join(tmp, "out"), progress=False,
            resources=ResourceOptions(actors=2, cpus_per_actor=0.5, threads_per_actor=1, rows_per_call=2),
            tts={"voice": args.voice, "lang": "en-us"},
        )
        report = run_synthesize(job)
        ray.shutdown()
        if report["errors"]:
            print(f"job errors: {report['errors_by_kind']}", file=sys.stderr)
        results.append(
            _row("voxray synthesize job (2 actors x 1 thread)", chars, n, report["wall_s"], report["audio_s"],
                 threads=1, actors=2, ray_start_s=ray_start_s,
                 chars_per_s_incl_ray_start=chars / (report["wall_s"] + ray_start_s))
        )
    finally:
        if ray.is_initialized():
            ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)

    # ------------------------------------------------------------------ report
    print(f"\n{'system':<44} {'chars':>6} {'audio s':>8} {'wall s':>8} {'chars/s':>8} {'RTF':>6}")
    for r in results:
        print(f"{r['name']:<44} {r['chars']:>6} {r['audio_s']:>8.1f} {r['wall_s']:>8.1f} "
              f"{r['chars_per_s']:>8.1f} {r['rtf']:>6.3f}")
    base = results[0]["chars_per_s"]
    ratios = {
        "pipeline_vs_kokoro_onnx": results[1]["chars_per_s"] / base,
        "job_vs_kokoro_onnx": results[2]["chars_per_s"] / base,
    }
    print(f"\npipeline / kokoro-onnx: {ratios['pipeline_vs_kokoro_onnx']:.2f}x   "
          f"job / kokoro-onnx: {ratios['job_vs_kokoro_onnx']:.2f}x  (throughput, chars/s)")
    print(f"job including Ray start ({results[2]['ray_start_s']:.1f}s): "
          f"{results[2]['chars_per_s_incl_ray_start'] / base:.2f}x")
    if args.json:
        payload = {
            "benchmark": "tts_throughput",
            "quick": args.quick,
            "machine": {
                "cpus": os.cpu_count(), "platform": platform.platform(), "python": sys.version.split()[0],
                "load_avg_before": load_before, "load_avg_after": os.getloadavg(),
            },
            "model": os.path.basename(model),
            "voice": args.voice,
            "sentences": n,
            "chars": chars,
            "results": results,
            "threads_rtf": threads_rtf,
            "ratios": ratios,
        }
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as fh:
            json.dump(payload, fh, indent=2)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
