"""Embedder correctness on tiny random models (no hub): masked pooling, layers, chunking, errors."""

import numpy as np
import pytest

from voxray.embed import Embedder, EmbedOptions
from voxray.embed.config import resolve_entries
from voxray.errors import InputError
from voxray.testing import build_ctc_model, synth_speechlike

LENGTHS_S = [0.4, 1.7, 3.3, 0.9, 2.6, 1.1]
WIDE = dict(batch_seconds=1000, max_padding=1.0)  # one padded batch for the whole list


@pytest.fixture(scope="module")
def layer_model(tmp_path_factory):
    return build_ctc_model(str(tmp_path_factory.mktemp("layer")), "tiny", norm="layer", seed=1)


@pytest.fixture(scope="module")
def group_model(tmp_path_factory):
    return build_ctc_model(str(tmp_path_factory.mktemp("group")), "tiny", norm="group", seed=2)


def _audios():
    return [synth_speechlike(s, seed=i) for i, s in enumerate(LENGTHS_S)]


def _encoder_outputs(model_dir, audio, embedder):
    """The plain HF encoder on one normalised input, no voxray batching involved."""
    import torch
    from transformers import AutoModel

    model = AutoModel.from_pretrained(model_dir).eval()
    x = torch.from_numpy(embedder.core.normalize(audio))[None]
    with torch.inference_mode():
        return model(x, output_hidden_states=True)


@pytest.mark.parametrize("pooling", ["mean", "mean+std", "max"])
def test_masked_pooling_in_padded_batch_equals_alone(layer_model, pooling):
    embedder = Embedder(EmbedOptions(model=layer_model, pooling=pooling, **WIDE))
    assert embedder.core.policy == "mask" and embedder.backend == "torch"
    audios = _audios()
    batched = embedder.embed(audios)
    assert embedder.stats.forward_passes == 1 and embedder.stats.padded_frames > 0  # really padded
    width = 32 * (2 if pooling == "mean+std" else 1)
    for audio, got in zip(audios, batched, strict=True):
        alone = embedder.embed([audio])[0]
        assert got.error is None and got.embedding.shape == (width,) and got.embedding.dtype == np.float32
        np.testing.assert_allclose(got.embedding, alone.embedding, atol=1e-5, rtol=0)


def test_pooling_over_padded_frames_would_leak(layer_model):
    """Guards the parity test: averaging a short item's padded frames would change its vector."""
    import torch

    embedder = Embedder(EmbedOptions(model=layer_model, **WIDE))
    short, long = (embedder.core.normalize(a) for a in _audios()[:2])
    x = np.zeros((2, len(long)), np.float32)
    x[0, : len(short)], x[1] = short, long
    mask = np.zeros_like(x, dtype=np.int64)
    mask[0, : len(short)], mask[1] = 1, 1
    with torch.inference_mode():
        hidden = embedder.hidden_states(torch.from_numpy(x), torch.from_numpy(mask))[0, :, 0].numpy()
    alone = embedder.embed([_audios()[0]])[0].embedding
    real = embedder.num_frames(len(short))
    np.testing.assert_allclose(hidden[:real].mean(0), alone, atol=1e-5)
    assert np.abs(hidden.mean(0) - alone).max() > 1e-3


def test_group_norm_batching_gives_batch_size_one_vectors(group_model):
    embedder = Embedder(EmbedOptions(model=group_model, pooling="mean+std", **WIDE))
    assert embedder.core.policy == "exact"
    audios = _audios() + [synth_speechlike(1.7, seed=1), synth_speechlike(1.7, seed=9)]  # equal lengths
    batched = embedder.embed(audios)
    single = Embedder(EmbedOptions(model=group_model, pooling="mean+std", padding="none"))
    for got, alone in zip(batched, single.embed(audios), strict=True):
        np.testing.assert_allclose(got.embedding, alone.embedding, atol=1e-5, rtol=0)
    assert embedder.stats.padded_frames == 0
    assert embedder.stats.forward_passes < len(audios)  # the equal-length items shared a batch


