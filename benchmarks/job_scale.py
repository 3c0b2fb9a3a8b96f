"""Batch jobs at scale and under faults: a 1,000,000-row manifest, and a job whose actors are killed.

1. Planning: a 1,000,000-row manifest (distinct ids over a few thousand real files, no
   ``duration_s`` column: durations are probed in tasks) run by a driver in its own process with
   its own local Ray. Measured: the driver's peak RSS (``VmHWM``, sampled while the job runs) and
   the seconds from launch to the first row reaching the driver and to the first row on disk
   (``commit_s`` 5 here, so the commit age does not dominate). The driver is then SIGKILLed
   (the job would take hours on 2 cores); the benchmark checks its Ray processes are gone.
2. Faults: an N-file job (5% corrupt, the ``small`` random architecture) run clean, then with K
   SIGKILLs of a model actor (each after a commit, once the pool is whole again), in the same Ray
   session, both with a pool of one single-threaded actor per core: rows lost, duplicate ids,
   texts and wall time against the clean run. A kill costs an actor restart (a new process
   importing torch and loading the model: 5-10 s on a busy 2-core machine) plus its in-flight
   batch, redone one input at a time.

    python benchmarks/job_scale.py [--quick] [--json PATH]

``ratios.faulty_vs_clean_wall`` (target <= 1.5); ``driver_peak_rss_mb_1m`` (<= 1500) and
``first_row_s_1m`` (<= 60 on 2 cores) at the top level of the JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _bench import finish  # noqa: E402

DRIVER = r"""
import json, sys, threading, time
t0 = float(sys.argv[2])
spec = json.loads(sys.argv[1])
peak_file = spec.pop("peak_file")
first = {}

from voxray.procmem import memory_mb

def sample():
    while True:
        with open(peak_file, "w") as out:
            json.dump({"vmhwm_mb": memory_mb()[1], "first_result_s": first.get("s")}, out)
        time.sleep(0.5)

threading.Thread(target=sample, daemon=True).start()
from voxray.jobs.transcribe import TranscribeJob, run_transcribe

def progress(p):
    if p.done and "s" not in first:
        first["s"] = time.time() - t0

