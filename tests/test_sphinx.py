"""PocketSphinx as an independent ear: it hears espeak-ng's words as those words, over enough clips to mean it."""

from __future__ import annotations

import numpy as np
import pytest

from components.acoustics import resample, trim_silence
from components.speech import SPEECH_RATE, Speaker, speak
from components.sphinx import WordRecognizer

WORDS = "yes no up down left right on off stop go".split()
VOICES = [Speaker("en-us", "m3", 170, 50), Speaker("en-us", "f2", 160, 60), Speaker("en-gb", "m1", 180, 40),
          Speaker("en-gb", "f4", 150, 55), Speaker("en-us", "m7", 190, 45), Speaker("en-gb-x-rp", "f1", 165, 50)]
# Measured 88 % over 24 corpus words and six voices (dithered decoder); 10 points of margin for other builds.
MIN_HEARD = 0.78


@pytest.fixture(scope="module")
def clips() -> list[tuple[str, np.ndarray]]:
    return [(w, trim_silence(speak(w, v), SPEECH_RATE)) for v in VOICES for w in WORDS]


def test_it_hears_most_words_as_themselves(clips: list[tuple[str, np.ndarray]]) -> None:
    ear = WordRecognizer(WORDS, SPEECH_RATE)
    heard = [ear.hear(audio) for _, audio in clips]
    share = np.mean([h == w for h, (w, _) in zip(heard, clips, strict=True)])
    assert len(clips) >= 60 and share >= MIN_HEARD, list(zip(heard, [w for w, _ in clips], strict=True))


def test_the_same_clip_is_heard_alike_at_its_own_rate_and_at_16k(clips: list[tuple[str, np.ndarray]]) -> None:
    native, at_16k = WordRecognizer(WORDS, SPEECH_RATE), WordRecognizer(WORDS, 16000)
    same = [native.hear(a) == at_16k.hear(resample(a, SPEECH_RATE, 16000)) for _, a in clips[:20]]
    assert np.mean(same) >= 0.9
    assert [native.hear(a) for _, a in clips[:5]] == [native.hear(a) for _, a in clips[:5]]  # no state carried over


def test_a_word_outside_the_dictionary_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="no word 'qzxvfrob'") as err:
        WordRecognizer(["yes", "qzxvfrob"])
    assert "\n" not in str(err.value)
