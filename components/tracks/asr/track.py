"""The speech-to-text track: command-grammar speech to a streaming CTC transcriber gated on WER per domain.

Its stages have the keyword track's names and outputs; the registry, the gate report and the run bookkeeping are
shared with it.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import replace
from functools import partial
from pathlib import Path

import mlflow
import pandas as pd
import torch

from components.asr_data import AsrData, build_asr_data, domain_utterances, speech_domains
from components.asr_export import (
    TranscriberExport,
    export_transcriber,
    onnx_log_probs,
    torch_log_probs,
    transcribe,
)
from components.asr_model import Transcriber, load_transcriber, pad_batch
from components.challenge import ChampionScore, record_gate
from components.config import AsrModel, Params
from components.ctc import BeamDecoder
from components.dataset import SHARD_INDEX, SPLITS, read_audio
from components.errors import EarshotError
from components.evaluate import plot_domain_wer
from components.export import INT8_FILE
from components.files import write_csv, write_text_atomically
from components.gate import GateReport, TranscriberCandidate, gate_transcriber, pin_golden
from components.ingest import IngestReport, data_version
from components.model import count_parameters, save_model
from components.registry import deployable_files, registry_client
from components.review import MISTAKES, ReviewClip
from components.runs import (
    console,
    model_file,
    read_json,
    record_data_docs,
    record_mistakes,
    record_package,
    record_training,
    report_epoch,
    run_file,
    versioned_ingest,
    write_json,
)
from components.serving import CARD_FILE
from components.shards import refresh_shards
from components.tracking import KWS_SETTINGS, resume_run, training_run
from components.tracks import Track
from components.tracks.asr.corpus import synthesize_asr_corpus
from components.tracks.asr.drops import transcript_drops
from components.tracks.asr.train import ASR_TRAINING, train_transcriber
from components.train import run_fingerprint
from components.wer import WerReport, score_transcripts

UTTERANCE = "utterance"  # the one label of a speech-to-text data set, for its Data Docs

# The other tracks' settings do not shape this model; logged, they would only bury the ones that do.
FOREIGN_SETTINGS = KWS_SETTINGS | {"esc"}
# Each epoch's metrics to MLflow, and a progress line of these.
_report_epoch = partial(report_epoch, shown={"train_loss": "loss {:.3f}", "val_wer": "val WER {:.1%}"})


def synthesize(params: Params) -> dict[str, Path]:
    return synthesize_asr_corpus(params)


def featurize(params: Params) -> dict[str, str]:
    """One shard of log-mels and transcripts per domain (asr.domains and ingested drops); a domain whose files and
    settings are unchanged is kept."""
    cfg = params.asr
    settings = json.dumps([cfg.sample_rate, cfg.features.model_dump(), cfg.subsets.model_dump()])
    domains = speech_domains(params)

    def build(domain: str) -> AsrData:
        console.print(f"featurizing {domain} from {', '.join(map(str, domains[domain]))}", highlight=False)
        return build_asr_data(params, domain, domains[domain])

    fingerprints = {domain: _folder_fingerprint(folders, settings) for domain, folders in domains.items()}
    return refresh_shards(params.out.features, fingerprints, build,
                          ", ".join(str(f) for folders in domains.values() for f in folders), "utterances")


def _folder_fingerprint(folders: list[Path], settings: str) -> str:
    if not folders[0].is_dir():
        raise EarshotError(f"{folders[0]}: no such folder (asr.domains); run the synthesize stage or fix the path")
    return hashlib.sha256(f"{settings} {data_version(dict(enumerate(folders)))}".encode()).hexdigest()[:16]


def ingest(params: Params, drop: Path, domain: str) -> IngestReport:
    """Validate and ingest a drop of transcribed speech into `domain`, version it in DVC and git, log it to MLflow."""
    return versioned_ingest(params, transcript_drops(params), drop, domain)


def load_data(params: Params) -> AsrData:
    """Every domain's shard, in the order featurize indexed them."""
    out = params.out.features
    index = read_json(out / SHARD_INDEX)
    return AsrData.concat([AsrData.load(out / f"{domain}.pt") for domain in index])


