"""The model tracks earshot trains, each behind one protocol, and the registry that names them.

The loop, DVC's stage entry points and the CLI ask `track_of(params)` for a stage and never test the track's name:
a new track is a package here whose `track` module has a `TRACK`, and one line in TRACKS.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from components.challenge import ChampionScore, Decision, champion_version, decide

if TYPE_CHECKING:
    from components.config import Params
    from components.gate import GateReport
    from components.ingest import IngestReport

# Imported on first use: the keyword track does not need the other tracks' modules (and their start-up cost).
TRACKS = {
    "kws": "components.tracks.kws.track",
    "asr": "components.tracks.asr.track",
    "esc": "components.tracks.esc.track",
}

Stage = Callable[["Params"], object]


@dataclass(frozen=True)
class Track:
    """Everything the loop needs of a track: its stages (each reads and writes the paths dvc.yaml declares), how it
    re-scores its champion and gates a challenger, what its registered versions and summaries say."""

    name: str
    title: str  # what `earshot summary` calls it
    synthesize: Stage
    featurize: Stage
    training_key: Callable[[Params], str]  # the data version and every setting that shapes the trained model
    train: Callable[[Params], str]  # returns the MLflow run id
    evaluate: Stage
    export: Stage
    # The champion re-scored on today's test set before training: the drift signal and the gate's baseline.
    score_champion: Callable[[Params, str], ChampionScore]
    gate: Callable[[Params, str | None, ChampionScore | None], GateReport]
    version_figures: Callable[[Params], tuple[dict[str, str], str]]  # a version's tags and its card's summary line
    summary_rows: Callable[[dict, dict], list[tuple[str, str]]]  # (metrics.json, export.json) -> table rows
    ingest: Callable[[Params, Path, str], IngestReport]  # validate and ingest a drop of new recordings into a domain

    def gate_stage(self, params: Params) -> GateReport:
        """DVC's gate stage: the exported challenger against whichever model is champion now (absolute checks if
        there is none)."""
        version = champion_version(params)
        scored = self.score_champion(params, version) if version else None
        return self.gate(params, None, scored)

    def decide(self, params: Params, report: GateReport, new_domain: str | None) -> Decision:
        """Register the challenger with the track's figures; a pass becomes champion."""
        return decide(params, report, new_domain, self.version_figures(params))


def track_of(params: Params) -> Track:
    """The track params.yaml selects."""
    return importlib.import_module(TRACKS[params.track]).TRACK
