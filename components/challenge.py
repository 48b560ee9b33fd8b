"""The challenger against the champion: re-scoring the champion, the gate's reports, and the registry's decision.

Every track ends its loop here; the classifier tracks (keywords, sound events) also share the scoring of their INT8
models on a labelled test set.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path

import mlflow
import torch

from components.config import Gate, Params
from components.evaluate import LabelledClips
from components.export import INT8_FILE, onnx_predictions
from components.files import write_text_atomically
from components.gate import (
    Candidate,
    GateReport,
    TranscriberCandidate,
    gate_challenger,
    pick_golden,
    scored_candidate,
)
from components.registry import (
    CHAMPION,
    champion,
    deployable_files,
    finish_decision,
    gated_version,
    promote,
    register_candidate,
    registry_client,
    reject,
)
from components.review import plot_domain_comparison
from components.runs import model_file, read_json, run_file
from components.tracking import resume_run
from components.versioning import git_commit

DOMAIN_CHART = "domains.png"  # per-domain bars, challenger beside champion


@dataclass(frozen=True)
class ChampionScore:
    """The champion's INT8 model re-scored on today's test split: the drift signal and the gate's baseline."""

    version: str
    answers: torch.Tensor | list[str]  # per test row: a classifier's top-1 class, a transcriber's transcript
    candidate: Candidate | TranscriberCandidate
    metric: str = "accuracy"  # what candidate.per_domain holds

    def drift(self, new_domain: str | None) -> dict[str, float]:
        """The metric on the new domain next to its mean over the domains the champion already knew."""
        known = [v for d, v in self.candidate.per_domain.items() if d != new_domain]
        figures = {"known_domains": sum(known) / len(known) if known else float("nan")}
        if new_domain is not None:
            figures["new_domain"] = self.candidate.per_domain.get(new_domain, float("nan"))
        return figures


@dataclass(frozen=True)
class GateInputs:
    """What a classifier's gate scores challenger and champion on, its thresholds, and where golden clips come from."""

    test: LabelledClips
    thresholds: Gate
    golden_domains: Collection[str]


@dataclass(frozen=True)
class ClassifierGate:
    """A classifier track's champion re-scoring and gate, both on the test set `inputs` reads for the track."""

    inputs: Callable[[Params], GateInputs]

    def score_champion(self, params: Params, version: str) -> ChampionScore:
        return score_champion(params, version, self.inputs(params).test)

    def gate(self, params: Params, new_domain: str | None, champion_score: ChampionScore | None) -> GateReport:
        return gate_classifier(params, self.inputs(params), new_domain, champion_score)


def champion_version(params: Params) -> str | None:
    current = champion(registry_client(params.mlflow), params.mlflow.registered_model)
    return str(current.version) if current else None


def score_champion(params: Params, version: str, test: LabelledClips) -> ChampionScore:
    """Download champion `version` and run its INT8 model on `test`, every domain of today's test set."""
    client, name = registry_client(params.mlflow), params.mlflow.registered_model
    with tempfile.TemporaryDirectory() as scratch:
        folder = deployable_files(client, name, version, Path(scratch))
        top1 = onnx_predictions(folder / INT8_FILE, test.mels)
    tags = client.get_model_version(name, version).tags
    candidate = scored_candidate(top1, test, float(tags.get("int8_parity", "nan")),
                                 float(tags.get("int8_latency_ms", "nan")), int(tags.get("int8_size_bytes", 0)))
    return ChampionScore(version, top1, candidate)


def int8_figures(params: Params) -> dict[str, object]:
    """The INT8 row of the last export report, its latency per clip with the front end's: what the gate judges and
    the registry records."""
    exported = read_json(params.out.reports / "export.json")
    row = next(row for row in exported["variants"] if row["name"] == "onnx_int8")
    return row | {"latency_ms_p50": row["latency_ms_p50"] + exported.get("front_end_ms_p50", 0.0)}


def classifier_figures(params: Params) -> tuple[dict[str, str], str]:
    """The INT8 figures a classifier's version is tagged with (the next gate reads them back), and a summary."""
    int8 = int8_figures(params)
    return ({"int8_parity": str(int8["agreement_with_torch"]), "int8_latency_ms": str(int8["latency_ms_p50"]),
             "int8_size_bytes": str(int8["size_bytes"])},
            f"INT8 ONNX: {int8['size_bytes'] / 1024:.1f} KiB, {int8['latency_ms_p50']:.3f} ms p50 (1 thread), "
            f"accuracy {int8['accuracy']:.2%}.")


