"""End to end: the real `dvc repro` and `earshot` commands in a temporary git + DVC repo."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import yaml

from components.config import Params
from components.dataset import FULL_SCALE, SILENCE, KwsData
from components.export import onnx_predictions
from components.review import MISTAKES
from tests.conftest import PROJECT, free_port, tiny_settings, write_tree

BIN = Path(sys.executable).parent


def run(args: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    env = os.environ | {"PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    env.pop("MLFLOW_TRACKING_URI", None)
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return done


@pytest.fixture(scope="module")
def dvc_repo(tmp_path_factory) -> Path:
    """A git + DVC repo holding the project's pipeline and components, with tiny params, after one `dvc repro`."""
    return reproduced_repo(tmp_path_factory.mktemp("repo"), tiny_settings(None))


def reproduced_repo(repo: Path, settings: dict) -> Path:
    """`repo` made a git + DVC repo of the project's pipeline and components with `settings`, after `dvc repro`."""
    for package in ("components", "pipelines"):
        shutil.copytree(PROJECT / package, repo / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(PROJECT / "dvc.yaml", repo / "dvc.yaml")
    (repo / "params.yaml").write_text(yaml.safe_dump(settings, sort_keys=False))
    for ledger in PROJECT.glob("data/**/drops.csv"):  # dvc.yaml's featurize stage depends on every track's ledger
        (repo / ledger.relative_to(PROJECT)).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ledger, repo / ledger.relative_to(PROJECT))
    run(["git", "init", "-q"], repo)
    run(["dvc", "init", "-q"], repo)
    run(["dvc", "repro"], repo)
    return repo


def changed_copy(repo: Path, to: Path) -> Path:
    """A copy of a module's reproduced repo for a test that changes it: the others read the repo as `dvc repro` left
    it, in whatever order they run (pytest-randomly shuffles them). The copy starts an MLflow store of its own, since
    the original's records its artifact locations as absolute paths into the original repo."""
    shutil.copytree(repo, to, symlinks=True, ignore=shutil.ignore_patterns("mlflow.db", "mlruns"))
    return to


def test_dvc_repro_builds_every_stage_output(dvc_repo):
    metrics = json.loads((dvc_repo / "reports/kws/metrics.json").read_text())
    assert set(metrics["per_domain"]) == {"studio_us", "car_scottish"}
    assert 0.0 <= metrics["accuracy"] <= 1.0 and metrics["clips"] > 0
    exported = json.loads((dvc_repo / "reports/kws/export.json").read_text())
    assert {v["name"] for v in exported["variants"]} >= {"onnx_fp32", "onnx_int8"}
    for out in ("models/kws/model.pt", "models/kws/model.onnx", "models/kws/model.int8.onnx",
                "reports/kws/evaluation.png", "reports/kws/gate.json", "data/features/kws/index.json",
                "data/synth/kws/studio_us/testing_list.txt"):
        assert (dvc_repo / out).is_file(), out
    shown = run(["dvc", "metrics", "show", "--json"], dvc_repo).stdout
    assert "per_domain" in shown


def test_second_repro_runs_nothing_and_one_param_reruns_only_downstream(dvc_repo, tmp_path):
    repo = changed_copy(dvc_repo, tmp_path / "repo")
    again = run(["dvc", "repro"], repo)
    assert "Running stage" not in again.stdout
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["train"]["epochs"] = 2
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    changed = run(["dvc", "repro"], repo).stdout
    ran = {line.split("'")[1] for line in changed.splitlines() if line.startswith("Running stage")}
    assert ran == {"train", "evaluate", "export", "gate"}
    assert json.loads((repo / "models/kws/train_metrics.json").read_text())["epochs_run"] <= 2


def test_training_run_is_in_mlflow_with_data_version_and_model(dvc_repo):
    run_id = json.loads((dvc_repo / "models/kws/run.json").read_text())["run_id"]
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{dvc_repo / 'mlflow.db'}")
    logged = client.get_run(run_id)
    assert len(logged.data.tags["dataset_version"]) == 16
    assert "test_accuracy.studio_us" in logged.data.metrics
    assert "export.onnx_int8.size_bytes" in logged.data.metrics
    assert len(client.get_metric_history(run_id, "val_accuracy")) >= 1
    assert client.search_logged_models(experiment_ids=[logged.info.experiment_id])


def test_training_run_holds_what_a_reviewer_needs(dvc_repo):
    run_id = json.loads((dvc_repo / "models/kws/run.json").read_text())["run_id"]
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{dvc_repo / 'mlflow.db'}")

    def files(folder: str) -> set[str]:
        return {Path(f.path).name for f in client.list_artifacts(run_id, folder)}

    assert {"domains.png", "gate.md", "gate.json"} <= files("gate")
    assert "index.html" in files("data_docs")
    assert client.get_run(run_id).data.metrics["data.files"] > 0
    with (dvc_repo / "reports/kws/predictions.csv").open() as rows:
        wrong = sum(row["actual"] != row["predicted"] for row in csv.DictReader(rows))
    heard = files("review/misclassified")
    assert len(heard) == 2 * min(wrong, MISTAKES)
    assert {Path(name).suffix for name in heard} <= {".wav", ".png"}


