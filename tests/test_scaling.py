"""Scale-out by configuration on engines teams already run: a shared MLflow server on PostgreSQL with an artifact root
of its own, DVC data through a remote, and prefect.yaml's deployments for workers (docs/scaling.md)."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import mlflow
import psycopg
import pytest
import yaml
from prefect.flows import load_flow_from_entrypoint

from components.config import load_params
from components.export import INT8_FILE
from components.serving import ARTIFACTS
from pipelines.flows import deployments
from tests.conftest import PROJECT, free_port, healthy, start_mlflow_server, stop_server, wait_until, write_tree
from tests.test_continuous import World
from tests.test_pipeline import BIN, run


def postgres_binaries() -> Path | None:
    """The folder of PostgreSQL's server programs: on PATH, or where Debian's postgresql package keeps them."""
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).parent
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3].split(".")[0]))
    return found[-1].parent if found else None


@dataclass(frozen=True)
class SharedStore:
    tracking_uri: str  # the MLflow server's address, what MLFLOW_TRACKING_URI names
    artifact_root: Path  # where the server keeps artifacts, apart from its database
    database: str  # the PostgreSQL connection string of its backend store


@pytest.fixture(scope="module")
def shared_store() -> Iterator[SharedStore]:
    """A throwaway PostgreSQL cluster on loopback and an `mlflow server` on it, as a team would run them.

    initdb refuses to run as root, so as root the cluster belongs to Debian's `postgres` user; its folder is made
    outside pytest's tmp_path, which only root may enter.
    """
    binaries = postgres_binaries()
    if binaries is None:
        pytest.skip("PostgreSQL server programs not found (Debian: apt-get install -y postgresql)")
    owner = "postgres" if os.geteuid() == 0 else None
    if owner and owner not in {user.pw_name for user in pwd.getpwall()}:
        pytest.skip("running as root, and no `postgres` user to run PostgreSQL as (initdb refuses root)")
    root = Path(tempfile.mkdtemp(prefix="earshot-pg-"))
    server = mlflow_server = None
    try:
        if owner:
            shutil.chown(root, owner, owner)
        subprocess.run([binaries / "initdb", "-D", root / "data", "-U", "postgres", "--auth=trust", "--no-sync"],
                       user=owner, check=True, capture_output=True)
        port, log = free_port(), root / "postgres.log"
        with log.open("w") as out:
            server = subprocess.Popen([binaries / "postgres", "-D", root / "data", "-h", "127.0.0.1", "-p", str(port),
                                       "-k", root, "-c", "fsync=off"], user=owner, stdout=out, stderr=out,
                                      start_new_session=True)
        database = f"postgresql://postgres@127.0.0.1:{port}"

        def accepts_connections() -> bool:
            try:
                with psycopg.connect(f"{database}/postgres", autocommit=True) as connection:
                    connection.execute("CREATE DATABASE mlflow")
                return True
            except psycopg.OperationalError:
                return False

        wait_until(accepts_connections, server, "PostgreSQL", log)
        artifacts, web, log = root / "artifacts", free_port(), root / "mlflow.log"
        mlflow_server = start_mlflow_server(f"{database}/mlflow", web, root, log, "--artifacts-destination",
                                            str(artifacts))
        tracking_uri = f"http://127.0.0.1:{web}"
        wait_until(lambda: healthy(tracking_uri), mlflow_server, "mlflow server", log)
        yield SharedStore(tracking_uri, artifacts, f"{database}/mlflow")
    finally:
        if mlflow_server is not None:
            stop_server(mlflow_server)
        if server is not None:
            stop_server(server, signal.SIGINT)  # PostgreSQL's fast shutdown
        shutil.rmtree(root, ignore_errors=True)


def test_a_retraining_records_everything_in_the_shared_postgres_store(shared_store, prefect_api, tmp_path):
    world = World(tmp_path)
    epochs = 5  # no early stop: patience is 40
    settings = world.settings | {"train": world.settings["train"] | {"epochs": epochs}}
    world.params_path.write_text(yaml.safe_dump(settings))
    env = os.environ | {"PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "PREFECT_API_URL": prefect_api,
                        "MLFLOW_TRACKING_URI": shared_store.tracking_uri}
    done = subprocess.run([BIN / "earshot", "retrain", "--params", world.params_path], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    client = mlflow.MlflowClient(shared_store.tracking_uri)
    params = world.params
    experiment = client.get_experiment_by_name(params.mlflow.experiment)
    [training] = client.search_runs([experiment.experiment_id], "tags.track = 'kws'")
    history = client.get_metric_history(training.info.run_id, "val_accuracy")
    assert [m.step for m in history] == list(range(epochs))
    assert "test_accuracy" in training.data.metrics
    [version] = client.search_model_versions(f"name = '{params.mlflow.registered_model}'")
    assert version.run_id == training.info.run_id
    assert version.tags["training_key"] == training.data.tags["training_key"]
    # The files sit in the server's artifact root, not in the project's folder; the runs and versions in PostgreSQL.
    run_files = shared_store.artifact_root / experiment.experiment_id / training.info.run_id / "artifacts"
    assert (run_files / "weights/model.pt").is_file() and (run_files / "export/MLmodel").is_file()
    assert (run_files / "export" / ARTIFACTS / INT8_FILE).is_file()
    assert not any((tmp_path / name).exists() for name in ("mlruns", "mlartifacts"))
    with psycopg.connect(shared_store.database) as connection:
        assert connection.execute("SELECT status FROM runs WHERE run_uuid = %s",
                                  [training.info.run_id]).fetchall() == [("FINISHED",)]
        assert connection.execute("SELECT version FROM model_versions WHERE name = %s",
                                  [params.mlflow.registered_model]).fetchall() == [(int(version.version),)]


def test_dvc_data_goes_to_the_configured_remote_and_comes_back_byte_for_byte(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    run(["git", "init", "-q"], repo)
    run(["dvc", "init", "-q"], repo)
    # The project's own DVC config: its default remote, a folder beside the repo (.dvc-remote) unless changed.
    shutil.copy(PROJECT / ".dvc/config", repo / ".dvc/config")
    tree = write_tree(repo / "data/lab", {"yes": 300.0, "no": 600.0}, ["a0000001", "b0000002", "c0000003"])
    original = {path.relative_to(tree): path.read_bytes() for path in tree.rglob("*") if path.is_file()}
    run(["dvc", "add", "-q", "data/lab"], repo)
    run(["dvc", "push", "-q"], repo)
    assert sum(1 for path in (repo / ".dvc-remote").rglob("*") if path.is_file()) >= len(original)
    shutil.rmtree(tree)
    shutil.rmtree(repo / ".dvc/cache")
    run(["dvc", "pull", "-q"], repo)
    assert {path.relative_to(tree): path.read_bytes() for path in tree.rglob("*") if path.is_file()} == original


def test_prefect_yaml_declares_the_deployments_earshot_serve_runs_on_a_process_pool(monkeypatch):
    monkeypatch.chdir(PROJECT)  # `prefect deploy` runs in the checkout, whose params.yaml the flows read
    declared = yaml.safe_load(Path("prefect.yaml").read_text())
    served = {d.name: d for d in deployments("params.yaml")}
    params = load_params("params.yaml")
    listed = {d["name"]: d for d in declared["deployments"]}
    assert set(listed) == set(served)
    for name, deployment in listed.items():
        assert load_flow_from_entrypoint(deployment["entrypoint"]).name == served[name].flow_name
        assert deployment["parameters"] == served[name].parameters
        assert deployment["concurrency_limit"] == 1 and deployment["work_pool"] == {"name": "earshot"}
    assert listed["nightly"]["schedules"] == [{"cron": params.continuous.nightly_cron}]
    assert listed["new-data"]["schedules"] == [{"interval": params.continuous.watch_every_s}]
