"""The synthesized sound-event corpus: the ten UrbanSound8K classes from procedural sound models, in its layout.

Each source recording (fsID) is one class heard in one acoustic domain (room, background noise, microphone band) and
cut into 1..n slices of up to 4 s that all land in one fold, so fold cross-validation means what it does on real data.
"""

from __future__ import annotations

import csv
import io
import shutil
from collections import Counter, defaultdict
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.fft
import scipy.signal
import soundfile as sf
import torch

from components.acoustics import mix_at_snr, noise, peak_normalize, reverberate, room_impulse_response
from components.config import SoundDomain
from components.files import atomic_path
from components.tracks.esc.events import (
    URBANSOUND8K_COLUMNS,
    URBANSOUND8K_CSV,
    URBANSOUND8K_FOLDS,
    SoundClip,
    SoundDatasetError,
    load_urbansound8k,
)

Range = tuple[float, float]
SoundModel = Callable[[int, int, np.random.Generator], np.ndarray]

DOMAINS_CSV = Path("metadata/domains.csv")
SLICE_SECONDS = 4.0
# The last slice of an occurrence is at least this long, so every clip holds enough of its sound to be heard.
MIN_SLICE_SECONDS = 0.5
MAX_SLICES_PER_OCCURRENCE = 3
# About the share of foreground (salience 1) slices in UrbanSound8K.
FOREGROUND_SHARE = 0.65
# A background event sits this much further below the noise bed than the domain's foreground SNR.
BACKGROUND_DROP_DB = 8.0
PEAK_DBFS = (-20.0, -1.0)
# Partials above this share of the sample rate are left out rather than folded back as aliases.
_NYQUIST_SHARE = 0.45
_BABBLE_TALKERS = 8
# Independent random streams: the plan (folds, domains, fsIDs), the crowd for babble, and one per source.
_PLAN, _CROWD, _SOURCE = range(3)


@dataclass(frozen=True)
class SourcePlan:
    """One source recording: its fsID, class, fold, domain, how many slices it yields and its random stream."""

    fs_id: int
    class_id: int
    fold: int
    domain: str
    slices: int
    stream: int



def _unit(x: np.ndarray) -> np.ndarray:
    return x / max(float(np.sqrt(np.mean(np.square(x)))), 1e-12)


def _band_noise(n: int, sample_rate: int, low_hz: float, high_hz: float, slope: float, rng: np.random.Generator
                ) -> np.ndarray:
    """Gaussian noise with power ~ 1/f**slope between low_hz and high_hz and nothing outside, unit RMS.

    Made at the next FFT-friendly length and cut: a length with a large prime factor makes the FFT many times slower.
    """
    fast = scipy.fft.next_fast_len(n, real=True)
    spectrum = np.fft.rfft(rng.standard_normal(fast))
    freqs = np.fft.rfftfreq(fast, 1.0 / sample_rate)
    inside = (freqs >= low_hz) & (freqs <= high_hz)
    spectrum[~inside] = 0.0
    spectrum[inside] *= freqs[inside] ** (-slope / 2)
    return _unit(np.fft.irfft(spectrum, n=fast)[:n])


def _active_rms(x: np.ndarray, sample_rate: int) -> float:
    """RMS over the 20 ms frames within 20 dB of the loudest: the level of a sound while it sounds.

    Sparse events (shots, barks) are set against the noise at this level, not at one diluted by their gaps.
    """
    frame = int(0.02 * sample_rate)
    if x.size < frame:
        return float(np.sqrt(np.mean(np.square(x))))
    energy = np.mean(np.square(x[: x.size - x.size % frame].reshape(-1, frame)), axis=1)
    return float(np.sqrt(np.mean(energy[energy >= energy.max() * 0.01])))


def _wander(n: int, sample_rate: int, knots_per_s: float, rng: np.random.Generator) -> np.ndarray:
    """A slow random contour, standard normal values at `knots_per_s` joined linearly: pitch drift, load changes."""
    knots = rng.standard_normal(int(n / sample_rate * knots_per_s) + 2)
    return np.interp(np.linspace(0.0, knots.size - 1, n), np.arange(knots.size), knots)


