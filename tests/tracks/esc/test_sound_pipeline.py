"""The environmental sound track end to end: the real `dvc repro` with `track: esc` in a temporary git + DVC repo,
then the same retraining loop, gate and registry as the keyword track."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import mlflow
import pytest
import yaml

from components.export import onnx_predictions
from components.tracks.esc.data import SoundData
from tests.conftest import tiny_settings
from tests.test_pipeline import changed_copy, reproduced_repo, run

# Fold 10 is the holdout: its round is the deployed model, so cross-validation trains one more model, not two.
CV_FOLDS = [1, 10]


def tiny_esc_settings() -> dict:
    """params.yaml on the esc track, cut to 8 clips per class, a narrow model, 2 test folds and a few epochs."""
    settings = tiny_settings(None)
    settings["track"] = "esc"
    esc = settings["esc"]
    esc["corpus"] |= {"clips_per_class": 8, "max_slices_per_source": 2}
    esc["features"] |= {"win_ms": 40.0, "hop_ms": 40.0}
    esc["train"] |= {"channels": 8, "blocks": 3, "epochs": 3, "patience": 3, "batch_size": 16}
    esc["cv_folds"] = CV_FOLDS
    esc["export"] |= {"calibration_clips": 16, "latency_runs": 5, "min_parity": 0.5}
    # A 3-epoch model is near chance: the gate is held to what such a model can show, not to the product's bar.
    esc["gate"] |= {"min_int8_parity": 0.5, "max_domain_regression_points": 100.0, "golden_clips": 3}
    return settings


@pytest.fixture(scope="module")
def esc_repo(tmp_path_factory):
    return reproduced_repo(tmp_path_factory.mktemp("esc-repo"), tiny_esc_settings())


def metadata(repo: Path) -> list[dict[str, str]]:
    with (repo / "data/synth/esc/metadata/UrbanSound8K.csv").open(newline="") as file:
        return list(csv.DictReader(file))


def test_esc_repro_reports_fold_accuracy_exports_int8_and_gates(esc_repo):
    metrics = json.loads((esc_repo / "reports/esc/metrics.json").read_text())
    folds = metrics["folds"]
    assert sorted(folds) == [str(f) for f in CV_FOLDS]
    assert metrics["mean_accuracy"] == pytest.approx(sum(folds.values()) / len(folds))
    assert metrics["std_accuracy"] == pytest.approx(abs(folds["1"] - folds["10"]) / 2)
    assert folds["10"] == metrics["holdout"]["accuracy"]
    # The synthesizer spreads domains evenly over every fold's sources, and each fold here has three or more.
    assert set(metrics["per_domain"]) == {"street", "hall", "car_phone"}
    assert set(metrics["holdout"]["per_domain"]) == {"street", "hall", "car_phone"}
    assert metrics["holdout"]["fold"] == 10 and metrics["holdout"]["clips"] > 0
    rows = metadata(esc_repo)
    assert metrics["clips"] == sum(int(row["fold"]) in CV_FOLDS for row in rows)
    exported = json.loads((esc_repo / "reports/esc/export.json").read_text())
    assert {v["name"] for v in exported["variants"]} == {"pytorch", "onnx_fp32", "onnx_int8"}
    assert exported["test_clips"] == metrics["holdout"]["clips"]
    gate = json.loads((esc_repo / "reports/esc/gate.json").read_text())
    # No champion yet: absolute checks only.
    assert {c["name"] for c in gate["checks"]} == {"INT8 parity with PyTorch",
                                                   "INT8 latency with front end (1 thread, p50)", "INT8 size"}
    for out in ("models/esc/model.onnx", "models/esc/model.int8.onnx", "reports/esc/evaluation.png",
                "reports/esc/evaluation.md", "data/features/esc/clips.pt"):
        assert (esc_repo / out).is_file(), out
    assert "mean_accuracy" in run(["dvc", "metrics", "show", "--json"], esc_repo).stdout
    assert "fold cross-validation" in run(["earshot", "summary"], esc_repo).stdout
    run_id = json.loads((esc_repo / "models/esc/run.json").read_text())["run_id"]
    logged = mlflow.MlflowClient(tracking_uri=f"sqlite:///{esc_repo / 'mlflow.db'}").get_run(run_id)
    assert logged.data.tags["track"] == "esc" and logged.data.tags["holdout_fold"] == "10"
    assert {"cv.fold.1", "cv.fold.10", "cv.mean_accuracy", "export.onnx_int8.accuracy"} <= set(logged.data.metrics)
    assert "esc.train.channels" in logged.data.params and "model.channels" not in logged.data.params


def test_test_folds_never_lend_a_clip_or_a_source_to_training(esc_repo):
    """The fold each clip was scored in (predictions.csv) is its own, and no source of it sits in any other fold;
    the deployed model trained on every fold but the holdout and its validation fold."""
    rows = metadata(esc_repo)
    fold_of = {row["slice_file_name"]: int(row["fold"]) for row in rows}
    folds_of_source: dict[str, set[int]] = {}
    for row in rows:
        folds_of_source.setdefault(row["fsID"], set()).add(int(row["fold"]))
    with (esc_repo / "reports/esc/predictions.csv").open(newline="") as file:
        scored = list(csv.DictReader(file))
    assert {int(r["fold"]) for r in scored} == set(CV_FOLDS)
    for row in scored:
        assert fold_of[row["file"]] == int(row["fold"]), row
        source = next(r["fsID"] for r in rows if r["slice_file_name"] == row["file"])
        assert folds_of_source[source] == {int(row["fold"])}, source
    trained = json.loads((esc_repo / "models/esc/train_metrics.json").read_text())
    assert trained["train_clips"] == sum(fold_of[name] not in (10, 1) for name in fold_of)


def test_featurized_clips_keep_their_length_domain_and_every_class_name(esc_repo):
    data = SoundData.load(esc_repo / "data/features/esc/clips.pt")
    rows = {row["slice_file_name"]: row for row in metadata(esc_repo)}
    assert len(data.clips) == len(rows) and len(data.label_names) == 10
    with (esc_repo / "data/synth/esc/metadata/domains.csv").open(newline="") as file:
        domain_of = {row["fsID"]: row["domain"] for row in csv.DictReader(file)}
    assert all(domain_of[clip.source] == domain for clip, domain in zip(data.clips, data.clip_domains, strict=True))
    lengths = {mel.shape[1] for mel in data.mels}
    assert len(lengths) > 1 and min(lengths) >= 2**3  # clips keep their own lengths, never below the model's minimum
    holdout = data.subset([clip for clip in data.clips if clip.fold == 10])
    assert holdout.label_names == data.label_names and {c.fold for c in holdout.clips} == {10}


def test_esc_second_repro_runs_nothing(esc_repo):
    assert "Running stage" not in run(["dvc", "repro"], esc_repo).stdout


def test_earshot_predict_labels_the_holdout_fold_as_the_pipeline_does(esc_repo):
    """From the raw files, the packaged model gives the labels the INT8 model gives the stored features of the
    holdout fold, so its accuracy there is the export's INT8 accuracy."""
    data = SoundData.load(esc_repo / "data/features/esc/clips.pt")
    fold = json.loads((esc_repo / "reports/esc/metrics.json").read_text())["holdout"]["fold"]
    holdout = data.subset([clip for clip in data.clips if clip.fold == fold])
    int8 = [data.label_names[i] for i in onnx_predictions(esc_repo / "models/esc/model.int8.onnx", holdout.mels)]
    done = run(["earshot", "predict", "--model", "models/esc/package", "--json",
                *(str(clip.path) for clip in holdout.clips)], esc_repo)
    answers = [json.loads(line)["label"] for line in done.stdout.splitlines()]
    assert answers == int8
    exported = json.loads((esc_repo / "reports/esc/export.json").read_text())
    accuracy = sum(a == clip.label_name for a, clip in zip(answers, holdout.clips, strict=True)) / len(answers)
    assert accuracy == pytest.approx(next(v for v in exported["variants"] if v["name"] == "onnx_int8")["accuracy"])


