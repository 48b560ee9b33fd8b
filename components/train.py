"""Training: AdamW, cosine schedule, augmentation per batch, early stopping on validation accuracy.

The loop reads top to bottom; a checkpoint after every epoch lets an interrupted run resume where it stopped. In a
world of processes (components/distributed.py) each trains on its share of every batch and rank 0 reports.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from components import distributed
from components.augment import augment_batch, augment_mels, spec_augment
from components.config import Params
from components.dataset import FULL_SCALE, KwsData
from components.features import feature_dims, front_end
from components.files import atomic_path
from components.model import KeywordSpotter
from components.seeding import seeded_generator


@dataclass(frozen=True)
class TrainResult:
    model: KeywordSpotter
    history: list[dict[str, float]]
    best_epoch: int
    best_val_accuracy: float
    resumed_from_epoch: int  # 0 for a fresh run; else the epochs an interrupted run had finished


@torch.no_grad()
def score(model: torch.nn.Module, mels: torch.Tensor, labels: torch.Tensor, batch: int = 512) -> tuple[float, float]:
    """Mean cross-entropy and top-1 accuracy of `model` on precomputed log-mels."""
    model.eval()
    logits = torch.cat([model(chunk) for chunk in mels.split(batch)])
    return F.cross_entropy(logits, labels).item(), (logits.argmax(1) == labels).float().mean().item()


# The settings that shape the keyword model, as a pydantic `include` of Params (see run_fingerprint).
KWS_TRAINING = {"seed", "features", "augment", "model", "train"}


def run_fingerprint(params: Params, data_version: str, include: set | dict) -> str:
    """What a checkpoint must match to be resumed: the data and every setting that shapes a track's training
    (`include`, a pydantic include of Params, the track's own)."""
    relevant = params.model_dump(mode="json", include=include)
    return hashlib.sha256(json.dumps([relevant, data_version], sort_keys=True).encode()).hexdigest()[:16]


def restore_checkpoint(checkpoint: Path | None, fingerprint: str, model: torch.nn.Module,
                       optimizer: torch.optim.Optimizer, schedule: torch.optim.lr_scheduler.LRScheduler,
                       gen: torch.Generator) -> dict | None:
    """The loop state of an interrupted run with this fingerprint, its model, optimizer, schedule and generators
    restored in place; None when there is nothing to resume."""
    if not checkpoint or not checkpoint.is_file():
        return None
    saved = torch.load(checkpoint, weights_only=True)
    if saved["fingerprint"] != fingerprint:
        return None
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    schedule.load_state_dict(saved["schedule"])
    gen.set_state(saved["generator"])
    torch.set_rng_state(saved["torch_rng"])  # dropout draws from the global generator
    return saved["state"]


def save_checkpoint(checkpoint: Path, fingerprint: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    schedule: torch.optim.lr_scheduler.LRScheduler, gen: torch.Generator, state: dict) -> None:
    """Everything restore_checkpoint needs to continue after the epoch just finished, written atomically."""
    saved = {"fingerprint": fingerprint, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
             "schedule": schedule.state_dict(), "generator": gen.get_state(), "torch_rng": torch.get_rng_state(),
             "state": state}
    with atomic_path(checkpoint) as partial:
        torch.save(saved, partial)


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float,
                      batch: int | None = None) -> torch.Tensor:
    """KL divergence from the teacher's softened class distribution to the student's, scaled by T^2 so its
    gradients keep the size of the label loss's (Hinton et al., 2015); summed over rows, divided by `batch` (by
    default the rows given: a rank's share of a batch is divided by the whole batch's size)."""
    divergence = F.kl_div(F.log_softmax(student / temperature, dim=1), F.log_softmax(teacher / temperature, dim=1),
                          log_target=True, reduction="sum")
    return divergence / (batch or len(student)) * temperature**2


def teacher_params(params: Params) -> Params:
    """The settings a distillation teacher trains with: the configured teacher architecture, no teacher of its own."""
    train = params.train.model_copy(update={"distill": params.train.distill.model_copy(update={"teacher": None})})
    return params.model_copy(update={"model": params.train.distill.teacher, "train": train})


