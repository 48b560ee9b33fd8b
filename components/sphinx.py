"""An independent isolated-word recognizer: CMU PocketSphinx 5 (BSD-2-Clause) with its bundled en-us model.

It checks that a synthesized clip says its word before training on it, and is the benchmark's peer baseline.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pocketsphinx import Decoder

from components.acoustics import resample

SPHINX_RATE = 16000
PAD_SECONDS = 0.2  # silence each side: the decoder needs a little to settle its noise floor and end the word
# A faint noise floor under the clip: digital silence makes log energies degenerate, and over the espeak-ng clips
# this dither raised the share heard right from 58 % to 88 %. Seeded, so a clip is always heard the same way.
DITHER = 1e-3
_INT16_MAX = 32767


class WordRecognizer:
    """A closed grammar over `words`: each clip is heard as exactly one of them, or "" if it hears nothing.

    A closed grammar (not keyword spotting) because the corpus's own word list is the vocabulary: a clip that
    says another corpus word is heard as that word, which is what the clip check needs to drop it.
    """

    def __init__(self, words: Sequence[str], sample_rate: int = SPHINX_RATE) -> None:
        self.sample_rate = sample_rate
        self.decoder = Decoder(samprate=SPHINX_RATE, lm=None, loglevel="FATAL")
        unknown = [w for w in words if self.decoder.lookup_word(w.lower()) is None]
        if unknown:
            raise ValueError(f"PocketSphinx's en-us dictionary has no word {unknown[0]!r}")
        alternatives = " | ".join(sorted({w.lower() for w in words}))
        self.decoder.add_jsgf_string("words", f"#JSGF V1.0; grammar words; public <word> = {alternatives};")
        self.decoder.activate_search("words")

    def hear(self, wave: np.ndarray) -> str:
        """The word heard in float32 mono `wave` (at the recognizer's sample rate), or "" for none."""
        audio = resample(wave, self.sample_rate, SPHINX_RATE) if self.sample_rate != SPHINX_RATE else wave
        pad = np.zeros(int(PAD_SECONDS * SPHINX_RATE), np.float32)
        padded = np.concatenate([pad, audio, pad])
        padded = padded + np.random.default_rng(0).normal(0.0, DITHER, padded.size).astype(np.float32)
        pcm = (np.clip(padded, -1.0, 1.0) * _INT16_MAX).astype(np.int16)
        self.decoder.start_utt()
        self.decoder.process_raw(pcm.tobytes(), full_utt=True)
        self.decoder.end_utt()
        hypothesis = self.decoder.hyp()
        return hypothesis.hypstr.strip() if hypothesis else ""
