"""The command grammar: a few hundred words, thousands of 2-10 word sentences, all in the transcript alphabet."""

from __future__ import annotations

import re

import numpy as np

from components.grammar import all_sentences, sample_sentences, sentence_count, vocabulary

WORD = re.compile(r"[a-z]+('[a-z]*)?")


def test_vocabulary_is_sorted_unique_words_of_the_alphabet() -> None:
    words = vocabulary()
    assert len(words) >= 200
    assert words == sorted(set(words))
    assert all(WORD.fullmatch(w) for w in words), [w for w in words if not WORD.fullmatch(w)]


def test_every_word_has_a_vowel_so_espeak_says_it_rather_than_spelling_it() -> None:
    # espeak-ng spells out vowel-less tokens such as "tv" or "pm" letter by letter.
    assert [w for w in vocabulary() if len(w) > 1 and not re.search("[aeiouy]", w)] == []


def test_sentence_count_is_the_number_of_distinct_sentences() -> None:
    sentences = all_sentences()
    assert sentence_count() == len(sentences) == len(set(sentences)) >= 5000
    assert "call mom" in sentences
    assert "set a timer for twenty five minutes" in sentences
    assert "turn the kitchen lights off" in sentences


def test_every_sentence_has_two_to_ten_vocabulary_words_single_spaced() -> None:
    known = set(vocabulary())
    lengths = set()
    for sentence in all_sentences():
        words = sentence.split(" ")
        lengths.add(len(words))
        assert set(words) <= known, sentence
    assert min(lengths) == 2 and max(lengths) == 10
    # Every vocabulary word is reachable.
    assert {w for s in all_sentences() for w in s.split()} == known


def test_sampling_is_reproducible_and_stays_in_the_grammar() -> None:
    first = sample_sentences(np.random.default_rng(3), 300)
    assert first == sample_sentences(np.random.default_rng(3), 300)
    assert first != sample_sentences(np.random.default_rng(4), 300)
    assert set(first) <= set(all_sentences())
    # Varied: short commands and long ones, many distinct sentences.
    assert len(set(first)) > 250
    assert {len(s.split()) for s in first} >= {2, 9}
