"""Benchmark: featurizer vs. librosa, training throughput, and INT8 vs. FP32 inference, measured in one run.

Issue 6's targets: featurizer >= 5x librosa; INT8 latency <= 0.5x eager and <= 0.8x ONNX FP32; INT8 size <= 0.3x
FP32; INT8 accuracy within 0.5 point of FP32. Run: `.venv/bin/python benchmarks/speed.py [--speakers N]`.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import librosa
import numpy as np
import torch
from featurize_drop import PROJECT, median_seconds, save_results, workspace_params
from rich.console import Console
from rich.table import Table
from threadpoolctl import threadpool_limits

from components.config import Model, Params
from components.corpus import synthesize_corpus
from components.dataset import KwsData
from components.evaluate import predict
from components.export import ExportReport, ParityError, export_models
from components.features import BATCH_CLIPS, LOG_FLOOR, LogMel, featurize
from components.model import count_parameters
from components.tracks.kws import track as kws
from components.train import TrainResult, teacher_params, train_model

TARGET_VAL_ACCURACY = 0.95


def librosa_log_mel(waves: np.ndarray, front_end: LogMel, batch: int) -> np.ndarray:
    """The log-mel LogMel computes, by librosa, `batch` clips per call, with every setting read off the torchaudio
    transform itself (its defaults differ from librosa's: HTK mel scale, unnormalised filters)."""
    mel = front_end.mel
    chunks = [librosa.feature.melspectrogram(
        y=waves[start:start + batch], sr=mel.sample_rate, n_fft=mel.n_fft, win_length=mel.win_length,
        hop_length=mel.hop_length, window="hann", center=mel.spectrogram.center, power=mel.power, n_mels=mel.n_mels,
        fmin=mel.f_min, fmax=mel.f_max, htk=mel.mel_scale.mel_scale == "htk", norm=mel.mel_scale.norm,
    ) for start in range(0, len(waves), batch)]
    return np.log(np.concatenate(chunks) + LOG_FLOOR)


@dataclass(frozen=True)
class Figure:
    """A measured ratio or difference and the issue 6 target it is held to; without a bound it is context only.

    A `signed` figure is a difference in points: it prints with its sign, and its size is what the bound limits,
    unless `at_least` makes the bound a floor for the signed value (no more than that many points below).
    """

    name: str
    value: float
    bound: float | None = None
    at_least: bool = False
    signed: bool = False

    @property
    def target(self) -> str:
        if self.bound is None:
            return ""
        size = self.signed and not self.at_least
        return f"{'|value|' if size else ''} {'>=' if self.at_least else '<='} {self.bound:g}".strip()

    @property
    def verdict(self) -> str:
        if self.bound is None:
            return ""
        judged = abs(self.value) if self.signed and not self.at_least else self.value
        return "meets" if (judged >= self.bound if self.at_least else judged <= self.bound) else "misses"

    def row(self) -> tuple[str, str, str, str]:
        return self.name, f"{self.value:+.2f}" if self.signed else f"{self.value:.2f}", self.target, self.verdict

    def to_dict(self) -> dict[str, object]:
        return asdict(self) | {"target": self.target, "verdict": self.verdict}


def table(title: str, columns: tuple[str, ...], rows: list[tuple[str, ...]]) -> Table:
    """A rich table whose first column is a left-aligned label and the others right-aligned figures."""
    out = Table(title=title)
    for i, column in enumerate(columns):
        out.add_column(column, justify="left" if i == 0 else "right")
    for row in rows:
        out.add_row(*row)
    return out


def bench_featurizer(waves: torch.Tensor, front_end: LogMel, repeats: int, threads: int
                     ) -> tuple[dict[str, float], Figure]:
    """Clips per second of the pipeline's featurizer and of librosa on the same clips, plus how far apart they are.

    librosa gets the pipeline's batching (BATCH_CLIPS clips per call), its fastest: all clips in one call ran at half
    that speed, and at a speed that varied 2x between processes (page faults on its 230 MB spectrogram); that call
    is timed too, as context. Each side gets a warm-up call; runs alternate, so a busy moment falls on every side.
    """
    sides = {"ours": partial(featurize, waves, front_end),
             "librosa": partial(librosa_log_mel, waves.numpy(), front_end, BATCH_CLIPS),
             "librosa_one_call": partial(librosa_log_mel, waves.numpy(), front_end, len(waves))}
    difference = float((sides["ours"]() - torch.from_numpy(sides["librosa"]())).abs().max())
    runs = [{name: median_seconds(side, lambda: None, 1) for name, side in sides.items()} for _ in range(repeats)]
    seconds = {name: float(np.median([run[name] for run in runs])) for name in sides}
    figures = {f"{name}_clips_per_s": len(waves) / s for name, s in seconds.items()}
    figures |= {"clips": len(waves), "batch_clips": BATCH_CLIPS, "max_abs_log_mel_difference": difference}
    return figures, Figure(f"LogMel / librosa throughput, {threads} thread(s)",
                           seconds["librosa"] / seconds["ours"], 5.0, at_least=True)


def bench_distillation(data: KwsData, params: Params, student: TrainResult, teacher_model: Model
                       ) -> tuple[dict, list[Figure]]:
    """Train a teacher, then the params.yaml model on its soft outputs; compare both with `student`, the same
    model trained on labels alone, by size and test accuracy."""
    distill = params.train.distill.model_copy(update={"teacher": teacher_model})
    taught = params.model_copy(update={"train": params.train.model_copy(update={"distill": distill})})
    teacher = train_model(data, teacher_params(taught))
    distilled = train_model(data, taught, teacher=teacher.model)
    test = data.split("testing")
    models = {}
    for name, model, best_val in (("teacher", teacher.model, teacher.best_val_accuracy),
                                  ("student, distilled", distilled.model, distilled.best_val_accuracy),
                                  ("student, labels only", student.model, student.best_val_accuracy)):
        models[name] = {"parameters": count_parameters(model), "best_val_accuracy": best_val,
                        "test_accuracy": float((predict(model, test.mels) == test.labels).float().mean())}
    figures = [
        Figure("student / teacher parameters", models["student, distilled"]["parameters"]
               / models["teacher"]["parameters"], 0.25),
        Figure("distilled student - teacher test accuracy, points", 100 * (
            models["student, distilled"]["test_accuracy"] - models["teacher"]["test_accuracy"]), -1.0, at_least=True,
            signed=True),
        Figure("distilled - labels-only student test accuracy, points", 100 * (
            models["student, distilled"]["test_accuracy"] - models["student, labels only"]["test_accuracy"]),
            signed=True),
    ]
    return {"teacher": teacher_model.model_dump(), "models": models, "figures": [f.to_dict() for f in figures]}, figures


def inference_ratios(report: ExportReport) -> list[Figure]:
    """INT8 against eager and ONNX FP32 in latency, size and accuracy (in points), with issue 6's targets."""
    eager, fp32, int8 = (report.variant(name) for name in ("pytorch", "onnx_fp32", "onnx_int8"))
    return [
        Figure("INT8 / eager latency p50", int8.latency_ms_p50 / eager.latency_ms_p50, 0.5),
        Figure("INT8 / ONNX FP32 latency p50", int8.latency_ms_p50 / fp32.latency_ms_p50, 0.8),
        Figure("ONNX FP32 / eager latency p50", fp32.latency_ms_p50 / eager.latency_ms_p50),
        Figure("INT8 / ONNX FP32 size", int8.size_bytes / fp32.size_bytes, 0.3),
        Figure("INT8 - ONNX FP32 accuracy, points", (int8.accuracy - fp32.accuracy) * 100, 0.5, signed=True),
        Figure("INT8 - eager accuracy, points", (int8.accuracy - eager.accuracy) * 100, signed=True),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--speakers", type=int, default=32, help="synthesis.speakers_per_domain of the corpus")
    parser.add_argument("--repeats", type=int, default=5, help="featurizer runs per side; the median is reported")
    parser.add_argument("--teacher-channels", type=int, default=192, help="distillation teacher's channels")
    parser.add_argument("--teacher-blocks", type=int, default=4, help="distillation teacher's blocks")
    parser.add_argument("--out", type=Path, default=PROJECT / "benchmarks" / "results.json")
    args = parser.parse_args()
    started = time.perf_counter()
    console = Console()
    with tempfile.TemporaryDirectory(prefix="earshot-speed-") as scratch:
        work = Path(scratch)
        params = workspace_params(work, args.speakers)
        synthesize_corpus(params)
        kws.featurize(params)
        data = KwsData.load(params.out.features)
        train, test = data.split("training"), data.split("testing")

        front_end = LogMel(params.features, params.dataset.sample_rate)
        feat, speedups = {}, []
        # One thread each, then the pipeline's thread budget (train.threads) for both sides.
        for threads in sorted({1, params.train.threads}):
            torch.set_num_threads(threads)
            with threadpool_limits(threads):
                figures, speedup = bench_featurizer(data.float_waves(), front_end, args.repeats, threads)
            feat[f"{threads}_threads"] = figures | {"ratio": speedup.to_dict()}
            speedups.append((threads, figures, speedup))
        console.print(table(
            f"feature extraction: {len(data.labels)} clips of {params.dataset.clip_seconds:g} s, one process, "
            f"median of {args.repeats}", ("front end", "threads", "clips/s", "LogMel is x faster", "target", "verdict"),
            [row for threads, figures, speedup in speedups for row in (
                ("LogMel", str(threads), f"{figures['ours_clips_per_s']:.0f}", "", "", ""),
                (f"librosa, {BATCH_CLIPS} clips per call", str(threads), f"{figures['librosa_clips_per_s']:.0f}",
                 *speedup.row()[1:]),
                ("librosa, all clips in one call", str(threads), f"{figures['librosa_one_call_clips_per_s']:.0f}",
                 f"{figures['ours_clips_per_s'] / figures['librosa_one_call_clips_per_s']:.2f}", "", ""))]))
        console.print(f"same settings check: largest |log-mel difference| "
                      f"{max(f['max_abs_log_mel_difference'] for f in feat.values()):.2e}")

        stamps = [time.perf_counter()]
        result = train_model(data, params, on_epoch=lambda metrics: stamps.append(time.perf_counter()))
        epoch_s = float(np.median(np.diff(stamps)))
        reached = next((m["epoch"] + 1 for m in result.history if m["val_accuracy"] >= TARGET_VAL_ACCURACY), None)
        fit = {"training_clips": len(train.labels), "validation_clips": len(data.split("validation").labels),
               "threads": params.train.threads, "epochs_run": len(result.history), "median_epoch_s": epoch_s,
               "samples_per_s": len(train.labels) / epoch_s, "epochs_to_95_val_accuracy": reached,
               "best_val_accuracy": result.best_val_accuracy}
        console.print(table(
            f"training: params.yaml model and train settings, {fit['threads']} thread(s), no alternative measured",
            ("figure", "value"),
            [("training clips (validation clips)", f"{fit['training_clips']} ({fit['validation_clips']})"),
             ("epochs run (early stopping after patience)", str(fit["epochs_run"])),
             ("median epoch, augmentation and validation included", f"{epoch_s:.2f} s"),
             ("training samples/s", f"{fit['samples_per_s']:.0f}"),
             (f"epochs to first reach {TARGET_VAL_ACCURACY:.0%} validation accuracy",
              str(reached) if reached else f"not reached in {fit['epochs_run']}"),
             ("best validation accuracy", f"{result.best_val_accuracy:.2%}")]))

        distilled, distill_figures = bench_distillation(
            data, params, result, Model(channels=args.teacher_channels, blocks=args.teacher_blocks))
        console.print(table(
            f"knowledge distillation: teacher {args.teacher_channels}x{args.teacher_blocks} trained first, the "
            f"params.yaml model trained again on its soft outputs (weight {params.train.distill.weight:g}, "
            f"T {params.train.distill.temperature:g}); test accuracy on {len(test.labels)} clips",
            ("model", "parameters", "test accuracy", "best validation accuracy"),
            [(name, f"{m['parameters']:,}", f"{m['test_accuracy']:.2%}", f"{m['best_val_accuracy']:.2%}")
             for name, m in distilled["models"].items()]))
        console.print(table("distillation against issue 6's targets (same run)",
                            ("ratio", "value", "target", "verdict"), [f.row() for f in distill_figures]))

        # The export stage's calibration set: a seeded draw of training clips.
        picks = torch.randperm(len(train.mels), generator=torch.Generator().manual_seed(params.seed))
        parity_failure = ""
        try:
            report = export_models(result.model, train.mels[picks[: params.export.calibration_clips]], test.mels,
                                   test.labels, params.export, work)
        except ParityError as err:
            # The figures are still measured; a parity miss is itself a finding to show, not a reason to stop.
            report, parity_failure = err.report, str(err)
        ratios = inference_ratios(report)
        infer = {"test_clips": report.test_clips, "ratios": [r.to_dict() for r in ratios],
                 "variants": {v.name: {"size_bytes": v.size_bytes, "latency_ms_p50": v.latency_ms_p50,
                                       "latency_ms_p95": v.latency_ms_p95, "accuracy": v.accuracy,
                                       "agreement_with_eager": v.agreement_with_torch} for v in report.variants},
                 "parity_failure": parity_failure}
        console.print(table(
            f"single-clip inference: 1 thread, median and p95 of {params.export.latency_runs} runs, "
            f"accuracy on {report.test_clips} test clips (one clip = {100 / report.test_clips:.2f} points)",
            ("variant", "size KiB", "p50 ms", "p95 ms", "accuracy", "agrees with eager"),
            [(v.name, f"{v.size_bytes / 1024:.1f}", f"{v.latency_ms_p50:.3f}", f"{v.latency_ms_p95:.3f}",
              f"{v.accuracy:.2%}", f"{v.agreement_with_torch:.2%}") for v in report.variants]))
        console.print(table(
            "inference ratios against issue 6's targets (same run)",
            ("ratio", "value", "target", "verdict"),
            [r.row() for r in ratios]))
        if parity_failure:
            console.print(f"[yellow]export parity check failed: {parity_failure}[/yellow]")
    wall = time.perf_counter() - started
    console.print(f"speed benchmark wall time: {wall:.0f} s ({args.speakers} speakers per domain)")
    save_results(args.out, "speed", {"speakers_per_domain": args.speakers, "featurizer": feat, "training": fit,
                                     "inference": infer, "distillation": distilled,
                                     "wall_s": wall})


if __name__ == "__main__":
    main()