def utterance_files(params: Params) -> pd.DataFrame:
    """Every utterance file of every domain's subsets, with its id, domain and split (label: `utterance`)."""
    rows = [{"file": str(u.path), "id": u.id, "label": UTTERANCE, "domain": domain, "split": split}
            for domain, folders in speech_domains(params).items()
            for split, u in domain_utterances(folders, params.asr.subsets)]
    return pd.DataFrame(rows, columns=["file", "id", "label", "domain", "split"])


def lexicon(data: AsrData) -> list[str]:
    """The words the model may spell with a lexicon: every word of the training and validation transcripts."""
    heard = [t for t, s in zip(data.texts, data.splits.tolist(), strict=True) if s != SPLITS.index("testing")]
    return sorted({word for text in heard for word in text.split()})


def decoder_for(card: dict, params: Params) -> BeamDecoder:
    return BeamDecoder(card["vocabulary"], params.asr.decode)


def training_key(params: Params) -> str:
    """The featurized data's version and every setting that shapes training."""
    return run_fingerprint(params, load_data(params).version, ASR_TRAINING)


def train(params: Params) -> str:
    """Train the transcriber, log it to MLflow with the data version, save weights with their card."""
    data = load_data(params)
    out = params.out.model_dir
    checkpoint = out / "checkpoint.pt"
    key = run_fingerprint(params, data.version, ASR_TRAINING)
    tags = {"dataset_version": data.version, "track": "asr", "training_key": key}
    with training_run(params, run_file(params), tags, FOREIGN_SETTINGS, resume=checkpoint.is_file()) as run:
        record_data_docs(params, utterance_files(params), [UTTERANCE], set())
        result = train_transcriber(data, params, checkpoint=checkpoint, on_epoch=_report_epoch)
        card = {"features": params.asr.features.model_dump(), "model": params.asr.model.model_dump(),
                "sample_rate": params.asr.sample_rate, "vocabulary": lexicon(data), "domain_names": data.domain_names,
                "dataset_version": data.version, "run_id": run.info.run_id}
        save_model(result.model, model_file(params), card)
        mlflow.log_artifact(str(model_file(params)), artifact_path="weights")
        summary = {"best_epoch": result.best_epoch, "best_val_wer": result.best_val_wer,
                   "epochs_run": len(result.history), "parameters": count_parameters(result.model)}
        mlflow.log_metrics({"best_val_wer": result.best_val_wer, "parameters": summary["parameters"]})
        mlflow.set_tag("resumed_from_epoch", str(result.resumed_from_epoch))
        record_training(result.model, pad_batch(result.model, [data.split("validation").mels[0].float()]), summary,
                        result.history, out)
        return run.info.run_id


def evaluate(params: Params) -> WerReport:
    """WER and CER per domain on the test split (beam search, lexicon per params), worst utterances, a bar chart."""
    model, card = load_transcriber(model_file(params))
    test = load_data(params).split("testing")
    hypotheses, _ = transcribe(torch_log_probs(model), model, test, decoder_for(card, params))
    domains = [test.domain_names[d] for d in test.domains]
    report = score_transcripts(test.ids, test.texts, hypotheses, domains)
    reports = params.out.reports
    write_json(reports / "metrics.json", report.metrics())
    write_csv(reports / "predictions.csv", [{"id": i, "domain": d, "reference": r, "hypothesis": h}
                                            for i, d, r, h in zip(test.ids, domains, test.texts, hypotheses,
                                                                  strict=True)],
              ["id", "domain", "reference", "hypothesis"])
    write_text_atomically(reports / "evaluation.md", report.to_markdown())
    plot_domain_wer(report, reports / "evaluation.png")
    with resume_run(params, run_file(params)):
        mlflow.log_metrics({"test_wer": report.wer, "test_cer": report.cer}
                           | {f"test_wer.{d}": w.wer for d, w in report.per_domain.items()}
                           | {f"test_cer.{d}": w.cer for d, w in report.per_domain.items()})
        for name in ("evaluation.png", "evaluation.md", "metrics.json", "predictions.csv"):
            mlflow.log_artifact(str(reports / name), artifact_path="evaluation")
        record_mistakes(params, _worst_clips(params, test, report))
    console.print(f"test WER {report.wer:.2%} (CER {report.cer:.2%}) on {report.utterances} utterances: "
                  + ", ".join(f"{d} {w.wer:.2%}" for d, w in report.per_domain.items()), highlight=False)
    return report


