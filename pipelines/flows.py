"""Prefect flows over the same stage functions that `dvc repro` runs; no stage logic lives here.

Each stage is a task, so the Prefect UI shows which stage ran, how long it took, and where it failed.
"""

from __future__ import annotations

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from components.config import load_params
from pipelines.stages import STAGES

# Stages read and write files named in params.yaml; their inputs are not the whole story, so no input caching.
stage_tasks = {name: task(fn, name=name, cache_policy=NO_CACHE) for name, fn in STAGES.items()}


@flow(name="train_keyword_spotter", log_prints=True)
def train_keyword_spotter(params_path: str = "params.yaml") -> dict[str, object]:
    """synthesize → featurize → train → evaluate → export, as the DVC pipeline does."""
    params = load_params(params_path)
    stage_tasks["synthesize"](params)
    stage_tasks["featurize"](params)
    run_id = stage_tasks["train"](params)
    evaluation = stage_tasks["evaluate"](params)
    report = stage_tasks["export"](params)
    return {"run_id": run_id, "accuracy": evaluation.accuracy, "export": report.to_dict()}
