"""Custom keywords by transfer: the word encoder learns and is reproducible, heads train only what they should, and
the sliding-window detector, false accepts per hour and the operating point do their arithmetic right."""

from __future__ import annotations

import copy
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn

from components.config import DomainRecipe, Model
from components.encoder import (
    HELD_OUT_WORDS,
    EncoderResult,
    EncoderSettings,
    WordEncoder,
    encoder_words,
    load_encoder,
    save_encoder,
    synthesize_word_corpus,
    train_encoder,
)
from components.errors import EarshotError
from components.features import LogMel
from components.keywords import (
    CurvePoint,
    Detection,
    KeywordClips,
    KeywordModel,
    KeywordSettings,
    Stream,
    count_hits,
    detect,
    draw_talkers,
    false_accepts_per_hour,
    join_clips,
    negative_streams,
    operating_point,
    phrase_clips,
    smooth,
    train_keyword_head,
    window_scores,
)
from tests.conftest import training_seed

pytestmark = pytest.mark.usefixtures("one_torch_thread")

RECIPES = {"quiet": DomainRecipe(voices=["en-us"], noise="none", snr_db=(35.0, 45.0)),
           "car": DomainRecipe(voices=["en-gb-scotland"], noise="car", snr_db=(10.0, 20.0), rt60_s=(0.05, 0.1))}
TINY_ENCODER = EncoderSettings(speakers=10, validation_speakers=2, words=24, epochs=30, batch_size=32,
                               learning_rate=1e-2, model=Model(channels=32, blocks=2, kernel=5, dropout=0.0), dim=32)
TINY_KEYWORDS = KeywordSettings(train_speakers=2, takes=2, unknown_clips=4, silence_clips=4, epochs=3)


@pytest.fixture(scope="module")
def trained() -> EncoderResult:
    settings = replace(TINY_ENCODER, seed=training_seed())
    return train_encoder(synthesize_word_corpus(settings, RECIPES), settings)


@pytest.fixture(scope="module")
def clips() -> KeywordClips:
    talkers = draw_talkers(RECIPES, TINY_KEYWORDS.train_speakers, TINY_KEYWORDS.seed, "training")
    return phrase_clips(TINY_KEYWORDS, RECIPES, talkers, takes=TINY_KEYWORDS.takes,
                        unknown=TINY_KEYWORDS.unknown_clips, silence=TINY_KEYWORDS.silence_clips, group="training")


def test_the_encoder_never_hears_the_held_out_keywords() -> None:
    words = encoder_words(EncoderSettings())
    assert len(words) >= 300 and not set(HELD_OUT_WORDS) & set(words)
    with pytest.raises(EarshotError, match="outside"):
        encoder_words(replace(TINY_ENCODER, words=1))


def test_the_encoder_recognises_words_of_talkers_it_never_heard(trained: EncoderResult) -> None:
    chance = 1 / TINY_ENCODER.words
    assert trained.val_accuracy > 10 * chance, trained.history  # ~0.96 on this machine


def test_the_word_corpus_is_the_same_from_the_same_seed_and_other_from_another() -> None:
    small = replace(TINY_ENCODER, speakers=2, words=4)
    first, again = synthesize_word_corpus(small, RECIPES), synthesize_word_corpus(small, RECIPES)
    assert torch.equal(first.waves, again.waves) and first.waves.shape == (8, 16000)
    assert first.labels.tolist() == [0, 1, 2, 3] * 2 and first.speakers.tolist() == [0] * 4 + [1] * 4
    other = synthesize_word_corpus(replace(small, seed=small.seed + 1), RECIPES)
    assert not torch.equal(first.waves, other.waves)


def test_a_saved_encoder_loads_back_with_its_card(trained: EncoderResult, tmp_path) -> None:
    save_encoder(trained, TINY_ENCODER, encoder_words(TINY_ENCODER), tmp_path / "encoder.pt")
    encoder, card = load_encoder(tmp_path / "encoder.pt")
    mels = torch.randn(3, 40, 49)
    assert torch.equal(encoder(mels), trained.encoder(mels))
    assert card["excluded"] == list(HELD_OUT_WORDS) and len(card["words"]) == TINY_ENCODER.words
    with pytest.raises(EarshotError, match="not found"):
        load_encoder(tmp_path / "missing.pt")


def test_the_keyword_model_exports_with_torch_export(trained: EncoderResult) -> None:
    model = KeywordModel(copy.deepcopy(trained.encoder), len(TINY_KEYWORDS.labels), 16, 0.1).eval()
    mels = torch.randn(2, 40, 74)
    exported = torch.export.export(model, (mels,))
    assert torch.allclose(exported.module()(mels), model(mels), atol=1e-5)


