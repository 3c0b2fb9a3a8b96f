"""Every operator-facing reference stays valid: job specs parse, CLI flags derive from options."""

import glob
import os

import pytest
from pydantic import ValidationError

from voxray.cli import build_parser, collect_options, main
from voxray.jobs.specs import JOBS, parse_spec
from voxray.jobs.transcribe import TranscribeJob

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPECS = sorted(glob.glob(os.path.join(ROOT, "jobs", "*.yaml")))


def test_there_are_specs():
    assert {os.path.basename(p) for p in SPECS} >= {"transcribe.yaml"}


@pytest.mark.parametrize("path", SPECS, ids=os.path.basename)
def test_job_spec_parses_into_its_model(path):
    job = parse_spec(path)
    assert job.job in JOBS
    assert os.path.basename(path).startswith(job.job)


def test_spec_typos_are_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("job: transcribe\nout: x\nasr:\n  batch_secnds: 3\n")
    with pytest.raises(ValidationError, match="batch_secnds"):
        parse_spec(bad)


def test_transcribe_flags_map_onto_nested_options():
    args = build_parser().parse_args(
        ["transcribe", "a.wav", "dir/", "--out", "o", "--model", "m", "--batch-seconds", "12",
         "--timestamps", "word", "--address", "ray://h:10001", "--gpus-per-actor", "0.25", "--no-progress"]
    )
    job = TranscribeJob(**collect_options(args))
    assert job.inputs == ["a.wav", "dir/"] and job.out == "o" and job.progress is False
    assert job.asr.model == "m" and job.asr.batch_seconds == 12 and job.asr.timestamps == "word"
    assert job.ray.address == "ray://h:10001" and job.resources.gpus_per_actor == 0.25
    # flags the user did not give fall back to the pydantic defaults
    assert job.asr.chunk_s == 30 and job.resources.rows_per_call == 64


def test_invalid_flag_value_is_a_clean_error(capsys):
    assert main(["transcribe", "a.wav", "--out", "o", "--chunk-s", "10", "--stride-s", "6"]) == 2
    err = capsys.readouterr().err
    assert "stride_s" in err and "Traceback" not in err


def test_actor_planning_by_resources():
    from voxray.cluster import plan_actors
    from voxray.config import ResourceOptions

    gpu = plan_actors(ResourceOptions(), {"CPU": 32, "GPU": 4})
    assert (gpu.actors, gpu.num_gpus) == (4, 1.0)
    packed = plan_actors(ResourceOptions(gpus_per_actor=0.25), {"CPU": 32, "GPU": 8})
    assert packed.actors == 32
    cpu = plan_actors(ResourceOptions(), {"CPU": 2})
    assert (cpu.actors, cpu.num_gpus, cpu.threads) == (1, 0.0, 2)
    asked = plan_actors(ResourceOptions(gpus_per_actor=1), {"CPU": 4})  # GPUs are asked for, not found first
    assert (asked.actors, asked.num_gpus) == (1, 1.0)
