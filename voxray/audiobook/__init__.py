"""Audiobooks: a book (.txt/.md/.epub) -> chaptered audio, an .m4b, chapters.json and subtitles.srt.

Importing this package loads nothing heavy; the Ray job lives in :mod:`voxray.jobs.audiobook`.
"""

from voxray.audiobook.config import AudiobookOptions, PauseOptions

__all__ = ["AudiobookOptions", "PauseOptions"]
