"""An elastic GPU pool on a multi-node cluster on one machine (``ray.cluster_utils.Cluster``).

The head has no GPU; the cluster config in the GCS declares a GPU node group at zero nodes, as the
KubeRay autoscaler does. ``--device auto`` must read that as a GPU job; a job that cannot get its
actors within a short wait fails naming what it asked for; the real job waits, a node with a
(logical) GPU joins seconds later, its actor starts there and every row is written; the production
actor on that GPU, which has no CUDA device behind it, stops its job with one message instead of
running on CPU. The driver is its own process (a RayJob's entrypoint); the test process only adds
the node.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

HERE = Path(__file__).resolve().parent


def declare_gpu_group(gcs_address: str, max_nodes: int) -> None:
    """What an autoscaler publishes: node groups and their maximum size (read back by ``--device auto``)."""
    import ray._raylet as raylet
    from ray.core.generated import autoscaler_pb2

    config = autoscaler_pb2.ClusterConfig(node_group_configs=[
        autoscaler_pb2.NodeGroupConfig(name="head", resources={"CPU": 2}, min_count=1, max_count=1),
        autoscaler_pb2.NodeGroupConfig(name="gpu-workers", resources={"CPU": 1, "GPU": 1}, min_count=0,
                                       max_count=max_nodes),
    ])
    client = raylet.GcsClient(address=gcs_address)
    client.internal_kv_put(raylet.GCS_AUTOSCALER_CLUSTER_CONFIG_KEY.encode(), config.SerializeToString(), True,
                           raylet.GCS_AUTOSCALER_STATE_NAMESPACE.encode())


def test_gpu_job_waits_for_a_gpu_node_and_runs_there(tmp_path):
    from ray.cluster_utils import Cluster

    from voxray.audio import write_audio
    from voxray.results import read_results
    from voxray.testing import build_ctc_model, synth_speechlike

    wavs = tmp_path / "wavs"
    wavs.mkdir()
    for i in range(12):
        write_audio(str(wavs / f"c{i:02d}.wav"), synth_speechlike(0.5 + 0.05 * i, seed=i), 16000)
    model = build_ctc_model(str(tmp_path / "model"), "tiny", seed=2)
    ray_tmp = tempfile.mkdtemp(prefix="vxe-", dir="/tmp")  # short: Ray's socket paths live under it
    cluster = Cluster(initialize_head=True,
                      head_node_args={"num_cpus": 2, "temp_dir": ray_tmp, "include_dashboard": False})
    proc = None
    try:
        declare_gpu_group(cluster.gcs_address, max_nodes=1)
        out = tmp_path / "out"
        job = {"inputs": [str(wavs)], "out": str(out), "asr": {"model": model}, "progress": False,
               "ray": {"address": cluster.address}, "resources": {"rows_per_call": 4, "wait_for_actors_s": 300}}
        spec = {"job": job, "actor": "LogicalGPUTranscribeActor",
                "before": [{"out": str(tmp_path / "short"), "resources": {"wait_for_actors_s": 3}}],
                "after": [{"out": str(tmp_path / "no-cuda")}]}  # the production actor on the logical GPU
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        proc = subprocess.Popen([sys.executable, str(HERE / "job_driver.py"), json.dumps(spec)], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        lines: list[str] = []
        errors: list[str] = []
        readers = [threading.Thread(target=lambda s=s, into=into: into.extend(s), daemon=True)
                   for s, into in ((proc.stdout, lines), (proc.stderr, errors))]
        for r in readers:
            r.start()
        deadline = time.time() + 300
        while not any(line.startswith("BEFORE") for line in lines) and proc.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        before = [line for line in lines if line.startswith("BEFORE")]
        assert before, "".join(lines + errors)[-4000:]
        # the first job gave up after its wait, naming what it asked for and what the cluster has
        assert before[0].startswith("BEFORE CapacityError: waited 3 s for 1 model actor with 1 GPU"), before[0]
        assert "autoscaler can grow it to CPU 3, GPU 1" in before[0], before[0]
        time.sleep(3)  # the real job is waiting for its GPU actor now
        gpu_node = cluster.add_node(num_cpus=1, num_gpus=1)
        proc.wait(timeout=400)
        for r in readers:
            r.join(timeout=5)
        reports = [json.loads(line[len("REPORT "):]) for line in lines if line.startswith("REPORT ")]
        assert proc.returncode == 0 and reports, "".join(lines + errors)[-4000:]
        report = reports[-1]
        assert report["processed"] == 12 and report["errors"] == 0, report
        assert report["extra"]["device"] == "gpu" and report["extra"]["gpus_per_actor"] == 1.0  # auto -> gpu
        assert report["extra"]["actor_nodes"] == [gpu_node.node_id], report["extra"]  # started where GPUs joined
        assert sorted(read_results(str(out), ["id"]).column("id").to_pylist()) == [f"c{i:02d}" for i in range(12)]
        # the production actor, given that GPU, finds no CUDA device: the job stops saying so, no CPU fallback
        (after,) = [line for line in lines if line.startswith("AFTER")]
        assert after.startswith("AFTER DeviceUnavailableError: a model actor on ") and "--device cpu" in after, after
        assert not os.path.exists(tmp_path / "no-cuda") or not read_results(str(tmp_path / "no-cuda")).num_rows
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
        cluster.shutdown()
        shutil.rmtree(ray_tmp, ignore_errors=True)
