"""Prefect flows over the stage functions `dvc repro` runs: the continuous-training loop and its drop watcher.

Each stage is a task, so the Prefect UI shows which stage ran, how long it took and where it failed; no stage
logic lives here. `deployments` declares how the loop is started: by new data, nightly, or by hand.
"""

from __future__ import annotations

import functools
import hashlib
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import State, TaskRun
from prefect.deployments import run_deployment
from prefect.deployments.runner import RunnerDeployment

from components.challenge import ChampionScore
from components.config import Params, load_params
from components.errors import EarshotError
from components.export import ParityError
from components.lock import exclusive
from components.registry import finish_decision, gated_version, registry_client
from components.tracking import reaching_store, tracking_uri
from pipelines import stages

FLOW = "continuous_training"
RETRAIN_DEPLOYMENT = "manual"
# Waits before each retry of a task that met a transient fault: long enough for an MLflow server to restart.
RETRY_DELAYS_S = [20, 60, 180]


def _transient(_task: Any, _run: TaskRun, state: State) -> bool:
    # Bad input, a refused model or a bug fails the same way again; a store that is down or a disk hiccup may not.
    error = state.data
    return error.transient if isinstance(error, EarshotError) else isinstance(error, OSError)


# For the tasks that touch the MLflow store.
RETRIED = {"retries": len(RETRY_DELAYS_S), "retry_delay_seconds": RETRY_DELAYS_S, "retry_condition_fn": _transient}


def _stage_task(fn: Any, retried: bool = True, name: str | None = None) -> Any:
    """A stage as a task, retried on transient faults unless it never touches the store (`retried` False).

    Stages read and write files named in params.yaml, so their arguments are not the whole story: no caching.
    """
    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        # MLflow's many-line error for a server that is down becomes StoreUnavailable, one line that _transient retries.
        with reaching_store():
            return fn(*args, **kwargs)

    return task(run, name=name or fn.__name__, cache_policy=NO_CACHE, **(RETRIED if retried else {}))


def earlier_decision(params: Params, training_key: str) -> tuple[str, str, str] | None:
    """(version, gate verdict, what was finished) of the version already gated for this data and settings, or None.

    A retraining killed between registering its version and promoting or rejecting it gets its decision finished.
    """
    client, name = registry_client(params.mlflow), params.mlflow.registered_model
    found = gated_version(client, name, training_key)
    if found is None:
        return None
    return str(found.version), found.tags.get("gate", ""), finish_decision(client, name, found)


# Each runs the stage of the track params.yaml selects.
ingest = _stage_task(stages.ingest)
featurize = _stage_task(stages.STAGES["featurize"], retried=False)
train = _stage_task(stages.STAGES["train"])
evaluate = _stage_task(stages.STAGES["evaluate"])
export = _stage_task(stages.STAGES["export"])
gate = _stage_task(stages.gate)
decide = _stage_task(stages.decide)
champion_version = _stage_task(stages.champion_version)
training_key = _stage_task(stages.STAGES["training_key"], retried=False)
decided = _stage_task(earlier_decision, name="earlier_decision")


def _champion_score_key(_context: Any, arguments: dict[str, Any]) -> str:
    # Version numbers repeat across registries, so the store (a relative sqlite URI means one per folder) and the
    # model name are part of the key; Prefect's cache is shared by every project of the user.
    tracking = arguments["params"].mlflow
    identity = [str(Path.cwd()), tracking_uri(tracking), tracking.registered_model, arguments["version"],
                arguments["training_key"]]
    return "champion-score-" + hashlib.sha256(json.dumps(identity).encode()).hexdigest()[:24]


@task(name="score_champion", cache_key_fn=_champion_score_key, cache_expiration=timedelta(days=7), **RETRIED)
def score_champion(params: Params, version: str, training_key: str) -> ChampionScore:
    """Cached by (champion version, data and settings): a rerun after a crash does not score the champion again."""
    with reaching_store():
        return stages.score_champion(params, version)


