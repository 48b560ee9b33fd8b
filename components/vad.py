"""Voice activity detection in front of the recognizer: where utterances start and end in a stream of audio.

Two detectors score fixed frames (Silero's small neural net, or WebRTC's GMM); one state machine turns the scores
into speech start / end events, so both behave the same way towards `Stream.min_silence_ms` and `speech_pad_ms`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np
import torch

from components.acoustics import resample
from components.config import Stream
from components.errors import EarshotError

# Silero's own hysteresis: once in speech, a frame must fall this far below the threshold to count as silence.
_SILERO_HYSTERESIS = 0.15
_WEBRTC_FRAME_MS = 30
_WEBRTC_RATES = (8000, 16000, 32000, 48000)
_SILERO_WINDOWS = {16000: 512, 8000: 256}
_INT16_SCALE = 32767
# Speech shorter than this is not an utterance: it drops clicks and WebRTC's false alarms while it adapts to a
# new stream's noise in the first ~100 ms.
MIN_SPEECH_MS = 200.0


class VadError(EarshotError):
    """A detector that cannot run on the given audio, with a message fit for one line."""


@dataclass(frozen=True)
class VadEvent:
    """Speech starts or ends at `sample`, counted from the first sample pushed into the detector."""

    kind: Literal["start", "end"]
    sample: int


class _FrameScorer(Protocol):
    frame: int  # samples per scored frame
    on: float  # a score at or above this starts speech
    off: float  # in speech, a score below this counts as silence

    def score(self, frame: np.ndarray) -> float: ...


class _Silero:
    """Silero VAD (ONNX, weights from the wheel): a speech probability per 32 ms window, state carried across."""

    def __init__(self, threshold: float, sample_rate: int) -> None:
        if sample_rate not in _SILERO_WINDOWS:
            raise VadError(f"silero VAD runs at {' or '.join(map(str, _SILERO_WINDOWS))} Hz, not {sample_rate} Hz")
        # Importing silero_vad sets torch's thread count to 1 for the whole process; keep the caller's setting.
        threads = torch.get_num_threads()
        from silero_vad import load_silero_vad

        torch.set_num_threads(threads)
        self.model = load_silero_vad(onnx=True)
        self.frame, self.rate = _SILERO_WINDOWS[sample_rate], sample_rate
        self.on, self.off = threshold, max(threshold - _SILERO_HYSTERESIS, 0.0)

    def score(self, frame: np.ndarray) -> float:
        return float(self.model(torch.from_numpy(frame), self.rate).item())


class _WebRtc:
    """WebRTC's VAD on 30 ms int16 frames; the threshold picks its aggressiveness (0 lenient .. 3 strict)."""

    def __init__(self, threshold: float, sample_rate: int) -> None:
        if sample_rate not in _WEBRTC_RATES:
            raise VadError(f"webrtc VAD runs at {', '.join(map(str, _WEBRTC_RATES))} Hz, not {sample_rate} Hz")
        import webrtcvad

        # Threshold quarters map to modes: 0.5, the usual Silero setting, is WebRTC's "aggressive" mode 2.
        self.vad = webrtcvad.Vad(min(int(threshold * 4), 3))
        self.frame, self.rate = sample_rate * _WEBRTC_FRAME_MS // 1000, sample_rate
        self.on = self.off = 0.5

    def score(self, frame: np.ndarray) -> float:
        pcm = (np.clip(frame, -1.0, 1.0) * _INT16_SCALE).astype(np.int16).tobytes()
        return float(self.vad.is_speech(pcm, self.rate))


class VoiceDetector:
    """Streaming VAD: push audio of any length, get speech start / end events at sample positions of the stream.

    Speech starts once it has lasted MIN_SPEECH_MS (the event is dated back to its first speech frame) and ends after
    `min_silence_ms` without a speech frame; both edges are widened by `speech_pad_ms` (the start never before the
    previous end, the end never past the audio seen so far).
    """

    def __init__(self, cfg: Stream, sample_rate: int) -> None:
        self.scorer: _FrameScorer = (_Silero if cfg.vad == "silero" else _WebRtc)(cfg.vad_threshold, sample_rate)
        self.min_silence = round(cfg.min_silence_ms * sample_rate / 1000)
        self.pad = round(cfg.speech_pad_ms * sample_rate / 1000)
        self.min_speech = round(MIN_SPEECH_MS * sample_rate / 1000)
        self.pending = np.zeros(0, np.float32)
        self.position = 0  # samples scored so far
        self.onset: int | None = None  # first speech frame of the current (maybe not yet confirmed) utterance
        self.started = False  # the start event of the current utterance has been sent
        self.speech_end = 0  # end of the last speech frame
        self.last_end = 0  # the last end event's sample

    def push(self, samples: np.ndarray) -> list[VadEvent]:
        """Feed the next samples of the stream (float32 mono at the detector's rate); return the events they cause."""
        audio = np.concatenate([self.pending, np.asarray(samples, np.float32)])
        frame = self.scorer.frame
        whole = audio.size - audio.size % frame
        self.pending = audio[whole:]
        events = []
        for start in range(0, whole, frame):
            event = self._step(self.scorer.score(audio[start : start + frame]))
            if event is not None:
                events.append(event)
        return events

    def flush(self) -> list[VadEvent]:
        """End of stream: close an utterance still open, at its last speech plus the pad."""
        started, self.onset, self.started = self.started, None, False
        return [self._end(self.position + self.pending.size)] if started else []

    def horizon(self) -> int:
        """No event still to come names a sample before this one: the audio before it is settled.

        In speech, the end is at least the last speech frame plus the pad; otherwise a start is at least the
        current candidate's onset (or the next frame) minus the pad, and never before the last end.
        """
        if self.started:
            return min(self.speech_end + self.pad, self.position + self.pending.size)
        return max((self.position if self.onset is None else self.onset) - self.pad, self.last_end)

    def _step(self, score: float) -> VadEvent | None:
        frame_start, self.position = self.position, self.position + self.scorer.frame
        if self.onset is None:
            if score < self.scorer.on:
                return None
            self.onset, self.speech_end = frame_start, self.position
        elif score >= self.scorer.off:
            self.speech_end = self.position
        elif self.position - self.speech_end >= self.min_silence:
            started, self.onset, self.started = self.started, None, False
            return self._end(self.position) if started else None
        if not self.started and self.speech_end - self.onset >= self.min_speech:
            self.started = True
            return VadEvent("start", max(self.onset - self.pad, self.last_end))
        return None

    def _end(self, seen: int) -> VadEvent:
        self.last_end = min(self.speech_end + self.pad, seen)
        return VadEvent("end", self.last_end)


def speech_spans(audio: np.ndarray, sample_rate: int, cfg: Stream) -> list[tuple[float, float]]:
    """(start, end) seconds of each utterance the streaming detector finds in a whole recording.

    Audio at a rate the detector does not run at is resampled to 16 kHz first; seconds do not depend on the rate.
    """
    rate = sample_rate if sample_rate in _SILERO_WINDOWS else 16000
    detector = VoiceDetector(cfg, rate)
    events = detector.push(resample(audio, sample_rate, rate) if rate != sample_rate else audio) + detector.flush()
    starts = [e.sample / rate for e in events if e.kind == "start"]
    ends = [e.sample / rate for e in events if e.kind == "end"]
    return list(zip(starts, ends, strict=True))
