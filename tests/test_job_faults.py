"""Jobs under real faults, on real Ray: a poison input, a SIGKILLed model actor, a SIGKILLed driver.

Each fault is real (a process killed with SIGKILL, by the test or by itself); what is checked is
what a user needs: exactly one row per input, the same transcripts as an uninterrupted run, nothing
left running, and bounded time. The poison comes from a test subclass (``job_faults``), never from
a production option.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """20 short clips + one non-audio file, a tiny model, and the in-process runner's transcripts."""
    from voxray.asr import ASRRunner
    from voxray.asr.config import ASROptions
    from voxray.audio import decode_audio, write_audio
    from voxray.testing import build_ctc_model, synth_speechlike

    root = tmp_path_factory.mktemp("faults")
    wavs = root / "wavs"
    wavs.mkdir()
    for i in range(20):
        write_audio(str(wavs / f"utt{i:02d}.wav"), synth_speechlike(0.4 + 0.04 * i, seed=100 + i), 16000)
    (wavs / "notes.wav").write_bytes(b"not audio at all" * 10)
    model = build_ctc_model(str(root / "model"), "tiny", seed=7)
    runner = ASRRunner(ASROptions(model=model))
    reference = {f"utt{i:02d}": runner.transcribe([decode_audio(str(wavs / f"utt{i:02d}.wav"))])[0].text
                 for i in range(20)}
    return root, wavs, model, reference


def _texts(out: str) -> dict[str, str | None]:
    from voxray.results import read_results

    table = read_results(out, ["id", "text", "error"])
    ids = table.column("id").to_pylist()
    assert len(ids) == len(set(ids)), "an id was written twice"
    return {r["id"]: r["text"] for r in table.to_pylist() if not r["error"]}


def _job(wavs, out, model, **kw):
    from voxray.jobs.transcribe import TranscribeJob

    return TranscribeJob(inputs=[str(wavs)], out=str(out), asr={"model": model}, progress=False,
                         **{"resources": {"rows_per_call": 4}, **kw})


def test_stages_have_small_explicit_retry_bounds(ray_cluster, corpus):
    """Ray Data's defaults retry forever: every stage of the physical plan carries voxray's bounds."""
    import ray
    from ray.data._internal.logical.optimizers import get_execution_plan

    from voxray.cluster import ClusterView, plan_pool
    from voxray.corpus import input_table
    from voxray.jobs.audio_stages import build_audio_stages
    from voxray.jobs.faults import job_state_cls
    from voxray.jobs.runtime import actor_kwargs
    from voxray.jobs.transcribe import TranscribeActor

    root, wavs, model, _ = corpus
    job = _job(wavs, root / "unused", model, retries={"task_retries": 3, "actor_restarts": 5})
    plan = plan_pool(job.resources, ClusterView(2, 0, local=True))
    build = build_audio_stages(job, TranscribeActor, {"options": {}, "device": "cpu"}, actor_kwargs(plan, job), 16)
    ds = build(ray.data.from_arrow([input_table([str(wavs)])]), job_state_cls().remote())
    physical, _ = get_execution_plan(ds._logical_plan)
    ops, stack = [], [physical.dag]
    while stack:
        op = stack.pop()
        ops.append(op)
        stack += op.input_dependencies
    maps = {op.name: op._ray_remote_args for op in ops if hasattr(op, "_ray_remote_args")}
    assert any("TranscribeActor" in name for name in maps) and any("decode_stage" in name for name in maps)
    for name, args in maps.items():
        if "TranscribeActor" in name:
            assert (args["max_restarts"], args["max_task_retries"]) == (5, 3), (name, args)
        else:
            assert args.get("max_retries") == 3, (name, args)


def test_poison_input_becomes_one_crash_row_then_retry_errors(ray_cluster, corpus, tmp_path):
    from job_faults import PoisonTranscribeActor

    from voxray.audio import write_audio
    from voxray.jobs.transcribe import run_transcribe
    from voxray.testing import synth_speechlike

    root, wavs, model, reference = corpus
    inputs = tmp_path / "in"
    inputs.mkdir()
    for name in sorted(os.listdir(wavs)):
        os.link(wavs / name, inputs / name)
    write_audio(str(inputs / "poison.wav"), synth_speechlike(0.7, seed=1), 16000)  # kills its worker every time
    out = tmp_path / "out"
    t0 = time.perf_counter()
    # the default crashes_per_input (2) needs 3 deaths (its batch, then twice alone); with 2 actor
    # restarts the actor runs out first: the pipeline is rebuilt over what is not committed, and
    # the poison, already known, becomes its crash row there (both bounds exercised in one run)
    report = run_transcribe(_job(inputs, out, model, retries={"actor_restarts": 2}), actor_cls=PoisonTranscribeActor)
    took = time.perf_counter() - t0
    assert took < 400, f"a poison input must cost bounded time, took {took:.0f} s"
    assert report["processed"] == report["inputs"] == 22
    assert report["errors_by_kind"] == {"crash": 1, "decode": 1}, report["errors_by_kind"]
    from voxray.results import read_results

    rows = {r["id"]: r for r in read_results(str(out)).to_pylist()}
    assert len(rows) == 22
    assert rows["poison"]["error"].startswith("crash: the model worker died 2 times"), rows["poison"]
    assert rows["notes"]["error"].startswith("decode:")
    assert _texts(str(out)) == reference  # the rest of the poison's batch was still transcribed
    assert report["extra"]["passes"] == 2  # the rebuild after the actor ran out of restarts

    assert run_transcribe(_job(inputs, out, model))["processed"] == 0  # default: an error row is kept
    again = run_transcribe(_job(inputs, out, model, retry_errors=["crash"]))  # a fixed build would pass
    assert again["processed"] == 1 and again["extra"]["retried_errors"] == 1 and again["errors"] == 0
    rows = {r["id"]: r for r in read_results(str(out)).to_pylist()}
    assert len(rows) == 22 and read_results(str(out)).num_rows == 22  # every id once, the crash row replaced
    assert rows["poison"]["error"] is None and rows["poison"]["text"] is not None


