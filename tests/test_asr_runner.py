"""ASR runner correctness on tiny random models (no hub): batching parity, chunking, decoding."""

import numpy as np
import pytest

from voxray.asr import ASRRunner
from voxray.asr.config import ASROptions
from voxray.testing import build_ctc_model, synth_speechlike

LENGTHS_S = [0.4, 1.7, 3.3, 0.9, 2.6, 1.1]


@pytest.fixture(scope="module")
def layer_model(tmp_path_factory):
    return build_ctc_model(str(tmp_path_factory.mktemp("layer")), "tiny", norm="layer", seed=1)


@pytest.fixture(scope="module")
def group_model(tmp_path_factory):
    return build_ctc_model(str(tmp_path_factory.mktemp("group")), "tiny", norm="group", seed=2)


def _audios():
    return [synth_speechlike(s, seed=i) for i, s in enumerate(LENGTHS_S)]


def test_layer_norm_model_uses_mask_and_padded_batch_equals_alone(layer_model):
    runner = ASRRunner(ASROptions(model=layer_model, batch_seconds=1000, max_padding=1.0))
    assert runner.policy == "mask" and runner.backend == "torch"  # auto: a torch checkpoint runs on torch
    audios = _audios()
    batched = runner.logits(audios)
    assert runner.stats.forward_passes == 1 and runner.stats.padded_frames > 0  # really padded
    for audio, got in zip(audios, batched, strict=True):
        alone = runner.logits([audio])[0]
        assert got.shape == alone.shape == (runner.num_frames(len(audio)), alone.shape[1])
        np.testing.assert_allclose(got, alone, atol=1e-4, rtol=0)


def test_without_mask_padding_would_change_outputs(layer_model):
    """Guards the parity test: if padding never mattered, the mask test would prove nothing."""
    import torch

    runner = ASRRunner(ASROptions(model=layer_model))
    audios = [runner._normalize(a) for a in _audios()[:2]]
    x = np.zeros((2, max(map(len, audios))), dtype=np.float32)
    for i, a in enumerate(audios):
        x[i, : len(a)] = a
    with torch.inference_mode():
        unmasked = runner.model(torch.from_numpy(x)).logits[0, : runner.num_frames(len(audios[0]))].numpy()
        alone = runner.model(torch.from_numpy(audios[0][None])).logits[0].numpy()
    assert np.abs(unmasked - alone).max() > 1e-2


def test_group_norm_model_batches_give_batch_size_one_transcripts(group_model):
    runner = ASRRunner(ASROptions(model=group_model, batch_seconds=1000, max_padding=1.0))
    assert runner.policy == "exact"
    # duplicates of equal length exercise real multi-item batches
    audios = _audios() + [synth_speechlike(1.7, seed=1), synth_speechlike(1.7, seed=1)]
    batched = [r.text for r in runner.transcribe(audios)]
    single = ASRRunner(ASROptions(model=group_model, padding="none"))
    alone = [r.text for r in single.transcribe(audios)]
    assert batched == alone
    assert runner.stats.padded_frames == 0
    assert runner.stats.forward_passes < len(audios)  # the equal-length items shared a batch


def test_group_norm_padding_would_change_transcripts(group_model):
    masked = ASRRunner(ASROptions(model=group_model, padding="mask", batch_seconds=1000, max_padding=1.0))
    alone = ASRRunner(ASROptions(model=group_model, padding="none"))
    audios = _audios()
    a = masked.logits(audios)
    b = alone.logits(audios)
    assert max(float(np.abs(x - y).max()) for x, y in zip(a, b, strict=True)) > 1e-2


def test_chunked_logits_equal_unchunked_when_context_fits(tmp_path):
    """Zero transformer layers bound the receptive field (conv stack + positional conv:
    60 samples + 16 frames x 80 samples), well inside a 0.25 s stride: stitching must be exact."""
    model = build_ctc_model(str(tmp_path), "tiny", num_hidden_layers=0, seed=3)
    audio = synth_speechlike(7.3, seed=7)
    whole = ASRRunner(ASROptions(model=model, chunk_s=60)).logits([audio])[0]
    chunked_runner = ASRRunner(ASROptions(model=model, chunk_s=1.0, stride_s=0.25))
    chunked = chunked_runner.logits([audio])[0]
    assert chunked_runner.stats.forward_passes >= 1 and chunked_runner.stats.items == 1
    assert chunked.shape == whole.shape
    np.testing.assert_allclose(chunked, whole, atol=1e-5, rtol=0)
    assert (chunked.argmax(-1) == whole.argmax(-1)).all()


