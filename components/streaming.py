"""Streaming speech-to-text: a VAD cuts utterances out of a stream, transcribed while they are spoken.

The acoustic model's convolutions are valid and its context bounded, so running it on overlapping windows of log-mel
frames (each new output frame with its full left context and its look-ahead) gives the very log-probabilities of one
offline pass over the utterance: streaming changes when a transcript is known, not what it says.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from components.asr_export import LogProbs
from components.asr_model import SILENCE, Transcriber
from components.config import Stream
from components.ctc import greedy_decode, spells
from components.features import LogMel
from components.vad import VoiceDetector

_DB_PER_NEPER = 10.0 / math.log(10.0)  # a natural-log power ratio in decibels
Decode = Callable[[torch.Tensor], str]  # (out_frames, vocab) log-probabilities -> transcript


@dataclass(frozen=True)
class Context:
    """The input frames output frame j of an acoustic model sees: [j*subsampling - left, j*subsampling + right]."""

    subsampling: int
    left: int
    right: int

    @property
    def receptive_field(self) -> int:
        return self.left + 1 + self.right

    @classmethod
    def of(cls, model: Transcriber) -> Context:
        return cls(model.subsampling, model.left_context, model.right_context)


@dataclass(frozen=True)
class TranscriptEvent:
    """A partial (greedy, the text so far) or final (the decoder's) transcript of the utterance begun at start_s.

    `end_s` is the utterance's end for a final and the end of the audio transcribed so far for a partial; a final
    also carries the utterance's log-probabilities (out_frames, vocab).
    """

    final: bool
    text: str
    start_s: float
    end_s: float
    log_probs: torch.Tensor | None = None


def _silence(n_mels: int, frames: int) -> torch.Tensor:
    return torch.full((n_mels, frames), SILENCE)


class _Utterance:
    """An open utterance: its first mel frame (in the stream), the input frames its next outputs need, its outputs.

    Its input is the utterance's frames with `context.left` frames before them: silence, as offline decoding pads,
    or the audio before a cut, which the utterance continues.
    """

    def __init__(self, first_frame: int, acoustic: LogProbs, context: Context, before: torch.Tensor,
                 loudest_db: float = -math.inf) -> None:
        self.first = first_frame
        self.loudest_db = loudest_db  # the loudest frame heard so far, in it or in the utterance it continues
        self.acoustic, self.context = acoustic, context
        self.pending = before  # starts at input frame len(outputs) * subsampling
        self.taken = 0  # utterance frames received
        self.outputs: list[torch.Tensor] = []
        self.levels: list[torch.Tensor] = []  # dB of the input frame at the centre of each output frame

    def extend(self, frames: torch.Tensor) -> bool:
        """Run the model on every output frame the received input now covers; True if there were any."""
        self.taken += frames.shape[1]
        self.pending = torch.cat([self.pending, frames], dim=1)
        s, field = self.context.subsampling, self.context.receptive_field
        ready = (self.pending.shape[1] - field) // s + 1
        if ready <= 0:
            return False
        self.outputs.append(self.acoustic(self.pending[None, :, : (ready - 1) * s + field]))
        centres = self.pending[:, self.context.left : self.context.left + ready * s : s]
        self.levels.append(_DB_PER_NEPER * torch.logsumexp(centres, dim=0))
        self.loudest_db = max(self.loudest_db, float(self.levels[-1].max()))
        self.pending = self.pending[:, ready * s :]
        return True

    def log_probs(self) -> torch.Tensor:
        return torch.cat(self.outputs)

    def foreground(self, foreground_db: float) -> torch.Tensor:
        """Per output frame: is its centre within `foreground_db` of the loudest frame heard? Letters on quieter
        frames are other people talking."""
        return torch.cat(self.levels) >= self.loudest_db - foreground_db

    def cut_point(self, foreground_db: float, quiet: int) -> int | None:
        """Output frames to keep: up to the first foreground letter followed by `quiet` output frames without one,
        plus those frames; None if there is no such letter."""
        log_probs = self.log_probs()
        heard = (spells(log_probs) & self.foreground(foreground_db)).nonzero().flatten()
        followed = torch.diff(heard, append=torch.tensor([len(log_probs)])) > quiet
        first = followed.nonzero().flatten()
        return None if first.numel() == 0 else int(heard[first[0]]) + 1 + quiet

    def truncate(self, outputs: int) -> None:
        """Keep only the first `outputs` output frames: the utterance was cut there."""
        self.outputs, self.levels = [self.log_probs()[:outputs]], [torch.cat(self.levels)[:outputs]]


class StreamingTranscriber:
    """Audio in, transcripts out: partials (greedy) as speech arrives, a final (`decode`) when the VAD ends it or
    the model has spelled no letter on foreground audio for `endpoint_blank_ms` (the audio after such a cut opens
    the next utterance).

    `acoustic` maps padded log-mels (1, n_mels, frames) to log-probabilities (out_frames, vocab), e.g.
    components.asr_export.onnx_log_probs(path) or torch_log_probs(model); `context` is that model's.
    """

    def __init__(self, acoustic: LogProbs, context: Context, front_end: LogMel, decode: Decode, cfg: Stream,
                 sample_rate: int) -> None:
        self.acoustic, self.context, self.front_end, self.decode = acoustic, context, front_end, decode
        self.rate = sample_rate
        self.vad = VoiceDetector(cfg, sample_rate)
        self.hop, self.span = front_end.mel.hop_length, front_end.mel.n_fft  # a frame reads `span` samples
        self.n_mels = front_end.mel.n_mels
        self.endpoint = math.ceil(cfg.endpoint_blank_ms / 1000 * sample_rate / (self.hop * context.subsampling))
        self.foreground_db = cfg.foreground_db
        self.audio = np.zeros(0, np.float32)  # samples not yet fully used by a frame
        self.audio_start = 0  # stream position of audio[0]
        self.mels = _silence(self.n_mels, 0)  # frames an utterance may still need
        self.mel_start = 0  # stream frame index of mels[:, 0]
        self.seen = 0
        self.utterance: _Utterance | None = None
        self.partial = ""

    def push(self, samples: np.ndarray) -> list[TranscriptEvent]:
        """Feed the next samples (float32 mono at the stream's rate); return the transcripts they complete."""
        samples = np.asarray(samples, np.float32)
        self._featurize(samples)
        events = []
        for change in self.vad.push(samples):
            if change.kind == "start":
                self.utterance = _Utterance(change.sample // self.hop, self.acoustic, self.context,
                                            _silence(self.n_mels, self.context.left))
                self.partial = ""
            else:
                events += self._finish(change.sample)
        if self.utterance is not None:
            events += self._advance()
        self._forget()
        return events

    def flush(self) -> list[TranscriptEvent]:
        """End of stream: the final transcript of an utterance still open, if any."""
        return [event for change in self.vad.flush() for event in self._finish(change.sample)]

    def _frames_before(self, sample: int) -> int:
        """Stream frames that end at or before `sample`."""
        return max((sample - self.span) // self.hop + 1, 0)

    def _featurize(self, samples: np.ndarray) -> None:
        """Log-mel of every frame the stream now holds whole; frames sit on one grid from the stream's first sample."""
        self.audio = np.concatenate([self.audio, samples])
        self.seen += samples.size
        have, ready = self.mel_start + self.mels.shape[1], self._frames_before(self.seen)
        if ready > have:
            first = have * self.hop - self.audio_start
            piece = torch.from_numpy(self.audio[first : first + (ready - have - 1) * self.hop + self.span])
            self.mels = torch.cat([self.mels, self.front_end(piece[None])[0]], dim=1)
            self.audio = self.audio[ready * self.hop - self.audio_start :]
            self.audio_start = ready * self.hop

    def _take(self, utterance: _Utterance, until: int) -> torch.Tensor:
        """The utterance's next frames, up to stream frame `until`."""
        start = utterance.first + utterance.taken - self.mel_start
        return self.mels[:, start : max(until - self.mel_start, start)]

    def _advance(self) -> list[TranscriptEvent]:
        """Feed the open utterance the frames the VAD has settled as inside it; a partial if its text grew, a final
        (and a new utterance) if it has a cut point."""
        utterance = self.utterance
        settled = min(self._frames_before(self.vad.horizon()), self.mel_start + self.mels.shape[1])
        if not utterance.extend(self._take(utterance, settled)):
            return []
        cut = utterance.cut_point(self.foreground_db, self.endpoint) if self.endpoint else None
        if cut is not None:
            return self._cut(cut)
        text = greedy_decode(utterance.log_probs())
        if text == self.partial:
            return []
        self.partial = text
        end = (utterance.first + utterance.taken - 1) * self.hop + self.span
        return [TranscriptEvent(False, text, utterance.first * self.hop / self.rate, end / self.rate)]

    def _cut(self, outputs: int) -> list[TranscriptEvent]:
        """Final the open utterance after its first `outputs` output frames; the VAD still hears sound, so the
        frames after them open a new utterance, which the VAD's end (or another cut) will close."""
        utterance = self.utterance
        utterance.truncate(outputs)
        cut = utterance.first + outputs * self.context.subsampling
        before = self.mels[:, max(cut - self.context.left - self.mel_start, 0) : cut - self.mel_start]
        before = torch.cat([_silence(self.n_mels, self.context.left - before.shape[1]), before], dim=1)
        self.utterance = _Utterance(cut, self.acoustic, self.context, before, utterance.loudest_db)
        self.partial = ""
        return self._final(utterance, cut * self.hop) + self._advance()

    def _finish(self, end: int) -> list[TranscriptEvent]:
        """The final transcript of the open utterance, which ends at stream sample `end`."""
        utterance, self.utterance = self.utterance, None
        frames = self._take(utterance, self._frames_before(end))
        utterance.extend(torch.cat([frames, _silence(self.n_mels, self.context.right)], dim=1))
        return self._final(utterance, end)

    def _final(self, utterance: _Utterance, end: int) -> list[TranscriptEvent]:
        """An ended utterance's final transcript; none if the model heard no words in it (noise after a cut)."""
        if not utterance.outputs:
            return []
        log_probs = utterance.log_probs()
        if not (spells(log_probs) & utterance.foreground(self.foreground_db)).any():
            return []
        text = self.decode(log_probs)
        if not text:
            return []
        return [TranscriptEvent(True, text, utterance.first * self.hop / self.rate, end / self.rate, log_probs)]

    def _forget(self) -> None:
        """Drop frames no utterance can need: those before the open one (a cut may open the next one inside it),
        or before the VAD's horizon."""
        keep = self.utterance.first - self.context.left if self.utterance else self.vad.horizon() // self.hop
        drop = min(max(keep - self.mel_start, 0), self.mels.shape[1])
        self.mels, self.mel_start = self.mels[:, drop:], self.mel_start + drop


def transcribe_offline(audio: np.ndarray, acoustic: LogProbs, context: Context, front_end: LogMel,
                       decode: Decode, sample_rate: int) -> TranscriptEvent:
    """One whole utterance in one pass, padded with silence frames as training and streaming pad: the reference."""
    mels = front_end(torch.from_numpy(np.asarray(audio, np.float32))[None])[0]
    padded = torch.nn.functional.pad(mels, (context.left, context.right), value=SILENCE)
    log_probs = acoustic(padded[None])
    return TranscriptEvent(True, decode(log_probs), 0.0, len(audio) / sample_rate, log_probs)
