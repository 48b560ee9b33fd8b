"""Export stage: a trained KeywordSpotter to FP32 ONNX and static INT8 ONNX, with parity, size, speed, accuracy.

Serving runs the INT8 file, so every export measures how far it drifts from PyTorch and fails below a floor.
"""

from __future__ import annotations

import copy
import io
import logging
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from components.config import Export
from components.errors import EarshotError
from components.files import atomic_path
from components.model import KeywordSpotter

INPUT = "mels"
OUTPUT = "logits"
# The speech-to-text model's output: per-frame CTC log-probabilities over the characters.
LOG_PROBS = "log_probs"
FP32_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
# Bounds memory when scoring the test set and when calibrating; results do not depend on it.
BATCH = 256
WARMUP_RUNS = 10
# The dynamo exporter warns once per torchvision op it cannot register; torchvision is not a dependency here.
logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)


class ParityError(EarshotError):
    """The INT8 model disagrees with PyTorch more often than `Export.min_parity` allows.

    Carries the full report so the caller can still log the figures of the rejected export.
    """

    def __init__(self, message: str, report: ExportReport) -> None:
        super().__init__(message)
        self.report = report


@dataclass(frozen=True)
class Variant:
    """One runnable form of the model and how it does on the test set.

    PyTorch eager has no file here (`path` None); its size is that of its FP32 state_dict as torch.save writes it.
    """

    name: str
    path: Path | None
    size_bytes: int
    latency_ms_p50: float
    latency_ms_p95: float
    accuracy: float
    agreement_with_torch: float


@dataclass(frozen=True)
class ExportReport:
    """Everything the export stage measured, one row per variant (pytorch, onnx_fp32, onnx_int8).

    `parity` is the INT8 row's top-1 agreement with PyTorch, the figure the `min_parity` floor applies to.
    """

    variants: tuple[Variant, ...]
    test_clips: int
    calibration_clips: int
    min_parity: float

    def variant(self, name: str) -> Variant:
        return next(v for v in self.variants if v.name == name)

    @property
    def parity(self) -> float:
        return self.variant("onnx_int8").agreement_with_torch

    def to_dict(self) -> dict[str, object]:
        """Plain JSON-ready figures for the metrics file and MLflow; paths become strings."""
        rows = [asdict(v) | {"path": None if v.path is None else str(v.path)} for v in self.variants]
        return {"variants": rows, "parity": self.parity, "min_parity": self.min_parity,
                "test_clips": self.test_clips, "calibration_clips": self.calibration_clips}


def export_fp32(model: torch.nn.Module, example: torch.Tensor, path: Path, output: str = OUTPUT,
                dynamic: dict[int, torch.export.Dim] | None = None) -> None:
    """Write `model` (eval mode) as one self-contained ONNX file with dynamic axes (default: batch), then check it.

    Uses the dynamo exporter, the maintained path in torch 2.x; weights stay inside the file for easy shipping.
    """
    program = torch.onnx.export(
        model,
        (example,),
        input_names=[INPUT],
        output_names=[output],
        dynamic_shapes={INPUT: dynamic or {0: torch.export.Dim("batch")}},
        dynamo=True,
        external_data=False,
        verbose=False,
    )
    # Per-node stack traces carry this checkout's absolute paths: a leak, and a third of a small model's bytes.
    for node in program.model.graph:
        node.metadata_props.clear()
    with atomic_path(path) as tmp:
        program.save(tmp, external_data=False)
        onnx.checker.check_model(tmp, full_check=True)


class _FeatureBatches(CalibrationDataReader):
    """Feeds real log-mel batches to the INT8 calibrator, once through."""

    def __init__(self, batches: Iterable[torch.Tensor]) -> None:
        self._batches = iter([{INPUT: chunk.float().numpy()} for chunk in batches])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


def quantize_int8(fp32_path: Path, calibration: Iterable[torch.Tensor], path: Path,
                  symbolic_shapes: bool = True) -> None:
    """Static post-training INT8 (QDQ, per-channel weights) of an FP32 ONNX file, calibrated on real feature batches.

    `symbolic_shapes` False skips ONNX Runtime's symbolic shape inference, whose sympy cannot read the floor()
    a strided convolution puts on a dynamic time axis; ONNX's own shape inference still runs.

    U8 activations with MinMax ranges, S8 weights reduced to 7 bits: accurate on every CPU, VNNI or not.
    """
    with tempfile.TemporaryDirectory(prefix="earshot-quant-") as scratch, atomic_path(path) as tmp:
        prepared = Path(scratch) / "prepared.onnx"
        quant_pre_process(fp32_path, prepared, skip_symbolic_shape=not symbolic_shapes)
        quantize_static(
            prepared,
            tmp,
            _FeatureBatches(calibration),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            # x86 without VNNI adds u8*s8 pairs in saturating int16. On AVX2 the 64x4 DS-CNN agreed with PyTorch
            # on 95.0% of clips with 8-bit weights, 99.4% with 7-bit; the 8-bit graph run unfused got 99.35%.
            reduce_range=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )
        onnx.checker.check_model(tmp, full_check=True)


