"""Shared test fixtures: small params, Speech Commands trees written by hand or by the real generator, and real
servers on loopback (an `mlflow server`) that tests start and stop."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml
from mlflow.tracking._model_registry import utils as registry_uris
from prefect.settings import PREFECT_API_URL
from prefect.testing.utilities import prefect_test_harness

from components.config import Params
from components.dataset import which_set

PROJECT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def free_port() -> int:
    """A TCP port on loopback that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_mlflow_server(backend_uri: str, port: int, cwd: Path, log: Path, *options: str) -> subprocess.Popen:
    """`mlflow server` on 127.0.0.1:port over `backend_uri`, in a process group of its own, its output appended to
    `log`. Job execution is off: its runner and huey consumers outlive a terminated server and double start-up."""
    with log.open("ab") as out:
        return subprocess.Popen(
            [str(BIN / "mlflow"), "server", "--backend-store-uri", backend_uri, "--host", "127.0.0.1",
             "--port", str(port), "--workers", "1", *options], cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True, env=os.environ | {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})


def start_model_server(model_uri: str, store_uri: str, port: int, cwd: Path, log: Path) -> subprocess.Popen:
    """`mlflow models serve` of `model_uri` (resolved in `store_uri`) on 127.0.0.1:port in this environment, in a
    process group of its own, its output appended to `log`; stop it with stop_server."""
    with log.open("ab") as out:
        return subprocess.Popen(
            [str(BIN / "mlflow"), "models", "serve", "-m", model_uri, "--env-manager", "local", "--host",
             "127.0.0.1", "--port", str(port), "--workers", "1"], cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True, env=os.environ | {"MLFLOW_TRACKING_URI": store_uri,
                                                      # it starts `uvicorn` from PATH
                                                      "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"})


def invoke(url: str, columns: dict[str, list]) -> tuple[int, dict]:
    """POST a table of clips (column name -> values) to a model server's /invocations; its status and JSON answer."""
    body = json.dumps({"dataframe_split": {"columns": list(columns), "data": [list(row) for row in
                                                                             zip(*columns.values(), strict=True)]}})
    request = urllib.request.Request(f"{url}/invocations", body.encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            return answer.status, json.load(answer)
    except urllib.error.HTTPError as refused:
        return refused.code, json.load(refused)


def healthy(url: str) -> bool:
    """Whether the MLflow server at `url` answers its health check."""
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=5) as answer:
            return answer.status == 200
    except OSError:
        return False


def wait_until(ready: Callable[[], bool], process: subprocess.Popen, what: str, log: Path) -> None:
    """Poll `ready` until it is true; fail with the log's end if `process` dies or 3 minutes pass."""
    deadline = time.monotonic() + 180
    while not ready():
        if process.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"{what} did not start (exit {process.poll()}); its log ends:\n{log.read_text()[-3000:]}")
        time.sleep(0.5)


