"""Shared test fixtures: small params, and Speech Commands trees written by hand or by the real generator."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml
from prefect.settings import PREFECT_API_URL
from prefect.testing.utilities import prefect_test_harness

from components.config import Params
from components.dataset import which_set

PROJECT = Path(__file__).resolve().parents[1]


def tiny_settings(root: Path | None) -> dict:
    """params.yaml with every size cut down so the whole pipeline runs in well under a minute.

    Paths go under `root`, or stay relative (for a DVC repo, whose outputs must live inside it) when root is None.
    """
    def place(path: str) -> str:
        return str(root / path) if root else path

    settings = yaml.safe_load((PROJECT / "params.yaml").read_text())
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
    settings["ingest"] |= {"root": place("data/domains"), "quarantine": place("data/quarantine")}
    settings["train"] |= {"epochs": 3, "batch_size": 32, "patience": 2}
    settings["model"] |= {"channels": 32, "blocks": 1}
    settings["export"] |= {"calibration_clips": 32, "latency_runs": 5, "min_parity": 0.5}
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
def own_tracking_uri() -> Iterator[None]:
    """Put MLFLOW_TRACKING_URI back after every test: mlflow.set_tracking_uri exports it, earshot takes it for the
    user's choice of store, and one test leaving it set sent later tests of its worker to another test's store."""
    before = os.environ.get("MLFLOW_TRACKING_URI")
    yield
    if before is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before


@pytest.fixture(scope="session")
def prefect_api() -> Iterator[str]:
    """A real Prefect API (a local server in a subprocess) for the whole session; yields its URL."""
    with prefect_test_harness(server_startup_timeout=120):
        yield PREFECT_API_URL.value()


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
