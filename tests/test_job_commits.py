"""Crash-safe output, resume bookkeeping, columnar input listing and pool planning (no Ray: fast)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from voxray.cluster import CapacityError, ClusterView, check_capacity, plan_pool, resolve_device
from voxray.config import JobOptions, ResourceOptions
from voxray.corpus import expand_inputs, input_table
from voxray.results import QUARANTINE_DIR, ShardWriter, list_shards, read_results, scan_output, write_table_atomic

SCHEMA = pa.schema([("id", pa.string()), ("duration_s", pa.float64()), ("error", pa.string())])


def rows(ids: list[str], error: str | None = None) -> pa.Table:
    return pa.table({"id": ids, "duration_s": [1.0] * len(ids), "error": [error] * len(ids)}, schema=SCHEMA)


def test_writer_commits_by_rows_and_by_age(tmp_path):
    out = str(tmp_path)
    seen = []
    w = ShardWriter(out, SCHEMA, every_rows=5, every_s=0.3, on_commit=lambda url, t: seen.append(t.num_rows))
    w.add(rows(["a", "b", "c"]))
    assert list_shards(out) == []  # under both bounds: nothing visible yet
    w.add(rows(["d", "e"]))  # 5 rows: committed
    assert len(list_shards(out)) == 1 and seen == [5]
    w.add(rows(["f"]))
    w.flush_if_due()
    assert len(list_shards(out)) == 1  # too young
    time.sleep(0.35)
    w.flush_if_due()  # the age bound: committed without a new row arriving
    assert len(list_shards(out)) == 2 and seen == [5, 1]
    assert sorted(read_results(out, ["id"]).column("id").to_pylist()) == list("abcdef")
    assert not [n for n in os.listdir(out) if not n.endswith(".parquet")]  # no temporary left


KILLED_WRITER = r"""
import sys, pyarrow as pa
from voxray.results import write_table_atomic
out = sys.argv[1]
big = pa.table({"id": [f"r{i:07d}" for i in range(200_000)], "x": list(range(200_000))})
n = 0
while True:
    write_table_atomic(big, f"{out}/part-{n:05d}.parquet")
    print(n, flush=True)
    n += 1
