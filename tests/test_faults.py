"""Faults: the process killed (SIGKILL) while training, exporting and promoting, a disk that refuses a write, an MLflow
store that is down; each time the registry keeps exactly one valid champion and a re-run finishes the work.

What each fault is, how it is caused, and what survives it (what the test checks):
- SIGKILL in training: `earshot retrain` killed after its first checkpoint. Nothing half-promoted; the re-run resumes
  the same MLflow run from the checkpoint (one unbroken curve) and promotes.
- SIGKILL in export: `earshot export` killed halfway through writing its FP32, then its INT8 file. Nothing
  half-written at model.onnx / model.int8.onnx (absent, or whole and loading in ONNX Runtime); a re-run over the
  torsos publishes both and leaves no temporary file.
- Disk write failure in export: `earshot export` under an RLIMIT_FSIZE of half the FP32 file (EFBIG). One line naming
  model.onnx, exit 1; nothing published, no temporary file; a re-run publishes both.
- SIGKILL in promotion: a child registers a version and promotes it, killing itself right after one registry write
  (registered; `previous` set; `champion` moved). A valid champion at every kill point; the next loop run finishes
  the promotion exactly once. (A refused version left without its rejection: test_registry.py.)
- MLflow store down: the tracking URI names a loopback port where a real `mlflow server` is not running (yet).
  `earshot promote` says so in one line naming the store, exit 1, registry unchanged; the loop's task retries and
  goes on once the server is up on that port and store.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import mlflow
import onnxruntime as ort
import pytest
import yaml

from components.config import load_params
from components.export import FP32_FILE, INT8_FILE
from components.registry import (
    CHAMPION,
    PREVIOUS,
    champion,
    finish_decision,
    gated_version,
    promotion_log,
    register_candidate,
)
from components.tracks.kws import track as kws
from tests.conftest import free_port, start_mlflow_server, stop_server
from tests.test_continuous import BIN, World


def child_env(prefect_api: str, **extra: str) -> dict[str, str]:
    """The environment of an `earshot` child: the test's Prefect API, the params file's store unless overridden."""
    env = os.environ | {"PREFECT_API_URL": prefect_api, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"} | extra
    if "MLFLOW_TRACKING_URI" not in extra:
        env.pop("MLFLOW_TRACKING_URI", None)
    return env


def earshot(world: World, env: dict[str, str], *args: str, **popen: object) -> subprocess.Popen:
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE} | popen
    return subprocess.Popen([str(BIN / "earshot"), *args, "--params", str(world.params_path)], cwd=world.root,
                            env=env, text=True, **pipes)


@pytest.fixture(scope="module")
def killed_in_training(prefect_api: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """A world whose first `earshot retrain` was SIGKILLed mid-training, then re-run in-process to the end.

    Every test below faults this one world in turn (training costs most of the time) and leaves it one valid champion.
    """
    root = tmp_path_factory.mktemp("faults")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)  # MLflow puts a sqlite store's artifacts under the working directory
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        world = World(root)
        # Ten epochs take the tone world past 90% validation accuracy, enough for a first model, which meets only
        # the gate's absolute checks; the World's forty are for verdicts between two models.
        world.settings["train"] |= {"epochs": 10, "patience": 10}
        world.params_path.write_text(yaml.safe_dump(world.settings, sort_keys=False))
        world.params = load_params(world.params_path)
        model_dir = world.params.out.model_dir
        child = earshot(world, child_env(prefect_api), "retrain", stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 300
        while not (model_dir / "checkpoint.pt").is_file():
            assert child.poll() is None, child.communicate()[1]
            assert time.monotonic() < deadline, "training never wrote a checkpoint"
            time.sleep(0.01)
        # At once: the epoch's metrics are logged before its checkpoint, and an idle machine runs the other nine
        # epochs of the tone world in well under a second (a pause here once let training finish before the kill).
        child.send_signal(signal.SIGKILL)
        child.communicate()
        killed = {"run_id": json.loads((model_dir / "run.json").read_text())["run_id"],
                  "champion": champion(world.client, world.name)}
        yield {"world": world, "killed": killed, "rerun": world.retrain()}
    # The stages left MLflow's process-wide URI on this world's store; set_tracking_uri exports it, so unexport it.
    mlflow.set_tracking_uri("")
    os.environ.pop("MLFLOW_TRACKING_URI", None)


@pytest.fixture
def world(killed_in_training: dict) -> Iterator[World]:
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(killed_in_training["world"].root)
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        yield killed_in_training["world"]


def test_a_killed_retraining_resumes_from_its_checkpoint(killed_in_training: dict) -> None:
    world, killed, rerun = killed_in_training["world"], killed_in_training["killed"], killed_in_training["rerun"]
    assert killed["champion"] is None  # killed before promotion: nothing half-promoted
    assert rerun["outcome"] == "promoted" and rerun["run_id"] == killed["run_id"]
    run = world.client.get_run(rerun["run_id"])
    assert int(run.data.tags["resumed_from_epoch"]) >= 1
    steps = [m.step for m in world.client.get_metric_history(killed["run_id"], "val_accuracy")]
    assert sorted(set(steps)) == list(range(max(steps) + 1))  # one curve, no restart from epoch 0
    assert not (world.params.out.model_dir / "checkpoint.pt").exists()
    world.assert_one_valid_champion()


def partial(path: Path) -> Path:
    """Where components.files.atomic_path writes `path` before renaming it into place."""
    return path.with_name(f".{path.name}.partial")


def published(model_dir: Path) -> dict[str, int]:
    """The ONNX files at their published paths, each checked to load in ONNX Runtime, with their sizes."""
    found = {}
    for name in (FP32_FILE, INT8_FILE):
        if (model_dir / name).exists():
            ort.InferenceSession(str(model_dir / name), providers=["CPUExecutionProvider"])
            found[name] = (model_dir / name).stat().st_size
    return found


def export_completes(world: World) -> None:
    """A re-run of the export stage publishes both files complete and leaves no temporary file behind.

    In this process: the stage function `earshot export` calls, without paying a child's imports again.
    """
    kws.export(world.params)
    model_dir = world.params.out.model_dir
    assert set(published(model_dir)) == {FP32_FILE, INT8_FILE}
    assert not list(model_dir.glob(".*.partial"))


# Runs `earshot export` in a child that SIGKILLs itself halfway through writing the file whose name ends with its
# first argument: half the bytes reach the disk, then the process dies. The window is a fraction of a millisecond
# (the INT8 temporary file lives 0.7 ms; polling never saw the FP32 one), so the kill is injected at the write, a
# fault injection point, not a mock: the export, its files and the kill are real.
TORN_EXPORT = """
import builtins, os, signal, sys
from pipelines.cli import main

