"""Sound-event training and its evaluation protocol: fold cross-validation, as UrbanSound8K and ESC-50 prescribe.

Each test fold is scored by a model that never saw a clip or a source recording of it; one other fold stops training
early. Clips keep their own lengths: batches are padded, and the model pools over each clip's real frames only.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torch.nn.functional as F

from components.acoustics import resample
from components.augment import spec_augment
from components.config import Augment, Features, SoundTraining
from components.features import BATCH_CLIPS, LOG_FLOOR, LogMel, frame_count
from components.seeding import seeded_generator
from components.tracks.esc.events import SoundClip, SoundDatasetError, check_sources_disjoint, folds_split
from components.tracks.esc.model import SoundEventNet

# The log-mel of digital silence: what a batch holds past the end of a shorter clip.
SILENCE = math.log(LOG_FLOOR)


@dataclass(frozen=True)
class TrainedFold:
    """One fold's model and its training curve (per epoch: train loss, validation loss and accuracy)."""

    model: SoundEventNet  # in eval mode, with the weights of the best validation epoch
    best_epoch: int
    history: list[dict[str, float]]


@dataclass(frozen=True)
class DeployedFold:
    """A model already trained for one round: the deployed model, fitted with its holdout fold's roles and the same
    settings and seed, so cross-validation scores it rather than train that round a second time."""

    test_fold: int
    model: SoundEventNet
    best_epoch: int
    epochs_run: int


@dataclass(frozen=True)
class FoldResult:
    """One round of cross-validation: the clips each role actually got, so a leak can be checked on what was used."""

    test_fold: int
    validation_fold: int
    train: tuple[SoundClip, ...]
    validation: tuple[SoundClip, ...]
    test: tuple[SoundClip, ...]
    predictions: tuple[int, ...]  # top-1 label id of each test clip, in `test` order
    best_epoch: int
    epochs_run: int

    @property
    def accuracy(self) -> float:
        return sum(p == c.label for p, c in zip(self.predictions, self.test, strict=True)) / len(self.test)


@dataclass(frozen=True)
class CrossValidation:
    """Fold-wise scores as the datasets' papers report them: per-fold accuracy, mean and std, confusion summed."""

    folds: tuple[FoldResult, ...]
    label_names: tuple[str, ...]

    @property
    def accuracies(self) -> dict[int, float]:
        return {fold.test_fold: fold.accuracy for fold in self.folds}

    @property
    def mean_accuracy(self) -> float:
        return float(np.mean(list(self.accuracies.values())))

    @property
    def std_accuracy(self) -> float:
        """Population standard deviation over folds (numpy's default, ddof 0)."""
        return float(np.std(list(self.accuracies.values())))

    @property
    def clips_per_fold(self) -> dict[int, int]:
        return {fold.test_fold: len(fold.test) for fold in self.folds}

    @property
    def confusion(self) -> np.ndarray:
        """(classes, classes) counts over every test fold: row = true class, column = predicted."""
        counts = np.zeros((len(self.label_names),) * 2, dtype=int)
        for fold in self.folds:
            np.add.at(counts, ([c.label for c in fold.test], list(fold.predictions)), 1)
        return counts

    @property
    def per_class_accuracy(self) -> dict[str, float]:
        """Share of each class's test clips predicted right, for the classes that have test clips."""
        counts = self.confusion
        return {name: counts[k, k] / counts[k].sum() for k, name in enumerate(self.label_names) if counts[k].sum()}


def load_waveform(path: Path, *, sample_rate: int) -> np.ndarray:
    """An audio file as mono float32 at `sample_rate`: channels averaged, resampled if the file's rate differs."""
    audio, rate = sf.read(path, dtype="float32", always_2d=True)
    mono = audio.mean(axis=1)
    return mono if rate == sample_rate else resample(mono, rate, sample_rate)


