"""The regression gate: a challenger replaces the champion only if no acoustic domain gets worse.

An average can improve while one accent or room collapses; the gate checks every domain, the new one, the
INT8 artefact and pinned golden clips, and reports each check with its figure and threshold.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection
from dataclasses import asdict, dataclass, field

import torch

from components.config import AsrGate, Gate, KeywordGate
from components.evaluate import LabelledClips, evaluate_predictions


@dataclass(frozen=True)
class Candidate:
    """What the gate needs to know about one model: test figures, INT8 figures and golden-clip predictions."""

    accuracy: float
    per_domain: dict[str, float]
    int8_parity: float
    int8_latency_ms: float  # per clip, the front end included
    int8_size_bytes: int
    golden: dict[str, str] = field(default_factory=dict)  # clip id -> predicted label


@dataclass(frozen=True)
class TranscriberCandidate:
    """What the gate needs to know about one speech-to-text model: INT8 word error rates and INT8 figures."""

    wer: float
    per_domain: dict[str, float]
    int8_wer_gap_points: float  # INT8 WER minus FP32 WER, in points
    int8_rtf: float  # processing time / audio time, 1 thread
    int8_size_bytes: int
    golden: dict[str, str] = field(default_factory=dict)  # utterance id -> transcript


@dataclass(frozen=True)
class KeywordCandidate:
    """What the gate needs to know about a custom keyword model: its operating point on long streams (the threshold
    with the best recall within the false-accept budget), held-out accuracy and INT8 figures."""

    threshold: float
    false_accepts_per_hour: float
    recall: float
    accuracy: float
    int8_parity: float
    int8_size_bytes: int


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    observed: str
    threshold: str


@dataclass(frozen=True)
class GateReport:
    checks: tuple[Check, ...]
    challenger: Candidate | TranscriberCandidate | KeywordCandidate
    champion: Candidate | TranscriberCandidate | KeywordCandidate | None = None

    @property
    def passed(self) -> bool:
        return all(check.passed for check in self.checks)

    @property
    def failures(self) -> list[Check]:
        return [check for check in self.checks if not check.passed]

    def to_json(self) -> str:
        figures = {"challenger": asdict(self.challenger), "champion": asdict(self.champion) if self.champion else None}
        return json.dumps({"passed": self.passed, "checks": [asdict(c) for c in self.checks]} | figures,
                          indent=2) + "\n"

    def to_markdown(self) -> str:
        """The report as a table, for a Prefect artifact, an MLflow run and a model version's description."""
        verdict = "PASSED" if self.passed else "REFUSED"
        lines = [f"## Gate {verdict}", "", "| check | result | observed | threshold |", "|---|---|---|---|"]
        lines += [f"| {c.name} | {'pass' if c.passed else '**fail**'} | {c.observed} | {c.threshold} |"
                  for c in self.checks]
        return "\n".join(lines) + "\n"


def gate_challenger(
    challenger: Candidate,
    champion: Candidate | None,
    cfg: Gate,
    new_domain: str | None = None,
    golden_labels: dict[str, str] | None = None,
) -> GateReport:
    """Every check the challenger must pass; with no champion yet, only the absolute checks apply.

    Both candidates must be scored on the same current test sets (the champion re-scored after a drop, new domain
    included), or "overall" and "per domain" would compare different data.
    """
    checks: list[Check] = []
    if champion is not None:
        for domain, before in sorted(champion.per_domain.items()):
            after = challenger.per_domain.get(domain)
            drop = (before - after) * 100 if after is not None else float("inf")
            # A tolerance of float noise: a drop of exactly the allowed points must pass.
            checks.append(Check(f"no regression on {domain}", drop <= cfg.max_domain_regression_points + 1e-9,
                                f"{_pct(after)} (was {_pct(before)})",
                                f"drop ≤ {cfg.max_domain_regression_points:.1f} points"))
        checks.append(Check("overall accuracy not lower", challenger.accuracy >= champion.accuracy,
                            f"{_pct(challenger.accuracy)} (was {_pct(champion.accuracy)})",
                            f"≥ {_pct(champion.accuracy)}"))
    if new_domain is not None:
        reached = challenger.per_domain.get(new_domain)
        checks.append(Check(f"new domain {new_domain}", reached is not None and reached >= cfg.min_new_domain_accuracy,
                            _pct(reached), f"≥ {_pct(cfg.min_new_domain_accuracy)}"))
    checks += [
        Check("INT8 parity with PyTorch", challenger.int8_parity >= cfg.min_int8_parity,
              _pct(challenger.int8_parity), f"≥ {_pct(cfg.min_int8_parity)}"),
        Check("INT8 latency with front end (1 thread, p50)", challenger.int8_latency_ms <= cfg.max_int8_latency_ms,
              f"{challenger.int8_latency_ms:.3f} ms", f"≤ {cfg.max_int8_latency_ms:.3f} ms"),
        _size_check(challenger.int8_size_bytes, cfg.max_int8_size_kib),
    ]
    if golden_labels:
        checks.append(golden_check(golden_labels, challenger.golden, cfg.max_golden_changed, "golden clips keep "
                                                                                              "their labels"))
    return GateReport(tuple(checks), challenger, champion)


def golden_check(golden: dict[str, str], answers: dict[str, str], max_changed: int, name: str) -> Check:
    """At most `max_changed` of the golden cases (id -> the answer the champion got right) answered otherwise."""
    changed = sorted(case for case, answer in golden.items() if answers.get(case) != answer)
    return Check(name, len(changed) <= max_changed,
                 f"{len(changed)} of {len(golden)} changed" + (f": {', '.join(changed[:5])}" if changed else ""),
                 f"≤ {max_changed} changed")


