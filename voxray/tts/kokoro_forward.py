"""A masked batched forward pass for Kokoro-82M, over the modules of ``kokoro==0.9.4``'s KModel.

Stock ``KModel.forward_with_tokens`` runs one utterance: with B > 1 it crashes, and even if it
did not, padding would leak into every item (unpacked LSTMs read it backwards, instance norms
average over it, convolutions and upsamplers read across the item's end, the vocoder's reflect
padding and iSTFT envelope see the batch's length). :class:`BatchedKokoro` runs B utterances of
different lengths, voices and speeds in one call and keeps each item's computation equal to its
solo run:

- text: ALBERT with an attention mask; bidirectional LSTMs run the backward direction on each
  item reversed within its own length (a gather, exact, and exportable to ONNX, unlike packing);
- durations per item (``speed`` per item), a dense per-item alignment from cumulative durations;
- frames: every instance norm (AdaIN) takes its statistics over the item's valid frames only, and
  every convolution / transposed convolution sees zeros past the item's end, as the solo run's
  zero padding does; upsampled lengths carry their masks along;
- vocoder: the sine source's phase is held at each item's last frame before the linear upsampler
  (a solo run clamps there), the STFT pads by reflection inside each item, and the inverse STFT
  divides by each item's own window envelope. The iSTFT is written out (irfft basis + overlap-add
  + envelope), so the level is right and the first samples carry no click.

Kokoro's vocoder draws random noise (initial phases and a Gaussian excitation). ``noise_fn``
supplies it per item (fixed seeds make a batched item bit-comparable to its solo render); with
none, it is drawn in-graph (what the ONNX export does).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: Audio samples per duration frame (upsample rates 10 x 6 x iSTFT hop 5 x 2 for the F0 rate).
SAMPLES_PER_FRAME = 600
NoiseFn = Callable[[Tensor, int], tuple[Tensor, Tensor]]


def _split_bilstm(lstm: nn.LSTM) -> tuple[nn.LSTM, nn.LSTM]:
    """Two one-directional LSTMs sharing ``lstm``'s forward and reverse weights."""
    fw = nn.LSTM(lstm.input_size, lstm.hidden_size, 1, batch_first=True)
    bw = nn.LSTM(lstm.input_size, lstm.hidden_size, 1, batch_first=True)
    for name in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"):
        setattr(fw, name, getattr(lstm, name))
        setattr(bw, name, getattr(lstm, name + "_reverse"))
    fw.flatten_parameters()
    bw.flatten_parameters()
    return fw, bw


def _reverse_index(lengths: Tensor, size: Tensor | int) -> Tensor:
    """[B, T] index that reverses each row within its length and leaves the padding in place."""
    t = torch.arange(size, device=lengths.device).unsqueeze(0)
    n = lengths.unsqueeze(1)
    return torch.where(t < n, n - 1 - t, t)


