"""Training-time augmentation: time shift, pitch shift, tempo and background noise on waveforms; vocal-tract-length
perturbation (VTLP) and SpecAugment on log-mels.

Every draw comes from the `torch.Generator` passed in, so a seed in params.yaml fixes the whole sequence. A transform
switched off by its settings (probability 0, or a range that is all 1) returns its input and draws nothing, so
older params reproduce older runs exactly.
"""

from __future__ import annotations

import math

import torch
import torchaudio

from components.config import Augment

# The phase vocoder's frame is about 32 ms (512 samples at 16 kHz), hopped by a quarter of it.
VOCODER_FRAME_S = 0.032
# VTLP's knee, as a share of the mel axis: bins below it scale by alpha, the rest bend so the top bin stays put
# (Jaitly & Hinton 2013 put it at 4.8 of 8 kHz, about 0.8 of a 40-band mel axis up to 7.6 kHz).
VTLP_KNEE = 0.8


def shift_in_time(waves: torch.Tensor, max_shift: int, gen: torch.Generator) -> torch.Tensor:
    """Move each clip by up to ±max_shift samples, filling with silence (no wrap-around of the word)."""
    if max_shift == 0:
        return waves
    samples = waves.shape[-1]
    shifts = torch.randint(-max_shift, max_shift + 1, (len(waves), 1), generator=gen)
    source = torch.arange(samples).unsqueeze(0) - shifts
    inside = (source >= 0) & (source < samples)
    return torch.where(inside, waves.gather(1, source.clamp(0, samples - 1)), 0.0)


def add_background(
    waves: torch.Tensor, noise: torch.Tensor, cfg: Augment, gen: torch.Generator
) -> torch.Tensor:
    """Mix a random stretch of background noise into a random share of clips at an SNR drawn from cfg.snr_db."""
    n, samples = waves.shape
    if cfg.noise_probability == 0 or len(noise) < samples:
        return waves
    starts = torch.randint(0, len(noise) - samples + 1, (n, 1), generator=gen)
    segments = noise[starts + torch.arange(samples)]
    low, high = cfg.snr_db
    snr = low + (high - low) * torch.rand(n, generator=gen)
    # Silent clips or silent noise stretches have no SNR; add_noise would divide by zero, so the clip stays as is.
    audible = (waves.pow(2).mean(dim=1) > 1e-10) & (segments.pow(2).mean(dim=1) > 1e-10)
    mixed = torchaudio.functional.add_noise(waves, segments, snr)
    chosen = (torch.rand(n, generator=gen) < cfg.noise_probability) & audible
    return torch.where(chosen.unsqueeze(1), mixed, waves)


def spec_augment(mels: torch.Tensor, cfg: Augment, gen: torch.Generator) -> torch.Tensor:
    """SpecAugment: `masks` frequency and time bands per clip, each up to freq_mask / time_mask wide."""
    out = mels.clone()
    n, n_mels, frames = mels.shape
    fill = mels.mean(dim=(1, 2), keepdim=True)
    for _ in range(cfg.masks):
        for width_max, size, axis in ((cfg.freq_mask, n_mels, 1), (cfg.time_mask, frames, 2)):
            if width_max == 0:
                continue
            width = torch.randint(0, width_max + 1, (n, 1, 1), generator=gen)
            start = (torch.rand(n, 1, 1, generator=gen) * (size - width + 1)).long()
            pos = torch.arange(size).view(1, -1, 1) if axis == 1 else torch.arange(size).view(1, 1, -1)
            band = (pos >= start) & (pos < start + width)
            out = torch.where(band, fill, out)
    return out


def vocoder_fft(sample_rate: int) -> int:
    """The phase vocoder's FFT size at `sample_rate`: the power of two nearest VOCODER_FRAME_S."""
    return 1 << max(4, round(math.log2(sample_rate * VOCODER_FRAME_S)))


def _draw(n: int, probability: float, low: float, high: float, gen: torch.Generator) -> tuple[torch.Tensor, ...]:
    """Per-clip values uniform in [low, high] and which clips a `probability` share picks: always 2n draws,
    whatever the audio."""
    values = low + (high - low) * torch.rand(n, generator=gen)
    return values, torch.rand(n, generator=gen) < probability


def _resample(waves: torch.Tensor, rate: torch.Tensor, length: int) -> torch.Tensor:
    """Read each clip at `rate` times its speed (pitch and tempo x rate) by linear interpolation, centre on centre,
    into `length` samples; silence where the reading falls outside the clip."""
    samples = waves.shape[-1]
    pos = samples / 2 + (torch.arange(length) - length / 2) * rate.unsqueeze(1)
    base = pos.floor().clamp(0, samples - 2).long()
    frac = (pos - base).clamp(0, 1)
    read = torch.lerp(waves.gather(1, base), waves.gather(1, base + 1), frac)
    return torch.where((pos >= 0) & (pos <= samples - 1), read, 0.0)