"""


def test_sigkill_mid_write_never_leaves_a_truncated_shard(tmp_path):
    """A writer SIGKILLed at arbitrary moments leaves complete shards and hidden temporaries only."""
    out = tmp_path / "out"
    out.mkdir()
    for delay in (0.15, 0.4, 0.9):
        proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(out)], stdout=subprocess.PIPE, text=True)
        proc.stdout.readline()  # one shard done, the next one in flight
        time.sleep(delay)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    for name in os.listdir(out):
        if name.endswith(".parquet"):
            assert pq.read_metadata(out / name).num_rows == 200_000, name
        else:
            assert name.startswith(".") and ".tmp-" in name, name  # an uncommitted temporary
    scan = scan_output(str(out))
    assert not scan.quarantined and scan.rows == 200_000 * len(list_shards(str(out)))
    assert not [n for n in os.listdir(out) if ".tmp-" in n]  # stale temporaries are removed on resume


def test_truncated_shard_is_quarantined_and_its_ids_redone(tmp_path):
    out = str(tmp_path)
    write_table_atomic(rows(["a", "b"]), f"{out}/part-1.parquet")
    write_table_atomic(rows(["c", "d"]), f"{out}/part-2.parquet")
    data = (tmp_path / "part-2.parquet").read_bytes()
    (tmp_path / "old-writer.parquet").write_bytes(data[: len(data) // 2])  # what a killed non-atomic writer leaves
    with pytest.raises(pa.ArrowInvalid):
        pq.read_table(tmp_path / "old-writer.parquet")
    scan = scan_output(out)
    assert sorted(scan.done_ids.to_pylist()) == ["a", "b", "c", "d"] and len(scan.quarantined) == 1
    assert os.path.exists(os.path.join(out, QUARANTINE_DIR, "old-writer.parquet"))
    assert sorted(os.path.basename(s) for s in list_shards(out)) == ["part-1.parquet", "part-2.parquet"]


def test_retry_error_kinds_and_newest_row_wins(tmp_path):
    out = str(tmp_path)
    write_table_atomic(pa.table({"id": ["ok", "crashed", "bad", "flaky"], "duration_s": [1.0, None, None, None],
                                 "error": [None, "crash: the model worker died 2 times", "decode: not audio",
                                           "io: OSError: connection reset"]}, schema=SCHEMA), f"{out}/part-a.parquet")
    assert sorted(scan_output(out).done_ids.to_pylist()) == ["bad", "crashed", "flaky", "ok"]  # default: keep all
    job = JobOptions(out=out, retry_errors=["transient"])
    assert job.retry_errors == ["crash", "timeout", "io"]
    scan = scan_output(out, job.retry_errors)
    assert sorted(scan.retry_ids.to_pylist()) == ["crashed", "flaky"]
    assert sorted(scan.done_ids.to_pylist()) == ["bad", "ok"]
    time.sleep(0.01)  # the retried rows land in a newer shard; the old rows are superseded
    write_table_atomic(rows(["crashed", "flaky"]), f"{out}/part-b.parquet")
    after = scan_output(out)
    assert after.duplicates_resolved == 2 and after.rows == 4
    table = read_results(out)
    assert sorted(table.column("id").to_pylist()) == ["bad", "crashed", "flaky", "ok"]
    assert {r["id"]: r["error"] for r in table.to_pylist()}["crashed"] is None
    with pytest.raises(ValueError, match="not an error kind"):
        JobOptions(out=out, retry_errors=["corpus/"])


def test_input_table_is_columnar_and_keeps_manifest_durations(tmp_path):
    manifest = tmp_path / "big.csv"
    n = 100_000
    with open(manifest, "w") as fh:
        fh.write("id,path,duration_s,text\n")
        for i in range(n):
            fh.write(f"u{i},audio/f{i % 50}.wav,{1 + i % 7},hello\n")
    t0 = time.perf_counter()
    table = input_table([str(manifest)])
    assert time.perf_counter() - t0 < 10
    assert table.num_rows == n and table.schema.names == ["id", "path", "duration_s"]
    assert table.column("path")[3].as_py() == str(tmp_path / "audio" / "f3.wav")
    assert table.column("duration_s")[3].as_py() == 4.0
    small = tmp_path / "m.jsonl"
    small.write_text("\n".join(json.dumps(r) for r in [{"path": "a/x.wav"}, {"id": 7, "path": "y.flac"},
                                                         {"id": "x", "path": "b/x.wav"}]))
    listed = input_table([str(small)]).to_pylist()
    assert [r["id"] for r in listed] == [r["id"] for r in expand_inputs([str(small)])]  # the same ids
    assert len({r["id"] for r in listed}) == 3 and listed[1]["id"] == "7"


def test_pool_planning_device_and_capacity():
    none = ClusterView(cpus=4, gpus=0)  # a joined cluster that declares nothing
    declared = ClusterView(cpus=4, gpus=0, declared={"CPU": 36, "GPU": 8})  # a KubeRay GPU group at 0 replicas
    local = ClusterView(cpus=2, gpus=0, local=True)
    assert resolve_device(ResourceOptions(), none) == "cpu"
    assert resolve_device(ResourceOptions(), declared) == "gpu"  # auto reads the declared capacity
    assert resolve_device(ResourceOptions(gpus_per_actor=0.5), none) == "gpu"
    gpu = plan_pool(ResourceOptions(), declared)
    assert (gpu.device, gpu.num_gpus, gpu.min_actors, gpu.max_actors, gpu.wait_s) == ("gpu", 1.0, 1, 8, 600)
    packed = plan_pool(ResourceOptions(gpus_per_actor=0.25, min_actors=2), declared)
    assert (packed.min_actors, packed.max_actors) == (2, 32)
    unknown = plan_pool(ResourceOptions(device="gpu"), none)
    assert unknown.max_actors is None  # GPUs may still join: the pool takes what comes
    tts = plan_pool(ResourceOptions(device="gpu"), declared, default_gpus_per_actor=0.25, cpu_actor_per_core=True)
    assert tts.num_gpus == 0.25 and tts.max_actors == 32  # Kokoro: four actors per GPU
    cpu = plan_pool(ResourceOptions(), local)
    assert (cpu.device, cpu.max_actors, cpu.threads, cpu.wait_s) == ("cpu", 1, 2, 0)
    check_capacity(cpu, local)
    check_capacity(gpu, declared)  # not there yet, but the autoscaler can bring it: wait
    with pytest.raises(CapacityError, match="local cluster started by voxray"):
        check_capacity(plan_pool(ResourceOptions(device="gpu"), local), local)
    with pytest.raises(CapacityError, match="autoscaler can grow it to CPU 36, GPU 8"):
        check_capacity(plan_pool(ResourceOptions(device="gpu", min_actors=9), declared), declared)
    assert plan_pool(ResourceOptions(actors=3), declared).max_actors == 3
    with pytest.raises(ValueError, match="either actors"):
        ResourceOptions(actors=2, max_actors=4)


def test_job_flags(tmp_path):
    from voxray.cli import build_parser, collect_options
    from voxray.jobs.transcribe import TranscribeJob

    args = build_parser().parse_args(["transcribe", "a.wav", "--out", "o", "--device", "gpu", "--min-actors", "2",
                                      "--max-actors", "8", "--retry-errors", "--commit-rows", "100", "--json"])
    job = TranscribeJob(**collect_options(args))
    assert job.resources.device == "gpu" and (job.resources.min_actors, job.resources.max_actors) == (2, 8)
    assert job.retry_errors == ["crash", "timeout", "io"] and job.commit_rows == 100 and args._json
    args = build_parser().parse_args(["transcribe", "a.wav", "--out", "o", "--retry-errors", "crash,decode"])
    assert TranscribeJob(**collect_options(args)).retry_errors == ["crash", "decode"]
    with pytest.raises(ValueError, match="resources.device"):
        TranscribeJob(out="o", asr={"device": "cuda"})  # one home for a job's device


def test_probe_block_uses_manifest_durations_and_sorts_the_window(tmp_path):
    import numpy as np

    from voxray.audio import write_audio
    from voxray.jobs.audio_stages import probe_block

    write_audio(str(tmp_path / "a.wav"), np.zeros(8000, np.float32), 16000)  # 0.5 s, probed from its header
    batch = {"id": np.array(["given", "probed", "broken"], object),
             "path": np.array([str(tmp_path / "not-read.wav"), str(tmp_path / "a.wav"), str(tmp_path / "no.wav")],
                              object),
             "duration_s": np.array([3.0, np.nan, np.nan])}
    out = probe_block(batch)
    assert list(out["id"]) == ["broken", "probed", "given"]  # unreadable first (fails fast), then by length
    assert list(out["duration_s"]) == [-1.0, 0.5, 3.0]  # the manifest's 3.0 kept: that file was never opened
