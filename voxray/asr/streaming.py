"""Real-time CTC transcription over a sliding window, with cached conv features.

A stream is cut into fixed chunks of encoder frames. Each step runs the transformer over
``left context + chunk + lookahead`` frames and keeps the logits of the chunk only: those frames
saw ``lookahead`` of future audio, and they are never recomputed, so emitted text is append-only.

Receptive-field arithmetic (why the conv features can be cached exactly): the conv feature
encoder has total stride ``S = prod(stride_i)`` and receptive field
``R = 1 + sum_i (kernel_i - 1) * prod_{j<i} stride_j`` (XLSR: S = 320, R = 400 samples). Output
frame ``f`` depends on input samples ``[f*S, f*S + R)`` only, so frame ``f`` is computable once
``f*S + R`` samples have arrived, and running the CNN on a slice that starts at sample ``k*S``
yields exactly global frames ``k, k+1, ...`` (each layer's alignment is a multiple of its own
stride). The stream therefore keeps just the ``R - S`` samples of overlap plus the samples not yet
covered by a frame, and every input sample goes through the CNN once. This holds for
``feat_extract_norm="layer"`` models (their norms are per frame). Group-norm models
(wav2vec2-base style) normalise the first conv layer over time, so a cached frame would depend on
what came after it: for them the CNN runs over each step's window instead (correct, not cached).

Normalisation: the feature extractor normalises each utterance by its mean and variance, which a
live stream cannot know. A stream normalises the samples of each step by the running mean and
variance of everything received up to that step's last sample, so results depend only on the
audio, never on how it was cut into ``feed`` calls.

Endpointing: a run of ``endpoint_s`` of blank frames after speech closes the segment (a final);
speech without a pause is closed at ``max_segment_s``. The final transcript of a segment is the
concatenation of its deltas, by construction.

Many streams share one :class:`StreamingASR` (one loaded model); :meth:`StreamingASR.forward_windows`
runs the windows of many streams as one padded batch, which is how a Serve replica batches live
sessions. Imports no Ray; torch is imported lazily.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from voxray.asr.config import StreamingOptions
from voxray.asr.ctc import CTCDecoder
from voxray.audio import SAMPLE_RATE
from voxray.encoder.core import conv_frames, receptive_field
from voxray.text_ko import compose_units

logger = logging.getLogger("voxray.asr.streaming")


@dataclass
class StreamEvent:
    """A piece of text for one segment: ``delta`` (new stable text) or ``final`` (the whole segment)."""

    kind: Literal["delta", "final"]
    segment: int
    text: str
    start_s: float
    end_s: float
    spans: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Window:
    """One step of one stream: conv features to run through the transformer, and the frames to keep."""

    features: np.ndarray  # [T, C] conv features (float32), or raw samples for group-norm models
    keep: slice  # rows of the window's logits that are emitted
    first_frame: int  # global frame index of the first kept row
    raw: bool = False  # ``features`` are samples (group-norm models: CNN runs per window)


class StreamingASR:
    """One loaded CTC model serving any number of :class:`StreamSession` objects."""

    def __init__(self, model: Any, decoder: CTCDecoder, options: StreamingOptions | None = None,
                 do_normalize: bool = True, policy: str = "mask") -> None:
        import torch

        self.model = model.eval()
        self.decoder = decoder
        self.options = options or StreamingOptions()
        self.do_normalize = do_normalize
        self.policy = policy
        config = model.config
        self.stride = int(np.prod(config.conv_stride))
        self.receptive_field = receptive_field(config)
        self.cached = getattr(config, "feat_extract_norm", "layer") == "layer"
        spf = self.stride / SAMPLE_RATE
        o = self.options
        self.chunk_frames = max(1, round(o.chunk_s / spf))
        self.left_frames = round(o.left_s / spf)
        self.lookahead_frames = round(o.lookahead_s / spf)
        self.endpoint_frames = max(1, round(o.endpoint_s / spf))
        self.max_segment_frames = max(self.chunk_frames, round(o.max_segment_s / spf))
        self.seconds_per_frame = spf
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        self.lock = threading.Lock()  # torch modules are not re-entrant across threads
        self._torch = torch

    @classmethod
    def from_runner(cls, runner: Any, options: StreamingOptions | None = None) -> StreamingASR:
        """Share the model an :class:`~voxray.asr.ASRRunner` already loaded (same weights, same decoder)."""
        if not hasattr(runner.model, "wav2vec2"):  # the ONNX backend's graphs are not split per window yet
            from voxray.errors import InputError

            raise InputError("streaming runs on the torch backend: use --backend torch for live transcription")
        return cls(runner.model, runner.decoder, options, do_normalize=runner.do_normalize, policy=runner.policy)

    def session(self, endpointing: bool = True, endpoint_s: float | None = None) -> StreamSession:
        """A new stream. ``endpointing=False``: segments end only at :meth:`StreamSession.close_segment`."""
        return StreamSession(self, endpointing, endpoint_s)

    # ------------------------------------------------------------------ model pieces
    def conv_features(self, samples: np.ndarray) -> np.ndarray:
        """Conv feature encoder over normalised ``samples``: [frames, C] float32."""
        torch = self._torch
        with self.lock, torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32)).to(self.device, self.dtype)
            feats = self.model.wav2vec2.feature_extractor(x[None])  # [1, C, T]
            return feats[0].transpose(0, 1).float().cpu().numpy()

    def forward_windows(self, windows: Sequence[Window]) -> list[np.ndarray]:
        """Logits [frames, vocab] per window from its first kept frame (the kept frames, then the
        lookahead ones); windows of many streams run as one padded batch.

        Layer-norm models batch any lengths with an attention mask (padding-exact, as in the batch
        runner); group-norm models batch only windows of equal length.
        """
        out: list[np.ndarray | None] = [None] * len(windows)
        groups: dict[Any, list[int]] = {}
        for i, w in enumerate(windows):
            key = (w.raw, None if self.policy == "mask" else len(w.features))
            groups.setdefault(key, []).append(i)
        for (raw, _), idx in groups.items():
            logits = self._forward([windows[i] for i in idx], raw)
            for i, lg in zip(idx, logits, strict=True):
                out[i] = lg
        return [o for o in out if o is not None]

    def _forward(self, windows: Sequence[Window], raw: bool) -> list[np.ndarray]:
        torch = self._torch
        w2v = self.model.wav2vec2
        with self.lock, torch.inference_mode():
            if raw:  # group-norm: CNN over each window's samples (equal lengths: see forward_windows)
                x = torch.from_numpy(np.stack([w.features for w in windows]).astype(np.float32))
                feats = w2v.feature_extractor(x.to(self.device, self.dtype)).transpose(1, 2)
                mask = None
            else:
                lengths = [len(w.features) for w in windows]
                longest = max(lengths)
                dim = windows[0].features.shape[1]
                batch = np.zeros((len(windows), longest, dim), dtype=np.float32)
                for i, w in enumerate(windows):
                    batch[i, : len(w.features)] = w.features
                feats = torch.from_numpy(batch).to(self.device, self.dtype)
                mask = None
                if len(set(lengths)) > 1:
                    mask = torch.zeros((len(windows), longest), dtype=torch.bool, device=self.device)
                    for i, n in enumerate(lengths):
                        mask[i, :n] = True
            hidden, _ = w2v.feature_projection(feats)
            hidden = w2v.encoder(hidden, attention_mask=mask).last_hidden_state
            if getattr(w2v, "adapter", None) is not None:
                hidden = w2v.adapter(hidden)
            logits = self.model.lm_head(hidden).float().cpu().numpy()
        # each window's rows from its first kept frame to its own end: the kept frames, then its
        # lookahead frames (a session only peeks at those; they are emitted by a later window)
        ends = [logits.shape[1] if raw else len(w.features) for w in windows]
        return [logits[i, w.keep.start: ends[i]] for i, w in enumerate(windows)]


class StreamSession:
    """The state of one live stream: samples not yet framed, cached features, decoder state.

    ``feed``/``finish`` run the model in-process. A server that batches many sessions uses the
    split form instead: :meth:`push` returns the windows that are ready, the server runs them
    through :meth:`StreamingASR.forward_windows` with other sessions' windows, and hands each
    session its logits back with :meth:`accept`.
    """

    def __init__(self, engine: StreamingASR, endpointing: bool = True, endpoint_s: float | None = None) -> None:
        self.engine = engine
        self.endpointing = endpointing
        spf = engine.seconds_per_frame
        self.endpoint_frames = engine.endpoint_frames if endpoint_s is None else max(1, round(endpoint_s / spf))
        self.received = 0  # samples received (global sample index of the end of the stream)
        self._pending: list[np.ndarray] = []  # raw samples received since the last step
        self._raw = np.zeros(0, dtype=np.float32)  # raw samples from global index self._raw_start
        self._raw_start = 0
        self._feats = np.zeros((0, 0), dtype=np.float32)  # cached conv features from frame self._feat_start
        self._feat_start = 0
        self._frames = 0  # conv frames computed (cached models) or computable (group norm)
        self._emitted = 0  # frames whose logits have been decoded
        self._sum = 0.0
        self._sumsq = 0.0
        self._count = 0
        self._norm_upto = 0  # raw samples normalised so far
        self._norm = np.zeros(0, dtype=np.float32)  # normalised samples from self._raw_start
        self.finished = False
        # decoder state: CTC collapse across steps, committed units, segment bookkeeping
        self._prev_id = -1
        self._ahead: np.ndarray = np.zeros(0, np.int64)  # argmax ids of the last window's lookahead frames
        self._units: list[tuple[str, int, int]] = []  # uncommitted units of the current segment
        self._seg_units: list[tuple[str, int, int]] = []  # committed units of the current segment
        self._seg_text = ""
        self._space_pending = False
        self._segment = 0
        self._seg_start_frame = 0
        self._blank_run = 0
        self._speech = False
        self._speech_start = 0

    # ------------------------------------------------------------------ public API
    def feed(self, pcm: np.ndarray) -> list[StreamEvent]:
        """Take 16 kHz float32 samples (any number); return new deltas and any finals."""
        windows = self.push(pcm)
        return self._run(windows)

    def finish(self) -> list[StreamEvent]:
        """Flush the tail (no lookahead left to wait for) and close the open segment."""
        events = self._run(self.push(np.zeros(0, dtype=np.float32), final=True))
        return events + self.close_segment()

    def close_segment(self) -> list[StreamEvent]:
        """End the open segment now (a commit, or the end of the stream): its last delta and final."""
        return self._close_segment()

    @property
    def speaking(self) -> bool:
        """True while the open segment has speech in it (for VAD events)."""
        return self._speech

    @property
    def speech_start_s(self) -> float | None:
        """Stream time of the open segment's first non-blank frame (None before speech)."""
        return self._speech_start * self.engine.seconds_per_frame if self._speech else None

    def push(self, pcm: np.ndarray, final: bool = False) -> list[Window]:
        """Buffer ``pcm``; return the windows whose chunk (and lookahead) are now complete."""
        if self.finished:
            raise RuntimeError("stream already finished")
        pcm = np.asarray(pcm, dtype=np.float32).reshape(-1)
        if pcm.size:
            self._pending.append(pcm)
            self.received += pcm.size
        if final:
            self.finished = True
        e = self.engine
        total_frames = conv_frames(e.model.config, self.received) if self.received >= e.receptive_field else 0
        windows = []
        while True:
            start = self._emitted
            need = start + e.chunk_frames + e.lookahead_frames
            if need <= total_frames:
                end = start + e.chunk_frames
                ready = need
            elif final and start < total_frames:
                end = ready = total_frames
            else:
                break
            windows.append(self._window(start, end, ready))
            self._emitted = end
        return windows

    def accept(self, window: Window, logits: np.ndarray) -> list[StreamEvent]:
        """Decode one window's logits from :meth:`StreamingASR.forward_windows` (in order): the kept
        frames are decoded, the lookahead frames after them only tell whether a pending Korean
        syllable is complete. Returns deltas and finals."""
        ids = logits.argmax(axis=-1)
        kept = window.keep.stop - window.keep.start
        self._ahead = ids[kept:]
        return self._decode(ids[:kept], window.first_frame)

    # ------------------------------------------------------------------ features
    def _run(self, windows: list[Window]) -> list[StreamEvent]:
        events: list[StreamEvent] = []
        if windows:
            for w, lg in zip(windows, self.engine.forward_windows(windows), strict=True):
                events += self.accept(w, lg)
        return events

    def _absorb(self) -> None:
        if self._pending:
            self._raw = np.concatenate([self._raw, *self._pending])
            self._pending = []

    def _normalise_upto(self, end_sample: int) -> None:
        """Normalise raw samples up to ``end_sample`` with the running stats up to that sample."""
        self._absorb()
        if end_sample <= self._norm_upto:
            return
        new = self._raw[self._norm_upto - self._raw_start: end_sample - self._raw_start].astype(np.float64)
        if self.engine.do_normalize:
            self._sum += float(new.sum())
            self._sumsq += float(np.square(new).sum())
            self._count += new.size
            mean = self._sum / self._count
            var = max(self._sumsq / self._count - mean * mean, 0.0)
            new = (new - mean) / math.sqrt(var + 1e-7)
        self._norm = np.concatenate([self._norm, new.astype(np.float32)])
        self._norm_upto = end_sample

    def _window(self, start: int, end: int, ready: int) -> Window:
        """Window for emitting frames ``[start, end)`` once frames ``< ready`` exist."""
        e = self.engine
        left = max(0, start - e.left_frames)
        last_sample = (ready - 1) * e.stride + e.receptive_field
        self._normalise_upto(last_sample)
        if e.cached:
            if ready > self._frames:  # new frames: CNN over [frames*S, last_sample) of the normalised stream
                lo = self._frames * e.stride - self._raw_start
                fresh = e.conv_features(self._norm[lo: last_sample - self._raw_start])
                self._feats = fresh if self._feats.size == 0 else np.concatenate([self._feats, fresh])
                self._frames = ready
            feats = self._feats[left - self._feat_start: ready - self._feat_start]
            window = Window(feats, slice(start - left, end - left), start)
        else:
            lo = left * e.stride - self._raw_start
            samples = self._norm[lo: last_sample - self._raw_start]
            window = Window(samples, slice(start - left, end - left), start, raw=True)
            self._frames = ready
        self._trim(end)
        return window

    def _trim(self, emitted_end: int) -> None:
        """Drop features and samples no later window can need (left context of the next chunk)."""
        e = self.engine
        keep_from = max(0, emitted_end - e.left_frames)
        if e.cached:
            drop = keep_from - self._feat_start
            if drop > 0:
                self._feats = self._feats[drop:]
                self._feat_start = keep_from
            first_sample = self._frames * e.stride  # the next CNN slice starts here
        else:
            first_sample = keep_from * e.stride
        upto = min(first_sample, self._norm_upto)  # never past what is normalised
        drop = upto - self._raw_start
        if drop > 0:
            self._raw = self._raw[drop:]
            self._norm = self._norm[drop:]
            self._raw_start = upto

    # ------------------------------------------------------------------ decoding
    def _decode(self, ids: np.ndarray, first_frame: int) -> list[StreamEvent]:
        d = self.engine.decoder
        events: list[StreamEvent] = []
        for k, tok in enumerate(ids.tolist()):
            frame = first_frame + k
            if tok == self._prev_id:  # CTC collapse: a repeat extends the unit (if still uncommitted)
                if self._units and self._units[-1][2] == frame:
                    u = self._units[-1]
                    self._units[-1] = (u[0], u[1], frame + 1)
            elif tok != d.blank_id and tok not in d.skip_ids and tok < len(d.vocab):
                self._units.append((d.vocab[tok], frame, frame + 1))
            self._prev_id = tok
            silent = tok == d.blank_id or (tok < len(d.vocab) and d.vocab[tok] == d.word_delimiter)
            self._blank_run = self._blank_run + 1 if silent else 0
            if not silent and not self._speech:
                self._speech, self._speech_start = True, frame
            seg_frames = frame + 1 - self._seg_start_frame
            longest = self.engine.max_segment_frames
            if not self.endpointing:
                continue
            if self._speech and self._blank_run >= self.endpoint_frames:
                events += self._close_segment(end_frame=frame + 1)
            elif seg_frames >= longest and (silent or seg_frames >= longest + longest // 4):
                events += self._close_segment(end_frame=frame + 1)  # at a pause if one comes soon
        delta = self._commit(flush=False)
        if delta is not None:
            events.append(delta)
        return events

    def _stable_count(self) -> int:
        """How many leading uncommitted units can no longer change when more units arrive.

        A Korean syllable spelled in jamo (initial, vowel, optional final) is pending while it
        could still take a final; a lone initial is pending until its vowel comes. The lookahead
        frames already computed settle most of them now instead of a chunk later: an initial
        consonant or a word break next means the syllable is complete, a final means it is not,
        and a lookahead of only blanks (0.64 s by default: a final follows its vowel within a few
        frames) closes it.
        """
        units = self._units
        d = self.engine.decoder
        if not d.compose_jamo or not units:
            return len(units)
        from voxray.text_ko import is_initial, is_vowel

        n = len(units)
        if is_initial(units[-1][0]):
            return n - 1
        if n >= 2 and is_vowel(units[-1][0]) and is_initial(units[-2][0]):
            return n if self._next_is_not_a_final() else n - 2  # initial + vowel: a final may come
        return n

    def _next_is_not_a_final(self) -> bool:
        """The lookahead's first new unit is not a final consonant (or there is none in it)."""
        from voxray.text_ko import is_final

        d = self.engine.decoder
        if not len(self._ahead):
            return False  # no lookahead: nothing is known yet
        prev = self._prev_id
        for tok in self._ahead.tolist():
            if tok == prev or tok == d.blank_id or tok in d.skip_ids or tok >= len(d.vocab):
                prev = tok
                continue
            return not is_final(d.vocab[tok])
        return True  # only blanks (and the vowel's own repeats) ahead

    def _commit(self, flush: bool) -> StreamEvent | None:
        """Move stable units into the segment text; return the delta (None when nothing new)."""
        d = self.engine.decoder
        k = len(self._units) if flush else self._stable_count()
        if k == 0:
            return None
        units, self._units = self._units[:k], self._units[k:]
        composed = compose_units(units) if d.compose_jamo else units
        text = ""
        spans = []
        spf = self.engine.seconds_per_frame
        for tok, s, e in composed:
            if tok == d.word_delimiter:
                if self._seg_text or text:
                    self._space_pending = True
                continue
            if self._space_pending:
                text += " "
                self._space_pending = False
            text += tok
            spans.append({"text": tok, "start": s * spf, "end": e * spf})
        self._seg_units += composed
        if not text:
            return None
        self._seg_text += text
        start = composed[0][1] * spf
        return StreamEvent("delta", self._segment, text, start, composed[-1][2] * spf,
                           spans if self.engine.options.timestamps != "none" else [])

    def _close_segment(self, end_frame: int | None = None) -> list[StreamEvent]:
        events = []
        delta = self._commit(flush=True)
        if delta is not None:
            events.append(delta)
        spf = self.engine.seconds_per_frame
        end = end_frame if end_frame is not None else self._emitted
        if self._seg_text:
            spans = self._final_spans()
            events.append(StreamEvent("final", self._segment, self._seg_text, self._seg_start_frame * spf,
                                      end * spf, spans))
            self._segment += 1
        self._seg_units, self._seg_text, self._space_pending = [], "", False
        self._seg_start_frame = end
        self._blank_run = 0
        self._speech = False
        return events

    def _final_spans(self) -> list[dict[str, Any]]:
        mode = self.engine.options.timestamps
        if mode == "none":
            return []
        d = self.engine.decoder
        spf = self.engine.seconds_per_frame
        words: list[list[tuple[str, int, int]]] = [[]]
        for tok, s, e in self._seg_units:
            if tok == d.word_delimiter:
                if words[-1]:
                    words.append([])
            else:
                words[-1].append((tok, s, e))
        words = [w for w in words if w]
        if mode == "char":
            return [{"text": t, "start": s * spf, "end": e * spf} for w in words for t, s, e in w]
        return [{"text": "".join(t for t, _, _ in w), "start": w[0][1] * spf, "end": w[-1][2] * spf}
                for w in words]
