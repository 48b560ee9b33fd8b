"""The environmental sound classification track (`track: esc`): its stages, with the keyword stages' names and outputs.

UrbanSound8K's and ESC-50's protocol: the accuracy reported is fold cross-validation. The deployed model trains on
every fold but a holdout fold, and export, the gate and the champion are all scored on that fold.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import torch

from components.challenge import ClassifierGate, GateInputs, classifier_figures
from components.config import Params
from components.dataset import read_audio
from components.errors import EarshotError
from components.evaluate import classifier_rows, evaluate_predictions, plot_confusion
from components.export import ExportReport, export_models, front_end_latency_ms
from components.features import LogMel
from components.files import write_csv, write_text_atomically
from components.ingest import IngestReport
from components.model import count_parameters, save_model
from components.review import ReviewClip, pick_mistakes
from components.runs import (
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
from components.tracking import KWS_SETTINGS, resume_run, training_run
from components.tracks import Track
from components.tracks.esc.corpus import synthesize_urbansound
from components.tracks.esc.data import SoundData, featurize_clips
from components.tracks.esc.drops import sound_dataset, sound_drops
from components.tracks.esc.events import SoundClip
from components.tracks.esc.model import load_sound_model, min_frames
from components.tracks.esc.train import (
    CrossValidation,
    DeployedFold,
    FoldResult,
    cross_validate,
    fold_roles,
    score,
    train_fold,
)
from components.train import run_fingerprint

FEATURES_FILE = "clips.pt"
# The settings that shape the sound model, as a pydantic `include` of Params (see run_fingerprint).
ESC_TRAINING = {"seed": True, "esc": {"sample_rate", "features", "train", "holdout_fold"}}
# The other tracks' settings do not shape this model; logged, they would only bury the ones that do.
FOREIGN_SETTINGS = KWS_SETTINGS | {"asr", "augment"}
# Each epoch's metrics to MLflow, and a progress line of these.
_report_epoch = partial(report_epoch, shown={"train_loss": "loss {:.3f}", "val_accuracy": "val {:.1%}"})


def synthesize(params: Params) -> list[SoundClip]:
    """The procedural UrbanSound8K-layout corpus of esc.corpus, written to the track's synthesis folder."""
    corpus = params.esc.corpus
    console.print(f"synthesizing {corpus.clips_per_class} clips per class in {params.synth_root}", highlight=False)
    return synthesize_urbansound(params.synth_root, clips_per_class=corpus.clips_per_class,
                                 sample_rate=corpus.sample_rate, seed=params.seed, domains=corpus.domains,
                                 max_slices_per_source=corpus.max_slices_per_source)


def featurize(params: Params) -> str:
    """One log-mel per clip of the dataset under esc.root and of every ingested domain; returns the data's version."""
    esc = params.esc
    clips, domains = sound_dataset(params)
    data = featurize_clips(clips, domains, sample_rate=esc.sample_rate, features=esc.features,
                           min_frames=min_frames(esc.train.blocks))
    data.save(params.out.features / FEATURES_FILE)
    folds = sorted({clip.fold for clip in clips})
    console.print(f"featurized {len(clips)} clips of {len(data.label_names)} classes in folds {folds}, domains "
                  f"{', '.join(data.domain_names)}", highlight=False)
    return data.version


def ingest(params: Params, drop: Path, domain: str) -> IngestReport:
    """Validate and ingest a drop of sound clips into `domain`, version it in DVC and git, log it to MLflow."""
    return versioned_ingest(params, sound_drops(params), drop, domain)


def load_data(params: Params) -> SoundData:
    return SoundData.load(params.out.features / FEATURES_FILE)


def holdout_fold(params: Params, data: SoundData) -> int:
    present = sorted({clip.fold for clip in data.clips})
    fold = params.esc.holdout_fold or present[-1]
    if fold not in present:
        raise EarshotError(f"esc.holdout_fold: fold {fold} holds no clip; folds present: {present}")
    return fold


def training_key(params: Params) -> str:
    """The featurized data's version and every setting that shapes training."""
    return run_fingerprint(params, load_data(params).version, ESC_TRAINING)


