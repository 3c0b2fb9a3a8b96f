"""End-to-end transcription job on a real local Ray cluster with a tiny random model."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from audio_fixtures import make_corpus

from voxray.asr import ASRRunner
from voxray.asr.config import ASROptions
from voxray.audio import decode_audio
from voxray.corpus import expand_inputs
from voxray.jobs.transcribe import TranscribeJob, run_transcribe
from voxray.results import read_results
from voxray.testing import build_ctc_model

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("job")
    files = make_corpus(str(root / "corpus"), n_good=40)
    model = build_ctc_model(str(root / "model"), "tiny", seed=5)
    return root, files, model


def test_job_one_row_per_input_errors_and_resume(ray_cluster, corpus):
    root, files, model = corpus
    out = str(root / "out")
    missing = str(root / "corpus" / "missing.wav")
    job = TranscribeJob(
        inputs=[str(root / "corpus"), missing], out=out, progress=False,
        asr=ASROptions(model=model, timestamps="word", batch_seconds=20),
    )
    report = run_transcribe(job)
    expected = len(files["good"]) + len(files["bad"]) + 1
    assert report["processed"] == expected and report["inputs"] == expected
    assert report["errors"] == len(files["bad"]) + 1
    assert report["errors_by_kind"] == {"decode": 3, "empty_audio": 1, "not_found": 1}
    assert 0 <= report["extra"]["padding_waste"] < 0.1
    assert report["audio_s"] > 40 and report["rtfx"] > 0

    table = read_results(out)
    rows = {r["id"]: r for r in table.to_pylist()}
    assert len(rows) == table.num_rows == expected  # exactly one row per input
    assert table.schema.field("chunks").type.value_type.names == ["text", "start", "end"]
    for path in files["bad"] + [missing]:
        row = next(r for r in rows.values() if r["path"] == path)
        assert row["error"] and row["text"] is None
    # the job's transcripts are the in-process runner's transcripts, file by file
    runner = ASRRunner(ASROptions(model=model, timestamps="word"))
    for path in files["good"][:10]:
        row = next(r for r in rows.values() if r["path"] == path)
        alone = runner.transcribe([decode_audio(path)])[0]
        assert row["error"] is None
        assert row["text"] == alone.text
        assert abs(row["duration_s"] - alone.duration_s) < 1e-9
        starts = [c["start"] for c in row["chunks"]]
        assert starts == sorted(starts) and row["chunks"][-1]["end"] <= row["duration_s"] + 0.05

    with open(os.path.join(out, "run.json")) as fh:
        run_json = json.load(fh)
    assert run_json["processed"] == expected
    # report.html beside it shows run.json's numbers, and its histogram holds every ok row
    with open(os.path.join(out, "report.html"), encoding="utf-8") as fh:
        page = fh.read()
    data = json.loads(re.search(r"id='voxray-report'>(.*?)</script>", page, re.S).group(1))
    assert data["summary"]["processed"] == expected and data["errors_by_kind"] == run_json["errors_by_kind"]
    assert sum(data["histogram"]["counts"]) == run_json["ok"] == len(files["good"])

    rerun = run_transcribe(job)
    assert rerun["processed"] == 0 and rerun["skipped_already_done"] == expected
    assert read_results(out).num_rows == expected  # no duplicates


def test_manifest_inputs_and_limit(ray_cluster, corpus, tmp_path):
    root, files, model = corpus
    manifest = tmp_path / "m.jsonl"
    with open(manifest, "w") as fh:
        for i, path in enumerate(files["good"][:6]):
            fh.write(json.dumps({"id": f"utt-{i}", "path": os.path.relpath(path, tmp_path)}) + "\n")
    rows = expand_inputs([str(manifest)])
    assert [r["id"] for r in rows] == [f"utt-{i}" for i in range(6)]
    assert all(os.path.exists(r["path"]) for r in rows)
    out = str(tmp_path / "out")
    job = TranscribeJob(inputs=[str(manifest)], out=out, progress=False, limit=4, asr=ASROptions(model=model))
    assert run_transcribe(job)["processed"] == 4
    assert run_transcribe(job.model_copy(update={"limit": None}))["processed"] == 2
    assert sorted(read_results(out, ["id"]).column("id").to_pylist()) == [f"utt-{i}" for i in range(6)]


def test_cli_offline_model_error_is_clear(tmp_path):
    wav = tmp_path / "a.wav"
    from voxray.audio import write_audio

    write_audio(wav, np.zeros(16000, np.float32), 16000)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    proc = subprocess.run(
        [sys.executable, "-m", "voxray.cli", "transcribe", str(wav), "--out", str(tmp_path / "o")],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert proc.returncode == 2
    assert "kresnik/wav2vec2-large-xlsr-korean" in proc.stderr and "--model DIR" in proc.stderr
    assert "Traceback" not in proc.stderr


RAY_NOISE = ("Token authentication", "core_worker.cc", "Progress bars disabled", "streaming_executor",
             "max_restarts > 0", "RayDeprecationWarning", "Started a local Ray instance")


def test_cli_json_stdout_is_pure_and_the_console_is_voxrays(corpus, tmp_path):
    """A real local Ray started by the CLI: stdout is the report and nothing else; stderr has the
    progress line and no Ray chatter; a GPU job on this GPU-less machine fails in one line."""
    root, files, model = corpus
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    base = [sys.executable, "-m", "voxray.cli", "transcribe", *files["good"][:6], files["bad"][0],
            "--out", str(tmp_path / "o"), "--model", model]
    proc = subprocess.run(base + ["--json", "--progress", "--commit-s", "1"], capture_output=True, text=True,
                          env=env, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)  # the whole of stdout is one JSON document
    assert report["processed"] == 7 and report["errors"] == 1 and report["extra"]["device"] == "cpu"
    assert "transcribe: 7/7 rows" in proc.stderr, proc.stderr[-2000:]
    for noise in RAY_NOISE:
        assert noise not in proc.stderr, f"{noise!r} reached the console:\n{proc.stderr[-3000:]}"
    human = subprocess.run(base + ["--quiet"], capture_output=True, text=True, env=env, timeout=400)
    assert human.returncode == 0 and human.stdout.startswith("voxray transcribe: 0 rows"), human.stdout
    assert "7 already done" in human.stdout and not human.stderr.strip(), human.stderr

    fresh = [str(tmp_path / "g") if a == str(tmp_path / "o") else a for a in base]
    gpu = subprocess.run(fresh + ["--device", "gpu"], capture_output=True, text=True, env=env, timeout=120)
    assert gpu.returncode == 2 and gpu.stdout == ""
    lines = gpu.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("voxray: error: the job asks for GPUs"), gpu.stderr
