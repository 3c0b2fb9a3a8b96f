"""Response formats of the OpenAI-compatible audio API: transcripts (json/text/srt/vtt) and
streamable speech encodings (pcm/wav/mp3 chunk by chunk; flac/opus once complete).

MP3 streams come from one encoder that lives as long as the response, so chunk boundaries leave
no gaps: the bytes are one continuous MPEG stream that decodes to the summed duration.
"""

from __future__ import annotations

import struct

import numpy as np

from voxray.subtitles import to_srt as to_srt  # transcripts as subtitles: one writer for the API and audiobooks
from voxray.subtitles import to_vtt as to_vtt
from voxray.subtitles import words_to_segments as words_to_segments

SPEECH_MEDIA_TYPES = {
    "mp3": "audio/mpeg", "wav": "audio/wav", "pcm": "audio/pcm", "flac": "audio/flac", "opus": "audio/ogg",
}
STREAMED_FORMATS = {"pcm", "wav", "mp3"}  # containers that can be cut per chunk
TRANSCRIPT_FORMATS = ("json", "text", "verbose_json", "srt", "vtt")
MP3_BITRATE = 64_000  # mono speech at 24 kHz: transparent enough, 8 kB/s


def pcm16(audio: np.ndarray) -> bytes:
    return (np.clip(audio, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()


def streaming_wav_header(sample_rate: int) -> bytes:
    """A WAV header with unknown length (0xFFFFFFFF), as streaming servers send it."""
    unknown = 0xFFFFFFFF
    fmt = struct.pack("<HHIIHH", 1, 1, sample_rate, sample_rate * 2, 2, 16)
    return b"RIFF" + struct.pack("<I", unknown) + b"WAVEfmt " + struct.pack("<I", 16) + fmt + b"data" + struct.pack(
        "<I", unknown
    )


class Mp3Stream:
    """One LAME encoder (FFmpeg's, via PyAV) for a whole response: ``encode(chunk)`` returns the
    MPEG frames completed so far, ``close()`` flushes the rest."""

    def __init__(self, sample_rate: int, bit_rate: int = MP3_BITRATE) -> None:
        import av

        self._codec = av.CodecContext.create("libmp3lame", "w")
        self._codec.sample_rate = sample_rate
        self._codec.layout = "mono"
        self._codec.format = "s16p"
        self._codec.bit_rate = bit_rate
        self._codec.open()
        self.sample_rate = sample_rate
        self._pts = 0

    def _packets(self, frame: object | None) -> bytes:
        return b"".join(bytes(p) for p in self._codec.encode(frame))

    def encode(self, audio: np.ndarray) -> bytes:
        import av

        if not len(audio):
            return b""
        pcm = (np.clip(audio, -1.0, 1.0) * 32767.0).astype(np.int16).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(pcm, format="s16p", layout="mono")
        frame.sample_rate = self.sample_rate
        frame.pts = self._pts
        self._pts += pcm.shape[1]
        return self._packets(frame)

    def close(self) -> bytes:
        return self._packets(None)
