"""Serve memory soak: sustained mixed traffic (TTS streaming, ASR, embeddings) against one replica
of each deployment, replica RSS after a warm-up that covers the longest inputs vs at the end.

    python benchmarks/serve_soak.py [--quick] [--json PATH] [--tts-requests 500] [--minutes 60]

The app is the shipped ``deployments/serve.yaml`` fitted to this machine as ``voxray serve`` fits
it (one replica each, so each deployment's memory is one process), with a random ASR/embedding
model of ``--size`` and the embedded Kokoro model. TTS requests mix lengths, voices, formats
(streamed pcm/wav/mp3, whole flac/opus) and a few clients that hang up mid-stream. Memory is
read from ``/proc/<pid>/status`` of each replica (VmRSS now, VmHWM peak) every second.

JSON ``ratios``: ``rss_growth_mb`` per deployment (target <= 50 for TTS over 500 requests),
``peak_rss_mb`` per deployment (TTS target <= 1024), ``errors_non_503`` (target 0).
"""

from __future__ import annotations

import argparse
import os
import random
import re
import sys
import tempfile
import threading
import time
from typing import Any

import httpx
import yaml
from _bench import finish

from voxray.procmem import memory_mb

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEPLOYMENTS = {"asr": "ASR", "embed": "Embed", "tts": "TTS"}
SENTENCES = [
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "Streaming speech should start quickly and never stop in the middle of a word.",
    "A sustained load test measures whether memory stays flat after the warm-up.",
    "Numbers like 1,234 and dates like March 3rd, 2024 are read out in full.",
    "Short one.",
    "Kokoro speaks this sentence with one of the five embedded voices.",
]
VOICES = ["jf_alpha", "jf_gongitsune", "jf_nezumi", "jf_tebukuro", "jm_kumo", "jf_alpha(2)+jm_kumo(1)"]
FORMATS = ["pcm", "pcm", "mp3", "wav", "flac", "opus"]


