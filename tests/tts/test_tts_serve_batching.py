"""The Serve TTS replica on torch batches the chunks of concurrent requests into shared forwards
(its dynamic batcher), and each request still gets the audio it would get alone.

The replica runs in a real Serve application here, called through its handle; the HTTP path in
front of it is the same one ``tests/test_serve.py`` drives for the ONNX replica.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

TEXTS = (
    "The harbour was quiet. A small boat left the dock before noon.",
    "Kokoro speaks many voices. Each one is a row of style vectors.",
    "Short one. Then a longer sentence follows it, with a few more words to say.",
    "Batching pays on GPUs. On a CPU it mostly shares the overhead.",
)


def _snr(ref: np.ndarray, test: np.ndarray) -> float:
    ref, test = np.asarray(ref, np.float64), np.asarray(test, np.float64)
    return float(10 * np.log10(np.sum(ref**2) / max(np.sum((ref - test) ** 2), 1e-30)))


@pytest.mark.slow
def test_concurrent_requests_share_forwards_and_sound_as_alone(ray_cluster):
    import kokoro  # noqa: F401  (make setup installs it with --no-deps: a missing one must fail)
    from net import free_port, serve_on
    from ray import serve

    from voxray.deployments.replicas import TTSDeployment
    from voxray.text import normalize_text, split_sentences
    from voxray.tts import TTSPipeline
    from voxray.tts.config import TTSOptions

    options = {"backend": "torch", "device": "cpu", "threads": 2, "noise_seed": 7}
    deployment = {"max_batch_size": 8, "batch_wait_timeout_s": 0.3, "max_ongoing_requests": 16, "num_cpus": 0.5}
    with serve_on(free_port()):
        handle = serve.run(TTSDeployment.options(ray_actor_options={"num_cpus": 0.5}, max_ongoing_requests=16)
                           .bind(options, deployment), name="tts-batched", route_prefix=None)
        info = handle.info.remote().result(timeout_s=300)
        assert info["batched"]

        async def one(text):
            gen = handle.options(stream=True).stream.remote(text, "jf_alpha")
            return [piece async for piece in gen]

        async def main():
            return await asyncio.gather(*(one(t) for t in TEXTS))

        got = asyncio.run(main())
        counters = handle.info.remote().result(timeout_s=60)["counters"]
    chunks = sum(len(g) for g in got)
    assert counters["max_batch"] > 1 and counters["batches"] < chunks, counters  # forwards were shared
    pipeline = TTSPipeline(TTSOptions(**options))  # the same chunks alone, in this process
    for text, pieces in zip(TEXTS, got, strict=True):
        sentences = split_sentences(normalize_text(text))
        jobs = [j for part in (sentences[0], " ".join(sentences[1:])) for j in pipeline.prepare(part, "jf_alpha")]
        assert len(jobs) == len(pieces) >= 2
        for job, (audio, words) in zip(jobs, pieces, strict=True):
            (alone,) = pipeline.synthesize_chunks([job])
            assert len(audio) == len(alone.audio)  # the same durations, to the sample
            assert _snr(alone.audio, audio) >= 40, text
            assert [w for w, _, _ in words] == [w.word for w in alone.words]
