"""cluster/local.sh: a head and 2 workers on this machine; real jobs run across them; clean stop.

The cluster: head (1 CPU), worker 1 (2 CPUs, the "CPU group"), worker 2 (2 CPUs + 1 logical GPU,
the "GPU group"; VOXRAY_LOCAL_GPUS=1 on a CPU-only machine: torch/onnxruntime fall back to CPU in
the actor, but Ray schedules by the advertised resource). Jobs are driven from a subprocess, so
this test never touches the pytest process's own Ray session (the ``ray_cluster`` fixture):

- transcription: a driver connected with ``RayOptions(address=...)``; its model actor asks
  ``num_gpus`` and must land on worker 2, its decode tasks elsewhere too (the GPU is logical, so
  the actor is the tests' ``LogicalGPUTranscribeActor``: Ray schedules by the resource, torch runs on CPU).
- synthesis: submitted through the Job Submission API as ``voxray run SPEC --out DIR``, exactly
  what a KubeRay RayJob does; two 2-CPU TTS actors can only fit on two different workers.

Where things ran comes from Ray's state API (``ray.util.state``, via the dashboard), after the jobs.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "cluster" / "local.sh"
BIN = Path(sys.executable).parent


def _ours(marker: str) -> list[int]:
    """PIDs whose command line names our private cluster dir."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmdline and int(proc.name) != os.getpid():
            pids.append(int(proc.name))
    return pids


@pytest.fixture(scope="module")
def local_cluster() -> Iterator[dict[str, Any]]:
    tmp = tempfile.mkdtemp(prefix="vxl-", dir="/tmp")  # short: Ray's socket paths live under it
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(
        VOXRAY_LOCAL_DIR=tmp, VOXRAY_LOCAL_GPUS="1", VOXRAY_LOCAL_HEAD_CPUS="1", VOXRAY_LOCAL_CPUS="2",
        VOXRAY_LOCAL_DASHBOARD="1", PYTHON=sys.executable, RAY=str(BIN / "ray"),
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
    )
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(["bash", str(SCRIPT), "start"], env=env, capture_output=True, text=True, timeout=180)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        printed = dict(re.findall(r"^(RAY_ADDRESS|RAY_AUTH_MODE|DASHBOARD)=(\S+)", proc.stdout, re.M))
        assert set(printed) == {"RAY_ADDRESS", "RAY_AUTH_MODE", "DASHBOARD"}, proc.stdout
        status = subprocess.run(["bash", str(SCRIPT), "status"], env=env, capture_output=True, text=True, timeout=60)
        assert status.returncode == 0 and status.stdout.count(": running") == 3, status.stdout
        yield {**printed, "dir": tmp, "env": env, "start_s": f"{time.perf_counter() - t0:.1f}"}
    finally:
        stop = subprocess.run(["bash", str(SCRIPT), "stop"], env=env, capture_output=True, text=True, timeout=120)
        left = _ours(tmp)
        shutil.rmtree(tmp, ignore_errors=True)
        assert stop.returncode == 0, stop.stdout + stop.stderr
        assert not left, f"processes left behind: {left}"


DRIVER = r"""
import json, os, sys, time
sys.path.insert(0, os.environ["VOXRAY_TESTS"])
import ray
from job_faults import LogicalGPUTranscribeActor
from ray.job_submission import JobStatus, JobSubmissionClient
from ray.util.state import list_actors, list_nodes, list_tasks
from voxray.asr.config import ASROptions
from voxray.config import RayOptions, ResourceOptions
from voxray.jobs.transcribe import TranscribeJob
from voxray.jobs.transcribe import run_transcribe

address, dashboard, model, wavs, asr_out, tts_spec, tts_out = sys.argv[1:8]
result = {}

# 1. transcription, this process as the driver (joined, not started: init_ray leaves it to us)
ray.init(address=address, log_to_driver=False)
asr_job = ray.get_runtime_context().get_job_id()
t0 = time.perf_counter()
job = TranscribeJob(
    inputs=[wavs], out=asr_out, progress=False, ray=RayOptions(address=address),
    asr=ASROptions(model=model, threads=1),
    resources=ResourceOptions(cpus_per_actor=2),  # with its GPU, the actor takes all of worker 2
)
result["asr_report"] = run_transcribe(job, actor_cls=LogicalGPUTranscribeActor)  # a logical GPU: no CUDA
result["asr_s"] = time.perf_counter() - t0
ray.shutdown()

# 2. synthesis, submitted like a KubeRay RayJob: `voxray run SPEC --out DIR` on the cluster
client = JobSubmissionClient(dashboard)
t0 = time.perf_counter()
sub = client.submit_job(entrypoint=f"{sys.executable} -m voxray.cli run {tts_spec} --out {tts_out}")
while (status := client.get_job_status(sub)) not in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}:
    if time.perf_counter() - t0 > 240:
        client.stop_job(sub)
        break
    time.sleep(1)
result["tts_status"] = str(status)
result["tts_s"] = time.perf_counter() - t0
result["tts_logs"] = client.get_job_logs(sub)[-4000:]
tts_job = client.get_job_info(sub).job_id

# 3. where everything ran
def where(job_id):
    tasks = list_tasks(address=dashboard, filters=[("job_id", "=", job_id)], limit=10000,
                       raise_on_missing_output=False)
    actors = list_actors(address=dashboard, filters=[("job_id", "=", job_id)], limit=1000,
                         raise_on_missing_output=False)
    return {
        "tasks": [{"name": t.name, "node": t.node_id, "type": t.type} for t in tasks if t.node_id],
        "actors": [{"class": a.class_name, "node": a.node_id} for a in actors],
    }

result["asr_where"] = where(asr_job)
result["tts_where"] = where(tts_job)
result["nodes"] = {
    n.node_id: {"resources": n.resources_total, "head": n.is_head_node, "state": n.state}
    for n in list_nodes(address=dashboard, raise_on_missing_output=False)
}
print("RESULT " + json.dumps(result, default=str))
"""


