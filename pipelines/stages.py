"""The pipeline stages: each reads its inputs from the paths in params.yaml, calls the components, writes outputs.

`dvc repro` reaches these through the CLI and the Prefect flows call them as tasks: one copy of every stage.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from collections.abc import Callable, Collection
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import mlflow
import pandas as pd
import torch
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from rich.console import Console

from components import distributed
from components.config import Gate, Params
from components.corpus import synthesize_corpus
from components.dataset import (
    SHARD_INDEX,
    SILENCE,
    SPLITS,
    AudioError,
    ClipCache,
    KwsData,
    build_dataset,
    index_speech_commands,
)
from components.errors import EarshotError
from components.evaluate import Evaluation, LabelledClips, evaluate_predictions, plot_confusion, predict
from components.export import (
    INT8_FILE,
    ExportReport,
    ParityError,
    export_models,
    front_end_latency_ms,
    onnx_predictions,
)
from components.features import front_end
from components.files import write_csv, write_text_atomically
from components.gate import Candidate, GateReport, gate_challenger, pick_golden, scored_candidate
from components.ingest import LEDGER, DropError, IngestReport, ingest_drop, ingested_domains, ledger_rows
from components.model import KeywordSpotter, count_parameters, load_model, save_model
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
from components.review import ReviewClip, pick_mistakes, plot_domain_comparison, write_review_clips
from components.serving import package_model
from components.tracking import resume_run, training_run, use_store
from components.train import run_fingerprint, teacher_params, train_model
from components.validate import document_training_data, training_facts
from components.versioning import commit_data_version, git_commit

console = Console()


MODEL_FILE = "model.pt"
PACKAGE_DIR = "package"  # the exported model as an MLflow pyfunc: what `earshot predict` and the registry serve
DOMAIN_CHART = "domains.png"  # per-domain bars, challenger beside champion


def model_file(params: Params) -> Path:
    return params.out.model_dir / MODEL_FILE


def run_file(params: Params) -> Path:
    return params.out.model_dir / "run.json"


def write_json(path: Path, payload: object) -> None:
    write_text_atomically(path, json.dumps(payload, indent=2, sort_keys=True) + "\n")


def domain_roots(params: Params) -> dict[str, list[Path]]:
    """Every tree the model trains on: the configured domains, then each domain that drops were ingested into."""
    roots = {name: [path] for name, path in params.dataset.domains.items()}
    for name, path in ingested_domains(params.ingest.root).items():
        roots.setdefault(name, []).append(path)
    return roots


def featurize_stage(params: Params) -> dict[str, str]:
    """Featurize each domain into its own shard, rebuilding only the domains whose files or settings changed.

    DVC sees one output folder; inside it a drop into a new domain costs only that domain's files.
    """
    out, syn = params.out.features, params.synthesis
    key = hashlib.sha256(json.dumps([params.dataset.sample_rate, params.dataset.clip_samples,
                                     params.features.model_dump()]).encode()).hexdigest()[:12]
    cache = ClipCache(params.paths.clip_cache, key)
    featurizer = front_end(params.features, params.dataset.sample_rate)
    settings = json.dumps([key, params.seed, params.dataset.model_dump(mode="json", exclude={"domains"}),
                           syn.validation_percentage, syn.testing_percentage])
    index_file = out / SHARD_INDEX
    built = json.loads(index_file.read_text()) if index_file.is_file() else {}
    index = {}
    roots = domain_roots(params)
    for domain, trees in roots.items():
        fingerprint = _domain_fingerprint(trees, cache, settings)
        if built.get(domain, {}).get("fingerprint") != fingerprint or not (out / f"{domain}.pt").is_file():
            part = build_dataset(params.dataset, params.seed, syn.validation_percentage, syn.testing_percentage,
                                 roots={domain: trees}, cache=cache, require_every_split=False)
            part.mels = cache.log_mels(part.waves, part.content, featurizer)
            part.save(out / f"{domain}.pt")
            built[domain] = {"fingerprint": fingerprint, "splits": torch.bincount(part.splits, minlength=3).tolist()}
        index[domain] = built[domain]
    cache.save()
    for stale in set(built) - set(index):
        (out / f"{stale}.pt").unlink(missing_ok=True)
    for i, split in enumerate(SPLITS):
        if not any(entry["splits"][i] for entry in index.values()):
            raise AudioError(f"{', '.join(map(str, roots))}: no {split} clips "
                             "(more speakers, or a larger split percentage)")
    # Not write_json: its sorted keys would reorder domains, and with them the rows training sees.
    write_text_atomically(index_file, json.dumps(index, indent=2) + "\n")
    return {domain: entry["fingerprint"] for domain, entry in index.items()}


def _domain_fingerprint(trees: list[Path], cache: ClipCache, settings: str) -> str:
    """The content of a domain's trees (file names and content hashes) and the settings its shard depends on."""
    lines = [settings]
    for number, tree in enumerate(trees):
        clips, backgrounds = index_speech_commands(tree)
        lines += sorted(f"{number}/{path.relative_to(tree)} {cache.digest(path)}"
                        for path in [c.path for c in clips] + backgrounds)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]


