"""Characters <-> CTC tokens, and the two ways to read a transcript off a model's log-probabilities.

Greedy decoding is what training validates with; beam search (torchaudio's flashlight decoder) may also be held to
the words of a lexicon, which mends the misspellings a character model makes on words it has heard.
"""

from __future__ import annotations

import string
import tempfile
from pathlib import Path

import torch
from torchaudio.models.decoder import ctc_decoder

from components.config import Decode

BLANK, SEPARATOR = "-", "|"
# Index 0 is the CTC blank; "|" stands for the space between words, as in wav2letter and torchaudio.
TOKENS = [BLANK, SEPARATOR, "'", *string.ascii_lowercase]
_INDEX = {token: i for i, token in enumerate(TOKENS)}
BLANK_ID = _INDEX[BLANK]
# flashlight's beam search orders exactly tied hypotheses by where they sit in memory, so the same INT8 log-probs
# (on a coarse grid, tied often) decoded in two processes could give two transcripts. A fixed offset per (frame,
# token), far below INT8's step, makes every path's score distinct and the answer the same everywhere.
TIE_BREAK = 1e-4
CLOSING_FLOOR = -50.0  # log-probability of every other token in the closing separator frame (see BeamDecoder)


def encode_text(text: str) -> list[int]:
    """Token ids of a transcript (lower-cased, runs of whitespace as one separator); ValueError on other characters."""
    words = text.lower().split()
    unknown = sorted(set("".join(words)) - set(TOKENS[2:]))
    if unknown:
        raise ValueError(f"transcript {text!r} has characters outside a-z, ' and space: {''.join(unknown)!r}")
    return [_INDEX[c] for c in SEPARATOR.join(words)]


def tokens_to_text(ids: list[int]) -> str:
    """The words a CTC path spells: repeats collapsed, blanks dropped, separators as single spaces."""
    collapsed = [t for i, t in enumerate(ids) if t != BLANK_ID and (i == 0 or t != ids[i - 1])]
    return " ".join("".join(TOKENS[t] for t in collapsed).replace(SEPARATOR, " ").split())


def spells(log_probs: torch.Tensor) -> torch.Tensor:
    """Per frame of (frames, vocab) log-probabilities: is its most likely token one that spells (a letter or ')?"""
    return log_probs.argmax(dim=-1) > _INDEX[SEPARATOR]


def greedy_decode(log_probs: torch.Tensor) -> str:
    """Best path decoding of (frames, vocab) log-probabilities: the most likely token of every frame."""
    return tokens_to_text(log_probs.argmax(dim=-1).tolist())


class BeamDecoder:
    """Beam search over (frames, vocab) log-probabilities, spelling only `vocabulary` words when cfg.lexicon is set.

    No language model: with a lexicon every word of the vocabulary is equally likely, so the acoustic scores decide.
    """

    def __init__(self, vocabulary: list[str] | None, cfg: Decode) -> None:
        with tempfile.TemporaryDirectory() as folder:
            lexicon = None
            if cfg.lexicon and vocabulary:
                for word in vocabulary:
                    encode_text(word)  # refuses words the tokens cannot spell
                lexicon = str(Path(folder) / "lexicon.txt")
                # Each word spelled in tokens, ending in the separator: flashlight's word boundary.
                Path(lexicon).write_text("".join(f"{w} {' '.join(w)} {SEPARATOR}\n" for w in sorted(set(vocabulary))))
            self.decoder = ctc_decoder(lexicon=lexicon, tokens=TOKENS, beam_size=cfg.beam_size,
                                       blank_token=BLANK, sil_token=SEPARATOR)
        self.lexicon = lexicon is not None

    def decode(self, log_probs: torch.Tensor) -> str:
        """The best beam's words; a lexicon-free beam is spelled out of its tokens."""
        emissions = log_probs.detach().float()
        if self.lexicon:
            # flashlight ends a lexicon word only at a separator, and drops a word still open at the last frame: a
            # model that says an utterance's last letter on its last frame (a causal one, late by its lookahead)
            # would lose its last word. A closing frame of certain separator ends every utterance between words.
            closing = torch.full((1, emissions.shape[1]), CLOSING_FLOOR)
            closing[0, _INDEX[SEPARATOR]] = 0.0
            emissions = torch.cat([emissions, closing])
        emissions = emissions + TIE_BREAK * torch.rand(emissions.shape, generator=torch.Generator().manual_seed(0))
        best = self.decoder(emissions.unsqueeze(0).contiguous())[0][0]
        if self.lexicon:
            return " ".join(best.words)
        return " ".join("".join(self.decoder.idxs_to_tokens(best.tokens)).replace(SEPARATOR, " ").split())
