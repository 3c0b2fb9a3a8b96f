"""Audio in and out: one decoder used everywhere (jobs, Serve ingress, tests).

Decoding goes through libsndfile (``soundfile``: wav/flac/ogg/mp3 and more) with PyAV (FFmpeg's
libraries, bundled in its wheel) as the fallback for containers libsndfile cannot read (m4a, webm,
opus-in-mp4...). Resampling uses ``soxr``. Every failure is a typed :mod:`voxray.errors` error so a
bad file becomes one error row or one 4xx, never a crash.
"""

from __future__ import annotations

import io
import logging
import os
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np

from voxray.errors import AudioDecodeError, EmptyAudioError, InputNotFoundError

logger = logging.getLogger("voxray.audio")

AudioSource = str | os.PathLike | bytes | bytearray | BinaryIO

WRITE_FORMATS = {
    # format -> (soundfile format, subtype)
    "wav": ("WAV", "PCM_16"),
    "flac": ("FLAC", "PCM_16"),
    "ogg": ("OGG", "VORBIS"),
    "mp3": ("MP3", "MPEG_LAYER_III"),
    "opus": ("OGG", "OPUS"),
}


# The rate wav2vec2 encoders were trained at: every ASR/embedding input is resampled to it.
SAMPLE_RATE = 16000


@dataclass(frozen=True)
class AudioInfo:
    """Header facts read without decoding the samples (cheap: used to sort a corpus by length)."""

    duration_s: float
    sample_rate: int
    channels: int


def _source_name(source: AudioSource) -> str:
    if isinstance(source, str | os.PathLike):
        return os.fspath(source)
    return getattr(source, "name", "<bytes>")


def read_bytes(source: AudioSource) -> bytes:
    """Read a path, fsspec URL (s3://, gs://, http(s)://, memory://) or file object into memory."""
    if isinstance(source, bytes | bytearray):
        return bytes(source)
    if not isinstance(source, str | os.PathLike):
        return source.read()
    path = os.fspath(source)
    if "://" not in path:
        if not os.path.exists(path):
            raise InputNotFoundError(f"file not found: {path}")
        if os.path.isdir(path):
            raise AudioDecodeError(f"{path} is a directory, not an audio file")
        with open(path, "rb") as fh:
            return fh.read()
    import fsspec

    try:
        with fsspec.open(path, "rb") as fh:
            return fh.read()
    except FileNotFoundError as exc:
        raise InputNotFoundError(f"not found: {path}") from exc
    except ImportError as exc:  # e.g. s3fs/gcsfs not installed
        raise AudioDecodeError(f"cannot read {path}: {exc}") from exc


def _wav_data_shortfall(data: bytes) -> int:
    """Bytes missing from a RIFF/WAVE file's ``data`` chunk (0 when complete or not a WAV).

    libsndfile silently shortens a cut-off WAV to what is present; callers want to know.
    """
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return 0
    pos = 12
    while pos + 8 <= len(data):
        chunk_id, size = data[pos : pos + 4], int.from_bytes(data[pos + 4 : pos + 8], "little")
        if chunk_id == b"data":
            if size in (0, 0xFFFFFFFF):  # streaming writers leave the size unset
                return 0
            return max(0, size - (len(data) - pos - 8))
        pos += 8 + size + (size & 1)
    return 0


def _decode_soundfile(data: bytes) -> tuple[np.ndarray, int]:
    import soundfile as sf

    missing = _wav_data_shortfall(data)
    if missing:
        raise AudioDecodeError(f"WAV file is truncated: {missing} bytes of its data chunk are missing")

    with sf.SoundFile(io.BytesIO(data)) as f:
        audio = f.read(dtype="float32", always_2d=True)
        sr = f.samplerate
    return audio, sr


