"""Procedural acoustics: SNRs that hold, spectra with the right shape, rooms whose tails grow with rt60."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.signal

from components.acoustics import (
    babble,
    car_noise,
    colored_noise,
    mix_at_snr,
    noise,
    peak_normalize,
    resample,
    reverberate,
    rms,
    room_impulse_response,
    trim_silence,
)

SR = 16000


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _tone(freq: float, seconds: float, sample_rate: int = SR) -> np.ndarray:
    return np.sin(2 * np.pi * freq * np.arange(int(seconds * sample_rate)) / sample_rate).astype(np.float32)


def _energy_db(x: np.ndarray) -> float:
    return float(10 * np.log10(np.sum(np.square(x, dtype=np.float64))))


@pytest.mark.parametrize("snr_db", [-5.0, 0.0, 12.5, 40.0])
def test_mix_at_snr_hits_the_requested_snr(snr_db: float) -> None:
    speech = _tone(440, 1.0) * 0.3
    hiss = colored_noise(SR, 1.0, SR, _rng())
    mixed = mix_at_snr(speech, hiss, snr_db)
    measured = _energy_db(speech) - _energy_db(mixed - speech)
    assert mixed.dtype == np.float32 and mixed.shape == speech.shape
    assert abs(measured - snr_db) < 0.5


def test_mix_at_snr_takes_one_snr_per_row_of_a_batch() -> None:
    speech = np.stack([_tone(300, 1.0), _tone(900, 1.0) * 0.1])
    hiss = np.stack([noise("white", SR, SR, _rng(i)) for i in range(2)])
    mixed = mix_at_snr(speech, hiss, np.array([3.0, 30.0]))
    for row, snr in zip(range(2), [3.0, 30.0], strict=True):
        assert abs(_energy_db(speech[row]) - _energy_db(mixed[row] - speech[row]) - snr) < 0.5
    with pytest.raises(ValueError, match="shape"):
        mix_at_snr(speech[0], hiss[0, :100], 10.0)


def _spectral_slope(x: np.ndarray) -> float:
    freqs, psd = scipy.signal.welch(x, SR, nperseg=4096)
    band = (freqs > 100) & (freqs < 4000)
    return float(np.polyfit(np.log(freqs[band]), np.log(psd[band]), 1)[0])


@pytest.mark.parametrize(("kind", "slope"), [("white", 0.0), ("pink", -1.0), ("brown", -2.0)])
def test_colored_noise_has_the_named_spectral_slope(kind: str, slope: float) -> None:
    x = noise(kind, 10 * SR, SR, _rng())
    assert abs(float(rms(x)[0]) - 1.0) < 1e-3
    assert abs(_spectral_slope(x) - slope) < 0.15


def test_car_noise_is_low_rumble_with_an_engine_tone() -> None:
    x = car_noise(4 * SR, SR, _rng(3))
    freqs, psd = scipy.signal.welch(x, SR, nperseg=8192)
    assert psd[freqs < 400].sum() > 0.95 * psd.sum()
    engine_band = (freqs >= 25) & (freqs <= 70)
    # A tone stands out of the rumble: its band peaks far above the band's median.
    assert psd[engine_band].max() > 5 * np.median(psd[engine_band])


def test_babble_is_a_level_mix_of_the_utterances_and_needs_some() -> None:
    words = [_tone(f, 0.3) * np.hanning(int(0.3 * SR)).astype(np.float32) for f in (200, 350, 500)]
    x = babble(words, 2 * SR, SR, _rng(), talkers=5)
    assert x.shape == (2 * SR,) and abs(float(rms(x)[0]) - 1.0) < 1e-3
    # Many overlapping talkers: no quarter second is silent.
    assert min(float(rms(chunk)[0]) for chunk in x.reshape(8, -1)) > 0.1
    with pytest.raises(ValueError, match="utterance"):
        babble([], SR, SR, _rng())


def test_noise_is_reproducible_from_the_generator() -> None:
    for kind in ["none", "pink", "car"]:
        assert np.array_equal(noise(kind, SR, SR, _rng(5)), noise(kind, SR, SR, _rng(5)))
        assert not np.array_equal(noise(kind, SR, SR, _rng(5)), noise(kind, SR, SR, _rng(6)))


def _decay_time(x: np.ndarray, start: int, drop_db: float = 30.0) -> float:
    """Seconds after `start` until the remaining (Schroeder-integrated) energy is `drop_db` below its start."""
    remaining = np.cumsum(np.square(x[start:], dtype=np.float64)[::-1])[::-1]
    below = np.flatnonzero(10 * np.log10(remaining / remaining[0] + 1e-30) < -drop_db)
    return below[0] / SR


@pytest.mark.parametrize("rt60", [0.1, 0.4, 0.8])
def test_room_impulse_response_starts_with_the_direct_path_and_decays_at_rt60(rt60: float) -> None:
    ir = room_impulse_response(rt60, SR, _rng())
    assert ir.dtype == np.float32 and ir[0] == np.abs(ir).max()
    # RT60 estimated ISO 3382 style: twice the time the integrated energy takes to fall 30 dB.
    assert 0.7 < 2 * _decay_time(ir, 0, 30.0) / rt60 < 1.3


def test_reverb_keeps_length_and_level_and_tails_grow_with_rt60() -> None:
    burst = np.zeros(SR, np.float32)
    burst[1000:1800] = colored_noise(800, 0.0, SR, _rng(1))
    decays = []
    for rt60 in [0.1, 0.3, 0.8]:
        wet = reverberate(burst, room_impulse_response(rt60, SR, _rng(2)))
        assert wet.shape == burst.shape and abs(float(rms(wet)[0] / rms(burst)[0]) - 1.0) < 1e-4
        decays.append(_decay_time(wet, 1800, 20.0))
    assert decays[0] < decays[1] < decays[2]


def test_reverb_treats_each_row_of_a_batch_alone() -> None:
    ir = room_impulse_response(0.2, SR, _rng())
    rows = np.stack([_tone(300, 1.0), 0.01 * _tone(800, 1.0)])
    batch = reverberate(rows, ir)
    for row in range(2):
        np.testing.assert_allclose(batch[row], reverberate(rows[row], ir), rtol=1e-4, atol=1e-6)


def test_resample_keeps_duration_and_frequency() -> None:
    x = resample(_tone(1000, 1.0, 22050), 22050, SR)
    assert x.shape == (SR,)
    freqs, psd = scipy.signal.welch(x, SR, nperseg=4096)
    assert abs(freqs[np.argmax(psd)] - 1000) < 5


def test_trim_silence_keeps_the_sound_with_a_small_margin() -> None:
    x = np.concatenate([np.zeros(8000), _tone(500, 0.25), np.zeros(8000)]).astype(np.float32)
    x[:8000] += 1e-4  # a floor far below -40 dB is still silence
    trimmed = trim_silence(x, SR)
    assert 4000 <= trimmed.size <= 4000 + 2 * 0.01 * SR + 160
    assert trim_silence(np.zeros(SR, np.float32), SR).size == 0


def test_peak_normalize_sets_each_rows_peak() -> None:
    rows = np.stack([_tone(300, 0.5) * 0.01, _tone(300, 0.5) * 3.0])
    out = peak_normalize(rows, np.array([[0.5], [0.25]]))
    np.testing.assert_allclose(np.abs(out).max(axis=1), [0.5, 0.25], rtol=1e-6)
