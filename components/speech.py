"""Offline text-to-speech through libespeak-ng (shipped by espeakng_loader), driven with ctypes.

No network, no model weights: espeak's formant synthesis gives many distinct, reproducible "speakers" for free.
"""

from __future__ import annotations

import _ctypes
import ctypes
import re
import threading
import zlib
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path
from typing import ClassVar, Protocol

import espeakng_loader
import numpy as np

from components.errors import EarshotError

SPEECH_RATE = 22050
RATE_RANGE = (80, 450)
PITCH_RANGE = (0, 99)
# Variants that sound like people; the rest of voices/!v includes robots, whispers and effects.
NATURAL_VARIANTS = tuple("m1 m2 m3 m4 m5 m6 m7 f1 f2 f3 f4 f5 klatt klatt2 klatt3 adam linda steph".split())

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_POS_CHARACTER = 1
_ESPEAK_CHARS_AUTO = 0
_ESPEAK_CHARS_UTF8 = 1
_PHONEMES_IPA = 0x02
_ESPEAK_RATE = 1
_ESPEAK_PITCH = 3
_EE_OK = 0
_INT16_SCALE = 32768.0

_SynthCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


class VoiceError(EarshotError):
    """A voice, variant, rate or pitch espeak-ng cannot use, with a message fit for one line."""


class Talker(Protocol):
    """One synthetic speaker of any engine: what the corpus needs to record it and to say who it was."""

    source: ClassVar[str]  # the engine's tag in speakers.csv and the per-source reports
    sample_rate: ClassVar[int]

    def say(self, text: str) -> np.ndarray:
        """`text` spoken: float32 mono in [-1, 1) at sample_rate; the same call gives the same audio."""
        ...

    def faster(self, factor: float) -> Talker:
        """The same voice speaking `factor` times as fast, or itself where the engine's limit is reached."""
        ...

    def describe(self) -> dict[str, str]:
        """The settings that make this speaker, for speakers.csv."""
        ...


@dataclass(frozen=True)
class Speaker:
    """One espeak-ng talker: a voice ("en-us"), a variant ("f2", "" for none), words/min and pitch 0-99."""

    voice: str
    variant: str = ""
    rate: int = 175
    pitch: int = 50

    source: ClassVar[str] = "espeak"
    sample_rate: ClassVar[int] = SPEECH_RATE

    def say(self, text: str) -> np.ndarray:
        return speak(text, self)

    def faster(self, factor: float) -> Speaker:
        return replace(self, rate=min(max(round(self.rate * factor), RATE_RANGE[0]), RATE_RANGE[1]))

    def describe(self) -> dict[str, str]:
        return {"voice": self.voice, "variant": self.variant, "rate": str(self.rate), "pitch": str(self.pitch)}


class _Engine:
    """One loaded, initialised copy of libespeak-ng; the library keeps global state, so one lives at a time."""

    def __init__(self) -> None:
        self.lib = ctypes.CDLL(espeakng_loader.get_library_path())
        self.lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        self.lib.espeak_SetSynthCallback.argtypes = [_SynthCallback]
        self.lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        self.lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        self.lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
        self.lib.espeak_Synth.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int]
        self.lib.espeak_Synth.argtypes += [ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
        self.lib.espeak_TextToPhonemes.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_int, ctypes.c_int]
        self.lib.espeak_TextToPhonemes.restype = ctypes.c_char_p
        # The process's C library: espeak draws part of its breath noise from libc rand().
        self.libc = ctypes.CDLL(None)
        self.libc.srand.argtypes = [ctypes.c_uint]
        rate = self.lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, espeakng_loader.get_data_path().encode(), 0)
        if rate != SPEECH_RATE:
            raise RuntimeError(f"espeak-ng initialised at {rate} Hz, expected {SPEECH_RATE}")
        self.chunks: list[np.ndarray] = []
        # Kept on self: ctypes frees the trampoline when the Python object dies, and C would call freed memory.
        self.callback = _SynthCallback(self._collect)
        self.lib.espeak_SetSynthCallback(self.callback)
        self.voice = ""

    def _collect(self, wav: ctypes.POINTER(ctypes.c_short), count: int, _events: int | None) -> int:
        if wav and count > 0:
            self.chunks.append(np.ctypeslib.as_array(wav, shape=(count,)).copy())
        return 0

    def use_voice(self, voice: str, variant: str = "") -> None:
        name = _voice_files()[voice.lower()]
        name = f"{name}+{variant}" if variant else name
        if name != self.voice:
            if self.lib.espeak_SetVoiceByName(name.encode()) != _EE_OK:
                raise VoiceError(f"espeak-ng could not load voice {name!r}")
            self.voice = name

    def phonemes(self, text: str, voice: str) -> str:
        self.use_voice(voice)
        raw = ctypes.create_string_buffer(text.encode() + b"\0")
        pointer = ctypes.c_void_p(ctypes.addressof(raw))
        clauses = []
        # One clause per call; espeak advances the pointer and sets it to NULL after the last.
        while pointer.value:
            clauses.append(self.lib.espeak_TextToPhonemes(ctypes.byref(pointer), _ESPEAK_CHARS_UTF8, _PHONEMES_IPA))
        return " ".join(c.decode() for c in clauses if c)

    def synth(self, text: str, speaker: Speaker) -> np.ndarray:
        self.use_voice(speaker.voice, speaker.variant)
        self.lib.espeak_SetParameter(_ESPEAK_RATE, speaker.rate, 0)
        self.lib.espeak_SetParameter(_ESPEAK_PITCH, speaker.pitch, 0)
        # espeak seeds its own generator from the clock, and libc rand() carries over from earlier callers.
        seed = zlib.crc32(repr((text, speaker)).encode())
        self.lib.espeak_ng_SetRandSeed(seed)
        self.libc.srand(seed)
        raw = text.encode() + b"\0"
        self.chunks = []
        self.lib.espeak_Synth(raw, len(raw), 0, _POS_CHARACTER, 0, _ESPEAK_CHARS_AUTO, None, None)
        pcm = np.concatenate(self.chunks) if self.chunks else np.zeros(0, np.int16)
        return pcm.astype(np.float32) / _INT16_SCALE

    def unload(self) -> None:
        self.lib.espeak_Terminate()
        _ctypes.dlclose(self.lib._handle)


