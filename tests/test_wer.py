from __future__ import annotations

import json

import pytest

from components.wer import WerError, score_transcripts


def test_one_substitution_deletion_and_insertion() -> None:
    # on -> off (S), "the" dropped (D), "please" added (I): 3 errors over 7 reference words.
    report = score_transcripts(["u1"], ["turn on the lights in the kitchen"],
                               ["turn off lights in the kitchen please"], ["studio"])
    assert (report.substitutions, report.deletions, report.insertions) == (1, 1, 1)
    assert report.reference_words == 7
    assert report.wer == pytest.approx(3 / 7)


def test_equal_cost_alignments_still_count_three_errors() -> None:
    # S+D+I or three substitutions: both are 3 edits over 4 reference words.
    report = score_transcripts(["u1"], ["turn the lights off"], ["turn lights of on"], ["studio"])
    assert report.substitutions + report.deletions + report.insertions == 3
    assert report.wer == pytest.approx(3 / 4)


def test_empty_hypothesis_deletes_every_word_and_character() -> None:
    report = score_transcripts(["u1"], ["open the door"], [""], ["studio"])
    assert (report.substitutions, report.deletions, report.insertions) == (0, 3, 0)
    assert report.wer == 1.0
    assert report.cer == 1.0
    assert report.worst[0].hypothesis == ""


def test_domains_are_scored_apart_and_sum_to_the_total() -> None:
    refs = ["turn the lights off", "play some music", "open the door", "stop"]
    hyps = ["turn the lights off", "play sum music", "open door", "stop right now"]
    report = score_transcripts(["a", "b", "c", "d"], refs, hyps, ["studio", "studio", "car", "car"])
    studio, car = report.per_domain["studio"], report.per_domain["car"]
    # studio: some -> sum over 4 + 3 words; car: "the" deleted, "right now" inserted over 3 + 1 words.
    assert (studio.substitutions, studio.deletions, studio.insertions, studio.utterances) == (1, 0, 0, 2)
    assert studio.wer == pytest.approx(1 / 7)
    assert (car.substitutions, car.deletions, car.insertions) == (0, 1, 2)
    assert car.wer == pytest.approx(3 / 4)
    assert report.wer == pytest.approx(4 / 11)
    # characters, spaces included: "some" -> "sum" is o -> u and e deleted, over 19 + 15 characters.
    assert studio.cer == pytest.approx(2 / 34)
    assert [w.id for w in report.worst] == ["d", "b", "c"]  # most errors first, ties by id; "a" has none


def test_metrics_are_json_and_markdown_lists_the_worst() -> None:
    report = score_transcripts(["a", "b"], ["stop", "go left"], ["stop", "go right"], ["x", "y"], worst=1)
    metrics = json.loads(json.dumps(report.metrics()))
    assert metrics["wer"] == pytest.approx(1 / 3)
    assert metrics["per_domain"]["y"]["wer"] == pytest.approx(1 / 2)
    table = report.to_markdown().splitlines()
    assert len(table) == 3 and "| b | y | 0.50 | go left | go right |" in table


def test_empty_reference_is_refused_naming_the_utterance() -> None:
    with pytest.raises(WerError, match="utterance u2: empty reference"):
        score_transcripts(["u1", "u2"], ["stop", " "], ["stop", "go"], ["x", "x"])
