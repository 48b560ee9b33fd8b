import pytest
import torch

from components.asr_model import (
    SILENCE,
    Transcriber,
    batch_log_probs,
    load_transcriber,
    offline_log_probs,
    output_frames,
    pad_batch,
)
from components.config import AsrModel
from components.ctc import TOKENS
from components.errors import EarshotError
from components.model import save_model

N_MELS = 16
SMALL = AsrModel(channels=24, blocks=3, kernel=5, lookahead=1, subsampling=2, dropout=0.1)


def trained_looking(cfg: AsrModel, seed: int = 0) -> Transcriber:
    """A model in eval mode whose BatchNorm statistics are not the identity, as after training."""
    torch.manual_seed(seed)
    model = Transcriber(N_MELS, cfg)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm1d):
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2)
    return model.eval()


def test_contexts_add_up_to_the_receptive_field_and_follow_the_lookahead():
    for lookahead in (0, 1, 2):
        model = Transcriber(N_MELS, SMALL.model_copy(update={"lookahead": lookahead}))
        assert model.left_context + 1 + model.right_context == model.receptive_field == 5 + 3 * 4 * 2
        assert model.right_context == (2 + 3 * lookahead * 2 if lookahead else 0)
    with pytest.raises(EarshotError, match="lookahead 5 must be below asr.model.kernel 5"):
        Transcriber(N_MELS, SMALL.model_copy(update={"lookahead": 5}))


def test_offline_output_has_one_frame_per_subsampling_step():
    model = trained_looking(SMALL)
    for frames in (1, 2, 37, 100):
        out = offline_log_probs(model, torch.randn(N_MELS, frames))
        assert out.shape == (output_frames(model, frames), len(TOKENS)) == (-(-frames // 2), len(TOKENS))
        assert torch.allclose(out.exp().sum(dim=1), torch.ones(len(out)), atol=1e-5)


def test_output_frame_j_depends_only_on_its_window_of_input():
    model = trained_looking(SMALL)
    mels = torch.randn(N_MELS, 60)
    base = offline_log_probs(model, mels)
    changed = mels.clone()
    changed[:, 30] += 5.0  # input frame 30 sits at padded index left_context + 30
    moved = (offline_log_probs(model, changed) - base).abs().amax(dim=1) > 0
    s, at = model.subsampling, model.left_context + 30
    expected = [j for j in range(len(base)) if j * s <= at < j * s + model.receptive_field]
    assert moved.nonzero().flatten().tolist() == expected
    # Output j is centred on input frame j*s: it sees left_context frames back and right_context ahead.
    assert expected == [j for j in range(len(base)) if 30 - model.right_context <= j * s <= 30 + model.left_context]


@pytest.mark.parametrize("lookahead", [0, 1, 3])
def test_streaming_windows_give_exactly_the_offline_log_probs(lookahead):
    model = trained_looking(SMALL.model_copy(update={"lookahead": lookahead}))
    mels = torch.randn(N_MELS, 173)
    offline = offline_log_probs(model, mels)
    # What a stream does: the same silence in front and behind, then windows of `chunk` output frames, each fed
    # with its full left context, the windows overlapping by receptive_field - subsampling input frames.
    padded = pad_batch(model, [mels])[0]
    s, field, chunk = model.subsampling, model.receptive_field, 7
    pieces = []
    with torch.no_grad():
        for first in range(0, len(offline), chunk):
            last = min(first + chunk, len(offline))
            window = padded[:, first * s : (last - 1) * s + field]
            pieces.append(model(window.unsqueeze(0))[0])
    assert torch.allclose(torch.cat(pieces), offline, atol=1e-5)


def test_padding_is_the_log_mel_of_digital_silence_and_batches_do_not_leak():
    model = trained_looking(SMALL)
    clips = [torch.randn(N_MELS, n) for n in (50, 11, 80)]
    batch = pad_batch(model, clips)
    assert batch.shape == (3, N_MELS, model.left_context + 80 + model.right_context)
    assert (batch[1, :, : model.left_context] == SILENCE).all()
    assert (batch[1, :, model.left_context + 11 :] == SILENCE).all()
    for clip, together in zip(clips, batch_log_probs(model, clips, batch=2), strict=True):
        assert torch.allclose(together, offline_log_probs(model, clip), atol=1e-5)


def test_saved_transcriber_rebuilds_with_its_card(tmp_path):
    model = trained_looking(SMALL)
    card = {"features": {"n_mels": N_MELS}, "model": SMALL.model_dump(), "tokens": TOKENS, "data_version": "abc"}
    save_model(model, tmp_path / "asr.pt", card)
    loaded, loaded_card = load_transcriber(tmp_path / "asr.pt")
    mels = torch.randn(N_MELS, 40)
    assert not loaded.training and loaded_card == card
    assert torch.equal(offline_log_probs(loaded, mels), offline_log_probs(model, mels))
    with pytest.raises(EarshotError, match="model not found"):
        load_transcriber(tmp_path / "missing.pt")