def training_key(params: Params) -> str:
    """What a trained model is a function of: the featurized data's version and every setting that shapes training.

    Tags the run and its registered version, names the checkpoint a killed run resumes from, and lets the loop skip
    data it has already trained and gated.
    """
    return run_fingerprint(params, KwsData.load(params.out.features).version)


def train(params: Params) -> str:
    """Train the keyword spotter, log it to MLflow with the data version, and save weights with their card.

    A training killed midway resumes from its checkpoint, inside the MLflow run it started. With distributed.nproc
    above 1 (or started by torchrun) each process trains on its share of every batch and rank 0 does the rest.
    """
    if params.distributed.nproc > 1 and not distributed.started():
        return distributed.launch(partial(train, params), params.distributed.nproc)[0]
    world = distributed.join()
    data = KwsData.load(params.out.features)
    out = params.out.model_dir
    checkpoint = out / "checkpoint.pt"
    if not world.leader:
        # Its share of every batch, the teacher's too; rank 0 alone logs, checkpoints and saves.
        teacher = train_model(data, teacher_params(params)).model if params.train.distill.teacher else None
        train_model(data, params, checkpoint=checkpoint, teacher=teacher)
        return ""
    ledger = ledger_rows(params.ingest.root)
    tags = {"dataset_version": data.version, "track": "kws", "training_key": run_fingerprint(params, data.version),
            "ingested_data_version": ledger[-1]["data_version"] if ledger else "none"}
    with training_run(params, run_file(params), tags=tags, resume=checkpoint.is_file()) as run:
        weights, origin = champion_weights(params, data.label_names)
        mlflow.set_tag("warm_start", origin)
        record_data_docs(params, _files(data), data.label_names, {SILENCE})
        teacher = _train_teacher(data, params)
        result = train_model(data, params, checkpoint=checkpoint, on_epoch=_report_epoch, initial_weights=weights,
                             teacher=teacher)
        card = {"label_names": data.label_names, "domain_names": data.domain_names,
                "features": params.features.model_dump(), "model": params.model.model_dump(),
                "sample_rate": params.dataset.sample_rate, "clip_samples": params.dataset.clip_samples,
                "dataset_version": data.version, "run_id": run.info.run_id}
        save_model(result.model, model_file(params), card)
        mlflow.log_artifact(str(model_file(params)), artifact_path="weights")  # what the next retraining starts from
        summary = {"best_epoch": result.best_epoch, "best_val_accuracy": result.best_val_accuracy,
                   "epochs_run": len(result.history), "parameters": count_parameters(result.model)}
        mlflow.log_metrics({"best_val_accuracy": result.best_val_accuracy, "parameters": summary["parameters"]})
        mlflow.set_tag("resumed_from_epoch", str(result.resumed_from_epoch))
        record_training(result.model, data.split("validation").mels[:2].float(), summary, result.history, out)
        return run.info.run_id


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


