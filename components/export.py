"""Export stage: a trained classifier of log-mels to FP32 ONNX and static INT8 ONNX, with parity, size, speed, accuracy.

Serving runs the INT8 file, so every export measures how far it drifts from PyTorch and fails below a floor. Clips
come as one tensor of equal lengths (keywords) or as clips of their own lengths (sound events), never padded.
"""

from __future__ import annotations

import copy
import io
import itertools
import logging
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
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

INPUT = "mels"
OUTPUT = "logits"
# The speech-to-text model's output: per-frame CTC log-probabilities over the characters.
LOG_PROBS = "log_probs"
FP32_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
# Bounds memory when scoring the test set and when calibrating; results do not depend on it.
BATCH = 256
WARMUP_RUNS = 10
# Log-mels to run a model on: a (clips, n_mels, frames) tensor, or clips of their own lengths, each (n_mels, frames_i).
Clips = torch.Tensor | Sequence[torch.Tensor]
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
    # What the features cost per clip before any variant runs (1 thread, p50): the gate judges the two together.
    front_end_ms_p50: float = 0.0

    def variant(self, name: str) -> Variant:
        return next(v for v in self.variants if v.name == name)

    @property
    def parity(self) -> float:
        return self.variant("onnx_int8").agreement_with_torch

    def to_dict(self) -> dict[str, object]:
        """Plain JSON-ready figures for the metrics file and MLflow; paths become strings."""
        rows = [asdict(v) | {"path": None if v.path is None else str(v.path)} for v in self.variants]
        return {"variants": rows, "parity": self.parity, "min_parity": self.min_parity,
                "test_clips": self.test_clips, "calibration_clips": self.calibration_clips,
                "front_end_ms_p50": self.front_end_ms_p50}


@contextmanager
def _publishing(path: Path) -> Iterator[Path]:
    """A temporary file beside `path` to write, renamed over `path` only once complete (killed or failed: never).

    A failed write (full disk, quota, file size limit) is one line naming the file instead of a bare OSError.
    """
    try:
        with atomic_path(path) as partial:
            yield partial
    except OSError as err:
        raise EarshotError(f"{path}: not written ({err.strerror or err}); nothing was published there") from err


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
    with _publishing(path) as tmp:
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
    with tempfile.TemporaryDirectory(prefix="earshot-quant-") as scratch, _publishing(path) as tmp:
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


def equal_length_batches(clips: Clips, size: int = BATCH) -> list[tuple[list[int], torch.Tensor]]:
    """(clip indices, (batch, n_mels, frames) tensor) of up to `size` clips of one length each.

    Nothing is padded, so a clip scores in a batch exactly as it would alone.
    """
    order = sorted(range(len(clips)), key=lambda i: clips[i].shape[-1])
    batches = []
    for _, same in itertools.groupby(order, key=lambda i: clips[i].shape[-1]):
        same = list(same)
        for start in range(0, len(same), size):
            rows = same[start : start + size]
            batches.append((rows, torch.stack([clips[i] for i in rows]).float().contiguous()))
    return batches


def _top1(clips: Clips, logits: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Top-1 label index of every clip, in clip order."""
    top1 = torch.empty(len(clips), dtype=torch.long)
    for rows, batch in equal_length_batches(clips):
        top1[rows] = logits(batch).argmax(1)
    return top1


def _longest(clips: Clips) -> torch.Tensor:
    """The longest clip as a batch of one: latency is quoted for the worst case."""
    return clips[max(range(len(clips)), key=lambda i: clips[i].shape[-1])][None].float().contiguous()


def onnx_predictions(path: Path | ort.InferenceSession, mels: Clips) -> torch.Tensor:
    """Top-1 label indices of an exported model (a file or an open session) on precomputed log-mels."""
    session = path if isinstance(path, ort.InferenceSession) else single_thread_session(path)
    return _top1(mels, lambda batch: torch.from_numpy(session.run([OUTPUT], {INPUT: batch.numpy()})[0]))


def _onnx_variant(name: str, path: Path, test_mels: Clips, test_labels: torch.Tensor,
                  torch_top1: torch.Tensor, runs: int) -> Variant:
    session = single_thread_session(path)
    top1 = onnx_predictions(session, test_mels)
    clip = {INPUT: _longest(test_mels).numpy()}
    p50, p95 = latency_ms(lambda: session.run([OUTPUT], clip), runs)
    return Variant(name, path, path.stat().st_size, p50, p95, _rate(top1 == test_labels), _rate(top1 == torch_top1))


def front_end_latency_ms(front_end: torch.nn.Module, clip: torch.Tensor, runs: int) -> float:
    """Median milliseconds `front_end` takes on one clip (1, samples), on one thread as the variants are timed."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.inference_mode():
            return latency_ms(lambda: front_end(clip), runs)[0]
    finally:
        torch.set_num_threads(threads)


def _torch_variant(model: torch.nn.Module, test_mels: Clips, test_labels: torch.Tensor,
                   runs: int) -> tuple[Variant, torch.Tensor]:
    with torch.inference_mode():
        top1 = _top1(test_mels, model)
        clip = _longest(test_mels)
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


def export_models(model: torch.nn.Module, calibration: Clips, test_mels: Clips, test_labels: torch.Tensor,
                  cfg: Export, out_dir: Path, min_frames: int | None = None,
                  front_end_ms: float = 0.0) -> ExportReport:
    """Write out_dir/model.onnx and out_dir/model.int8.onnx, measure all three variants, then enforce parity.

    min_frames None fixes the time axis at the clips' one length; a number makes it dynamic from that many frames up.
    front_end_ms (front_end_latency_ms) is recorded beside the variants' latencies, which time the network alone.
    Both files are published before the check; ParityError (with the report) tells the caller to reject them.
    """
    if not len(calibration) or not len(test_mels) or len(test_mels) != len(test_labels):
        raise EarshotError(f"export needs calibration and test clips with one label each, got "
                           f"{len(calibration)} calibration, {len(test_mels)} test clips, {len(test_labels)} labels")
    # A copy, so switching to eval mode does not change the caller's model under it.
    model = copy.deepcopy(model).eval()
    fp32_path, int8_path = out_dir / FP32_FILE, out_dir / INT8_FILE
    dynamic = {0: torch.export.Dim("batch")}
    if min_frames is not None:
        dynamic[2] = torch.export.Dim("frames", min=min_frames, max=1 << 16)
    # Trace with batch 2 and the longest clip: torch.export must not specialise an axis to the example's size.
    export_fp32(model, _longest(calibration).repeat(2, 1, 1), fp32_path, dynamic=dynamic)
    quantize_int8(fp32_path, [batch for _, batch in equal_length_batches(calibration)], int8_path,
                  symbolic_shapes=min_frames is None)

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
        front_end_ms_p50=front_end_ms,
    )
    if report.parity < cfg.min_parity:
        raise ParityError(f"INT8 top-1 agrees with PyTorch on {report.parity:.2%} of {report.test_clips} "
                          f"test clips, below the {cfg.min_parity:.2%} floor", report)
    return report
