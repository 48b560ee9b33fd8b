"""Custom keywords end to end with the real CLI: `earshot encoder` registers the encoder, `earshot keywords add`
trains a head on it (synthesized takes plus recorded ones), exports, gates and promotes it with its lineage."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import soundfile as sf
import yaml

from components.acoustics import resample
from components.registry import CHAMPION
from components.speech import SPEECH_RATE, Speaker, speak
from tests.conftest import tiny_settings

BIN = Path(sys.executable).parent


def earshot(root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = os.environ | {"PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    env.pop("MLFLOW_TRACKING_URI", None)
    done = subprocess.run([str(BIN / "earshot"), *args, "--params", str(root / "params.yaml")], cwd=root, env=env,
                          capture_output=True, text=True, timeout=900)
    if check and done.returncode != 0:
        raise AssertionError(f"earshot {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return done


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A project with a tiny encoder and keyword head (a gate every model passes), recordings of the phrases at
    44.1 kHz in a drop, after `earshot encoder` and `earshot keywords add`."""
    root = tmp_path_factory.mktemp("keywords")
    settings = tiny_settings(root)
    settings["keywords"] = {
        "phrases": ["hey device", "next"], "negative_seconds": 20.0,
        "encoder": {"speakers": 6, "validation_speakers": 2, "words": 30, "epochs": 2},
        "head": {"train_speakers": 2, "takes": 1, "unknown_clips": 6, "speech_clips": 6, "silence_clips": 4,
                 "test_speakers": 4, "epochs": 3, "stream_seconds": 10.0, "insertions": 2},
        "gate": {"max_false_accepts_per_hour": 1e9, "min_recall": 0.0, "min_accuracy": 0.0, "min_int8_parity": 0.0}}
    (root / "params.yaml").write_text(yaml.safe_dump(settings, sort_keys=False))
    for phrase in settings["keywords"]["phrases"]:
        folder = root / "drop" / phrase.replace(" ", "_")
        folder.mkdir(parents=True)
        for take, voice in enumerate(("en-us", "en-gb")):
            sf.write(folder / f"take{take}.wav", 0.5 * resample(speak(phrase, Speaker(voice)), SPEECH_RATE, 44100),
                     44100)
    earshot(root, "encoder")
    earshot(root, "keywords", "add", "--drop", str(root / "drop"))
    return root


def client(root: Path) -> mlflow.MlflowClient:
    uri = f"sqlite:///{root / 'mlflow.db'}"
    return mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)


def test_encoder_and_keyword_model_are_registered_with_their_lineage(project):
    registry = client(project)
    encoder = registry.get_model_version_by_alias("earshot-encoder", CHAMPION)
    keywords = registry.get_model_version_by_alias("earshot-keywords", CHAMPION)
    assert len(encoder.tags["dataset_version"]) == 16
    assert keywords.tags["encoder_version"] == str(encoder.version)
    assert keywords.tags["encoder_dataset_version"] == encoder.tags["dataset_version"]
    assert len(keywords.tags["dataset_version"]) == 16 and keywords.tags["phrases"] == "hey device | next"
    assert keywords.tags["gate"] == "passed" and "Gate PASSED" in keywords.description
    run = registry.get_run(keywords.run_id)
    assert {"held_out_accuracy", "false_accepts_per_hour", "recall", "threshold"} <= set(run.data.metrics)
    assert run.data.metrics["negative_hours"] == pytest.approx(20.0 / 3600, rel=0.5)
    assert {Path(a.path).name for a in registry.list_artifacts(keywords.run_id, "gate")} == {"gate.md", "gate.json"}


def test_the_keyword_model_serves_like_any_packaged_model(project):
    clip = project / "drop/next/take0.wav"
    done = earshot(project, "predict", "--json", "--model", "models:/earshot-keywords@champion", str(clip))
    answer = json.loads(done.stdout)
    assert answer["label"] in {"hey device", "next", "_silence_", "_unknown_"} and 0 < answer["confidence"] <= 1
    card = json.loads((project / "models/keywords/package/artifacts/front_end.json").read_text())
    assert card["clip_samples"] == 24000 and card["label_names"][:2] == ["hey device", "next"]


def test_recordings_of_another_phrase_are_refused_in_one_line(project):
    done = earshot(project, "keywords", "add", "hey device", "--drop", str(project / "drop"), check=False)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"error: {project / 'drop/next'}: not one of the phrases ['hey device']"]


def test_an_unknown_head_setting_is_refused_in_one_line(project, tmp_path):
    settings = yaml.safe_load((project / "params.yaml").read_text())
    settings["keywords"]["head"]["epoch"] = 3
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(settings))
    done = earshot(tmp_path, "keywords", "add", check=False)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[0].startswith("error: params.yaml: keywords.head.epoch: unknown setting")


def test_a_retrained_keyword_model_is_judged_against_the_champion(project):
    """Runs last in this file: it moves the champion alias."""
    registry = client(project)
    first = registry.get_model_version_by_alias("earshot-keywords", CHAMPION)
    earshot(project, "keywords", "add", "--drop", str(project / "drop"))
    gate = json.loads((project / "reports/keywords/gate.json").read_text())
    assert gate["champion"]["recall"] == pytest.approx(float(first.tags["recall"]))
    assert gate["champion"]["int8_parity"] == pytest.approx(float(first.tags["int8_parity"]))
    versus = next(c for c in gate["checks"] if c["name"] == "recall not lower than the champion's")
    assert versus["passed"] == (gate["challenger"]["recall"] >= gate["champion"]["recall"])
    second = registry.get_model_version(first.name, str(int(first.version) + 1))
    assert second.tags["gate"] == ("passed" if gate["passed"] else "refused")
    assert registry.get_model_version_by_alias(first.name, CHAMPION).version == (
        second.version if gate["passed"] else first.version)
