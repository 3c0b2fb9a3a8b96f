"""Streaming ASR library: cached conv features, append-only text, endpointing, cross-stream batching.

Tiny random models prove the arithmetic exactly; the shipped Korean model proves the text on the
committed clips (streaming finals vs offline transcription of the same clips).
"""

import csv
from pathlib import Path

import numpy as np
import pytest

from voxray.asr import ASRRunner
from voxray.asr.config import ASROptions
from voxray.asr.streaming import StreamingASR, StreamingOptions
from voxray.audio import SAMPLE_RATE, decode_audio
from voxray.testing import build_ctc_model, synth_speechlike
from voxray.text_ko import cer_ignoring_spaces

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "models" / "ko-synthetic-ctc"
CLIPS = ROOT / "samples" / "ko"


@pytest.fixture(scope="module")
def layer_runner(tmp_path_factory):
    return ASRRunner(ASROptions(model=build_ctc_model(str(tmp_path_factory.mktemp("l")), "tiny", seed=3)))


@pytest.fixture(scope="module")
def group_runner(tmp_path_factory):
    path = build_ctc_model(str(tmp_path_factory.mktemp("g")), "tiny", norm="group", seed=4)
    return ASRRunner(ASROptions(model=path))


@pytest.fixture(scope="module")
def shipped():
    runner = ASRRunner(ASROptions(model=str(SHIPPED)))
    rows = list(csv.DictReader((CLIPS / "espeak.csv").read_text(encoding="utf-8").splitlines()))
    audios = [decode_audio(str(CLIPS / r["path"])) for r in rows]
    return runner, audios, [r["text"] for r in rows]


def _stream(engine: StreamingASR, audio: np.ndarray, piece: int):
    session, events, windows = engine.session(), [], []
    for i in range(0, len(audio), piece):
        ws = session.push(audio[i: i + piece])
        windows += ws
        events += [ev for w, lg in zip(ws, engine.forward_windows(ws), strict=True) for ev in session.accept(w, lg)]
    ws = session.push(np.zeros(0, np.float32), final=True)
    windows += ws
    events += [ev for w, lg in zip(ws, engine.forward_windows(ws), strict=True) for ev in session.accept(w, lg)]
    events += session.close_segment()
    return events, windows


def test_cached_conv_features_equal_one_pass_over_the_whole_stream(layer_runner):
    import torch

    engine = StreamingASR(layer_runner.model, layer_runner.decoder, StreamingOptions(chunk_s=0.1, left_s=0.2,
                          lookahead_s=0.06), do_normalize=False)
    assert engine.cached
    audio = synth_speechlike(3.1, seed=5)
    with torch.inference_mode():
        fresh = layer_runner.model.wav2vec2.feature_extractor(torch.from_numpy(audio)[None])[0].T.numpy()
    _, windows = _stream(engine, audio, piece=777)  # pieces that never align with frames
    assert len(windows) > 10
    covered = set()
    for w in windows:
        first = w.first_frame - w.keep.start  # global frame of the window's first row
        np.testing.assert_allclose(w.features, fresh[first: first + len(w.features)], atol=1e-5, rtol=0)
        covered.update(range(first, first + len(w.features)))
    assert covered == set(range(len(fresh)))  # every frame of the stream, from cached features


@pytest.mark.parametrize("piece", [1, 160, 5000])
def test_results_depend_on_the_audio_not_on_how_it_is_fed(layer_runner, piece):
    engine = StreamingASR.from_runner(layer_runner, StreamingOptions(chunk_s=0.2, left_s=0.4, lookahead_s=0.1))
    audio = synth_speechlike(2.3, seed=6)
    whole_events, whole_windows = _stream(engine, audio, piece=len(audio))
    events, windows = _stream(engine, audio, piece=piece)
    assert [e.text for e in events] == [e.text for e in whole_events]
    for a, b in zip(windows, whole_windows, strict=True):
        np.testing.assert_array_equal(a.features, b.features)


@pytest.mark.parametrize("runner_name", ["layer_runner", "group_runner"])
def test_one_window_over_the_whole_clip_equals_offline(runner_name, request):
    """With the chunk longer than the clip, streaming sees what offline sees: the same logits."""
    runner = request.getfixturevalue(runner_name)
    engine = StreamingASR.from_runner(runner, StreamingOptions(chunk_s=10, max_segment_s=30))
    assert engine.cached is (runner_name == "layer_runner")  # group norm: CNN per window, never cached
    audio = synth_speechlike(2.7, seed=7)
    # end the clip where its last frame ends: stats over the samples the frames cover are the clip's
    audio = audio[: (runner.num_frames(len(audio)) - 1) * engine.stride + engine.receptive_field]
    session = engine.session()
    session.push(audio)
    (window,) = session.push(np.zeros(0, np.float32), final=True)
    (streamed,) = engine.forward_windows([window])
    np.testing.assert_allclose(streamed, runner.logits([audio])[0], atol=1e-4, rtol=0)


