"""Runner-independent TTS pieces: weight-name mapping, word timestamps, batch planning, style rows,
and word timestamps from the embedded int8 graph's durations (no torch backend needed)."""

from __future__ import annotations

import numpy as np

from voxray.tts.batching import plan_batches
from voxray.tts.timestamps import word_timings


def test_module_paths_of_the_export_scopes():
    from voxray.tts.kokoro_weights import _module_path

    assert _module_path("/encoder/text_encoder/cnn.0/cnn.0.0/Conv_quant") == "text_encoder.cnn.0.0"
    assert _module_path("/encoder/F0.1/conv1/Conv_quant") == "predictor.F0.1.conv1"
    assert _module_path("/encoder/shared/LSTM_quant") == "predictor.shared"
    assert _module_path(
        "/encoder/bert/encoder/albert_layer_groups.0/albert_layers.0/attention/query_3/MatMul_quant"
    ) == "bert.encoder.albert_layer_groups.0.albert_layers.0.attention.query"
    assert _module_path("/decoder/decoder/generator/resblocks.1/convs1.0/Conv_quant") == (
        "decoder.generator.resblocks.1.convs1.0"
    )


def test_word_timings_from_durations():
    symbols = {1: "a", 2: "b", 16: " ", 4: "."}
    # [pad, a, b, " ", b, a, ".", pad]: 2, 3, 1, 1, 2, 2, 4, 5 frames of 25 ms
    words = word_timings("Hi there.", [1, 2, 16, 2, 1, 4], np.array([2, 3, 1, 1, 2, 2, 4, 5]), symbols, 600 * 20)
    assert [(w.word, w.start, w.end) for w in words] == [("Hi", 0.05, 0.15), ("there.", 0.175, 0.275)]
    # more written words than phoneme words: still monotonic, inside the audio
    words = word_timings("Hi you there.", [1, 2, 16, 2, 1, 4], np.array([2, 3, 1, 1, 2, 2, 4, 5]), symbols, 12000)
    assert len(words) == 3 and all(a.start <= b.start for a, b in zip(words, words[1:], strict=False))


def test_plan_batches_respects_the_token_budget():
    counts = [10, 200, 30, 198, 12, 500]
    batches = plan_batches(counts, max_batch_tokens=520, max_batch_items=16)
    assert sorted(i for b in batches for i in b) == list(range(len(counts)))
    assert all(len(b) * (max(counts[i] for i in b) + 2) <= 520 or len(b) == 1 for b in batches)
    assert batches[0] == [5]  # longest first


def test_style_row_is_the_token_count():
    from voxray.tts import TTSPipeline

    class Runner:
        def infer(self, tokens, style, speed=1.0):
            return np.zeros(600, np.float32)

    pipe = TTSPipeline(runner=Runner())
    table = np.arange(510 * 256, dtype=np.float32).reshape(510, 1, 256)
    assert np.array_equal(pipe.style_for(table, 7), table[7].reshape(1, -1))  # kokoro-onnx: voice[len(tokens)]
    assert np.array_equal(pipe.style_for(table, 510), table[509].reshape(1, -1))  # clamped, no crash at 510


def test_int8_pipeline_has_word_timestamps_from_its_durations():
    from voxray.tts import TTSPipeline

    pipe = TTSPipeline(lang="es", threads=2)
    assert pipe.runner.needs_repair and pipe.runner._durations_name  # the derived graph's output
    result = pipe.synthesize("Hola mundo. Buenos días.")
    words = result.words
    assert [w.word for w in words] == ["Hola", "mundo.", "Buenos", "días."]
    assert result.chunks[0].durations.sum() * 600 == len(result.audio)
    assert all(0 <= w.start < w.end <= result.duration_s + 1e-6 for w in words)
    assert all(a.end <= b.start + 1e-6 for a, b in zip(words, words[1:], strict=False))


def test_synthesize_batch_batches_chunks_and_isolates_failures():
    from voxray.errors import InferenceError
    from voxray.tts import TTSPipeline
    from voxray.tts.batching import RawOutput
    from voxray.tts.pipeline import PlannedChunk, TTSRequest

    calls: list[int] = []

    class BatchRunner:
        batches, needs_repair = True, False

        def infer_batch(self, items):
            calls.append(len(items))
            if any(len(i.tokens) == 1 for i in items):  # one poison chunk fails its whole batch
                raise InferenceError("poison")
            return [RawOutput(np.ones(600 * (len(i.tokens) + 2), np.float32), np.ones(len(i.tokens) + 2, int))
                    for i in items]

    pipe = TTSPipeline(runner=BatchRunner(), lang="es")
    pipe.plan = lambda text, lang=None: [PlannedChunk(text, text, [43] * len(text))]  # no G2P: "a" tokens
    out = pipe.synthesize_batch([TTSRequest("abcd"), TTSRequest("x"), TTSRequest("ab"), TTSRequest("y", voice="zz")])
    assert calls[0] == 3  # the three valid requests in one forward
    assert [type(o).__name__ for o in out] == ["Synthesis", "InferenceError", "Synthesis", "UnknownVoiceError"]
    assert len(out[0].audio) == 600 * 6
    assert [(w.word, w.start, w.end) for w in out[0].words] == [("abcd", 0.025, 0.125)]  # 4 frames after the pad
