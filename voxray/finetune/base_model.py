"""Build the model + processor a run starts from: a base (hub/local) or a random architecture."""

from __future__ import annotations

import logging
import os
from typing import Any

from voxray.encoder.architectures import ARCHITECTURES
from voxray.finetune.config import FinetuneOptions

logger = logging.getLogger("voxray.finetune")

_DROPOUTS = ("hidden_dropout", "attention_dropout", "activation_dropout", "feat_proj_dropout", "final_dropout")


def _training_overrides(opts: FinetuneOptions, vocab: dict[str, int]) -> dict[str, Any]:
    sa = opts.spec_augment
    out: dict[str, Any] = dict(
        vocab_size=len(vocab), pad_token_id=vocab["<pad>"], ctc_loss_reduction="mean", ctc_zero_infinity=True,
        apply_spec_augment=sa.mask_time_prob > 0 or sa.mask_feature_prob > 0,
        mask_time_prob=sa.mask_time_prob, mask_time_length=sa.mask_time_length,
        mask_time_min_masks=sa.mask_time_min_masks, mask_feature_prob=sa.mask_feature_prob,
        mask_feature_length=sa.mask_feature_length, layerdrop=0.0,
    )
    if opts.dropout is not None:
        out.update({k: opts.dropout for k in _DROPOUTS})
    return out


def base_processor(opts: FinetuneOptions) -> tuple[str | None, Any]:
    """(resolved base path, its processor or None when it has no tokenizer)."""
    if opts.base is None:
        return None, None
    from transformers import AutoProcessor

    from voxray.model_sources import resolve_hf_model

    path = resolve_hf_model(opts.base, opts.revision)
    try:
        processor = AutoProcessor.from_pretrained(path)
    except (OSError, ValueError, KeyError, TypeError):
        return path, None
    return path, processor if hasattr(processor, "tokenizer") else None


def build_model(opts: FinetuneOptions, vocab: dict[str, int], base_path: str | None, keep_head: bool) -> Any:
    """A ``Wav2Vec2ForCTC`` ready to train: the base (new head unless ``keep_head``) or a random one."""
    import torch
    from transformers import AutoConfig, AutoModelForCTC, Wav2Vec2Config, Wav2Vec2ForCTC

    overrides = _training_overrides(opts, vocab)
    torch.manual_seed(opts.seed)
    if base_path is None:
        assert opts.from_config is not None  # guaranteed by FinetuneJob's validator
        dropouts = {k: 0.0 for k in _DROPOUTS} | {k: v for k, v in overrides.items() if k in _DROPOUTS}
        config = Wav2Vec2Config(
            feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True,
            **{**overrides, **dropouts}, **ARCHITECTURES[opts.from_config],
        )
        model = Wav2Vec2ForCTC(config)
    else:
        config = AutoConfig.from_pretrained(base_path)
        if keep_head:
            overrides.pop("vocab_size")
            overrides.pop("pad_token_id")
        model = AutoModelForCTC.from_pretrained(
            base_path, **overrides, ignore_mismatched_sizes=not keep_head
        ) if getattr(config, "architectures", None) and any("CTC" in a for a in config.architectures) else (
            Wav2Vec2ForCTC.from_pretrained(base_path, **overrides)
        )
        if not keep_head:
            logger.info("new CTC head: %d units", len(vocab))
    return model


def apply_freeze(model: Any, freeze: str) -> None:
    """feature_encoder: the CNN is frozen (the usual wav2vec2 recipe); encoder: only the head trains."""
    if freeze == "feature_encoder":
        model.freeze_feature_encoder()
    elif freeze == "encoder":
        model.freeze_base_model()


def count_parameters(model: Any) -> tuple[int, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return total, trainable


def save_hf(model: Any, processor: Any, out_dir: str) -> None:
    """An ordinary HF model dir (safetensors + config + processor), loadable by ``ASRRunner``."""
    os.makedirs(out_dir, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    processor.save_pretrained(out_dir)
