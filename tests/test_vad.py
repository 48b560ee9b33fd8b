from __future__ import annotations

from functools import cache

import numpy as np
import pytest

from components.acoustics import colored_noise, resample, trim_silence
from components.config import Stream
from components.speech import SPEECH_RATE, Speaker, speak
from components.vad import VadError, VoiceDetector, speech_spans

RATE = 16000
TEXTS = ("turn on the kitchen lights", "set a timer for ten minutes", "play some music", "what time is it")
VOICES = (Speaker("en-us", "m3"), Speaker("en-gb", "f2"), Speaker("en-us", "f4", rate=200),
          Speaker("en-gb-scotland", "m1"))
EDGE_TOLERANCE_S = 0.15


@cache
def stream() -> tuple[np.ndarray, list[tuple[float, float]], np.ndarray]:
    """Four trimmed utterances at known places, 0.5-1.5 s apart, over a pink noise floor ~30 dB below the speech."""
    rng = np.random.default_rng(0)
    said = [trim_silence(speak(text, voice), SPEECH_RATE) for text, voice in zip(TEXTS, VOICES, strict=True)]
    clips = [resample(clip, SPEECH_RATE, RATE) for clip in said]
    gaps = [round(rng.uniform(0.5, 1.5) * RATE) for _ in range(len(clips) + 1)]
    audio = np.zeros(sum(gaps) + sum(c.size for c in clips), np.float32)
    spans, pos = [], gaps[0]
    for clip, gap in zip(clips, gaps[1:], strict=True):
        audio[pos : pos + clip.size] = clip
        spans.append((pos / RATE, (pos + clip.size) / RATE))
        pos += clip.size + gap
    floor = 0.003 * colored_noise(audio.size, 1.0, RATE, rng)
    return audio + floor, spans, floor


@pytest.mark.parametrize("vad", ["silero", "webrtc"])
def test_detected_spans_match_the_utterances(vad: str) -> None:
    audio, truth, _ = stream()
    cfg = Stream(vad=vad)
    pad = cfg.speech_pad_ms / 1000
    found = speech_spans(audio, RATE, cfg)
    assert len(found) == len(truth)
    for (start, end), (true_start, true_end) in zip(found, truth, strict=True):
        assert abs(start - (true_start - pad)) < EDGE_TOLERANCE_S
        assert abs(end - (true_end + pad)) < EDGE_TOLERANCE_S


@pytest.mark.parametrize("vad", ["silero", "webrtc"])
def test_noise_alone_is_not_speech(vad: str) -> None:
    assert speech_spans(stream()[2], RATE, Stream(vad=vad)) == []


def test_events_do_not_depend_on_how_the_stream_is_chunked() -> None:
    audio = stream()[0]
    whole = VoiceDetector(Stream(), RATE)
    chunked = VoiceDetector(Stream(), RATE)
    events = [e for i in range(0, audio.size, 1234) for e in chunked.push(audio[i : i + 1234])] + chunked.flush()
    assert events == whole.push(audio) + whole.flush()
    assert [e.kind for e in events] == ["start", "end"] * len(TEXTS)


def test_an_utterance_open_at_the_end_is_closed_by_flush() -> None:
    audio, truth, _ = stream()
    cut = round((truth[-1][0] + 0.5) * RATE)
    detector = VoiceDetector(Stream(), RATE)
    assert detector.push(audio[:cut])[-1].kind == "start"
    assert detector.flush()[0].sample == cut


def test_silero_refuses_a_rate_it_cannot_run_at() -> None:
    with pytest.raises(VadError, match="not 44100 Hz"):
        VoiceDetector(Stream(vad="silero"), 44100)