def test_esc_goes_through_the_same_loop_gate_and_registry(esc_repo, prefect_api, tmp_path):
    repo = changed_copy(esc_repo, tmp_path / "repo")
    env_run = ["env", f"PREFECT_API_URL={prefect_api}", "earshot", "retrain"]
    assert "promoted: model version 1" in run(env_run, repo).stdout
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{repo / 'mlflow.db'}")
    first = client.get_model_version_by_alias("earshot-esc", "champion")
    assert first.tags["track"] == "esc" and first.tags["gate"] == "passed" and float(first.tags["int8_size_bytes"]) > 0

    settings = yaml.safe_load((repo / "params.yaml").read_text())
    settings["esc"]["train"]["epochs"] = 4  # another challenger on the same data
    (repo / "params.yaml").write_text(yaml.safe_dump(settings, sort_keys=False))
    second = run(env_run, repo).stdout
    assert "model version 2" in second
    gate = json.loads((repo / "reports/esc/gate.json").read_text())
    names = {c["name"] for c in gate["checks"]}
    # Against a champion the gate re-scores both on the holdout fold, domain by domain, golden clips pinned.
    domains = set(gate["champion"]["per_domain"])
    assert domains == set(gate["challenger"]["per_domain"]) == {"street", "hall", "car_phone"}
    assert {f"no regression on {d}" for d in domains} | {"overall accuracy not lower"} <= names
    # Golden clips are drawn among the clips the champion labels right; a near-chance champion may have none.
    assert ("golden clips keep their labels" in names) == (gate["champion"]["accuracy"] > 0)
    assert client.get_model_version("earshot-esc", "2").tags["gate"] == ("passed" if gate["passed"] else "refused")
