"""Streaming ASR: accuracy vs window size, and live WebSocket clients with cross-stream batching on/off.

    python benchmarks/streaming.py [--quick] [--json PATH]

1. Accuracy and compute (in-process, the shipped Korean model, the committed clips): CER of the
   streaming finals for chunk 0.32/0.64/1.0/2.0 s and two left contexts vs offline
   ``ASRRunner.transcribe`` on the same clips, and compute seconds per audio second of each.
2. Live load: a local Serve app (``/v1/realtime``, the shipped model) and N simulated clients
   (1, 8, 32; more without --quick), each sending pcm16 in 100 ms packets at real time, looping the
   committed clips with pauses. Text latency = arrival of a delta - the wall time its last audio
   sample was sent (the delta's ``audio_end_ms``); final latency = commit -> completed. A client
   count is "sustained" when the p95 text latency stays within chunk + lookahead + 0.3 s. The same
   scan runs with cross-stream batching on and off (``batch_streams``); the ratio of the most
   streams each sustains is ``batched_vs_unbatched_streams`` (target >= 1.5).
3. The same live run for one client with XLSR-large random weights (the Korean default's
   architecture: speed does not depend on weights), which is where a CPU runs out first.
4. Forward scaling (in-process, the replica's thread count): transformer cost per window when B
   windows of the default size run as one forward, B = 1..32, for the shipped model and
   XLSR-large. Cross-stream batching can only sustain more streams where this cost falls with B:
   on a GPU a forward of 32 windows costs about one; on a CPU the cost is compute, flat in B.

``--device cuda`` runs the replica and section 4 on a GPU (``--threads`` sets the CPU threads).

JSON ``ratios``: ``batched_vs_unbatched_streams``, ``streaming_vs_offline_cer``, plus
``p95_text_latency_s`` (at 8 streams, target <= chunk + lookahead + 0.3 s).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import csv
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _bench import finish

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "models" / "ko-synthetic-ctc"
CLIPS = ROOT / "samples" / "ko"
PACKET_S = 0.1


def _clips() -> tuple[list[np.ndarray], list[str]]:
    from voxray.audio import decode_audio

    rows = list(csv.DictReader((CLIPS / "espeak.csv").read_text(encoding="utf-8").splitlines()))
    return [decode_audio(str(CLIPS / r["path"])) for r in rows], [r["text"] for r in rows]


def accuracy_table(audios: list[np.ndarray], refs: list[str]) -> dict:
    from voxray.asr import ASRRunner
    from voxray.asr.config import ASROptions
    from voxray.asr.streaming import StreamingASR, StreamingOptions
    from voxray.text_ko import cer_ignoring_spaces

    runner = ASRRunner(ASROptions(model=str(SHIPPED)))
    audio_s = sum(len(a) for a in audios) / 16000
    runner.transcribe(audios[:2])  # warm-up
    t = time.perf_counter()
    offline = [r.text for r in runner.transcribe(audios)]
    offline_s = time.perf_counter() - t
    rows = []
    for chunk in (0.32, 0.64, 1.0, 2.0):
        for left in (1.6, 3.2):
            engine = StreamingASR.from_runner(runner, StreamingOptions(chunk_s=chunk, left_s=left))
            hyps, t = [], time.perf_counter()
            for audio in audios:
                session = engine.session()
                events = []
                for i in range(0, len(audio), int(PACKET_S * 16000)):
                    events += session.feed(audio[i: i + int(PACKET_S * 16000)])
                events += session.finish()
                hyps.append(" ".join(e.text for e in events if e.kind == "final"))
            rows.append({"chunk_s": chunk, "left_s": left, "lookahead_s": engine.options.lookahead_s,
                         "cer": cer_ignoring_spaces(refs, hyps),
                         "compute_per_audio_s": (time.perf_counter() - t) / audio_s})
    default = StreamingOptions()
    pick = next(r for r in rows if r["chunk_s"] == default.chunk_s and r["left_s"] == default.left_s)
    return {"offline_cer": cer_ignoring_spaces(refs, offline), "offline_compute_per_audio_s": offline_s / audio_s,
            "rows": rows, "default": pick, "clips": len(audios), "audio_s": audio_s}


async def _client(base: str, audio: np.ndarray, seconds: float, out: dict) -> None:
    import websockets

    ws = await websockets.connect(f"ws://{base}/v1/realtime?intent=transcription", open_timeout=120,
                                  max_size=None)
    await ws.recv()
    await ws.send(json.dumps({"type": "transcription_session.update",
                              "session": {"input_audio_sample_rate": 16000}}))
    sent_at: list[float] = []  # wall time each packet's last sample was sent
    step = int(PACKET_S * 16000)
    latencies: list[float] = []
    done = asyncio.Event()

    async def receive() -> None:
        async for message in ws:
            ev = json.loads(message)
            kind = ev["type"]
            if kind.endswith("transcription.delta") and sent_at:
                idx = min(len(sent_at) - 1, max(0, int(ev["audio_end_ms"] / 1000 / PACKET_S)))
                latencies.append(time.monotonic() - sent_at[idx])
            elif kind.endswith("transcription.completed") and done.is_set():
                out.setdefault("final_latency", []).append(time.monotonic() - out["commit_at"])
                return

    receiver = asyncio.create_task(receive())
    start = time.monotonic()
    n_packets = int(seconds / PACKET_S)
    for k in range(n_packets):
        i = (k * step) % max(1, len(audio) - step)
        await asyncio.sleep(max(0.0, start + (k + 1) * PACKET_S - time.monotonic()))  # real time
        piece = (np.clip(audio[i: i + step], -1, 1) * 32767).astype("<i2").tobytes()
        await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(piece).decode()}))
        sent_at.append(time.monotonic())
    done.set()
    out["commit_at"] = time.monotonic()
    await ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
    try:
        await asyncio.wait_for(receiver, 120)
    except TimeoutError:
        receiver.cancel()
    await ws.close()
    out.setdefault("latencies", []).extend(latencies)


def live(base: str, audio: np.ndarray, clients: int, seconds: float) -> dict:
    async def go() -> list[dict]:
        outs = [{} for _ in range(clients)]
        await asyncio.gather(*(_client(base, np.roll(audio, 4000 * i), seconds, o) for i, o in enumerate(outs)))
        return outs

    import httpx

    before = httpx.get(f"http://{base}/v1/realtime/stats", timeout=30).json()
    outs = asyncio.run(go())
    after = httpx.get(f"http://{base}/v1/realtime/stats", timeout=30).json()
    forwards = after["forwards"] - before["forwards"]
    lat = sorted(x for o in outs for x in o.get("latencies", []))
    finals = [x for o in outs for x in o.get("final_latency", [])]

    def q(p: float) -> float:
        return lat[min(len(lat) - 1, int(p * len(lat)))] if lat else float("inf")

    return {"clients": clients, "deltas": len(lat), "p50_text_latency_s": q(0.5), "p95_text_latency_s": q(0.95),
            "final_latency_s": statistics.median(finals) if finals else float("inf"),
            "windows_per_forward": (after["windows"] - before["windows"]) / forwards if forwards else 0.0}


def forward_scaling(model: str, device: str, threads: int, batches: tuple[int, ...]) -> list[dict]:
    """Transformer ms per window when ``B`` default-size windows run as one forward."""
    import torch

    from voxray.asr import ASRRunner
    from voxray.asr.config import ASROptions
    from voxray.asr.streaming import StreamingASR, Window

    runner = ASRRunner(ASROptions(model=model, device=device, threads=threads))
    engine = StreamingASR.from_runner(runner)
    frames = engine.left_frames + engine.chunk_frames + engine.lookahead_frames
    dim = runner.model.config.conv_dim[-1]
    rng = np.random.default_rng(0)
    keep = slice(engine.left_frames, engine.left_frames + engine.chunk_frames)
    rows = []
    for b in batches:
        windows = [Window(rng.standard_normal((frames, dim), dtype=np.float32), keep, 0) for _ in range(b)]
        engine.forward_windows(windows)  # warm-up (kernels, allocator)
        reps = max(3, 48 // b)
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(reps):
            engine.forward_windows(windows)  # returns numpy: the device work is done
        per = (time.perf_counter() - t) / reps
        rows.append({"batch": b, "forward_ms": per * 1000, "ms_per_window": per * 1000 / b})
    return rows


def _deploy(model: str, batch_streams: bool, port: int, device: str, threads: int) -> str:
    from ray import serve

    from voxray.deployments.realtime import build_realtime_app

    placement = {"num_gpus": 1, "num_cpus": 1} if device == "cuda" else {"num_cpus": 0.5}
    serve.run(build_realtime_app({"asr": {"model": model, "device": device, "threads": threads},
                                  "realtime_deployment": {**placement, "max_sessions": 128,
                                                          "autoscaling": {"max_replicas": 1},
                                                          "batch_streams": batch_streams}}),
              name="voxray-realtime", route_prefix="/v1/realtime")
    return f"127.0.0.1:{port}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1/8/16/24/32 clients, 10 s each, XLSR-large 1 client")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where the replica runs the model")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the replica (0.5 CPU: 1)")
    ap.add_argument("--max-clients", type=int, default=None, help="extend the client scan up to this many")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import ray
    from ray import serve

    from voxray.asr.streaming import StreamingOptions
    from voxray.testing import build_ctc_model

    audios, refs = _clips()
    print("accuracy (in-process, shipped model, committed clips)...", flush=True)
    acc = accuracy_table(audios, refs)
    print(f"{'chunk_s':>8} {'left_s':>7} {'CER':>7} {'compute/audio s':>16}")
    print(f"{'offline':>8} {'':>7} {acc['offline_cer']:7.3f} {acc['offline_compute_per_audio_s']:16.4f}")
    for r in acc["rows"]:
        print(f"{r['chunk_s']:8.2f} {r['left_s']:7.1f} {r['cer']:7.3f} {r['compute_per_audio_s']:16.4f}")

    pause = np.zeros(int(0.8 * 16000), np.float32)
    loop_audio = np.concatenate([x for a in audios for x in (a, pause)])
    defaults = StreamingOptions()
    budget = defaults.chunk_s + defaults.lookahead_s + 0.3
    seconds = 10.0 if args.quick else 30.0
    counts = (1, 8, 12, 16, 24, 32) if args.quick else (1, 4, 8, 12, 16, 24, 32, 48, 64)
    if args.max_clients:
        counts = tuple(c for c in counts if c <= args.max_clients) + tuple(
            c for c in (96, 128) if c <= args.max_clients)
    tmp = tempfile.mkdtemp(prefix="vxr-bench-")
    port = 18000 + os.getpid() % 1000
    ray.init(num_cpus=max(2, os.cpu_count() or 2) if args.device == "cuda" else 2, include_dashboard=False,
             _temp_dir=tmp, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    scans: dict[str, list[dict]] = {}
    try:
        for batched in (True, False):
            label = "batched" if batched else "unbatched"
            base = _deploy(str(SHIPPED), batched, port, args.device, args.threads)
            scans[label] = []
            for n in counts:
                r = live(base, loop_audio, n, seconds)
                r["sustained"] = r["p95_text_latency_s"] <= budget
                scans[label].append(r)
                print(f"{label:>9} {n:3d} clients: p50 {r['p50_text_latency_s']:.2f} s, "
                      f"p95 {r['p95_text_latency_s']:.2f} s, final {r['final_latency_s']:.2f} s, "
                      f"{r['windows_per_forward']:.2f} windows/forward, "
                      f"{'sustained' if r['sustained'] else 'NOT real-time'}", flush=True)
            serve.delete("voxray-realtime")
        big_dir = os.path.join(tmp, "xlsr-large")
        print("XLSR-large (random weights), 1 client...", flush=True)
        build_ctc_model(big_dir, "xlsr-large", seed=0)
        base = _deploy(big_dir, True, port, args.device, args.threads)
        big = live(base, loop_audio, 1, seconds)
        big["sustained"] = big["p95_text_latency_s"] <= budget
        print(f"xlsr-large 1 client: p95 {big['p95_text_latency_s']:.2f} s "
              f"({'sustained' if big['sustained'] else 'NOT real-time on this CPU'})")
    finally:
        serve.shutdown()
        ray.shutdown()

    print("forward scaling (in-process, ms of transformer per window at batch B)...", flush=True)
    batches = (1, 2, 4, 8, 16, 32)
    scaling = {"shipped": forward_scaling(str(SHIPPED), args.device, args.threads, batches),
               "xlsr_large": forward_scaling(big_dir, args.device, args.threads, batches if args.device == "cuda"
                                             else (1, 4, 8))}
    print(f"{'model':>10} " + " ".join(f"{'B=' + str(r['batch']):>8}" for r in scaling["shipped"]))
    for name, rows in scaling.items():
        print(f"{name:>10} " + " ".join(f"{r['ms_per_window']:8.1f}" for r in rows))

    def most(label: str) -> int:
        return max([r["clients"] for r in scans[label] if r["sustained"]], default=0)

    at8 = next(r for r in scans["batched"] if r["clients"] == 8)
    ratios = {
        "batched_vs_unbatched_streams": most("batched") / max(1, most("unbatched")),
        "streaming_vs_offline_cer": acc["default"]["cer"] / max(acc["offline_cer"], 1e-9),
    }
    payload = {"ratios": ratios, "p95_text_latency_s": at8["p95_text_latency_s"], "latency_budget_s": budget,
               "streams_sustained": {k: most(k) for k in scans}, "scans": scans, "xlsr_large": big,
               "forward_scaling_ms_per_window": scaling, "accuracy": acc, "defaults": defaults.model_dump(),
               "quick": args.quick, "cpus": os.cpu_count(), "device": args.device, "threads": args.threads}
    finish(payload, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