torn = sys.argv.pop(1)
real_open = builtins.open

class DiesMidWrite:
    def __init__(self, handle):
        self.handle = handle
    def __enter__(self):
        return self
    def __exit__(self, *exc):
        self.handle.close()
    def write(self, data):
        self.handle.write(data[: len(data) // 2])
        self.handle.flush()
        os.kill(os.getpid(), signal.SIGKILL)

def open_torn(file, mode="r", *args, **kwargs):
    handle = real_open(file, mode, *args, **kwargs)
    return DiesMidWrite(handle) if str(file).endswith(torn) and "w" in mode else handle

builtins.open = open_torn
sys.argv[0] = "earshot"
main()
"""


def test_a_killed_export_publishes_no_half_written_model(world: World, prefect_api: str) -> None:
    model_dir, env = world.params.out.model_dir, child_env(prefect_api)
    for name in (FP32_FILE, INT8_FILE):
        (model_dir / name).unlink()  # so that whatever sits at a published path after a kill is the child's
    for torn, whole in ((FP32_FILE, set()), (INT8_FILE, {FP32_FILE})):
        child = subprocess.run([sys.executable, "-c", TORN_EXPORT, partial(model_dir / torn).name, "export",
                                "--params", str(world.params_path)], cwd=world.root, env=env, capture_output=True,
                               text=True, timeout=300)
        assert child.returncode == -signal.SIGKILL, child.stderr
        assert partial(model_dir / torn).stat().st_size > 0  # the torso is on disk, at the temporary name only
        assert set(published(model_dir)) == whole, f"killed while writing {torn}"
    export_completes(world)  # over the torsos the kills left


def test_a_disk_write_failure_in_export_publishes_nothing(world: World, prefect_api: str) -> None:
    model_dir, env = world.params.out.model_dir, child_env(prefect_api)
    limit = published(model_dir)[FP32_FILE] // 2
    for name in (FP32_FILE, INT8_FILE):
        (model_dir / name).unlink()

    def small_disk() -> None:
        # A real failed write: past `limit` bytes the kernel answers EFBIG, as a full disk answers ENOSPC. SIGXFSZ
        # ignored, as CPython does anyway, so the write fails instead of the process being killed.
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    child = earshot(world, env, "export", preexec_fn=small_disk)
    _, err = child.communicate(timeout=300)
    assert child.returncode == 1
    assert err.strip() == f"error: {model_dir / FP32_FILE}: not written (File too large); nothing was published there"
    assert published(model_dir) == {} and not list(model_dir.glob(".*.partial"))
    export_completes(world)


# Runs in a child process: registers a copy of the champion's version, as decide registers a challenger that passed
# the gate, then promotes it, and SIGKILLs itself right after the registry write named on its command line. The
# write is real; wrapping the client's method only marks the fault injection point, as the window between two
# writes is far too short to hit from outside.
KILLED_PROMOTION = """
import os, signal, sys
from mlflow import MlflowClient
from components.config import load_params
from components.registry import champion, promote, register_candidate, registry_client

params_path, method, argument = sys.argv[1:]
write = getattr(MlflowClient, method)

def write_then_die(self, *args, **kwargs):
    done = write(self, *args, **kwargs)
    if argument in ("", *args):
        os.kill(os.getpid(), signal.SIGKILL)
    return done

setattr(MlflowClient, method, write_then_die)
cfg = load_params(params_path).mlflow
client, name = registry_client(cfg), cfg.registered_model
current = champion(client, name)
tags = {k: v for k, v in current.tags.items() if k != "promoted_at"}
version = register_candidate(client, name, current.run_id, current.source, tags, current.description).version
promote(client, name, version, "gate passed")
sys.exit("no fault injected")
"""


@pytest.mark.parametrize("method, argument", [
    pytest.param("create_model_version", "", id="registered-not-promoted"),
    pytest.param("set_registered_model_alias", PREVIOUS, id="previous-set-champion-not-moved"),
    pytest.param("set_registered_model_alias", CHAMPION, id="champion-moved-not-logged"),
])
def test_a_killed_promotion_is_finished_by_the_next_run(world: World, method: str, argument: str) -> None:
    before, log_before = world.aliases(), promotion_log(world.client, world.name)
    child = subprocess.run([sys.executable, "-c", KILLED_PROMOTION, str(world.params_path), method, argument],
                           cwd=world.root, capture_output=True, text=True, timeout=300)
    assert child.returncode == -signal.SIGKILL, child.stderr
    world.assert_one_valid_champion()  # at every kill point, a champion that can serve
    assert promotion_log(world.client, world.name) == log_before
    new = max(int(v.version) for v in world.client.search_model_versions(f"name='{world.name}'"))

    rerun = world.retrain()

    assert rerun["outcome"] == "skipped" and rerun["version"] == str(new)
    assert f"version {new}: " in rerun["finished"]
    after, log = world.aliases(), promotion_log(world.client, world.name)
    world.assert_one_valid_champion()
    assert (after[CHAMPION], after[PREVIOUS]) == (str(new), before[CHAMPION])
    assert len(log) == len(log_before) + 1
    assert (log[-1].action, log[-1].version, log[-1].replaced) == ("promote", str(new), before[CHAMPION])
    version = world.client.get_model_version(world.name, str(new))
    assert "promoted_at" in version.tags
    assert finish_decision(world.client, world.name, version) == ""  # finished once, not again


def test_a_retried_decision_registers_no_second_version(world: World) -> None:
    # The decide task retried after the store dropped its answer: the run's version exists already.
    report = kws.TRACK.gate_stage(world.params)
    versions = len(world.client.search_model_versions(f"name='{world.name}'"))
    # The newest version of this run's training key (the store-down test registers a spare under a key of its own).
    newest = str(gated_version(world.client, world.name, kws.training_key(world.params)).version)
    log_before = promotion_log(world.client, world.name)

    decision = kws.TRACK.decide(world.params, report, None)

    assert len(world.client.search_model_versions(f"name='{world.name}'")) == versions
    assert decision.version == newest and decision.promoted == (world.aliases()[CHAMPION] == newest)
    assert promotion_log(world.client, world.name) == log_before
    world.assert_one_valid_champion()


class MlflowServer:
    """A real `mlflow server` on loopback over the world's sqlite store, which a test stops and starts."""

    def __init__(self, world: World) -> None:
        self.world, self.port = world, free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = start_mlflow_server(self.world.params.mlflow.uri, self.port, self.world.root,
                                           self.world.root / "mlflow-server.log")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            stop_server(self.process)


@pytest.fixture(scope="module")
def server(killed_in_training: dict) -> Iterator[MlflowServer]:
    """One server (port and store) for the store tests: started, stopped, and started again."""
    store = MlflowServer(killed_in_training["world"])
    try:
        yield store
    finally:
        store.stop()


def store_env(prefect_api: str, server: MlflowServer) -> dict[str, str]:
    # A dead store is known at once here; MLflow's defaults (7 retries, backoff 2) wait minutes first in production.
    return child_env(prefect_api, MLFLOW_TRACKING_URI=server.uri, MLFLOW_HTTP_REQUEST_MAX_RETRIES="0",
                     MLFLOW_HTTP_REQUEST_TIMEOUT="10")


def registry_state(world: World) -> tuple[dict[str, str], int, int]:
    return (world.aliases(), len(world.client.search_model_versions(f"name='{world.name}'")),
            len(promotion_log(world.client, world.name)))


def test_a_store_that_is_down_stops_promotion_in_one_line(world: World, prefect_api: str,
                                                          server: MlflowServer) -> None:
    current = champion(world.client, world.name)
    # A deployable version that is not champion, under a training key of its own so no loop run finishes it.
    tags = {k: v for k, v in current.tags.items() if k != "promoted_at"} | {"training_key": "fault-test-spare"}
    spare = register_candidate(world.client, world.name, current.run_id, current.source, tags,
                               current.description).version
    server.stop()  # down, whatever an earlier test left running
    before = registry_state(world)

    child = earshot(world, store_env(prefect_api, server), "promote", str(spare))
    _, err = child.communicate(timeout=120)

    assert child.returncode == 1
    assert err.strip() == f"error: MLflow store {server.uri} unreachable: Connection refused", err
    assert registry_state(world) == before
    world.assert_one_valid_champion()


class Output:
    """A child's output lines as they come, read by a thread, so the test can wait for one line and then act."""

    def __init__(self, child: subprocess.Popen) -> None:
        self.lines: list[str] = []
        threading.Thread(target=self._read, args=(child.stdout,), daemon=True).start()

    def _read(self, stream: Iterator[str]) -> None:
        for line in stream:
            self.lines.append(line)

    def wait_for(self, text: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while not (found := [line for line in self.lines if text in line]):
            assert time.monotonic() < deadline, f"no line with {text!r} in {timeout} s: " + self.text()
            time.sleep(0.1)
        return found[0]

    def text(self) -> str:
        return "".join(self.lines)


def test_the_loop_retries_a_store_that_is_down_and_goes_on_once_it_is_back(world: World, prefect_api: str,
                                                                           server: MlflowServer) -> None:
    server.stop()
    before = registry_state(world)
    child = earshot(world, store_env(prefect_api, server), "retrain", stderr=subprocess.STDOUT)
    output = Output(child)
    retry = output.wait_for("Retry 1/", timeout=180)
    assert f"StoreUnavailable('MLflow store {server.uri} unreachable: Connection refused')" in retry, retry
    assert registry_state(world) == before  # nothing written while the store was down
    server.start()  # back within the retry window (RETRY_DELAYS_S in pipelines/flows.py), on the same port and store

    assert child.wait(timeout=300) == 0, output.text()
    output.wait_for("nothing to train", timeout=10)
    assert registry_state(world) == before
    world.assert_one_valid_champion()
