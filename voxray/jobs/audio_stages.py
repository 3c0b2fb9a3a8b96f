"""Ray Data stages shared by the audio-in jobs (transcribe, embed): probe, decode, counters.

Decoding and resampling run here, in CPU tasks, so model actors (GPU) never wait on FFmpeg.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from voxray.errors import row_error

SAMPLE_RATE = 16000


def sort_by_duration(rows: list[dict[str, Any]], threads: int = 32) -> list[dict[str, Any]]:
    """Probe headers (I/O bound: a thread pool in the driver) and sort rows by duration.

    Sorting before decoding gives actors length-homogeneous batches (less padding) without a
    distributed shuffle of decoded audio. Unreadable headers sort first: they fail fast later.
    """
    from concurrent.futures import ThreadPoolExecutor

    from voxray.audio import probe

    def duration(row: dict[str, Any]) -> float:
        info = probe(row["path"])
        return info.duration_s if info else -1.0

    with ThreadPoolExecutor(max_workers=threads) as pool:
        durations = list(pool.map(duration, rows))
    order = sorted(range(len(rows)), key=lambda i: durations[i])
    return [rows[i] for i in order]


def decode_batch(batch: dict[str, np.ndarray], sample_rate: int = SAMPLE_RATE) -> dict[str, Any]:
    """Decode + resample each file; a failure becomes that row's ``error`` (empty audio)."""
    from voxray.audio import decode_audio

    audios, durations, errors = [], [], []
    for path in batch["path"]:
        try:
            audio = decode_audio(str(path), sample_rate)
            audios.append(audio)
            durations.append(len(audio) / sample_rate)
            errors.append(None)
        except Exception as exc:
            audios.append(np.zeros(0, dtype=np.float32))
            durations.append(float("nan"))
            errors.append(row_error(exc))
    return {
        "id": list(batch["id"]),
        "path": list(batch["path"]),
        "duration_s": np.asarray(durations, dtype=np.float64),
        "audio": audios,
        "error": errors,
    }


def stats_actor_cls() -> Any:
    import ray

    @ray.remote(num_cpus=0)
    class Stats:
        """Sums per-batch counters from every model actor (padding waste for ``run.json``)."""

        def __init__(self) -> None:
            self.totals: dict[str, float] = {}

        def add(self, **counters: float) -> None:
            for k, v in counters.items():
                self.totals[k] = self.totals.get(k, 0) + v

        def get(self) -> dict[str, float]:
            return dict(self.totals)

    return Stats