def gate_classifier(params: Params, inputs: GateInputs, new_domain: str | None,
                    champion_score: ChampionScore | None) -> GateReport:
    """Run the regression gate on the exported classifier; write reports/gate.{json,md}; log them to its run."""
    test, thresholds = inputs.test, inputs.thresholds
    int8 = int8_figures(params)
    golden = {} if champion_score is None else pick_golden(
        test, champion_score.answers, inputs.golden_domains, thresholds.golden_clips, params.seed)
    challenger = scored_candidate(onnx_predictions(params.out.model_dir / INT8_FILE, test.mels), test,
                                  int8["agreement_with_torch"], int8["latency_ms_p50"], int8["size_bytes"], golden)
    report = gate_challenger(challenger, champion_score.candidate if champion_score else None, thresholds,
                             new_domain, golden)
    metrics = {f"int8.test_accuracy.{d}": v for d, v in challenger.per_domain.items()}
    if champion_score is not None:
        metrics |= ({f"drift.champion_accuracy.{k}": v for k, v in champion_score.drift(new_domain).items()}
                    | {f"champion.test_accuracy.{d}": v for d, v in champion_score.candidate.per_domain.items()})
    record_gate(params, report, "INT8 accuracy", challenger.per_domain,
                (champion_score.version, champion_score.candidate.per_domain) if champion_score else None, metrics)
    return report


def record_gate(params: Params, report: GateReport, metric: str, challenger: dict[str, float],
                champion_figures: tuple[str, dict[str, float]] | None, metrics: dict[str, float]) -> None:
    """Write reports/<track>/gate.{json,md} and domains.png (the challenger beside the champion, given as version and
    per-domain figures), and log them with `metrics` to the challenger's run."""
    reports = params.out.reports
    write_text_atomically(reports / "gate.json", report.to_json())
    write_text_atomically(reports / "gate.md", report.to_markdown())
    against = f"champion v{champion_figures[0]}" if champion_figures else "no champion yet"
    plot_domain_comparison(challenger, champion_figures[1] if champion_figures else None, metric,
                           f"challenger vs {against}: gate {'passed' if report.passed else 'refused'}",
                           reports / DOMAIN_CHART)
    with resume_run(params, run_file(params)):
        for name in ("gate.json", "gate.md", DOMAIN_CHART):
            mlflow.log_artifact(str(reports / name), artifact_path="gate")
        mlflow.log_metrics({"gate.passed": float(report.passed)} | metrics)
        if champion_figures is not None:
            mlflow.set_tag("champion_version", champion_figures[0])


@dataclass(frozen=True)
class Decision:
    version: str  # the challenger's registered version
    promoted: bool
    alias: str  # champion, the rejected-<time> alias it got, or "" (passed, but a newer version is champion)


def decide(params: Params, report: GateReport, new_domain: str | None,
           figures: tuple[dict[str, str], str]) -> Decision:
    """Register the challenger with its model card (`figures`: the track's version tags and a one-line summary); a
    pass becomes champion, a refusal keeps its reasons."""
    client, name = registry_client(params.mlflow), params.mlflow.registered_model
    run_id = json.loads(run_file(params).read_text())["run_id"]
    run = client.get_run(run_id).data
    version_tags, summary = figures
    tags = {"gate": "passed" if report.passed else "refused", "training_key": run.tags["training_key"],
            "track": run.tags["track"], "dataset_version": run.tags["dataset_version"],
            "ingested_data_version": run.tags.get("ingested_data_version", "none"),
            "git_commit": git_commit(Path.cwd()), "new_domain": new_domain or ""} | version_tags
    domains = torch.load(model_file(params), weights_only=True)["card"]["domain_names"]
    card = "\n".join([f"{tags['track']} model trained in run `{run_id}` on data version `{tags['dataset_version']}` "
                      f"(ingested data `{tags['ingested_data_version']}`, git `{tags['git_commit']}`).", "",
                      f"Acoustic domains: {', '.join(domains)}.", "", *_card_metrics(run.metrics),
                      "", summary, "", report.to_markdown()])
    earlier = gated_version(client, name, tags["training_key"])
    if earlier is not None and earlier.run_id == run_id:
        # A retry after the store went away midway: this run's version exists, so finish it rather than add another.
        version = str(earlier.version)
        finish_decision(client, name, earlier)
    else:
        version = str(register_candidate(client, name, run_id, f"runs:/{run_id}/export", tags, card).version)
        if report.passed:
            promote(client, name, version, reason=f"gate passed (new domain: {new_domain or 'none'})")
        else:
            reject(client, name, version, [f"{c.name}: {c.observed} (needs {c.threshold})" for c in report.failures])
    aliases = client.get_model_version(name, version).aliases
    return Decision(version, CHAMPION in aliases,
                    next((a for a in aliases if a == CHAMPION or a.startswith("rejected-")), ""))


def _card_metrics(metrics: dict[str, float]) -> list[str]:
    """The run's test figures (overall and per domain; not per class or fold) as a Markdown table for the card."""
    shown = sorted(k for k in metrics if k.startswith(("test_", "cv.mean", "cv.std", "cv.domain.", "holdout."))
                   and ".class." not in k)
    return ["| metric | value |", "|---|---|", *(f"| {k} | {metrics[k]:.2%} |" for k in shown)]
