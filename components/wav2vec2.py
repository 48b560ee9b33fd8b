"""A real pretrained speech encoder (wav2vec 2.0 or HuBERT) as a frozen embedding for custom keyword heads.

The user points at a Hugging Face checkpoint folder already on disk; torchaudio builds the model and the weights
are renamed to its layout here, so nothing is downloaded and `transformers` is not needed at run time.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn
from torchaudio.models import Wav2Vec2Model, wav2vec2_model

# torchaudio's own translation of a Hugging Face config into wav2vec2_model's arguments; its public importer
# (import_huggingface_model) wants a live transformers model, this helper only reads attributes.
from torchaudio.models.wav2vec2.utils.import_huggingface import _get_config

from components.errors import EarshotError

SAMPLE_RATE = 16000
# Hugging Face's config defaults for the fields read here: a config.json may leave out any field equal to them.
_DEFAULTS: dict[str, dict[str, Any]] = {
    "wav2vec2": {
        "feat_extract_norm": "group", "feat_extract_activation": "gelu", "conv_bias": False,
        "conv_dim": [512] * 7, "conv_kernel": [10, 3, 3, 3, 3, 2, 2], "conv_stride": [5, 2, 2, 2, 2, 2, 2],
        "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072,
        "hidden_act": "gelu", "num_conv_pos_embeddings": 128, "num_conv_pos_embedding_groups": 16,
        "do_stable_layer_norm": False, "layer_norm_eps": 1e-5, "feat_proj_dropout": 0.0, "attention_dropout": 0.1,
        "activation_dropout": 0.1, "hidden_dropout": 0.1, "layerdrop": 0.1, "add_adapter": False,
    },
}
_DEFAULTS["hubert"] = {**_DEFAULTS["wav2vec2"], "feat_proj_layer_norm": True, "conv_pos_batch_norm": False}
# Where a task model (ForCTC, ForPreTraining, ForSequenceClassification...) keeps the bare model's weights.
_BASE_PREFIX = {"wav2vec2": "wav2vec2.", "hubert": "hubert."}
# Hugging Face module -> torchaudio module; anything else (lm_head, quantizer, masked_spec_embed) is a head or a
# training-only tensor that an embedding does not use.
_MODULES = {"feature_extractor.": "feature_extractor.", "feature_projection.": "encoder.feature_projection.",
            "encoder.": "encoder.transformer."}
# Checkpoints saved before torch's parametrized weight_norm name the positional convolution's two halves so.
_OLD_WEIGHT_NORM = {".weight_g": ".parametrizations.weight.original0",
                    ".weight_v": ".parametrizations.weight.original1"}
# In the order transformers itself prefers them; an index file lists the shards of a split checkpoint.
_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                 "pytorch_model.bin.index.json")


class Wav2Vec2Error(EarshotError):
    """A checkpoint folder that cannot be loaded, with a message naming the folder and the problem on one line."""


class Wav2Vec2Encoder(nn.Module):
    """16 kHz waves (batch, samples) -> embedding (batch, dim): the mean over frames of one transformer layer.

    The same interface as earshot's own encoder, so a keyword head does not care which one it sits on.
    """

    sample_rate = SAMPLE_RATE

    def __init__(self, model: Wav2Vec2Model, *, layer: int | None = None, normalize: bool = False,
                 frozen: bool = True) -> None:
        """`layer`: 1-based transformer layer whose output is pooled, None for the model's final output (after
        the final layer norm, Hugging Face's last_hidden_state); `normalize`: scale each wave to zero mean and
        unit variance first, as the checkpoint's feature extractor did in training."""
        super().__init__()
        layers = len(model.encoder.transformer.layers)
        if layer is not None and not 1 <= layer <= layers:
            raise Wav2Vec2Error(f"layer {layer} does not exist: the model has layers 1 to {layers}")
        self.model = model
        self.layer = layer
        self.normalize = normalize
        self.frozen = frozen
        self.dim: int = model.encoder.feature_projection.projection.out_features
        if frozen:
            self.requires_grad_(False)
        self.train(False)

    def train(self, mode: bool = True) -> Wav2Vec2Encoder:
        # A frozen encoder keeps its dropout off even when the head around it is put in training mode.
        return super().train(mode and not self.frozen)

    def forward(self, waves: torch.Tensor) -> torch.Tensor:
        if waves.dim() != 2:
            raise ValueError(f"expected waves of shape (batch, samples), got {tuple(waves.shape)}")
        if self.normalize:
            # Hugging Face's Wav2Vec2FeatureExtractor formula, so embeddings match what the checkpoint saw.
            waves = (waves - waves.mean(dim=1, keepdim=True)) / torch.sqrt(
                waves.var(dim=1, unbiased=False, keepdim=True) + 1e-7)
        # Frozen: no activations kept for a backward pass that cannot reach the encoder's weights.
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            if self.layer is None:
                frames, _ = self.model(waves)
            else:
                outputs, _ = self.model.extract_features(waves, num_layers=self.layer)
                frames = outputs[-1]
        return frames.mean(dim=1)


