"""wav2vec2 architectures by name: fine-tuning's ``--from-config`` sizes and the test/benchmark models.

One table, so the model a test builds is the model a recipe trains.
"""

from __future__ import annotations

from typing import Any

# Randomly initialised architectures for --from-config. "small" is issue 8's measured recipe
# (~3.7M parameters, 320-sample frames like XLSR); "base"/"xlsr-large" are the usual shapes.
ARCHITECTURES: dict[str, dict[str, Any]] = {
    "tiny": dict(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        conv_dim=(32, 32, 32), conv_kernel=(10, 3, 3), conv_stride=(5, 4, 4),
        num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
    ),
    # ~0.4M parameters with XLSR's 320-sample frames: learns a handful of words in a few hundred
    # CPU steps, so the fine-tuning tests show real learning in about a minute.
    "mini": dict(
        hidden_size=96, num_hidden_layers=2, num_attention_heads=2, intermediate_size=256,
        conv_dim=(32, 64, 64, 64, 64, 64, 64), conv_kernel=(10, 3, 3, 3, 3, 2, 2),
        conv_stride=(5, 2, 2, 2, 2, 2, 2), num_conv_pos_embeddings=32, num_conv_pos_embedding_groups=8,
    ),
    "small": dict(
        hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024,
        conv_dim=(64, 128, 128, 128, 128, 128, 128), conv_kernel=(10, 3, 3, 3, 3, 2, 2),
        conv_stride=(5, 2, 2, 2, 2, 2, 2), num_conv_pos_embeddings=64, num_conv_pos_embedding_groups=16,
    ),
    "base": dict(
        hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
        conv_dim=(512,) * 7, conv_kernel=(10, 3, 3, 3, 3, 2, 2), conv_stride=(5, 2, 2, 2, 2, 2, 2),
        num_conv_pos_embeddings=128, num_conv_pos_embedding_groups=16,
    ),
    "xlsr-large": dict(
        hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
        conv_dim=(512,) * 7, conv_kernel=(10, 3, 3, 3, 3, 2, 2), conv_stride=(5, 2, 2, 2, 2, 2, 2),
        num_conv_pos_embeddings=128, num_conv_pos_embedding_groups=16,
    ),
}