def _write_inputs(root: Path) -> tuple[str, str, str, int, int]:
    from voxray.audio import write_audio
    from voxray.testing import build_ctc_model, synth_speechlike

    model = build_ctc_model(str(root / "model"), "tiny", seed=3)
    wavs = root / "wavs"
    wavs.mkdir()
    n_wavs = 24  # 3 blocks of 8 rows: several decode tasks
    for i in range(n_wavs):
        write_audio(str(wavs / f"utt{i:02d}.wav"), synth_speechlike(0.4 + 0.05 * i, seed=i), 16000)
    rows = ["id,text", "a,Hello there.", "b,Good morning.", "c,See you soon."]
    (root / "rows.csv").write_text("\n".join(rows) + "\n")
    spec = root / "synthesize.yaml"
    spec.write_text(
        f"""job: synthesize
inputs: [{root / "rows.csv"}]
out: {root / "unused"}
tts: {{model: embedded, voice: jf_alpha, lang: en-us}}
resources: {{actors: 2, gpus_per_actor: 0, cpus_per_actor: 2, threads_per_actor: 1, rows_per_call: 1}}
progress: false
"""
    )
    return model, str(wavs), str(spec), n_wavs, len(rows) - 1


def test_jobs_run_across_local_cluster_nodes(local_cluster: dict[str, Any], tmp_path: Path):
    from voxray.results import read_results

    model, wavs, spec, n_wavs, n_rows = _write_inputs(tmp_path)
    asr_out, tts_out = tmp_path / "asr", tmp_path / "tts"
    env = {**local_cluster["env"], "RAY_AUTH_MODE": local_cluster["RAY_AUTH_MODE"], "VOXRAY_TESTS": str(ROOT / "tests")}
    proc = subprocess.run(
        [sys.executable, "-c", DRIVER, local_cluster["RAY_ADDRESS"], local_cluster["DASHBOARD"], model, wavs,
         str(asr_out), spec, str(tts_out)],
        env=env, capture_output=True, text=True, timeout=420,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-5000:]
    result = json.loads(lines[-1][len("RESULT "):])
    nodes = result["nodes"]
    assert len(nodes) == 3 and all(n["state"] == "ALIVE" for n in nodes.values())
    gpu_node = next(k for k, n in nodes.items() if n["resources"].get("GPU"))
    head = next(k for k, n in nodes.items() if n["head"])
    assert nodes[gpu_node]["resources"].get("voxray_gpu_group") == 1

    # transcription: every row, its model actor on the GPU node (by resources), work on >1 node
    report = result["asr_report"]
    assert report["processed"] == n_wavs and report["errors"] == 0, report
    assert report["extra"]["gpus_per_actor"] == 1.0 and report["extra"]["actors"] == 1
    assert read_results(str(asr_out), ["id"]).num_rows == n_wavs
    where = result["asr_where"]
    model_actors = [a["node"] for a in where["actors"] if "TranscribeActor" in a["class"]]
    assert model_actors == [gpu_node], where["actors"]
    assert report["extra"]["actor_nodes"] == [gpu_node]
    decode_nodes = {t["node"] for t in where["tasks"] if "decode_stage" in t["name"]}
    probe_nodes = {t["node"] for t in where["tasks"] if "probe_block" in t["name"]}
    assert decode_nodes and probe_nodes
    used = decode_nodes | probe_nodes | set(model_actors)
    assert len(used) >= 2, f"transcription ran on one node only: {used}"
    # while the actor held worker 2's CPUs, decoding had to go elsewhere (results are committed by the driver)
    assert decode_nodes - {gpu_node}, decode_nodes

    # synthesis via the Job Submission API: two 2-CPU actors on the two workers, never the head
    assert result["tts_status"] == "SUCCEEDED", result["tts_logs"]
    tts = read_results(str(tts_out), ["id", "error", "duration_s", "path"]).to_pylist()
    assert sorted(r["id"] for r in tts) == ["a", "b", "c"] and len(tts) == n_rows
    assert all(r["error"] is None and r["duration_s"] > 0.3 and os.path.getsize(r["path"]) > 1000 for r in tts)
    tts_actors = [a["node"] for a in result["tts_where"]["actors"] if "SynthesizeActor" in a["class"]]
    assert len(tts_actors) == 2 and len(set(tts_actors)) == 2 and head not in tts_actors, tts_actors
    with open(tts_out / "run.json") as fh:
        assert json.load(fh)["processed"] == n_rows
    print(
        f"cluster start {local_cluster['start_s']} s, transcription {result['asr_s']:.1f} s, "
        f"synthesis {result['tts_s']:.1f} s"
    )
