from __future__ import annotations

import numpy as np
import pytest
import torch

from components.asr_export import torch_log_probs
from components.asr_model import Transcriber, offline_log_probs
from components.config import AsrModel, Features, Stream
from components.ctc import greedy_decode
from components.features import LogMel
from components.streaming import Context, StreamingTranscriber, TranscriptEvent, transcribe_offline
from components.vad import speech_spans
from tests.test_vad import RATE, TEXTS, stream

FEATURES = Features(n_mels=64, win_ms=25.0, hop_ms=10.0)


def small_model(lookahead: int) -> Transcriber:
    """An untrained Transcriber: its log-probabilities are arbitrary but fixed, which is all equality needs."""
    torch.manual_seed(0)
    return Transcriber(FEATURES.n_mels, AsrModel(channels=32, blocks=2, kernel=5, lookahead=lookahead)).eval()


def run_stream(model: Transcriber, audio: np.ndarray, chunks: list[int]) -> list[TranscriptEvent]:
    transcriber = StreamingTranscriber(torch_log_probs(model), Context.of(model), LogMel(FEATURES, RATE),
                                       greedy_decode, Stream(), RATE)
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
    vad_spans = speech_spans(audio, RATE, Stream())
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