def _changed(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> set[str]:
    return {name for name, value in after.items() if not torch.equal(value, before[name])}


def test_a_frozen_encoder_is_unchanged_after_head_training(trained: EncoderResult, clips: KeywordClips) -> None:
    model = KeywordModel(copy.deepcopy(trained.encoder), len(TINY_KEYWORDS.labels), 16, 0.1, "frozen")
    before = copy.deepcopy(model.state_dict())
    train_keyword_head(model, clips, TINY_KEYWORDS)
    changed = _changed(before, model.state_dict())
    # BatchNorm running statistics included: a frozen encoder must not drift in train mode either.
    assert changed == {f"head.{i}.{p}" for i in (1, 4) for p in ("weight", "bias")}


def test_fine_tuning_changes_only_the_last_block(trained: EncoderResult, clips: KeywordClips) -> None:
    model = KeywordModel(copy.deepcopy(trained.encoder), len(TINY_KEYWORDS.labels), 16, 0.1, "last_block")
    before = copy.deepcopy(model.state_dict())
    train_keyword_head(model, clips, TINY_KEYWORDS)
    last = len(model.encoder.blocks) - 1
    touched = {name for name in _changed(before, model.state_dict()) if name.startswith("encoder.")}
    assert touched and all(n.startswith((f"encoder.blocks.{last}.", "encoder.project.")) for n in touched), touched
    assert any(n.startswith(f"encoder.blocks.{last}.0.") for n in touched)  # the last block's convolution moved


def test_head_training_is_the_same_from_the_same_seed(clips: KeywordClips) -> None:
    # The caller seeds the initial weights; train_keyword_head seeds everything after them.
    torch.manual_seed(0)
    first = KeywordModel(WordEncoder(40, TINY_ENCODER.model, TINY_ENCODER.dim), len(TINY_KEYWORDS.labels), 16, 0.1,
                         "all")
    torch.manual_seed(0)
    again = KeywordModel(WordEncoder(40, TINY_ENCODER.model, TINY_ENCODER.dim), len(TINY_KEYWORDS.labels), 16, 0.1,
                         "all")
    one_epoch = replace(TINY_KEYWORDS, epochs=1)
    assert train_keyword_head(first, clips, one_epoch) == train_keyword_head(again, clips, one_epoch)
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), again.state_dict().values(),
                                                 strict=True))


def test_phrase_clips_are_labelled_sized_and_reproducible(clips: KeywordClips) -> None:
    s = TINY_KEYWORDS
    assert clips.waves.shape == (2 * 3 * 2 + 4 + 4, s.window_samples)
    counts = torch.bincount(clips.labels, minlength=len(s.labels)).tolist()
    assert counts == [4, 4, 4, 4, 4] and clips.label_names == [*s.phrases, "_silence_", "_unknown_"]
    assert (clips.talkers[clips.labels == s.labels.index("_silence_")] == -1).all()
    talkers = draw_talkers(RECIPES, s.train_speakers, s.seed, "training")
    again = phrase_clips(s, RECIPES, talkers, takes=s.takes, unknown=s.unknown_clips, silence=s.silence_clips,
                         group="training")
    assert torch.equal(again.waves, clips.waves)
    assert draw_talkers(RECIPES, 4, s.seed, "testing") != draw_talkers(RECIPES, 4, s.seed, "training")


def test_takes_of_some_talkers_join_negatives_of_others(clips: KeywordClips) -> None:
    """The benchmark's split: a few talkers say the phrases, other talkers (every room) give the negatives."""
    s = TINY_KEYWORDS
    team = draw_talkers({"car": RECIPES["car"]}, 1, s.seed, "phrases")
    takes = phrase_clips(s, RECIPES, team, takes=3, unknown=0, silence=0, group="phrases")
    negatives = phrase_clips(s, RECIPES, draw_talkers(RECIPES, 2, s.seed, "training"), takes=0, unknown=4,
                             silence=4, group="training")
    assert torch.bincount(takes.labels, minlength=5).tolist() == [3, 3, 3, 0, 0]
    assert torch.bincount(negatives.labels, minlength=5).tolist() == [0, 0, 0, 4, 4]
    joined = join_clips(takes, negatives)
    assert torch.equal(joined.waves, torch.cat([takes.waves, negatives.waves]))
    assert torch.equal(joined.labels[9:], negatives.labels) and joined.label_names == clips.label_names


class Loudness(nn.Module):
    """A stand-in keyword model: phrase 0 when 0.4 s (20 frames) of the window are loud, `_unknown_` otherwise."""

    def forward(self, mels: torch.Tensor) -> torch.Tensor:
        loud_frames = (mels.amax(dim=1) > -2.0).float().sum(dim=1)
        zeros = torch.zeros_like(loud_frames)
        return torch.stack([(loud_frames - 20.0) * 5.0, zeros - 50, zeros - 50, zeros - 50, zeros], dim=1)