def train_model(
    data: KwsData,
    params: Params,
    checkpoint: Path | None = None,
    on_epoch: Callable[[dict[str, float]], None] = lambda metrics: None,
    initial_weights: dict[str, torch.Tensor] | None = None,
    teacher: KeywordSpotter | None = None,
) -> TrainResult:
    """Train a KeywordSpotter on the training split, keeping the weights of the best validation epoch.

    `initial_weights` (a state_dict of the same architecture) warm-starts it; a checkpoint still wins when resuming.
    With a `teacher`, the loss mixes in distillation_loss by `train.distill.weight`. In a world of processes every
    rank returns the same model; only rank 0 calls `on_epoch` and writes the checkpoint.
    """
    cfg, sample_rate, world = params.train, params.dataset.sample_rate, distributed.current()
    # train.threads is the machine's: its ranks share them.
    gen = seeded_generator(params.seed, max(1, cfg.threads // world.local_size))
    train, val = data.split("training"), data.split("validation")
    waves, noise = train.float_waves(), data.noise.float() / FULL_SCALE
    featurizer = front_end(params.features, sample_rate)
    # A frozen embedding costs ~50 ms a clip, too much to run on every batch: it trains on the featurize stage's
    # vectors, masked, where log-mels are made afresh from augmented audio.
    frozen = params.features.kind != "log_mel"
    model = KeywordSpotter(feature_dims(params.features), len(data.label_names), params.model).to(world.device)
    if initial_weights is not None:
        model.load_state_dict(initial_weights)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    steps_per_epoch = -(-len(waves) // cfg.batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs * steps_per_epoch)
    state = {"epoch": 0, "best_epoch": -1, "best_acc": -1.0, "best_weights": None, "history": []}

    fingerprint = run_fingerprint(params, data.version, KWS_TRAINING)
    state = restore_checkpoint(checkpoint, fingerprint, model, optimizer, schedule, gen) or state
    resumed_from = state["epoch"]
    net = world.wrap(model)
    if teacher is not None:
        teacher.to(world.device)

    while state["epoch"] < cfg.epochs and state["epoch"] - state["best_epoch"] <= cfg.patience:
        model.train()
        total_loss, correct = 0.0, 0
        for idx in torch.randperm(len(waves), generator=gen).split(cfg.batch_size):
            # Every rank augments the whole batch, so its draws from `gen` are the same at any number of ranks.
            if frozen:
                mels = spec_augment(train.mels[idx].float(), params.augment, gen)
            else:
                mels = augment_mels(featurizer(augment_batch(waves[idx], noise, params.augment, sample_rate, gen)),
                                    params.augment, gen)
            mels, labels = world.share(mels).to(world.device), world.share(train.labels[idx]).to(world.device)
            logits = net(mels)
            # Summed over this rank's share, divided by the whole batch: the ranks' losses add up to its mean.
            loss = F.cross_entropy(logits, labels, reduction="sum") / len(idx)
            if teacher is not None:
                with torch.no_grad():
                    soft = teacher(mels)
                distill = cfg.distill
                loss = (1 - distill.weight) * loss + distill.weight * distillation_loss(logits, soft,
                                                                                         distill.temperature, len(idx))
            optimizer.zero_grad(set_to_none=True)
            # DDP averages the ranks' gradients; the batch's gradient is their sum.
            (loss * world.size).backward()
            optimizer.step()
            schedule.step()
            total_loss += loss.item() * len(idx)
            correct += (logits.argmax(1) == labels).sum().item()

        total_loss, correct = world.total(total_loss, correct)
        world.align(model)
        val_loss, val_acc = score(model, val.mels.to(world.device), val.labels.to(world.device))
        metrics = {"epoch": state["epoch"], "train_loss": total_loss / len(waves),
                   "train_accuracy": correct / len(waves), "val_loss": val_loss, "val_accuracy": val_acc,
                   "lr": schedule.get_last_lr()[0]}
        state["history"].append(metrics)
        if val_acc > state["best_acc"]:
            state |= {"best_epoch": state["epoch"], "best_acc": val_acc,
                      "best_weights": {k: v.clone() for k, v in model.state_dict().items()}}
        state["epoch"] += 1
        if world.leader:
            # Reported before the checkpoint: a kill in between repeats an epoch's log line, never loses one.
            on_epoch(metrics)
            if checkpoint:
                save_checkpoint(checkpoint, fingerprint, model, optimizer, schedule, gen, state)

    model.load_state_dict(state["best_weights"])
    model.to("cpu").eval()  # saved and served on CPU, wherever it trained
    if checkpoint and world.leader:
        # Only an interrupted run may resume; a finished one must not short-circuit the next training.
        checkpoint.unlink(missing_ok=True)
    return TrainResult(model, state["history"], state["best_epoch"], state["best_acc"], resumed_from)