@flow(name=FLOW, log_prints=True)
def continuous_training(params_path: str = "params.yaml", drop: str | None = None,
                        domain: str | None = None) -> dict[str, Any]:
    """ingest → validate → featurize → train → evaluate → export → gate → promote, one retraining at a time.

    Without a drop it retrains only if data or settings changed since the last gated model (the nightly run).
    """
    params = load_params(params_path)
    if (drop is None) != (domain is None):
        raise EarshotError("a drop needs its domain (and a domain its drop)")
    with exclusive(params.continuous.lock, "retraining"):
        if drop is not None:
            ingest(params, Path(drop), domain)
        featurize(params)
        key = training_key(params)
        earlier = decided(params, key)
        if earlier is not None:
            version, verdict, finished = earlier
            if finished:
                print(finished)
            print(f"data and settings unchanged since version {version} (gate {verdict}); nothing to train")
            return {"outcome": "skipped", "version": version, "training_key": key, "finished": finished}
        current = champion_version(params)
        champion = score_champion(params, current, key) if current else None
        drift = champion.drift(domain) if champion else {}
        if champion:
            print(f"drift: champion v{champion.version} {champion.metric} " + ", ".join(f"{k} {v:.2%}"
                                                                                   for k, v in drift.items()))
        run_id = train(params)
        evaluate(params)
        try:
            export(params)
        except ParityError as err:
            print(f"export: {err}; the gate will refuse this model")
        report = gate(params, domain, champion)
        create_markdown_artifact(_flow_report(champion, domain, report.to_markdown()), key="gate-report",
                                 description=f"Gate report of run {run_id}")
        decision = decide(params, report, domain)
        verb = "promoted to champion" if decision.promoted else f"refused ({decision.alias})"
        print(f"version {decision.version} {verb}")
        return {"outcome": "promoted" if decision.promoted else "refused", "version": decision.version,
                "run_id": run_id, "training_key": key, "drift": drift, "gate": report.to_json(),
                "champion_before": current}


def _flow_report(champion: ChampionScore | None, domain: str | None, gate_markdown: str) -> str:
    if champion is None:
        return gate_markdown
    drift = champion.drift(domain)
    rows = [f"| {'new domain ' + domain if k == 'new_domain' else 'known domains (mean)'} | {v:.2%} |"
            for k, v in drift.items()]
    return "\n".join(["## Drift: the champion on today's test sets", "", f"| slice | {champion.metric} |", "|---|---|",
                      *rows, "", gate_markdown])


def drop_key(drop: Path) -> str:
    """A drop's identity for scheduling: every file's path, size and content, so a renamed copy is the same drop."""
    digest = hashlib.sha256()
    for path in sorted(p for p in Path(drop).rglob("*") if p.is_file()):
        digest.update(f"{path.relative_to(drop)}\0{path.stat().st_size}\0".encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()[:16]


@flow(name="watch_incoming", log_prints=True)
def watch_incoming(params_path: str = "params.yaml") -> list[str]:
    """Start one retraining per drop under incoming/<track>/<domain>/<drop>/; a drop already seen is never started
    again.

    The drop's content hash is the flow run's idempotency key, so the Prefect API itself refuses a second run.
    """
    params = load_params(params_path)
    since = datetime.now(UTC)
    started = []
    for drop in sorted(p for p in params.incoming.glob("*/*") if p.is_dir()):
        run = run_deployment(f"{FLOW}/{RETRAIN_DEPLOYMENT}", timeout=0, as_subflow=False,
                             idempotency_key=f"drop-{drop_key(drop)}",
                             parameters={"params_path": params_path, "drop": str(drop), "domain": drop.parent.name})
        new = run.created is not None and run.created >= since
        if new:
            started.append(str(drop))
        get_run_logger().info("%s: %s flow run %s (%s)", drop, "started" if new else "already has", run.name,
                              run.state_name)
    return started


def deployments(params_path: str = "params.yaml") -> list[RunnerDeployment]:
    """The three ways the loop starts: a drop watcher, a nightly retrain, and a manual one (which drops also use)."""
    params = load_params(params_path)
    arguments = {"params_path": params_path}
    return [
        continuous_training.to_deployment(RETRAIN_DEPLOYMENT, parameters=arguments, concurrency_limit=1,
                                          description="Retrain now; with drop + domain, on that drop."),
        continuous_training.to_deployment("nightly", cron=params.continuous.nightly_cron, parameters=arguments,
                                          concurrency_limit=1,
                                          description="Retrain if data or settings changed since the last gate."),
        watch_incoming.to_deployment("new-data", interval=params.continuous.watch_every_s, parameters=arguments,
                                     concurrency_limit=1,
                                     description=f"Start one retraining per new drop in {params.incoming}."),
    ]