def _decode_av(data: bytes) -> tuple[np.ndarray, int]:
    import av

    chunks: list[np.ndarray] = []
    with av.open(io.BytesIO(data), mode="r") as container:
        if not container.streams.audio:
            raise AudioDecodeError("no audio stream in the file")
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="fltp", layout="mono")
        sr = stream.rate or stream.codec_context.sample_rate
        for frame in container.decode(stream):
            for out in resampler.resample(frame):
                chunks.append(out.to_ndarray().reshape(-1))
        for out in resampler.resample(None):
            chunks.append(out.to_ndarray().reshape(-1))
    audio = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)
    return audio.astype(np.float32)[:, None], int(sr)


def resample(audio: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """High-quality resampling with soxr; a no-op when the rates already match."""
    if orig_sr == target_sr or audio.size == 0:
        return audio.astype(np.float32, copy=False)
    import soxr

    return soxr.resample(audio, orig_sr, target_sr, quality="HQ").astype(np.float32, copy=False)


def decode_audio(source: AudioSource, sample_rate: int = SAMPLE_RATE, mono: bool = True) -> np.ndarray:
    """Decode any supported input to float32 at ``sample_rate`` (mono: channel mean).

    Raises :class:`InputNotFoundError`, :class:`EmptyAudioError` or :class:`AudioDecodeError`.
    """
    name = _source_name(source)
    data = read_bytes(source)
    if not data:
        raise EmptyAudioError(f"{name} is empty (0 bytes)")
    try:
        audio, sr = _decode_soundfile(data)
    except AudioDecodeError:
        raise
    except Exception as sf_exc:  # libsndfile cannot read it: try FFmpeg's decoders
        try:
            audio, sr = _decode_av(data)
        except AudioDecodeError as exc:
            raise AudioDecodeError(f"cannot decode {name}: {exc.message}") from exc
        except Exception as exc:
            raise AudioDecodeError(
                f"cannot decode {name}: not a supported audio file (wav, flac, ogg, mp3, m4a, ...); "
                f"libsndfile said: {str(sf_exc).split(': ', 1)[-1]}"
            ) from exc
    if audio.shape[0] == 0:
        raise EmptyAudioError(f"{name} contains no audio samples")
    if not np.isfinite(audio).all():
        raise AudioDecodeError(f"{name} contains NaN or infinite samples")
    audio = audio.mean(axis=1) if mono else audio.T
    return resample(np.ascontiguousarray(audio, dtype=np.float32), sr, sample_rate)


def probe(source: str | os.PathLike) -> AudioInfo | None:
    """Read the duration from the header only; ``None`` when the header is unreadable.

    Used to sort a corpus by length before decoding; errors surface later, in decoding.
    """
    import soundfile as sf

    path = os.fspath(source)
    try:
        if "://" in path:
            import fsspec

            with fsspec.open(path, "rb") as fh:
                info = sf.info(fh)
        else:
            info = sf.info(path)
    except Exception:
        return None
    if not info.samplerate:
        return None
    return AudioInfo(info.frames / info.samplerate, int(info.samplerate), int(info.channels))


def encode_audio(audio: np.ndarray, sample_rate: int, fmt: str = "wav") -> bytes:
    """Encode float32 audio to bytes in ``fmt`` (wav, flac, ogg, mp3, opus) with libsndfile."""
    import soundfile as sf

    fmt = fmt.lower()
    if fmt not in WRITE_FORMATS:
        raise ValueError(f"unsupported audio format {fmt!r}; choose one of {sorted(WRITE_FORMATS)}")
    container, subtype = WRITE_FORMATS[fmt]
    buf = io.BytesIO()
    sf.write(buf, np.clip(audio, -1.0, 1.0), sample_rate, format=container, subtype=subtype)
    return buf.getvalue()


def write_audio(path: str | os.PathLike, audio: np.ndarray, sample_rate: int, fmt: str | None = None) -> None:
    """Write audio to a local path or fsspec URL; the format defaults to the file extension."""
    path = os.fspath(path)
    fmt = (fmt or os.path.splitext(path)[1].lstrip(".") or "wav").lower()
    data = encode_audio(audio, sample_rate, fmt)
    if "://" in path:
        import fsspec

        with fsspec.open(path, "wb") as fh:
            fh.write(data)
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)  # atomic: an interrupted write never leaves a half file under the real name