_lock = threading.Lock()
_engine: _Engine | None = None


def reset_engine() -> None:
    """Unload libespeak-ng, so the next speak() loads a fresh copy (~5 ms) unless other code holds it open.

    espeak keeps hidden state across utterances (pitch-flutter phase, gain control, noise filters), so a sequence
    of speak() calls is reproducible only from a reset; the same calls after a reset give the same audio.
    """
    global _engine
    with _lock:
        if _engine is not None:
            _engine.unload()
            _engine = None


@cache
def _voice_files() -> dict[str, str]:
    """Lower-case voice name -> voice file under espeak-ng-data/lang ("en-gb" -> "gmw/en").

    espeak_SetVoiceByName only matches file names, so language codes such as "en-gb" are resolved here
    the way espeak's own selection ranks them: the file listing the code with the lowest priority number.
    """
    lang = Path(espeakng_loader.get_data_path()) / "lang"
    files = sorted(p.relative_to(lang).as_posix() for p in lang.rglob("*") if p.is_file())
    ranked: dict[str, tuple[int, str]] = {}
    for ident in files:
        for line in (lang / ident).read_text(errors="replace").splitlines():
            match = re.match(r"language\s+(\S+)(?:\s+(\d+))?", line)
            if match:
                choice = (int(match[2] or 5), ident)
                ranked[match[1].lower()] = min(ranked.get(match[1].lower(), choice), choice)
    by_code = {code: ident for code, (_, ident) in ranked.items()}
    return by_code | {ident.rsplit("/", 1)[-1].lower(): ident for ident in files}


def voices() -> tuple[str, ...]:
    """Every voice name `Speaker.voice` accepts (file names and language codes, lower case), sorted."""
    return tuple(sorted(_voice_files()))


@cache
def variants() -> tuple[str, ...]:
    """Every voice variant espeak-ng ships (the files of espeak-ng-data/voices/!v), sorted.

    Some are deliberately non-human ("robosoft", "whisper"); NATURAL_VARIANTS lists the ones that sound like people.
    """
    variant_dir = Path(espeakng_loader.get_data_path()) / "voices" / "!v"
    return tuple(sorted(p.name for p in variant_dir.iterdir() if p.is_file()))


def check_speaker(speaker: Speaker) -> None:
    """Raise VoiceError (one line) unless espeak-ng knows the speaker's voice, variant, rate and pitch.

    Reads only the voice data files, so a caller can check settings cheaply before a long synthesis run.
    """
    if speaker.voice.lower() not in _voice_files():
        raise VoiceError(f"espeak-ng has no voice {speaker.voice!r}")
    if speaker.variant and speaker.variant not in variants():
        raise VoiceError(f"espeak-ng has no voice variant {speaker.variant!r}")
    if not RATE_RANGE[0] <= speaker.rate <= RATE_RANGE[1]:
        raise VoiceError(f"rate {speaker.rate} words/min is outside espeak-ng's {RATE_RANGE}")
    if not PITCH_RANGE[0] <= speaker.pitch <= PITCH_RANGE[1]:
        raise VoiceError(f"pitch {speaker.pitch} is outside espeak-ng's {PITCH_RANGE}")


def _loaded() -> _Engine:
    global _engine
    if _engine is None:
        _engine = _Engine()
    return _engine


def phonemes(text: str, voice: str = "en-us") -> str:
    """`text` in IPA as espeak-ng's `voice` would pronounce it ("yes" -> "jˈɛs"): input for phoneme-driven engines."""
    if voice.lower() not in _voice_files():
        raise VoiceError(f"espeak-ng has no voice {voice!r}")
    with _lock:
        return _loaded().phonemes(text, voice)


def speak(text: str, speaker: Speaker) -> np.ndarray:
    """Say `text` as `speaker`: float32 mono in [-1, 1) at SPEECH_RATE, silence padding included.

    Reproducible for the same calls since reset_engine() (it reseeds libc rand() on the way); raises VoiceError
    if the speaker's settings are unusable.
    """
    check_speaker(speaker)
    with _lock:
        return _loaded().synth(text, speaker)