def test_an_inserted_keyword_is_detected_once_and_noise_never() -> None:
    s = replace(TINY_KEYWORDS, smooth_windows=1)
    rng = np.random.default_rng(0)
    audio = (rng.standard_normal(20 * s.sample_rate) * 1e-3).astype(np.float32)
    start, end = 8 * s.sample_rate, int(8.5 * s.sample_rate)
    quiet_scores = window_scores(Loudness(), audio, s)
    audio[start:end] += np.sin(np.arange(end - start) * 0.3).astype(np.float32)
    scores = window_scores(Loudness(), audio, s)
    assert scores.shape == (1 + (20 - 1.5) / 0.1, len(s.phrases))
    assert detect(quiet_scores, 0.5, s) == []
    found = detect(scores, 0.5, s)
    assert len(found) == 1 and found[0].keyword == 0
    assert (scores[:, 0] > 0.5).sum() > 5  # many windows saw it; the refractory period made it one detection
    assert count_hits(found, Stream(audio, ((0, start, end),)), s) == 1
    assert count_hits(found, Stream(audio, ((1, start, end),)), s) == 0


def test_window_scores_equal_each_window_featurized_alone(trained: EncoderResult) -> None:
    s = TINY_KEYWORDS
    model = KeywordModel(copy.deepcopy(trained.encoder), len(s.labels), 16, 0.1).eval()
    audio = np.random.default_rng(1).standard_normal(3 * s.sample_rate).astype(np.float32) * 0.1
    scores = window_scores(model, audio, s)
    hop = round(s.hop_s * s.sample_rate)
    alone = torch.stack([torch.from_numpy(audio[w * hop : w * hop + s.window_samples]) for w in range(len(scores))])
    with torch.no_grad():
        expected = torch.softmax(model(LogMel(s.features, s.sample_rate)(alone)), dim=1)[:, :3].numpy()
    np.testing.assert_allclose(scores, expected, atol=1e-5)


def test_detections_respect_the_refractory_period() -> None:
    s = replace(TINY_KEYWORDS, refractory_s=1.0, smooth_windows=1)
    scores = np.zeros((40, 3), np.float32)
    scores[[2, 5, 11, 12, 30], 1] = 0.9
    scores[25, 2] = 0.4
    assert detect(scores, 0.5, s) == [Detection(2, 1), Detection(12, 1), Detection(30, 1)]
    # The detector is deaf to every phrase after a detection, whichever phrase it was.
    assert detect(scores, 0.3, s) == [Detection(2, 1), Detection(12, 1), Detection(25, 2)]


def test_smoothing_ignores_a_lone_spike_but_not_a_run() -> None:
    s = replace(TINY_KEYWORDS, smooth_windows=3)
    scores = np.zeros((30, 3), np.float32)
    scores[5, 0] = 1.0
    scores[[15, 16, 17], 2] = 0.9
    assert smooth(scores, 3)[17, 2] == pytest.approx(0.9) and smooth(scores, 3)[5, 0] == pytest.approx(1 / 3)
    assert detect(scores, 0.5, s) == [Detection(16, 2)]  # fires once two of its last three windows agree


def test_a_hop_that_is_not_whole_feature_frames_is_refused() -> None:
    with pytest.raises(EarshotError, match="whole number"):
        window_scores(Loudness(), np.zeros(32000, np.float32), replace(TINY_KEYWORDS, hop_s=0.03))


def test_false_accepts_per_hour_arithmetic() -> None:
    assert false_accepts_per_hour(3, 1800.0) == 6.0
    assert false_accepts_per_hour(0, 3600.0) == 0.0
    assert false_accepts_per_hour(1, 7200.0) == 0.5
    with pytest.raises(EarshotError, match="no audio"):
        false_accepts_per_hour(1, 0.0)


def test_the_operating_point_is_the_best_recall_within_the_false_accept_budget() -> None:
    curve = [CurvePoint(0.5, 9.0, 1.0), CurvePoint(0.9, 2.0, 0.97), CurvePoint(0.95, 1.0, 0.93),
             CurvePoint(0.97, 0.5, 0.93), CurvePoint(0.99, 0.0, 0.80)]
    assert operating_point(curve, 1.0) == CurvePoint(0.97, 0.5, 0.93)
    assert operating_point(curve, 2.0).threshold == 0.9
    assert operating_point(curve, 0.0).threshold == 0.99
    with pytest.raises(EarshotError, match="no threshold"):
        operating_point(curve[:2], 1.0)


def test_negative_streams_are_long_enough_and_hold_no_keyword() -> None:
    s = replace(TINY_KEYWORDS, stream_seconds=6.0)
    talkers = draw_talkers(RECIPES, 2, s.seed, "testing")
    streams = negative_streams(s, RECIPES, talkers, 20.0)
    assert sum(x.audio.size for x in streams) >= 20 * s.sample_rate
    assert all(not x.keywords and np.isfinite(x.audio).all() for x in streams)
