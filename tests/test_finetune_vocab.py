"""Korean jamo vocabulary, recomposition, batching and options of ``voxray finetune`` (fast, no Ray)."""

from __future__ import annotations

import argparse
import os

import numpy as np
import pytest
from pydantic import ValidationError

from voxray import text_ko
from voxray.finetune.config import FinetuneJob
from voxray.finetune.data import length_grouped_batches
from voxray.finetune.train import lr_lambda
from voxray.finetune.vocab import build_vocab, encode, normalize_transcript, to_units, vocab_kind


def test_every_syllable_round_trips_through_jamo():
    syllables = "".join(chr(c) for c in range(0xAC00, 0xD7A4))
    jamo = text_ko.decompose(syllables)
    assert set(jamo) <= set(text_ko.JAMO)
    assert len(set(jamo)) == 67
    assert text_ko.compose(jamo) == syllables


@pytest.mark.parametrize(
    "text",
    ["안녕하세요 세계", "값싼 닭을 읽었다", "ㅋㅋ 웃기다", "서울 2024년 abc", "괜찮아요 뷁 똠양꿍"],
)
def test_decompose_compose_round_trip(text):
    assert text_ko.compose(text_ko.decompose(text)) == text


def test_compose_keeps_spans_and_makes_stray_jamo_visible():
    units = [("\u1112", 0, 2), ("\u1161", 3, 4), ("\u11ab", 5, 6), ("|", 7, 7), ("\u1161", 8, 9)]
    out = text_ko.compose_units(units)
    assert out[0] == ("한", 0, 6)
    assert out[1] == ("|", 7, 7)
    assert out[2] == ("ㅏ", 8, 9)  # a vowel without an initial: compatibility letter, not a combining mark


def test_vocab_from_transcripts_is_jamo_and_covers_all_hangul():
    vocab = build_vocab(["안녕하세요, 세계!", "값싼 닭"])
    assert vocab["<pad>"] == 0 and vocab["|"] == 4
    assert set(text_ko.JAMO) <= set(vocab)
    assert vocab_kind(vocab) == "jamo"
    ids = encode("뷁 닭", vocab)  # syllables never seen in training are still spellable
    assert 3 not in ids  # no <unk>
    inv = {i: t for t, i in vocab.items()}
    assert text_ko.compose("".join(" " if inv[i] == "|" else inv[i] for i in ids)) == "뷁 닭"


def test_syllable_vocab_and_normalisation():
    assert normalize_transcript("  안녕, 세계!  Hello? ") == "안녕 세계 hello"
    vocab = build_vocab(["안녕 세계"], kind="syllable")
    assert vocab_kind(vocab) == "syllable"
    assert to_units("안녕 세계", "syllable") == ["안", "녕", "|", "세", "계"]


def test_saved_jamo_model_loads_in_asr_runner_and_recomposes(tmp_path):
    """The output dir format: an ordinary HF dir that voxray's ASRRunner loads unchanged."""
    from voxray.asr import ASRRunner
    from voxray.finetune.base_model import build_model, save_hf
    from voxray.finetune.vocab import make_processor

    vocab = build_vocab(["하늘 바다"])
    job = FinetuneJob(train=["t.csv"], eval=["e.csv"], from_config="tiny", out=str(tmp_path))
    model = build_model(job, vocab, None, keep_head=False)
    out = str(tmp_path / "model")
    save_hf(model, make_processor(vocab, out), out)
    assert os.path.exists(os.path.join(out, "model.safetensors"))
    from voxray.asr.config import ASROptions

    runner = ASRRunner(ASROptions(model=out))
    audio = np.random.default_rng(0).standard_normal(16000).astype(np.float32) * 0.1
    text = runner.transcribe([audio])[0].text
    assert text is not None
    # the decoder sees a jamo vocabulary and recomposes: syllables or compatibility letters only
    assert text == text_ko.compose(text)
    assert all(not text_ko.is_jamo(c) for c in text)


def test_length_grouped_batches_respect_the_budget_and_cover_everything():
    rng = np.random.default_rng(0)
    lengths = rng.integers(8000, 80000, size=500)
    budget = 24 * 16000
    batches = length_grouped_batches(lengths, budget, 64, seed=3)
    flat = sorted(i for b in batches for i in b)
    assert flat == list(range(500))
    for b in batches:
        assert len(b) == 1 or max(lengths[b]) * len(b) <= budget
    padded = sum(max(lengths[b]) * len(b) for b in batches)
    assert lengths.sum() / padded > 0.85  # grouping by length keeps padding small
    assert batches != length_grouped_batches(lengths, budget, 64, seed=4)  # reshuffled per epoch


def test_lr_schedule_warms_up_then_decays_to_zero():
    values = [lr_lambda(s, 10, 100) for s in range(100)]
    assert values[0] == pytest.approx(0.1) and values[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(values[10:], values[11:], strict=False))
    assert lr_lambda(100, 10, 100) == pytest.approx(0.0)


def test_options_need_exactly_one_model_source(tmp_path):
    with pytest.raises(ValidationError):
        FinetuneJob(train=["t"], eval=["e"], out=str(tmp_path))
    with pytest.raises(ValidationError):
        FinetuneJob(train=["t"], eval=["e"], out=str(tmp_path), base="x", from_config="small")
    with pytest.raises(ValidationError):
        FinetuneJob(train=["t"], eval=["e"], out=str(tmp_path), from_config="small", freeze="everything")


def test_cli_flags_derive_from_the_options_model():
    from voxray.cli import collect_options
    from voxray.cli.finetune import register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args([
        "finetune", "--train", "a.csv", "--eval", "b.csv", "c.csv", "--from-config", "small", "--out", "o",
        "--freeze", "encoder", "--grad-accum", "2", "--spec-augment-mask-time-prob", "0.1", "--no-resume",
    ])
    job = FinetuneJob(**collect_options(args))
    assert job.eval == ["b.csv", "c.csv"] and job.freeze == "encoder" and job.grad_accum == 2
    assert job.spec_augment.mask_time_prob == 0.1 and job.resume is False


def test_finetune_spec_parses():
    from voxray.config import load_yaml

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    job = FinetuneJob(**load_yaml(os.path.join(root, "jobs", "finetune.yaml")))
    assert job.from_config == "small" and job.vocab == "jamo" and job.max_steps == 3000


def test_espeak_corpus_is_deterministic_16k(tmp_path):
    import espeakng_loader  # noqa: F401  (make test installs it: a missing one must fail)
    import soundfile as sf

    from voxray.corpus import read_manifest
    from voxray.data_synth.korean import HELDOUT_VOICES, make_corpus

    rep = make_corpus(str(tmp_path / "a"), n_train=6, n_eval=2, n_heldout=2, seed=1)
    rep2 = make_corpus(str(tmp_path / "b"), n_train=6, n_eval=2, n_heldout=2, seed=1)
    train = read_manifest(rep.manifests["train"])
    assert [r["text"] for r in train] == [r["text"] for r in read_manifest(rep2.manifests["train"])]
    held = read_manifest(rep.manifests["heldout"])
    assert {r["voice"] for r in held} <= set(HELDOUT_VOICES)
    assert not {r["voice"] for r in train} & set(HELDOUT_VOICES)
    assert not {r["text"] for r in held} & {r["text"] for r in train}
    info = sf.info(str(tmp_path / "a" / train[0]["path"]))
    assert info.samplerate == 16000 and info.duration > 0.3