def train(params: Params) -> str:
    """Train the deployed model on every fold but the holdout (the next fold stops it early); log it to MLflow."""
    data = load_data(params)
    esc, out = params.esc, params.out.model_dir
    torch.set_num_threads(esc.train.threads)
    holdout = holdout_fold(params, data)
    validation_fold, train_clips, validation, _ = fold_roles(data.clips, holdout)
    key = run_fingerprint(params, data.version, ESC_TRAINING)
    tags = {"dataset_version": data.version, "track": "esc", "training_key": key,
            "holdout_fold": str(holdout), "validation_fold": str(validation_fold)}
    with training_run(params, run_file(params), tags, FOREIGN_SETTINGS) as run:
        console.print(f"training on {len(train_clips)} clips; fold {validation_fold} validates, fold {holdout} "
                      "is held out for export and the gate", highlight=False)
        role = {holdout: "holdout", validation_fold: "validation"}
        record_data_docs(params, pd.DataFrame({
            "file": [str(clip.path) for clip in data.clips], "label": [clip.label_name for clip in data.clips],
            "domain": list(data.clip_domains), "split": [role.get(clip.fold, "training") for clip in data.clips]}),
            data.label_names, set())
        trained = train_fold(train_clips, validation, data.mels_by_path, n_classes=len(data.label_names),
                             settings=esc.train, seed=params.seed, on_epoch=_report_epoch)
        model = trained.model
        architecture = esc.train.model_dump(include={"channels", "blocks", "dropout"})
        card = {"label_names": data.label_names, "domain_names": data.domain_names,
                "features": esc.features.model_dump(), "model": architecture, "sample_rate": esc.sample_rate,
                "min_frames": min_frames(esc.train.blocks), "best_epoch": trained.best_epoch,
                "epochs_run": len(trained.history), "dataset_version": data.version, "run_id": run.info.run_id}
        save_model(model, model_file(params), card)
        mlflow.log_artifact(str(model_file(params)), artifact_path="weights")
        best = trained.history[trained.best_epoch]
        summary = {"best_epoch": trained.best_epoch, "best_val_accuracy": best["val_accuracy"],
                   "epochs_run": len(trained.history), "parameters": count_parameters(model),
                   "train_clips": len(train_clips)}
        mlflow.log_metrics({"best_val_accuracy": best["val_accuracy"], "parameters": summary["parameters"]})
        example = data.mels[data.clips.index(validation[0])][None].repeat(2, 1, 1)
        record_training(model, example, summary, trained.history, out)
        return run.info.run_id


def _report_fold(fold: FoldResult) -> None:
    console.print(f"fold {fold.test_fold:>2}: {fold.accuracy:.1%} of {len(fold.test)} clips "
                  f"(best epoch {fold.best_epoch} of {fold.epochs_run})", highlight=False)


def evaluate(params: Params) -> CrossValidation:
    """Fold cross-validation (esc.cv_folds, all by default) and the deployed model on its holdout fold, per domain.

    Writes per-fold accuracy, mean ± std, per class and per domain, the pooled confusion matrix and every prediction.
    """
    data = load_data(params)
    esc = params.esc
    torch.set_num_threads(esc.train.threads)
    model, card = load_sound_model(model_file(params))
    # train() fitted the deployed model as the holdout fold's round (same roles, settings, seed): it stands for it.
    shipped = DeployedFold(holdout_fold(params, data), model, card["best_epoch"], card["epochs_run"])
    console.print(f"cross-validating over folds {esc.cv_folds or 'all'} "
                  f"(fold {shipped.test_fold}: the deployed model)", highlight=False)
    cv = cross_validate(data.clips, data.mels_by_path, folds=esc.cv_folds, settings=esc.train, seed=params.seed,
                        on_fold=_report_fold, deployed=shipped)
    tested = [clip for fold in cv.folds for clip in fold.test]
    pooled = evaluate_predictions(torch.tensor([p for fold in cv.folds for p in fold.predictions]),
                                  data.subset(tested))
    holdout = holdout_set(params, data)
    _, _, top1 = score(model, holdout.clips, data.mels_by_path)
    deployed = evaluate_predictions(torch.tensor(top1), holdout)
    metrics = {"mean_accuracy": cv.mean_accuracy, "std_accuracy": cv.std_accuracy,
               "folds": {str(k): v for k, v in cv.accuracies.items()}, "per_class": cv.per_class_accuracy,
               "per_domain": pooled.per_domain, "clips": pooled.clips,
               "holdout": {"fold": holdout_fold(params, data), "accuracy": deployed.accuracy,
                           "per_domain": deployed.per_domain, "clips": deployed.clips}}
    reports = params.out.reports
    write_json(reports / "metrics.json", metrics)
    domain_of = dict(zip(data.clips, data.clip_domains, strict=True))
    write_csv(reports / "predictions.csv",
              [{"fold": fold.test_fold, "file": clip.path.name, "domain": domain_of[clip], "actual": clip.label_name,
                "predicted": cv.label_names[p]}
               for fold in cv.folds for clip, p in zip(fold.test, fold.predictions, strict=True)],
              ["fold", "file", "domain", "actual", "predicted"])
    write_text_atomically(reports / "evaluation.md", _markdown(cv, pooled.per_domain, metrics["holdout"]))
    plot_confusion(pooled.confusion, data.label_names,
                   f"{len(cv.folds)}-fold CV: {cv.mean_accuracy:.1%} ± {cv.std_accuracy:.1%}",
                   reports / "evaluation.png")
    with resume_run(params, run_file(params)):
        mlflow.log_metrics({"cv.mean_accuracy": cv.mean_accuracy, "cv.std_accuracy": cv.std_accuracy,
                            "holdout.accuracy": deployed.accuracy}
                           | {f"cv.fold.{k}": v for k, v in cv.accuracies.items()}
                           | {f"cv.class.{c}": v for c, v in pooled.per_class.items()}
                           | {f"cv.domain.{d}": v for d, v in pooled.per_domain.items()})
        for name in ("evaluation.png", "evaluation.md", "metrics.json", "predictions.csv"):
            mlflow.log_artifact(str(reports / name), artifact_path="evaluation")
        record_mistakes(params, [
            ReviewClip(read_audio(tested[row].path, esc.sample_rate)[0], esc.sample_rate,
                       data.mels_by_path[tested[row].path], tested[row].label_name,
                       cv.label_names[pooled.predictions[row]], domain_of[tested[row]], str(tested[row].path))
            for row in pick_mistakes(pooled.predictions, data.subset(tested), params.seed)])
    console.print(f"{len(cv.folds)}-fold cross-validation: {cv.mean_accuracy:.2%} ± {cv.std_accuracy:.2%}; "
                  f"deployed model on fold {metrics['holdout']['fold']}: {deployed.accuracy:.2%}", highlight=False)
    return cv