def _gather_time(x: Tensor, index: Tensor) -> Tensor:
    """``x[b, index[b, t], :]`` for x [B, T, C]."""
    return torch.gather(x, 1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def _lengths_mask(lengths: Tensor, size: Tensor | int) -> Tensor:
    """[B, 1, T] float mask, 1 on each item's valid steps."""
    t = torch.arange(size, device=lengths.device).unsqueeze(0)
    return (t < lengths.unsqueeze(1)).unsqueeze(1).to(torch.float32)


def _atan2(y: Tensor, x: Tensor) -> Tensor:
    """``torch.atan2`` from Atan and Where, with torch's ``atan2(+0, x<0) = +pi``.

    The ONNX exporter's own decomposition gives -pi there, which flips the phase of every
    real-valued STFT bin (the DC and Nyquist bins of each frame) with a negative real part.
    """
    safe_x = torch.where(x == 0, torch.ones_like(x), x)
    base = torch.atan(y / safe_x)
    phase = torch.where(x > 0, base, torch.where(y >= 0, base + math.pi, base - math.pi))
    on_axis = torch.where(y > 0, torch.full_like(y, math.pi / 2), torch.where(y < 0, torch.full_like(y, -math.pi / 2),
                                                                                torch.zeros_like(y)))
    return torch.where(x == 0, on_axis, phase)


class BatchedKokoro(nn.Module):
    """Kokoro's inference graph over padded batches; wraps (shares) a loaded KModel's modules."""

    def __init__(self, kmodel: Any) -> None:
        super().__init__()
        self.kmodel = kmodel
        self.lstms = nn.ModuleDict()
        for key, lstm in (
            ("text", kmodel.text_encoder.lstm),
            ("dur", kmodel.predictor.lstm),
            ("shared", kmodel.predictor.shared),
            *((f"enc{i}", blk) for i, blk in enumerate(kmodel.predictor.text_encoder.lstms)
              if isinstance(blk, nn.LSTM)),
        ):
            fw, bw = _split_bilstm(lstm)
            self.lstms[key + "_fw"] = fw
            self.lstms[key + "_bw"] = bw
        gen = kmodel.decoder.generator
        n_fft = gen.post_n_fft
        self.n_fft = n_fft
        self.hop = gen.stft.hop_length
        window = torch.hann_window(n_fft, periodic=True, dtype=torch.float64)
        n = torch.arange(n_fft, dtype=torch.float64)
        k = torch.arange(n_fft // 2 + 1, dtype=torch.float64)
        angle = 2 * math.pi * torch.outer(k, n) / n_fft  # [K, N]
        # forward STFT as a convolution (for the ONNX export): windowed DFT rows; DC and Nyquist
        # have exactly zero imaginary rows, as an FFT of a real signal does
        imag = -torch.sin(angle) * window
        imag[0] = 0
        imag[-1] = 0
        self.register_buffer("stft_real", (torch.cos(angle) * window).unsqueeze(1).float(), persistent=False)
        self.register_buffer("stft_imag", imag.unsqueeze(1).float(), persistent=False)
        # inverse: one-sided irfft basis (interior bins counted twice), then the synthesis window
        weight = torch.full((n_fft // 2 + 1,), 2.0, dtype=torch.float64)
        weight[0] = 1
        weight[-1] = 1
        cos_b = (torch.cos(angle) * weight.unsqueeze(1)).T / n_fft * window.unsqueeze(1)  # [N, K]
        sin_b = (-torch.sin(angle) * weight.unsqueeze(1)).T / n_fft * window.unsqueeze(1)
        self.register_buffer("istft_cos", cos_b.float(), persistent=False)
        self.register_buffer("istft_sin", sin_b.float(), persistent=False)
        self.register_buffer("ola_eye", torch.eye(n_fft).unsqueeze(1), persistent=False)  # [N, 1, N]
        self.register_buffer("window_sq", (window**2).reshape(1, 1, n_fft).float(), persistent=False)
        self.register_buffer("window", window.float(), persistent=False)
        self.stft_mode = "torch"  # "conv" for ONNX export (no complex tensors)

    # ------------------------------------------------------------------ building blocks
    def _bilstm(self, key: str, x: Tensor, lengths: Tensor) -> Tensor:
        """Bidirectional LSTM of x [B, T, C] with per-item lengths; zeros past each end."""
        out_f, _ = self.lstms[key + "_fw"](x)
        index = _reverse_index(lengths, x.shape[1])
        out_b, _ = self.lstms[key + "_bw"](_gather_time(x, index))
        out = torch.cat([out_f, _gather_time(out_b, index)], dim=-1)
        return out * _lengths_mask(lengths, x.shape[1]).transpose(1, 2)

    @staticmethod
    def _adain(norm: Any, x: Tensor, s: Tensor, mask: Tensor) -> Tensor:
        """AdaIN1d with instance statistics over the valid steps of each item."""
        h = norm.fc(s).unsqueeze(-1)
        gamma, beta = torch.chunk(h, chunks=2, dim=1)
        count = mask.sum(-1, keepdim=True).clamp(min=1)
        mean = (x * mask).sum(-1, keepdim=True) / count
        centred = x - mean
        var = ((centred * mask) ** 2).sum(-1, keepdim=True) / count
        inorm = norm.norm
        xn = centred / torch.sqrt(var + inorm.eps)
        if inorm.affine:
            xn = xn * inorm.weight.view(1, -1, 1) + inorm.bias.view(1, -1, 1)
        return (1 + gamma) * xn + beta

    def _adain_resblk(self, block: Any, x: Tensor, s: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """StyleTTS2's AdainResBlk1d, masked; returns the output and its (maybe upsampled) mask."""
        up = block.upsample_type != "none"
        h = block.actv(self._adain(block.norm1, x, s, mask))
        out_mask = mask
        if up:
            h = block.pool(h * mask)
            out_mask = F.interpolate(mask, scale_factor=2.0, mode="nearest")
        h = block.conv1(h * out_mask)
        h = block.actv(self._adain(block.norm2, h, s, out_mask))
        h = block.conv2(h * out_mask)
        sc = F.interpolate(x, scale_factor=2.0, mode="nearest") if up else x
        if block.learned_sc:
            sc = block.conv1x1(sc)
        return (h + sc) * (1.0 / math.sqrt(2.0)), out_mask

    def _resblock1(self, rb: Any, x: Tensor, s: Tensor, mask: Tensor) -> Tensor:
        """The vocoder's AdaINResBlock1 (snake activations), masked."""
        layers = zip(rb.convs1, rb.convs2, rb.adain1, rb.adain2, rb.alpha1, rb.alpha2, strict=True)
        for c1, c2, n1, n2, a1, a2 in layers:
            xt = self._adain(n1, x, s, mask)
            xt = xt + (1 / a1) * (torch.sin(a1 * xt) ** 2)
            xt = c1(xt * mask)
            xt = self._adain(n2, xt, s, mask)
            xt = xt + (1 / a2) * (torch.sin(a2 * xt) ** 2)
            xt = c2(xt * mask)
            x = xt + x
        return x

    # ------------------------------------------------------------------ stages
    def _text_encoder(self, input_ids: Tensor, lengths: Tensor, mask: Tensor) -> Tensor:
        te = self.kmodel.text_encoder
        x = te.embedding(input_ids).transpose(1, 2) * mask
        for block in te.cnn:
            x = block(x) * mask
        x = self._bilstm("text", x.transpose(1, 2), lengths)
        return x.transpose(1, 2)  # [B, C, T]

    def _duration_encoder(self, d_en: Tensor, s: Tensor, lengths: Tensor, mask: Tensor) -> Tensor:
        de = self.kmodel.predictor.text_encoder
        style = s.unsqueeze(-1).expand(-1, -1, d_en.shape[-1])
        x = torch.cat([d_en, style], dim=1) * mask
        lstm_i = 0
        for block in de.lstms:
            if isinstance(block, nn.LSTM):
                x = self._bilstm(f"enc{lstm_i}", x.transpose(1, 2), lengths).transpose(1, 2)
                lstm_i += 2
            else:
                x = block(x.transpose(1, 2), s).transpose(1, 2)
                x = torch.cat([x, style], dim=1) * mask
        return x.transpose(1, 2)  # [B, T, C + style]

    def _source(self, f0: Tensor, frame_lengths: Tensor, noise_fn: NoiseFn | None) -> Tensor:
        """The harmonic-plus-noise source (SineGen + merge), per item; f0 [B, 2F] -> [B, N]."""
        src = self.kmodel.decoder.generator.m_source
        gen = src.l_sin_gen
        scale = int(gen.upsample_scale)
        f0_up = self.kmodel.decoder.generator.f0_upsamp(f0.unsqueeze(1)).transpose(1, 2)  # [B, N, 1]
        harmonics = torch.arange(1, gen.harmonic_num + 2, device=f0.device, dtype=f0.dtype)
        fn = f0_up * harmonics  # [B, N, H]
        if noise_fn is not None:
            rand_ini, noise = noise_fn(frame_lengths * SAMPLES_PER_FRAME, fn.shape[1])
        else:
            rand_ini = torch.rand_like(fn[:, 0, :])
            noise = torch.randn_like(fn)
        rand_ini = torch.cat([torch.zeros_like(rand_ini[:, :1]), rand_ini[:, 1:]], dim=1)
        rad = torch.remainder(fn / gen.sampling_rate, 1.0)
        rad = torch.cat([rad[:, :1, :] + rand_ini.unsqueeze(1), rad[:, 1:, :]], dim=1)
        rad = F.interpolate(rad.transpose(1, 2), scale_factor=1.0 / scale, mode="linear").transpose(1, 2)
        phase = torch.cumsum(rad, dim=1) * (2 * math.pi)  # [B, 2F, H]
        # hold each item's last F0 frame: its solo run's linear upsampler clamps at its own end
        last = (frame_lengths * 2 - 1).clamp(min=0).unsqueeze(1)
        steps = torch.arange(phase.shape[1], device=f0.device).unsqueeze(0)
        phase = _gather_time(phase, torch.minimum(steps, last))
        phase = F.interpolate(phase.transpose(1, 2) * scale, scale_factor=float(scale), mode="linear").transpose(1, 2)
        sines = torch.sin(phase) * gen.sine_amp
        uv = (f0_up > gen.voiced_threshold).to(sines.dtype)
        noise_amp = uv * gen.noise_std + (1 - uv) * gen.sine_amp / 3
        sine_waves = sines * uv + noise_amp * noise
        return src.l_tanh(src.l_linear(sine_waves)).squeeze(-1)  # [B, N]

    def _stft(self, x: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """Magnitude and phase of each item's centred STFT (reflect padding within the item)."""
        pad = self.n_fft // 2
        t = torch.arange(x.shape[1] + 2 * pad, device=x.device).unsqueeze(0) - pad
        n = lengths.unsqueeze(1)
        idx = torch.where(t < 0, -t, t)
        idx = torch.where(idx > n - 1, 2 * (n - 1) - idx, idx)
        idx = torch.minimum(torch.clamp(idx, min=0), (n - 1).clamp(min=0))
        padded = torch.gather(x, 1, idx)
        if self.stft_mode == "torch":
            spec = torch.stft(padded, self.n_fft, self.hop, self.n_fft, window=self.window, center=False,
                              return_complex=True)
            real, imag = spec.real, spec.imag
        else:
            frames = padded.unsqueeze(1)
            real = F.conv1d(frames, self.stft_real, stride=self.hop)
            imag = F.conv1d(frames, self.stft_imag, stride=self.hop)
        magnitude = torch.sqrt(real**2 + imag**2)
        # A real-valued bin (the first frame is symmetric, so all its bins are) has an imaginary
        # part of rounding noise whose sign flips its phase between +pi and -pi, differently in a
        # batch, a solo run or an ONNX graph: snap such parts to +0 (phase 0 or +pi, always).
        imag = torch.where(imag.abs() <= 1e-5 * magnitude, torch.zeros_like(imag), imag)
        return magnitude, torch.atan2(imag, real) if self.stft_mode == "torch" else _atan2(imag, real)

    def _istft(self, magnitude: Tensor, phase: Tensor, frame_mask: Tensor) -> Tensor:
        """Inverse STFT (centred, Hann, normalised by each item's own window envelope)."""
        real = magnitude * torch.cos(phase)
        imag = magnitude * torch.sin(phase)
        frames = torch.matmul(self.istft_cos, real) + torch.matmul(self.istft_sin, imag)  # [B, N_fft, Fr]
        ola = F.conv_transpose1d(frames, self.ola_eye, stride=self.hop)  # [B, 1, L]
        env = F.conv_transpose1d(frame_mask, self.window_sq, stride=self.hop)
        audio = ola / torch.where(env > 1e-11, env, torch.ones_like(env))
        pad = self.n_fft // 2
        n_out = (magnitude.shape[-1] - 1) * self.hop
        return audio[:, 0, pad : pad + n_out]

    def _generator(self, x: Tensor, s: Tensor, f0: Tensor, frame_lengths: Tensor, noise_fn: NoiseFn | None) -> Tensor:
        gen = self.kmodel.decoder.generator
        n_samples = frame_lengths * SAMPLES_PER_FRAME
        har_source = self._source(f0, frame_lengths, noise_fn)
        spec, phase = self._stft(har_source, n_samples)
        har_frames = frame_lengths * (SAMPLES_PER_FRAME // self.hop) + 1
        har_mask = _lengths_mask(har_frames, spec.shape[-1])
        har = torch.cat([spec, phase], dim=1) * har_mask
        mask = _lengths_mask(frame_lengths * 2, x.shape[-1])
        lengths = frame_lengths * 2
        for i in range(gen.num_upsamples):
            x = F.leaky_relu(x, negative_slope=0.1)
            x_source = gen.noise_convs[i](har)
            rate = int(gen.ups[i].stride[0])
            lengths = lengths * rate
            last = i == gen.num_upsamples - 1
            src_mask = har_mask if last else _lengths_mask(lengths, x_source.shape[-1])
            x_source = self._resblock1(gen.noise_res[i], x_source * src_mask, s, src_mask)
            x = gen.ups[i](x * mask)
            if last:
                x = gen.reflection_pad(x)
                lengths = lengths + 1
            mask = _lengths_mask(lengths, x.shape[-1])
            x = (x + x_source) * mask
            xs = self._resblock1(gen.resblocks[i * gen.num_kernels], x, s, mask)
            for j in range(1, gen.num_kernels):
                xs = xs + self._resblock1(gen.resblocks[i * gen.num_kernels + j], x, s, mask)
            x = xs / gen.num_kernels
        x = gen.conv_post(F.leaky_relu(x) * mask)
        bins = gen.post_n_fft // 2 + 1
        valid = mask > 0
        magnitude = torch.where(valid, torch.exp(torch.where(valid, x[:, :bins, :], torch.zeros_like(x[:, :bins, :]))),
                                torch.zeros_like(x[:, :bins, :]))
        return self._istft(magnitude, torch.sin(x[:, bins:, :]), mask)

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        input_ids: Tensor,
        input_lengths: Tensor,
        ref_s: Tensor,
        speed: Tensor,
        noise_fn: NoiseFn | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Synthesise a padded batch.

        ``input_ids`` [B, T] int64 (each row ``[0, *tokens, 0]`` then zeros), ``input_lengths`` [B]
        (tokens + 2), ``ref_s`` [B, 256] style rows, ``speed`` [B] float. Returns
        ``(audio [B, N], audio_lengths [B], durations [B, T])``: item b's audio is
        ``audio[b, :audio_lengths[b]]``, its per-token frame counts ``durations[b, :input_lengths[b]]``
        (one frame is 600 samples, 25 ms at 24 kHz, before nothing else).
        """
        m = self.kmodel
        T = input_ids.shape[1]
        lengths = input_lengths.to(torch.long)
        steps = torch.arange(T, device=input_ids.device).unsqueeze(0)
        valid = steps < lengths.unsqueeze(1)  # [B, T]
        tmask = valid.unsqueeze(1).to(torch.float32)  # [B, 1, T]
        bert = m.bert(input_ids, attention_mask=valid.to(torch.long))
        d_en = m.bert_encoder(bert).transpose(-1, -2) * tmask
        s_pros = ref_s[:, 128:]
        s_dec = ref_s[:, :128]
        d = self._duration_encoder(d_en, s_pros, lengths, tmask)  # [B, T, 640]
        x = self._bilstm("dur", d, lengths)
        duration = torch.sigmoid(m.predictor.duration_proj(x)).sum(dim=-1) / speed.to(x.dtype).unsqueeze(1)
        durations = torch.round(duration).clamp(min=1).to(torch.long) * valid.to(torch.long)  # [B, T]
        frame_lengths = durations.sum(dim=1)  # [B]
        n_frames = frame_lengths.max()
        ends = torch.cumsum(durations, dim=1)
        starts = ends - durations
        frames = torch.arange(n_frames, device=input_ids.device).view(1, 1, -1)
        aln = ((frames >= starts.unsqueeze(-1)) & (frames < ends.unsqueeze(-1))).to(d.dtype)  # [B, T, F]
        en = d.transpose(-1, -2) @ aln  # [B, 640, F]
        fmask = _lengths_mask(frame_lengths, aln.shape[-1])
        # prosody: F0 and energy curves at twice the frame rate
        shared = self._bilstm("shared", en.transpose(-1, -2), frame_lengths).transpose(-1, -2)
        curves = []
        for blocks, proj in ((m.predictor.F0, m.predictor.F0_proj), (m.predictor.N, m.predictor.N_proj)):
            h, hmask = shared, fmask
            for block in blocks:
                h, hmask = self._adain_resblk(block, h, s_pros, hmask)
            curves.append((proj(h) * hmask).squeeze(1))
        f0_curve, n_curve = curves  # [B, 2F]
        t_en = self._text_encoder(input_ids, lengths, tmask)
        asr = t_en @ aln  # [B, 512, F]
        dec = m.decoder
        f0 = dec.F0_conv(f0_curve.unsqueeze(1))
        n = dec.N_conv(n_curve.unsqueeze(1))
        h = torch.cat([asr, f0, n], dim=1)
        h, hmask = self._adain_resblk(dec.encode, h, s_dec, fmask)
        asr_res = dec.asr_res(asr)
        residual = True
        for block in dec.decode:
            if residual:
                h = torch.cat([h * hmask, asr_res, f0, n], dim=1)
            h, hmask = self._adain_resblk(block, h, s_dec, hmask)
            if block.upsample_type != "none":
                residual = False
        audio = self._generator(h * hmask, s_dec, f0_curve, frame_lengths, noise_fn)
        return audio, frame_lengths * SAMPLES_PER_FRAME, durations


def seeded_noise(seeds: list[int], harmonics: int, device: torch.device | str = "cpu") -> NoiseFn:
    """A ``noise_fn`` drawing each item's noise from its own seeded generator.

    Item b draws ``rand(1, H)`` then ``randn(1, N_b, H)`` with the stock SineGen's order and memory
    layout (so a seed gives the stock render's noise too): an item's noise depends on its seed and
    length only, never on its batch.
    """

    def draw(sample_lengths: Tensor, width: int) -> tuple[Tensor, Tensor]:
        inits, noises = [], []
        for seed, n in zip(seeds, sample_lengths.tolist(), strict=True):
            g = torch.Generator(device="cpu").manual_seed(int(seed))
            inits.append(torch.rand(1, harmonics, generator=g))
            # drawn like the stock SineGen's randn_like, whose input is a transposed [1, H, N]
            # view: normal_ on a non-contiguous tensor draws in its own order
            noise = torch.empty(1, harmonics, int(n)).transpose(1, 2).normal_(generator=g)
            noises.append(F.pad(noise, (0, 0, 0, width - int(n))))
        return torch.cat(inits).to(device), torch.cat(noises).to(device)

    return draw
