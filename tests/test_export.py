"""Export stage against real torch.onnx, ONNX Runtime quantization and sessions, on a small trained model.

Synthetic features with one mel band lit per class, so the model's predictions mean something to agree on.
"""

from __future__ import annotations

import copy
import json
import os
import re
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from components.config import Export, Model
from components.export import FP32_FILE, INT8_FILE, ExportReport, ParityError, export_models
from components.model import KeywordSpotter
from tests.conftest import training_seed

N_MELS, FRAMES, CLASSES = 40, 49, 12
pytestmark = pytest.mark.usefixtures("one_torch_thread")
CFG = Export(calibration_clips=64, min_parity=0.9, latency_runs=20)


def synthetic(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-mel-like noise with three mel bands raised for part of the clip, the bands naming the class."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, CLASSES, (n,), generator=g)
    mels = torch.randn(n, N_MELS, FRAMES, generator=g) - 4.0
    starts = torch.randint(0, FRAMES - 20, (n,), generator=g)
    for i, (k, t) in enumerate(zip(labels.tolist(), starts.tolist(), strict=True)):
        mels[i, 3 * k : 3 * k + 3, t : t + 20] += 1.5
    return mels, labels


@pytest.fixture(scope="module")
def data() -> dict[str, torch.Tensor]:
    train_mels, train_labels = synthetic(1024, seed=1)
    test_mels, test_labels = synthetic(400, seed=2)
    return {"train_mels": train_mels, "train_labels": train_labels, "test_mels": test_mels, "test_labels": test_labels}


@pytest.fixture(scope="module")
def model(data: dict[str, torch.Tensor]) -> KeywordSpotter:
    torch.manual_seed(training_seed())
    net = KeywordSpotter(N_MELS, CLASSES, Model(channels=32, blocks=2))
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(training_seed())
    for _ in range(60):
        idx = torch.randint(0, len(data["train_mels"]), (64,), generator=g)
        loss = torch.nn.functional.cross_entropy(net(data["train_mels"][idx]), data["train_labels"][idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    # Left in training mode on purpose: export must not depend on the caller switching to eval.
    return net


@pytest.fixture(scope="module")
def calibration(data: dict[str, torch.Tensor]) -> torch.Tensor:
    picks = torch.randperm(len(data["train_mels"]), generator=torch.Generator().manual_seed(0))
    return data["train_mels"][picks[: CFG.calibration_clips]]


@pytest.fixture(scope="module")
def exported(model: KeywordSpotter, calibration: torch.Tensor, data: dict[str, torch.Tensor],
             tmp_path_factory: pytest.TempPathFactory) -> ExportReport:
    out_dir = tmp_path_factory.mktemp("export")
    return export_models(model, calibration, data["test_mels"], data["test_labels"], CFG, out_dir)


def torch_logits(model: KeywordSpotter, mels: torch.Tensor) -> np.ndarray:
    with torch.inference_mode():
        return copy.deepcopy(model).eval()(mels).numpy()


def test_fp32_onnx_matches_torch_at_any_batch(exported: ExportReport, model: KeywordSpotter,
                                              data: dict[str, torch.Tensor]) -> None:
    session = ort.InferenceSession(exported.variant("onnx_fp32").path)
    assert model.training, "export must leave the caller's model in the mode it was in"
    assert [i.name for i in session.get_inputs()] == ["mels"]
    assert isinstance(session.get_inputs()[0].shape[0], str), "batch axis should be symbolic"
    assert [o.name for o in session.get_outputs()] == ["logits"]
    for batch in (1, 7):
        mels = data["test_mels"][:batch]
        (logits,) = session.run(["logits"], {"mels": mels.numpy()})
        assert logits.shape == (batch, CLASSES)
        np.testing.assert_allclose(logits, torch_logits(model, mels), atol=1e-4, rtol=0)


def test_int8_is_smaller_loads_and_agrees(exported: ExportReport, data: dict[str, torch.Tensor]) -> None:
    fp32, int8 = exported.variant("onnx_fp32"), exported.variant("onnx_int8")
    assert int8.path.name == INT8_FILE and fp32.path.name == FP32_FILE
    assert int8.size_bytes < fp32.size_bytes
    session = ort.InferenceSession(int8.path)
    assert {n.op_type for n in onnx.load(int8.path).graph.node} >= {"QuantizeLinear", "DequantizeLinear"}
    (logits,) = session.run(["logits"], {"mels": data["test_mels"][:7].numpy()})
    assert logits.shape == (7, CLASSES)
    assert exported.parity == int8.agreement_with_torch >= 0.9


def test_report_figures_are_sane(exported: ExportReport) -> None:
    assert [v.name for v in exported.variants] == ["pytorch", "onnx_fp32", "onnx_int8"]
    for v in exported.variants:
        assert 0 < v.latency_ms_p50 <= v.latency_ms_p95
        assert v.accuracy >= 0.9, "the test model should have learned the bands"
        if v.path is not None:
            assert v.size_bytes == os.path.getsize(v.path)
    assert exported.variant("pytorch").path is None and exported.variant("pytorch").size_bytes > 0
    assert exported.variant("onnx_fp32").agreement_with_torch >= 0.99
    assert exported.test_clips == 400 and exported.calibration_clips == CFG.calibration_clips
    figures = json.loads(json.dumps(exported.to_dict()))
    assert [row["name"] for row in figures["variants"]] == ["pytorch", "onnx_fp32", "onnx_int8"]
    assert figures["variants"][2]["size_bytes"] == exported.variant("onnx_int8").size_bytes
    assert figures["parity"] == exported.parity and figures["min_parity"] == CFG.min_parity


def test_miscalibrated_int8_raises_parity_error(model: KeywordSpotter, calibration: torch.Tensor,
                                                data: dict[str, torch.Tensor], tmp_path: Path) -> None:
    # Calibrating on features 100x quieter than the test set sets activation ranges far too narrow,
    # so real inputs saturate the INT8 ranges: a genuine calibration failure, not a rigged threshold.
    quiet = calibration / 100
    with pytest.raises(ParityError) as caught:
        export_models(model, quiet, data["test_mels"], data["test_labels"], Export(latency_runs=5), tmp_path)
    message = str(caught.value)
    figure = re.fullmatch(r"INT8 top-1 agrees with PyTorch on (\d+\.\d\d)% of 400 test clips, below the 99\.00% floor",
                          message)
    assert figure, message
    assert float(figure[1]) == pytest.approx(caught.value.report.parity * 100, abs=0.005)
    # The caller decides what to do with rejected files, so both were published before the check.
    assert (tmp_path / FP32_FILE).exists() and (tmp_path / INT8_FILE).exists()