run_transcribe(TranscribeJob(**spec), progress=progress)
"""


def make_files(root: Path, n: int, corrupt: int = 0) -> list[str]:
    from voxray.audio import write_audio
    from voxray.testing import synth_speechlike

    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        p = root / f"f{i:05d}.wav"
        write_audio(str(p), synth_speechlike(0.3 + 0.7 * ((i * 37) % 100) / 100, seed=i), 16000)
        paths.append(str(p))
    for i in range(corrupt):
        p = root / f"bad{i:04d}.wav"
        p.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" + os.urandom(200))
        paths.append(str(p))
    return paths


def _session_tree(pid: int) -> dict[int, int]:
    from voxray.cluster import _processes, _start_time

    procs = _processes()
    kids: dict[int, list[int]] = {}
    for p, (ppid, _) in procs.items():
        kids.setdefault(ppid, []).append(p)
    out, stack = {}, list(kids.get(pid, []))
    while stack:
        p = stack.pop()
        st = _start_time(p)
        if st is not None and p not in out:
            out[p] = st
            stack += kids.get(p, [])
    return out


def bench_planning(root: Path, rows: int, files: list[str], model: str, tail_s: float) -> dict[str, Any]:
    """The 1M-row manifest, driven by a separate process (its RSS is the driver's alone)."""
    from voxray.cluster import _start_time
    from voxray.results import list_shards, read_results

    manifest = root / "manifest.csv"
    with open(manifest, "w") as fh:
        fh.write("id,path\n")
        n = len(files)
        for i in range(rows):
            fh.write(f"r{i:07d},{files[i % n]}\n")
    out = root / "out-1m"
    peak_file = root / "peak.json"
    spec = {"inputs": [str(manifest)], "out": str(out), "asr": {"model": model}, "progress": True, "commit_s": 5,
            "ray": {"num_cpus": os.cpu_count()}, "peak_file": str(peak_file)}
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    t0 = time.time()
    proc = subprocess.Popen([sys.executable, "-c", DRIVER, json.dumps(spec), str(t0)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first_row_s = None
    try:
        while proc.poll() is None and time.time() - t0 < 600:
            if list_shards(str(out)):
                first_row_s = time.time() - t0
                break
            time.sleep(0.2)
        time.sleep(tail_s)  # steady state: probe, decode and commits all running
        tree = _session_tree(proc.pid)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    t1 = time.time()
    while any(_start_time(p) == s for p, s in tree.items()) and time.time() - t1 < 60:
        time.sleep(0.5)
    left = [p for p, s in tree.items() if _start_time(p) == s]
    peak = json.loads(peak_file.read_text())
    committed = read_results(str(out), ["id"]).num_rows
    return {"rows": rows, "files": len(files), "first_row_s": first_row_s, "first_result_s": peak["first_result_s"],
            "driver_peak_rss_mb": peak["vmhwm_mb"], "rows_committed_before_kill": committed,
            "ray_processes_left_after_driver_kill": len(left), "ran_s": time.time() - t0}


def bench_faults(root: Path, files: list[str], model: str, kills: int) -> dict[str, Any]:
    """Clean vs K actor kills, same session, same files; ``model`` is the ``small`` random architecture
    (4 layers x 256: ~30 ms per short row per thread here) so the job has work to lose."""
    import ray  # noqa: F401

    from voxray.cluster import init_ray, shutdown_ray
    from voxray.config import RayOptions
    from voxray.jobs.transcribe import TranscribeJob, run_transcribe
    from voxray.results import list_shards, read_results

    def job(out: Path) -> TranscribeJob:  # a pool of one single-threaded actor per core, like a cluster's pool
        return TranscribeJob(inputs=files, out=str(out), asr={"model": model}, progress=False, commit_rows=32,
                             resources={"rows_per_call": 16, "actors": os.cpu_count() or 2, "cpus_per_actor": 0.5,
                                        "threads_per_actor": 1})

    def actor_pids() -> list[int]:
        from voxray.cluster import _processes

        return [pid for pid, (_, cmd) in _processes().items() if cmd.startswith(b"ray::") and b"TranscribeActor" in cmd]

    def killer(out: Path, done: threading.Event, killed: list[int]) -> None:
        """Kill one live actor after a commit; the next kill waits until the pool is whole again
        and has committed since (each kill hits a working pool, not one still restarting)."""
        pool = os.cpu_count() or 2
        seen = 0
        while not done.is_set() and len(killed) < kills:
            shards = len(list_shards(str(out)))
            pids = actor_pids()
            if shards > seen and len(pids) >= pool:
                os.kill(pids[0], signal.SIGKILL)
                killed.append(pids[0])
                time.sleep(1.0)  # let Ray notice before the pool is counted again
                seen = len(list_shards(str(out)))
            time.sleep(0.2)

    init_ray(RayOptions(num_cpus=os.cpu_count()))
    try:
        warm = job(root / "warm")
        run_transcribe(warm.model_copy(update={"inputs": files[:32]}))  # imports, page cache
        clean = run_transcribe(job(root / "clean"))
        done, killed = threading.Event(), []
        chaos = threading.Thread(target=killer, args=(root / "faulty", done, killed), daemon=True)
        chaos.start()
        faulty = run_transcribe(job(root / "faulty"))
        done.set()
        chaos.join(timeout=5)
    finally:
        shutdown_ray()
    out = {}
    for name, report in (("clean", clean), ("faulty", faulty)):
        table = read_results(str(root / name), ["id", "text", "error"])
        ids = table.column("id").to_pylist()
        out[name] = {"wall_s": report["wall_s"], "rows": len(ids), "rows_lost": len(files) - len(set(ids)),
                     "duplicates": len(ids) - len(set(ids)), "errors_by_kind": report["errors_by_kind"],
                     "actor_restarts": report["extra"]["actor_restarts"]}
        out[name]["texts"] = {r["id"]: r["text"] for r in table.to_pylist()}
    same = out["clean"].pop("texts") == out["faulty"].pop("texts")
    return {"files": len(files), "kills": len(killed), **out, "faulty_texts_equal_clean": same}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer files and kills (under 10 minutes on 2 cores)")
    ap.add_argument("--json", help="write results here")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from voxray.testing import build_ctc_model

    tmp = Path(tempfile.mkdtemp(prefix="vx-jobscale-"))
    try:
        model = build_ctc_model(str(tmp / "model"), "tiny", seed=3)
        n_real = 2000 if args.quick else 4000
        real = make_files(tmp / "real", n_real)
        plan = bench_planning(tmp, 1_000_000, real, model, tail_s=15 if args.quick else 45)
        n_fault = 2000 if args.quick else 4000
        bad = make_files(tmp / "bad", 0, corrupt=max(1, n_fault // 20))
        small = build_ctc_model(str(tmp / "model-small"), "small", seed=3)
        faults = bench_faults(tmp, real[:n_fault] + bad, small, kills=3 if args.quick else 6)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    ratio = faults["faulty"]["wall_s"] / faults["clean"]["wall_s"]
    payload = {
        "benchmark": "job_scale", "quick": args.quick, "cpus": os.cpu_count(), "load_avg_at_end": os.getloadavg(),
        "planning_1m": plan, "faults": faults,
        "driver_peak_rss_mb_1m": plan["driver_peak_rss_mb"], "first_row_s_1m": plan["first_row_s"],
        "ratios": {"faulty_vs_clean_wall": ratio},
    }
    print(f"{'measure':<44} {'value':>12}")
    rows = [
        ("1M manifest: driver peak RSS (MB)", plan["driver_peak_rss_mb"]),
        ("1M manifest: first result at driver (s)", plan["first_result_s"]),
        ("1M manifest: first row on disk (s)", plan["first_row_s"]),
        ("1M manifest: rows committed before kill", plan["rows_committed_before_kill"]),
        ("1M manifest: Ray processes left after kill", plan["ray_processes_left_after_driver_kill"]),
        (f"faults: clean wall, {faults['files']} files (s)", faults["clean"]["wall_s"]),
        (f"faults: wall with {faults['kills']} actor kills (s)", faults["faulty"]["wall_s"]),
        ("faults: rows lost", faults["faulty"]["rows_lost"]),
        ("faults: duplicate ids", faults["faulty"]["duplicates"]),
        ("faults: texts equal the clean run", faults["faulty_texts_equal_clean"]),
    ]
    for name, value in rows:
        shown = f"{value:.2f}" if isinstance(value, float) else str(value)
        print(f"{name:<44} {shown:>12}")
    finish(payload, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
