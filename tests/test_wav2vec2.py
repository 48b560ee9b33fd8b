"""load_wav2vec2 on tiny random checkpoints that transformers writes here: same embeddings as transformers' own
forward pass (so a wrong name mapping or config translation fails), frozen weights, one-line errors, no network."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

# Set before transformers (and huggingface_hub under it) is imported: nothing in this file may reach the hub.
os.environ["HF_HUB_OFFLINE"] = "1"

import pytest
import torch
from safetensors.torch import load_file
from transformers import (
    HubertConfig,
    HubertModel,
    PreTrainedModel,
    Wav2Vec2Config,
    Wav2Vec2ForCTC,
    Wav2Vec2ForPreTraining,
    Wav2Vec2Model,
)

from components.errors import EarshotError
from components.wav2vec2 import Wav2Vec2Encoder, Wav2Vec2Error, load_wav2vec2

PROJECT = Path(__file__).resolve().parents[1]
# Two layers, hidden 32 and a two-conv front end (stride 10): a few thousand samples give ~400 frames.
TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
        "conv_dim": [16, 16], "conv_kernel": [10, 3], "conv_stride": [5, 2], "num_conv_pos_embeddings": 16,
        "num_conv_pos_embedding_groups": 2, "vocab_size": 12}
# Large-model layout: layer-norm front end with conv bias, layer norm before each block and after the last one.
STABLE = {**TINY, "feat_extract_norm": "layer", "do_stable_layer_norm": True, "conv_bias": True}


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _waves(batch: int = 2, samples: int = 4000) -> torch.Tensor:
    return 0.1 * torch.randn(batch, samples, generator=torch.Generator().manual_seed(1))


def _save(model: PreTrainedModel, folder: Path, **options: object) -> Path:
    model.save_pretrained(folder, **options)
    return folder


def _bare(model: PreTrainedModel) -> PreTrainedModel:
    """The wav2vec2 / hubert model inside a task model, whose hidden states are the reference."""
    return getattr(model, "wav2vec2", model).eval()


def _reference(model: PreTrainedModel, waves: torch.Tensor, layer: int | None = None) -> torch.Tensor:
    with torch.no_grad():
        out = _bare(model)(waves, output_hidden_states=True)
    return (out.last_hidden_state if layer is None else out.hidden_states[layer]).mean(dim=1)


def _legacy_bin(model: PreTrainedModel, folder: Path) -> Path:
    """The checkpoint as older transformers wrote it: pytorch_model.bin, weight_norm halves as weight_g/weight_v."""
    _save(model, folder)
    state = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    renames = {"parametrizations.weight.original0": "weight_g", "parametrizations.weight.original1": "weight_v"}
    for new, old in renames.items():
        state = {key.replace(new, old): value for key, value in state.items()}
    torch.save(state, folder / "pytorch_model.bin")
    return folder


def _seeded(build: Callable[[], PreTrainedModel]) -> PreTrainedModel:
    torch.manual_seed(0)
    return build().eval()


CASES: dict[str, tuple[Callable[[], PreTrainedModel], Callable[[PreTrainedModel, Path], Path]]] = {
    "wav2vec2-ctc": (lambda: Wav2Vec2ForCTC(Wav2Vec2Config(**TINY)), _save),
    "wav2vec2-pretraining-stable": (lambda: Wav2Vec2ForPreTraining(Wav2Vec2Config(**STABLE)), _save),
    "hubert-sharded": (lambda: HubertModel(HubertConfig(**TINY)),
                       lambda model, folder: _save(model, folder, max_shard_size="20KB")),
    "wav2vec2-legacy-bin": (lambda: Wav2Vec2Model(Wav2Vec2Config(**TINY)), _legacy_bin),
}


@pytest.mark.parametrize("case", CASES)
def test_embeddings_equal_transformers_forward(case: str, tmp_path: Path) -> None:
    build, save = CASES[case]
    model = _seeded(build)
    folder = save(model, tmp_path / case)
    encoder = load_wav2vec2(folder)
    waves = _waves()
    embedding = encoder(waves)
    assert isinstance(encoder, Wav2Vec2Encoder)
    assert embedding.shape == (2, encoder.dim) and encoder.dim == 32 and encoder.sample_rate == 16000
    # The layer-norm front end was trained on normalized waves; transformers leaves that to its feature extractor.
    expected_input = waves
    if model.config.feat_extract_norm == "layer":
        assert encoder.normalize
        mean, var = waves.mean(dim=1, keepdim=True), waves.var(dim=1, unbiased=False, keepdim=True)
        expected_input = (waves - mean) / torch.sqrt(var + 1e-7)
    torch.testing.assert_close(embedding, _reference(model, expected_input), atol=1e-5, rtol=1e-4)


def test_chosen_layer_and_preprocessor_setting(tmp_path: Path) -> None:
    model = _seeded(lambda: Wav2Vec2Model(Wav2Vec2Config(**TINY)))
    folder = _save(model, tmp_path / "w2v")
    waves = _waves()
    torch.testing.assert_close(load_wav2vec2(folder, layer=1)(waves), _reference(model, waves, layer=1),
                               atol=1e-5, rtol=1e-4)
    # The checkpoint's own preprocessor config decides normalization over the front-end rule.
    (folder / "preprocessor_config.json").write_text(json.dumps({"do_normalize": True}))
    assert load_wav2vec2(folder).normalize
    with pytest.raises(Wav2Vec2Error, match="layer 3 does not exist"):
        load_wav2vec2(folder, layer=3)


def test_frozen_by_default_and_trainable_on_request(tmp_path: Path) -> None:
    folder = _save(_seeded(lambda: HubertModel(HubertConfig(**TINY))), tmp_path / "hubert")
    encoder = load_wav2vec2(folder)
    head = torch.nn.Sequential(encoder, torch.nn.Linear(encoder.dim, 3)).train()
    assert not any(p.requires_grad for p in encoder.parameters())
    # A head in training mode must not switch the frozen encoder's dropout on.
    assert not encoder.training and not any(m.training for m in encoder.modules())
    head(_waves()).sum().backward()
    assert head[1].weight.grad is not None

    trainable = load_wav2vec2(folder, frozen=False).train()
    assert trainable.training and all(p.requires_grad for p in trainable.parameters())
    trainable(_waves()).sum().backward()
    assert trainable.model.encoder.transformer.layers[0].attention.q_proj.weight.grad is not None


def _config(folder: Path, **changes: object) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({**Wav2Vec2Config(**TINY).to_dict(), **changes}))
    return folder


def _mismatched(folder: Path) -> Path:
    _save(_seeded(lambda: Wav2Vec2Model(Wav2Vec2Config(**TINY))), folder)
    return _config(folder, intermediate_size=48)


def _truncated(folder: Path) -> Path:
    _save(_seeded(lambda: Wav2Vec2Model(Wav2Vec2Config(**TINY))), folder)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    return folder


ERRORS: dict[str, tuple[Callable[[Path], Path], str]] = {
    "missing folder": (lambda folder: folder, "no such checkpoint folder"),
    "no config": (lambda folder: (folder.mkdir(), folder)[1], "no config.json"),
    "bad json": (lambda folder: (folder.mkdir(), (folder / "config.json").write_text("{"), folder)[2],
                 "cannot read config.json"),
    "unsupported type": (lambda folder: _config(folder, model_type="wavlm"), "unsupported model_type 'wavlm'"),
    "unsupported setting": (lambda folder: _config(folder, hidden_act="relu"), "hidden_act='relu'"),
    "no weights": (lambda folder: _config(folder), "no weights"),
    "weights not matching": (_mismatched, "weights do not match config.json: .*wrong shape"),
    "unreadable weights": (_truncated, "cannot read weights model.safetensors"),
}


@pytest.mark.parametrize("case", ERRORS)
def test_errors_are_one_line_and_name_the_folder(case: str, tmp_path: Path) -> None:
    make, expected = ERRORS[case]
    folder = make(tmp_path / "checkpoint\nfolder")  # a newline in the name must not break the line
    with pytest.raises(EarshotError, match=expected) as caught:
        load_wav2vec2(folder)
    message = str(caught.value)
    assert "\n" not in message and str(tmp_path) in message


def test_loads_without_transformers_or_network(tmp_path: Path) -> None:
    folder = _save(_seeded(lambda: Wav2Vec2ForCTC(Wav2Vec2Config(**TINY))), tmp_path / "w2v")
    # A fresh interpreter where transformers and huggingface_hub cannot be imported and no socket can connect.
    script = f"""
import socket, sys
sys.modules["transformers"] = sys.modules["huggingface_hub"] = None
def refuse(*args, **kwargs):
    raise AssertionError("network use")
socket.socket.connect = socket.socket.connect_ex = socket.create_connection = refuse
import torch
torch.set_num_threads(1)
from components.wav2vec2 import load_wav2vec2
print(tuple(load_wav2vec2({str(folder)!r})(torch.zeros(1, 2000)).shape))
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=PROJECT, capture_output=True, text=True, timeout=120,
                          env=os.environ | {"OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "(1, 32)"
