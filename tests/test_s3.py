"""Object storage end to end: a real S3-protocol server on loopback (moto's server mode, HTTP on
127.0.0.1), the transcription job reading s3:// inputs and writing s3:// outputs, results read back
through s3fs; a rerun is a no-op.

How the job's Ray workers reach the endpoint: the job runs as ``voxray run SPEC --out s3://...``
(the RayJob entrypoint) in a subprocess whose environment carries the standard AWS variables
(``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ...). The spec starts its own small local Ray
(``ray: {num_cpus: 2, temp_dir: ...}``), whose raylet and workers inherit that environment, so the
driver (listing, resume), the decode tasks (reading audio), and Ray Data's Parquet writer (pyarrow's
S3 filesystem) all reach the same server, just as pods do with the Secret/ConfigMap env in k8s/.
The session-wide ``ray_cluster`` fixture is not used: its workers were started without these
variables, and a job cannot change a running cluster's worker environment.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow

BUCKET = "voxray-test"
CREDENTIALS = {  # moto accepts any; these never leave 127.0.0.1
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3_server() -> Iterator[dict[str, str]]:
    import moto.server as server_mod  # make test installs moto[server] and s3fs: a missing one fails
    import s3fs  # noqa: F401
    port = _free_port()
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield {**CREDENTIALS, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
    finally:
        server.stop()


@pytest.fixture
def s3_env(s3_server: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """The AWS variables in this process too (for s3fs here), restored afterwards."""
    import s3fs

    for key in ("AWS_PROFILE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE", "FSSPEC_S3_ENDPOINT_URL"):
        monkeypatch.delenv(key, raising=False)
    for key, value in s3_server.items():
        monkeypatch.setenv(key, value)
    s3fs.S3FileSystem.clear_instance_cache()
    yield s3_server
    s3fs.S3FileSystem.clear_instance_cache()


def _run_cli(spec: Path, out: str, env: dict[str, str]) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-m", "voxray.cli", "run", str(spec), "--out", out],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-5000:]
    start = proc.stdout.index("{")
    return json.loads(proc.stdout[start:])


def test_transcribe_s3_in_s3_out_and_rerun_is_noop(s3_env: dict[str, str], tmp_path: Path):
    import s3fs

    from voxray.asr import ASRRunner
    from voxray.asr.config import ASROptions
    from voxray.audio import decode_audio, write_audio
    from voxray.results import read_results
    from voxray.testing import build_ctc_model, synth_speechlike

    fs = s3fs.S3FileSystem()  # configured by the environment only, like the job
    assert fs.client_kwargs.get("endpoint_url") is None  # (nothing passed by hand)
    fs.mkdir(BUCKET)
    local = tmp_path / "wavs"
    local.mkdir()
    names = [f"clip{i}.wav" for i in range(5)]
    for i, name in enumerate(names):
        write_audio(str(local / name), synth_speechlike(0.6 + 0.3 * i, seed=i), 16000)
        fs.put(str(local / name), f"{BUCKET}/corpus/ko/{name}")
    assert sorted(p.rsplit("/", 1)[1] for p in fs.ls(f"{BUCKET}/corpus/ko")) == names

    model = build_ctc_model(str(tmp_path / "model"), "tiny", seed=11)
    ray_tmp = tempfile.mkdtemp(prefix="vxs3-", dir="/tmp")  # short: Ray's socket paths live under it
    spec = tmp_path / "transcribe-s3.yaml"
    spec.write_text(
        f"""job: transcribe
inputs: [s3://{BUCKET}/corpus/ko/]
out: s3://{BUCKET}/ignored          # --out overrides it
asr: {{model: {model}, timestamps: word, threads: 1}}
resources: {{actors: 1, cpus_per_actor: 1}}
ray: {{num_cpus: 2, temp_dir: {ray_tmp}}}
progress: false
"""
    )
    out = f"s3://{BUCKET}/out/asr"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # its own local Ray, not ours
    env.update(s3_env)
    try:
        first = _run_cli(spec, out, env)
        assert first["inputs"] == first["processed"] == len(names), first
        assert first["errors"] == 0 and first["out"] == out

        # read back through s3fs: one row per input, s3:// paths, the runner's transcripts
        table = read_results(out)
        rows = {r["id"]: r for r in table.to_pylist()}
        assert table.num_rows == len(rows) == len(names)
        assert {r["path"] for r in rows.values()} == {f"s3://{BUCKET}/corpus/ko/{n}" for n in names}
        runner = ASRRunner(ASROptions(model=model, timestamps="word", threads=1))
        for name in names[:2]:
            row = next(r for r in rows.values() if r["path"].endswith(name))
            alone = runner.transcribe([decode_audio(str(local / name))])[0]
            assert row["error"] is None and row["text"] == alone.text
        with fs.open(f"{BUCKET}/out/asr/run.json") as fh:
            assert json.load(fh)["processed"] == len(names)
        shards = fs.glob(f"{BUCKET}/out/asr/*.parquet")
        assert shards

        second = _run_cli(spec, out, env)
        assert second["processed"] == 0 and second["skipped_already_done"] == len(names), second
        assert read_results(out).num_rows == len(names)  # no duplicates
        assert fs.glob(f"{BUCKET}/out/asr/*.parquet") == shards  # nothing new written
    finally:
        leftovers = [
            p.name for p in Path("/proc").iterdir() if p.name.isdigit() and _cmdline_has(p, ray_tmp)
        ]
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert not leftovers, f"Ray processes left behind: {leftovers}"


def _cmdline_has(proc: Path, needle: str) -> bool:
    try:
        return needle in (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return False