def _files(data: KwsData) -> pd.DataFrame:
    """The file behind every clip (silence: the background file it was cut from) with its label, domain, split."""
    labels = [data.label_names[i] for i in data.labels]
    return pd.DataFrame({"file": [source.rsplit("@", 1)[0] if label == SILENCE else source
                                  for source, label in zip(data.sources, labels, strict=True)],
                         "label": labels, "domain": [data.domain_names[i] for i in data.domains],
                         "split": [SPLITS[i] for i in data.splits]})


def record_mistakes(params: Params, clips: list[ReviewClip]) -> None:
    """Write a few misclassified clips (audio + log-mel image) to reports/<track>/misclassified and log them to the
    open run as `review/misclassified/`."""
    folder = params.out.reports / "misclassified"
    shutil.rmtree(folder, ignore_errors=True)
    write_review_clips(clips, folder)
    if clips:
        mlflow.log_artifacts(str(folder), artifact_path="review/misclassified")


def champion_weights(params: Params, label_names: list[str]) -> tuple[dict[str, torch.Tensor] | None, str]:
    """The champion's weights when retraining may start from them, and a word on where training started."""
    if not params.train.warm_start:
        return None, "off"
    client, name = registry_client(params.mlflow), params.mlflow.registered_model
    current = champion(client, name)
    if current is None:
        return None, "scratch (no champion)"
    with tempfile.TemporaryDirectory() as scratch:
        try:
            path = mlflow.artifacts.download_artifacts(artifact_uri=f"runs:/{current.run_id}/weights/{MODEL_FILE}",
                                                       dst_path=scratch, tracking_uri=client.tracking_uri)
            model, card = load_model(Path(path))
        except MlflowException:
            return None, f"scratch (champion v{current.version} has no weights)"
        except EarshotError:
            return None, f"scratch (champion v{current.version} has another architecture)"
    same = (card["label_names"] == label_names and card["model"] == params.model.model_dump()
            and card["features"] == params.features.model_dump())
    if not same:
        return None, f"scratch (champion v{current.version} has other labels or settings)"
    return model.state_dict(), f"champion v{current.version}"


def _train_teacher(data: KwsData, params: Params) -> KeywordSpotter | None:
    """The distillation teacher of `train.distill`, trained first on the same data (its curves logged as
    `teacher.*`); None when distillation is off."""
    if params.train.distill.teacher is None:
        return None
    console.print(f"training the distillation teacher {params.train.distill.teacher.model_dump()}")
    result = train_model(data, teacher_params(params), on_epoch=partial(_report_epoch, prefix="teacher."))
    mlflow.log_metrics({"teacher.best_val_accuracy": result.best_val_accuracy,
                        "teacher.parameters": count_parameters(result.model)})
    return result.model


def _report_epoch(metrics: dict[str, float], prefix: str = "") -> None:
    mlflow.log_metrics({prefix + k: v for k, v in metrics.items()}, step=int(metrics["epoch"]))
    console.print(f"{prefix}epoch {int(metrics['epoch']):>3}  loss {metrics['train_loss']:.3f}  "
                  f"train {metrics['train_accuracy']:.1%}  val {metrics['val_accuracy']:.1%}", highlight=False)


