"""The continuous-training story `make demo` tells, in a workspace of its own (git + DVC repo, MLflow store, remote).

A model trained on the baseline domains meets a drop of a new domain it scores badly on, is retrained, gated and
promoted; then a drop with shuffled labels (for speech, transcripts shifted by one) passes validation, and the gate
refuses the model trained on it. The keyword track tells it by default; each track in STORIES tells the same three
steps with its own data.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import yaml
from rich.table import Table

from components.config import ConfigError, Params
from components.drops import write_drop
from components.registry import champion, registry_client
from components.tracks import track_of
from components.tracks.asr.drops import write_transcribed_drop
from components.tracks.esc.drops import write_sound_drop
from pipelines.flows import continuous_training

if TYPE_CHECKING:
    from uuid import UUID

DVC_REMOTE = "dvc-remote"


@dataclass(frozen=True)
class StoryStep:
    step: str
    domain: str | None  # the drop's domain
    metric: str  # what drift and challenger hold per domain: accuracy, or wer
    outcome: str  # promoted / refused / skipped
    version: str
    drift: dict[str, float]  # the champion before the step, on the new domain vs the known ones
    challenger: dict[str, float]  # INT8 test figure per domain, "overall" first
    by_source: dict[str, float]  # the challenger's test accuracy per voice source (synthesizer, "recorded")
    failures: list[str]
    champion_after: str
    seconds: float
    stages: dict[str, float]  # wall seconds per stage: the flow's tasks as Prefect recorded them, and the demo's own


def require_recipes(section: str, domains: list[str], recipes: Mapping[str, object], where: str) -> None:
    """A ConfigError naming every domain of the story in `section` that has no synthesis recipe in `where`."""
    unknown = [d for d in domains if d not in recipes]
    if unknown:
        raise ConfigError(f"{section}: domain(s) {', '.join(unknown)} have no recipe in {where}")


def workspace_params(params: Params) -> Params:
    """The keyword demo's params: only the baseline domains in the corpus; every other recipe arrives as a drop."""
    settings = params.model_dump(mode="json") | {"track": "kws"}
    recipes = settings["synthesis"]["domains"] | settings["synthesis"]["drop_domains"]
    baseline = params.demo.baseline_domains
    require_recipes("demo", [*baseline, params.demo.good_drop, params.demo.bad_drop], recipes,
                    "synthesis.domains/drop_domains")
    settings["synthesis"]["domains"] = {d: recipes[d] for d in baseline}
    settings["synthesis"]["drop_domains"] = {d: r for d, r in recipes.items() if d not in baseline}
    settings["dataset"]["domains"] = {d: str(params.synthesis.out_dir / "kws" / d) for d in baseline}
    return Params.model_validate(settings)


def sound_workspace_params(params: Params) -> Params:
    """The sound-event demo's params: esc.corpus at demo.esc's size, cross-validated over demo.esc.cv_folds, trained
    for demo.esc.epochs and gated by demo.esc.gate."""
    story = params.demo.esc
    settings = params.model_dump(mode="json") | {"track": "esc"}
    require_recipes("demo.esc", [story.good_drop, story.bad_drop], params.esc.corpus.drop_domains,
                    "esc.corpus.drop_domains")
    settings["esc"]["corpus"]["clips_per_class"] = story.clips_per_class
    settings["esc"]["cv_folds"] = story.cv_folds
    settings["esc"]["train"]["epochs"] = story.epochs
    settings["esc"]["gate"] = story.gate.model_dump()
    return Params.model_validate(settings)


def speech_workspace_params(params: Params) -> Params:
    """The speech-to-text demo's params: demo.asr's baseline domains at its corpus size, model, epochs (never stopped
    early) and gate."""
    story = params.demo.asr
    settings = params.model_dump(mode="json") | {"track": "asr"}
    recipes = params.synthesis.domains | params.synthesis.drop_domains
    require_recipes("demo.asr", [*story.baseline_domains, story.good_drop, story.bad_drop], recipes,
                    "synthesis.domains/drop_domains")
    asr = settings["asr"]
    asr["corpus"] |= {"domains": story.baseline_domains, "speakers_per_domain": story.speakers_per_domain,
                      "utterances_per_speaker": story.utterances_per_speaker}
    asr["domains"] = {d: str(params.synthesis.out_dir / "asr" / d) for d in story.baseline_domains}
    asr["model"] = story.model.model_dump()
    asr["train"] |= {"epochs": story.epochs, "patience": story.epochs}
    asr["gate"] = story.gate.model_dump()
    return Params.model_validate(settings)


