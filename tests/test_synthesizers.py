"""Piper and Kokoro on their real models: offline, audible, bit-reproducible across processes, distinct speakers."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from collections.abc import Callable

import numpy as np
import pytest

from components.kokoro_speech import KokoroTalker, draw_kokoro_talker, kokoro_phonemes, vocab
from components.piper_speech import LENGTH_SCALE_RANGE, PiperTalker, draw_piper_talker
from components.speech import Talker

KEYWORDS = "yes no up down left right on off stop go".split()
TALKERS = [PiperTalker(), KokoroTalker()]
IDS = ["piper", "kokoro"]

# Printed by a fresh interpreter: each engine's "yes" as a digest of its samples.
_DIGESTS = """
import hashlib
from components.kokoro_speech import KokoroTalker
from components.piper_speech import PiperTalker
for talker in (PiperTalker(), KokoroTalker()):
    print(hashlib.sha256(talker.say("yes").tobytes()).hexdigest())
"""


def _digest(audio: np.ndarray) -> str:
    return hashlib.sha256(audio.tobytes()).hexdigest()


@pytest.fixture(scope="module")
def yes() -> dict[str, np.ndarray]:
    """Each default talker's "yes", rendered once: Kokoro takes seconds a word on one thread."""
    return {talker.source: talker.say("yes") for talker in TALKERS}


@pytest.mark.parametrize("talker", TALKERS, ids=IDS)
def test_yes_is_audible_float_speech_at_the_engine_rate(talker: Talker, yes: dict[str, np.ndarray]) -> None:
    audio = yes[talker.source]
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert 0.15 * talker.sample_rate < audio.size < 2 * talker.sample_rate
    assert float(np.sqrt(np.mean(np.square(audio)))) > 0.01
    assert audio.min() >= -1.0 and audio.max() < 1.0


@pytest.mark.parametrize("talker", TALKERS, ids=IDS)
def test_the_same_call_gives_the_same_audio(talker: Talker, yes: dict[str, np.ndarray]) -> None:
    assert np.array_equal(talker.say("yes"), yes[talker.source])


def test_a_fresh_process_gives_the_same_audio(yes: dict[str, np.ndarray]) -> None:
    run = subprocess.run([sys.executable, "-c", _DIGESTS], capture_output=True, text=True, check=True, timeout=120)
    assert run.stdout.split() == [_digest(yes["piper"]), _digest(yes["kokoro"])]


@pytest.mark.parametrize("draw", [draw_piper_talker, draw_kokoro_talker], ids=IDS)
def test_drawn_talkers_differ_and_sound_different(draw: Callable[[np.random.Generator], Talker]) -> None:
    first, second = draw(np.random.default_rng(1)), draw(np.random.default_rng(2))
    assert first != second and first == draw(np.random.default_rng(1))
    audio = first.say("yes")
    assert not np.array_equal(audio, second.say("yes"))
    assert 0.15 * first.sample_rate < audio.size < 2 * first.sample_rate


@pytest.mark.parametrize("talker", TALKERS, ids=IDS)
def test_faster_is_shorter_and_stops_at_the_engine_limit(talker: Talker, yes: dict[str, np.ndarray]) -> None:
    assert talker.faster(1.3).say("yes").size < yes[talker.source].size
    fastest = talker.faster(100.0)
    assert fastest != talker and fastest.faster(1.5) == fastest and fastest.faster(1.5) is fastest


def test_piper_limits_hold_both_ways() -> None:
    assert PiperTalker().faster(0.01).length_scale == LENGTH_SCALE_RANGE[1]
    assert PiperTalker().faster(100.0).length_scale == LENGTH_SCALE_RANGE[0]


def test_describe_round_trips_the_settings() -> None:
    rng = np.random.default_rng(7)
    for piper in [PiperTalker(), *(draw_piper_talker(rng) for _ in range(5))]:
        described = piper.describe()
        assert all(isinstance(value, str) for value in described.values())
        settings = {key: float(described[key]) for key in ("length_scale", "noise_scale", "noise_w_scale")}
        assert PiperTalker(**settings) == piper
    for kokoro in [KokoroTalker(), *(draw_kokoro_talker(rng) for _ in range(5))]:
        described = kokoro.describe()
        assert all(isinstance(value, str) for value in described.values())
        parts = (part.split(":") for part in described["voices"].split("+"))
        mix = tuple((name, float(weight)) for name, weight in parts)
        assert KokoroTalker(mix, float(described["speed"])) == kokoro


def test_keywords_map_onto_kokoro_vocab() -> None:
    symbols = {word: kokoro_phonemes(word) for word in KEYWORDS}
    assert symbols["right"] == "ɹˈIt" and symbols["go"] == "ɡˈO" and symbols["down"] == "dˈWn"
    assert all(symbols.values()) and all(c in vocab() for s in symbols.values() for c in s)
