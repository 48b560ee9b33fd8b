import torch

from components.augment import (
    add_background,
    augment_batch,
    change_tempo,
    pitch_shift,
    shift_in_time,
    shift_pitch,
    spec_augment,
    stretch_time,
    vtlp,
    warp_mels,
)
from components.config import Augment


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_noise_is_mixed_at_an_snr_inside_the_configured_range():
    speech = torch.sin(torch.linspace(0, 2000, 16000)).repeat(64, 1) * 0.3
    noise = torch.randn(16000 * 5, generator=gen(1)) * 0.1
    cfg = Augment(noise_probability=1.0, snr_db=(8.0, 12.0))
    mixed = add_background(speech, noise, cfg, gen())
    added = mixed - speech
    snr = 10 * torch.log10(speech.pow(2).mean(1) / added.pow(2).mean(1))
    assert snr.min() > 7.9 and snr.max() < 12.1
    assert snr.std() > 0.3  # drawn per clip, not one value for the batch


def test_noise_probability_zero_or_silent_clips_leave_audio_untouched():
    noise = torch.randn(32000)
    silent = torch.zeros(4, 16000)
    assert torch.equal(add_background(silent, noise, Augment(noise_probability=1.0), gen()), silent)
    clips = torch.randn(4, 16000)
    assert torch.equal(add_background(clips, noise, Augment(noise_probability=0.0), gen()), clips)


def test_silent_stretches_of_noise_are_never_mixed_in():
    # A domain with no background files once contributed zeros; mixing them "at an SNR" gave NaN training loss.
    clips = torch.randn(64, 16000)
    mixed = add_background(clips, torch.zeros(48000), Augment(noise_probability=1.0), gen())
    assert torch.isfinite(mixed).all() and torch.equal(mixed, clips)


def test_time_shift_moves_content_and_fills_with_silence():
    clips = torch.zeros(16, 1000)
    clips[:, 500] = 1.0
    shifted = shift_in_time(clips, 100, gen())
    positions = shifted.argmax(1)
    assert torch.all((positions - 500).abs() <= 100) and positions.unique().numel() > 1
    assert torch.all(shifted.sum(1) == 1.0)  # moved, not duplicated or wrapped


def test_spec_augment_masks_bands_within_limits():
    mels = torch.randn(8, 40, 49)
    cfg = Augment(freq_mask=6, time_mask=8, masks=1)
    out = spec_augment(mels, cfg, gen())
    changed = out != mels
    freq_rows = changed.all(dim=2).sum(1)
    assert torch.all(freq_rows <= 6) and freq_rows.sum() > 0
    assert torch.equal(spec_augment(mels, Augment(masks=0), gen()), mels)


def test_augmentation_is_a_function_of_the_seed():
    clips, noise = torch.randn(8, 16000), torch.randn(48000)
    cfg = Augment()
    a = augment_batch(clips, noise, cfg, 16000, gen(5))
    b = augment_batch(clips, noise, cfg, 16000, gen(5))
    c = augment_batch(clips, noise, cfg, 16000, gen(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


def dominant_hz(waves: torch.Tensor, sample_rate: int = 16000) -> torch.Tensor:
    spectrum = torch.fft.rfft(waves * torch.hann_window(waves.shape[-1])).abs()
    return spectrum.argmax(-1).float() * sample_rate / waves.shape[-1]


def test_pitch_shift_moves_a_tone_by_the_ratio_at_the_same_length():
    t = torch.arange(16000) / 16000
    tone = torch.sin(2 * torch.pi * 440 * t).repeat(3, 1) * 0.5
    ratio = torch.tensor([2 ** (2 / 12), 2 ** (-2 / 12), 1.0])
    shifted = shift_pitch(tone, ratio)
    assert shifted.shape == tone.shape
    # FFT bins are 1 Hz apart: the dominant tone lands within 2 % of 440 Hz x ratio.
    assert torch.allclose(dominant_hz(shifted), 440 * ratio, rtol=0.02)


def test_tempo_changes_the_duration_of_a_burst_not_its_pitch():
    t = torch.arange(16000) / 16000
    burst = torch.sin(2 * torch.pi * 500 * t) * ((t > 0.3) & (t < 0.7))
    rate = torch.tensor([1.25, 0.8])
    stretched = stretch_time(burst.repeat(2, 1), rate)
    loud = (stretched.abs() > 0.25).float()
    span = [(row.nonzero().max() - row.nonzero().min()).item() / 16000 for row in loud]
    # A 0.4 s burst lasts 0.4 / rate (± one 8 ms hop per side), and still peaks at 500 Hz.
    assert abs(span[0] - 0.4 / 1.25) < 0.02 and abs(span[1] - 0.4 / 0.8) < 0.02
    assert torch.allclose(dominant_hz(stretched), torch.tensor([500.0, 500.0]), rtol=0.02)


def test_vtlp_moves_a_formant_up_the_mel_axis_by_alpha_and_keeps_the_top_bin():
    mels = torch.zeros(2, 40, 10)
    mels[:, 10] = 1.0
    warped = warp_mels(mels, torch.tensor([1.1, 0.9]))
    peaks = warped[:, :, 0].argmax(1)
    assert peaks.tolist() == [11, 9]
    top = torch.randn(2, 40, 10)
    assert torch.allclose(warp_mels(top, torch.tensor([1.1, 0.9]))[:, -1], top[:, -1])


def test_each_speaker_transform_changes_what_it_is_given_only_when_switched_on():
    clips, mels = torch.randn(16, 16000) * 0.1, torch.randn(16, 40, 49)
    off = Augment(pitch_probability=0, tempo_probability=0, vtlp_probability=0)
    assert torch.equal(pitch_shift(clips, off, 16000, gen()), clips)
    assert torch.equal(change_tempo(clips, off, 16000, gen()), clips)
    assert torch.equal(vtlp(mels, off, gen()), mels)
    on = Augment(pitch_probability=0.5, tempo_probability=0.5, vtlp_probability=0.5)
    for changed in (pitch_shift(clips, on, 16000, gen()), change_tempo(clips, on, 16000, gen())):
        touched = (changed != clips).any(1).sum().item()
        assert 3 <= touched <= 13  # about half of 16 clips, drawn per clip
    touched = (vtlp(mels, on, gen()) != mels).any(2).any(1).sum().item()
    assert 3 <= touched <= 13