def test_earshot_predict_labels_the_test_split_as_the_pipeline_does(dvc_repo, tmp_path):
    """The packaged model, from raw audio, gives the INT8 labels the pipeline gives from its stored features; those
    agree with the evaluate stage's labels exactly as often as the export measured (its INT8 parity)."""
    test = KwsData.load(dvc_repo / "data/features/kws").split("testing")
    names = test.label_names
    int8 = [names[i] for i in onnx_predictions(dvc_repo / "models/kws/model.int8.onnx", test.mels)]
    files = [i for i, label in enumerate(test.labels.tolist()) if names[label] != SILENCE]
    done = run(["earshot", "predict", "--model", "models/kws/package", "--json",
                *(test.sources[i] for i in files)], dvc_repo)
    answers = [json.loads(line) for line in done.stdout.splitlines()]
    assert [a["file"] for a in answers] == [test.sources[i] for i in files]
    assert [a["label"] for a in answers] == [int8[i] for i in files]
    assert all(0.0 < a["confidence"] <= 1.0 for a in answers)
    # Silence is cut from background files, so it goes in as samples, through MLflow's own loader.
    silence = sorted(set(range(len(test.labels))) - set(files))
    model = mlflow.pyfunc.load_model(str(dvc_repo / "models/kws/package"))
    frame = pd.DataFrame({"samples": [(test.waves[i].float() / FULL_SCALE).tolist() for i in silence]})
    assert model.predict(frame)["label"].tolist() == [int8[i] for i in silence]
    with (dvc_repo / "reports/kws/predictions.csv").open() as rows:
        evaluated = [row["predicted"] for row in csv.DictReader(rows)]
    parity = json.loads((dvc_repo / "reports/kws/export.json").read_text())["parity"]
    assert sum(map(str.__eq__, evaluated, int8)) / len(int8) == pytest.approx(parity)


def test_earshot_predict_refuses_a_file_that_is_not_audio_in_one_line(dvc_repo, tmp_path):
    fake = tmp_path / "notes.wav"
    fake.write_text("meeting notes, not audio")
    done = run(["earshot", "predict", "--model", "models/kws/package", str(fake)], dvc_repo, check=False)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [f"error: {fake}: not readable audio (Format not recognised.)"]


def _loopback_listeners(port: int) -> list[str]:
    """Local addresses (hex, as /proc/net/tcp writes them) of the IPv4 sockets listening on `port`."""
    rows = [line.split() for line in Path("/proc/net/tcp").read_text().splitlines()[1:]]
    return [local.split(":")[0] for _, local, _, state, *_ in rows if state == "0A" and int(local.split(":")[1], 16)
            == port]


def test_earshot_ui_serves_the_project_store_on_loopback_only(dvc_repo):
    port = free_port()
    env = os.environ | {"PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    env.pop("MLFLOW_TRACKING_URI", None)
    server = subprocess.Popen(["earshot", "ui", "--port", str(port)], cwd=dvc_repo, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}/ajax-api/2.0/mlflow/experiments/get-by-name?experiment_name=earshot-kws"
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    experiment = json.load(response)["experiment"]
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, "earshot ui did not come up"
                time.sleep(1)
        assert experiment["name"] == "earshot-kws"
        assert _loopback_listeners(port) == ["0100007F"]  # 127.0.0.1, and no 0.0.0.0 socket beside it
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_corrupt_audio_stops_featurize_with_one_line_naming_the_file(tmp_path):
    root = write_tree(tmp_path / "sc", {"yes": 300.0, "no": 500.0}, [f"{i:08x}" for i in range(40)])
    bad = root / "yes" / "deadbeef_nohash_0.wav"
    bad.write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt garbage that is not audio")
    settings = tiny_settings(tmp_path)
    settings["dataset"]["domains"] = {"lab": str(root)}
    settings["dataset"]["words"] = ["yes", "no"]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(settings))
    done = run(["earshot", "featurize", "--params", str(tmp_path / "params.yaml")], tmp_path, check=False)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and str(bad) in lines[0] and "Traceback" not in done.stderr
    assert not Path(settings["paths"]["features"]).exists()


def test_ingested_drop_is_a_new_data_version_in_git_and_dvc_and_repro_picks_it_up(dvc_repo, tmp_path):
    repo = changed_copy(dvc_repo, tmp_path / "repo")
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "pipeline"], repo)
    params = Params.model_validate(yaml.safe_load((repo / "params.yaml").read_text()))
    drop = tmp_path / "drop"
    run(["earshot", "drop", "kitchen_caribbean", str(drop), "--speakers", "4"], repo)
    done = run(["earshot", "ingest", str(drop), "--domain", "kitchen"], repo)
    assert "data version" in done.stdout
    head = run(["git", "log", "-1", "--format=%s"], repo).stdout
    version = next(r for r in csv.DictReader((repo / params.ingest.root / "drops.csv").open()))["data_version"]
    assert version in head
    assert (repo / "data/domains/kitchen.dvc").is_file()
    assert "kitchen" not in run(["git", "status", "--porcelain"], repo).stdout
    status = json.loads(run(["dvc", "status", "--json"], repo).stdout)
    assert set(status) == {"featurize"}  # the data itself is clean; only the stage that reads it is stale
    untouched = (repo / "data/features/kws/studio_us.pt").stat().st_mtime_ns
    ran = run(["dvc", "repro", "featurize"], repo).stdout
    assert "Running stage 'featurize'" in ran
    shards = json.loads((repo / "data/features/kws/index.json").read_text())
    assert list(shards) == ["studio_us", "car_scottish", "kitchen"]  # params order, then ingested domains
    assert (repo / "data/features/kws/studio_us.pt").stat().st_mtime_ns == untouched  # only kitchen was built
    assert "kitchen" in KwsData.load(repo / "data/features/kws").domain_names
    run(["dvc", "repro", "train"], repo)
    run_id = json.loads((repo / "models/kws/run.json").read_text())["run_id"]
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{repo / 'mlflow.db'}")
    assert client.get_run(run_id).data.tags["ingested_data_version"] == version