def stop_server(process: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    """`sig` to a server's process group (mlflow forks uvicorn); SIGKILL to whatever of it is left once the server
    has exited or 30 s have passed."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, sig)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=30)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


SEED_OPTION = "--training-seed"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(SEED_OPTION, type=int, default=None,
                     help="train every test model from this seed instead of params.yaml's (make test-flaky)")


# Modules whose tests train models and check what they learned: `-m learns` selects them, and make test-flaky runs
# them from other seeds to catch a test that passes by one lucky seed.
LEARNING_MODULES = {"test_asr_pipeline", "test_asr_train", "test_continuous", "test_custom_keywords",
                    "test_distributed", "test_export", "test_faults", "test_keywords", "test_pipeline",
                    "test_review_ui", "test_scaling", "test_sound_drops", "test_sound_pipeline", "test_sound_train",
                    "test_train", "test_transcript_story"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.module.__name__.rpartition(".")[2] in LEARNING_MODULES:
            item.add_marker(pytest.mark.learns)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "learns: trains a model and checks what it learned (make test-flaky)")
    global TRAINING_SEED
    chosen = config.getoption(SEED_OPTION)
    TRAINING_SEED = chosen if chosen is not None else yaml.safe_load((PROJECT / "params.yaml").read_text())["seed"]


TRAINING_SEED: int = 0  # set by pytest_configure before any test runs


def training_seed() -> int:
    """The seed test models train from: params.yaml's, or the one `--training-seed` gives (make test-flaky)."""
    return TRAINING_SEED


def tiny_settings(root: Path | None) -> dict:
    """params.yaml with every size cut down so the whole pipeline runs in well under a minute.

    Paths go under `root`, or stay relative (for a DVC repo, whose outputs must live inside it) when root is None.
    """
    def place(path: str) -> str:
        return str(root / path) if root else path

    settings = yaml.safe_load((PROJECT / "params.yaml").read_text())
    settings["seed"] = training_seed()
    settings["paths"] = {k: place(v) for k, v in settings["paths"].items()}
    settings["tracking"]["uri"] = f"sqlite:///{place('mlflow.db')}"
    synthesis = settings["synthesis"]
    synthesis |= {"out_dir": place("data/synth"), "speakers_per_domain": 10, "takes_per_word": 1,
                  "background_seconds": 20, "unknown_words": ["bed", "cat"],
                  "validation_percentage": 25.0, "testing_percentage": 25.0}
    synthesis["domains"] = {k: synthesis["domains"][k] for k in ("studio_us", "car_scottish")}
    settings["dataset"]["domains"] = {k: place(f"data/synth/kws/{k}") for k in synthesis["domains"]}
    settings["asr"]["corpus"]["domains"] = list(synthesis["domains"])
    settings["asr"]["domains"] = {k: place(f"data/synth/asr/{k}") for k in synthesis["domains"]}
    for ingest in (settings["ingest"], settings["esc"]["ingest"], settings["asr"]["ingest"]):
        ingest |= {key: place(ingest[key]) for key in ("root", "quarantine")}
    settings["esc"]["root"] = place(settings["esc"]["root"])
    settings["train"] |= {"epochs": 3, "batch_size": 32, "patience": 2}
    settings["model"] |= {"channels": 32, "blocks": 1}
    settings["export"] |= {"calibration_clips": 32, "latency_runs": 5, "min_parity": 0.5}
    # No speaker transforms: the hand-made worlds tell words apart by pitch alone (tones 100 Hz apart), and a pitch
    # shift or a mel warp of up to 12 % moves a tone onto its neighbour's label. tests/test_augment.py tests them.
    settings["augment"] |= {"vtlp_probability": 0.0, "pitch_probability": 0.0, "tempo_probability": 0.0}
    return settings


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """Torch on one thread for a module of small models: they gain nothing from a second thread, and when another
    job holds the other core OpenMP's spinning made 60 training steps take 37 s instead of 5 s."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def own_mlflow_uris() -> Iterator[None]:
    """Put the MLflow tracking and registry URIs back after every test: mlflow.set_tracking_uri and set_registry_uri
    export them, earshot takes them for the user's choice of store, and one test leaving them set sent later tests of
    its worker (and their subprocesses) to another test's store, where a registry search found no versions."""
    before = {name: os.environ.get(name) for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    registry = registry_uris._registry_uri
    yield
    # Read and written directly: mlflow.get_registry_uri() answers the tracking URI when none was set, so it cannot
    # tell "unset" apart, and set_registry_uri(None) would leave the exported variable (restored below).
    registry_uris._registry_uri = registry
    for name, value in before.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture(scope="session")
def prefect_api() -> Iterator[str]:
    """A real Prefect API (a local server in a subprocess) for the whole session; yields its URL."""
    with prefect_test_harness(server_startup_timeout=120):
        yield PREFECT_API_URL.value()


def read_api(method: str, **filters) -> list:
    """Call one read method of the Prefect client against the test API."""
    from prefect.client.orchestration import get_client

    async def call() -> list:
        async with get_client() as client:
            return await getattr(client, method)(**filters)

    return asyncio.run(call())


@pytest.fixture
def tiny_params(tmp_path: Path) -> Params:
    return Params.model_validate(tiny_settings(tmp_path))


def tone(freq: float, seconds: float = 1.0, rate: int = 16000, level: float = 0.3) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    return (level * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def write_tree(root: Path, words: dict[str, float], speakers: list[str], rate: int = 16000, detune: int = 0) -> Path:
    """A hand-made Speech Commands v2 tree: each word a tone of its own pitch, split lists by the real rule.

    Speaker s says a word at its pitch times 1 + 0.002 (s + detune), so trees with other `detune` hold other audio.
    """
    val, test = [], []
    for word, freq in words.items():
        (root / word).mkdir(parents=True, exist_ok=True)
        for s, speaker in enumerate(speakers):
            name = f"{word}/{speaker}_nohash_0.wav"
            sf.write(root / name, tone(freq * (1 + 0.002 * (s + detune)), rate=rate), rate, subtype="PCM_16")
            split = which_set(name, 20.0, 20.0)
            (val if split == "validation" else test if split == "testing" else []).append(name)
    (root / "validation_list.txt").write_text("\n".join(val) + "\n")
    (root / "testing_list.txt").write_text("\n".join(test) + "\n")
    (root / "_background_noise_").mkdir(exist_ok=True)
    noise = np.random.default_rng(0).normal(0, 0.05, rate * 30).astype(np.float32)
    sf.write(root / "_background_noise_" / "white_noise.wav", noise, rate, subtype="PCM_16")
    (root / "README.md").write_text("not audio, as in the real dataset\n")
    return root


def chance_tail(correct: int, clips: int, classes: int) -> float:
    """P(at least `correct` of `clips` right) for a guesser that picks one of `classes` at random: how likely a score
    this high is by chance alone (the binomial tail), so a test can say a model learned at a stated significance."""
    p = 1.0 / classes
    return sum(math.comb(clips, k) * p**k * (1 - p) ** (clips - k) for k in range(correct, clips + 1))
