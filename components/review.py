"""What a reviewer opens in the MLflow UI before trusting a promotion: champion against challenger domain by domain,
and a few of the challenger's mistakes to listen to and look at.

Plots and clips are written to files; the stages log them to the training run.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402
import torch  # noqa: E402

from components.evaluate import LabelledClips  # noqa: E402

MISTAKES = 6  # a few to listen to; more would only bury the run's artifacts


@dataclass(frozen=True)
class ReviewClip:
    """One clip the model got wrong: the audio it heard, the log-mel it saw and what it said."""

    audio: np.ndarray  # float32 mono
    rate: int
    mel: torch.Tensor  # (n_mels, frames)
    actual: str
    predicted: str
    domain: str
    source: str


def pick_mistakes(predicted: Sequence[int], test: LabelledClips, seed: int, count: int = MISTAKES) -> list[int]:
    """Up to `count` rows the model got wrong, taken from each domain in turn (seeded), so one noisy domain does
    not fill the sample."""
    wrong = (torch.as_tensor(predicted) != test.labels).nonzero().flatten()
    order = wrong[torch.randperm(len(wrong), generator=torch.Generator().manual_seed(seed))].tolist()
    by_domain: dict[int, list[int]] = {}
    for row in order:
        by_domain.setdefault(int(test.domains[row]), []).append(row)
    queues = [by_domain[d] for d in sorted(by_domain)]
    picked: list[int] = []
    for turn in range(max(map(len, queues), default=0)):
        picked += [queue[turn] for queue in queues if turn < len(queue)]
    return picked[:count]


def write_review_clips(clips: Sequence[ReviewClip], folder: Path) -> list[Path]:
    """Each clip as a WAV to listen to and a PNG of its log-mel, named `<n>_<actual>_as_<predicted>` (shortened)."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for number, clip in enumerate(clips, 1):
        stem = folder / f"{number:02d}_{_slug(clip.actual)}_as_{_slug(clip.predicted)}"
        sf.write(stem.with_suffix(".wav"), clip.audio, clip.rate, subtype="PCM_16")
        fig, ax = plt.subplots(figsize=(6, 3))
        ax.imshow(clip.mel.float().numpy(), origin="lower", aspect="auto", cmap="magma")
        ax.set_xlabel("frame")
        ax.set_ylabel("mel band")
        ax.set_title(f"{clip.actual} heard as {clip.predicted} ({clip.domain})\n{Path(clip.source).name}", fontsize=9)
        fig.tight_layout()
        fig.savefig(stem.with_suffix(".png"), dpi=90)
        plt.close(fig)
        written += [stem.with_suffix(".wav"), stem.with_suffix(".png")]
    return written


def _slug(text: str) -> str:
    """A label or transcript as a short, safe piece of a file name."""
    return re.sub(r"[^A-Za-z0-9_]+", "-", text).strip("-")[:40] or "nothing"


def plot_domain_comparison(challenger: dict[str, float], champion: dict[str, float] | None, metric: str,
                           title: str, path: Path) -> None:
    """Bars per acoustic domain, challenger beside champion (challenger alone when there is none yet)."""
    domains = sorted(set(challenger) | set(champion or {}))
    x = np.arange(len(domains))
    width = 0.4 if champion is not None else 0.6
    fig, ax = plt.subplots(figsize=(max(5.0, 1.2 * len(domains) + 2), 3.8))
    series = [("challenger", challenger, "tab:orange")]
    if champion is not None:
        series.insert(0, ("champion", champion, "tab:blue"))
    for i, (name, figures, colour) in enumerate(series):
        offset = (i - (len(series) - 1) / 2) * width
        values = [100 * figures.get(d, float("nan")) for d in domains]
        bars = ax.bar(x + offset, values, width, label=name, color=colour)
        ax.bar_label(bars, fmt="%.1f", fontsize=7)
    ax.set_xticks(x, domains, rotation=20, ha="right")
    ax.set_ylabel(f"{metric} (%)")
    shown = [100 * v for figures in (challenger, champion or {}) for v in figures.values() if math.isfinite(v)]
    highest = max([100.0, *shown])
    ax.set_ylim(0, 1.18 * highest)  # headroom for the legend (a WER can pass 100 %)
    ax.set_title(title)
    ax.legend(loc="upper center", ncols=2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
