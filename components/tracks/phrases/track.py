"""Custom keywords: `earshot encoder` trains the speech encoder once (registered as earshot-encoder@champion);
`earshot keywords add PHRASE...` trains a small head on it, and exports, gates and promotes it like any model.

The keyword model is packaged like the keyword track's (log-mel in, labels out), so `earshot predict`, `earshot
stream` and `mlflow models serve` run it unchanged.
"""

from __future__ import annotations

import dataclasses
import hashlib
import tempfile
from pathlib import Path
from typing import Any, TypeVar

import mlflow
import numpy as np
import torch
from pydantic import BaseModel

from components.challenge import Decision
from components.config import ConfigError, Features, Params, Tracking
from components.dataset import fit_length, read_audio
from components.encoder import (
    EncoderSettings,
    WordEncoder,
    load_encoder,
    save_encoder,
    synthesize_word_corpus,
    train_encoder,
)
from components.errors import EarshotError
from components.export import export_models
from components.features import LogMel, featurize
from components.files import write_text_atomically
from components.gate import GateReport, KeywordCandidate, gate_keywords
from components.keywords import (
    KeywordClips,
    KeywordModel,
    KeywordSettings,
    accuracy,
    detection_curve,
    draw_talkers,
    join_clips,
    negative_streams,
    operating_point,
    phrase_clips,
    positive_streams,
    train_keyword_head,
)
from components.registry import CHAMPION, PREVIOUS, champion, promote, register_candidate, registry_client, reject
from components.runs import PACKAGE_DIR, console, report_epoch
from components.serving import package_model
from components.tracking import flatten, use_store

ENCODER_FILE = "encoder.pt"
Settings = TypeVar("Settings", EncoderSettings, KeywordSettings)


