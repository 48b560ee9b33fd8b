"""The stages `dvc repro` (through the CLI) and the Prefect flows run: each the stage of the track params.yaml names.

The stages themselves live in components.tracks; this is the one table both callers read, so there is one copy of
every stage.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from components.challenge import ChampionScore, Decision, champion_version
from components.config import Params
from components.gate import GateReport
from components.ingest import IngestReport
from components.tracks import track_of

STAGE_NAMES = ("synthesize", "featurize", "training_key", "train", "evaluate", "export", "gate_stage")


def stage(name: str) -> Callable[[Params], object]:
    """The stage `name` of the track params.yaml selects; every track writes the outputs dvc.yaml declares."""
    def run(params: Params) -> object:
        return getattr(track_of(params), name)(params)

    run.__name__ = name.removesuffix("_stage")  # what Prefect names the task after
    return run


STAGES = {name.removesuffix("_stage"): stage(name) for name in STAGE_NAMES}


def ingest(params: Params, drop: Path, domain: str) -> IngestReport:
    """Validate and ingest a drop of new recordings into `domain`, as the track ingests drops."""
    return track_of(params).ingest(params, Path(drop), domain)


def score_champion(params: Params, version: str) -> ChampionScore:
    """Champion `version` re-scored on today's test set: the drift signal and the gate's baseline."""
    return track_of(params).score_champion(params, version)


def gate(params: Params, new_domain: str | None, champion_score: ChampionScore | None) -> GateReport:
    return track_of(params).gate(params, new_domain, champion_score)


def decide(params: Params, report: GateReport, new_domain: str | None) -> Decision:
    return track_of(params).decide(params, report, new_domain)


__all__ = ["STAGES", "champion_version", "decide", "gate", "ingest", "score_champion"]
