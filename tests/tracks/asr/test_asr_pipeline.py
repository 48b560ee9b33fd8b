"""The speech-to-text track end to end: the real `dvc repro` with `track: asr` in a temporary git + DVC repo."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest
import soundfile as sf
import torch

from components.asr_export import onnx_log_probs
from components.asr_model import load_transcriber, output_frames, pad_batch
from components.config import load_params
from components.dataset import read_audio
from components.export import INT8_FILE
from components.runs import model_file
from components.serving import ARTIFACTS, PackagedModel
from components.tracks.asr import track as asr
from tests.conftest import tiny_settings
from tests.test_pipeline import changed_copy, reproduced_repo, run


def tiny_asr_settings() -> dict:
    """params.yaml on the asr track, cut to a corpus of a few speakers and a model that trains in seconds."""
    settings = tiny_settings(None)
    settings["track"] = "asr"
    asr = settings["asr"]
    asr["corpus"] |= {"speakers_per_domain": 4, "utterances_per_speaker": 3, "validation_percentage": 25.0,
                      "testing_percentage": 25.0}
    asr["model"] |= {"channels": 32, "blocks": 2}
    asr["train"] |= {"epochs": 2, "batch_size": 4, "patience": 2}
    asr["export"] |= {"calibration_clips": 4}
    return settings


@pytest.fixture(scope="module")
def asr_repo(tmp_path_factory):
    return reproduced_repo(tmp_path_factory.mktemp("asr-repo"), tiny_asr_settings())


def test_asr_track_repro_builds_evaluates_exports_and_gates(asr_repo):
    metrics = json.loads((asr_repo / "reports/asr/metrics.json").read_text())
    assert set(metrics["per_domain"]) == {"studio_us", "car_scottish"}
    assert 0.0 <= metrics["wer"] and metrics["utterances"] > 0
    exported = json.loads((asr_repo / "reports/asr/export.json").read_text())
    assert {v["name"] for v in exported["variants"]} == {"pytorch", "onnx_fp32", "onnx_int8"}
    assert all(v["rtf"] > 0 for v in exported["variants"])
    gate = json.loads((asr_repo / "reports/asr/gate.json").read_text())
    assert {c["name"] for c in gate["checks"]} == {"INT8 WER within FP32's", "INT8 real-time factor (1 thread)",
                                                   "INT8 size"}  # no champion yet: absolute checks only
    for out in ("models/asr/model.onnx", "models/asr/model.int8.onnx", "reports/asr/evaluation.png",
                "data/features/asr/studio_us.pt", "data/synth/asr/studio_us/test"):
        assert (asr_repo / out).exists(), out
    assert "wer" in run(["dvc", "metrics", "show", "--json"], asr_repo).stdout
    run_id = json.loads((asr_repo / "models/asr/run.json").read_text())["run_id"]
    logged = mlflow.MlflowClient(tracking_uri=f"sqlite:///{asr_repo / 'mlflow.db'}").get_run(run_id)
    assert logged.data.tags["track"] == "asr" and "test_wer.studio_us" in logged.data.metrics
    assert "export.onnx_int8.wer" in logged.data.metrics


def test_asr_second_repro_runs_nothing(asr_repo):
    assert "Running stage" not in run(["dvc", "repro"], asr_repo).stdout


def test_earshot_summary_reports_the_asr_track_wer_per_domain(asr_repo):
    metrics = json.loads((asr_repo / "reports/asr/metrics.json").read_text())
    shown = run(["earshot", "summary"], asr_repo).stdout
    assert "speech to text" in shown and f"{metrics['wer']:.2%}" in shown
    assert all(domain in shown for domain in metrics["per_domain"])


def test_earshot_predict_transcribes_the_test_split_as_the_pipeline_does(asr_repo, monkeypatch):
    """From the raw files, the packaged model computes the very log-probabilities the INT8 model gives the stored
    features, and `earshot predict` prints the pipeline's transcripts; `earshot stream` prints final, timestamped
    transcripts."""
    monkeypatch.chdir(asr_repo)
    params = load_params("params.yaml")
    test = asr.load_data(params).split("testing")
    model, card = load_transcriber(model_file(params))
    acoustic, decoder = onnx_log_probs(params.out.model_dir / INT8_FILE), asr.decoder_for(card, params)
    files = asr.utterance_files(params).set_index("id")["file"]
    packaged = PackagedModel(asr_repo / "models/asr/package" / ARTIFACTS)
    stored = []
    for mels, utterance in zip(test.mels, test.ids, strict=True):
        stored.append(acoustic(pad_batch(model, [mels.float()]))[: output_frames(model, mels.shape[1])])
        from_file = packaged.scores(packaged.log_mel(read_audio(Path(files[utterance]), params.asr.sample_rate)[0]))
        assert torch.equal(from_file, stored[-1]), utterance
    done = run(["earshot", "predict", "--model", "models/asr/package", "--json", *(files[i] for i in test.ids)],
               asr_repo)
    answers = [json.loads(line)["transcript"] for line in done.stdout.splitlines()]
    assert answers == [decoder.decode(lp) for lp in stored]

    streamed = run(["earshot", "stream", "--model", "models/asr/package", "--json", files[test.ids[0]]], asr_repo)
    seconds = sf.info(files[test.ids[0]]).duration
    for event in map(json.loads, streamed.stdout.splitlines()):
        assert event["final"] and event["text"] and 0.0 <= event["start_s"] < event["end_s"] <= seconds + 0.5


def test_asr_track_goes_through_the_same_loop_registry_and_promotion(asr_repo, prefect_api, tmp_path):
    # The flow runs the stages itself, not through DVC: retrained outputs (a new run id in run.json and the model
    # card) in the shared repo made a second-repro test that pytest-randomly ran later rerun train and all after it.
    repo = changed_copy(asr_repo, tmp_path / "repo")
    env_run = ["env", f"PREFECT_API_URL={prefect_api}", "earshot", "retrain"]
    first = run(env_run, repo).stdout
    assert "promoted: model version 1" in first
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{repo / 'mlflow.db'}")
    version = client.get_model_version_by_alias("earshot-asr", "champion")
    assert version.tags["track"] == "asr" and version.tags["gate"] == "passed"
    assert float(version.tags["int8_rtf"]) > 0 and "int8_wer_gap_points" in version.tags
    assert "Gate PASSED" in version.description and "INT8 WER within FP32's" in version.description
    assert "skipped: model version 1" in run(env_run, repo).stdout  # same data and settings: nothing to train