def _vocode(waves: torch.Tensor, rate: torch.Tensor, length: int, n_fft: int,
            band: torch.Tensor | None = None) -> torch.Tensor:
    """Phase-vocoder time stretch, one `rate` per clip (>1 is faster), pitch kept, centre on centre, into `length`
    samples; `band` (per clip, share of the spectrum) zeroes the bins above it."""
    hop = n_fft // 4
    window = torch.hann_window(n_fft, dtype=waves.dtype)
    spec = torch.stft(waves, n_fft, hop, window=window, return_complex=True)
    bins, frames = spec.shape[1:]
    # The input frame (fractional) each output frame reads: output and input centres coincide.
    pos = (waves.shape[-1] / 2 + (torch.arange(length // hop + 1) * hop - length / 2) * rate.unsqueeze(1)) / hop
    base = pos.floor().clamp(0, frames - 2).long().unsqueeze(1).expand(-1, bins, -1)
    frac = (pos - pos.floor().clamp(0, frames - 2)).clamp(0, 1).unsqueeze(1)
    mag, angle = spec.abs(), spec.angle()
    level = torch.lerp(mag.gather(2, base), mag.gather(2, base + 1), frac)
    keep = ((pos >= 0) & (pos <= frames - 1)).unsqueeze(1)
    if band is not None:
        keep = keep & (torch.arange(bins).view(1, -1, 1) <= band.view(-1, 1, 1) * (bins - 1))
    # Each output hop advances a bin's phase as the two input frames around its reading position do.
    advance = torch.linspace(0, math.pi * hop, bins, dtype=waves.dtype).view(1, -1, 1)
    step = angle.gather(2, base + 1) - angle.gather(2, base) - advance
    step = step - 2 * math.pi * torch.round(step / (2 * math.pi)) + advance
    phase = torch.cat([angle.gather(2, base[..., :1]), step[..., :-1]], dim=2).cumsum(2)
    return torch.istft(torch.polar(level * keep, phase), n_fft, hop, window=window, length=length)


def stretch_time(waves: torch.Tensor, rate: torch.Tensor, n_fft: int = 512) -> torch.Tensor:
    """Change each clip's tempo by its `rate` (1.1 = 10 % faster, shorter) at the same pitch and length:
    the stretched audio is centred, cropped or padded with silence."""
    return _vocode(waves, rate, waves.shape[-1], n_fft)


def shift_pitch(waves: torch.Tensor, ratio: torch.Tensor, n_fft: int = 512) -> torch.Tensor:
    """Multiply each clip's frequencies by its `ratio` at the same tempo and length: stretch by the ratio (phase
    vocoder, band-limited against aliasing), then read it back at ratio times the speed."""
    samples = waves.shape[-1]
    longer = math.ceil(samples * ratio.max().item()) + 1
    stretched = _vocode(waves, 1 / ratio, longer, n_fft, band=(1 / ratio).clamp(max=1.0))
    return _resample(stretched, ratio, samples)


def pitch_shift(waves: torch.Tensor, cfg: Augment, sample_rate: int, gen: torch.Generator) -> torch.Tensor:
    """Shift a cfg.pitch_probability share of clips by up to ±cfg.pitch_semitones (uniform in semitones)."""
    if cfg.pitch_probability == 0 or cfg.pitch_semitones == 0:
        return waves
    semitones, chosen = _draw(len(waves), cfg.pitch_probability, -cfg.pitch_semitones, cfg.pitch_semitones, gen)
    if not chosen.any():
        return waves
    out = waves.clone()
    out[chosen] = shift_pitch(waves[chosen], 2 ** (semitones[chosen] / 12), vocoder_fft(sample_rate))
    return out


def change_tempo(waves: torch.Tensor, cfg: Augment, sample_rate: int, gen: torch.Generator) -> torch.Tensor:
    """Speed a cfg.tempo_probability share of clips up or down by a factor from cfg.tempo_range, pitch kept."""
    low, high = cfg.tempo_range
    if cfg.tempo_probability == 0 or low == high == 1:
        return waves
    rate, chosen = _draw(len(waves), cfg.tempo_probability, low, high, gen)
    if not chosen.any():
        return waves
    out = waves.clone()
    out[chosen] = stretch_time(waves[chosen], rate[chosen], vocoder_fft(sample_rate))
    return out


def warp_mels(mels: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """VTLP of log-mels (batch, n_mels, frames): bin k takes the energy of bin k/alpha below the knee (alpha > 1
    moves formants up), a straight line above it keeps the top bin; linear interpolation between bins."""
    top = mels.shape[1] - 1
    a = alpha.view(-1, 1)
    k = torch.arange(top + 1, dtype=mels.dtype).view(1, -1)
    knee_out = VTLP_KNEE * top * a.clamp(max=1.0)
    knee_in = knee_out / a
    source = torch.where(k <= knee_out, k / a, top - (top - k) * (top - knee_in) / (top - knee_out))
    base = source.floor().clamp(0, top - 1)
    frac = (source - base).unsqueeze(2)
    index = base.long().unsqueeze(2).expand(-1, -1, mels.shape[2])
    return torch.lerp(mels.gather(1, index), mels.gather(1, index + 1), frac)


def vtlp(mels: torch.Tensor, cfg: Augment, gen: torch.Generator) -> torch.Tensor:
    """Warp the mel axis of a cfg.vtlp_probability share of clips by an alpha drawn from cfg.vtlp_range."""
    low, high = cfg.vtlp_range
    if cfg.vtlp_probability == 0 or low == high == 1:
        return mels
    alpha, chosen = _draw(len(mels), cfg.vtlp_probability, low, high, gen)
    return torch.where(chosen.view(-1, 1, 1), warp_mels(mels, alpha), mels)


def augment_mels(mels: torch.Tensor, cfg: Augment, gen: torch.Generator) -> torch.Tensor:
    """The log-mel part of augmentation for one training batch: VTLP, then SpecAugment."""
    return spec_augment(vtlp(mels, cfg, gen), cfg, gen)


def augment_batch(
    waves: torch.Tensor, noise: torch.Tensor, cfg: Augment, sample_rate: int, gen: torch.Generator
) -> torch.Tensor:
    """The waveform part of augmentation for one training batch: the speaker transforms act on the speech, before
    the background joins it."""
    waves = shift_in_time(waves, round(cfg.time_shift_ms * sample_rate / 1000), gen)
    waves = change_tempo(pitch_shift(waves, cfg, sample_rate, gen), cfg, sample_rate, gen)
    return add_background(waves, noise, cfg, gen)
