"""Synthetic Korean speech corpora (espeak-ng) for training and testing the CTC pipeline."""