def _worst_clips(params: Params, test: AsrData, report: WerReport) -> list[ReviewClip]:
    """The worst-recognised test utterances (WER > 0) with their audio and log-mel, for the reviewer to hear."""
    files = utterance_files(params).set_index("id")["file"]
    rows = {utterance_id: i for i, utterance_id in enumerate(test.ids)}
    return [ReviewClip(read_audio(Path(files[w.id]), params.asr.sample_rate)[0], params.asr.sample_rate,
                       test.mels[rows[w.id]], w.reference, w.hypothesis, w.domain, files[w.id])
            for w in report.worst[:MISTAKES] if w.wer > 0]


def export(params: Params) -> TranscriberExport:
    """ONNX FP32 and INT8 with WER, size and real-time factor of each; reports/asr/export.json; logged to the run."""
    model, card = load_transcriber(model_file(params))
    data = load_data(params)
    train_mels = data.split("training").mels
    picks = torch.randperm(len(train_mels), generator=torch.Generator().manual_seed(params.seed))
    calibration = [train_mels[i] for i in picks[: params.asr.export.calibration_clips].tolist()]
    report = export_transcriber(model, calibration, data.split("testing"), decoder_for(card, params),
                                params.asr.features.hop_ms / 1000, params.out.model_dir)
    write_json(params.out.reports / "export.json", report.to_dict())
    with resume_run(params, run_file(params)):
        mlflow.log_dict(report.to_dict(), "export/export.json")
        for row in report.variants:
            mlflow.log_metrics({f"export.{row.name}.{k}": getattr(row, k) for k in ("size_bytes", "wer", "cer", "rtf")})
        record_package(params, {"decode": params.asr.decode.model_dump(), "stream": params.asr.stream.model_dump()})
    return report


def challenger(params: Params, test: AsrData, golden: dict[str, str]) -> TranscriberCandidate:
    """The exported challenger as the gate sees it: the export report's figures, and its INT8 transcripts of the
    golden utterances."""
    figures = read_json(params.out.reports / "export.json")
    int8 = next(row for row in figures["variants"] if row["name"] == "onnx_int8")
    model, card = load_transcriber(model_file(params))
    pinned = [i for i, utterance in enumerate(test.ids) if utterance in golden]
    answers, _ = transcribe(onnx_log_probs(params.out.model_dir / INT8_FILE), model,
                            replace(test, mels=[test.mels[i] for i in pinned]), decoder_for(card, params))
    return TranscriberCandidate(int8["wer"], int8["per_domain"], figures["int8_wer_gap_points"], int8["rtf"],
                                int8["size_bytes"], dict(zip([test.ids[i] for i in pinned], answers, strict=True)))