def evaluate(params: Params) -> Evaluation:
    """Score the trained model on the test split of every domain; write metrics, predictions, a summary and a plot."""
    model, _ = load_model(model_file(params))
    test = KwsData.load(params.out.features).split("testing")
    evaluation = evaluate_predictions(predict(model, test.mels), test, test.engines)
    reports = params.out.reports
    write_json(reports / "metrics.json", evaluation.metrics())
    names = test.label_names
    write_csv(reports / "predictions.csv", [{"source": source, "actual": names[a], "predicted": names[p]}
                                            for source, a, p in zip(test.sources, test.labels.tolist(),
                                                                    evaluation.predictions, strict=True)],
              ["source", "actual", "predicted"])
    write_text_atomically(reports / "evaluation.md", evaluation.to_markdown())
    plot_confusion(evaluation.confusion, names, f"test accuracy {evaluation.accuracy:.1%} on {evaluation.clips} clips",
                   reports / "evaluation.png")
    with resume_run(params, run_file(params)):
        mlflow.log_metrics({"test_accuracy": evaluation.accuracy}
                           | {f"test_accuracy.{d}": v for d, v in evaluation.per_domain.items()}
                           | {f"test_accuracy.source.{e}": v for e, v in evaluation.per_engine.items()}
                           | {f"test_accuracy.class.{c}": v for c, v in evaluation.per_class.items()})
        for name in ("evaluation.png", "evaluation.md", "metrics.json"):
            mlflow.log_artifact(str(reports / name), artifact_path="evaluation")
        record_mistakes(params, [
            ReviewClip(test.waves[row].float().numpy() / 32768, params.dataset.sample_rate, test.mels[row],
                       names[test.labels[row]], names[evaluation.predictions[row]],
                       test.domain_names[test.domains[row]], test.sources[row])
            for row in pick_mistakes(evaluation.predictions, test, params.seed)])
    return evaluation


def export(params: Params) -> ExportReport:
    """ONNX FP32 and INT8 with a parity check; sizes, latencies and accuracies go to reports/export.json."""
    model, _ = load_model(model_file(params))
    data = KwsData.load(params.out.features)
    train_mels = data.split("training").mels
    picks = torch.randperm(len(train_mels), generator=torch.Generator().manual_seed(params.seed))
    test = data.split("testing")
    front_ms = front_end_latency_ms(front_end(params.features, params.dataset.sample_rate), test.float_waves()[:1],
                                    params.export.latency_runs)
    return record_export(params, lambda: export_models(model, train_mels[picks[: params.export.calibration_clips]],
                                                       test.mels, test.labels, params.export, params.out.model_dir,
                                                       front_end_ms=front_ms))


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
    card = torch.load(model_file(params), weights_only=True)["card"] | {"track": params.track} | (extra or {})
    package = package_model(params.out.model_dir, card, params.out.model_dir / PACKAGE_DIR)
    mlflow.log_artifacts(str(package), artifact_path="export")


@dataclass(frozen=True)
class ChampionScore:
    """The champion's INT8 model re-scored on today's test split: the drift signal and the gate's baseline."""

    version: str
    top1: torch.Tensor
    candidate: Candidate

    def drift(self, new_domain: str | None) -> dict[str, float]:
        """Accuracy on the new domain next to the mean over the domains it already knew."""
        known = [v for d, v in self.candidate.per_domain.items() if d != new_domain]
        figures = {"known_domains": sum(known) / len(known) if known else float("nan")}
        if new_domain is not None:
            figures["new_domain"] = self.candidate.per_domain.get(new_domain, float("nan"))
        return figures


def gate_inputs(params: Params) -> tuple[LabelledClips, Gate, Collection[str]]:
    """What the gate scores challenger and champion on (keywords: the test split; sound events: the holdout fold),
    its thresholds, and the domains golden clips are drawn from."""
    if params.track == "esc":
        from pipelines import sound_stages

        test = sound_stages.gate_test_set(params)
        return test, params.esc.gate, test.domain_names
    return KwsData.load(params.out.features).split("testing"), params.gate, params.dataset.domains


def champion_version(params: Params) -> str | None:
    current = champion(registry_client(params.mlflow), params.mlflow.registered_model)
    return str(current.version) if current else None


def score_champion(params: Params, version: str) -> ChampionScore:
    """Download champion `version`, run its INT8 model on the current test split of every domain."""
    client, name = registry_client(params.mlflow), params.mlflow.registered_model
    test, _, _ = gate_inputs(params)
    with tempfile.TemporaryDirectory() as scratch:
        folder = deployable_files(client, name, version, Path(scratch))
        top1 = onnx_predictions(folder / INT8_FILE, test.mels)
    tags = client.get_model_version(name, version).tags
    candidate = scored_candidate(top1, test, float(tags.get("int8_parity", "nan")),
                                 float(tags.get("int8_latency_ms", "nan")), int(tags.get("int8_size_bytes", 0)))
    return ChampionScore(version, top1, candidate)


