"""Long audio in overlapping chunks, stitched at the logit level (the HF pipeline's scheme).

Each chunk carries ``stride`` samples of context on both sides; after inference the frames of
that context are dropped and the centres are laid side by side. Chunk, stride and step are
multiples of the encoder's frame stride, so every kept frame maps to exactly one global frame.
For an encoder whose receptive field fits inside the stride, the stitched logits equal the
unchunked ones (tests prove it); for transformers they differ only by the missing far context.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class AudioChunk:
    """Samples ``[start, end)`` go through the model; frames of ``[keep_start, keep_end)`` are kept."""

    start: int
    end: int
    keep_start: int
    keep_end: int


def plan_chunks(num_samples: int, chunk: int, stride: int, frame: int) -> list[AudioChunk]:
    """Chunks covering ``num_samples``; one chunk when the audio fits.

    ``frame`` is the encoder's samples-per-frame (e.g. 320); sizes are rounded down to it.
    """
    chunk = max(frame, chunk // frame * frame)
    stride = stride // frame * frame
    if num_samples <= chunk:
        return [AudioChunk(0, num_samples, 0, num_samples)]
    step = chunk - 2 * stride
    if step <= 0:
        raise ValueError(f"stride {stride} leaves no centre in chunk {chunk}")
    chunks = []
    start = 0
    while True:
        end = min(start + chunk, num_samples)
        last = end == num_samples
        keep_start = 0 if start == 0 else start + stride
        keep_end = num_samples if last else end - stride
        chunks.append(AudioChunk(start, end, keep_start, keep_end))
        if last:
            return chunks
        start += step