def _settings(kind: type[Settings], where: str, overrides: dict[str, Any], **fixed: Any) -> Settings:
    """`kind`'s defaults with params.yaml's overrides (a nested settings model given as a mapping) and `fixed`."""
    defaults = kind()
    names = {f.name for f in dataclasses.fields(kind)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ConfigError(f"params.yaml: {where}.{unknown[0]}: unknown setting (known: {', '.join(sorted(names))})")
    values = {}
    for key, value in overrides.items():
        default = getattr(defaults, key)
        values[key] = (type(default).model_validate(value) if isinstance(default, BaseModel)
                       else tuple(value) if isinstance(default, tuple) else value)
    return dataclasses.replace(defaults, **values, **fixed)


def encoder_settings(params: Params) -> EncoderSettings:
    return _settings(EncoderSettings, "keywords.encoder", params.keywords.encoder, seed=params.seed,
                     features=params.features, sample_rate=params.dataset.sample_rate)


def keyword_settings(params: Params, phrases: list[str], card: dict[str, Any]) -> KeywordSettings:
    """The head's settings; features and rate are the encoder's, the operating point's budget the gate's."""
    return _settings(KeywordSettings, "keywords.head", params.keywords.head, seed=params.seed,
                     phrases=tuple(p.strip().lower() for p in phrases), features=Features(**card["features"]),
                     sample_rate=card["sample_rate"],
                     max_fa_per_hour=params.keywords.gate.max_false_accepts_per_hour)


def _data_version(*arrays: torch.Tensor | np.ndarray, text: str = "") -> str:
    """A content hash of what a model trained on: the data version its registered version is tagged with."""
    digest = hashlib.sha256(text.encode())
    for array in arrays:
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()[:16]


def train_encoder_stage(params: Params) -> str:
    """Synthesize the word corpus, train the encoder, log it, register it and make it champion; returns its version.

    Trained rarely: every keyword model reuses the champion encoder.
    """
    settings, tracking = encoder_settings(params), params.mlflow_of("encoder")
    corpus = synthesize_word_corpus(settings, params.synthesis.domains, params.paths.clip_cache / "encoder")
    version = _data_version(corpus.waves, corpus.labels, corpus.speakers, text=" ".join(corpus.words))
    console.print(f"encoder corpus: {len(corpus.words)} words x {settings.speakers} talkers ({len(corpus.waves)} "
                  f"clips), data version {version}", highlight=False)
    path = params.paths.model_dir / "encoder" / ENCODER_FILE
    use_store(tracking)
    with mlflow.start_run(run_name="encoder", tags={"dataset_version": version, "kind": "encoder"}) as run:
        mlflow.log_params({k: str(v)[:6000] for k, v in flatten(dataclasses.asdict(settings)).items()})
        result = train_encoder(corpus, settings, on_epoch=report_epoch)
        save_encoder(result, settings, corpus.words, path)
        mlflow.log_artifact(str(path), artifact_path="encoder")
        mlflow.log_metric("val_accuracy", result.val_accuracy)
    client = registry_client(tracking)
    tags = {"dataset_version": version, "words": str(len(corpus.words)), "speakers": str(settings.speakers),
            "val_accuracy": f"{result.val_accuracy:.4f}", "gate": "passed"}
    card = (f"Speech encoder trained in run `{run.info.run_id}` on data version `{version}`: {len(corpus.words)} "
            f"words x {settings.speakers} synthesized talkers, word accuracy {result.val_accuracy:.2%} on held-out "
            f"talkers. Never trained on: {', '.join(settings.exclude)}.")
    registered = str(register_candidate(client, tracking.registered_model, run.info.run_id,
                                        f"runs:/{run.info.run_id}/encoder", tags, card).version)
    # An encoder has no gate of its own (the keyword models built on it have theirs): the newest one serves.
    current = champion(client, tracking.registered_model)
    if current is not None:
        client.set_registered_model_alias(tracking.registered_model, PREVIOUS, current.version)
    client.set_registered_model_alias(tracking.registered_model, CHAMPION, registered)
    console.print(f"encoder: version {registered} is champion (held-out word accuracy {result.val_accuracy:.1%})",
                  highlight=False)
    return registered


def champion_encoder(params: Params) -> tuple[WordEncoder, dict[str, Any], str, str]:
    """The encoder holding alias champion, its card, version and data version; one line if there is none."""
    tracking = params.mlflow_of("encoder")
    client = registry_client(tracking)
    current = champion(client, tracking.registered_model)
    if current is None:
        raise EarshotError(f"model {tracking.registered_model!r} has no champion: train the encoder first "
                           "(`earshot encoder`)")
    with tempfile.TemporaryDirectory() as scratch:
        path = mlflow.artifacts.download_artifacts(artifact_uri=f"runs:/{current.run_id}/encoder/{ENCODER_FILE}",
                                                   dst_path=scratch, tracking_uri=client.tracking_uri)
        encoder, card = load_encoder(Path(path))
    return encoder, card, str(current.version), current.tags.get("dataset_version", "")


def recordings(drop: Path, settings: KeywordSettings) -> KeywordClips:
    """Real recordings of the phrases: drop/<phrase>/*.wav (a phrase's spaces may be written as _ or -), each
    centred in the keyword window; AudioError names a file that does not decode."""
    label_of = {p.replace(" ", sep): i for i, p in enumerate(settings.phrases) for sep in (" ", "_", "-")}
    if not drop.is_dir():
        raise EarshotError(f"{drop}: no such folder of recordings")
    unknown = sorted(d.name for d in drop.iterdir() if d.is_dir() and d.name not in label_of)
    if unknown:
        raise EarshotError(f"{drop / unknown[0]}: not one of the phrases {list(settings.phrases)}")
    files = sorted(p for p in drop.glob("*/*") if p.suffix.lower() in {".wav", ".flac", ".ogg"})
    if not files:
        raise EarshotError(f"{drop}: no recordings (expected {drop}/<phrase>/*.wav)")
    waves = [fit_length(read_audio(f, settings.sample_rate)[0], settings.window_samples) for f in files]
    return KeywordClips(torch.from_numpy(np.stack(waves)), torch.tensor([label_of[f.parent.name] for f in files]),
                        torch.full((len(files),), -1), settings.labels)


def add_keywords(params: Params, phrases: list[str] | None = None, drop: Path | None = None) -> Decision:
    """Train, evaluate, export, gate and register a keyword model for `phrases` (default keywords.phrases) on the
    champion encoder, from synthesized takes (and real recordings in `drop`); promote it if the gate passes."""
    cfg = params.keywords
    encoder, card, encoder_version, encoder_data = champion_encoder(params)
    settings = keyword_settings(params, phrases or cfg.phrases, card)
    recipes = params.synthesis.domains
    train_talkers = draw_talkers(recipes, settings.train_speakers, settings.seed, "training")
    test_talkers = draw_talkers(recipes, settings.test_speakers, settings.seed, "testing")
    train = phrase_clips(settings, recipes, train_talkers, takes=settings.takes, unknown=settings.unknown_clips,
                         silence=settings.silence_clips, group="training", speech=settings.speech_clips)
    if drop is not None:
        train = join_clips(train, recordings(drop, settings))
    test = phrase_clips(settings, recipes, test_talkers, takes=1, unknown=settings.test_speakers // 2,
                        silence=settings.test_speakers, group="testing",
                        speech=settings.test_speakers - settings.test_speakers // 2)
    version = _data_version(train.waves, train.labels, text=" | ".join(settings.phrases))
    tracking = params.mlflow_of("keywords")
    out = params.paths.model_dir / "keywords"
    use_store(tracking)
    tags = {"dataset_version": version, "encoder_version": encoder_version, "encoder_dataset_version": encoder_data,
            "phrases": " | ".join(settings.phrases), "kind": "keywords"}
    with mlflow.start_run(run_name=f"keywords {', '.join(settings.phrases)}", tags=tags) as run:
        mlflow.log_params({k: str(v)[:6000] for k, v in flatten(dataclasses.asdict(settings)).items()}
                          | {"encoder_training": cfg.encoder_training})
        torch.manual_seed(settings.seed)
        model = KeywordModel(encoder, len(settings.labels), settings.hidden, settings.dropout, cfg.encoder_training)
        for epoch in train_keyword_head(model, train, settings):
            mlflow.log_metrics({k: v for k, v in epoch.items() if k != "epoch"}, step=int(epoch["epoch"]))
        held_out = accuracy(model, test, settings)
        console.print(f"held-out accuracy (other voices): {held_out:.1%} of {len(test.waves)} clips", highlight=False)
        negatives = negative_streams(settings, recipes, test_talkers, cfg.negative_seconds)
        curve = detection_curve(model, negatives, positive_streams(settings, recipes, test_talkers), settings)
        try:
            point = operating_point(curve, settings.max_fa_per_hour)
        except EarshotError:
            point = min(curve, key=lambda p: p.false_accepts_per_hour)  # the gate will say by how much it misses
        front_end = LogMel(settings.features, settings.sample_rate)
        train_mels, test_mels = featurize(train.waves, front_end), featurize(test.waves, front_end)
        picks = torch.randperm(len(train_mels), generator=torch.Generator().manual_seed(settings.seed))
        # A dynamic time axis (from one window up): ONNX Runtime's symbolic shape inference cannot follow the
        # encoder's pooled concat on a fixed one. The gate, not the export, judges parity here.
        report = export_models(model, train_mels[picks[: params.export.calibration_clips]], test_mels, test.labels,
                               params.export.model_copy(update={"min_parity": 0.0}), out,
                               min_frames=test_mels.shape[-1])
        package_model(out, {"track": "kws", "label_names": settings.labels, "features": card["features"],
                            "sample_rate": settings.sample_rate, "clip_samples": settings.window_samples,
                            "threshold": point.threshold, "smooth_windows": settings.smooth_windows,
                            "encoder_version": encoder_version, "dataset_version": version}, out / PACKAGE_DIR)
        mlflow.log_artifacts(str(out / PACKAGE_DIR), artifact_path="export")
        int8 = report.variant("onnx_int8")
        candidate = KeywordCandidate(point.threshold, point.false_accepts_per_hour, point.recall, held_out,
                                     report.parity, int8.size_bytes)
        mlflow.log_metrics({"held_out_accuracy": held_out, "false_accepts_per_hour": point.false_accepts_per_hour,
                            "recall": point.recall, "threshold": point.threshold, "int8_parity": report.parity,
                            "negative_hours": sum(s.audio.size for s in negatives) / settings.sample_rate / 3600})
        mlflow.log_dict({"curve": [dataclasses.asdict(p) for p in curve]}, "evaluation/detection_curve.json")
        gate = gate_keywords(candidate, _champion_candidate(tracking, settings.phrases), cfg.gate)
        reports = params.paths.reports / "keywords"
        write_text_atomically(reports / "gate.json", gate.to_json())
        write_text_atomically(reports / "gate.md", gate.to_markdown())
        mlflow.log_artifacts(str(reports), artifact_path="gate")
    console.print(gate.to_markdown(), highlight=False)
    return _decide(tracking, run.info.run_id, gate, tags | {
        "recall": str(point.recall), "false_accepts_per_hour": str(point.false_accepts_per_hour),
        "held_out_accuracy": str(held_out), "threshold": str(point.threshold), "int8_parity": str(report.parity)})


def _champion_candidate(tracking: Tracking, phrases: tuple[str, ...]) -> KeywordCandidate | None:
    """The champion's figures when it listens for the same phrases (else they are not comparable)."""
    current = champion(registry_client(tracking), tracking.registered_model)
    if current is None or current.tags.get("phrases") != " | ".join(phrases):
        return None
    tags = current.tags
    return KeywordCandidate(float(tags["threshold"]), float(tags["false_accepts_per_hour"]), float(tags["recall"]),
                            float(tags["held_out_accuracy"]), float(tags["int8_parity"]), 0)


def _decide(tracking: Tracking, run_id: str, gate: GateReport, tags: dict[str, str]) -> Decision:
    """Register the keyword model with its lineage and gate verdict; promote a pass, mark a refusal."""
    client, name = registry_client(tracking), tracking.registered_model
    tags |= {"gate": "passed" if gate.passed else "refused"}
    card = (f"Keyword model for {tags['phrases']} trained in run `{run_id}` on data version "
            f"`{tags['dataset_version']}`, on encoder version {tags['encoder_version']} (its data version "
            f"`{tags['encoder_dataset_version']}`).\n\n{gate.to_markdown()}")
    version = str(register_candidate(client, name, run_id, f"runs:/{run_id}/export", tags, card).version)
    if gate.passed:
        promote(client, name, version, reason=f"gate passed ({tags['phrases']})")
        return Decision(version, True, CHAMPION)
    event = reject(client, name, version, [f"{c.name}: {c.observed} (needs {c.threshold})" for c in gate.failures])
    return Decision(version, False, f"rejected ({event.reason})")