def gate(params: Params, new_domain: str | None, champion_score: ChampionScore | None) -> GateReport:
    """Run the regression gate on the exported challenger; write reports/gate.{json,md}; log them to its run."""
    test, thresholds, golden_domains = gate_inputs(params)
    int8 = int8_figures(params)
    golden = {} if champion_score is None else pick_golden(
        test, champion_score.top1, golden_domains, thresholds.golden_clips, params.seed)
    challenger = scored_candidate(onnx_predictions(params.out.model_dir / INT8_FILE, test.mels), test,
                                  int8["agreement_with_torch"], int8["latency_ms_p50"], int8["size_bytes"], golden)
    report = gate_challenger(challenger, champion_score.candidate if champion_score else None, thresholds,
                             new_domain, golden)
    reports = params.out.reports
    write_text_atomically(reports / "gate.json", report.to_json())
    write_text_atomically(reports / "gate.md", report.to_markdown())
    plot_gate_domains(params, report, "INT8 accuracy", challenger.per_domain,
                      (champion_score.version, champion_score.candidate.per_domain) if champion_score else None)
    with resume_run(params, run_file(params)):
        for name in ("gate.json", "gate.md", DOMAIN_CHART):
            mlflow.log_artifact(str(reports / name), artifact_path="gate")
        mlflow.log_metrics({"gate.passed": float(report.passed)}
                           | {f"int8.test_accuracy.{d}": v for d, v in challenger.per_domain.items()})
        if champion_score is not None:
            mlflow.set_tag("champion_version", champion_score.version)
            mlflow.log_metrics({f"drift.champion_accuracy.{k}": v
                                for k, v in champion_score.drift(new_domain).items()}
                               | {f"champion.test_accuracy.{d}": v
                                  for d, v in champion_score.candidate.per_domain.items()})
    return report


def plot_gate_domains(params: Params, report: GateReport, metric: str, challenger: dict[str, float],
                      champion_figures: tuple[str, dict[str, float]] | None) -> None:
    """reports/<track>/domains.png: the challenger beside the champion (version, per-domain figures) per domain."""
    against = f"champion v{champion_figures[0]}" if champion_figures else "no champion yet"
    plot_domain_comparison(challenger, champion_figures[1] if champion_figures else None, metric,
                           f"challenger vs {against}: gate {'passed' if report.passed else 'refused'}",
                           params.out.reports / DOMAIN_CHART)


@dataclass(frozen=True)
class Decision:
    version: str  # the challenger's registered version
    promoted: bool
    alias: str  # champion, the rejected-<time> alias it got, or "" (passed, but a newer version is champion)


