"""Sound-event training and fold cross-validation on a small synthesized UrbanSound8K corpus: nothing of a test fold
reaches training, scores add up and beat chance, seeds repeat, mixup, padding and resampling."""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torch.nn.functional as F

from components.config import Features
from components.tracks.esc.corpus import SoundDomain, synthesize_urbansound
from components.tracks.esc.events import SoundClip, SoundDatasetError
from components.tracks.esc.model import SoundEventNet, min_frames
from components.tracks.esc.train import (
    CrossValidation,
    DeployedFold,
    SoundTraining,
    clip_log_mels,
    cross_validate,
    fold_roles,
    load_waveform,
    mixup,
    pad_log_mels,
    score,
    train_fold,
)
from tests.conftest import chance_tail, training_seed

pytestmark = pytest.mark.usefixtures("one_torch_thread")

RATE = 16000
DOMAINS = {
    "street": SoundDomain(noise="pink", snr_db=(15.0, 25.0)),
    "hall": SoundDomain(noise="babble", snr_db=(10.0, 20.0), rt60_s=(0.3, 0.5)),
}
# 40 mels over 40 ms windows every 40 ms: half the default frames, so the whole file trains in seconds.
FEATURES = Features(win_ms=40.0, hop_ms=40.0)
# 32 epochs: 21 to 27 of the 40 test clips right over five seeds (8 epochs gave 11 to 19, chance 4).
TINY = SoundTraining(channels=8, blocks=3, epochs=32, batch_size=16, patience=32, learning_rate=5e-3)
FOLDS = [1, 2]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> list[SoundClip]:
    root = tmp_path_factory.mktemp("sound") / "UrbanSound8K"
    return synthesize_urbansound(root, clips_per_class=20, sample_rate=RATE, seed=7, domains=DOMAINS,
                                 max_slices_per_source=2)


def log_mels(clips: list[SoundClip], settings: SoundTraining = TINY) -> dict[Path, torch.Tensor]:
    return clip_log_mels(clips, sample_rate=RATE, features=FEATURES, min_frames=min_frames(settings.blocks))


def run(clips: list[SoundClip], folds: list[int], settings: SoundTraining = TINY,
        deployed: DeployedFold | None = None) -> CrossValidation:
    return cross_validate(clips, log_mels(clips, settings), folds=folds, settings=settings, seed=training_seed(),
                          deployed=deployed)


@pytest.fixture(scope="module")
def result(corpus: list[SoundClip]) -> CrossValidation:
    return run(corpus, FOLDS)


def test_no_clip_or_source_of_a_test_fold_reaches_training(corpus: list[SoundClip], result: CrossValidation) -> None:
    # Sources of several slices exist, so a split by clip would have leaked.
    assert max(Counter(clip.source for clip in corpus).values()) > 1
    assert [fold.test_fold for fold in result.folds] == FOLDS
    for fold in result.folds:
        seen = fold.train + fold.validation
        assert {clip.fold for clip in fold.test} == {fold.test_fold}
        assert {clip.fold for clip in fold.validation} == {fold.validation_fold} != {fold.test_fold}
        assert fold.test_fold not in {clip.fold for clip in seen}
        assert not {clip.source for clip in seen} & {clip.source for clip in fold.test}
        # Every clip has exactly one role in every round.
        assert sorted(str(clip.path) for clip in seen + fold.test) == sorted(str(clip.path) for clip in corpus)


def test_a_source_split_across_folds_is_refused_before_training(corpus: list[SoundClip]) -> None:
    source, _ = next((s, n) for s, n in Counter(clip.source for clip in corpus).items() if n > 1)
    clips = list(corpus)
    index = next(i for i, clip in enumerate(clips) if clip.source == source)
    home = clips[index].fold
    clips[index] = dataclasses.replace(clips[index], fold=home % 10 + 1)
    with pytest.raises(SoundDatasetError, match=f"source {source} is in both training and test folds"):
        run(clips, [home])
    with pytest.raises(SoundDatasetError, match="fold 11 holds no clip"):
        run(corpus, [11])
    with pytest.raises(SoundDatasetError, match="needs 3 folds"):
        run([clip for clip in corpus if clip.fold < 3], [1])


def test_scores_add_up_and_beat_chance(result: CrossValidation) -> None:
    confusion = result.confusion
    tested = [clip for fold in result.folds for clip in fold.test]
    assert confusion.sum() == len(tested) == sum(result.clips_per_fold.values())
    assert result.clips_per_fold == {fold.test_fold: len(fold.test) for fold in result.folds}
    labels = Counter(clip.label for clip in tested)
    assert confusion.sum(axis=1).tolist() == [labels[k] for k in range(len(result.label_names))]
    accuracies = list(result.accuracies.values())
    assert all(0.0 <= accuracy <= 1.0 for accuracy in accuracies)
    assert result.mean_accuracy == pytest.approx(np.mean(accuracies))
    assert result.std_accuracy == pytest.approx(np.std(accuracies))
    correct = sum(fold.accuracy * len(fold.test) for fold in result.folds)
    assert np.trace(confusion) == pytest.approx(correct)
    per_class = result.per_class_accuracy
    assert set(per_class) == {result.label_names[k] for k in labels}
    assert sum(per_class[result.label_names[k]] * n for k, n in labels.items()) == pytest.approx(correct)
    # Learned, not lucky: a guesser over ten classes gets this many of the test clips right less than once in 1000.
    assert chance_tail(round(correct), len(tested), len(result.label_names)) < 1e-3, (round(correct), len(tested))