def test_windows_of_many_streams_batch_to_the_same_logits(layer_runner, group_runner):
    for runner in (layer_runner, group_runner):
        engine = StreamingASR.from_runner(runner, StreamingOptions(chunk_s=0.3, left_s=0.6, lookahead_s=0.1))
        windows = []
        for seed, seconds in enumerate((0.9, 1.7, 2.4)):  # different lengths: windows of different sizes
            session = engine.session()
            windows += session.push(synth_speechlike(seconds, seed=seed), final=True)
        batched = engine.forward_windows(windows)
        for w, got in zip(windows, batched, strict=True):
            np.testing.assert_allclose(got, engine.forward_windows([w])[0], atol=1e-4, rtol=0)


def test_deltas_are_append_only_and_finals_are_their_concatenation(shipped):
    runner, audios, _ = shipped
    engine = StreamingASR.from_runner(runner, StreamingOptions(timestamps="char"))
    for audio in audios:
        session, events = engine.session(), []
        texts_so_far = []
        for i in range(0, len(audio), 640):  # 40 ms packets, as a microphone sends them
            events += session.feed(audio[i: i + 640])
            texts_so_far.append("".join(e.text for e in events if e.kind == "delta"))
        events += session.finish()
        deltas = [e for e in events if e.kind == "delta"]
        finals = [e for e in events if e.kind == "final"]
        assert finals and "".join(f.text for f in finals) == "".join(d.text for d in deltas)
        for earlier, later in zip(texts_so_far, texts_so_far[1:], strict=False):
            assert later.startswith(earlier)  # never revised
        assert all(d.spans and d.spans[0]["start"] >= d.start_s - 1e-9 for d in deltas)


def test_streaming_finals_read_the_committed_clips_about_as_well_as_offline(shipped):
    runner, audios, refs = shipped
    offline = [r.text for r in runner.transcribe(audios)]
    engine = StreamingASR.from_runner(runner)  # the defaults
    assert engine.options.chunk_s <= 1.0
    streamed = []
    for audio in audios:
        session = engine.session()
        events = session.feed(audio) + session.finish()
        streamed.append(" ".join(e.text for e in events if e.kind == "final"))
    cer_off, cer_stream = cer_ignoring_spaces(refs, offline), cer_ignoring_spaces(refs, streamed)
    # 12 clips, 145 characters: within 10% relative of offline, plus 2 characters of slack
    assert cer_stream <= cer_off * 1.1 + 2 / 145, (cer_off, cer_stream)


def test_a_pause_closes_a_segment_and_long_speech_is_cut(shipped):
    runner, audios, _ = shipped
    engine = StreamingASR.from_runner(runner, StreamingOptions(endpoint_s=0.6))
    silence = np.zeros(int(1.5 * SAMPLE_RATE), np.float32)
    audio = np.concatenate([audios[0], silence, audios[3], silence, silence])  # the tail waits for lookahead
    session = engine.session()
    events = session.feed(audio)
    finals = [e for e in events if e.kind == "final"]
    assert len(finals) == 2 and finals[0].segment == 0 and finals[1].segment == 1  # closed by pauses alone
    assert finals[0].end_s <= len(audios[0]) / SAMPLE_RATE + 1.5
    assert not session.finish()  # nothing left open

    short = StreamingASR.from_runner(runner, StreamingOptions(max_segment_s=1.0, endpoint_s=5))
    session = short.session()
    events = session.feed(np.concatenate(audios[:4])) + session.finish()
    finals = [e for e in events if e.kind == "final"]
    assert len(finals) >= 4 and all(f.end_s - f.start_s <= 1.25 + 1e-6 for f in finals)


def test_listen_command_prints_each_final_and_json_events(shipped, capsys, tmp_path, monkeypatch):
    import io
    import json

    from voxray.cli import main

    runner, audios, _ = shipped
    clip = str(CLIPS / "espeak" / "rt-003.flac")
    assert main(["listen", clip, "--model", str(SHIPPED)]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    session = StreamingASR.from_runner(runner).session()
    expected = [e.text for e in session.feed(decode_audio(clip)) + session.finish() if e.kind == "final"]
    assert printed == expected and expected

    pcm = (np.clip(audios[3], -1, 1) * 32767).astype("<i2").tobytes()  # raw pcm16 on stdin, as from ffmpeg
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(pcm)))
    assert main(["listen", "-", "--model", str(SHIPPED), "--json", "--chunk-s", "0.32"]) == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert events[-1]["type"] == "final" and events[-1]["text"] == "".join(e["text"] for e in events[:-1])

    assert main(["listen", str(tmp_path / "missing.wav"), "--model", str(SHIPPED)]) == 2  # one line, no traceback
    assert "not found" in capsys.readouterr().err
