"""Frame-level features on disk: one ``.npy`` shard per model call, rows indexed by offset.

A shard is ``[sum of frames, frame_dim]`` (float16 by default): the frames of every row of one
batch, stacked. Each Parquet row carries ``frames_file`` (relative to the output dir),
``frames_offset`` and ``frames_len``, so ``shard[offset : offset + len]`` is that row's sequence.
Local shards are memory-mapped when read, so reading one row never loads a whole shard.
"""

from __future__ import annotations

import io
import os
import uuid
from collections.abc import Sequence
from typing import Any

import numpy as np

from voxray.storage import fs_join

FRAMES_DIR = "frames"


def write_frames_shard(
    out: str, frames: Sequence[np.ndarray | None], dtype: str = "float16"
) -> tuple[str | None, list[int | None], list[int | None]]:
    """Write the non-null rows' frames to a new shard; returns (relative file, offsets, lengths)."""
    import fsspec

    present = [f for f in frames if f is not None]
    if not present:
        return None, [None] * len(frames), [None] * len(frames)
    offsets: list[int | None] = []
    lengths: list[int | None] = []
    pos = 0
    for f in frames:
        if f is None:
            offsets.append(None)
            lengths.append(None)
        else:
            offsets.append(pos)
            lengths.append(len(f))
            pos += len(f)
    rel = f"{FRAMES_DIR}/part-{uuid.uuid4().hex}.npy"
    buf = io.BytesIO()
    np.save(buf, np.concatenate(present).astype(dtype, copy=False))
    fs, root = fsspec.core.url_to_fs(out)
    fs.makedirs(fs_join(root, FRAMES_DIR), exist_ok=True)
    with fs.open(fs_join(root, rel), "wb") as fh:
        fh.write(buf.getvalue())
    return rel, offsets, lengths


def read_frames(out: str, row: dict[str, Any]) -> np.ndarray:
    """The ``[frames, frame_dim]`` features of one result row (a dict with the index columns)."""
    import fsspec

    if not row.get("frames_file"):
        raise ValueError(f"row {row.get('id')!r} has no frames (error or --frames was off)")
    start, length = int(row["frames_offset"]), int(row["frames_len"])
    local = os.path.join(out, row["frames_file"])
    if "://" not in out and os.path.exists(local):
        return np.asarray(np.load(local, mmap_mode="r")[start : start + length])
    with fsspec.open(fs_join(out, row["frames_file"]), "rb") as fh:
        return np.load(io.BytesIO(fh.read()))[start : start + length]
