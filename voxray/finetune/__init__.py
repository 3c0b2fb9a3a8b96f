"""CTC fine-tuning of wav2vec2 models on Ray Train (``voxray finetune``).

Imports nothing heavy: torch, transformers and Ray load inside the functions that need them.
"""
