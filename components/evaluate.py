"""Evaluation on the held-out test split: accuracy overall, per class and per acoustic domain, confusion matrix.

Per-domain figures are what tell a team that a new accent or room hurts the model before users notice.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from components.wer import WerReport  # noqa: E402


class LabelledClips(Protocol):
    """Test clips as scoring sees them: label and domain ids with their names, and each clip's source file."""

    labels: torch.Tensor
    domains: torch.Tensor
    label_names: list[str]
    domain_names: list[str]
    sources: list[str]


@dataclass(frozen=True)
class Evaluation:
    accuracy: float
    per_class: dict[str, float]
    per_domain: dict[str, float]
    confusion: list[list[int]]  # rows: actual label, columns: predicted label
    clips: int
    predictions: list[int]
    # Per voice source (a synthesizer, "recorded", "background"): what tells a model that learned one engine's
    # voice from one that learned the words.
    per_engine: dict[str, float] = field(default_factory=dict)

    def metrics(self) -> dict[str, object]:
        """The figures for metrics.json, `dvc metrics show` and MLflow."""
        return {"accuracy": self.accuracy, "clips": self.clips, "per_domain": self.per_domain,
                "per_class": self.per_class} | ({"per_engine": self.per_engine} if self.per_engine else {})

    def to_markdown(self) -> str:
        """Accuracy per domain and per class as tables, for reports/<track>/evaluation.md and the MLflow run."""
        lines = [f"## Test accuracy {self.accuracy:.2%} on {self.clips} clips", "", "| domain | accuracy |",
                 "|---|---|", *(f"| {d} | {v:.2%} |" for d, v in self.per_domain.items()), "",
                 *(["| voice source | accuracy |", "|---|---|",
                    *(f"| {e} | {v:.2%} |" for e, v in self.per_engine.items()), ""] if self.per_engine else []),
                 "| class | accuracy |", "|---|---|", *(f"| {c} | {v:.2%} |" for c, v in self.per_class.items())]
        return "\n".join(lines) + "\n"


@torch.no_grad()
def predict(model: torch.nn.Module, mels: torch.Tensor, batch: int = 512) -> torch.Tensor:
    model.eval()
    return torch.cat([model(chunk).argmax(1) for chunk in mels.split(batch)]) if len(mels) else torch.empty(0).long()


def evaluate_predictions(predicted: torch.Tensor, test: LabelledClips, engines: list[str] | None = None) -> Evaluation:
    """Score predicted label indices against the test split's labels, sliced by class, by domain and, given each
    clip's voice source (`engines`), by source."""
    correct = (predicted == test.labels).float()

    def share(mask: torch.Tensor) -> float:
        return correct[mask].mean().item() if mask.any() else float("nan")

    n = len(test.label_names)
    confusion = torch.zeros(n, n, dtype=torch.long)
    confusion.index_put_((test.labels, predicted), torch.ones_like(predicted), accumulate=True)
    return Evaluation(
        accuracy=correct.mean().item() if len(correct) else float("nan"),
        per_class={name: share(test.labels == i) for i, name in enumerate(test.label_names)},
        per_domain={name: share(test.domains == i) for i, name in enumerate(test.domain_names)},
        confusion=confusion.tolist(),
        clips=len(correct),
        predictions=predicted.tolist(),
        per_engine={e: share(torch.tensor([x == e for x in engines], dtype=torch.bool))
                    for e in sorted(set(engines))} if engines else {},
    )


def plot_confusion(confusion: list[list[int]], labels: list[str], title: str, path: Path) -> None:
    """A confusion-matrix heat map with counts (rows actual, columns predicted), for the MLflow UI."""
    matrix = torch.tensor(confusion)
    fig, ax = plt.subplots(figsize=(7, 6))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=60, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    ax.set_title(title)
    for (row, col), count in zip(torch.cartesian_prod(torch.arange(len(labels)), torch.arange(len(labels))).tolist(),
                                 matrix.flatten().tolist(), strict=True):
        if count:
            ax.text(col, row, count, ha="center", va="center", fontsize=7,
                    color="white" if count > matrix.max() / 2 else "black")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_domain_wer(report: WerReport, path: Path) -> None:
    """WER and CER per acoustic domain as bars, for the MLflow UI and `dvc plots`."""
    names = list(report.per_domain)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.bar(names, [report.per_domain[n].wer * 100 for n in names], label="WER")
    ax.bar(names, [report.per_domain[n].cer * 100 for n in names], width=0.4, label="CER")
    ax.set_ylabel("% (lower is better)")
    ax.set_title(f"test WER {report.wer:.1%} on {report.utterances} utterances")
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def classifier_rows(metrics: dict, exported: dict) -> list[tuple[str, str]]:
    """A classifier's per-domain accuracy, its exported models' size, speed and accuracy, and its front end's cost."""
    rows = [(f"  {domain}", f"{accuracy:.2%}") for domain, accuracy in metrics["per_domain"].items()]
    rows += [(row["name"], f"{row['size_bytes'] / 1024:.1f} KiB · {row['latency_ms_p50']:.3f} ms p50 (1 thread) · "
                           f"accuracy {row['accuracy']:.2%}") for row in exported["variants"]]
    if "front_end_ms_p50" in exported:
        rows.append(("front end", f"{exported['front_end_ms_p50']:.3f} ms p50 per clip (1 thread), before any of "
                                  "the above"))
    return rows