def test_the_same_seed_gives_the_same_folds(corpus: list[SoundClip], result: CrossValidation) -> None:
    again = run(corpus, FOLDS)
    assert again.accuracies == result.accuracies
    assert [fold.predictions for fold in again.folds] == [fold.predictions for fold in result.folds]
    assert [fold.best_epoch for fold in again.folds] == [fold.best_epoch for fold in result.folds]


def test_the_deployed_models_round_is_scored_not_trained_again(corpus: list[SoundClip],
                                                               result: CrossValidation) -> None:
    """Evaluation passes the deployed model as its holdout fold's round: that round must be this model's scores (an
    untrained one shows it is not retrained), and training the round anew gives the model it stands for."""
    first, second = result.folds
    _, train, validation, test = fold_roles(corpus, first.test_fold)
    mels = log_mels(corpus)
    untrained = SoundEventNet(n_mels=FEATURES.n_mels, n_classes=10, channels=TINY.channels, blocks=TINY.blocks).eval()
    scored = run(corpus, FOLDS, deployed=DeployedFold(first.test_fold, untrained, best_epoch=0, epochs_run=0))
    assert list(scored.folds[0].predictions) == score(untrained, test, mels)[2] != list(first.predictions)
    assert (scored.folds[0].best_epoch, scored.folds[0].epochs_run) == (0, 0)
    assert scored.folds[1].predictions == second.predictions
    trained = train_fold(train, validation, mels, n_classes=10, settings=TINY, seed=training_seed())
    assert tuple(score(trained.model, test, mels)[2]) == first.predictions


def test_training_runs_with_and_without_mixup_and_the_switch_matters(corpus: list[SoundClip]) -> None:
    _, train, validation, _ = fold_roles(corpus, 3)
    mels = clip_log_mels(train + validation, sample_rate=RATE, features=FEATURES, min_frames=min_frames(TINY.blocks))
    histories = {}
    for switch in (True, False):
        settings = TINY.model_copy(update={"epochs": 2, "mixup": switch})
        trained = train_fold(train, validation, mels, n_classes=10, settings=settings, seed=0)
        assert not trained.model.training and len(trained.history) == 2
        histories[switch] = [epoch["train_loss"] for epoch in trained.history]
    assert histories[True] != histories[False]


def test_mixup_blends_clips_lengths_and_targets_by_one_weight() -> None:
    n = 8
    # Clip k is the constant k, so a blend of clips is the blend of their ids.
    mels = torch.arange(n, dtype=torch.float).view(n, 1, 1).expand(n, 4, 6)
    lengths = torch.arange(1, n + 1)
    targets = F.one_hot(torch.arange(n), n).float()
    mixed, mixed_lengths, soft = mixup(mels, lengths, targets, alpha=0.4, gen=torch.Generator().manual_seed(0),
                                       rng=np.random.default_rng(0))
    torch.testing.assert_close(soft.sum(dim=1), torch.ones(n))
    assert bool(((soft > 0).sum(dim=1) <= 2).all()) and bool(((soft > 0).sum(dim=1) == 2).any())
    torch.testing.assert_close(mixed, (soft @ torch.arange(n, dtype=torch.float)).view(n, 1, 1).expand(n, 4, 6))
    assert mixed_lengths.tolist() == [int(lengths[row > 0].max()) for row in soft]


@torch.no_grad()
def test_a_real_clip_featurized_and_scored_alone_or_padded_in_a_batch_is_the_same(corpus: list[SoundClip]) -> None:
    by_length = sorted(corpus, key=lambda clip: sf.info(clip.path).frames)
    clips = [by_length[0], by_length[len(by_length) // 2], by_length[-1]]
    assert len({sf.info(clip.path).frames for clip in clips}) == 3
    together = clip_log_mels(clips, sample_rate=RATE, features=FEATURES, min_frames=min_frames(4))
    torch.manual_seed(0)
    model = SoundEventNet(n_mels=FEATURES.n_mels, n_classes=10).eval()
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    batched = model(*pad_log_mels([together[clip.path] for clip in clips]))
    for clip, logits in zip(clips, batched, strict=True):
        alone = clip_log_mels([clip], sample_rate=RATE, features=FEATURES, min_frames=min_frames(4))[clip.path]
        torch.testing.assert_close(alone, together[clip.path], atol=1e-5, rtol=0)
        torch.testing.assert_close(model(alone[None])[0], logits, atol=1e-4, rtol=0)


def test_files_at_another_rate_in_stereo_or_too_short_are_read_as_the_model_needs(tmp_path: Path) -> None:
    rate = 22050
    tone = 0.5 * np.sin(2 * np.pi * 440 * np.arange(rate) / rate)
    sf.write(tmp_path / "stereo.wav", np.stack([tone, 0.5 * tone], axis=1), rate, subtype="FLOAT")
    wave = load_waveform(tmp_path / "stereo.wav", sample_rate=RATE)
    assert wave.dtype == np.float32 and abs(wave.size - RATE) <= 1
    assert np.argmax(np.abs(np.fft.rfft(wave))) * RATE / wave.size == pytest.approx(440, abs=2)
    assert np.sqrt(np.mean(wave[1000:-1000] ** 2)) == pytest.approx(0.75 * 0.5 / np.sqrt(2), rel=0.02)
    # 50 ms, shorter than the network's shortest input: lengthened with silence to exactly that.
    sf.write(tmp_path / "blip.wav", tone[: rate // 20], rate, subtype="PCM_16")
    clip = SoundClip(tmp_path / "blip.wav", 1, 0, "blip", "1", 1)
    mels = clip_log_mels([clip], sample_rate=RATE, features=FEATURES, min_frames=min_frames(4))
    assert mels[clip.path].shape == (FEATURES.n_mels, min_frames(4))