def test_chunked_transformer_stays_close_and_long_audio_works(layer_model):
    """With attention the far context is missing; argmax agreement stays high, and a
    10-minute file goes through in bounded chunks."""
    audio = synth_speechlike(40.0, seed=11)
    whole = ASRRunner(ASROptions(model=layer_model, chunk_s=60)).logits([audio])[0]
    chunked = ASRRunner(ASROptions(model=layer_model, chunk_s=10, stride_s=2)).logits([audio])[0]
    assert chunked.shape == whole.shape
    assert (chunked.argmax(-1) == whole.argmax(-1)).mean() > 0.8
    ten_min = synth_speechlike(600.0, seed=12)
    runner = ASRRunner(ASROptions(model=layer_model, timestamps="word"))
    result = runner.transcribe([ten_min])[0]
    assert result.error is None and result.text and abs(result.duration_s - 600) < 1e-6
    assert result.chunks[-1]["end"] <= 600.0 + 1e-6


def test_decoder_matches_hf_tokenizer_and_timestamps(layer_model):
    runner = ASRRunner(ASROptions(model=layer_model))
    tok = runner.processor.tokenizer
    for logit in runner.logits(_audios()):
        ids = logit.argmax(-1)
        ours, _ = runner.decoder.decode(ids)
        theirs = tok.decode(ids)
        for special in (tok.unk_token, tok.bos_token, tok.eos_token):  # carry no text
            theirs = theirs.replace(special, "")
        assert ours == " ".join(theirs.split())
    # a known id sequence: blanks, repeats and word delimiters
    vocab = tok.get_vocab()
    ga, na, sep, blank = vocab["가"], vocab["나"], vocab["|"], vocab["<pad>"]
    ids = np.array([blank, ga, ga, blank, ga, sep, sep, na, blank, na, na, sep])
    text, chars = runner.decoder.decode(ids, "char")
    assert text == "가가 나나"
    spf = runner.frame / 16000
    assert [c["text"] for c in chars] == ["가", "가", "나", "나"]
    assert chars[0]["start"] == pytest.approx(1 * spf) and chars[0]["end"] == pytest.approx(3 * spf)
    _, words = runner.decoder.decode(ids, "word")
    assert words == [
        {"text": "가가", "start": pytest.approx(spf), "end": pytest.approx(5 * spf)},
        {"text": "나나", "start": pytest.approx(7 * spf), "end": pytest.approx(11 * spf)},
    ]


def test_columnar_call_keeps_per_item_errors(layer_model):
    runner = ASRRunner(ASROptions(model=layer_model))
    batch = {
        "id": ["a", "b", "c"],
        "audio": [synth_speechlike(1.0), np.zeros(0, np.float32), np.zeros(10, np.float32)],
        "error": [None, "decode: broken", None],
    }
    out = runner(batch)
    assert out["error"][0] is None and out["text"][0]
    assert out["error"][1] == "decode: broken" and out["text"][1] is None
    assert out["error"][2].startswith("bad_input: audio is too short")
    assert "audio" not in out and out["id"] == ["a", "b", "c"]


def test_backend_and_dtype_have_one_home_shared_with_embeddings():
    """``backend``/``dtype`` are declared once (EncoderOptions); ASR and embedding options inherit them,
    so jobs, Serve and the CLI (which derive from these models) all get ``--backend``."""
    from voxray.embed.config import EmbedOptions
    from voxray.encoder.options import EncoderOptions

    for field in ("backend", "dtype", "threads"):
        assert field in EncoderOptions.model_fields
        assert field not in ASROptions.__annotations__ and field not in EmbedOptions.__annotations__
    assert ASROptions().backend == EmbedOptions().backend == "auto"
    assert ASROptions(dtype="int8").backend == "auto"  # auto + int8 resolves to onnx at load
