"""Kokoro batching: the same sentences through every backend, one run, one table.

  (a) kokoro-onnx ``Kokoro.create`` sequential (the embedded int8 graph; phonemes given, so no G2P)
  (b) voxray's embedded int8 ONNX runner, one chunk per call (batch 1 is all that graph takes)
  (c) voxray torch, one by one
  (d) voxray torch, batched at 4 / 8 / 16 (masked batched forward, length-sorted batches)
  (e) ``voxray export tts`` graphs (fp32, fp16) on onnxruntime at batch 1 and 8

Every system gets the same phoneme tokens (G2P runs once, before), the same voice and 2 threads,
and runs in its own process so its peak RSS is its own (model load is not timed). Throughput is
characters of text per wall second; RTF is wall / audio seconds. On a shared 2-core machine the
numbers move with background load (run it twice before trusting a few percent). On CPU, batching
is expected to lose: its gain is on GPUs (one prepared GPU run: ``--gpu``).

    python benchmarks/tts_batching.py [--quick] [--json PATH] [--fp32 FILE] [--fp16 FILE] [--gpu]

JSON ``ratios``: ``torch_batched_vs_sequential`` (best torch batch / torch one by one),
``export_vs_int8_onnx`` (best export / voxray int8), ``best_vs_kokoro_onnx`` (best voxray / kokoro-onnx).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _bench import finish  # noqa: E402
from tts_throughput import make_sentences  # noqa: E402

VOICE = "jf_alpha"


def _prepare(n: int) -> list[dict[str, Any]]:
    """Sentences with their phonemes and token ids (one G2P pass, shared by all systems)."""
    from voxray.tts import TTSPipeline

    pipe = TTSPipeline(runner=object())  # G2P and voices only
    out = []
    for text in make_sentences(n):
        (chunk,) = pipe.plan(text, "en-us")
        out.append({"text": text, "phonemes": chunk.phonemes, "tokens": chunk.tokens})
    return out


def _worker(system: str, batch: int, model: str | None, data_path: str, device: str) -> dict[str, Any]:
    """Run one system over the sentences in ``data_path``; returns wall/audio seconds and peak RSS."""
    import numpy as np

    from voxray.tts.batching import SynthItem
    from voxray.tts.voices import VoiceBank

    data = json.loads(Path(data_path).read_text())
    table = VoiceBank().get(VOICE)
    items = [SynthItem(d["tokens"], table[len(d["tokens"])].reshape(-1), 1.0, seed=i) for i, d in enumerate(data)]
    if system == "kokoro_onnx":
        from kokoro_onnx import Kokoro

        from voxray.tts.assets import build_embedded_model, embedded_voices_file

        k = Kokoro(str(build_embedded_model()), str(embedded_voices_file()))

        def run() -> float:
            audio = 0.0
            for d in data:
                samples, sr = k.create(d["phonemes"], voice=VOICE, speed=1.0, is_phonemes=True)
                audio += len(samples) / sr
            return audio
    else:
        if system == "torch":
            from voxray.tts.torch_runner import KokoroTorch

            runner: Any = KokoroTorch("embedded", device=device, threads=2)
        else:
            from voxray.tts.assets import build_embedded_model
            from voxray.tts.onnx_runner import KokoroONNX

            runner = KokoroONNX(model or build_embedded_model(), threads=2, device=device)
        order = sorted(range(len(items)), key=lambda i: -len(items[i].tokens))  # length-sorted batches

        def run() -> float:
            audio = 0.0
            for start in range(0, len(order), batch):
                outs = runner.infer_batch([items[i] for i in order[start : start + batch]])
                audio += sum(len(o.audio) for o in outs) / 24000
            return audio

        runner.infer_batch(items[:1])  # warm-up (first call allocates)
    if system == "kokoro_onnx":
        k.create(data[0]["phonemes"], voice=VOICE, speed=1.0, is_phonemes=True)
    t0 = time.perf_counter()
    audio_s = run()
    wall = time.perf_counter() - t0
    from voxray.procmem import peak_rss_mb  # VmHWM: ru_maxrss would carry the exporting parent's peak

    peak_mb = peak_rss_mb()
    del np
    return {"wall_s": wall, "audio_s": audio_s, "peak_rss_mb": round(peak_mb, 1)}


def _spawn(system: str, batch: int, model: str | None, data_path: str, device: str) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--worker", system, "--batch", str(batch), "--data", data_path,
           "--device", device] + (["--model", model] if model else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode or not lines:
        return {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1][:200]}
    return json.loads(lines[-1])


def _export(path: Path, fp16: bool) -> Path:
    from voxray.tts.export import TTSExportOptions, export_tts

    if not path.exists():
        print(f"exporting {path.name} (once; minutes on 2 cores)...", flush=True)
        export_tts(TTSExportOptions(out=str(path), fp16=fp16, check=False))
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="8 sentences, torch batches 4 and 8 (under 10 min on 2 cores)")
    ap.add_argument("--sentences", type=int, default=None)
    ap.add_argument("--json", default=None)
    ap.add_argument("--fp32", default=None, help="an existing `voxray export tts` graph (else built into the cache)")
    ap.add_argument("--fp16", default=None, help="an existing `voxray export tts --fp16` graph")
    ap.add_argument("--no-export", action="store_true", help="skip (e)")
    ap.add_argument("--gpu", action="store_true", help="torch and onnxruntime on CUDA (a GPU machine)")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--batch", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--model", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--data", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--device", default="cpu", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(_worker(args.worker, args.batch, args.model, args.data, args.device)))
        return

    from voxray.storage import cache_dir

    n = args.sentences or (8 if args.quick else 64)
    batches = [4, 8] if args.quick else [4, 8, 16]
    device = "cuda" if args.gpu else "cpu"
    data = _prepare(n)
    chars = sum(len(d["text"]) for d in data)
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
        json.dump(data, fh)
        data_path = fh.name
    plan: list[tuple[str, str, int, str | None]] = [
        ("kokoro-onnx sequential (int8)", "kokoro_onnx", 1, None),
        ("voxray int8 ONNX", "onnx", 1, None),
        ("torch one by one", "torch", 1, None),
        *((f"torch batched x{b}", "torch", b, None) for b in batches),
    ]
    if not args.no_export:
        export_dir = cache_dir() / "kokoro"
        fp32 = Path(args.fp32) if args.fp32 else _export(export_dir / "kokoro-batched-fp32.onnx", False)
        fp16 = Path(args.fp16) if args.fp16 else _export(export_dir / "kokoro-batched-fp16.onnx", True)
        for label, path in (("fp32", fp32), ("fp16", fp16)):
            plan += [(f"export {label} x1", "onnx", 1, str(path)), (f"export {label} x8", "onnx", 8, str(path))]
    rows = []
    for name, system, batch, model in plan:
        print(f"  {name} ...", flush=True)
        r = _spawn(system, batch, model, data_path, device)
        row = {"name": name, "batch": batch, **r}
        if "wall_s" in r:
            row["chars_per_s"] = chars / r["wall_s"]
            row["rtf"] = r["wall_s"] / r["audio_s"] if r["audio_s"] else 0.0
            print(f"    {row['chars_per_s']:.1f} chars/s, RTF {row['rtf']:.3f}, peak RSS {r['peak_rss_mb']:.0f} MB",
                  flush=True)
        rows.append(row)
    os.unlink(data_path)

    print(f"\n{n} sentences, {chars} characters, voice {VOICE}, 2 threads, device {device}")
    print(f"{'system':34s} {'chars/s':>9s} {'RTF':>7s} {'audio s':>8s} {'peak RSS MB':>12s}")
    for row in rows:
        if "error" in row:
            print(f"{row['name']:34s} failed: {row['error']}")
            continue
        print(f"{row['name']:34s} {row['chars_per_s']:9.1f} {row['rtf']:7.3f} {row['audio_s']:8.1f} "
              f"{row['peak_rss_mb']:12.0f}")

    def speed(pred) -> float:
        vals = [r["chars_per_s"] for r in rows if "chars_per_s" in r and pred(r)]
        return max(vals) if vals else 0.0

    seq = speed(lambda r: r["name"] == "torch one by one")
    batched = speed(lambda r: r["name"].startswith("torch batched"))
    int8 = speed(lambda r: r["name"] == "voxray int8 ONNX")
    export = speed(lambda r: r["name"].startswith("export"))
    peer = speed(lambda r: r["name"].startswith("kokoro-onnx"))
    best = speed(lambda r: not r["name"].startswith("kokoro-onnx"))
    ratios = {
        "torch_batched_vs_sequential": round(batched / seq, 3) if seq else None,
        "export_vs_int8_onnx": round(export / int8, 3) if int8 and export else None,
        "best_vs_kokoro_onnx": round(best / peer, 3) if peer else None,
    }
    payload = {
        "benchmark": "tts_batching", "quick": args.quick, "sentences": n, "chars": chars, "device": device,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "load_avg": os.getloadavg()},
        "rows": rows, "ratios": ratios,
    }
    finish(payload, args.json)


if __name__ == "__main__":
    main()