def _markdown(cv: CrossValidation, per_domain: dict[str, float], holdout: dict) -> str:
    lines = [f"## {len(cv.folds)}-fold cross-validation: {cv.mean_accuracy:.2%} ± {cv.std_accuracy:.2%}", "",
             "| test fold | validation fold | clips | accuracy |", "|---|---|---|---|",
             *(f"| {f.test_fold} | {f.validation_fold} | {len(f.test)} | {f.accuracy:.2%} |" for f in cv.folds), "",
             "| class | accuracy (all test folds) |", "|---|---|",
             *(f"| {c} | {v:.2%} |" for c, v in cv.per_class_accuracy.items()), "",
             "| domain | accuracy (all test folds) |", "|---|---|",
             *(f"| {d} | {v:.2%} |" for d, v in per_domain.items()), "",
             f"## Deployed model on holdout fold {holdout['fold']}: {holdout['accuracy']:.2%} of "
             f"{holdout['clips']} clips", ""]
    return "\n".join(lines) + "\n"


def export(params: Params) -> ExportReport:
    """ONNX FP32 and INT8 with a dynamic time axis, calibrated on training clips, scored on the holdout fold."""
    model, card = load_sound_model(model_file(params))
    data = load_data(params)
    _, train_clips, _, _ = fold_roles(data.clips, holdout_fold(params, data))
    picks = np.random.default_rng(params.seed).permutation(len(train_clips))[: params.esc.export.calibration_clips]
    calibration = [data.mels_by_path[train_clips[i].path] for i in picks]
    test = holdout_set(params, data)
    # The front end's cost depends on the length alone: timed on silence as long as the longest holdout clip.
    log_mel = LogMel(params.esc.features, params.esc.sample_rate)
    spec = log_mel.mel.spectrogram
    longest = torch.zeros(1, spec.n_fft + (max(m.shape[-1] for m in test.mels) - 1) * spec.hop_length)
    front_ms = front_end_latency_ms(log_mel, longest, params.esc.export.latency_runs)
    return record_export(params, lambda: export_models(model, calibration, test.mels, test.labels, params.esc.export,
                                                       params.out.model_dir, min_frames=card["min_frames"],
                                                       front_end_ms=front_ms))


def holdout_set(params: Params, data: SoundData) -> SoundData:
    fold = holdout_fold(params, data)
    return data.subset([clip for clip in data.clips if clip.fold == fold])


def gate_inputs(params: Params) -> GateInputs:
    """The keyword gate's checks on the holdout fold, which neither the challenger nor (same data, same fold) the
    champion trained on, with esc.gate's thresholds."""
    test = holdout_set(params, load_data(params))
    return GateInputs(test, params.esc.gate, test.domain_names)


def summary_rows(metrics: dict, exported: dict) -> list[tuple[str, str]]:
    """`earshot summary`'s rows: fold cross-validation, the deployed model on its holdout fold, then per domain and
    per exported model as for keywords."""
    holdout = metrics["holdout"]
    return [("fold cross-validation", f"{metrics['mean_accuracy']:.2%} ± {metrics['std_accuracy']:.2%} over "
                                      f"{len(metrics['folds'])} folds ({metrics['clips']} clips)"),
            (f"deployed model, fold {holdout['fold']}", f"{holdout['accuracy']:.2%} on {holdout['clips']} clips"),
            *classifier_rows(metrics, exported)]


CLASSIFIER_GATE = ClassifierGate(gate_inputs)
TRACK = Track(name="esc", title="environmental sound classification", synthesize=synthesize, featurize=featurize,
              training_key=training_key, train=train, evaluate=evaluate, export=export,
              score_champion=CLASSIFIER_GATE.score_champion, gate=CLASSIFIER_GATE.gate,
              version_figures=classifier_figures,
              summary_rows=summary_rows, ingest=ingest)
