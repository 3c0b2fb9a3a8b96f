"""espeak-ng speech synthesis: the libespeak-ng that ``espeakng-loader`` bundles (pip, no apt),
else the ``espeak-ng`` command (Debian package).

The library path needs no subprocess per utterance (~10 ms a sentence), which is what makes a
10,000-utterance corpus take about a minute.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import tempfile
import threading
from typing import Any

import numpy as np

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_RATE, _PITCH = 1, 3
_lock = threading.Lock()  # libespeak-ng is one global engine per process


class EspeakUnavailableError(RuntimeError):
    """Neither the bundled library nor the command is available."""


class Espeak:
    """Synthesise text with a voice (``ko``, ``ko+f3``...), speed (words/min) and pitch (0-99).

    ``backend``: ``auto`` (library, else command), ``lib`` or ``cli``.
    """

    def __init__(self, backend: str = "auto") -> None:
        self.backend = backend
        self._lib: Any = None
        self._chunks: list[np.ndarray] = []
        if backend in ("auto", "lib"):
            try:
                self._init_lib()
                self.backend = "lib"
                return
            except (ImportError, OSError) as exc:
                if backend == "lib":
                    raise EspeakUnavailableError(f"espeakng-loader's libespeak-ng failed to load: {exc}") from exc
        self._cmd = shutil.which("espeak-ng")
        if not self._cmd:
            raise EspeakUnavailableError(
                "no espeak-ng: `pip install espeakng-loader` (bundles the library and its data) "
                "or `apt-get install espeak-ng`"
            )
        self.backend = "cli"
        self.sample_rate = 22050

    def _init_lib(self) -> None:
        import espeakng_loader

        lib = ctypes.CDLL(espeakng_loader.get_library_path())
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_Synth.argtypes = [
            ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint, ctypes.c_uint,
            ctypes.c_void_p, ctypes.c_void_p,
        ]
        rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, espeakng_loader.get_data_path().encode(), 0)
        if rate <= 0:
            raise OSError(f"espeak_Initialize returned {rate}")
        callback_type = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)

        def on_audio(wav: Any, n: int, _events: Any) -> int:
            if n > 0:
                self._chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
            return 0

        self._callback = callback_type(on_audio)  # keep a reference: C holds only the pointer
        lib.espeak_SetSynthCallback(self._callback)
        self._lib, self.sample_rate = lib, int(rate)

    def synth(self, text: str, voice: str = "ko", speed: int = 160, pitch: int = 50) -> np.ndarray:
        """float32 mono audio at :attr:`sample_rate` (22,050 Hz)."""
        if self._lib is None:
            return self._synth_cli(text, voice, speed, pitch)
        data = text.encode("utf-8")
        with _lock:
            self._chunks = []
            if self._lib.espeak_SetVoiceByName(voice.encode()) != 0:
                raise ValueError(f"espeak-ng has no voice {voice!r}")
            self._lib.espeak_SetParameter(_RATE, int(speed), 0)
            self._lib.espeak_SetParameter(_PITCH, int(pitch), 0)
            self._lib.espeak_Synth(data, len(data) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
            self._lib.espeak_Synchronize()
            chunks, self._chunks = self._chunks, []
        if not chunks:
            return np.zeros(0, dtype=np.float32)
        return np.concatenate(chunks).astype(np.float32) / 32768.0

    def _synth_cli(self, text: str, voice: str, speed: int, pitch: int) -> np.ndarray:
        import soundfile as sf

        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "out.wav")
            subprocess.run(
                [self._cmd, "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", path, text],
                check=True, capture_output=True,
            )
            audio, sr = sf.read(path, dtype="float32", always_2d=True)
        self.sample_rate = int(sr)
        return audio.mean(axis=1)
