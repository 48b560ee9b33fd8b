"""Live inference over a stream of audio: keywords or sound events by sliding window, speech by VAD + chunks.

Audio arrives in chunks of any size; events come out as soon as the audio that decides them has arrived.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
import torch

from components.acoustics import resample
from components.config import Stream
from components.dataset import SILENCE, UNKNOWN
from components.serving import PackagedModel, SpeechTranscriber
from components.streaming import Context, StreamingTranscriber

DEFAULT_THRESHOLD = 0.8


@dataclass(frozen=True)
class Listening:
    """How classifiers listen: a window every `hop_s`, an event when a label wins with at least `threshold`."""

    hop_s: float = 0.1
    threshold: float | None = None  # None: the operating point a keyword model's gate measured, else 0.8
    window_s: float | None = None  # None: the model's own (a keyword clip's length, 2 s for sound events)
    partials: bool = False  # speech: also the running (greedy) transcript of an utterance still being spoken


@dataclass(frozen=True)
class StreamEvent:
    """Something heard between start_s and end_s of the stream: a label (with its confidence) or a transcript."""

    start_s: float
    end_s: float
    text: str
    confidence: float | None = None
    final: bool = True


class WindowDetector:
    """Classifies the latest window every hop; a label that wins (not silence or unknown, at or above the threshold)
    is an event once, until another outcome wins a window: one spoken word is one event, not one per hop.

    A custom keyword model's package carries the threshold and score smoothing (mean of the last windows) its
    false accepts per hour were measured with, so it listens as its gate judged it.
    """

    def __init__(self, model: PackagedModel, cfg: Listening) -> None:
        self.model = model
        self.threshold = cfg.threshold if cfg.threshold is not None else model.card.get("threshold", DEFAULT_THRESHOLD)
        self.recent: deque[torch.Tensor] = deque(maxlen=model.card.get("smooth_windows", 1))
        rate = model.sample_rate
        seconds = cfg.window_s or model.served.window_s
        self.window, self.hop = round(seconds * rate), max(round(cfg.hop_s * rate), 1)
        self.audio = np.zeros(0, np.float32)
        self.start = 0  # stream position of audio[0], always the next window's start
        self.classified = False
        self.last: str | None = None

    def push(self, samples: np.ndarray) -> list[StreamEvent]:
        self.audio = np.concatenate([self.audio, np.asarray(samples, np.float32)])
        events = []
        while self.audio.size >= self.window:
            events += self._classify(self.audio[: self.window])
            self.audio, self.start = self.audio[self.hop :], self.start + self.hop
        return events

    def flush(self) -> list[StreamEvent]:
        """A stream shorter than one window is still classified once."""
        return self._classify(self.audio) if not self.classified and self.audio.size else []

    def _classify(self, window: np.ndarray) -> list[StreamEvent]:
        self.classified = True
        self.recent.append(self.model.scores(self.model.log_mel(window)))
        scores = torch.stack(tuple(self.recent)).mean(dim=0)
        best = int(scores.argmax())
        name, confidence = self.model.card["label_names"][best], float(scores[best])
        label = name if confidence >= self.threshold and name not in (SILENCE, UNKNOWN) else None
        previous, self.last = self.last, label
        if label is None or label == previous:
            return []
        rate = self.model.sample_rate
        return [StreamEvent(self.start / rate, (self.start + window.size) / rate, label, confidence)]


class TranscriptListener:
    """The packaged speech model behind components.streaming: VAD, chunked decoding, a final per utterance."""

    def __init__(self, model: PackagedModel, cfg: Listening) -> None:
        self.partials = cfg.partials
        served = model.served
        self.transcriber = StreamingTranscriber(served.acoustic, Context.of(served.shape), served.front_end,
                                                served.decoder.decode, Stream(**model.card["stream"]),
                                                model.sample_rate)

    def push(self, samples: np.ndarray) -> list[StreamEvent]:
        return self._events(self.transcriber.push(samples))

    def flush(self) -> list[StreamEvent]:
        return self._events(self.transcriber.flush())

    def _events(self, heard: list) -> list[StreamEvent]:
        return [StreamEvent(e.start_s, e.end_s, e.text, None, e.final) for e in heard if e.final or self.partials]


def listener(model: PackagedModel, cfg: Listening) -> WindowDetector | TranscriptListener:
    """What listens to a stream for this model's track."""
    return TranscriptListener(model, cfg) if isinstance(model.served, SpeechTranscriber) else WindowDetector(model, cfg)


def chunks(wave: np.ndarray, size: int) -> Iterator[np.ndarray]:
    """A recording handed over `size` samples at a time, as a live source would."""
    for start in range(0, wave.size, size):
        yield wave[start : start + size]


def pcm_chunks(source: BinaryIO, size: int, rate: int, sample_rate: int) -> Iterator[np.ndarray]:
    """Raw 16-bit little-endian mono PCM read `size` samples at a time (a blocking read waits for a whole chunk),
    as float32 at `sample_rate`; another `rate` is resampled chunk by chunk, so only approximately at chunk edges."""
    while raw := source.read(2 * size):
        samples = np.frombuffer(raw[: len(raw) // 2 * 2], "<i2").astype(np.float32) / 32768
        yield samples if rate == sample_rate else resample(samples, rate, sample_rate)
