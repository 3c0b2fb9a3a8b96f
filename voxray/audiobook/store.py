"""Chunk audio on disk (local or fsspec): written by the TTS actors, read back by the assembler.

A chunk is ``KEY.npy`` (float32 samples at 24 kHz, exact: reassembly is bit-identical across
reruns) then ``KEY.json`` (its sentence timings). The JSON is written last, so its presence
means the chunk is complete: a kill between the two leaves an orphan ``.npy`` that the rerun
overwrites. A chunk that failed leaves ``KEY.failed.json`` instead, and is retried on rerun.
"""

from __future__ import annotations

import io
import json
import os
from typing import Any

import numpy as np

from voxray.storage import fs_join

OK_SUFFIX = ".json"
FAILED_SUFFIX = ".failed.json"


class ChunkStore:
    """Reads and writes chunks under ``root`` (a folder or an fsspec URL)."""

    def __init__(self, root: str) -> None:
        import fsspec

        self.root = root
        self.fs, self.path = fsspec.core.url_to_fs(root)
        self.remote = "://" in root and not root.startswith("file://")

    def _put(self, name: str, data: bytes) -> None:
        path = fs_join(self.path, name)
        if self.remote:
            with self.fs.open(path, "wb") as fh:  # an object store write is all-or-nothing
                fh.write(data)
            return
        os.makedirs(self.path, exist_ok=True)
        tmp = f"{path}.tmp-{os.getpid()}"
        with open(tmp, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)

    def _get(self, name: str) -> bytes:
        with self.fs.open(fs_join(self.path, name), "rb") as fh:
            return fh.read()

    def listing(self) -> tuple[set[str], set[str]]:
        """(keys done, keys failed), from one listing of the folder."""
        if not self.fs.exists(self.path):
            return set(), set()
        names = [os.path.basename(p.rstrip("/")) for p in self.fs.ls(self.path, detail=False)]
        failed = {n[: -len(FAILED_SUFFIX)] for n in names if n.endswith(FAILED_SUFFIX)}
        done = {n[: -len(OK_SUFFIX)] for n in names if n.endswith(OK_SUFFIX) and not n.endswith(FAILED_SUFFIX)}
        return done, failed

    def write_ok(self, key: str, audio: np.ndarray, meta: dict[str, Any]) -> None:
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(audio, dtype=np.float32), allow_pickle=False)
        self._put(key + ".npy", buf.getvalue())
        self._put(key + OK_SUFFIX, json.dumps(meta).encode())
        failed = fs_join(self.path, key + FAILED_SUFFIX)
        if self.fs.exists(failed):  # an earlier run's failure, now fixed
            self.fs.rm(failed)

    def write_failed(self, key: str, meta: dict[str, Any]) -> None:
        self._put(key + FAILED_SUFFIX, json.dumps(meta).encode())

    def read_meta(self, key: str, failed: bool = False) -> dict[str, Any]:
        return json.loads(self._get(key + (FAILED_SUFFIX if failed else OK_SUFFIX)))

    def read_audio(self, key: str) -> np.ndarray:
        return np.load(io.BytesIO(self._get(key + ".npy")), allow_pickle=False)
