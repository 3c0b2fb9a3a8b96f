"""The onnxruntime backend, int8/fp16 exports and the CPU dtype rule, on real exports of real models.

One export of the shipped Korean model (made by the CLI verb, with int8 and fp16 graphs) proves
the mechanics (padded-batch parity, chunking, per-item errors, threads, the export directory) and
the parity gates on the committed clips: ORT fp32 logits within 1e-4 of torch on padded batches,
int8 and bf16 transcripts within 0.5 CER points of fp32 torch, embeddings cosine >= 0.999 for
every backend. A tiny group-norm model proves the padding policy survives the backend switch.
Exports cost ~10-20 s each (torch.export tracing), so the module makes three.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from voxray.asr import ASRRunner
from voxray.asr.config import ASROptions
from voxray.embed import Embedder, EmbedOptions
from voxray.encoder.onnx_backend import OnnxEncoder
from voxray.errors import ModelUnavailableError
from voxray.testing import build_ctc_model, synth_speechlike
from voxray.text_ko import cer_ignoring_spaces as cer

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = str(ROOT / "models" / "ko-synthetic-ctc")
SAMPLES = ROOT / "samples" / "ko"
LENGTHS_S = [0.4, 1.7, 3.3, 0.9, 2.6, 1.1]
WIDE = dict(batch_seconds=1000, max_padding=1.0)  # one padded batch for the whole list
CER_POINTS = 0.005  # the gate: 0.5 CER points
MIN_COSINE = 0.999


@pytest.fixture(scope="module", autouse=True)
def private_cache(tmp_path_factory):
    """On-the-fly exports go to a private $VOXRAY_CACHE, never the user's."""
    old = os.environ.get("VOXRAY_CACHE")
    os.environ["VOXRAY_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if old is None:
        os.environ.pop("VOXRAY_CACHE", None)
    else:
        os.environ["VOXRAY_CACHE"] = old


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    """Made by the CLI verb itself: `voxray export asr --model M --out DIR --int8 --fp16`."""
    import argparse

    from voxray.cli import COMMANDS
    from voxray.cli import export as export_command

    assert "export" in COMMANDS  # registered with `voxray`
    parser = argparse.ArgumentParser(prog="voxray")
    export_command.register(parser.add_subparsers(dest="command", required=True))
    out = str(tmp_path_factory.mktemp("exports") / "ko-onnx")
    args = parser.parse_args(["export", "asr", "--model", SHIPPED, "--out", out, "--int8", "--fp16"])
    assert args._handler(args) == 0
    return out


@pytest.fixture(scope="module")
def clips():
    from voxray.audio import decode_audio

    with open(SAMPLES / "espeak.csv", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    return [r["text"] for r in rows], [decode_audio(str(SAMPLES / r["path"]), 16000) for r in rows]


def _audios():
    return [synth_speechlike(s, seed=i) for i, s in enumerate(LENGTHS_S)]


def _max_diff(a, b):
    return max(float(np.abs(x - y).max()) for x, y in zip(a, b, strict=True))


def _cosines(a, b):
    return [float(x @ y / np.linalg.norm(x) / np.linalg.norm(y)) for x, y in zip(a, b, strict=True)]


# ---------------------------------------------------------------- the export directory
def test_export_writes_a_complete_model_dir(export_dir):
    import onnx
    import onnxruntime as ort

    files = set(os.listdir(export_dir))
    assert {"config.json", "vocab.json", "tokenizer_config.json", "onnx_export.json"} <= files
    assert files & {"preprocessor_config.json", "processor_config.json"}
    assert not any(f.endswith((".safetensors", ".bin")) for f in files)  # graphs only, no torch weights
    manifest = json.loads(Path(export_dir, "onnx_export.json").read_text())
    assert set(manifest["graphs"]) == {"float32", "int8", "float16"}
    assert manifest["parity"]["float32"]["max_abs_diff"] < 1e-4
    assert manifest["parity"]["int8"]["argmax_agreement"] > 0.9
    # dynamic batch and time axes, and the attention (frame) mask as an input
    session = ort.InferenceSession(os.path.join(export_dir, "onnx", "encoder.onnx"))
    assert [i.name for i in session.get_inputs()] == ["features", "frame_mask"]
    assert all(isinstance(d, str) for d in session.get_inputs()[0].shape[:2])
    # int8: MatMuls quantised, convs (feature encoder and positional conv) still float
    int8 = onnx.load(os.path.join(export_dir, "onnx", "encoder.int8.onnx"))
    ops = [n.op_type for n in int8.graph.node]
    assert "MatMulInteger" in ops and "Conv" in ops and "ConvInteger" not in ops
    fp16 = onnx.load(os.path.join(export_dir, "onnx", "encoder.fp16.onnx"))
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in fp16.graph.initializer)


def test_export_refuses_an_export_as_source_and_a_foreign_out_dir(export_dir, tmp_path):
    from voxray.encoder.onnx_export import ExportOptions, export_asr

    with pytest.raises(ModelUnavailableError, match="already an ONNX export"):
        export_asr(ExportOptions(model=export_dir, out=str(tmp_path / "x")))
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(ModelUnavailableError, match="not a voxray ONNX export"):
        export_asr(ExportOptions(model=SHIPPED, out=str(tmp_path / "mine")))


# ---------------------------------------------------------------- runners on the onnx backend
def test_ort_fp32_logits_equal_torch_on_a_padded_batch(export_dir):
    torch_runner = ASRRunner(ASROptions(model=SHIPPED, **WIDE))
    onnx_runner = ASRRunner(ASROptions(model=export_dir, dtype="float32", **WIDE))
    assert onnx_runner.backend == "onnx" and isinstance(onnx_runner.model, OnnxEncoder)
    assert onnx_runner.policy == "mask" and onnx_runner.dtype == "float32"
    audios = _audios()
    got = onnx_runner.logits(audios)
    assert onnx_runner.stats.forward_passes == 1 and onnx_runner.stats.padded_frames > 0  # really padded
    assert _max_diff(torch_runner.logits(audios), got) < 1e-4
    alone = [onnx_runner.logits([a])[0] for a in audios]  # and padding leaks nothing on ORT either
    assert _max_diff(alone, got) < 1e-4


def test_auto_picks_onnx_for_an_export_and_its_int8_graph_on_cpu(export_dir):
    runner = ASRRunner(ASROptions(model=export_dir))
    assert (runner.backend, runner.device, runner.dtype) == ("onnx", "cpu", "int8")
    assert "int8" in runner.core.dtype_reason
    assert runner.transcribe(_audios()[:2])[0].error is None
    with pytest.raises(ModelUnavailableError, match="is an ONNX export"):
        ASRRunner(ASROptions(model=export_dir, backend="torch"))


def test_dtype_and_backend_combinations_are_one_line_errors():
    with pytest.raises(ValidationError, match="int8 needs backend onnx"):
        ASROptions(backend="torch", dtype="int8")
    with pytest.raises(ValidationError, match="bfloat16 needs backend torch"):
        EmbedOptions(backend="onnx", dtype="bfloat16")


def test_threads_are_set_like_torch(export_dir):
    runner = ASRRunner(ASROptions(model=export_dir, threads=1))
    for session in (runner.model.features_session, runner.model.encoder_session):
        assert session.get_session_options().intra_op_num_threads == 1


def test_chunking_and_per_item_errors_are_unchanged_on_onnx(export_dir):
    audio = synth_speechlike(25.0, seed=11)
    chunked = dict(chunk_s=6, stride_s=1)
    a = ASRRunner(ASROptions(model=SHIPPED, **chunked)).logits([audio])[0]
    runner = ASRRunner(ASROptions(model=export_dir, dtype="float32", **chunked))
    b = runner.logits([audio])[0]
    assert runner.stats.frames > runner.num_frames(len(audio)) and a.shape == b.shape  # really chunked
    assert float(np.abs(a - b).max()) < 1e-4
    out = runner({
        "id": ["a", "b", "c"],
        "audio": [synth_speechlike(1.0), np.zeros(0, np.float32), np.zeros(10, np.float32)],
        "error": [None, "decode: broken", None],
    })
    assert out["error"][0] is None and out["text"][0]
    assert out["error"][1] == "decode: broken" and out["error"][2].startswith("bad_input: audio is too short")


@pytest.mark.slow  # its own export (~10 s of torch.export tracing)
def test_group_norm_model_keeps_exact_length_batches_on_onnx(tmp_path):
    model = build_ctc_model(str(tmp_path / "group"), "tiny", norm="group", seed=2)
    audios = _audios() + [synth_speechlike(1.7, seed=1), synth_speechlike(1.7, seed=1)]
    runner = ASRRunner(ASROptions(model=model, backend="onnx", **WIDE))  # a checkpoint: exported once, cached
    assert runner.backend == "onnx" and runner.policy == "exact"
    got = runner.logits(audios)
    assert runner.stats.padded_frames == 0 and runner.stats.forward_passes < len(audios)
    assert _max_diff(ASRRunner(ASROptions(model=model, padding="none")).logits(audios), got) < 1e-4


def test_streaming_halves_compose_and_conv_features_cache_exactly(export_dir):
    """What streaming needs from the backend: conv features of a slice starting at frame k are
    global frames k.. (layer-norm convs), and the two halves compose to the whole forward."""
    encoder = ASRRunner(ASROptions(model=export_dir, dtype="float32")).model
    x = synth_speechlike(2.0, seed=3)[None]
    whole = encoder.conv_features(x)[0]
    k = 7
    tail = encoder.conv_features(x[:, k * encoder.frame :])[0]
    np.testing.assert_allclose(tail, whole[k : k + len(tail)], atol=1e-5)
    both = encoder.run(x, None)["logits"]
    np.testing.assert_allclose(encoder.from_features(whole[None])["logits"], both, atol=1e-6)


def test_embeddings_of_inner_layers_on_onnx_match_torch(monkeypatch):
    """Entries 0 (the first layer's input) and 1 (a hooked layer output) of a 4-layer model, as a
    concatenated stack: the export holds exactly those, and drops the layers above."""
    import onnx

    audios = _audios()
    options = dict(model=SHIPPED, layer=[0, 1], layer_combine="concat", pooling="mean+std", **WIDE)
    ref = Embedder(EmbedOptions(**options)).embed(audios)
    embedder = Embedder(EmbedOptions(backend="onnx", **options))
    assert embedder.backend == "onnx" and embedder.model.entries == [0, 1]
    got = embedder.embed(audios)
    assert embedder.stats.padded_frames > 0
    assert _max_diff([r.embedding for r in ref], [g.embedding for g in got]) < 1e-4
    graph = onnx.load(os.path.join(embedder.model.export_dir, "onnx", "encoder.onnx"))
    assert sum(n.op_type == "Softmax" for n in graph.graph.node) == 1  # one attention layer of four
    # a second embedder with the same options reuses the cached export: no exporter call
    import voxray.encoder.onnx_export as onnx_export

    monkeypatch.setattr(onnx_export, "write_export", lambda *a, **k: pytest.fail("re-exported a cached model"))
    Embedder(EmbedOptions(backend="onnx", **options))


def test_embedder_reads_an_asr_export_at_the_top_layer_only(export_dir):
    audios = _audios()
    ref = Embedder(EmbedOptions(model=SHIPPED, **WIDE)).embed(audios)
    got = Embedder(EmbedOptions(model=export_dir, dtype="float32", **WIDE)).embed(audios)
    assert _max_diff([r.embedding for r in ref], [g.embedding for g in got]) < 1e-4
    with pytest.raises(ModelUnavailableError, match="pass the torch checkpoint with --backend onnx"):
        Embedder(EmbedOptions(model=export_dir, layer=1))


# ---------------------------------------------------------------- the CPU dtype rule
def test_auto_dtype_on_cpu_is_bf16_only_with_amx_and_a_passing_probe(monkeypatch):
    import torch

    import voxray.encoder.core as core

    monkeypatch.setattr(core, "cpu_prefers_bf16", lambda: False)
    assert ASRRunner(ASROptions(model=SHIPPED)).dtype == torch.float32
    monkeypatch.setattr(core, "cpu_prefers_bf16", lambda: True)
    runner = ASRRunner(ASROptions(model=SHIPPED))
    assert runner.dtype == torch.bfloat16 and next(runner.model.parameters()).dtype == torch.bfloat16
    assert "probe" in runner.core.dtype_reason
    monkeypatch.setattr(core, "BF16_MIN_COSINE", 1.0 + 1e-9)  # a model whose probe cannot pass stays float32
    failed = ASRRunner(ASROptions(model=SHIPPED))
    assert failed.dtype == torch.float32 and "failed the parity probe" in failed.core.dtype_reason
    assert ASRRunner(ASROptions(model=SHIPPED, dtype="float32")).dtype == torch.float32  # explicit wins


def test_real_cpu_rule_matches_the_flags():
    import torch

    from voxray.encoder.core import cpu_flags

    runner = ASRRunner(ASROptions(model=SHIPPED))
    expected = torch.bfloat16 if "amx_bf16" in cpu_flags() else torch.float32
    assert runner.dtype == expected


# ---------------------------------------------------------------- parity gates on the shipped model
def test_shipped_model_ort_logits_on_padded_clips_within_1e4(export_dir, clips):
    _, audios = clips
    ref = ASRRunner(ASROptions(model=SHIPPED, dtype="float32", **WIDE)).logits(audios)
    runner = ASRRunner(ASROptions(model=export_dir, dtype="float32", **WIDE))
    got = runner.logits(audios)
    assert runner.stats.forward_passes == 1 and runner.stats.padded_frames > 0
    assert _max_diff(ref, got) < 1e-4


def test_shipped_model_int8_and_bf16_transcripts_within_half_a_cer_point(export_dir, clips):
    refs, audios = clips
    base = cer(refs, [r.text for r in ASRRunner(ASROptions(model=SHIPPED, dtype="float32")).transcribe(audios)])
    for options in (
        ASROptions(model=export_dir, dtype="int8"),
        ASROptions(model=export_dir, dtype="float32"),
        ASROptions(model=SHIPPED, dtype="bfloat16"),
    ):
        hyps = [r.text for r in ASRRunner(options).transcribe(audios)]
        assert abs(cer(refs, hyps) - base) <= CER_POINTS, (options.dtype, cer(refs, hyps), base)


def test_shipped_model_embeddings_cosine_per_backend(export_dir, clips):
    _, audios = clips
    ref = [r.embedding for r in Embedder(EmbedOptions(model=SHIPPED, dtype="float32")).embed(audios)]
    for options in (
        EmbedOptions(model=SHIPPED, dtype="bfloat16"),
        EmbedOptions(model=export_dir, dtype="float32"),
        EmbedOptions(model=export_dir, dtype="int8"),
    ):
        got = [r.embedding for r in Embedder(options).embed(audios)]
        assert min(_cosines(ref, got)) >= MIN_COSINE, options