def pad_waves(waves: Sequence[np.ndarray], *, min_samples: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Clips as one zero-padded (batch, samples) tensor and their lengths in samples.

    A clip shorter than min_samples is lengthened with silence that counts as its own, alone or in a batch.
    """
    lengths = torch.tensor([max(wave.size, min_samples) for wave in waves])
    batch = torch.zeros(len(waves), int(lengths.max()))
    for row, wave in zip(batch, waves, strict=True):
        row[: wave.size] = torch.from_numpy(wave)
    return batch, lengths


@torch.no_grad()
def clip_log_mels(clips: Sequence[SoundClip], *, sample_rate: int, features: Features, min_frames: int
                  ) -> dict[Path, torch.Tensor]:
    """Log-mel (n_mels, frames >= min_frames) of every clip by path, each computed once for all folds.

    Files are read BATCH_CLIPS at a time, longest first so a batch pads little; each clip is cut to its own frames.
    """
    front_end = LogMel(features, sample_rate)
    spec = front_end.mel.spectrogram
    min_samples = spec.n_fft + (min_frames - 1) * spec.hop_length
    # Ties by name: the same clips always make the same batches.
    paths = sorted({clip.path for clip in clips}, key=lambda path: (-sf.info(path).duration, str(path)))
    mels = {}
    for start in range(0, len(paths), BATCH_CLIPS):
        chunk = paths[start : start + BATCH_CLIPS]
        waves, lengths = pad_waves([load_waveform(p, sample_rate=sample_rate) for p in chunk], min_samples=min_samples)
        for path, mel, samples in zip(chunk, front_end(waves), lengths.tolist(), strict=True):
            mels[path] = mel[:, : frame_count(features, sample_rate, samples)].clone()
    return mels


def pad_log_mels(mels: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-mels (n_mels, frames_i) as one (batch, n_mels, frames) batch filled with silence, and each frames_i."""
    lengths = torch.tensor([mel.shape[1] for mel in mels])
    batch = torch.full((len(mels), mels[0].shape[0], int(lengths.max())), SILENCE)
    for row, mel in zip(batch, mels, strict=True):
        row[:, : mel.shape[1]] = mel
    return batch, lengths


def mixup(mels: torch.Tensor, lengths: torch.Tensor, targets: torch.Tensor, *, alpha: float, gen: torch.Generator,
          rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each clip blended with a random clip of the batch by a Beta(alpha, alpha) weight, its targets alike (mixup).

    The blend spans the longer of the two; past the shorter one's end it is mixed with silence.
    """
    partner = torch.randperm(len(mels), generator=gen)
    weight = torch.from_numpy(rng.beta(alpha, alpha, len(mels))).float()
    mixed = weight.view(-1, 1, 1) * mels + (1 - weight.view(-1, 1, 1)) * mels[partner]
    soft = weight.view(-1, 1) * targets + (1 - weight.view(-1, 1)) * targets[partner]
    return mixed, torch.maximum(lengths, lengths[partner]), soft


@torch.no_grad()
def score(model: SoundEventNet, clips: Sequence[SoundClip], mels: Mapping[Path, torch.Tensor], batch_size: int = 64
          ) -> tuple[float, float, list[int]]:
    """Mean cross-entropy, accuracy and top-1 label ids (in clip order) of `model` in eval mode on `clips`.

    Clips are batched by length so batches pad little; padding does not change a clip's logits.
    """
    model.eval()
    order = torch.tensor(sorted(range(len(clips)), key=lambda i: mels[clips[i].path].shape[1]))
    logits = torch.cat([model(*pad_log_mels([mels[clips[i].path] for i in chunk.tolist()]))
                        for chunk in order.split(batch_size)])[order.argsort()]
    labels = torch.tensor([clip.label for clip in clips])
    predictions = logits.argmax(1)
    return F.cross_entropy(logits, labels).item(), (predictions == labels).float().mean().item(), predictions.tolist()


def train_fold(train: Sequence[SoundClip], validation: Sequence[SoundClip], mels: Mapping[Path, torch.Tensor], *,
               n_classes: int, settings: SoundTraining, seed: int,
               on_epoch: Callable[[dict[str, float]], None] | None = None) -> TrainedFold:
    """A SoundEventNet trained on `train` (AdamW, cosine, SpecAugment, mixup), kept at its best `validation` epoch.

    Best is highest validation accuracy, then lowest loss. Every random choice follows `seed`. on_epoch gets each
    epoch's row of the history as it ends.
    """
    gen = seeded_generator(seed)  # also batch order, SpecAugment masks, mixup partners
    mix_weights = np.random.default_rng(seed)  # torch samples Beta only from its global generator
    n_mels = next(iter(mels.values())).shape[0]
    model = SoundEventNet(n_mels=n_mels, n_classes=n_classes, channels=settings.channels, blocks=settings.blocks,
                          dropout=settings.dropout)
    train_mels = [mels[clip.path] for clip in train]
    targets = F.one_hot(torch.tensor([clip.label for clip in train]), n_classes).float()
    masking = Augment(freq_mask=settings.freq_mask, time_mask=settings.time_mask, masks=settings.masks)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay)
    steps_per_epoch = -(-len(train) // settings.batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=settings.epochs * steps_per_epoch)
    best, best_epoch, best_weights, history = (-1.0, -math.inf), -1, None, []

    for epoch in range(settings.epochs):
        model.train()
        total_loss = 0.0
        for idx in torch.randperm(len(train), generator=gen).split(settings.batch_size):
            batch, lengths = pad_log_mels([train_mels[i] for i in idx.tolist()])
            batch, soft = spec_augment(batch, masking, gen), targets[idx]
            if settings.mixup:
                batch, lengths, soft = mixup(batch, lengths, soft, alpha=settings.mixup_alpha, gen=gen,
                                             rng=mix_weights)
            loss = F.cross_entropy(model(batch, lengths), soft)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total_loss += loss.item() * len(idx)

        val_loss, val_accuracy, _ = score(model, validation, mels)
        history.append({"epoch": epoch, "train_loss": total_loss / len(train), "val_loss": val_loss,
                        "val_accuracy": val_accuracy})
        if on_epoch is not None:
            on_epoch(history[-1])
        if (val_accuracy, -val_loss) > best:
            best, best_epoch = (val_accuracy, -val_loss), epoch
            best_weights = copy.deepcopy(model.state_dict())
        if epoch - best_epoch >= settings.patience:
            break

    model.load_state_dict(best_weights)
    return TrainedFold(model.eval(), best_epoch, history)


def class_names(clips: Sequence[SoundClip]) -> tuple[str, ...]:
    """Class names by label id; the ids must run 0..n-1, as logits index them."""
    names = {clip.label: clip.label_name for clip in clips}
    missing = sorted(set(range(max(names) + 1)) - set(names))
    if missing:
        raise SoundDatasetError(f"class ids must run 0..{max(names)}, but no clip has id {missing}")
    return tuple(names[label] for label in range(len(names)))


def _check_held_out(seen: Sequence[SoundClip], test: Sequence[SoundClip]) -> None:
    """Raise unless the test clips share no file and no source with the clips training sees (train + validation)."""
    check_sources_disjoint(seen, test)
    shared = sorted({clip.path for clip in seen} & {clip.path for clip in test})
    if shared:
        raise SoundDatasetError(f"{shared[0]}: a test clip is also a training clip ({len(shared)} shared)")


def fold_roles(clips: Sequence[SoundClip], test_fold: int) -> tuple[int, list[SoundClip], list[SoundClip],
                                                                   list[SoundClip]]:
    """(validation fold, train, validation, test) for one test fold; the validation fold is the next fold present.

    Folds, never a random split, and checked: no clip and no source of the test fold reaches training.
    """
    rest, test = folds_split(clips, test_fold)
    present = sorted({clip.fold for clip in clips})
    validation_fold = present[(present.index(test_fold) + 1) % len(present)]
    train, validation = folds_split(rest, validation_fold)
    _check_held_out(train + validation, test)
    return validation_fold, train, validation, test


def cross_validate(clips: Sequence[SoundClip], mels: Mapping[Path, torch.Tensor], *, folds: Sequence[int] | None = None,
                   settings: SoundTraining, seed: int, on_fold: Callable[[FoldResult], None] | None = None,
                   deployed: DeployedFold | None = None) -> CrossValidation:
    """Fold cross-validation: for each test fold in `folds` (None: every fold present), a model trained on the others.

    `mels` holds every clip's log-mel by path (clip_log_mels). Every split is built and checked before anything trains;
    on_fold gets each fold's result as it is scored; `deployed`'s round is scored, not trained.
    """
    present = sorted({clip.fold for clip in clips})
    if len(present) < 3:
        raise SoundDatasetError(f"fold cross-validation needs 3 folds (test, validation, train), clips have {present}")
    label_names = class_names(clips)
    rounds = {test_fold: fold_roles(clips, test_fold) for test_fold in (present if folds is None else folds)}
    results = []
    for test_fold, (validation_fold, train, validation, test) in rounds.items():
        if deployed is not None and deployed.test_fold == test_fold:
            model, best_epoch, epochs_run = deployed.model, deployed.best_epoch, deployed.epochs_run
        else:
            trained = train_fold(train, validation, mels, n_classes=len(label_names), settings=settings, seed=seed)
            model, best_epoch, epochs_run = trained.model, trained.best_epoch, len(trained.history)
        _, _, predictions = score(model, test, mels)
        results.append(FoldResult(test_fold, validation_fold, tuple(train), tuple(validation), tuple(test),
                                  tuple(predictions), best_epoch, epochs_run))
        if on_fold is not None:
            on_fold(results[-1])
    return CrossValidation(tuple(results), label_names)
