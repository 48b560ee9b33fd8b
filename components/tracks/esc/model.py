"""The sound-event network: a small 2-D CNN over (mel, time) log-mels, pooled over time, for clips of any length.

Regular 3x3 convolutions halve mel and time in every block; mean and max over the real frames make one vector per
clip, then a linear head.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from components.errors import EarshotError

# Channels double from block to block up to this multiple of the first block's: width is where the parameters go.
MAX_WIDTH_FACTOR = 8


def min_frames(blocks: int) -> int:
    """The shortest clip, in frames, a network of `blocks` blocks takes: each block halves time, the last keeps one."""
    return 2**blocks


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


def _real_frames(lengths: torch.Tensor, frames: int, dims: int) -> torch.Tensor:
    """(batch, 1, ..., frames) boolean mask of the frames before each clip's length, for a tensor of `dims` dims."""
    return torch.arange(frames) < lengths.view(-1, *[1] * (dims - 1))


def _zero_padding(x: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
    """x with every frame past its clip's length set to zero: what a 3x3 convolution's own padding feeds a lone clip."""
    return x if lengths is None else x * _real_frames(lengths, x.shape[-1], x.dim())


class SoundEventNet(nn.Module):
    """Log-mel (batch, n_mels, frames) and optional real frame counts (batch,) -> class logits (batch, n_classes).

    With `lengths`, frames past a clip's length are padding and change nothing: a clip scores the same alone (no
    lengths: every frame is real, the form that is exported) as padded in a batch. Clips need min_frames(blocks).
    """

    def __init__(self, *, n_mels: int, n_classes: int, channels: int = 16, blocks: int = 4,
                 dropout: float = 0.2) -> None:
        super().__init__()
        # Mel bands halve in every block too.
        if n_mels < min_frames(blocks):
            raise ValueError(f"n_mels {n_mels} is below 2**blocks = {min_frames(blocks)}: the mel axis would pool away")
        widths = [channels * min(2**i, MAX_WIDTH_FACTOR) for i in range(blocks)]
        inputs = [1, *widths[:-1]]
        self.blocks = nn.ModuleList(_block(c_in, c_out) for c_in, c_out in zip(inputs, widths, strict=True))
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(2 * widths[-1], n_classes))

    def forward(self, mels: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        # Clips come at random gains, a constant offset in log-mel that says nothing of the class: remove it per clip.
        if lengths is None:
            x = mels - mels.mean(dim=(1, 2), keepdim=True)
        else:
            real = _real_frames(lengths, mels.shape[-1], 3)
            level = (mels * real).sum(dim=(1, 2), keepdim=True) / (lengths.view(-1, 1, 1) * mels.shape[1])
            x = mels - level
        x = x.unsqueeze(1)
        for block in self.blocks:
            x = block(_zero_padding(x, lengths))
            # MaxPool2d floors: a pooled frame that took in padding is past the new length and zeroed next.
            lengths = None if lengths is None else lengths // 2
        return self.head(self._pool_time(x.mean(dim=2), lengths))

    @staticmethod
    def _pool_time(x: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
        """(batch, channels, frames) -> (batch, 2 * channels): mean and max over each clip's real frames."""
        if lengths is None:
            return torch.cat([x.mean(dim=2), x.amax(dim=2)], dim=1)
        real = _real_frames(lengths, x.shape[-1], 3)
        mean = (x * real).sum(dim=2) / lengths.view(-1, 1)
        return torch.cat([mean, x.masked_fill(~real, float("-inf")).amax(dim=2)], dim=1)


def load_sound_model(path: Path) -> tuple[SoundEventNet, dict[str, Any]]:
    """Rebuild a saved SoundEventNet in eval mode, with its card (save_model wrote both)."""
    if not Path(path).is_file():
        raise EarshotError(f"{path}: model not found; run the train stage first")
    saved = torch.load(path, weights_only=True)
    card = saved["card"]
    model = SoundEventNet(n_mels=card["features"]["n_mels"], n_classes=len(card["label_names"]), **card["model"])
    try:
        model.load_state_dict(saved["state_dict"])
    except RuntimeError as err:
        raise EarshotError(f"{path}: the weights do not fit this earshot's sound-event model: "
                           f"{str(err).splitlines()[0]}") from None
    return model.eval(), card
