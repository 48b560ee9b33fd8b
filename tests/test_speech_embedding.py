"""The frozen speech embedding on real audio: its shape, its determinism, and that it carries a word from one
synthesizer to another far better than log-mels do."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from components.acoustics import resample
from components.config import Features, load_params
from components.features import LogMel
from components.piper_speech import draw_piper_talker
from components.runs import PACKAGE_DIR
from components.speech import NATURAL_VARIANTS, Speaker, Talker
from components.speech_embedding import EMBEDDING_DIM, SpeechEmbedding, embed, window_count
from pipelines.cli import app
from pipelines.stages import STAGES
from tests.conftest import (
    free_port,
    healthy,
    invoke,
    start_model_server,
    stop_server,
    tiny_settings,
    wait_until,
    write_tree,
)
from tests.test_continuous import pitches, speakers

WORDS = "yes no up down left right on off stop go".split()


def spoken(talkers: list[Talker]) -> tuple[np.ndarray, np.ndarray]:
    """Every word by every talker as 1 s clips at 16 kHz, and the word's index."""
    clips, labels = [], []
    for talker in talkers:
        for label, word in enumerate(WORDS):
            audio = resample(talker.say(word), talker.sample_rate, 16000)[:16000]
            clips.append(np.pad(audio, (0, 16000 - len(audio))))
            labels.append(label)
    return np.stack(clips).astype(np.float32), np.array(labels)


def nearest_centroid_accuracy(train: np.ndarray, train_labels: np.ndarray, test: np.ndarray,
                              test_labels: np.ndarray) -> float:
    """Share of test clips nearest (standardized Euclidean) to their own word's mean training vector."""
    mean, scale = train.mean(0), train.std(0) + 1e-6
    train, test = (train - mean) / scale, (test - mean) / scale
    centroids = np.stack([train[train_labels == k].mean(0) for k in range(len(WORDS))])
    nearest = ((test[:, None] - centroids[None]) ** 2).sum(-1).argmin(1)
    return float((nearest == test_labels).mean())


@pytest.fixture(scope="module")
def espeak_and_piper() -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(0)
    espeak = [Speaker(voice="en-us", variant=NATURAL_VARIANTS[int(rng.integers(len(NATURAL_VARIANTS)))],
                      rate=int(rng.integers(140, 200)), pitch=int(rng.integers(0, 100))) for _ in range(10)]
    return spoken(espeak), spoken([draw_piper_talker(rng) for _ in range(5)])


def test_embedding_has_one_96_d_vector_per_80_ms_and_is_deterministic():
    clips = np.random.default_rng(1).normal(0, 0.1, (3, 16000)).astype(np.float32)
    out = SpeechEmbedding()(torch.from_numpy(clips))
    assert out.shape == (3, EMBEDDING_DIM, window_count(32000)) == (3, 96, 16)
    assert np.isfinite(out.numpy()).all()
    assert np.array_equal(embed(clips), out.numpy())
    # Batching does not change a clip's embedding.
    assert np.allclose(embed(clips[1:2]), out.numpy()[1:2], atol=1e-5)


def test_embedding_carries_words_from_espeak_to_piper_far_better_than_log_mels(espeak_and_piper):
    # 100 espeak-ng clips (10 speakers) teach a nearest-centroid rule; 50 Piper clips (5 speakers) test it.
    # Measured 0.76 for the embedding and 0.44 for log-mels (chance 0.10); at 50 clips one standard error is ~0.06,
    # so the bounds below sit about three standard errors under what was measured.
    (espeak, espeak_labels), (piper, piper_labels) = espeak_and_piper

    def pooled(clips: np.ndarray) -> np.ndarray:
        vectors = embed(clips)
        return np.concatenate([vectors.mean(2), vectors.max(2)], 1)

    def flat_log_mels(clips: np.ndarray) -> np.ndarray:
        return LogMel(Features(), 16000)(torch.from_numpy(clips)).flatten(1).numpy()

    embedding = nearest_centroid_accuracy(pooled(espeak), espeak_labels, pooled(piper), piper_labels)
    log_mel = nearest_centroid_accuracy(flat_log_mels(espeak), espeak_labels, flat_log_mels(piper), piper_labels)
    assert embedding >= 0.55, embedding
    assert embedding - log_mel >= 0.15, (embedding, log_mel)


def test_a_speech_embedding_model_is_one_package_that_answers_alike_in_earshot_predict_and_mlflow_models_serve(
        tmp_path: Path, monkeypatch):
    """features.kind speech_embedding through the real stages: the package runs the frozen front end and the INT8
    head, so `earshot predict` and `mlflow models serve` give the same labels and confidences for the same clips;
    the export report times the front end, and the gate judges the two together. A tone tree: this is about the
    package, not about what the head learns."""
    monkeypatch.chdir(tmp_path)  # a sqlite store keeps its artifacts under the working directory
    settings = tiny_settings(tmp_path)
    settings["features"]["kind"] = "speech_embedding"
    tree = write_tree(tmp_path / "tones", pitches(settings, 300.0), speakers("e", 8))
    settings["dataset"]["domains"] = {"tones": str(tree)}
    settings["gate"]["max_int8_latency_ms"] = 500.0  # the embedding's budget: ~10 ms a clip
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(settings))
    params = load_params(params_file)
    for stage in ("featurize", "train", "export", "gate"):
        STAGES[stage](params)
    exported = json.loads((params.out.reports / "export.json").read_text())
    assert exported["front_end_ms_p50"] > 1.0  # the embedding, not a log-mel (~0.1 ms)
    int8 = next(v for v in exported["variants"] if v["name"] == "onnx_int8")
    gated = json.loads((params.out.reports / "gate.json").read_text())["challenger"]["int8_latency_ms"]
    assert gated == pytest.approx(int8["latency_ms_p50"] + exported["front_end_ms_p50"])
    package = params.out.model_dir / PACKAGE_DIR
    clips = sorted(tree.glob("[a-z]*/*.wav"))[::5]
    done = CliRunner().invoke(app, ["predict", "--json", "--model", str(package), "--params", str(params_file),
                                    *map(str, clips)])
    assert done.exit_code == 0, done.output
    expected = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(expected) == len(clips)

    port, log = free_port(), tmp_path / "serve.log"
    server = start_model_server(str(package), settings["tracking"]["uri"], port, tmp_path, log)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: healthy(url), server, "mlflow models serve", log)
        status, answer = invoke(url, {"audio": [base64.b64encode(clip.read_bytes()).decode() for clip in clips]})
        assert status == 200, answer
        served = answer["predictions"]
        assert [p["label"] for p in served] == [e["label"] for e in expected]
        assert [p["confidence"] for p in served] == pytest.approx([e["confidence"] for e in expected], abs=1e-6)
    finally:
        stop_server(server)
