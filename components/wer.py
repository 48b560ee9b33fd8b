"""Word and character error rates of transcripts, overall and per acoustic domain, with the worst utterances.

jiwer aligns each reference with its hypothesis once; every total (overall, per domain) is a sum of those per-
utterance counts, so the figures of the slices add up to the overall ones exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import jiwer

from components.errors import EarshotError

WORST_UTTERANCES = 10


class WerError(EarshotError):
    """Transcripts that cannot be scored, with a message fit for one line."""


@dataclass(frozen=True)
class Counts:
    """Edit operations of one alignment and the reference length they are counted against."""

    substitutions: int
    deletions: int
    insertions: int
    reference: int

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    def __add__(self, other: Counts) -> Counts:
        return Counts(self.substitutions + other.substitutions, self.deletions + other.deletions,
                      self.insertions + other.insertions, self.reference + other.reference)


@dataclass(frozen=True)
class DomainWer:
    wer: float
    cer: float
    utterances: int
    substitutions: int
    deletions: int
    insertions: int


@dataclass(frozen=True)
class WorstUtterance:
    id: str
    domain: str
    reference: str
    hypothesis: str
    wer: float


@dataclass(frozen=True)
class WerReport:
    """WER and CER (fractions) of a test set, its word edit counts, per-domain figures and the worst utterances."""

    wer: float
    cer: float
    substitutions: int
    deletions: int
    insertions: int
    reference_words: int
    utterances: int
    per_domain: dict[str, DomainWer]
    worst: list[WorstUtterance]

    def metrics(self) -> dict[str, object]:
        """The figures for metrics.json, `dvc metrics show` and MLflow: scalars, plus one mapping per domain."""
        return {"wer": self.wer, "cer": self.cer, "substitutions": self.substitutions, "deletions": self.deletions,
                "insertions": self.insertions, "reference_words": self.reference_words,
                "utterances": self.utterances, "per_domain": {d: asdict(v) for d, v in self.per_domain.items()}}

    def to_markdown(self) -> str:
        """The worst utterances as a Markdown table, for a report a person reads to see what goes wrong."""
        rows = ["| id | domain | WER | reference | hypothesis |", "|---|---|---:|---|---|"]
        rows += [f"| {w.id} | {w.domain} | {w.wer:.2f} | {w.reference} | {w.hypothesis} |" for w in self.worst]
        return "\n".join(rows) + "\n"


def _counts(output: jiwer.WordOutput | jiwer.CharacterOutput) -> list[Counts]:
    """Per-sentence edit counts read off jiwer's alignment chunks."""
    out = []
    for reference, chunks in zip(output.references, output.alignments, strict=True):
        edits = {"substitute": 0, "delete": 0, "insert": 0}
        for chunk in chunks:
            if chunk.type in ("substitute", "delete"):
                edits[chunk.type] += chunk.ref_end_idx - chunk.ref_start_idx
            elif chunk.type == "insert":
                edits[chunk.type] += chunk.hyp_end_idx - chunk.hyp_start_idx
        out.append(Counts(edits["substitute"], edits["delete"], edits["insert"], len(reference)))
    return out


def _rate(counts: Counts) -> float:
    return counts.errors / counts.reference


def score_transcripts(
    ids: Sequence[str],
    references: Sequence[str],
    hypotheses: Sequence[str],
    domains: Sequence[str],
    worst: int = WORST_UTTERANCES,
) -> WerReport:
    """Score hypotheses against references (one of each per utterance id) overall and per domain.

    `worst` utterances with the most word errors are kept for the report (ties by id, so the list is stable).
    Raises WerError for an empty reference, whose error rate would be undefined.
    """
    if not len(ids) == len(references) == len(hypotheses) == len(domains):
        raise ValueError(f"{len(ids)} ids, {len(references)} references, {len(hypotheses)} hypotheses and "
                         f"{len(domains)} domains: one of each per utterance expected")
    if not ids:
        raise WerError("no utterances to score")
    for utterance, reference in zip(ids, references, strict=True):
        if not reference.strip():
            raise WerError(f"utterance {utterance}: empty reference transcript")
    words = _counts(jiwer.process_words(list(references), list(hypotheses)))
    chars = _counts(jiwer.process_characters(list(references), list(hypotheses)))

    zero = Counts(0, 0, 0, 0)
    per_domain = {}
    for domain in sorted(set(domains)):
        picked = [i for i, d in enumerate(domains) if d == domain]
        w = sum((words[i] for i in picked), zero)
        per_domain[domain] = DomainWer(_rate(w), _rate(sum((chars[i] for i in picked), zero)), len(picked),
                                       w.substitutions, w.deletions, w.insertions)
    ranked = sorted(range(len(ids)), key=lambda i: (-words[i].errors, ids[i]))
    total = sum(words, zero)
    return WerReport(
        wer=_rate(total), cer=_rate(sum(chars, zero)), substitutions=total.substitutions, deletions=total.deletions,
        insertions=total.insertions, reference_words=total.reference, utterances=len(ids), per_domain=per_domain,
        worst=[WorstUtterance(ids[i], domains[i], references[i], hypotheses[i], _rate(words[i]))
               for i in ranked[:worst] if words[i].errors],
    )