def gate_transcriber(challenger: TranscriberCandidate, champion: TranscriberCandidate | None, cfg: AsrGate,
                     new_domain: str | None = None, golden: dict[str, str] | None = None) -> GateReport:
    """The speech-to-text gate: WER per domain may rise by at most the allowed points, overall must not rise.

    As for keywords, both candidates are scored as INT8 ONNX on the same current test sets.
    """
    checks: list[Check] = []
    if champion is not None:
        for domain, before in sorted(champion.per_domain.items()):
            after = challenger.per_domain.get(domain)
            rise = (after - before) * 100 if after is not None else float("inf")
            checks.append(Check(f"no WER regression on {domain}", rise <= cfg.max_domain_wer_increase_points + 1e-9,
                                f"{_pct(after)} (was {_pct(before)})",
                                f"rise ≤ {cfg.max_domain_wer_increase_points:.1f} points"))
        checks.append(Check("overall WER not higher", challenger.wer <= champion.wer + 1e-12,
                            f"{_pct(challenger.wer)} (was {_pct(champion.wer)})", f"≤ {_pct(champion.wer)}"))
    if new_domain is not None:
        reached = challenger.per_domain.get(new_domain)
        checks.append(Check(f"new domain {new_domain} WER", reached is not None and reached <= cfg.max_new_domain_wer,
                            _pct(reached), f"≤ {_pct(cfg.max_new_domain_wer)}"))
    checks += [
        Check("INT8 WER within FP32's", challenger.int8_wer_gap_points <= cfg.max_int8_wer_gap_points,
              f"{challenger.int8_wer_gap_points:+.2f} points", f"≤ {cfg.max_int8_wer_gap_points:.1f} points"),
        Check("INT8 real-time factor (1 thread)", challenger.int8_rtf <= cfg.max_int8_rtf,
              f"{challenger.int8_rtf:.3f}", f"≤ {cfg.max_int8_rtf:.3f}"),
        _size_check(challenger.int8_size_bytes, cfg.max_int8_size_kib),
    ]
    if golden:
        checks.append(golden_check(golden, challenger.golden, cfg.max_golden_changed,
                                   "golden utterances keep their transcripts"))
    return GateReport(tuple(checks), challenger, champion)


def gate_keywords(challenger: KeywordCandidate, champion: KeywordCandidate | None, cfg: KeywordGate) -> GateReport:
    """The wake-phrase gate: false accepts per hour within budget at the recall asked for (the figures such
    products are judged by), held-out accuracy, INT8 parity and size; against a champion, recall must not drop."""
    checks = [
        Check("false accepts per hour", challenger.false_accepts_per_hour <= cfg.max_false_accepts_per_hour,
              f"{challenger.false_accepts_per_hour:.2f} at threshold {challenger.threshold:.4f}",
              f"≤ {cfg.max_false_accepts_per_hour:.2f}"),
        Check("recall at that threshold", challenger.recall >= cfg.min_recall, _pct(challenger.recall),
              f"≥ {_pct(cfg.min_recall)}"),
        Check("held-out accuracy (other voices)", challenger.accuracy >= cfg.min_accuracy, _pct(challenger.accuracy),
              f"≥ {_pct(cfg.min_accuracy)}"),
        Check("INT8 parity with PyTorch", challenger.int8_parity >= cfg.min_int8_parity,
              _pct(challenger.int8_parity), f"≥ {_pct(cfg.min_int8_parity)}"),
        _size_check(challenger.int8_size_bytes, cfg.max_int8_size_kib),
    ]
    if champion is not None:
        checks.append(Check("recall not lower than the champion's", challenger.recall >= champion.recall,
                            f"{_pct(challenger.recall)} (was {_pct(champion.recall)})", f"≥ {_pct(champion.recall)}"))
    return GateReport(tuple(checks), challenger, champion)


def pick_golden(test: LabelledClips, champion_top1: torch.Tensor, domains: Collection[str], count: int,
                seed: int) -> dict[str, str]:
    """Clip -> true label for `count` test clips of `domains` that the champion labels right (see pin_golden)."""
    return pin_golden({test.sources[i]: test.label_names[test.labels[i]] for i in range(len(test.labels))
                       if test.domain_names[test.domains[i]] in domains and champion_top1[i] == test.labels[i]},
                      count, seed)


def pin_golden(cases: dict[str, str], count: int, seed: int) -> dict[str, str]:
    """`count` of the cases (id -> the answer the champion got right), ranked by a seeded hash of their id, so the
    same cases stay pinned while other data comes and goes."""
    ranked = sorted(cases, key=lambda case: hashlib.sha256(f"{seed}/{case}".encode()).hexdigest())
    return {case: cases[case] for case in ranked[:count]}


def scored_candidate(top1: torch.Tensor, test: LabelledClips, int8_parity: float, int8_latency_ms: float,
                     int8_size_bytes: int, golden: Collection[str] = ()) -> Candidate:
    """A Candidate from a model's top-1 predictions on the test split, with its INT8 figures."""
    evaluation = evaluate_predictions(top1, test)
    wanted = set(golden)
    return Candidate(evaluation.accuracy, evaluation.per_domain, int8_parity, int8_latency_ms, int8_size_bytes,
                     golden={source: test.label_names[top1[i]] for i, source in enumerate(test.sources)
                             if source in wanted})


def _size_check(size_bytes: int, max_kib: float) -> Check:
    return Check("INT8 size", size_bytes / 1024 <= max_kib, f"{size_bytes / 1024:.1f} KiB", f"≤ {max_kib:.1f} KiB")


def _pct(value: float | None) -> str:
    return "missing" if value is None else f"{value:.2%}"
