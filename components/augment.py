"""Training-time augmentation: time shift and background noise on waveforms, SpecAugment on log-mels.

Every draw comes from the `torch.Generator` passed in, so a seed in params.yaml fixes the whole sequence.
"""

from __future__ import annotations

import torch
import torchaudio

from components.config import Augment


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


def augment_batch(
    waves: torch.Tensor, noise: torch.Tensor, cfg: Augment, sample_rate: int, gen: torch.Generator
) -> torch.Tensor:
    """The waveform part of augmentation for one training batch."""
    waves = shift_in_time(waves, round(cfg.time_shift_ms * sample_rate / 1000), gen)
    return add_background(waves, noise, cfg, gen)