def test_model_actor_sigkill_mid_job_every_id_once(ray_cluster, corpus, tmp_path):
    from job_faults import PacedTranscribeActor, pids_with_title

    from voxray.jobs.transcribe import run_transcribe
    from voxray.results import list_shards, read_results

    root, wavs, model, reference = corpus
    out = tmp_path / "out"
    killed: list[int] = []
    committed_at_kill: list[int] = []

    def chaos() -> None:  # once the first rows are committed, kill the model actor's process
        deadline = time.time() + 300
        while time.time() < deadline and not list_shards(str(out)):
            time.sleep(0.05)
        committed_at_kill.append(read_results(str(out), ["id"]).num_rows)
        for pid in pids_with_title("TranscribeActor"):
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    thread = threading.Thread(target=chaos, daemon=True)
    thread.start()
    # paced calls (0.3 s per 2 rows): the kill lands while most of the corpus is still to do
    report = run_transcribe(_job(wavs, out, model, commit_rows=4, resources={"rows_per_call": 2}),
                            actor_cls=PacedTranscribeActor)
    thread.join(timeout=5)
    assert killed, "the model actor was never found"
    assert committed_at_kill and committed_at_kill[0] < 21, committed_at_kill  # work was left when it died
    assert report["processed"] == 21 and report["errors_by_kind"] == {"decode": 1}, report
    assert report["extra"]["actor_restarts"] >= 1, (committed_at_kill, report["extra"])
    assert _texts(str(out)) == reference


def test_driver_sigkill_leaves_nothing_running_and_resume_is_exact(ray_cluster, corpus, tmp_path):
    from job_faults import alive, descendants

    from voxray.jobs.transcribe import run_transcribe
    from voxray.results import list_shards, read_results

    root, wavs, model, reference = corpus
    out = tmp_path / "out"
    spec = {"job": {"inputs": [str(wavs)], "out": str(out), "asr": {"model": model}, "progress": False,
                    "commit_rows": 2, "commit_s": 1, "resources": {"rows_per_call": 2}, "ray": {"num_cpus": 2}},
            "speak": True}
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # voxray starts its own local cluster
    err = tmp_path / "driver.err"
    with open(err, "w") as fh:
        proc = subprocess.Popen([sys.executable, str(HERE / "job_driver.py"), json.dumps(spec)], env=env,
                                stdout=subprocess.PIPE, stderr=fh, text=True)
    try:
        deadline = time.time() + 300
        while not list_shards(str(out)) and proc.poll() is None and time.time() < deadline:
            time.sleep(0.1)
        assert proc.poll() is None, "the driver ended before it was killed"
        tree = descendants(proc.pid)  # Ray's processes of this run: GCS, raylet, workers, the watchdog
        assert len(tree) >= 4, tree
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        committed = read_results(str(out), ["id"]).num_rows
        assert committed > 0  # the commit bound had passed: those rows are on disk
        t0 = time.time()
        while alive(tree) and time.time() - t0 < 60:
            time.sleep(0.5)
        assert not alive(tree), f"processes of the killed run still running: {alive(tree)}"
    finally:
        if proc.poll() is None:
            proc.kill()
    logs = err.read_text()
    assert "worker says hello at WARNING" in logs  # voxray's worker warnings reach the driver...
    assert "hello at INFO" not in logs and "plain worker print" not in logs  # ...and nothing else of theirs

    # damage one committed shard the way a non-atomic writer would: it is quarantined, its ids redone
    shard = list_shards(str(out))[0]
    data = Path(shard).read_bytes()
    Path(shard).write_bytes(data[: len(data) // 2])
    resumed = run_transcribe(_job(wavs, out, model))
    assert len(resumed["extra"]["quarantined"]) == 1
    assert resumed["skipped_already_done"] + resumed["processed"] == 21
    assert resumed["processed"] >= 21 - committed + 1  # the damaged shard's rows were redone
    assert _texts(str(out)) == reference  # every id once, the same texts as an uninterrupted run