def decide(params: Params, report: GateReport, new_domain: str | None) -> Decision:
    """Register the challenger with its model card; a pass becomes champion, a refusal keeps its reasons."""
    client, name = registry_client(params.mlflow), params.mlflow.registered_model
    run_id = json.loads(run_file(params).read_text())["run_id"]
    run = client.get_run(run_id).data
    figures, summary = (_transcriber_figures if params.track == "asr" else _keyword_figures)(params)
    tags = {"gate": "passed" if report.passed else "refused", "training_key": run.tags["training_key"],
            "track": params.track, "dataset_version": run.tags["dataset_version"],
            "ingested_data_version": run.tags.get("ingested_data_version", "none"),
            "git_commit": git_commit(Path.cwd()), "new_domain": new_domain or ""} | figures
    domains = torch.load(model_file(params), weights_only=True)["card"]["domain_names"]
    card = "\n".join([f"{params.track} model trained in run `{run_id}` on data version `{tags['dataset_version']}` "
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


def _keyword_figures(params: Params) -> tuple[dict[str, str], str]:
    """The INT8 figures a keyword model version is tagged with (the next gate reads them back), and a summary."""
    int8 = int8_figures(params)
    return ({"int8_parity": str(int8["agreement_with_torch"]), "int8_latency_ms": str(int8["latency_ms_p50"]),
             "int8_size_bytes": str(int8["size_bytes"])},
            f"INT8 ONNX: {int8['size_bytes'] / 1024:.1f} KiB, {int8['latency_ms_p50']:.3f} ms p50 (1 thread), "
            f"accuracy {int8['accuracy']:.2%}.")


def _transcriber_figures(params: Params) -> tuple[dict[str, str], str]:
    """The same for a speech-to-text model: WER gap to FP32, real-time factor, size."""
    exported = read_json(params.out.reports / "export.json")
    int8 = next(row for row in exported["variants"] if row["name"] == "onnx_int8")
    return ({"int8_wer_gap_points": str(exported["int8_wer_gap_points"]), "int8_rtf": str(int8["rtf"]),
             "int8_size_bytes": str(int8["size_bytes"])},
            f"INT8 ONNX: {int8['size_bytes'] / 1024:.1f} KiB, real-time factor {int8['rtf']:.3f} (1 thread), "
            f"WER {int8['wer']:.2%} ({exported['int8_wer_gap_points']:+.2f} points vs FP32).")


def ingest(params: Params, drop: Path, domain: str) -> IngestReport:
    """Validate and ingest a drop into `domain`, version it in DVC and git, log the validation to MLflow."""
    report = ingest_drop(params, drop, domain, params.out.reports / "validation")
    if report.already_ingested:
        return report
    if not report.drop_rejected:
        commit_data_version(params.ingest.root / domain, params.ingest.root / LEDGER,
                            f"data: ingest {Path(drop).name} into {domain} (data version {report.data_version})")
    use_store(params.mlflow)
    with mlflow.start_run(run_name=f"ingest {Path(drop).name}", tags={
            "stage": "ingest", "drop_id": report.drop_id, "domain": domain, "data_version": report.data_version}):
        mlflow.log_metrics({"accepted": report.accepted, "rejected": report.rejected})
        if report.docs_dir:
            mlflow.log_artifacts(str(report.docs_dir), artifact_path="data_docs")
        if report.quarantine:
            mlflow.log_artifact(str(report.quarantine / "reasons.csv"), artifact_path="quarantine")
    if report.drop_rejected:
        raise DropError(report.drop_rejected)
    return report


def read_json(path: Path) -> dict:
    if not path.is_file():
        raise EarshotError(f"{path}: not found; run the stage that writes it first")
    return json.loads(path.read_text())


def int8_figures(params: Params) -> dict[str, object]:
    """The INT8 row of the last export report, its latency per clip with the front end's: what the gate judges and
    the registry records."""
    exported = read_json(params.out.reports / "export.json")
    row = next(row for row in exported["variants"] if row["name"] == "onnx_int8")
    return row | {"latency_ms_p50": row["latency_ms_p50"] + exported.get("front_end_ms_p50", 0.0)}


def gate_stage(params: Params) -> GateReport:
    """DVC's gate stage: the exported challenger against whichever model is champion now (absolute checks if none)."""
    version = champion_version(params)
    return gate(params, None, score_champion(params, version) if version else None)


def for_track(name: str) -> Callable[[Params], object]:
    """The stage `name` of the track params.track selects; every track writes the outputs dvc.yaml declares."""
    def run(params: Params) -> object:
        # Imported on use: the keyword track does not need the other tracks' modules.
        if params.track == "asr":
            from pipelines import asr_stages

            return getattr(asr_stages, name)(params)
        if params.track == "esc":
            from pipelines import sound_stages

            return getattr(sound_stages, name)(params)
        return KWS_STAGES[name](params)

    run.__name__ = name  # what Prefect names the task after
    return run


KWS_STAGES = {"synthesize": synthesize_corpus, "featurize": featurize_stage, "train": train, "evaluate": evaluate,
              "export": export, "gate": gate_stage, "training_key": training_key}
STAGES = {name: for_track(name) for name in KWS_STAGES}