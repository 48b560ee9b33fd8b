"""The keyword-spotting network: a DS-CNN (Hello Edge) over log-mel frames.

Small on purpose (tens of thousands of parameters) so it trains in minutes on 2 cores and runs on a wearable.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from components.config import Model
from components.errors import EarshotError
from components.files import atomic_path


def _conv_bn(c_in: int, c_out: int, kernel: tuple[int, int], stride: tuple[int, int], groups: int) -> nn.Sequential:
    padding = (kernel[0] // 2, kernel[1] // 2)
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel, stride, padding, groups=groups, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class KeywordSpotter(nn.Module):
    """Log-mel (batch, n_mels, frames) -> class logits (batch, n_classes)."""

    def __init__(self, n_mels: int, n_classes: int, cfg: Model) -> None:
        super().__init__()
        c = cfg.channels
        layers: list[nn.Module] = [_conv_bn(1, c, (10, 4), (2, 2), groups=1)]
        for _ in range(cfg.blocks):
            layers += [_conv_bn(c, c, (3, 3), (1, 1), groups=c), _conv_bn(c, c, (1, 1), (1, 1), groups=1)]
        self.features = nn.Sequential(*layers)
        bands = self.features(torch.zeros(1, 1, n_mels, 16)).shape[2]
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(cfg.dropout), nn.Linear(c * bands, n_classes))

    def forward(self, mels: torch.Tensor) -> torch.Tensor:
        # Pool over time only: where energy sits in frequency is what tells words (and tones) apart.
        return self.head(self.features(mels.unsqueeze(1)).mean(dim=3))


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
    model = KeywordSpotter(card["features"]["n_mels"], len(card["label_names"]), Model(**card["model"]))
    model.load_state_dict(saved["state_dict"])
    return model.eval(), card
