"""End-to-end embedding job on a real local Ray cluster with a tiny random model, then search."""

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from audio_fixtures import make_corpus

from voxray.audio import decode_audio, write_audio
from voxray.embed import Embedder, EmbedOptions
from voxray.embed.frames import read_frames
from voxray.embed.search import search
from voxray.errors import InputError
from voxray.jobs.embed import EmbedJob, run_embed
from voxray.jobs.specs import parse_spec
from voxray.results import list_shards, read_results
from voxray.testing import build_ctc_model

pytestmark = pytest.mark.slow

HIDDEN = 32


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("embedjob")
    files = make_corpus(str(root / "corpus"), n_good=16, seed=3)
    model = build_ctc_model(str(root / "model"), "tiny", seed=5)
    return root, files, model


def test_job_schema_errors_frames_resume_and_search(ray_cluster, corpus, capsys):
    root, files, model = corpus
    out = str(root / "out")
    missing = str(root / "corpus" / "missing.wav")
    options = EmbedOptions(model=model, pooling="mean+std", frames=True, batch_seconds=20)
    job = EmbedJob(inputs=[str(root / "corpus"), missing], out=out, progress=False, embed=options)
    report = run_embed(job)
    expected = len(files["good"]) + len(files["bad"]) + 1
    assert report["processed"] == report["inputs"] == expected
    assert report["errors"] == len(files["bad"]) + 1
    assert report["errors_by_kind"] == {"decode": 3, "empty_audio": 1, "not_found": 1}
    assert report["extra"]["dim"] == 2 * HIDDEN and 0 <= report["extra"]["padding_waste"] < 0.1
    assert report["audio_s"] > 5 and report["rtfx"] > 0

    # every shard has the planned Arrow schema: a fixed-size float32 list as wide as the config says
    for shard in list_shards(out):
        field = pq.read_schema(shard).field("embedding")
        assert field.type == pa.list_(pa.float32(), 2 * HIDDEN)
    table = read_results(out)
    assert table.num_rows == expected and len(set(table.column("id").to_pylist())) == expected
    rows = {r["path"]: r for r in table.to_pylist()}
    for path in files["bad"] + [missing]:
        assert rows[path]["error"] and rows[path]["embedding"] is None and rows[path]["frames_file"] is None
    # the job's vectors and frames are the in-process embedder's, file by file
    embedder = Embedder(options)
    for path in files["good"][:6]:
        row = rows[path]
        alone = embedder.embed([decode_audio(path)])[0]
        assert row["error"] is None and row["layer"] == "-1" and row["pooling"] == "mean+std"
        assert row["model"] == model and abs(row["duration_s"] - alone.duration_s) < 1e-9
        np.testing.assert_allclose(np.asarray(row["embedding"], np.float32), alone.embedding, atol=1e-5)
        frames = read_frames(out, row)
        assert frames.dtype == np.float16 and frames.shape == alone.frames.shape == (row["frames_len"], HIDDEN)
        np.testing.assert_allclose(frames.astype(np.float32), alone.frames.astype(np.float32), atol=1e-2)
    with open(os.path.join(out, "run.json")) as fh:
        assert json.load(fh)["processed"] == expected
    with open(os.path.join(out, "embedding.json")) as fh:
        assert json.load(fh)["layout"]["dim"] == 2 * HIDDEN

    rerun = run_embed(job)
    assert rerun["processed"] == 0 and rerun["skipped_already_done"] == expected
    assert read_results(out).num_rows == expected  # no duplicates
    with pytest.raises(InputError, match="other options"):  # never mix incompatible vectors
        run_embed(job.model_copy(update={"embed": options.model_copy(update={"pooling": "max"}), "limit": 1,
                                         "inputs": [files["good"][0].replace(".", "-new.")]}))

    # search: an indexed file finds itself first; an unindexed copy is embedded and finds its twin
    query = files["good"][3]
    hits = search(out, query, k=3)
    assert hits[0].path == query and hits[0].similarity == pytest.approx(1.0, abs=1e-5)
    assert [h.rank for h in hits] == [1, 2, 3] and hits[1].similarity <= hits[0].similarity
    copy = str(root / "query-copy.wav")
    write_audio(copy, decode_audio(query), 16000)  # same audio, a path the index does not hold
    from voxray.cli import main

    assert main(["embed-search", out, "--query", copy, "-k", "2"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed[0]["path"] == query and printed[0]["similarity"] > 0.999 and len(printed) == 2


def test_all_layers_job_and_spec(ray_cluster, corpus, tmp_path):
    root, files, model = corpus
    out = str(tmp_path / "all")
    job = EmbedJob(
        inputs=files["good"][:3], out=out, progress=False,
        embed=EmbedOptions(model=model, layer="all", normalize=True),
    )
    report = run_embed(job)
    assert report["ok"] == 3 and report["extra"]["layer"] == "all"
    table = read_results(out)
    assert table.schema.field("embedding").type == pa.list_(pa.float32(), 3 * HIDDEN)  # (L+1) x H, layer-major
    stack = np.asarray(table.column("embedding").to_pylist()[0], np.float32).reshape(3, HIDDEN)
    np.testing.assert_allclose(np.linalg.norm(stack, axis=1), 1, atol=1e-5)
    spec = parse_spec(os.path.join(os.path.dirname(__file__), "..", "jobs", "embed.yaml"))
    assert isinstance(spec, EmbedJob) and spec.job == "embed"