def _partials(freq: np.ndarray, gains: np.ndarray, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """Sum of harmonics k*freq(t), k = 1..len(gains), gains of shape (k,) or (k, samples); random start phases.

    Following the instantaneous frequency keeps sweeps and vibrato click-free; partials above Nyquist are muted.
    Harmonic k is the k-th power of exp(i phase), a complex product per partial: three times faster than a sine.
    """
    # Single precision halves the memory traffic; 15 products lose nothing audible in 16-bit output.
    fundamental = np.exp(2j * np.pi * np.cumsum(freq) / sample_rate).astype(np.complex64)
    harmonic = np.ones(freq.size, np.complex64)
    gains = np.asarray(gains, np.float32)
    out = np.zeros(freq.size, np.float32)
    limit, lowest, highest = _NYQUIST_SHARE * sample_rate, freq.min(), freq.max()
    for k, gain in enumerate(gains, 1):
        harmonic *= fundamental
        start = rng.uniform(0, 2 * np.pi)
        # sin(k phase + start), expanded.
        wave = harmonic.imag * float(np.cos(start)) + harmonic.real * float(np.sin(start))
        if k * highest >= limit:
            wave *= k * freq < limit
        out += gain * wave
        if k * lowest >= limit:
            break
    return out


def _place(n: int, onsets: np.ndarray, gains: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """`kernel` started at each onset sample with its gain, summed: a train of identical impacts."""
    train = np.zeros(n)
    np.add.at(train, onsets[onsets < n], gains[onsets < n])
    return scipy.signal.fftconvolve(train, kernel)[:n]


def _bursts(n: int, sample_rate: int, on_s: Range, off_s: Range, rng: np.random.Generator, ramp_s: float = 0.01
            ) -> np.ndarray:
    """An on/off envelope starting on: bursts of on_s seconds between gaps of off_s, edges ramped over ramp_s."""
    gate = np.zeros(n)
    pos = int(rng.uniform(0.0, 0.05) * sample_rate)
    while pos < n:
        length = int(rng.uniform(*on_s) * sample_rate)
        gate[pos : pos + length] = 1.0
        pos += length + int(rng.uniform(*off_s) * sample_rate)
    ramp = np.hanning(max(int(ramp_s * sample_rate), 1) * 2 + 1)
    return scipy.signal.fftconvolve(gate, ramp / ramp.sum(), mode="same")


def _formant_gains(harmonic_hz: np.ndarray, formants_hz: Sequence[np.ndarray], bandwidth: float) -> np.ndarray:
    """Gain of a partial at harmonic_hz through resonances at formants_hz (Lorentzian bumps of relative width)."""
    return sum(1.0 / (1.0 + ((harmonic_hz - f) / (bandwidth * f)) ** 2) for f in formants_hz)


def _talker(n: int, sample_rate: int, pitch_hz: Range, formant_scale: float, rng: np.random.Generator
            ) -> np.ndarray:
    """One babbling voice: syllables with their own vowel (two formants) over a drifting pitch, with pauses."""
    syllables = int(n / sample_rate / 0.12) + 1
    edges = np.cumsum(rng.uniform(0.08, 0.3, syllables) * sample_rate).astype(int)
    which = np.minimum(np.searchsorted(edges, np.arange(n), side="right"), syllables - 1)
    f1 = (rng.uniform(300, 900, syllables) * formant_scale)[which]
    f2 = (rng.uniform(900, 2600, syllables) * formant_scale)[which]
    f0 = rng.uniform(*pitch_hz) * 2.0 ** (_wander(n, sample_rate, 4.0, rng) * rng.uniform(0.1, 0.3))
    voiced = rng.random(syllables) < 0.8
    starts = np.concatenate([[0], edges[:-1]])[which]
    within = (np.arange(n) - starts) / np.maximum(edges[which] - starts, 1)
    envelope = voiced[which] * np.sin(np.pi * np.clip(within, 0.0, 1.0)) ** 0.5
    # Vowel gains change at syllable pace, so they are worked out every 2 ms and held: a fifth of the cost.
    hop = sample_rate // 500
    gains = np.array([_formant_gains(k * f0[::hop], (f1[::hop], f2[::hop]), 0.25) / k**0.5 for k in range(1, 11)])
    return envelope * _partials(f0, np.repeat(gains, hop, axis=1)[:, :n], sample_rate, rng)



def air_conditioner(n: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """Steady hum: pinkish air noise with a whoosh band, the fan's blade-pass harmonics and the compressor's mains hum.

    The tonal parts are what set it apart from the broadband noise every domain lays under its sources.
    """
    air = _band_noise(n, sample_rate, 40.0, rng.uniform(1500, 4500), rng.uniform(0.5, 1.5), rng)
    centre = rng.uniform(250, 1200)
    whoosh = _band_noise(n, sample_rate, centre / 1.5, centre * 1.5, 0.0, rng)
    blade = rng.uniform(40, 130) * (1 + 0.005 * _wander(n, sample_rate, 1.0, rng))
    fan = _unit(_partials(blade, rng.uniform(0.3, 1.0, 6) * 0.7 ** np.arange(6), sample_rate, rng))
    mains = np.full(n, 2 * rng.choice([50.0, 60.0]))
    compressor = _unit(_partials(mains, rng.uniform(0.2, 1.0, 4), sample_rate, rng))
    wobble = 1 + 0.05 * np.sin(2 * np.pi * rng.uniform(0.1, 0.5) * np.arange(n) / sample_rate)
    tones = rng.uniform(0.5, 1.0) * fan + rng.uniform(0.2, 0.6) * compressor
    return wobble * (air + rng.uniform(0.5, 1.0) * whoosh + tones)


def car_horn(n: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """Honks: a bright harmonic stack (one or two tones) switched on with a sharp onset, short or long blasts."""
    f0 = np.full(n, rng.uniform(300, 520))
    brightness = rng.uniform(0.4, 1.0)
    gains = np.arange(1, 15) ** -brightness
    tones = _partials(f0, gains, sample_rate, rng)
    if rng.random() < 0.5:
        tones += _partials(f0 * rng.uniform(1.18, 1.3), gains, sample_rate, rng)
    long_blast = rng.random() < 0.3
    on = (1.0, 4.0) if long_blast else (0.15, 0.9)
    return _bursts(n, sample_rate, on, (0.05, 0.4), rng, ramp_s=0.004) * tones


def children_playing(n: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """Several high-pitched babbling voices at different distances, overlapping."""
    voices = [_unit(_talker(n, sample_rate, (230, 450), 1.25, rng)) for _ in range(int(rng.integers(3, 6)))]
    return sum(rng.uniform(0.3, 1.0) * voice for voice in voices)


def dog_bark(n: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """Barks: short, rough formant bursts whose pitch rises and falls, alone or in quick runs."""
    out = np.zeros(n)
    pitch, formant = rng.uniform(250, 700), rng.uniform(700, 1800)
    pos = int(rng.uniform(0.0, 0.1) * sample_rate)
    while pos < n:
        length = min(int(rng.uniform(0.08, 0.25) * sample_rate), n - pos)
        progress = np.arange(length) / length
        f0 = pitch * rng.uniform(0.9, 1.1) * (0.8 + 0.4 * np.sin(np.pi * progress**0.7))
        gains = np.array([_formant_gains(k * f0, (formant, 2.2 * formant), 0.3) for k in range(1, 16)])
        voiced = _unit(_partials(f0, gains, sample_rate, rng))
        rough = _band_noise(length, sample_rate, 400, 4000, 0.0, rng)
        envelope = np.minimum(progress / 0.05, 1.0) * np.exp(-progress * rng.uniform(2, 5))
        out[pos : pos + length] = envelope * (voiced + rng.uniform(0.2, 0.6) * rough) * rng.uniform(0.6, 1.0)
        pos += length + int(rng.uniform(0.1, 0.7) * sample_rate)
    return out


def drilling(n: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """A high motor whine with a few harmonics, pitch following the load, chopped at the rotation rate, plus hiss."""
    f0 = rng.uniform(600, 2000) * (1 + rng.uniform(0.01, 0.05) * _wander(n, sample_rate, 2.0, rng))
    whine = _unit(_partials(f0, 0.6 ** np.arange(4), sample_rate, rng))
    spin = np.sin(2 * np.pi * rng.uniform(15, 60) * np.arange(n) / sample_rate)
    rotation = 1 - rng.uniform(0.2, 0.6) * (0.5 + 0.5 * spin)
    hiss = _band_noise(n, sample_rate, rng.uniform(2000, 3500), sample_rate / 2, 0.0, rng)
    trigger = _bursts(n, sample_rate, (0.8, 4.0), (0.05, 0.3), rng, ramp_s=0.05)
    return trigger * (rotation * whine + rng.uniform(0.2, 0.5) * hiss)


def engine_idling(n: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """An idling engine: a low firing frequency with many harmonics, a low rumble and a faint valve clatter."""
    firing = rng.uniform(20, 45) * (1 + 0.02 * _wander(n, sample_rate, 2.0, rng))
    harmonics = _unit(_partials(firing, rng.uniform(0.5, 1.0, 10) / np.arange(1, 11), sample_rate, rng))
    rumble = _band_noise(n, sample_rate, 20.0, rng.uniform(200, 500), 2.0, rng)
    clatter_gate = 0.5 + 0.5 * np.sin(2 * np.pi * np.cumsum(firing) / sample_rate) ** 8
    clatter = clatter_gate * _band_noise(n, sample_rate, 1000, 3000, 0.0, rng)
    return harmonics + rng.uniform(0.3, 0.8) * rumble + rng.uniform(0.05, 0.2) * clatter


def gun_shot(n: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """Shots: a broadband crack, a low boom and a long decaying echo, single shots or automatic bursts."""
    length = int(rng.uniform(0.3, 0.8) * sample_rate)
    t = np.arange(length) / sample_rate
    crack = rng.standard_normal(length) * np.exp(-t / rng.uniform(0.004, 0.02))
    boom = _band_noise(length, sample_rate, 40, 300, 0.0, rng) * np.exp(-t / rng.uniform(0.04, 0.15))
    echo = _band_noise(length, sample_rate, 100, 3000, 1.0, rng) * np.exp(-t / rng.uniform(0.1, 0.3))
    kernel = crack + rng.uniform(0.3, 1.0) * boom + rng.uniform(0.05, 0.2) * echo
    shots = int(n / (0.06 * sample_rate)) + 2
    automatic = rng.random() < 0.3
    gaps = rng.uniform(0.06, 0.12, shots) if automatic else rng.uniform(0.3, 1.2, shots)
    onsets = (np.cumsum(gaps * sample_rate) - gaps[0] * sample_rate + rng.uniform(0.0, 0.05) * sample_rate)
    return _place(n, onsets.astype(int), rng.uniform(0.6, 1.0, shots), kernel)


def jackhammer(n: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """Runs of periodic impacts (10-25 a second), each a short noise crack and a metallic ring, over air hiss."""
    length = int(0.04 * sample_rate)
    t = np.arange(length) / sample_rate
    crack = _band_noise(length, sample_rate, 300, 5000, 0.0, rng) * np.exp(-t / rng.uniform(0.002, 0.008))
    ring = sum(np.sin(2 * np.pi * f * t) for f in rng.uniform(800, 3000, 3)) * np.exp(-t / rng.uniform(0.01, 0.03))
    period = sample_rate / rng.uniform(10, 25)
    onsets = np.cumsum(period * rng.uniform(0.97, 1.03, int(n / period) + 1)).astype(int)
    runs = _bursts(n, sample_rate, (0.8, 3.0), (0.1, 0.5), rng)
    impacts = _place(n, onsets, runs[np.minimum(onsets, n - 1)], crack + rng.uniform(0.2, 0.6) * ring)
    return _unit(impacts) + rng.uniform(0.05, 0.2) * runs * _band_noise(n, sample_rate, 1000, 6000, 0.0, rng)


def siren(n: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """A swept tone with vibrato: a slow wail, a fast yelp or a two-tone hi-lo, a few harmonics on top."""
    t = np.arange(n) / sample_rate
    low = rng.uniform(500, 850)
    kind = rng.integers(3)
    if kind == 0:
        sweep = 0.5 - 0.5 * np.cos(2 * np.pi * rng.uniform(0.1, 0.4) * t)
        f0 = low * rng.uniform(1.5, 2.2) ** sweep
    elif kind == 1:
        f0 = low * rng.uniform(1.5, 2.0) ** ((rng.uniform(2, 5) * t + rng.random()) % 1.0)
    else:
        f0 = low * np.where((rng.uniform(0.6, 1.4) * t + rng.random()) % 1.0 < 0.5, 1.0, rng.uniform(1.2, 1.4))
    f0 = f0 * (1 + rng.uniform(0.005, 0.015) * np.sin(2 * np.pi * rng.uniform(5, 8) * t))
    return _partials(f0, rng.uniform(0.4, 0.7) ** np.arange(5), sample_rate, rng)


def street_music(n: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """A tune: notes of a pentatonic scale on a beat grid, played by a few-harmonic instrument, with bass and kick."""
    scale = np.array([1.0, 9 / 8, 5 / 4, 3 / 2, 5 / 3, 2.0, 9 / 4, 5 / 2])
    root, beat_s = rng.uniform(130, 330), 60.0 / rng.uniform(80, 160)
    timbre = np.arange(1, 7) ** -rng.uniform(0.8, 2.0)
    decay_s = rng.uniform(0.1, 0.5) if rng.random() < 0.6 else 10.0  # plucked or sustained
    melody = np.zeros(n)
    pos, step = 0, int(rng.integers(scale.size))
    while pos < n:
        length = min(int(beat_s * rng.choice([0.5, 1.0, 2.0], p=[0.4, 0.45, 0.15]) * sample_rate), n - pos)
        step = int(np.clip(step + rng.integers(-2, 3), 0, scale.size - 1))
        t = np.arange(length) / sample_rate
        # 10 ms attack, a pluck's decay (or none), 20 ms release so notes do not click into each other.
        envelope = np.minimum(t / 0.01, 1.0) * np.exp(-t / decay_s) * np.minimum((t[-1] - t) / 0.02, 1.0)
        note = _partials(np.full(length, root * scale[step]), timbre, sample_rate, rng)
        melody[pos : pos + length] = envelope * note
        pos += length
    beats = np.arange(0, n, beat_s * sample_rate).astype(int)
    t = np.arange(int(beat_s * sample_rate)) / sample_rate
    kick = np.sin(2 * np.pi * 60 * t) * np.exp(-t / 0.04)
    bass = np.sin(2 * np.pi * root / 2 * t) * np.exp(-t / 0.3)
    on_beats = np.ones(beats.size)
    return (_unit(melody) + rng.uniform(0.0, 0.5) * _unit(_place(n, beats, on_beats, bass))
            + rng.uniform(0.0, 0.6) * _unit(_place(n, beats, on_beats, kick)))


SOUND_MODELS: dict[str, SoundModel] = {
    "air_conditioner": air_conditioner,
    "car_horn": car_horn,
    "children_playing": children_playing,
    "dog_bark": dog_bark,
    "drilling": drilling,
    "engine_idling": engine_idling,
    "gun_shot": gun_shot,
    "jackhammer": jackhammer,
    "siren": siren,
    "street_music": street_music,
}
# UrbanSound8K's classID is the index in this list.
CLASSES = tuple(SOUND_MODELS)



def band_pass(x: np.ndarray, sample_rate: int, low_hz: float, high_hz: float) -> np.ndarray:
    """A device's colouring: a 2nd-order Butterworth band-pass along the last axis, as a small mic or phone hears.

    The upper edge is held below Nyquist so a narrow-band rate never makes the filter invalid.
    """
    high = min(high_hz, _NYQUIST_SHARE * sample_rate)
    sos = scipy.signal.butter(2, [low_hz, high], btype="bandpass", fs=sample_rate, output="sos")
    return scipy.signal.sosfilt(sos, x, axis=-1).astype(np.float32)


def plan_sources(*, clips_per_class: int, domains: Sequence[str], max_slices_per_source: int, seed: int
                 ) -> list[SourcePlan]:
    """Every source of the corpus: 1..max slices each, exactly clips_per_class slices per class, fsIDs unique.

    Folds are filled largest source first, each into the fold with the fewest slices of its class (then overall),
    so folds stay balanced although a source is never split. Domains are then spread evenly over the sources of
    every class and of every fold at once (equitable_colouring): a class or fold of at least len(domains) sources
    holds every domain, so each test fold can be scored per domain.
    """
    rng = np.random.default_rng([seed, _PLAN])
    drafts: list[tuple[int, int, str, int, int]] = []
    fold_totals = np.zeros(URBANSOUND8K_FOLDS, int)
    for class_id in range(len(CLASSES)):
        sizes: list[int] = []
        while (left := clips_per_class - sum(sizes)) > 0:
            sizes.append(min(int(rng.integers(1, max_slices_per_source + 1)), left))
        turns = [str(d) for d in np.resize(rng.permutation(list(domains)), len(sizes))]
        class_counts = np.zeros(URBANSOUND8K_FOLDS, int)
        for stream in sorted(range(len(sizes)), key=lambda i: -sizes[i]):
            fewest = np.flatnonzero(class_counts == class_counts.min())
            fewest = fewest[fold_totals[fewest] == fold_totals[fewest].min()]
            fold = int(rng.choice(fewest))
            class_counts[fold] += sizes[stream]
            fold_totals[fold] += sizes[stream]
            drafts.append((class_id, fold + 1, turns[stream], sizes[stream], stream))
    # The turns already spread each class's domains evenly; the recolouring evens out the folds and keeps that.
    names = sorted(set(domains))
    colours = equitable_colouring([(class_id, fold) for class_id, fold, *_ in drafts],
                                  [names.index(domain) for _, _, domain, *_ in drafts], len(names))
    # Freesound-like ids: random six-digit numbers, so no id says which class or fold it belongs to.
    fs_ids = rng.choice(900_000, size=len(drafts), replace=False) + 100_000
    return [SourcePlan(int(fs_id), class_id, fold, names[colour], slices, stream)
            for fs_id, (class_id, fold, _, slices, stream), colour in zip(fs_ids, drafts, colours, strict=True)]


def equitable_colouring(edges: Sequence[tuple[int, int]], colours: Sequence[int], k: int) -> list[int]:
    """`colours` (0..k-1) of the edges of a bipartite multigraph (left vertex, right vertex), recoloured until they
    are equitable: at every vertex, any two colours' edge counts differ by at most one (de Werra, 1971).

    While a vertex has two colours a, b apart by two or more, the edges coloured a or b are recoloured alternately
    along trails (_alternate), which evens a against b at every vertex. Each such pass lowers the sum over vertices
    of squared colour counts, so the loop ends. An already equitable colouring is returned unchanged.
    """
    ends = [(("left", u), ("right", v)) for u, v in edges]
    colours = list(colours)
    vertices = sorted({end for pair in ends for end in pair})
    while True:
        counts = Counter((end, colour) for pair, colour in zip(ends, colours, strict=True) for end in pair)
        uneven = next(((a, b) for vertex in vertices for a in range(k) for b in range(k)
                       if counts[vertex, a] - counts[vertex, b] >= 2), None)
        if uneven is None:
            return colours
        _alternate(ends, colours, *uneven)


def _alternate(ends: Sequence[tuple[Hashable, Hashable]], colours: list[int], a: int, b: int) -> None:
    """Recolour the edges coloured a or b in place: split them into trails, each starting at a vertex of odd degree
    while there is one, and colour each trail a, b, a, ... along it.

    A trail passing through a vertex gives it one a and one b; a closed trail is of even length in a bipartite graph,
    so its start gets one of each too; a vertex ends at most one open trail. So a and b counts end up at most one
    apart at every vertex.
    """
    mine = [i for i, colour in enumerate(colours) if colour in (a, b)]
    unused: dict[Hashable, list[int]] = defaultdict(list)
    for i in mine:
        for end in ends[i]:
            unused[end].append(i)
    done: set[int] = set()
    order = sorted(unused)

    def degree(vertex: Hashable) -> int:
        return sum(i not in done for i in unused[vertex])

    while len(done) < len(mine):
        vertex = next((v for v in order if degree(v) % 2), None) or next(v for v in order if degree(v))
        colour = a
        while (edge := next((i for i in unused[vertex] if i not in done), None)) is not None:
            done.add(edge)
            colours[edge] = colour
            colour = b if colour == a else a
            left, right = ends[edge]
            vertex = right if vertex == left else left


def _crowd(sample_rate: int, seed: int) -> list[np.ndarray]:
    """Adult talkers (low pitch, adult formants) whose utterances make the babble noise of a domain."""
    rng = np.random.default_rng([seed, _CROWD])
    return [_talker(int(rng.uniform(1.0, 3.0) * sample_rate), sample_rate, (90, 200), 1.0, rng)
            for _ in range(_BABBLE_TALKERS)]


def _render_source(plan: SourcePlan, domain: SoundDomain, sample_rate: int, seed: int, crowd: Sequence[np.ndarray]
                   ) -> list[tuple[list[object], np.ndarray]]:
    """The slices of one source as (CSV row, audio): occurrences of its class in its domain, cut into <= 4 s.

    The room and microphone are the source's, drawn once; each occurrence has its own sound, noise, SNR and level.
    """
    rng = np.random.default_rng([seed, _SOURCE, plan.class_id, plan.stream])
    room = room_impulse_response(rng.uniform(*domain.rt60_s), sample_rate, rng) if domain.rt60_s else None
    band = tuple(rng.uniform(0.8, 1.25, 2) * domain.band_hz) if domain.band_hz else None
    step = int(SLICE_SECONDS * sample_rate)
    # Where the first occurrence starts in the (imagined) source recording, for the start and end columns.
    clock = rng.uniform(0.0, 30.0)
    slices: list[tuple[list[object], np.ndarray]] = []
    occurrence = 0
    while (left := plan.slices - len(slices)) > 0:
        count = int(rng.integers(1, min(MAX_SLICES_PER_OCCURRENCE, left) + 1))
        seconds = SLICE_SECONDS * (count - 1) + rng.uniform(MIN_SLICE_SECONDS, SLICE_SECONDS)
        # An FFT-friendly length: noise beds and reverb are FFTs of the whole occurrence.
        n = min(scipy.fft.next_fast_len(int(seconds * sample_rate), real=True), count * step)
        event = _unit(SOUND_MODELS[CLASSES[plan.class_id]](n, sample_rate, rng)).astype(np.float32)
        if room is not None:
            event = reverberate(event, room)
        salience = 1 if rng.random() < FOREGROUND_SHARE else 2
        snr_db = rng.uniform(*domain.snr_db) - (BACKGROUND_DROP_DB if salience == 2 else 0.0)
        # mix_at_snr measures the whole clip; shifting by whole/active level makes the SNR hold while the event sounds.
        whole_to_active_db = 20 * np.log10(1.0 / max(_active_rms(event, sample_rate), 1e-12))
        bed = noise(domain.noise, n, sample_rate, rng, crowd)
        audio = mix_at_snr(event, bed, snr_db + whole_to_active_db)
        if band is not None:
            audio = band_pass(audio, sample_rate, *band)
        audio = peak_normalize(audio, 10.0 ** (rng.uniform(*PEAK_DBFS) / 20))
        for index in range(count):
            piece = audio[index * step : (index + 1) * step]
            start = clock + index * SLICE_SECONDS
            name = f"{plan.fs_id}-{plan.class_id}-{occurrence}-{index}.wav"
            row = [name, plan.fs_id, round(start, 6), round(start + piece.size / sample_rate, 6), salience,
                   plan.fold, plan.class_id, CLASSES[plan.class_id]]
            slices.append((row, piece))
        clock += seconds + rng.uniform(1.0, 20.0)
        occurrence += 1
    return slices


def _csv_text(header: Sequence[str], rows: list[list[object]]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows([header, *rows])
    return buffer.getvalue()


def synthesize_urbansound(
    out_dir: Path,
    *,
    clips_per_class: int,
    sample_rate: int,
    seed: int,
    domains: Mapping[str, SoundDomain],
    max_slices_per_source: int = 4,
) -> list[SoundClip]:
    """Write the corpus as an UrbanSound8K folder (metadata CSV, audio/fold1..fold10/ PCM_16 mono WAVs); read it back.

    Sources take turns over `domains`, recorded in metadata/domains.csv (fsID, domain). out_dir is deleted and
    rebuilt; the same arguments give byte-identical files.
    """
    if clips_per_class < 1 or max_slices_per_source < 1 or not domains:
        raise ValueError("need clips_per_class >= 1, max_slices_per_source >= 1 and at least one domain")
    if sample_rate < 8000:
        raise ValueError(f"sample_rate {sample_rate} is below 8000 Hz: the whines and sirens would not fit")
    out_dir = Path(out_dir)
    plans = plan_sources(clips_per_class=clips_per_class, domains=sorted(domains),
                         max_slices_per_source=max_slices_per_source, seed=seed)
    crowd = _crowd(sample_rate, seed) if any(d.noise == "babble" for d in domains.values()) else []
    threads = torch.get_num_threads()
    # One thread: mixing reduces in torch, and another thread count could change the last bit of a sample.
    torch.set_num_threads(1)
    try:
        shutil.rmtree(out_dir, ignore_errors=True)
        with atomic_path(out_dir) as partial:
            for fold in range(1, URBANSOUND8K_FOLDS + 1):
                (partial / "audio" / f"fold{fold}").mkdir(parents=True)
            rows = []
            for plan in plans:
                for row, audio in _render_source(plan, domains[plan.domain], sample_rate, seed, crowd):
                    # Encoded in memory: soundfile's close() fsyncs, which costs more than encoding a short file.
                    buffer = io.BytesIO()
                    sf.write(buffer, audio, sample_rate, subtype="PCM_16", format="WAV")
                    (partial / "audio" / f"fold{plan.fold}" / str(row[0])).write_bytes(buffer.getvalue())
                    rows.append(row)
            # Sorted by file name, as the real CSV is.
            rows.sort(key=lambda row: str(row[0]))
            (partial / "metadata").mkdir()
            (partial / URBANSOUND8K_CSV).write_text(_csv_text(URBANSOUND8K_COLUMNS, rows))
            sources = sorted([plan.fs_id, plan.domain] for plan in plans)
            (partial / DOMAINS_CSV).write_text(_csv_text(("fsID", "domain"), sources))
    finally:
        torch.set_num_threads(threads)
    return load_urbansound8k(out_dir)


def source_domains(root: Path) -> dict[str, str]:
    """fsID -> domain name of a synthesized corpus (metadata/domains.csv), for accuracy per acoustic domain."""
    path = Path(root) / DOMAINS_CSV
    if not path.is_file():
        raise SoundDatasetError(f"{path}: no such file; only a synthesized corpus names its domains")
    with path.open(newline="") as file:
        return {row["fsID"]: row["domain"] for row in csv.DictReader(file)}
