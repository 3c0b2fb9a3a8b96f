"""wav2vec2 CTC ASR: batching policy, chunked long audio, CTC decoding with timestamps."""

from voxray.asr.runner import ASRResult, ASRRunner

__all__ = ["ASRResult", "ASRRunner"]
