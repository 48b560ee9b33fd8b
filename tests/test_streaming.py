from __future__ import annotations

import numpy as np
import pytest
import torch

from components.asr_export import LogProbs, torch_log_probs
from components.asr_model import Transcriber, offline_log_probs
from components.config import AsrModel, Features, Stream
from components.ctc import TOKENS, greedy_decode, spells
from components.features import LogMel
from components.streaming import Context, StreamingTranscriber, TranscriptEvent, transcribe_offline
from components.vad import speech_spans
from tests.test_vad import RATE, TEXTS, stream

FEATURES = Features(n_mels=64, win_ms=25.0, hop_ms=10.0)


def small_model(lookahead: int) -> Transcriber:
    """An untrained Transcriber: its log-probabilities are arbitrary but fixed, which is all equality needs."""
    torch.manual_seed(0)
    return Transcriber(FEATURES.n_mels, AsrModel(channels=32, blocks=2, kernel=5, lookahead=lookahead)).eval()


# An untrained model's letters are arbitrary, so these streams end utterances by the VAD alone.
VAD_ONLY = Stream(endpoint_blank_ms=0.0)


def run_stream(model: Transcriber, audio: np.ndarray, chunks: list[int]) -> list[TranscriptEvent]:
    return run_acoustic(torch_log_probs(model), Context.of(model), VAD_ONLY, audio, chunks)


def run_acoustic(acoustic: LogProbs, context: Context, cfg: Stream, audio: np.ndarray, chunks: list[int]
                 ) -> list[TranscriptEvent]:
    transcriber = StreamingTranscriber(acoustic, context, LogMel(FEATURES, RATE), greedy_decode, cfg, RATE)
    bounds = np.cumsum([0, *chunks])
    return [e for a, b in zip(bounds[:-1], bounds[1:], strict=True) for e in transcriber.push(audio[a:b])] + \
        transcriber.flush()


def chunk_sizes(total: int, irregular: bool) -> list[int]:
    """160 ms chunks, or sizes 1 sample to 0.3 s drawn from a seed: the stream must not care how audio arrives."""
    sizes = np.random.default_rng(1).integers(1, 4800, size=total) if irregular else np.full(total, 2560)
    return sizes[: np.searchsorted(np.cumsum(sizes), total) + 1].tolist()


@pytest.mark.parametrize(("lookahead", "irregular"), [(1, False), (0, True)])
def test_streaming_equals_offline_on_each_utterance(lookahead: int, irregular: bool) -> None:
    audio = stream()[0]
    model = small_model(lookahead)
    finals = [e for e in run_stream(model, audio, chunk_sizes(audio.size, irregular)) if e.final]
    vad_spans = speech_spans(audio, RATE, VAD_ONLY)
    assert len(finals) == len(vad_spans) == len(TEXTS)
    front_end = LogMel(FEATURES, RATE)
    for event, (vad_start, vad_end) in zip(finals, vad_spans, strict=True):
        # Utterances start on the stream's frame grid, at most one hop before the VAD's start.
        assert vad_start - 0.01 < event.start_s <= vad_start and event.end_s == pytest.approx(vad_end)
        cut = audio[round(event.start_s * RATE) : round(event.end_s * RATE)]
        offline = offline_log_probs(model, front_end(torch.from_numpy(cut)[None])[0])
        assert event.log_probs.shape == offline.shape
        torch.testing.assert_close(event.log_probs, offline, atol=1e-4, rtol=1e-4)
        assert event.text == greedy_decode(offline) != ""


def test_partials_grow_and_each_utterance_ends_in_one_final() -> None:
    audio = stream()[0]
    events = run_stream(small_model(1), audio, chunk_sizes(audio.size, irregular=False))
    utterances: list[list[TranscriptEvent]] = [[]]
    for event in events:
        utterances[-1].append(event)
        if event.final:
            utterances.append([])
    assert utterances.pop() == [] and len(utterances) == len(TEXTS)
    for events in utterances:
        *partials, final = events
        assert len(partials) >= 2 and not any(p.final for p in partials)
        for before, after in zip(partials, partials[1:], strict=False):
            assert after.text.startswith(before.text) and after.text != before.text
            assert before.start_s == after.start_s == final.start_s and before.end_s < after.end_s <= final.end_s


def test_offline_transcription_matches_the_model_padding() -> None:
    model = small_model(1)
    audio = stream()[0][: RATE]
    front_end = LogMel(FEATURES, RATE)
    event = transcribe_offline(audio, torch_log_probs(model), Context.of(model), front_end, greedy_decode, RATE)
    expected = offline_log_probs(model, front_end(torch.from_numpy(audio)[None])[0])
    torch.testing.assert_close(event.log_probs, expected)
    assert event.text == greedy_decode(expected) and event.end_s == 1.0


def spelling_model(context: Context) -> LogProbs:
    """An acoustic model that hears the letter "a" in every frame, the noise floor included: only the loudness
    rule can tell its words from background talk."""

    def run(padded: torch.Tensor) -> torch.Tensor:
        frames = (padded.shape[2] - context.receptive_field) // context.subsampling + 1
        return torch.nn.functional.one_hot(torch.full((frames,), TOKENS.index("a")), len(TOKENS)).float().log()

    return run


def test_the_model_ends_utterances_the_vad_runs_together() -> None:
    audio, truth, floor = stream()
    # Other people talking, ~25 dB under the talker: the VAD hears speech in every gap.
    audio = audio + sum(np.roll(audio - floor, shift) for shift in (10_667, 22_400, 44_000)) * 0.03
    context = Context(subsampling=2, left=4, right=2)
    chunks = chunk_sizes(audio.size, irregular=False)

    def finals(**stream: float) -> list[TranscriptEvent]:
        # Every gap of the stream (0.5-1.5 s) is shorter than this silence: the VAD hears one utterance.
        cfg = Stream(min_silence_ms=2000.0, **stream)
        return [e for e in run_acoustic(spelling_model(context), context, cfg, audio, chunks) if e.final]

    assert len(finals(endpoint_blank_ms=0.0)) == 1
    assert len(finals(endpoint_blank_ms=300.0, foreground_db=40.0)) == 1  # letters in the floor count as words
    cut = finals(endpoint_blank_ms=300.0, foreground_db=20.0)
    assert len(cut) == len(truth)
    for event, (start, end), after in zip(cut, truth, [*truth[1:], (np.inf, np.inf)], strict=True):
        # Each final holds its utterance and ends 300 ms after its last loud letter, whenever the frames arrived.
        assert event.start_s <= start and end < event.end_s < min(end + 0.3 + 0.1, after[0])


def test_spells_marks_letters_not_blanks_or_separators() -> None:
    path = torch.nn.functional.one_hot(torch.tensor([TOKENS.index(t) for t in "-it's|-a"]), len(TOKENS)).float()
    assert spells(path).tolist() == [False, True, True, True, True, False, False, True]