def test_last_layer_is_the_encoder_output(layer_model):
    audio = synth_speechlike(1.3, seed=4)
    embedder = Embedder(EmbedOptions(model=layer_model, layer=-1, frames=True, frames_dtype="float32"))
    result = embedder.embed([audio])[0]
    ref = _encoder_outputs(layer_model, audio, embedder).last_hidden_state[0].numpy()
    assert result.frames.shape == ref.shape == (embedder.num_frames(len(audio)), 32)
    np.testing.assert_allclose(result.frames, ref, atol=1e-5, rtol=0)
    np.testing.assert_allclose(result.embedding, ref.mean(0), atol=1e-5, rtol=0)


def test_all_layers_stack_and_entries(layer_model):
    audio = synth_speechlike(2.1, seed=5)
    embedder = Embedder(EmbedOptions(model=layer_model, layer="all", frames=True, frames_dtype="float32"))
    layers = embedder.num_hidden_layers
    assert embedder.layout.entries == tuple(range(layers + 1)) and embedder.dim == (layers + 1) * 32
    result = embedder.embed([audio])[0]
    stack = result.embedding.reshape(layers + 1, 1, 32)[:, 0]
    out = _encoder_outputs(layer_model, audio, embedder)
    for k in range(layers):  # 0 = transformer input, k = output of layer k
        np.testing.assert_allclose(stack[k], out.hidden_states[k][0].numpy().mean(0), atol=1e-5)
    np.testing.assert_allclose(stack[layers], out.last_hidden_state[0].numpy().mean(0), atol=1e-5)
    assert result.frames.shape == (embedder.num_frames(len(audio)), (layers + 1) * 32)
    # a single lower layer stops the forward early and still gives the same numbers
    one = Embedder(EmbedOptions(model=layer_model, layer=1)).embed([audio])[0].embedding
    np.testing.assert_allclose(one, stack[1], atol=1e-6)
    concat = Embedder(EmbedOptions(model=layer_model, layer=[0, 2], layer_combine="concat")).embed([audio])[0]
    mean = Embedder(EmbedOptions(model=layer_model, layer="0,2", layer_combine="mean")).embed([audio])[0]
    np.testing.assert_allclose(concat.embedding, np.concatenate([stack[0], stack[2]]), atol=1e-5)
    np.testing.assert_allclose(mean.embedding, (stack[0] + stack[2]) / 2, atol=1e-5)


def test_layer_specs_resolve_and_out_of_range_is_an_input_error(layer_model):
    assert resolve_entries(-1, 24) == (24,) and resolve_entries(0, 24) == (0,)
    assert resolve_entries([6, -2], 24) == (6, 23) and len(resolve_entries("all", 24)) == 25
    assert EmbedOptions(layer="6,12").layer == [6, 12] and EmbedOptions(layer="-3").layer == -3
    with pytest.raises(InputError, match="out of range"):
        Embedder(EmbedOptions(model=layer_model, layer=5))


def test_l2_normalisation(layer_model):
    audios = _audios()[:3]
    for v in Embedder(EmbedOptions(model=layer_model, normalize=True, pooling="mean+std")).embed(audios):
        assert abs(np.linalg.norm(v.embedding) - 1) < 1e-5
    stacked = Embedder(EmbedOptions(model=layer_model, normalize=True, layer="all")).embed(audios)
    for v in stacked:  # each layer of the stack is its own unit vector
        np.testing.assert_allclose(np.linalg.norm(v.embedding.reshape(3, 32), axis=1), 1, atol=1e-5)


def test_chunked_pooling_and_frames_equal_unchunked_when_context_fits(tmp_path):
    """Zero transformer layers keep the receptive field inside the stride: chunk statistics merged
    must equal pooling the whole file, and the stitched frames must equal the whole file's."""
    model = build_ctc_model(str(tmp_path), "tiny", num_hidden_layers=0, seed=3)
    audio = synth_speechlike(7.3, seed=7)
    common = dict(model=model, pooling="mean+std", frames=True, frames_dtype="float32")
    whole = Embedder(EmbedOptions(chunk_s=60, **common)).embed([audio])[0]
    runner = Embedder(EmbedOptions(chunk_s=1.0, stride_s=0.25, **common))
    chunked = runner.embed([audio])[0]
    assert runner.stats.frames > whole.frames.shape[0]  # really chunked (context frames overlap)
    assert chunked.frames.shape == whole.frames.shape
    np.testing.assert_allclose(chunked.frames, whole.frames, atol=1e-5, rtol=0)
    np.testing.assert_allclose(chunked.embedding, whole.embedding, atol=1e-5, rtol=0)