def write_keyword_drop(demo: Params, domain: str, folder: Path, number: int, mislabeled: bool) -> None:
    write_drop(demo, domain, folder, speakers=demo.demo.drop_speakers, drop_seed=number, shuffled_labels=mislabeled)


def write_sound_story_drop(demo: Params, domain: str, folder: Path, number: int, mislabeled: bool) -> None:
    write_sound_drop(demo, domain, folder, demo.demo.esc.drop_clips_per_class, demo.seed + 1000 * number, mislabeled)


def write_speech_story_drop(demo: Params, domain: str, folder: Path, number: int, mislabeled: bool) -> None:
    write_transcribed_drop(demo, domain, folder, demo.demo.asr.drop_speakers, demo.seed + 1000 * number, mislabeled)


@dataclass(frozen=True)
class Story:
    """What differs between the tracks' stories: their params, their baseline domains, and how a drop is made."""

    params: Callable[[Params], Params]
    baseline: Callable[[Params], list[str]]
    drops: Callable[[Params], tuple[str, str]]  # the good drop's domain, then the mislabeled one's
    write_drop: Callable[[Params, str, Path, int, bool], None]  # (params, domain, folder, number, mislabeled)
    metric: str = "accuracy"  # the gate report's figure per domain: accuracy, or wer
    poisoned: str = "labels shuffled"  # what is wrong with the second drop


STORIES = {
    "kws": Story(workspace_params, lambda demo: demo.demo.baseline_domains,
                 lambda demo: (demo.demo.good_drop, demo.demo.bad_drop), write_keyword_drop),
    "esc": Story(sound_workspace_params, lambda demo: list(demo.esc.corpus.domains),
                 lambda demo: (demo.demo.esc.good_drop, demo.demo.esc.bad_drop), write_sound_story_drop),
    "asr": Story(speech_workspace_params, lambda demo: list(demo.asr.domains),
                 lambda demo: (demo.demo.asr.good_drop, demo.demo.asr.bad_drop), write_speech_story_drop, "wer",
                 "transcripts shifted"),
}


def _run(args: list[str], cwd: Path) -> None:
    subprocess.run(args, cwd=cwd, check=True, capture_output=True, text=True)


def prepare_workspace(workspace: Path, demo: Params) -> Path:
    """A fresh git + DVC repo at `workspace` with a local DVC remote and the demo's params.yaml; returns its path."""
    workspace = Path(workspace).resolve()
    here = Path.cwd().resolve()
    if workspace == here or workspace in here.parents:
        raise ConfigError(f"demo.workspace {workspace}: the demo wipes it, so it must be a folder of its own")
    shutil.rmtree(workspace, ignore_errors=True)
    workspace.mkdir(parents=True)
    dvc = [sys.executable, "-m", "dvc"]
    _run(["git", "init", "-q"], workspace)
    # A repo of the demo's own: its data commits must not need (or use) the user's git identity.
    _run(["git", "config", "user.name", "earshot demo"], workspace)
    _run(["git", "config", "user.email", "demo@earshot.invalid"], workspace)
    _run([*dvc, "init", "-q"], workspace)
    _run([*dvc, "remote", "add", "-d", "local", DVC_REMOTE], workspace)
    (workspace / ".gitignore").write_text(f"/{DVC_REMOTE}\n/mlflow.db\n/mlartifacts\n/mlruns\n/.earshot\n"
                                          "/data/incoming\n/data/quarantine\n/data/*/quarantine\n/data/features\n"
                                          "/models\n/reports\n")
    (workspace / "params.yaml").write_text(yaml.safe_dump(demo.model_dump(mode="json"), sort_keys=False))
    _run(["git", "add", "."], workspace)
    _run(["git", "commit", "-q", "-m", "demo workspace"], workspace)
    return workspace


def run_demo(params: Params, track: str = "kws") -> list[StoryStep]:
    """Baseline → good drop (retrain, gate, promote) → mislabeled drop (retrain, gate refuses); one row each."""
    if track not in STORIES:
        raise ConfigError(f"demo: no story for track {track!r} (stories: {', '.join(STORIES)})")
    story = STORIES[track]
    demo = story.params(params)
    workspace = prepare_workspace(params.demo.workspace, demo)
    steps = []
    with contextlib.chdir(workspace):
        start = time.perf_counter()
        track_of(demo).synthesize(demo)
        _run([sys.executable, "-m", "dvc", "add", "-q", str(demo.synthesis.out_dir)], workspace)
        _run(["git", "add", "-A"], workspace)
        _run(["git", "commit", "-q", "-m", "data: baseline corpus"], workspace)
        before = {"synthesize corpus": time.perf_counter() - start}
        steps.append(_step(demo, story.metric, f"train on {', '.join(story.baseline(demo))}", None, None, before))
        for number, (domain, mislabeled) in enumerate(zip(story.drops(demo), (False, True), strict=True), 1):
            drop = demo.incoming / domain / f"drop-{number:03d}"
            start = time.perf_counter()
            story.write_drop(demo, domain, drop, number, mislabeled)
            label = f"drop of {domain}" + (f" ({story.poisoned})" if mislabeled else "")
            steps.append(_step(demo, story.metric, label, drop, domain, {"record drop": time.perf_counter() - start}))
        _run([sys.executable, "-m", "dvc", "push", "-q"], workspace)
    return steps


