"""Pydantic options for acoustic embeddings: one home for CLI flags, YAML job specs and HTTP models.

Also the embedding layout (which hidden-state entries, how they combine, the vector width), a
pure function of the options and the model config, so the job driver can fix the Parquet schema
before any model actor starts.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from voxray.config import Options
from voxray.encoder.options import EncoderOptions

LayerSpec = int | list[int] | Literal["all"]
POOLINGS = ("mean", "max", "mean+std")


class EmbedOptions(EncoderOptions):
    """The embedding runner: the shared encoder options plus layer choice and pooling."""

    layer: LayerSpec = Field(
        -1,
        description="hidden-state entry: N (0 = transformer input, -1 = encoder output), a list "
        "'6,12,18' (see --layer-combine), or 'all' (per-layer stack of num_hidden_layers+1)",
    )
    layer_combine: Literal["mean", "concat"] = Field(
        "mean", description="for a list of layers: average frames across layers, or concatenate them"
    )
    pooling: Literal["mean", "max", "mean+std"] = Field(
        "mean", description="pooling over the real (unpadded) frames; mean+std doubles the width"
    )
    normalize: bool = Field(
        False, description="L2-normalise the vector (each layer's block separately for --layer all)"
    )
    frames: bool = Field(False, description="also write frame-level features (sharded .npy + row offsets)")
    frames_dtype: Literal["float16", "float32"] = Field("float16", description="dtype of frame-level features")

    @field_validator("layer", mode="before")
    @classmethod
    def _parse_layer(cls, v: Any) -> Any:
        """CLI/YAML strings: '-1', 'all', '6,12,18' or '6 12 18'."""
        if isinstance(v, str):
            text = v.strip().lower()
            if text == "all":
                return "all"
            parts = [p for p in text.replace(",", " ").split() if p]
            try:
                ints = [int(p) for p in parts]
            except ValueError as exc:
                raise ValueError(f"layer must be an integer, a list of integers or 'all', got {v!r}") from exc
            if not ints:
                raise ValueError("layer is empty")
            return ints[0] if len(ints) == 1 and "," not in text else ints
        return v

    @model_validator(mode="after")
    def _check(self) -> EmbedOptions:
        if isinstance(self.layer, list) and not self.layer:
            raise ValueError("layer list is empty")
        return self

    @property
    def layer_label(self) -> str:
        """The ``layer`` column: '-1', 'mean(6,12)', 'concat(6,12)' or 'all'."""
        if isinstance(self.layer, list):
            return f"{self.layer_combine}({','.join(str(x) for x in self.layer)})"
        return str(self.layer)


@dataclass(frozen=True)
class EmbeddingLayout:
    """How a vector is laid out: ``(blocks, stats, hidden)`` flattened in C order.

    ``entries``: hidden-state entries used (0..num_hidden_layers). ``blocks``: 1 for a single
    layer or averaged layers, one per entry for ``concat`` and ``all``. ``stats``: 2 for
    ``mean+std`` (mean first), else 1. Reshape a vector with ``v.reshape(blocks, stats, hidden)``.
    """

    entries: tuple[int, ...]
    blocks: int
    stats: int
    hidden: int
    num_hidden_layers: int

    @property
    def dim(self) -> int:
        return self.blocks * self.stats * self.hidden

    @property
    def frame_dim(self) -> int:
        """Width of one frame-level feature row: ``blocks x hidden`` (no pooling statistics)."""
        return self.blocks * self.hidden

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "entries": list(self.entries), "dim": self.dim, "frame_dim": self.frame_dim}


def resolve_entries(layer: LayerSpec, num_hidden_layers: int) -> tuple[int, ...]:
    """Map a layer spec to hidden-state entries 0..L (negative counts from the top: -1 = L)."""
    top = num_hidden_layers
    requested = list(range(top + 1)) if layer == "all" else layer if isinstance(layer, list) else [layer]
    entries = []
    for k in requested:
        idx = k if k >= 0 else top + 1 + k
        if not 0 <= idx <= top:
            raise ValueError(
                f"layer {k} is out of range for a model with {num_hidden_layers} transformer layers "
                f"(valid: {-(top + 1)}..{top})"
            )
        entries.append(idx)
    return tuple(entries)


def embedding_layout(options: EmbedOptions, num_hidden_layers: int, hidden_size: int) -> EmbeddingLayout:
    entries = resolve_entries(options.layer, num_hidden_layers)
    stacked = options.layer == "all" or (isinstance(options.layer, list) and options.layer_combine == "concat")
    return EmbeddingLayout(
        entries=entries,
        blocks=len(entries) if stacked else 1,
        stats=2 if options.pooling == "mean+std" else 1,
        hidden=hidden_size,
        num_hidden_layers=num_hidden_layers,
    )


class SearchOptions(Options):
    """``voxray embed-search``: nearest neighbours of one query in an embedding output directory."""

    index: str = Field(..., description="output directory of `voxray embed` (local path or fsspec URL)")
    query: str = Field(..., description="an id or path in the index, or an audio file to embed like it")
    k: int = Field(5, ge=1, description="neighbours to return")
