import json

import pytest

from components.config import AsrGate, Gate
from components.gate import Candidate, TranscriberCandidate, gate_challenger, gate_transcriber

CFG = Gate(max_domain_regression_points=1.0, min_new_domain_accuracy=0.9, min_int8_parity=0.99,
           max_int8_latency_ms=2.0, max_int8_size_kib=256.0)


def candidate(per_domain: dict[str, float], **extra) -> Candidate:
    figures = {"accuracy": sum(per_domain.values()) / len(per_domain), "per_domain": per_domain,
               "int8_parity": 0.995, "int8_latency_ms": 0.3, "int8_size_bytes": 52_000} | extra
    return Candidate(**figures)


CHAMPION = candidate({"studio_us": 0.97, "office_uk": 0.96})
# The champion re-scored on today's test sets, the new domain included, as the gate requires.
CHAMPION_AFTER_DROP = candidate({"studio_us": 0.97, "office_uk": 0.96, "car": 0.60})


def failed(report) -> set[str]:
    return {check.name for check in report.failures}


def test_a_better_challenger_passes_every_check():
    report = gate_challenger(candidate({"studio_us": 0.975, "office_uk": 0.965, "car": 0.93}), CHAMPION_AFTER_DROP,
                             CFG, new_domain="car")
    assert report.passed, report.to_markdown()
    assert len(report.checks) == 3 + 1 + 1 + 3  # per domain, overall, new domain, three INT8 checks


def test_one_domain_collapsing_is_refused_even_when_the_average_improves():
    challenger = candidate({"studio_us": 0.999, "office_uk": 0.94})  # average 0.9695 > 0.965, office -2 points
    assert challenger.accuracy > CHAMPION.accuracy
    report = gate_challenger(challenger, CHAMPION, CFG)
    assert not report.passed and failed(report) == {"no regression on office_uk"}
    [check] = report.failures
    assert check.observed == "94.00% (was 96.00%)" and "1.0 points" in check.threshold


def test_a_drop_of_exactly_the_allowed_points_passes():
    report = gate_challenger(candidate({"studio_us": 0.98, "office_uk": 0.95}), CHAMPION, CFG)
    assert "no regression on office_uk" not in failed(report)


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"per_domain": {"studio_us": 0.98}}, "no regression on office_uk"),
        ({"int8_parity": 0.98}, "INT8 parity with PyTorch"),
        ({"int8_latency_ms": 2.5}, "INT8 latency with front end (1 thread, p50)"),
        ({"int8_size_bytes": 300 * 1024}, "INT8 size"),
    ],
)
def test_each_check_can_refuse(changes, expected):
    figures = {"accuracy": 0.99, "per_domain": {"studio_us": 0.98, "office_uk": 0.97}, "int8_parity": 0.995,
               "int8_latency_ms": 0.3, "int8_size_bytes": 52_000} | changes
    assert expected in failed(gate_challenger(Candidate(**figures), CHAMPION, CFG))


def test_new_domain_below_its_floor_and_golden_clips_that_change_are_refused():
    challenger = candidate({"studio_us": 0.97, "office_uk": 0.96, "car": 0.85},
                           golden={"a": "yes", "b": "no", "c": "up"})
    report = gate_challenger(challenger, CHAMPION_AFTER_DROP, CFG, new_domain="car",
                             golden_labels={"a": "yes", "b": "stop", "c": "up"})
    assert failed(report) == {"new domain car", "golden clips keep their labels"}
    assert next(c for c in report.failures if c.name.startswith("golden")).observed == "1 of 3 changed: b"


def test_golden_clips_may_change_up_to_the_allowed_count():
    golden = {"a": "yes", "b": "stop", "c": "up"}
    challenger = candidate({"studio_us": 0.97, "office_uk": 0.96}, golden={"a": "yes", "b": "no", "c": "go"})
    verdicts = [gate_challenger(challenger, CHAMPION, CFG.model_copy(update={"max_golden_changed": allowed}),
                                golden_labels=golden) for allowed in (1, 2)]
    assert "golden clips keep their labels" in failed(verdicts[0])  # two changed, one allowed
    assert verdicts[1].passed, verdicts[1].to_markdown()


def test_first_model_has_no_champion_to_compare_with_and_reports_render():
    report = gate_challenger(candidate({"studio_us": 0.96}), None, CFG)
    assert report.passed and all("regression" not in c.name for c in report.checks)
    payload = json.loads(report.to_json())
    assert payload["passed"] is True and len(payload["checks"]) == len(report.checks)
    markdown = report.to_markdown()
    assert markdown.startswith("## Gate PASSED") and markdown.count("\n| ") == len(report.checks) + 1


ASR_CFG = AsrGate(max_domain_wer_increase_points=1.0, max_new_domain_wer=0.15, max_int8_wer_gap_points=1.0,
                  max_int8_rtf=0.3, max_int8_size_kib=2048.0)


def transcriber(per_domain: dict[str, float], **extra) -> TranscriberCandidate:
    figures = {"wer": sum(per_domain.values()) / len(per_domain), "per_domain": per_domain,
               "int8_wer_gap_points": 0.2, "int8_rtf": 0.05, "int8_size_bytes": 500_000} | extra
    return TranscriberCandidate(**figures)


def test_transcriber_gate_refuses_a_domain_whose_wer_rises_even_when_overall_wer_falls():
    champion = transcriber({"studio_us": 0.05, "office_uk": 0.10})
    challenger = transcriber({"studio_us": 0.01, "office_uk": 0.12})  # overall 6.5% < 7.5%, office +2 points
    report = gate_transcriber(challenger, champion, ASR_CFG)
    assert failed(report) == {"no WER regression on office_uk"}
    [check] = report.failures
    assert check.observed == "12.00% (was 10.00%)"


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"per_domain": {"studio_us": 0.04, "car": 0.20}}, "new domain car WER"),
        ({"int8_wer_gap_points": 1.5}, "INT8 WER within FP32's"),
        ({"int8_rtf": 0.5}, "INT8 real-time factor (1 thread)"),
        ({"int8_size_bytes": 3 * 1024 * 1024}, "INT8 size"),
        ({"wer": 0.30}, "overall WER not higher"),
    ],
)
def test_each_transcriber_check_can_refuse(changes, expected):
    champion = transcriber({"studio_us": 0.05})
    figures = {"wer": 0.05, "per_domain": {"studio_us": 0.05, "car": 0.10}, "int8_wer_gap_points": 0.2,
               "int8_rtf": 0.05, "int8_size_bytes": 500_000} | changes
    report = gate_transcriber(TranscriberCandidate(**figures), champion, ASR_CFG, new_domain="car")
    assert failed(report) == {expected}
    assert json.loads(report.to_json())["challenger"]["int8_rtf"] == figures["int8_rtf"]