def load_wav2vec2(folder: Path, *, layer: int | None = None, frozen: bool = True) -> Wav2Vec2Encoder:
    """The wav2vec 2.0 / HuBERT checkpoint in `folder` (Hugging Face format: config.json and weights) as an encoder.

    Reads local files only: a folder is never taken for a hub name, so this cannot reach the network.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise Wav2Vec2Error(f"{folder}: no such checkpoint folder")
    config = _read_config(folder)
    model = _build(folder, config)
    weights = _convert(_read_weights(folder), _BASE_PREFIX[config["model_type"]])
    _check_match(folder, weights, model.state_dict())
    model.load_state_dict(weights)
    return Wav2Vec2Encoder(model, layer=layer, normalize=_normalizes(folder, config), frozen=frozen)


def _read_json(path: Path, folder: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise Wav2Vec2Error(f"{folder}: cannot read {path.name}: {error}") from error
    if not isinstance(data, dict):
        raise Wav2Vec2Error(f"{folder}: {path.name} is not a JSON object")
    return data


def _read_config(folder: Path) -> dict[str, Any]:
    """config.json over Hugging Face's defaults, refused if it asks for something torchaudio's model lacks."""
    path = folder / "config.json"
    if not path.is_file():
        raise Wav2Vec2Error(f"{folder}: no config.json (expected a Hugging Face wav2vec2 or hubert checkpoint)")
    raw = _read_json(path, folder)
    kind = raw.get("model_type")
    if kind not in _DEFAULTS:
        raise Wav2Vec2Error(f"{folder}: unsupported model_type {kind!r} in config.json "
                            f"(supported: {', '.join(_DEFAULTS)})")
    config = {**_DEFAULTS[kind], **raw}
    # Each of these changes the forward pass in a way torchaudio's wav2vec2_model cannot reproduce.
    unsupported = {
        "hidden_act": config["hidden_act"] != "gelu",
        "feat_extract_activation": config["feat_extract_activation"] != "gelu",
        "feat_extract_norm": config["feat_extract_norm"] not in ("group", "layer"),
        "layer_norm_eps": config["layer_norm_eps"] != 1e-5,
        "add_adapter": bool(config["add_adapter"]),
    }
    if kind == "hubert":  # wav2vec2's config class has neither field, and transformers ignores them there
        unsupported |= {"feat_proj_layer_norm": not config["feat_proj_layer_norm"],
                        "conv_pos_batch_norm": bool(config["conv_pos_batch_norm"])}
    bad = [f"{key}={config[key]!r}" for key, refused in unsupported.items() if refused]
    if bad:
        raise Wav2Vec2Error(f"{folder}: unsupported {kind} setting in config.json: {', '.join(bad)}")
    if not len(config["conv_dim"]) == len(config["conv_kernel"]) == len(config["conv_stride"]):
        raise Wav2Vec2Error(f"{folder}: config.json's conv_dim, conv_kernel and conv_stride differ in length")
    return config


def _build(folder: Path, config: Mapping[str, Any]) -> Wav2Vec2Model:
    try:
        return wav2vec2_model(**_get_config(SimpleNamespace(**config)), aux_num_out=None)
    except (TypeError, ValueError, RuntimeError) as error:
        raise Wav2Vec2Error(f"{folder}: config.json does not describe a buildable model: {error}") from error


def _load_one(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        return load_file(path, device="cpu")
    # weights_only: a .bin is a pickle, and a downloaded one must not run code when opened.
    return torch.load(path, map_location="cpu", weights_only=True)


def _read_weights(folder: Path) -> dict[str, torch.Tensor]:
    name = next((name for name in _WEIGHT_FILES if (folder / name).is_file()), None)
    if name is None:
        raise Wav2Vec2Error(f"{folder}: no weights (none of {', '.join(_WEIGHT_FILES)})")
    if name.endswith(".index.json"):
        weight_map = _read_json(folder / name, folder).get("weight_map")
        if not isinstance(weight_map, dict):
            raise Wav2Vec2Error(f"{folder}: {name} has no weight_map")
        paths = [folder / shard for shard in sorted(set(weight_map.values()))]
    else:
        paths = [folder / name]
    weights: dict[str, torch.Tensor] = {}
    for path in paths:
        try:
            weights.update(_load_one(path))
        except (OSError, RuntimeError, ValueError, pickle.UnpicklingError, SafetensorError) as error:
            raise Wav2Vec2Error(f"{folder}: cannot read weights {path.name}: {error}") from error
    return weights


def _convert(weights: Mapping[str, torch.Tensor], base_prefix: str) -> dict[str, torch.Tensor]:
    """Hugging Face parameter names -> torchaudio's, keeping only the bare model (no task head)."""
    converted = {}
    for key, tensor in weights.items():
        key = key.removeprefix(base_prefix)
        module = next((m for m in _MODULES if key.startswith(m)), None)
        if module is None:
            continue
        key = _MODULES[module] + key.removeprefix(module)
        for old, new in _OLD_WEIGHT_NORM.items():
            if key.endswith(old):
                key = key.removesuffix(old) + new
        converted[key] = tensor
    return converted


def _check_match(folder: Path, weights: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor]) -> None:
    """One line on how the file's weights differ from the model config.json describes, instead of torch's list."""
    missing = sorted(expected.keys() - weights.keys())
    unexpected = sorted(weights.keys() - expected.keys())
    wrong = sorted(k for k in expected.keys() & weights.keys() if weights[k].shape != expected[k].shape)
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing (e.g. {missing[0]})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
    if wrong:
        problems.append(f"{len(wrong)} of the wrong shape (e.g. {wrong[0]}: {tuple(weights[wrong[0]].shape)} in "
                        f"the file, {tuple(expected[wrong[0]].shape)} by config.json)")
    if problems:
        raise Wav2Vec2Error(f"{folder}: weights do not match config.json: {'; '.join(problems)}")


def _normalizes(folder: Path, config: Mapping[str, Any]) -> bool:
    """Whether the checkpoint was trained on per-wave normalized audio, so its inputs must be too."""
    path = folder / "preprocessor_config.json"
    if path.is_file():
        return bool(_read_json(path, folder).get("do_normalize", True))
    # Without the preprocessor's word, fairseq's rule: layer-norm feature extractors (the large models) were
    # trained on normalized waves, group-norm ones (base) on raw waves.
    return config["feat_extract_norm"] == "layer"
