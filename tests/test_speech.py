"""espeak-ng through ctypes: real synthesis, voices and variants that differ, clear errors for bad names."""

from __future__ import annotations

import numpy as np
import pytest

from components.speech import (
    NATURAL_VARIANTS,
    SPEECH_RATE,
    Speaker,
    VoiceError,
    check_speaker,
    reset_engine,
    speak,
    variants,
    voices,
)


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x))))


def test_speak_gives_audible_float_speech_at_22050() -> None:
    audio = speak("yes", Speaker("en-us", "f2", 175, 50))
    assert SPEECH_RATE == 22050
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert 0.1 * SPEECH_RATE < audio.size < 2 * SPEECH_RATE
    assert _rms(audio) > 0.01 and np.abs(audio).max() <= 1.0


def test_voices_and_variants_sound_different() -> None:
    base = speak("left", Speaker("en-us", "m3", 160, 50))
    for other in [Speaker("en-gb-scotland", "m3", 160, 50), Speaker("en-us", "f4", 160, 50)]:
        audio = speak("left", other)
        n = min(base.size, audio.size)
        assert audio.size != base.size or not np.allclose(audio[:n], base[:n], atol=1e-3)


def test_faster_rate_is_shorter_and_pitch_changes_audio() -> None:
    slow = speak("follow", Speaker("en-gb", "", 120, 50))
    fast = speak("follow", Speaker("en-gb", "", 300, 50))
    assert fast.size < 0.75 * slow.size
    assert not np.array_equal(speak("follow", Speaker("en-gb", "", 120, 10)), slow)


def test_the_same_calls_after_a_reset_give_the_same_audio() -> None:
    calls = [("stop", Speaker("en-gb-x-rp", "f2", 170, 40)), ("marvin", Speaker("en-us", "klatt", 250, 90))]
    reset_engine()
    first = [speak(text, speaker) for text, speaker in calls]
    speak("something else entirely", Speaker("en-gb-scotland", "m1", 120, 10))
    reset_engine()
    again = [speak(text, speaker) for text, speaker in calls]
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))


def test_language_codes_resolve_and_listings_cover_the_config() -> None:
    assert {"en-us", "en-gb", "en-gb-x-rp", "en-gb-scotland"} <= set(voices())
    assert set(NATURAL_VARIANTS) <= set(variants())
    assert "robosoft" in variants()


@pytest.mark.parametrize(
    ("speaker", "named"),
    [
        (Speaker("en-xx-nowhere"), "en-xx-nowhere"),
        (Speaker("en-us", "m99"), "m99"),
        (Speaker("en-us", "", 20), "20"),
        (Speaker("en-us", "", 175, 120), "120"),
    ],
)
def test_bad_speaker_settings_raise_one_line_naming_them(speaker: Speaker, named: str) -> None:
    with pytest.raises(VoiceError, match=named) as err:
        speak("yes", speaker)
    assert "\n" not in str(err.value)
    with pytest.raises(VoiceError):
        check_speaker(speaker)
