"""Procedural acoustics: coloured noise, car rumble, babble, synthetic rooms, reverb, mixing and resampling.

Pure functions on float32 mono numpy arrays; every random one takes a np.random.Generator so corpora are reproducible.
Reverb, mixing, resampling and normalising also take (clips, samples) batches, which is how the corpus is rendered.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import scipy.signal
import torch
import torchaudio

from components.config import NoiseKind

_EPS = 1e-12
# torchaudio's resampler builds a (new/gcd) x (old/gcd) sinc kernel: for the common rates (44.1 kHz to 16 kHz:
# 160 x 441) that is small, for rates sharing no large divisor (44 101 Hz: 16 000 x 44 101) it is gigabytes and
# killed a test worker. Past this size, polyphase filtering, whose memory grows with the larger factor only.
MAX_SINC_KERNEL = 1_000_000
_SPECTRAL_EXPONENT = {"none": 0.0, "white": 0.0, "pink": 1.0, "brown": 2.0}
# Coloured noise is cut below this: inaudible drift would otherwise dominate long brown noise and skew SNRs.
_HIGHPASS_HZ = 20.0


def rms(x: np.ndarray) -> np.ndarray:
    """Root mean square level along the last axis, keeping it (shape (..., 1)) so it divides a batch row-wise."""
    x64 = np.asarray(x, np.float64)
    return np.sqrt(np.einsum("...i,...i->...", x64, x64)[..., None] / max(x.shape[-1], 1))


def _unit_rms(x: np.ndarray) -> np.ndarray:
    return (x / np.maximum(rms(x), _EPS)).astype(np.float32)


def _shaped_noise(
    length: int, sample_rate: int, gain: Callable[[np.ndarray], np.ndarray], rng: np.random.Generator
) -> np.ndarray:
    """Gaussian noise with amplitude spectrum gain(frequency in Hz), high-passed at 20 Hz, unit RMS."""
    spectrum = np.fft.rfft(rng.standard_normal(length))
    freqs = np.fft.rfftfreq(length, 1.0 / sample_rate)
    audible = freqs >= _HIGHPASS_HZ
    spectrum[~audible] = 0.0
    spectrum[audible] *= gain(freqs[audible])
    return _unit_rms(np.fft.irfft(spectrum, n=length))


def colored_noise(length: int, exponent: float, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """Noise with power spectrum ~ 1/f**exponent (0 white, 1 pink, 2 brown) above 20 Hz, unit RMS.

    Shaped in the frequency domain, so the slope is exact at any length.
    """
    return _shaped_noise(length, sample_rate, lambda f: f ** (-exponent / 2), rng)


def car_noise(length: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """Cabin noise: low-passed brown rumble plus an engine tone (30-60 Hz, 3 harmonics) whose speed wobbles.

    The wobble is a slow random sine on the engine frequency, so the tone is not a steady hum a model could notch.
    """
    cutoff = rng.uniform(150.0, 300.0)
    # Brown (1/f amplitude) times a 4th-order Butterworth low-pass magnitude response.
    rumble = _shaped_noise(length, sample_rate, lambda f: 1.0 / (f * np.sqrt(1.0 + (f / cutoff) ** 8)), rng)
    t = np.arange(length) / sample_rate
    wobble = 1.0 + rng.uniform(0.02, 0.08) * np.sin(2 * np.pi * rng.uniform(0.1, 0.5) * t + rng.uniform(0, 2 * np.pi))
    phase = 2 * np.pi * np.cumsum(rng.uniform(30.0, 60.0) * wobble) / sample_rate
    engine = sum(np.sin(k * phase + rng.uniform(0, 2 * np.pi)) / k for k in (1, 2, 3))
    return _unit_rms(rumble + rng.uniform(0.3, 0.8) * _unit_rms(engine))


def babble(
    utterances: Sequence[np.ndarray], length: int, sample_rate: int, rng: np.random.Generator, talkers: int = 6
) -> np.ndarray:
    """Crowd noise: `talkers` streams, each random utterances back to back with short pauses, summed; unit RMS.

    Streams start at random offsets so onsets do not line up; each utterance is levelled first so no single
    voice dominates.
    """
    if not utterances:
        raise ValueError("babble needs at least one utterance")
    # A second of lead-in, cut off at the end, so every stream is already talking when the output starts.
    lead = sample_rate
    out = np.zeros(lead + length, np.float64)
    for _ in range(talkers):
        pos = int(rng.integers(0, lead))
        while pos < out.size:
            word = _unit_rms(utterances[int(rng.integers(len(utterances)))])[: out.size - pos]
            out[pos : pos + word.size] += word
            pos += word.size + int(rng.uniform(0.02, 0.3) * sample_rate)
    return _unit_rms(out[lead:])


def noise(
    kind: NoiseKind,
    length: int,
    sample_rate: int,
    rng: np.random.Generator,
    utterances: Sequence[np.ndarray] = (),
) -> np.ndarray:
    """Unit-RMS noise of one of the config's kinds; "none" gives white noise, used as a faint floor.

    `utterances` feed "babble" and are ignored otherwise.
    """
    if kind == "car":
        return car_noise(length, sample_rate, rng)
    if kind == "babble":
        return babble(utterances, length, sample_rate, rng)
    return colored_noise(length, _SPECTRAL_EXPONENT[kind], sample_rate, rng)


def room_impulse_response(rt60_s: float, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """A synthetic room: direct path, a few early reflections, then a noise tail decaying 60 dB over rt60_s.

    The direct-to-reverberant ratio is drawn from -3..6 dB, i.e. talkers at varied distances from the mic.
    """
    length = max(int(rt60_s * sample_rate), 2)
    t = np.arange(length) / sample_rate
    envelope = 10.0 ** (-3.0 * t / rt60_s)
    tail = rng.standard_normal(length) * envelope
    # The diffuse tail builds up after the first reflections rather than at time zero.
    tail[: int(rng.uniform(0.003, 0.010) * sample_rate)] = 0.0
    direct = np.zeros(length)
    direct[0] = 1.0
    for delay in rng.uniform(0.002, 0.025, size=int(rng.integers(3, 7))):
        k = min(int(delay * sample_rate), length - 1)
        direct[k] += rng.choice([-1.0, 1.0]) * rng.uniform(0.2, 0.6) * envelope[k]
    drr_db = rng.uniform(-3.0, 6.0)
    tail *= np.sqrt(np.sum(direct**2) / max(np.sum(tail**2), _EPS) * 10.0 ** (-drr_db / 10.0))
    return (direct + tail).astype(np.float32)


def reverberate(x: np.ndarray, ir: np.ndarray) -> np.ndarray:
    """Convolve each signal (last axis) with an impulse response, cut to the input length, restore its RMS.

    Keeping length and level makes reverb a pure change of colour and decay, not of timing or loudness.
    """
    wet = scipy.signal.fftconvolve(x, ir.reshape((1,) * (x.ndim - 1) + (-1,)), axes=-1)[..., : x.shape[-1]]
    return (wet * (rms(x) / np.maximum(rms(wet), _EPS))).astype(np.float32)


def mix_at_snr(speech: np.ndarray, noise: np.ndarray, snr_db: float | np.ndarray) -> np.ndarray:
    """speech + noise scaled to `snr_db` (one value per signal of a batch), energy measured over the whole signal.

    Uses torchaudio.functional.add_noise, the same definition the training augmentation mixes with.
    """
    if speech.shape != noise.shape:
        raise ValueError(f"speech has shape {speech.shape} but noise has {noise.shape}")
    snr = np.broadcast_to(np.asarray(snr_db, np.float32), speech.shape[:-1])
    mixed = torchaudio.functional.add_noise(
        torch.from_numpy(np.asarray(speech, np.float32)),
        torch.from_numpy(np.asarray(noise, np.float32)),
        torch.from_numpy(snr.copy()),
    )
    return mixed.numpy()


def resample(x: np.ndarray, orig_rate: int, new_rate: int) -> np.ndarray:
    """Band-limited resampling of one signal or a (batch, samples) array.

    Batching many signals into one call computes the sinc kernel once, which dominates the cost of short clips.
    """
    divisor = math.gcd(orig_rate, new_rate)
    up, down = new_rate // divisor, orig_rate // divisor
    if up * down > MAX_SINC_KERNEL:
        return scipy.signal.resample_poly(np.asarray(x, np.float32), up, down, axis=-1).astype(np.float32)
    return torchaudio.functional.resample(torch.from_numpy(np.asarray(x, np.float32)), orig_rate, new_rate).numpy()


def trim_silence(x: np.ndarray, sample_rate: int, floor_db: float = -40.0, margin_s: float = 0.01) -> np.ndarray:
    """Cut leading and trailing stretches quieter than `floor_db` below the loudest 5 ms frame.

    A small margin is kept so word onsets and releases are not clipped.
    """
    frame = max(int(0.005 * sample_rate), 1)
    frames = x[: x.size - x.size % frame].reshape(-1, frame)
    energy = np.mean(np.square(frames, dtype=np.float64), axis=1)
    loud = np.flatnonzero(energy > energy.max(initial=0.0) * 10.0 ** (floor_db / 10.0))
    if loud.size == 0:
        return x[:0]
    margin = int(margin_s * sample_rate)
    return x[max(loud[0] * frame - margin, 0) : min((loud[-1] + 1) * frame + margin, x.size)]


def peak_normalize(x: np.ndarray, peak: float | np.ndarray) -> np.ndarray:
    """Scale each signal (last axis) so its largest absolute sample equals `peak` (broadcast over a batch)."""
    top = np.max(np.abs(x), axis=-1, keepdims=True, initial=0.0)
    return (x * (np.asarray(peak) / np.maximum(top, _EPS))).astype(np.float32)
