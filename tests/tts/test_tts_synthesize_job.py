"""The synthesis job on a local Ray cluster: bad rows become error rows, reruns are no-ops."""

from __future__ import annotations

import csv
import json
import os

import pytest

from voxray.jobs.synthesize import SynthesizeJob, read_text_inputs, safe_name
from voxray.results import list_shards, read_results


def test_safe_names_stay_in_their_folder():
    assert safe_name("utt_001") == "utt_001"
    assert safe_name("문장-1") == "문장-1"
    for evil in ["../../etc/passwd", "/abs/path", "..", "a/../../b", "c:\\x", "", "   "]:
        name = safe_name(evil)
        assert name and "/" not in name and "\\" not in name and not name.startswith(".")
    assert safe_name("a/b") != safe_name("a_b")


def test_manifest_rows_get_stable_unique_ids(tmp_path):
    path = tmp_path / "m.jsonl"
    lines = [{"id": "x", "text": "one"}, {"id": "x", "text": "two"}, {"text": "three", "speed": 1.2}]
    path.write_text("\n".join(json.dumps(r) for r in lines))
    rows = read_text_inputs([str(path)])
    assert [r["id"] for r in rows] == ["x", "x-2", "row-000003"]
    assert rows[2]["speed"] == "1.2" and rows[0]["voice"] == ""


@pytest.mark.slow
def test_synthesize_job_with_bad_rows_and_resume(ray_cluster, tmp_path):
    import soundfile as sf

    from voxray.jobs.synthesize import run_synthesize

    manifest = tmp_path / "manifest.csv"
    rows = [
        {"id": "en-1", "text": "Hello there.", "voice": "", "lang": "", "speed": ""},
        {"id": "ko-1", "text": "안녕하세요.", "voice": "jm_kumo", "lang": "ko", "speed": "1.2"},
        {"id": "../../escape", "text": "Safe names.", "voice": "jf_alpha(1)+jm_kumo(1)", "lang": "en-gb", "speed": ""},
        {"id": "empty", "text": "   ", "voice": "", "lang": "", "speed": ""},
        {"id": "bad-voice", "text": "Who am I?", "voice": "af_nobody", "lang": "", "speed": ""},
        {"id": "bad-lang", "text": "Klingon.", "voice": "", "lang": "tlh", "speed": ""},
        {"id": "bad-speed", "text": "Too fast.", "voice": "", "lang": "", "speed": "9"},
    ]
    with open(manifest, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    out = tmp_path / "out"
    job = SynthesizeJob(inputs=[str(manifest)], out=str(out), progress=False)

    report = run_synthesize(job)
    table = read_results(str(out)).to_pylist()
    by_id = {r["id"]: r for r in table}
    assert sorted(by_id) == sorted(r["id"] for r in rows) and len(table) == len(rows)
    assert report["processed"] == 7 and report["ok"] == 3 and report["errors"] == 4
    assert report["errors_by_kind"] == {"bad_text": 1, "unknown_voice": 1, "unknown_language": 1, "bad_input": 1}
    assert by_id["bad-voice"]["error"].startswith("unknown_voice:") and "jf_alpha" in by_id["bad-voice"]["error"]
    for rid in ["en-1", "ko-1", "../../escape"]:
        row = by_id[rid]
        assert row["error"] is None and row["sample_rate"] == 24000 and row["phonemes"]
        assert os.path.dirname(row["path"]) == str(out / "audio")  # no traversal out of the audio folder
        audio, sr = sf.read(row["path"])
        assert sr == 24000 and abs(len(audio) / sr - row["duration_s"]) < 0.01 and abs(audio).max() > 0.05
    assert by_id["ko-1"]["voice"] == "jm_kumo" and by_id["ko-1"]["speed"] == 1.2
    assert all(by_id[r]["path"] is None for r in ["empty", "bad-voice", "bad-lang", "bad-speed"])
    run_json = json.loads((out / "run.json").read_text())
    assert run_json["audio_s"] > 1 and run_json["extra"]["chars"] > 0
    assert f"data-key='processed'>{run_json['processed']}<" in (out / "report.html").read_text()  # the page too

    shards = list_shards(str(out))
    again = run_synthesize(job)
    assert again["processed"] == 0 and again["skipped_already_done"] == 7
    assert list_shards(str(out)) == shards and read_results(str(out)).num_rows == 7


@pytest.mark.slow
def test_torch_actors_batch_rows_and_each_row_sounds_as_alone(ray_cluster, tmp_path):
    """Rows share padded forwards on the torch backend; a bad row still fails alone, and each good
    row's file holds what the pipeline makes for it alone (fixed noise seed: same length, SNR >= 40 dB)."""
    import kokoro  # noqa: F401  (make setup installs it with --no-deps: a missing one must fail)
    import numpy as np
    import soundfile as sf

    from voxray.jobs.synthesize import run_synthesize
    from voxray.tts import TTSPipeline
    from voxray.tts.config import TTSOptions

    texts = {"a": "The harbour was quiet at dawn.", "b": "A boat left the dock.",
             "c": "Gulls cried over the grey water, and the wind rose.", "d": "Noon."}
    manifest = tmp_path / "m.csv"
    with open(manifest, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=["id", "text", "voice"])
        writer.writeheader()
        writer.writerows([{"id": k, "text": v, "voice": ""} for k, v in texts.items()])
        writer.writerow({"id": "bad", "text": "Who?", "voice": "af_nobody"})
    tts = {"backend": "torch", "noise_seed": 5}
    job = SynthesizeJob(inputs=[str(manifest)], out=str(tmp_path / "out"), progress=False, tts=tts,
                        resources={"actors": 1, "cpus_per_actor": 1, "threads_per_actor": 2, "rows_per_call": 8})
    report = run_synthesize(job)
    assert report["ok"] == 4 and report["errors_by_kind"] == {"unknown_voice": 1}
    assert report["extra"]["backend"] == "torch" and report["extra"]["chunks_per_forward"] > 1, report["extra"]
    rows = {r["id"]: r for r in read_results(str(tmp_path / "out")).to_pylist()}
    pipe = TTSPipeline(TTSOptions(**tts, threads=2))
    for rid, text in texts.items():
        audio, _ = sf.read(rows[rid]["path"], dtype="float32")
        alone = pipe.synthesize(text).audio
        assert len(audio) == len(alone)
        err = np.sum((alone.astype(np.float64) - audio) ** 2)
        assert 10 * np.log10(np.sum(alone.astype(np.float64) ** 2) / max(err, 1e-30)) >= 40, rid
