"""Generate a mixed corpus on disk: rates, lengths, channels, formats, and broken files."""

from __future__ import annotations

import os

import numpy as np

from voxray.audio import encode_audio, resample
from voxray.testing import synth_speechlike


def make_corpus(root: str, n_good: int = 40, seed: int = 0) -> dict[str, list[str]]:
    """Write ``n_good`` valid files plus corrupt/empty/truncated/non-audio ones; return paths by kind."""
    rng = np.random.default_rng(seed)
    os.makedirs(root, exist_ok=True)
    formats = ["wav", "flac", "ogg", "mp3"]
    rates = [8000, 16000, 22050, 44100, 48000]
    good = []
    for i in range(n_good):
        fmt = formats[i % len(formats)]
        sr = rates[i % len(rates)]
        seconds = float(rng.uniform(0.3, 4.0))
        audio = synth_speechlike(seconds, 16000, seed=seed * 1000 + i)
        audio = resample(audio, 16000, sr)
        if i % 3 == 0:  # stereo
            audio = np.stack([audio, 0.5 * audio], axis=1)
        sub = os.path.join(root, f"spk{i % 4}")
        os.makedirs(sub, exist_ok=True)
        path = os.path.join(sub, f"utt{i:03d}.{fmt}")
        with open(path, "wb") as fh:
            fh.write(encode_audio(audio, sr, fmt))
        good.append(path)
    bad = {}
    bad["empty"] = os.path.join(root, "bad", "empty.wav")
    bad["corrupt"] = os.path.join(root, "bad", "corrupt.flac")
    bad["text"] = os.path.join(root, "bad", "notes.mp3")
    bad["truncated"] = os.path.join(root, "bad", "truncated.wav")
    os.makedirs(os.path.join(root, "bad"), exist_ok=True)
    open(bad["empty"], "wb").close()
    with open(bad["corrupt"], "wb") as fh:
        fh.write(b"fLaC" + bytes(rng.integers(0, 256, 2000, dtype=np.uint8)))
    with open(bad["text"], "wb") as fh:
        fh.write(b"this is a text file, not audio\n" * 20)
    wav = encode_audio(synth_speechlike(2.0), 16000, "wav")
    with open(bad["truncated"], "wb") as fh:
        fh.write(wav[: len(wav) // 2])
    return {"good": good, "bad": list(bad.values())}
