"""`make demo`: the main jobs on the embedded defaults.

1. Synthesise the bundled sample manifest (English + Korean) with the embedded Kokoro model,
   fully offline, as a Ray Data job; print where the audio is.
2. Transcribe the Korean clips with the ASR model: $ASR_MODEL (a local dir) or the default hub
   model where the hub is reachable. Without either, say how to supply one and stop there.
"""

from __future__ import annotations

import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "demo-out")


def main() -> int:
    import ray

    from voxray.cluster import init_ray
    from voxray.config import DEFAULT_ASR_MODEL, ASROptions, RayOptions, TranscribeJob
    from voxray.errors import ModelUnavailableError
    from voxray.jobs.common import read_results
    from voxray.jobs.synthesize import run_synthesize
    from voxray.jobs.transcribe import run_transcribe
    from voxray.models import resolve_hf_model
    from voxray.tts.config import SynthesizeJob

    init_ray(RayOptions(num_cpus=os.cpu_count(), temp_dir=None))
    try:
        manifest = os.path.join(ROOT, "samples", "tts", "sentences.csv")
        tts_out = os.path.join(OUT, "tts")
        print(f"[1/2] synthesising {manifest} with the embedded Kokoro-82M (int8 ONNX) ...", flush=True)
        report = run_synthesize(SynthesizeJob(inputs=[manifest], out=tts_out, progress=False))
        rows = read_results(tts_out).to_pylist()
        for r in sorted(rows, key=lambda r: r["id"]):
            status = f"{r['duration_s']:6.2f} s  {r['path']}" if not r["error"] else f"ERROR {r['error']}"
            print(f"  {r['id']:<10} {status}")
        print(
            f"  {report['ok']} clips, {report['audio_s']:.1f} s of audio in {report['wall_s']:.1f} s "
            f"(real-time factor {report.get('rtf', report['wall_s'] / max(report['audio_s'], 1e-9)):.2f}); "
            f"audio in {os.path.join(tts_out, 'audio')}, report in {os.path.join(tts_out, 'run.json')}"
        )

        model = os.environ.get("ASR_MODEL") or DEFAULT_ASR_MODEL
        print(f"\n[2/2] transcribing the Korean clips with {model} ...", flush=True)
        try:
            resolve_hf_model(model)
        except ModelUnavailableError as exc:
            print(f"  ASR step stopped: {exc.message}")
            return 0
        korean = [r["path"] for r in rows if not r["error"] and str(r["id"]).startswith("ko")]
        asr_out = os.path.join(OUT, "asr")
        report = run_transcribe(
            TranscribeJob(inputs=korean, out=asr_out, progress=False, asr=ASROptions(model=model))
        )
        for r in sorted(read_results(asr_out).to_pylist(), key=lambda r: r["id"]):
            print(f"  {r['id']:<10} {r['text'] if not r['error'] else 'ERROR ' + r['error']}")
        print(json.dumps({k: report[k] for k in ("processed", "errors", "audio_s", "wall_s", "rtfx")}))
        print(f"  transcripts in {asr_out}")
        return 0
    finally:
        ray.shutdown()


if __name__ == "__main__":
    sys.exit(main())
