"""Audiobook throughput: the voxray audiobook job vs plain kokoro-onnx, sequential, same text, same run.

Text: ``samples/books/shakespeare_eb1911.md`` (Encyclopaedia Britannica 1911, public domain).
The full benchmark reads its first chapters up to >= 20,000 characters (Parentage .. Playwright
and poet, 20,666 characters); ``--quick`` reads two chapters (Youth, Marriage: 5,518 characters)
so it ends in under 10 minutes on 2 cores.

  (a) kokoro-onnx: ``kokoro_onnx.Kokoro.create`` paragraph by paragraph (chapter headings
      included), sequential, onnxruntime's default threads, the same model file (the embedded
      int8 Kokoro-82M) and voice. Its model load is timed separately and excluded.
  (b) the audiobook job in a fresh process, as a user runs it: Ray start, 2 single-threaded
      Kokoro actors, chunk files, chapter assembly and the .m4b (AAC) included in its wall time.

Throughput is characters per second of wall time. RTF is wall time / seconds of audio; kokoro-onnx
trims the model's leading/trailing silence and the job adds paragraph/chapter pauses, so the audio
lengths differ: compare characters/s (the ratio). The job's run.json also gives the driver's
peak RSS. Last, the driver's peak RSS is measured on a ~300,000-character book (the sample's
chapters repeated) with ``limit`` set, so the driver reads and plans the whole book and runs
the Ray pipeline but synthesises only a few chunks; the assembly's memory is per chunk (streamed),
so the full book's driver peak is that measurement and the assembly's, whichever is larger.

    python benchmarks/audiobook_throughput.py [--quick] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BOOK = ROOT / "samples" / "books" / "shakespeare_eb1911.md"
FULL_CHAPTERS = range(0, 5)  # >= 20,000 characters
QUICK_CHAPTERS = range(1, 3)

_RUN_JOB = (
    "import sys; from voxray.jobs.audiobook import AudiobookJob, run_audiobook;"
    "run_audiobook(AudiobookJob.model_validate_json(sys.argv[1]))"
)


def excerpt_md(chapters: list[Any], title: str) -> str:
    """A Markdown book of the given chapters (heading + paragraphs), as the job reads it."""
    parts = [f"# {title}"]
    for ch in chapters:
        parts.append(f"## {ch.title}")
        parts.extend(ch.paragraphs[1:])  # paragraphs[0] is the heading itself
    return "\n\n".join(parts) + "\n"


def run_job(book: Path, out: Path, tmp: Path, voice: str, **kw: Any) -> tuple[dict[str, Any], float]:
    """Run the audiobook job in a fresh Python process; (run.json, wall seconds of the process)."""
    job = {
        "book": str(book), "out": str(out), "progress": False, "format": "m4b",
        "tts": {"voice": voice, "lang": "en-us"},
        "resources": {"actors": 2, "cpus_per_actor": 0.5, "threads_per_actor": 1, "rows_per_call": 1},
        "ray": {"num_cpus": os.cpu_count(), "temp_dir": str(tmp / "ray")}, **kw,
    }
    env = {**os.environ, "RAY_DATA_DISABLE_PROGRESS_BARS": "1", "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0"}
    env.pop("RAY_ADDRESS", None)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", _RUN_JOB, json.dumps(job)], check=True, env=env, cwd=ROOT)
    wall = time.perf_counter() - t0
    return json.loads((out / "run.json").read_text()), wall


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 chapters, 5,518 characters (under 10 min on 2 cores)")
    parser.add_argument("--voice", default="jf_alpha")
    parser.add_argument("--no-rss-300k", dest="rss_300k", action="store_false",
                        help="skip the driver memory measurement on a 300,000-character book")
    parser.add_argument("--json", help="write results here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("phonemizer").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from _bench import finish
    from kokoro_onnx import Kokoro

    from voxray.audiobook.book import Chapter, plan_chunks, read_book
    from voxray.tts.assets import embedded_voices_file, resolve_model

    load_before = os.getloadavg()
    source = read_book(str(BOOK))
    picked = [source.chapters[i] for i in (QUICK_CHAPTERS if args.quick else FULL_CHAPTERS)]
    tmp = Path(tempfile.mkdtemp(prefix="vxr-audiobook-bench-"))
    try:
        book_path = tmp / "excerpt.md"
        book_path.write_text(excerpt_md(picked, source.title), encoding="utf-8")
        book = read_book(str(book_path))
        chars = book.chars
        paragraphs = [p for ch in book.chapters for p in ch.paragraphs]
        n_chunks = len(plan_chunks(book))
        print(f"excerpt: {', '.join(c.title for c in book.chapters)}; {chars} characters, {len(paragraphs)} "
              f"paragraphs, {n_chunks} chunks; voice {args.voice}; {os.cpu_count()} CPUs, "
              f"load average {load_before[0]:.2f}", flush=True)

        # ------------------------------------------------------------------ (a) kokoro-onnx, sequential
        model = str(resolve_model("embedded"))
        t0 = time.perf_counter()
        peer = Kokoro(model, str(embedded_voices_file()))
        peer_load_s = time.perf_counter() - t0
        peer.create("Warm up.", voice=args.voice, speed=1.0, lang="en-us")
        audio_s, t0 = 0.0, time.perf_counter()
        for i, para in enumerate(paragraphs):
            samples, sr = peer.create(para, voice=args.voice, speed=1.0, lang="en-us")
            audio_s += len(samples) / sr
            if (i + 1) % max(1, len(paragraphs) // 4) == 0:
                done_s = time.perf_counter() - t0
                print(f"  kokoro-onnx {i + 1}/{len(paragraphs)} paragraphs, {done_s:.0f}s", flush=True)
        peer_wall = time.perf_counter() - t0
        del peer
        results = [{
            "name": "kokoro-onnx (sequential, per paragraph)", "chars": chars, "wall_s": peer_wall,
            "audio_s": audio_s, "chars_per_s": chars / peer_wall, "rtf": peer_wall / audio_s,
            "model_load_s": peer_load_s, "threads": "onnxruntime default",
        }]

        # ------------------------------------------------------------------ (b) the audiobook job
        report, proc_wall = run_job(book_path, tmp / "out", tmp, args.voice)
        extra = report["extra"]
        if extra["failed_chunks"]:
            print(f"job: {len(extra['failed_chunks'])} failed chunks: {extra['failed_chunks'][:3]}", file=sys.stderr)
        results.append({
            "name": "voxray audiobook job (2 actors x 1 thread)", "chars": chars, "wall_s": report["wall_s"],
            "audio_s": report["audio_s"], "chars_per_s": chars / report["wall_s"],
            "rtf": report["wall_s"] / report["audio_s"], "process_wall_s": proc_wall,
            "chars_per_s_process": chars / proc_wall, "chunks": extra["chunks"], "chapters": extra["chapters"],
            "driver_peak_rss_mb": extra["driver_peak_rss_mb"], "actor_rtf": extra["actor_real_time_factor"],
            "m4b_bytes": Path(extra["m4b"]).stat().st_size,
        })

        # ------------------------------------------------------------------ driver memory, 300k characters
        rss: dict[str, Any] = {}
        if args.rss_300k:
            big = []
            k = 0
            while sum(c.chars for c in big) < 300_000:
                for ch in source.chapters:
                    name = f"Part {k + 1}: {ch.title}"
                    big.append(Chapter(len(big), name, [name, *ch.paragraphs[1:]], ch.source))
                k += 1
            big_path = tmp / "big.md"
            big_path.write_text(excerpt_md(big, "Big Book"), encoding="utf-8")
            big_book = read_book(str(big_path))
            big_report, _ = run_job(big_path, tmp / "big-out", tmp, args.voice, limit=4)
            rss = {
                "chars": big_book.chars, "chapters": len(big_book.chapters),
                "chunks": big_report["extra"]["chunks"], "chunks_synthesized": big_report["processed"],
                "driver_peak_rss_mb": big_report["extra"]["driver_peak_rss_mb"],
                "assembly_driver_peak_rss_mb": extra["driver_peak_rss_mb"],
                "estimate_full_run_driver_peak_rss_mb": max(big_report["extra"]["driver_peak_rss_mb"],
                                                            extra["driver_peak_rss_mb"]),
                "method": "measured: read + plan the whole 300k book, Ray pipeline over 4 chunks (limit); "
                          "the assembly streams one chunk at a time, so its peak is the excerpt run's",
            }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"\n{'system':<44} {'chars':>6} {'audio s':>8} {'wall s':>8} {'chars/s':>8} {'RTF':>6}")
    for r in results:
        print(f"{r['name']:<44} {r['chars']:>6} {r['audio_s']:>8.1f} {r['wall_s']:>8.1f} "
              f"{r['chars_per_s']:>8.2f} {r['rtf']:>6.3f}")
    job = results[1]
    print(f"job process wall (import + Ray start + job + shutdown): {job['process_wall_s']:.1f}s; "
          f"driver peak RSS {job['driver_peak_rss_mb']:.0f} MB; actor RTF {job['actor_rtf']:.3f}")
    if rss:
        print(f"driver peak RSS, {rss['chars']}-character book ({rss['chunks']} chunks planned, "
              f"{rss['chunks_synthesized']} synthesized): {rss['driver_peak_rss_mb']:.0f} MB; "
              f"estimated full-run peak {rss['estimate_full_run_driver_peak_rss_mb']:.0f} MB")
    payload = {
        "benchmark": "audiobook_throughput",
        "quick": args.quick,
        "book": str(BOOK.relative_to(ROOT)),
        "excerpt_chapters": [c.title for c in picked],
        "chars": chars,
        "voice": args.voice,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "load_average_before": load_before[0], "load_average_after": os.getloadavg()[0]},
        "results": results,
        "driver_rss_300k": rss,
        "ratios": {"audiobook_vs_kokoro_onnx": job["chars_per_s"] / results[0]["chars_per_s"]},
    }
    finish(payload, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