def score_champion(params: Params, version: str) -> ChampionScore:
    """Champion `version`'s INT8 model re-scored on today's test split: WER per domain, and every transcript."""
    client, name = registry_client(params.mlflow), params.mlflow.registered_model
    test = load_data(params).split("testing")
    with tempfile.TemporaryDirectory() as scratch:
        folder = deployable_files(client, name, version, Path(scratch))
        card = read_json(folder / CARD_FILE)
        # Only the champion's own context sizes are needed to feed its ONNX file; its weights are in the file.
        shape = Transcriber(card["features"]["n_mels"], AsrModel(**card["model"]))
        hypotheses, _ = transcribe(onnx_log_probs(folder / INT8_FILE), shape, test, decoder_for(card, params))
    report = score_transcripts(test.ids, test.texts, hypotheses, [test.domain_names[d] for d in test.domains])
    tags = client.get_model_version(name, version).tags
    return ChampionScore(version, hypotheses, TranscriberCandidate(
        report.wer, {d: w.wer for d, w in report.per_domain.items()}, float(tags.get("int8_wer_gap_points", "nan")),
        float(tags.get("int8_rtf", "nan")), int(tags.get("int8_size_bytes", 0))), metric="WER")


def gate(params: Params, new_domain: str | None, champion_score: ChampionScore | None) -> GateReport:
    """The WER gate against the champion as re-scored on today's test split (absolute checks if there is none), with
    golden utterances of the known domains; writes reports/asr/gate.{json,md} and logs them to the run."""
    test = load_data(params).split("testing")
    golden = {} if champion_score is None else pin_golden(
        {utterance: reference for utterance, reference, answer, domain
         in zip(test.ids, test.texts, champion_score.answers, test.domains.tolist(), strict=True)
         if answer == reference and test.domain_names[domain] != new_domain},
        params.asr.gate.golden_utterances, params.seed)
    candidate = challenger(params, test, golden)
    before = champion_score.candidate if champion_score else None
    report = gate_transcriber(candidate, before, params.asr.gate, new_domain, golden)
    metrics = {f"int8.test_wer.{d}": v for d, v in candidate.per_domain.items()}
    if champion_score is not None:
        metrics |= ({f"drift.champion_wer.{k}": v for k, v in champion_score.drift(new_domain).items()}
                    | {f"champion.test_wer.{d}": v for d, v in before.per_domain.items()})
    record_gate(params, report, "INT8 WER", candidate.per_domain,
                (champion_score.version, before.per_domain) if champion_score else None, metrics)
    return report


def version_figures(params: Params) -> tuple[dict[str, str], str]:
    """The INT8 figures a transcriber's version is tagged with (WER gap to FP32, real-time factor, size), and a
    summary line for its card."""
    exported = read_json(params.out.reports / "export.json")
    int8 = next(row for row in exported["variants"] if row["name"] == "onnx_int8")
    return ({"int8_wer_gap_points": str(exported["int8_wer_gap_points"]), "int8_rtf": str(int8["rtf"]),
             "int8_size_bytes": str(int8["size_bytes"])},
            f"INT8 ONNX: {int8['size_bytes'] / 1024:.1f} KiB, real-time factor {int8['rtf']:.3f} (1 thread), "
            f"WER {int8['wer']:.2%} ({exported['int8_wer_gap_points']:+.2f} points vs FP32).")


def summary_rows(metrics: dict, exported: dict) -> list[tuple[str, str]]:
    """`earshot summary`'s rows: test WER and CER overall and per domain, each exported model."""
    rows = [("test WER", f"{metrics['wer']:.2%} (CER {metrics['cer']:.2%}) on {metrics['utterances']} utterances")]
    rows += [(f"  {domain}", f"WER {figures['wer']:.2%} · CER {figures['cer']:.2%}")
             for domain, figures in metrics["per_domain"].items()]
    rows += [(row["name"], f"{row['size_bytes'] / 1024:.1f} KiB · real-time factor {row['rtf']:.3f} (1 thread) · "
                           f"WER {row['wer']:.2%}") for row in exported["variants"]]
    return rows


TRACK = Track(name="asr", title="speech to text", synthesize=synthesize, featurize=featurize,
              training_key=training_key, train=train, evaluate=evaluate, export=export, score_champion=score_champion,
              gate=gate, version_figures=version_figures, summary_rows=summary_rows, ingest=ingest)