def single_thread_session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def latency_ms(run: Callable[[], object], runs: int) -> tuple[float, float]:
    """Median and p95 wall time of `run` in milliseconds, after a warm-up that is not counted."""
    for _ in range(WARMUP_RUNS):
        run()
    times = np.empty(runs)
    for i in range(runs):
        start = time.perf_counter()
        run()
        times[i] = time.perf_counter() - start
    return float(np.median(times) * 1e3), float(np.percentile(times, 95) * 1e3)


def onnx_predictions(path: Path | ort.InferenceSession, mels: torch.Tensor) -> torch.Tensor:
    """Top-1 label indices of an exported model (a file or an open session) on precomputed log-mels."""
    session = path if isinstance(path, ort.InferenceSession) else single_thread_session(path)
    mels = mels.float().contiguous()
    return torch.cat([torch.from_numpy(session.run([OUTPUT], {INPUT: chunk.numpy()})[0]).argmax(1)
                      for chunk in mels.split(BATCH)])


def _onnx_variant(name: str, path: Path, test_mels: torch.Tensor, test_labels: torch.Tensor,
                  torch_top1: torch.Tensor, runs: int) -> Variant:
    session = single_thread_session(path)
    top1 = onnx_predictions(session, test_mels)
    clip = {INPUT: test_mels[:1].numpy()}
    p50, p95 = latency_ms(lambda: session.run([OUTPUT], clip), runs)
    return Variant(name, path, path.stat().st_size, p50, p95, _rate(top1 == test_labels), _rate(top1 == torch_top1))


def _torch_variant(model: KeywordSpotter, test_mels: torch.Tensor, test_labels: torch.Tensor,
                   runs: int) -> tuple[Variant, torch.Tensor]:
    with torch.inference_mode():
        top1 = torch.cat([model(chunk).argmax(1) for chunk in test_mels.split(BATCH)])
        clip = test_mels[:1]
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            p50, p95 = latency_ms(lambda: model(clip), runs)
        finally:
            torch.set_num_threads(threads)
    weights = io.BytesIO()
    torch.save(model.state_dict(), weights)
    return Variant("pytorch", None, weights.tell(), p50, p95, _rate(top1 == test_labels), 1.0), top1


def _rate(hits: torch.Tensor) -> float:
    # Exact division in float64: a float32 mean could land a hair under a floor the model meets exactly.
    return hits.sum().item() / hits.numel()


def export_models(model: KeywordSpotter, calibration: torch.Tensor, test_mels: torch.Tensor,
                  test_labels: torch.Tensor, cfg: Export, out_dir: Path) -> ExportReport:
    """Write out_dir/model.onnx and out_dir/model.int8.onnx, measure all three variants, then enforce parity.

    Both files are published before the check; ParityError (with the report) tells the caller to reject them.
    """
    if not len(calibration) or not len(test_mels) or len(test_mels) != len(test_labels):
        raise EarshotError(f"export needs calibration and test clips with one label each, got "
                           f"{len(calibration)} calibration, {len(test_mels)} test clips, {len(test_labels)} labels")
    calibration, test_mels = calibration.float().contiguous(), test_mels.float().contiguous()
    # A copy, so switching to eval mode does not change the caller's model under it.
    model = copy.deepcopy(model).eval()
    fp32_path, int8_path = out_dir / FP32_FILE, out_dir / INT8_FILE
    # Trace with batch 2: a batch-1 example would let torch.export specialise the batch axis to 1.
    export_fp32(model, calibration[:1].repeat(2, 1, 1), fp32_path)
    quantize_int8(fp32_path, calibration.split(BATCH), int8_path)

    eager, torch_top1 = _torch_variant(model, test_mels, test_labels, cfg.latency_runs)
    report = ExportReport(
        variants=(
            eager,
            _onnx_variant("onnx_fp32", fp32_path, test_mels, test_labels, torch_top1, cfg.latency_runs),
            _onnx_variant("onnx_int8", int8_path, test_mels, test_labels, torch_top1, cfg.latency_runs),
        ),
        test_clips=len(test_mels),
        calibration_clips=len(calibration),
        min_parity=cfg.min_parity,
    )
    if report.parity < cfg.min_parity:
        raise ParityError(f"INT8 top-1 agrees with PyTorch on {report.parity:.2%} of {report.test_clips} "
                          f"test clips, below the {cfg.min_parity:.2%} floor", report)
    return report
