"""Find and run ffmpeg: ``$VOXRAY_FFMPEG``, then ``ffmpeg`` on PATH, then imageio-ffmpeg's bundled
binary (a PyPI wheel, so CI needs no apt). The bundled build has the AAC and LAME encoders."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from collections.abc import Sequence

from voxray.errors import InputError, VoxrayError

logger = logging.getLogger("voxray.audiobook")


def find_ffmpeg() -> str:
    """Path of an ffmpeg executable, or an error saying how to get one."""
    env = os.environ.get("VOXRAY_FFMPEG")
    if env:
        if not (os.path.isfile(env) and os.access(env, os.X_OK)):
            raise InputError(f"VOXRAY_FFMPEG={env} is not an executable file")
        return env
    found = shutil.which("ffmpeg")
    if found:
        return found
    try:
        import imageio_ffmpeg
    except ImportError as exc:
        raise InputError(
            "m4b/mp3 output needs ffmpeg: pip install imageio-ffmpeg, install ffmpeg, or set VOXRAY_FFMPEG"
        ) from exc
    return imageio_ffmpeg.get_ffmpeg_exe()


def run_ffmpeg(args: Sequence[str]) -> None:
    """Run ffmpeg quietly; its stderr becomes the error message when it fails."""
    cmd = [find_ffmpeg(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y", *args]
    logger.debug("running %s", " ".join(cmd))
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise VoxrayError(f"ffmpeg failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