def test_long_file_with_transformer_stays_close(layer_model):
    audio = synth_speechlike(40.0, seed=11)
    whole = Embedder(EmbedOptions(model=layer_model, chunk_s=60)).embed([audio])[0].embedding
    chunked = Embedder(EmbedOptions(model=layer_model, chunk_s=10, stride_s=2)).embed([audio])[0].embedding
    cos = float(whole @ chunked / np.linalg.norm(whole) / np.linalg.norm(chunked))
    assert cos > 0.99


def test_hubert_without_head_and_injected_ctc_model(tmp_path, layer_model):
    import torch
    from transformers import AutoModelForCTC, HubertConfig, HubertModel, Wav2Vec2FeatureExtractor

    from voxray.testing import SIZES

    config = HubertConfig(
        feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True, hidden_dropout=0.0,
        attention_dropout=0.0, activation_dropout=0.0, feat_proj_dropout=0.0, layerdrop=0.0,
        mask_time_prob=0.0, **SIZES["tiny"],
    )
    torch.manual_seed(0)
    HubertModel(config).save_pretrained(tmp_path)
    Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=True).save_pretrained(tmp_path)
    audio = synth_speechlike(1.5, seed=2)
    embedder = Embedder(EmbedOptions(model=str(tmp_path), layer="all", **WIDE))
    assert type(embedder.model).__name__ == "HubertModel" and embedder.dim == 3 * 32
    out = _encoder_outputs(str(tmp_path), audio, embedder)
    got = embedder.embed([audio, synth_speechlike(0.7)])[0].embedding.reshape(3, 32)
    np.testing.assert_allclose(got[-1], out.last_hidden_state[0].numpy().mean(0), atol=1e-5)

    ctc = AutoModelForCTC.from_pretrained(layer_model)  # a loaded CTC model: its encoder is used
    injected = Embedder(EmbedOptions(model=layer_model), model=ctc, feature_extractor=None)
    loaded = Embedder(EmbedOptions(model=layer_model))
    np.testing.assert_allclose(
        injected.embed([audio])[0].embedding, loaded.embed([audio])[0].embedding, atol=1e-6
    )


def test_columnar_call_keeps_per_item_errors(layer_model):
    embedder = Embedder(EmbedOptions(model=layer_model, frames=True))
    batch = {
        "id": ["a", "b", "c"],
        "path": ["a.wav", "b.wav", "c.wav"],
        "audio": [synth_speechlike(1.0), np.zeros(0, np.float32), np.zeros(10, np.float32)],
        "error": [None, "decode: broken", None],
    }
    out = embedder(batch)
    assert out["error"][0] is None and out["embedding"][0].shape == (32,)
    assert out["frames"][0].dtype == np.float16 and out["frames"][0].shape == (embedder.num_frames(16000), 32)
    assert out["error"][1] == "decode: broken" and out["embedding"][1] is None
    assert out["error"][2].startswith("bad_input: audio is too short") and out["embedding"][2] is None
    assert out["layer"] == ["-1"] * 3 and out["pooling"] == ["mean"] * 3 and out["model"] == [layer_model] * 3
    assert "audio" not in out and out["id"] == ["a", "b", "c"] and out["duration_s"][0] == pytest.approx(1.0)
    assert embedder.embed(batch)["error"] == out["error"]  # embed() takes the columnar form too


@pytest.mark.slow  # one ONNX export (~10 s of torch.export tracing)
def test_injected_torch_encoder_runs_on_onnx_when_asked(layer_model):
    """An injected model (a Serve replica's) with ``backend=onnx`` is exported to a temporary dir."""
    from transformers import AutoModel

    audios = _audios()[:3]
    ref = Embedder(EmbedOptions(model=layer_model)).embed(audios)
    embedder = Embedder(EmbedOptions(model=layer_model, backend="onnx"), model=AutoModel.from_pretrained(layer_model))
    assert embedder.backend == "onnx"
    for a, b in zip(ref, embedder.embed(audios), strict=True):
        np.testing.assert_allclose(a.embedding, b.embedding, atol=1e-4, rtol=0)
