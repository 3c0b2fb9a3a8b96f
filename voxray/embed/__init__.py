"""Acoustic embeddings on the ASR encoder: layer choice, masked pooling, a batch job and search."""

from voxray.embed.config import EmbeddingLayout, EmbedJob, EmbedOptions
from voxray.embed.runner import Embedder, EmbeddingResult

__all__ = ["EmbedJob", "EmbedOptions", "Embedder", "EmbeddingLayout", "EmbeddingResult"]