def _step(params: Params, metric: str, label: str, drop: Path | None, domain: str | None,
          before: dict[str, float]) -> StoryStep:
    """One retraining; `before` holds the demo's own work that led up to it (recording the data), timed by stage."""
    start = time.perf_counter()
    state = continuous_training("params.yaml", str(drop) if drop else None, domain, return_state=True)
    outcome = state.result()
    flow_seconds = time.perf_counter() - start
    tasks = task_seconds(state.state_details.flow_run_id)
    # What no task covers: starting the flow run (and a local Prefect server the first time), bookkeeping, the lock.
    stages = before | tasks | {"orchestration": flow_seconds - sum(tasks.values())}
    gate = json.loads(outcome["gate"])
    challenger = {"overall": gate["challenger"][metric]} | gate["challenger"]["per_domain"]
    current = champion(registry_client(params.mlflow), params.mlflow.registered_model)
    failures = [check["name"] for check in gate["checks"] if not check["passed"]]
    by_source = json.loads((params.out.reports / "metrics.json").read_text()).get("per_engine", {})
    return StoryStep(label, domain, metric, outcome["outcome"], outcome["version"], outcome["drift"], challenger,
                     by_source, failures, current.version if current else "none",
                     flow_seconds + sum(before.values()), stages)


def task_seconds(flow_run_id: UUID) -> dict[str, float]:
    """Run time of each task of a flow run as the Prefect API recorded it, keyed by task name (repeats add up)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.client.schemas.sorting import TaskRunSort

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])),
                                     sort=TaskRunSort.EXPECTED_START_TIME_ASC)
    seconds: dict[str, float] = {}
    for run in runs:
        stage = run.name.rsplit("-", 1)[0]  # Prefect names a task run <task name>-<key>
        seconds[stage] = seconds.get(stage, 0.0) + run.total_run_time.total_seconds()
    return seconds


def stage_table(steps: list[StoryStep]) -> Table:
    """Where the story's time goes: one row per stage, one column per step, in the order stages first ran."""
    table = Table(title="where the time goes (seconds)", title_justify="left")
    table.add_column("stage")
    for s in [*steps, None]:
        table.add_column(s.step if s else "total", justify="right")
    stages = list(dict.fromkeys(stage for s in steps for stage in s.stages))
    for stage in stages:
        row = [s.stages.get(stage, 0.0) for s in steps]
        table.add_row(stage, *(f"{v:.1f}" if v else "-" for v in row), f"{sum(row):.1f}")
    table.add_row("all", *(f"{s.seconds:.1f}" for s in steps), f"{sum(s.seconds for s in steps):.1f}", style="bold")
    return table


def story_table(steps: list[StoryStep]) -> Table:
    """One row per step; every per-domain figure and check is in the gate report of the step's MLflow run."""
    table = Table(title="earshot · continuous training story", title_justify="left")
    metric = steps[0].metric if steps else "accuracy"
    for column in ("step", f"old champion {metric}: new / known domains", f"challenger {metric}: overall / new domain",
                   "challenger by voice source", "gate", "champion", "time"):
        table.add_column(column)
    for s in steps:
        drift = f"{s.drift['new_domain']:.1%} / {s.drift['known_domains']:.1%}" if "new_domain" in s.drift else "-"
        figures = f"{s.challenger['overall']:.1%}" + (f" / {s.challenger[s.domain]:.1%}" if s.domain else "")
        verdict = f"v{s.version} {s.outcome}" + (f" ({len(s.failures)} checks failed: {s.failures[0]}, …)"
                                                  if s.failures else "")
        sources = " · ".join(f"{source} {accuracy:.1%}" for source, accuracy in s.by_source.items()) or "-"
        table.add_row(s.step, drift, figures, sources, verdict, f"v{s.champion_after}", f"{s.seconds:.0f} s")
    return table
