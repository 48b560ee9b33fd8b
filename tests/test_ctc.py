import subprocess
import sys

import pytest
import torch

from components.config import Decode
from components.ctc import BLANK_ID, TOKENS, BeamDecoder, encode_text, greedy_decode, tokens_to_text


def log_probs(path: list[int], margin: float = 6.0) -> torch.Tensor:
    """(frames, vocab) log-probabilities whose best token in frame i is path[i], by `margin` nats."""
    scores = torch.zeros(len(path), len(TOKENS))
    scores[torch.arange(len(path)), torch.tensor(path)] = margin
    return scores.log_softmax(dim=-1)


def spelled(text: str) -> list[int]:
    """A CTC path for `text`: every token followed by a blank, so double letters survive collapsing."""
    return [t for token in encode_text(text) for t in (token, BLANK_ID)]


def test_tokens_start_with_the_blank_then_separator_apostrophe_and_letters():
    assert TOKENS[0] == "-" and TOKENS[1] == "|" and TOKENS[2] == "'" and len(TOKENS) == 29
    assert encode_text("Don't  call") == [TOKENS.index(c) for c in "don't|call"]
    with pytest.raises(ValueError, match="outside a-z"):
        encode_text("call 911")


def test_greedy_decoding_collapses_repeats_and_drops_blanks():
    c, a, el, sep = (TOKENS.index(t) for t in "cal|")
    path = [BLANK_ID, c, c, a, el, el, BLANK_ID, el, sep, sep, BLANK_ID, c, a, a, el, BLANK_ID]
    assert greedy_decode(log_probs(path)) == "call cal"
    assert tokens_to_text([sep, c, sep]) == "c"  # separators at the ends are not words


def test_beam_search_without_lexicon_agrees_with_greedy_on_a_clear_path():
    lp = log_probs(spelled("set a timer"))
    assert BeamDecoder(None, Decode(beam_size=8)).decode(lp) == greedy_decode(lp) == "set a timer"
    # Asking for a lexicon without words to put in it is the same lexicon-free search.
    assert BeamDecoder([], Decode(beam_size=8, lexicon=True)).decode(lp) == "set a timer"


def test_the_lexicon_mends_a_misspelling_greedy_keeps():
    lp = log_probs(spelled("cal mom"))
    vocabulary = ["call", "mom", "tall", "timer"]
    assert greedy_decode(lp) == "cal mom"
    assert BeamDecoder(vocabulary, Decode(lexicon=False)).decode(lp) == "cal mom"
    assert BeamDecoder(vocabulary, Decode(lexicon=True)).decode(lp) == "call mom"


def test_the_lexicon_keeps_a_last_word_said_on_the_last_frame():
    # A causal model says a letter late, by its lookahead: the last one can land on the last frame, with no frame
    # after it for a separator. Without the decoder's closing frame flashlight dropped the open word ('stop').
    vocabulary = ["stop", "on", "so", "off"]
    for path in (encode_text("stop on"), spelled("stop on")):
        assert BeamDecoder(vocabulary, Decode()).decode(log_probs(path, margin=20.0)) == "stop on"


def test_the_lexicon_prefers_the_word_the_audio_is_closest_to():
    # Frame 0 says "t" a little more than "c": the lexicon must still choose between whole words by their scores.
    path = spelled("tall")
    lp = log_probs(path)
    lp[0, TOKENS.index("c")] = lp[0, TOKENS.index("t")] - 1.0
    assert BeamDecoder(["call", "tall"], Decode()).decode(lp) == "tall"
    lp[0, TOKENS.index("c")] = lp[0, TOKENS.index("t")] + 1.0
    assert BeamDecoder(["call", "tall"], Decode()).decode(lp) == "call"


TIED_DECODES = """
import sys, torch
from components.config import Decode
from components.ctc import TOKENS, BeamDecoder
ballast = [torch.empty(997 * n + 3) for n in range(int(sys.argv[1]))]  # each process lays out memory differently
grid = torch.Generator().manual_seed(1)
decoder = BeamDecoder(["me", "my", "mine", "may", "yes"], Decode())
# Log-probabilities on a coarse grid, as INT8 outputs are: many paths tie exactly.
print([decoder.decode(torch.log_softmax(torch.round(2 * torch.randn(50, len(TOKENS), generator=grid)) / 2, -1))
       for _ in range(40)])
"""


def test_tied_log_probs_decode_to_the_same_words_in_every_process():
    """Without the tie break, four processes gave four different lists here (flashlight orders ties by address)."""
    answers = {subprocess.run([sys.executable, "-c", TIED_DECODES, str(n)], capture_output=True, text=True,
                              check=True).stdout for n in (1, 5, 9)}
    assert len(answers) == 1


def test_a_vocabulary_word_outside_the_alphabet_is_refused():
    with pytest.raises(ValueError, match="outside a-z"):
        BeamDecoder(["call", "r2d2"], Decode())
