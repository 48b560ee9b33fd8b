"""SoundEventNet: small, any clip length, padding that changes no logit, FP32 and INT8 ONNX with a dynamic time axis."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from components.config import Export
from components.export import (
    FP32_FILE,
    INPUT,
    INT8_FILE,
    OUTPUT,
    export_models,
    onnx_predictions,
    single_thread_session,
)
from components.model import count_parameters
from components.tracks.esc.model import SoundEventNet, min_frames

pytestmark = pytest.mark.usefixtures("one_torch_thread")

N_MELS, CLASSES, BLOCKS = 40, 10, 4


def trained_looking(channels: int = 16, seed: int = 0) -> SoundEventNet:
    """A model in eval mode whose BatchNorm statistics are not the identity, as after training."""
    torch.manual_seed(seed)
    model = SoundEventNet(n_mels=N_MELS, n_classes=CLASSES, channels=channels, blocks=BLOCKS)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    return model.eval()


def log_mel(frames: int, seed: int) -> torch.Tensor:
    """Log-mel-like values (n_mels, frames): a level near -5 with structure along both axes."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(N_MELS, frames, generator=g).cumsum(dim=1) * 0.3 - 5.0


def test_the_model_stays_under_half_a_million_parameters() -> None:
    assert 50_000 < count_parameters(SoundEventNet(n_mels=N_MELS, n_classes=CLASSES)) < 500_000
    assert count_parameters(SoundEventNet(n_mels=64, n_classes=50, channels=32, blocks=4)) < 500_000


@torch.no_grad()
def test_any_length_from_the_minimum_gives_one_row_of_logits() -> None:
    model = trained_looking()
    for frames in (min_frames(BLOCKS), 17, 63, 200, 401):
        logits = model(log_mel(frames, seed=frames)[None])
        assert logits.shape == (1, CLASSES) and torch.isfinite(logits).all()


@torch.no_grad()
def test_a_clip_padded_in_a_batch_scores_as_it_does_alone() -> None:
    model = trained_looking()
    clips = [log_mel(frames, seed=frames) for frames in (16, 37, 61, 200)]
    # Padding far from any log-mel value: if it leaked into a convolution or the pooling, it would show.
    batch = torch.full((len(clips), N_MELS, 256), 50.0)
    for row, clip in zip(batch, clips, strict=True):
        row[:, : clip.shape[1]] = clip
    lengths = torch.tensor([clip.shape[1] for clip in clips])
    alone = torch.cat([model(clip[None]) for clip in clips])
    torch.testing.assert_close(model(batch, lengths), alone, atol=1e-4, rtol=0)
    # Read as sound (no lengths), the same padding moves every padded clip's logits: the check above can fail.
    moved = (model(batch) - alone).abs().amax(dim=1)
    assert bool((moved > 1e-2).all())


def test_more_blocks_than_the_mel_axis_can_halve_are_refused() -> None:
    with pytest.raises(ValueError, match=r"n_mels 8 is below 2\*\*blocks = 16"):
        SoundEventNet(n_mels=8, n_classes=CLASSES, blocks=4)


def test_exports_to_fp32_and_int8_onnx_that_take_clips_of_other_lengths(tmp_path: Path) -> None:
    model = trained_looking()
    calibration = [log_mel(n, seed=n) for n in (40, 90, 150, 200, 250)]
    test = [log_mel(n, seed=100 + i) for i, n in enumerate((37, 173, 37, 90))]
    with torch.no_grad():
        expected = [model(clip[None]).numpy() for clip in test]
    labels = torch.tensor([int(logits.argmax()) for logits in expected])
    report = export_models(model, calibration, test, labels, Export(latency_runs=3, min_parity=0.0), tmp_path,
                           min_frames=min_frames(BLOCKS))
    fp32, int8 = tmp_path / FP32_FILE, tmp_path / INT8_FILE
    assert int8.stat().st_size < 0.5 * fp32.stat().st_size
    # Batched by length inside, reported clip by clip in the order given.
    assert report.test_clips == 4 and report.variant("onnx_fp32").accuracy == 1.0
    assert torch.equal(onnx_predictions(fp32, test), labels)

    fp32_session, int8_session = single_thread_session(fp32), single_thread_session(int8)
    for clip, logits in zip(test, expected, strict=True):
        exported = fp32_session.run([OUTPUT], {INPUT: clip[None].numpy()})[0]
        quantized = int8_session.run([OUTPUT], {INPUT: clip[None].numpy()})[0]
        assert exported.shape == quantized.shape == (1, CLASSES)
        np.testing.assert_allclose(exported, logits, atol=1e-4, rtol=0)
        # INT8 follows FP32 to a small share of the logits' spread.
        assert np.abs(quantized - exported).max() < 0.1 * np.ptp(exported)
