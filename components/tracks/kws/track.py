"""The keyword-spotting track (Speech Commands protocol): its stages, from a synthesized or real corpus to a gated
INT8 model, and the ingestion of drops into new acoustic domains.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from functools import partial
from pathlib import Path

import mlflow
import pandas as pd
import torch
from mlflow.exceptions import MlflowException

from components import distributed
from components.challenge import (
    ClassifierGate,
    GateInputs,
    classifier_figures,
)
from components.config import Params
from components.corpus import synthesize_corpus
from components.dataset import SILENCE, SPLITS, ClipCache, KwsData, build_dataset, index_speech_commands
from components.errors import EarshotError
from components.evaluate import Evaluation, classifier_rows, evaluate_predictions, plot_confusion, predict
from components.export import ExportReport, export_models, front_end_latency_ms
from components.features import front_end
from components.files import write_csv, write_text_atomically
from components.ingest import IngestReport, ingested_domains, keyword_drops, ledger_rows
from components.model import KeywordSpotter, count_parameters, load_model, save_model
from components.registry import champion, registry_client
from components.review import ReviewClip, pick_mistakes
from components.runs import (
    MODEL_FILE,
    console,
    model_file,
    record_data_docs,
    record_export,
    record_mistakes,
    record_training,
    report_epoch,
    run_file,
    versioned_ingest,
    write_json,
)
from components.shards import refresh_shards
from components.tracking import resume_run, training_run
from components.tracks import Track
from components.train import KWS_TRAINING, run_fingerprint, teacher_params, train_model

# The other tracks' settings do not shape this model; logged, they would only bury the ones that do.
FOREIGN_SETTINGS = {"asr", "esc"}
# Each epoch's metrics to MLflow, and a progress line of these.
_report_epoch = partial(report_epoch, shown={"train_loss": "loss {:.3f}", "train_accuracy": "train {:.1%}",
                                             "val_accuracy": "val {:.1%}"})


def domain_roots(params: Params) -> dict[str, list[Path]]:
    """Every tree the model trains on: the configured domains, then each domain that drops were ingested into."""
    roots = {name: [path] for name, path in params.dataset.domains.items()}
    for name, path in ingested_domains(params.ingest.root).items():
        roots.setdefault(name, []).append(path)
    return roots


def featurize(params: Params) -> dict[str, str]:
    """Featurize each domain into its own shard, rebuilding only the domains whose files or settings changed."""
    syn = params.synthesis
    key = hashlib.sha256(json.dumps([params.dataset.sample_rate, params.dataset.clip_samples,
                                     params.features.model_dump()]).encode()).hexdigest()[:12]
    cache = ClipCache(params.paths.clip_cache, key)
    featurizer = front_end(params.features, params.dataset.sample_rate)
    settings = json.dumps([key, params.seed, params.dataset.model_dump(mode="json", exclude={"domains"}),
                           syn.validation_percentage, syn.testing_percentage])
    roots = domain_roots(params)

    def build(domain: str) -> KwsData:
        part = build_dataset(params.dataset, params.seed, syn.validation_percentage, syn.testing_percentage,
                             roots={domain: roots[domain]}, cache=cache, require_every_split=False)
        part.mels = cache.log_mels(part.waves, part.content, featurizer)
        return part

    fingerprints = {domain: _domain_fingerprint(trees, cache, settings) for domain, trees in roots.items()}
    built = refresh_shards(params.out.features, fingerprints, build, ", ".join(map(str, roots)),
                           "clips (more speakers, or a larger split percentage)")
    cache.save()
    return built


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
    return run_fingerprint(params, KwsData.load(params.out.features).version, KWS_TRAINING)


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
    key = run_fingerprint(params, data.version, KWS_TRAINING)
    tags = {"dataset_version": data.version, "track": "kws", "training_key": key,
            "ingested_data_version": ledger[-1]["data_version"] if ledger else "none"}
    with training_run(params, run_file(params), tags, FOREIGN_SETTINGS, resume=checkpoint.is_file()) as run:
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


def _files(data: KwsData) -> pd.DataFrame:
    """The file behind every clip (silence: the background file it was cut from) with its label, domain, split."""
    labels = [data.label_names[i] for i in data.labels]
    return pd.DataFrame({"file": [source.rsplit("@", 1)[0] if label == SILENCE else source
                                  for source, label in zip(data.sources, labels, strict=True)],
                         "label": labels, "domain": [data.domain_names[i] for i in data.domains],
                         "split": [SPLITS[i] for i in data.splits]})


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


def gate_inputs(params: Params) -> GateInputs:
    test = KwsData.load(params.out.features).split("testing")
    return GateInputs(test, params.gate, params.dataset.domains)


def ingest(params: Params, drop: Path, domain: str) -> IngestReport:
    """Validate and ingest a keyword drop into `domain`, version it in DVC and git, log it to MLflow."""
    return versioned_ingest(params, keyword_drops(params), drop, domain)


def summary_rows(metrics: dict, exported: dict) -> list[tuple[str, str]]:
    """`earshot summary`'s rows: test accuracy overall and per domain, each exported model, the front end."""
    rows = [("test accuracy", f"{metrics['accuracy']:.2%} on {metrics['clips']} clips")]
    return rows + classifier_rows(metrics, exported)


CLASSIFIER_GATE = ClassifierGate(gate_inputs)
TRACK = Track(name="kws", title="keyword spotting", synthesize=synthesize_corpus, featurize=featurize,
              training_key=training_key, train=train, evaluate=evaluate, export=export,
              score_champion=CLASSIFIER_GATE.score_champion, gate=CLASSIFIER_GATE.gate,
              version_figures=classifier_figures,
              summary_rows=summary_rows, ingest=ingest)