def replica_pids(base: str) -> dict[str, int]:
    text = httpx.get(f"{base}/metrics", timeout=120).text
    found = re.findall(r'voxray_deployment_batch\{deployment="(\w+)",stat="pid"\} ([0-9.e+]+)', text)
    return {k: int(float(v)) for k, v in found}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="bounded to a few minutes of traffic")
    ap.add_argument("--json")
    ap.add_argument("--size", default="small", help="ASR/embedding model size (voxray.testing.SIZES)")
    ap.add_argument("--tts-requests", type=int, default=None, help="stop after this many TTS requests (500)")
    ap.add_argument("--minutes", type=float, default=None, help="stop after this long (quick 4, else 60)")
    args = ap.parse_args(argv)
    tts_target = args.tts_requests or (10_000 if args.quick else 500)
    minutes = args.minutes or (4.0 if args.quick else 60.0)


    import ray
    from ray import serve

    from voxray.audio import encode_audio
    from voxray.deployments.app import build_app
    from voxray.deployments.config import ServeAppConfig
    from voxray.deployments.placement import fit_to_cluster
    from voxray.testing import build_ctc_model, synth_speechlike

    work = tempfile.mkdtemp(prefix="vxr-soak-", dir="/tmp")
    model = build_ctc_model(os.path.join(work, "model"), args.size)
    cpus = os.cpu_count() or 2
    with open(os.path.join(ROOT, "deployments", "serve.yaml"), encoding="utf-8") as fh:
        app_args = yaml.safe_load(fh)["applications"][0]["args"]
    app_args["asr"]["model"] = app_args["embed"]["model"] = model
    for kind in DEPLOYMENTS:  # one replica each: a deployment's memory is one process
        app_args[f"{kind}_deployment"]["autoscaling"] = {"min_replicas": 1, "max_replicas": 1}
    app_args["realtime_deployment"] = {"enabled": False}  # the soak drives the HTTP app only
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False, _temp_dir=os.path.join(work, "ray"))
    config = fit_to_cluster(ServeAppConfig(**app_args), float(cpus))
    port = 18000 + random.randrange(2000)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app(config), name="soak", route_prefix="/")
    base = f"http://127.0.0.1:{port}"
    client = httpx.Client(timeout=600, limits=httpx.Limits(max_connections=16))
    rng = random.Random(0)
    codes: dict[str, dict[int, int]] = {k: {} for k in DEPLOYMENTS}
    counts = {k: 0 for k in DEPLOYMENTS}
    lock = threading.Lock()

    def note(kind: str, status: int) -> None:
        with lock:
            codes[kind][status] = codes[kind].get(status, 0) + 1
            counts[kind] += 1

    def tts(text: str, fmt: str, voice: str, hang_up: bool = False) -> None:
        body = {"input": text, "response_format": fmt, "voice": voice}
        with client.stream("POST", f"{base}/v1/audio/speech", json=body) as r:
            for _ in r.iter_bytes():
                if hang_up:
                    break
            note("tts", r.status_code)

    clips = {d: encode_audio(synth_speechlike(d, seed=int(d * 10)), 16000, "flac") for d in (1.5, 4.0, 9.0, 20.0)}

    def asr(seconds: float) -> None:
        r = client.post(f"{base}/v1/audio/transcriptions", files={"file": ("a.flac", clips[seconds])},
                        data={"response_format": rng.choice(["json", "verbose_json", "srt"])})
        note("asr", r.status_code)

    def embed(seconds: float) -> None:
        r = client.post(f"{base}/v1/audio/embeddings", files={"file": ("a.flac", clips[seconds])})
        note("embed", r.status_code)

    # ---- warm-up: the longest inputs each deployment will see, every TTS format
    t0 = time.perf_counter()
    longest = " ".join(SENTENCES * 2)  # several full-size (max_tokens) chunks
    for fmt in dict.fromkeys(FORMATS):  # every format at the longest text: encoders' largest buffers
        tts(longest, fmt, "jf_alpha")
    for voice in VOICES:  # every voice (and the blend) loaded once
        tts(SENTENCES[4], "pcm", voice)
    long_clip = encode_audio(synth_speechlike(60.0, seed=1), 16000, "flac")  # chunked path of the encoder
    for route in ("transcriptions", "embeddings"):
        client.post(f"{base}/v1/audio/{route}", files={"file": ("long.flac", long_clip)})
    for d in clips:
        asr(d)
        embed(d)
    pids = replica_pids(base)
    time.sleep(3.0)  # both readings are of idle replicas, a few seconds after their last request
    warm = {k: memory_mb(pids[k])[0] for k in DEPLOYMENTS}
    warm_s = time.perf_counter() - t0
    print(f"warm-up {warm_s:.0f} s; RSS after warm-up (MB): " + ", ".join(f"{k} {v:.0f}" for k, v in warm.items()),
          flush=True)
    counts = {k: 0 for k in DEPLOYMENTS}
    codes = {k: {} for k in DEPLOYMENTS}

    # ---- sustained mixed traffic, memory sampled every second
    stop = threading.Event()
    samples: list[dict[str, Any]] = []
    peak = {k: 0.0 for k in DEPLOYMENTS}
    start = time.perf_counter()
    deadline = start + minutes * 60

    def sampler() -> None:
        while not stop.is_set():
            row: dict[str, Any] = {"t": round(time.perf_counter() - start, 1), "tts_requests": counts["tts"]}
            for k, pid in pids.items():
                rss, hwm = memory_mb(pid)
                row[k] = round(rss, 1)
                peak[k] = max(peak[k], hwm)
            samples.append(row)
            stop.wait(1.0)

    def tts_worker(seed: int) -> None:
        r = random.Random(seed)
        while not stop.is_set() and counts["tts"] < tts_target:
            text = " ".join(r.choice(SENTENCES) for _ in range(r.choice([1, 1, 1, 1, 2, 3])))
            try:
                tts(text, r.choice(FORMATS), r.choice(VOICES), hang_up=r.random() < 0.05)
            except httpx.HTTPError:
                note("tts", 0)

    def audio_worker(kind: str, seed: int) -> None:
        r = random.Random(seed)
        while not stop.is_set():
            try:
                (asr if kind == "asr" else embed)(r.choice(list(clips)))
            except httpx.HTTPError:
                note(kind, 0)
            time.sleep(1.0)  # steady background load; TTS is the deployment under the memory target

    threads = [threading.Thread(target=sampler, daemon=True)]
    threads += [threading.Thread(target=tts_worker, args=(i,), daemon=True) for i in range(2)]
    threads += [threading.Thread(target=audio_worker, args=(k, i), daemon=True) for i, k in enumerate(("asr", "embed"))]
    for t in threads:
        t.start()
    while time.perf_counter() < deadline and counts["tts"] < tts_target:
        time.sleep(1.0)
        if int(time.perf_counter() - start) % 30 == 0:
            print(f"  {time.perf_counter() - start:.0f} s: {counts}; RSS " +
                  ", ".join(f"{k} {memory_mb(p)[0]:.0f}" for k, p in pids.items()), flush=True)
    stop.set()
    for t in threads[1:]:
        t.join(timeout=600)
    threads[0].join(timeout=5)
    wall = time.perf_counter() - start
    time.sleep(3.0)
    end = {k: memory_mb(pids[k])[0] for k in DEPLOYMENTS}
    final_pids = replica_pids(base)
    serve.shutdown()
    ray.shutdown()

    growth = {k: round(end[k] - warm[k], 1) for k in DEPLOYMENTS}
    errors = sum(n for k in codes for c, n in codes[k].items() if c not in (200, 503))
    print(f"\n{'deployment':<11}{'requests':>9}{'RSS warm MB':>13}{'RSS end MB':>12}{'growth MB':>11}{'peak MB':>9}")
    for k in DEPLOYMENTS:
        print(f"{k:<11}{counts[k]:>9}{warm[k]:>13.0f}{end[k]:>12.0f}{growth[k]:>11.1f}{peak[k]:>9.0f}")
    print(f"\n{wall:.0f} s of traffic; status codes {codes}; replicas restarted: "
          f"{sorted(k for k in pids if final_pids.get(k) != pids[k])}")
    payload = {
        "benchmark": "serve_soak", "quick": args.quick, "asr_model_size": args.size, "cpus": cpus,
        "fitted": {k: getattr(config, f"{k}_deployment").num_cpus for k in DEPLOYMENTS},
        "warmup_s": warm_s, "traffic_s": wall, "requests": counts, "codes": codes,
        "rss_warm_mb": warm, "rss_end_mb": end, "samples": samples[:: max(1, len(samples) // 400)],
        "ratios": {"rss_growth_mb": growth, "peak_rss_mb": {k: round(v, 1) for k, v in peak.items()},
                   "errors_non_503": errors},
    }

    finish(payload, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
