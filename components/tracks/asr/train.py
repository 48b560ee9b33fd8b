"""Training the transcriber: CTC loss, AdamW, cosine schedule, SpecAugment, early stopping on validation WER.

The loop reads top to bottom like components/train.py; a checkpoint after every epoch lets an interrupted run resume.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import jiwer
import torch
import torch.nn.functional as F

from components.asr_data import AsrData
from components.asr_model import Transcriber, output_frames, pad_batch
from components.augment import spec_augment
from components.config import Params
from components.ctc import BLANK_ID, encode_text, greedy_decode
from components.errors import EarshotError
from components.seeding import seeded_generator
from components.train import restore_checkpoint, run_fingerprint, save_checkpoint

# How far batch lengths are jittered before sorting (a fraction of each length), so batches differ every epoch.
# The settings that shape the transcriber, as a pydantic `include` of Params (see run_fingerprint).
ASR_TRAINING = {"seed": True, "augment": True, "asr": {"features", "model", "train"}}
LENGTH_JITTER = 0.1


@dataclass(frozen=True)
class TranscriberTrainResult:
    """The trained model (best validation epoch's weights, eval mode) and how training went."""

    model: Transcriber
    history: list[dict[str, float]]
    best_epoch: int
    best_val_wer: float
    resumed_from_epoch: int  # 0 for a fresh run; else the epochs an interrupted run had finished


def length_batches(mels: list[torch.Tensor], batch_size: int, gen: torch.Generator) -> list[list[int]]:
    """Row indices in batches of similar length (little padding), the batches in a random order."""
    lengths = torch.tensor([m.shape[1] for m in mels], dtype=torch.float)
    jittered = lengths * (1 + LENGTH_JITTER * torch.rand(len(mels), generator=gen))
    batches = jittered.argsort().split(batch_size)
    return [batches[i].tolist() for i in torch.randperm(len(batches), generator=gen)]


def ctc_forward(
    model: Transcriber, mels: list[torch.Tensor], texts: list[str], augment: Callable[[torch.Tensor], torch.Tensor]
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Mean CTC loss of one batch, and each clip's log-probabilities; `augment` sees the clips padded to one length."""
    batch = pad_batch(model, [m.float() for m in mels])
    inside = slice(model.left_context, batch.shape[2] - model.right_context)
    batch[:, :, inside] = augment(batch[:, :, inside])
    log_probs = model(batch)
    frames = torch.tensor([output_frames(model, m.shape[1]) for m in mels])
    targets = [torch.tensor(encode_text(t)) for t in texts]
    loss = F.ctc_loss(log_probs.transpose(0, 1), torch.cat(targets), frames, torch.tensor([len(t) for t in targets]),
                      blank=BLANK_ID, zero_infinity=True)
    return loss, [lp[:n] for lp, n in zip(log_probs, frames.tolist(), strict=True)]


@torch.no_grad()
def greedy_scores(model: Transcriber, data: AsrData, batch_size: int) -> dict[str, float]:
    """CTC loss, and WER and CER of greedy transcripts, on `data`."""
    model.eval()
    total, hypotheses = 0.0, [""] * len(data.texts)
    order = sorted(range(len(data.mels)), key=lambda i: data.mels[i].shape[1])
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        loss, log_probs = ctc_forward(model, [data.mels[i] for i in rows], [data.texts[i] for i in rows],
                                      lambda x: x)
        total += loss.item() * len(rows)
        for i, lp in zip(rows, log_probs, strict=True):
            hypotheses[i] = greedy_decode(lp)
    return {"loss": total / len(order), "wer": jiwer.wer(data.texts, hypotheses),
            "cer": jiwer.cer(data.texts, hypotheses)}


def train_transcriber(
    data: AsrData,
    params: Params,
    checkpoint: Path | None = None,
    on_epoch: Callable[[dict[str, float]], None] = lambda metrics: None,
) -> TranscriberTrainResult:
    """Train a Transcriber on the training split, keeping the weights of the best validation epoch."""
    cfg = params.asr.train
    gen = seeded_generator(params.seed, cfg.threads)
    train, val = data.split("training"), data.split("validation")
    for split, part in (("training", train), ("validation", val)):
        if not part.texts:
            raise EarshotError(f"{', '.join(data.domain_names)}: no {split} utterances to train the transcriber")
    model = Transcriber(params.asr.features.n_mels, params.asr.model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    steps_per_epoch = -(-len(train.mels) // cfg.batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs * steps_per_epoch)
    state = {"epoch": 0, "best_epoch": -1, "best": (float("inf"), float("inf")), "best_weights": None,
             "history": []}

    fingerprint = run_fingerprint(params, data.version, ASR_TRAINING)
    state = restore_checkpoint(checkpoint, fingerprint, model, optimizer, schedule, gen) or state
    resumed_from = state["epoch"]

    while state["epoch"] < cfg.epochs and state["epoch"] - state["best_epoch"] <= cfg.patience:
        model.train()
        total_loss = 0.0
        for rows in length_batches(train.mels, cfg.batch_size, gen):
            loss, _ = ctc_forward(model, [train.mels[i] for i in rows], [train.texts[i] for i in rows],
                                  lambda x: spec_augment(x, params.augment, gen))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total_loss += loss.item() * len(rows)

        scores = greedy_scores(model, val, cfg.batch_size)
        metrics = {"epoch": state["epoch"], "train_loss": total_loss / len(train.mels), "val_loss": scores["loss"],
                   "val_wer": scores["wer"], "val_cer": scores["cer"], "lr": schedule.get_last_lr()[0]}
        state["history"].append(metrics)
        # A small validation set often reaches the same WER twice; the lower loss is then the better model.
        if (scores["wer"], scores["loss"]) < tuple(state["best"]):
            state |= {"best_epoch": state["epoch"], "best": (scores["wer"], scores["loss"]),
                      "best_weights": {k: v.clone() for k, v in model.state_dict().items()}}
        state["epoch"] += 1
        # Reported before the checkpoint: a kill in between repeats an epoch's log line, never loses one.
        on_epoch(metrics)
        if checkpoint:
            save_checkpoint(checkpoint, fingerprint, model, optimizer, schedule, gen, state)

    model.load_state_dict(state["best_weights"])
    model.eval()
    if checkpoint:
        # Only an interrupted run may resume; a finished one must not short-circuit the next training.
        checkpoint.unlink(missing_ok=True)
    return TranscriberTrainResult(model, state["history"], state["best_epoch"], state["best"][0], resumed_from)
