"""The keyword-spotting network: a temporal CNN (after TC-ResNet) over log-mel frames.

Mel bands are the input channels and every convolution runs along time, so each layer is one dense GEMM: fast in FP32
and faster in INT8, where the depthwise convolutions of a DS-CNN gain nothing on x86 (see README, `make bench`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from components.config import Features, Model
from components.errors import EarshotError
from components.features import feature_dims
from components.files import atomic_path


def _conv_bn(c_in: int, c_out: int, kernel: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv1d(c_in, c_out, kernel, stride, kernel // 2, bias=False),
        nn.BatchNorm1d(c_out),
        nn.ReLU(inplace=True),
    )


class KeywordSpotter(nn.Module):
    """Log-mel (batch, n_mels, frames) -> class logits (batch, n_classes)."""

    def __init__(self, n_mels: int, n_classes: int, cfg: Model) -> None:
        super().__init__()
        c = cfg.channels
        # The first block halves the frame rate: a word's letters span many 20 ms frames.
        blocks = [_conv_bn(c, c, cfg.kernel, 2 if i == 0 else 1) for i in range(cfg.blocks)]
        self.features = nn.Sequential(_conv_bn(n_mels, c, 3, 1), *blocks)
        self.head = nn.Sequential(nn.Dropout(cfg.dropout), nn.Linear(c, n_classes))

    def forward(self, mels: torch.Tensor) -> torch.Tensor:
        # Mean over time: the keyword may sit anywhere in the clip; the channels already carry the spectrum's shape.
        return self.head(self.features(mels).mean(dim=2))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def save_model(model: nn.Module, path: Path, card: dict[str, Any]) -> None:
    """Weights plus the card needed to rebuild and feed the model (labels or tokens, front end, architecture, data
    version); load_model and load_transcriber read it back."""
    with atomic_path(path) as partial:
        torch.save({"state_dict": model.state_dict(), "card": card}, partial)


def load_model(path: Path) -> tuple[KeywordSpotter, dict[str, Any]]:
    """Rebuild a saved KeywordSpotter in eval mode, with its card."""
    if not Path(path).is_file():
        raise EarshotError(f"{path}: model not found; run the train stage first")
    saved = torch.load(path, weights_only=True)
    card = saved["card"]
    model = KeywordSpotter(feature_dims(Features(**card["features"])), len(card["label_names"]),
                           Model(**card["model"]))
    try:
        model.load_state_dict(saved["state_dict"])
    except RuntimeError as err:
        raise EarshotError(f"{path}: the weights do not fit this earshot's keyword model (saved by another "
                           f"version?): {str(err).splitlines()[0]}") from None
    return model.eval(), card
