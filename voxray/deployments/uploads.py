"""Uploaded audio, bounded before work: the header is checked before decoding (rate, channels,
declared duration) and decoding streams block by block, stopping as soon as the duration limit is
passed, so a small compressed file that expands to hours (a decode bomb) costs one block, not
gigabytes. Output matches :func:`voxray.audio.decode_audio`: mono float32 at 16 kHz."""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

from voxray.audio import SAMPLE_RATE, _wav_data_shortfall
from voxray.errors import AudioDecodeError, EmptyAudioError, InputError, PayloadTooLargeError

BLOCK_S = 1.0  # decode this many seconds at a time
MIN_SAMPLE_RATE = 1000


@dataclass(frozen=True)
class AudioLimits:
    """What an upload may declare and decode to."""

    max_audio_s: float
    max_sample_rate: int = 384_000
    max_channels: int = 32


class _Collector:
    """Mixes blocks to mono, resamples them as a stream and enforces the duration limit."""

    def __init__(self, name: str, rate: int, channels: int, limits: AudioLimits) -> None:
        _check_format(name, rate, channels, limits)
        self.name, self.rate, self.limits = name, rate, limits
        self.max_frames = int(limits.max_audio_s * rate)
        self.frames = 0
        self.parts: list[np.ndarray] = []
        self._stream = None
        if rate != SAMPLE_RATE:
            import soxr

            self._stream = soxr.ResampleStream(rate, SAMPLE_RATE, 1, dtype="float32", quality="HQ")

    def add(self, block: np.ndarray) -> None:
        """``block``: (frames, channels) or (frames,) float32 at the native rate."""
        self.frames += len(block)
        if self.frames > self.max_frames:
            raise too_long(self.name, self.limits.max_audio_s, at_least=True)
        mono = block.mean(axis=1) if block.ndim == 2 else block
        if not np.isfinite(mono).all():
            raise AudioDecodeError(f"{self.name} contains NaN or infinite samples")
        mono = np.ascontiguousarray(mono, dtype=np.float32)
        self.parts.append(self._stream.resample_chunk(mono) if self._stream else mono)

    def result(self) -> np.ndarray:
        if self.frames == 0:
            raise EmptyAudioError(f"{self.name} contains no audio samples")
        if self._stream is not None:
            self.parts.append(self._stream.resample_chunk(np.zeros(0, np.float32), last=True))
        return np.concatenate(self.parts).astype(np.float32, copy=False)


def too_long(name: str, limit_s: float, seconds: float | None = None, at_least: bool = False) -> PayloadTooLargeError:
    said = f"{'over ' if at_least else ''}{seconds:.0f} s" if seconds is not None else f"over {limit_s:g} s"
    return PayloadTooLargeError(f"{name}: audio is {said} long; the limit is {limit_s:g} s (max_audio_s)")


def _check_format(name: str, rate: int, channels: int, limits: AudioLimits) -> None:
    if not MIN_SAMPLE_RATE <= rate <= limits.max_sample_rate:
        raise InputError(
            f"{name}: sample rate {rate} Hz is outside {MIN_SAMPLE_RATE}-{limits.max_sample_rate} Hz"
        )
    if not 1 <= channels <= limits.max_channels:
        raise InputError(f"{name}: {channels} channels; at most {limits.max_channels} are accepted")


def _decode_soundfile(data: bytes, name: str, limits: AudioLimits) -> np.ndarray:
    import soundfile as sf

    missing = _wav_data_shortfall(data)
    if missing:
        raise AudioDecodeError(f"{name}: WAV file is truncated: {missing} bytes of its data chunk are missing")
    with sf.SoundFile(io.BytesIO(data)) as f:
        declared = f.frames / f.samplerate if f.samplerate and 0 < f.frames < 2**62 else None
        collector = _Collector(name, int(f.samplerate), int(f.channels), limits)
        if declared is not None and declared > limits.max_audio_s:
            raise too_long(name, limits.max_audio_s, declared)
        block = max(1, int(f.samplerate * BLOCK_S))
        while True:
            chunk = f.read(block, dtype="float32", always_2d=True)
            if not len(chunk):
                break
            collector.add(chunk)
    return collector.result()


def _decode_av(data: bytes, name: str, limits: AudioLimits) -> np.ndarray:
    import av

    with av.open(io.BytesIO(data), mode="r") as container:
        if not container.streams.audio:
            raise AudioDecodeError(f"{name}: no audio stream in the file")
        stream = container.streams.audio[0]
        rate = int(stream.rate or stream.codec_context.sample_rate or 0)
        channels = int(stream.codec_context.channels or 1)
        collector = _Collector(name, rate, channels, limits)
        if container.duration and container.duration / 1e6 > limits.max_audio_s:
            raise too_long(name, limits.max_audio_s, container.duration / 1e6)
        resampler = av.AudioResampler(format="fltp", layout="mono", rate=rate)
        for frame in container.decode(stream):
            for out in resampler.resample(frame):
                collector.add(out.to_ndarray().reshape(-1))
        for out in resampler.resample(None):
            collector.add(out.to_ndarray().reshape(-1))
    return collector.result()


def decode_upload(data: bytes, name: str, limits: AudioLimits) -> np.ndarray:
    """Decode an upload to 16 kHz mono float32 within ``limits`` (typed 400/413 errors otherwise)."""
    if not data:
        raise EmptyAudioError(f"{name} is empty (0 bytes)")
    try:
        return _decode_soundfile(data, name, limits)
    except InputError:
        raise
    except Exception as sf_exc:  # libsndfile cannot read it: FFmpeg's decoders, bounded the same way
        try:
            return _decode_av(data, name, limits)
        except InputError:
            raise
        except Exception as exc:
            raise AudioDecodeError(
                f"cannot decode {name}: not a supported audio file (wav, flac, ogg, mp3, m4a, ...); "
                f"libsndfile said: {str(sf_exc).split(': ', 1)[-1]}"
            ) from exc
