"""Build randomly initialised wav2vec2 CTC models and synthetic audio for tests and benchmarks.

No Korean weights are reachable offline, so tests prove batching, chunking and job behaviour on
tiny random models, and speed benchmarks use the full XLSR-large architecture with random weights
(speed does not depend on weight values). Production code never imports this module.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from voxray.encoder.architectures import ARCHITECTURES

# A small Korean character vocabulary: enough for the tokenizer to be real and Korean.
KOREAN_CHARS = list(
    "가나다라마바사아자차카타파하고노도로모보소오조초코토포호"
    "구누두루무부수우주추쿠투푸후이은는을를에서의한"
)

# The random architectures are fine-tuning's --from-config sizes: one table for both.
SIZES: dict[str, dict[str, Any]] = ARCHITECTURES


def write_vocab(path: str, chars: list[str] | None = None) -> dict[str, int]:
    chars = chars if chars is not None else KOREAN_CHARS
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, "|": 4}
    for c in chars:
        vocab.setdefault(c, len(vocab))
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(vocab, fh, ensure_ascii=False)
    return vocab


def build_ctc_model(
    out_dir: str,
    size: str = "tiny",
    norm: str = "layer",
    seed: int = 0,
    vocab_chars: list[str] | None = None,
    **overrides: Any,
) -> str:
    """Save a random ``Wav2Vec2ForCTC`` + processor to ``out_dir`` and return it.

    ``norm="layer"`` gives the XLSR style (layer-norm feature encoder, stable layer norm,
    attention mask); ``norm="group"`` the wav2vec2-base style, where padding changes outputs.
    """
    import torch
    from transformers import (
        Wav2Vec2Config,
        Wav2Vec2CTCTokenizer,
        Wav2Vec2FeatureExtractor,
        Wav2Vec2ForCTC,
        Wav2Vec2Processor,
    )

    os.makedirs(out_dir, exist_ok=True)
    vocab_path = os.path.join(out_dir, "vocab.json")
    vocab = write_vocab(vocab_path, vocab_chars)
    tokenizer = Wav2Vec2CTCTokenizer(
        vocab_path, unk_token="<unk>", pad_token="<pad>", word_delimiter_token="|"
    )
    layer = norm == "layer"
    feature_extractor = Wav2Vec2FeatureExtractor(
        feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True,
        return_attention_mask=layer,
    )
    params = {**SIZES[size], **overrides}
    config = Wav2Vec2Config(
        vocab_size=len(vocab), pad_token_id=0, feat_extract_norm=norm, do_stable_layer_norm=layer,
        conv_bias=layer, ctc_loss_reduction="mean", hidden_dropout=0.0, attention_dropout=0.0,
        activation_dropout=0.0, feat_proj_dropout=0.0, final_dropout=0.0, layerdrop=0.0,
        mask_time_prob=0.0, **params,
    )
    torch.manual_seed(seed)
    model = Wav2Vec2ForCTC(config)
    with torch.no_grad():  # random init gives near-uniform logits; sharpen so argmax varies
        model.lm_head.weight.mul_(20.0)
    model.save_pretrained(out_dir)
    Wav2Vec2Processor(feature_extractor=feature_extractor, tokenizer=tokenizer).save_pretrained(out_dir)
    return out_dir


def synth_speechlike(seconds: float, sample_rate: int = 16000, seed: int = 0) -> np.ndarray:
    """Deterministic speech-like audio (harmonics with a wandering pitch, syllable envelope, noise)."""
    rng = np.random.default_rng(seed)
    n = max(1, int(seconds * sample_rate))
    t = np.arange(n) / sample_rate
    f0 = 110 + 40 * np.sin(2 * np.pi * 0.7 * t + rng.uniform(0, 6)) + rng.uniform(-20, 20)
    phase = 2 * np.pi * np.cumsum(f0) / sample_rate
    voice = sum(np.sin(k * phase) / k for k in range(1, 6))
    envelope = 0.5 * (1 + np.sin(2 * np.pi * 4 * t + rng.uniform(0, 6))) ** 2
    audio = 0.2 * voice * envelope + 0.01 * rng.standard_normal(n)
    return audio.astype(np.float32)
