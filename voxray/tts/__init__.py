"""Kokoro-82M text-to-speech: G2P, voices, the ONNX and torch runners and a streaming pipeline.

Importing this package loads nothing heavy: onnxruntime, torch, misaki and espeak are imported
when a pipeline is built or a language is first used.
"""

from voxray.tts.config import TTSOptions
from voxray.tts.pipeline import ChunkJob, Synthesis, TTSPipeline, TTSRequest, TTSResult
from voxray.tts.timestamps import WordTiming

__all__ = ["ChunkJob", "Synthesis", "TTSOptions", "TTSPipeline", "TTSRequest", "TTSResult", "WordTiming"]
