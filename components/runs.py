"""A training run's bookkeeping, the same for every track: where its files go and what it logs to MLflow.

Each track's stages call these, so a reviewer finds the same artifacts (data docs, curves, mistakes, export, package)
in the same places of every run.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import mlflow
import pandas as pd
import torch
from mlflow.models import infer_signature
from rich.console import Console

from components.config import Params
from components.errors import EarshotError
from components.export import ExportReport, ParityError
from components.files import write_csv, write_text_atomically
from components.ingest import LEDGER, DropError, DropKind, IngestReport, ingest_drop
from components.review import ReviewClip, write_review_clips
from components.serving import package_model
from components.tracking import resume_run, use_store
from components.validate import document_training_data, training_facts
from components.versioning import commit_data_version

console = Console()

MODEL_FILE = "model.pt"
PACKAGE_DIR = "package"  # the exported model as an MLflow pyfunc: what `earshot predict` and the registry serve


def model_file(params: Params) -> Path:
    return params.out.model_dir / MODEL_FILE


def run_file(params: Params) -> Path:
    return params.out.model_dir / "run.json"


def write_json(path: Path, payload: object) -> None:
    write_text_atomically(path, json.dumps(payload, indent=2, sort_keys=True) + "\n")


def read_json(path: Path) -> dict:
    if not path.is_file():
        raise EarshotError(f"{path}: not found; run the stage that writes it first")
    return json.loads(path.read_text())


def report_epoch(metrics: dict[str, float], shown: dict[str, str] | None = None, prefix: str = "") -> None:
    """Log one epoch's metrics to the active run (names under `prefix`) and print one line: each of `shown`
    (metric -> label and format, e.g. "val {:.1%}"), or every metric to 3 decimals when None."""
    mlflow.log_metrics({prefix + k: v for k, v in metrics.items()}, step=int(metrics["epoch"]))
    shown = shown or {k: f"{k} {{:.3f}}" for k in metrics if k != "epoch"}
    console.print(f"{prefix}epoch {int(metrics['epoch']):>3}  " + "  ".join(label.format(metrics[k])
                                                                           for k, label in shown.items()),
                  highlight=False)


def record_training(model: torch.nn.Module, example: torch.Tensor, summary: dict[str, object],
                    history: list[dict[str, float]], out: Path) -> None:
    """Log the trained model with its signature and an input example (MLflow's pt2 format needs one; two clips keep
    its export from pinning the batch axis to 1); write train_metrics.json and history.csv for DVC."""
    with torch.no_grad():
        signature = infer_signature(example.numpy(), model(example).numpy())
    mlflow.pytorch.log_model(model, name="model", input_example=example.numpy(), signature=signature)
    write_json(out / "train_metrics.json", summary)
    write_csv(out / "history.csv", history, list(history[0]))


def record_data_docs(params: Params, files: pd.DataFrame, labels: list[str], quiet_labels: set[str]) -> None:
    """Check the files this run trains on (columns file, label, domain, split) with Great Expectations and log the
    Data Docs to the run as `data_docs/`, so a reviewer sees what the model learned from."""
    docs = params.out.reports / "data_docs"
    shutil.rmtree(docs, ignore_errors=True)
    facts = training_facts(files)
    failures = document_training_data(facts, params.ingest, labels, quiet_labels, docs)
    mlflow.log_artifacts(str(docs), artifact_path="data_docs")
    mlflow.log_metrics({"data.files": len(facts), "data.expectation_failures": len(failures)})
    for failure in failures[:3]:
        console.print(f"data docs: {failure.file}: {failure.expectation} observed {failure.observed}", highlight=False)


def record_mistakes(params: Params, clips: list[ReviewClip]) -> None:
    """Write a few misclassified clips (audio + log-mel image) to reports/<track>/misclassified and log them to the
    open run as `review/misclassified/`."""
    folder = params.out.reports / "misclassified"
    shutil.rmtree(folder, ignore_errors=True)
    write_review_clips(clips, folder)
    if clips:
        mlflow.log_artifacts(str(folder), artifact_path="review/misclassified")


def record_export(params: Params, run_export: Callable[[], ExportReport]) -> ExportReport:
    """Run an export and log its figures and files to the training run, whatever the parity verdict.

    A parity failure is logged like any export, then raised: `dvc repro` stops, the gate records the refusal.
    """
    failure = None
    try:
        report = run_export()
    except ParityError as err:
        failure, report = err, err.report
    write_json(params.out.reports / "export.json", report.to_dict())
    with resume_run(params, run_file(params)):
        mlflow.log_dict(report.to_dict(), "export/export.json")
        for row in report.to_dict()["variants"]:
            mlflow.log_metrics({f"export.{row['name']}.{k}": v for k, v in row.items() if isinstance(v, (int, float))})
        record_package(params)
    if failure is not None:
        raise failure
    return report


def record_package(params: Params, extra: dict[str, object] | None = None) -> None:
    """Package the exported ONNX files with the model card's front end (plus `extra`) as an MLflow pyfunc in
    models/<track>/package and log it as the open run's `export/`, the folder a registered version serves."""
    track = mlflow.active_run().data.tags["track"]  # the training run's tag: the package serves that track's schema
    card = torch.load(model_file(params), weights_only=True)["card"] | {"track": track} | (extra or {})
    package = package_model(params.out.model_dir, card, params.out.model_dir / PACKAGE_DIR)
    mlflow.log_artifacts(str(package), artifact_path="export")


def versioned_ingest(params: Params, kind: DropKind, drop: Path, domain: str) -> IngestReport:
    """Validate and ingest a drop into `domain`, commit the new data version to DVC and git, log the validation
    (Data Docs, quarantine reasons) to an MLflow run; DropError if the drop was refused as a whole."""
    report = ingest_drop(kind, drop, domain, params.out.reports / "validation")
    if report.already_ingested:
        return report
    root = Path(kind.cfg.root)
    if not report.drop_rejected:
        commit_data_version(root / domain, root / LEDGER,
                            f"data: ingest {Path(drop).name} into {domain} (data version {report.data_version})")
    use_store(params.mlflow)
    with mlflow.start_run(run_name=f"ingest {Path(drop).name}", tags={
            "stage": "ingest", "track": kind.track, "drop_id": report.drop_id, "domain": domain,
            "data_version": report.data_version}):
        mlflow.log_metrics({"accepted": report.accepted, "rejected": report.rejected})
        if report.docs_dir:
            mlflow.log_artifacts(str(report.docs_dir), artifact_path="data_docs")
        if report.quarantine:
            mlflow.log_artifact(str(report.quarantine / "reasons.csv"), artifact_path="quarantine")
    if report.drop_rejected:
        raise DropError(report.drop_rejected)
    return report
