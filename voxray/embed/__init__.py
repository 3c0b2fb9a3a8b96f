"""Acoustic embeddings on the ASR encoder: layer choice, masked pooling, nearest-neighbour search."""

from voxray.embed.config import EmbeddingLayout, EmbedOptions
from voxray.embed.runner import Embedder, EmbeddingResult

__all__ = ["EmbedOptions", "Embedder", "EmbeddingLayout", "EmbeddingResult"]
