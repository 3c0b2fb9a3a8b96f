"""Kokoro-82M text-to-speech: G2P, voices, the ONNX runner and a streaming pipeline.

Importing this package loads nothing heavy: onnxruntime, misaki and espeak are imported when a
pipeline is built or a language is first used.
"""

from voxray.tts.config import TTSOptions
from voxray.tts.pipeline import Synthesis, TTSPipeline, TTSResult

__all__ = ["Synthesis", "TTSOptions", "TTSPipeline", "TTSResult"]
