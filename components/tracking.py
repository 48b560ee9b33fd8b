"""MLflow bookkeeping shared by the stages: where the store is, one run per training that later stages join, and
what a store that does not answer looks like.

The run id travels in a small JSON file beside the model, so evaluate and export log into the run that trained it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import mlflow
import requests

from components.config import Params, Tracking
from components.errors import EarshotError
from components.files import write_text_atomically


def tracking_uri(cfg: Tracking) -> str:
    """params.yaml names the store; MLFLOW_TRACKING_URI overrides it, as MLflow users expect."""
    return os.environ.get("MLFLOW_TRACKING_URI") or cfg.uri


class StoreUnavailable(EarshotError):
    """The MLflow server did not answer (no connection, or no reply in time): unlike bad input, worth a retry later."""

    transient = True


# What requests raises once urllib3 has spent MLflow's retries (MLFLOW_HTTP_REQUEST_MAX_RETRIES) on a server that
# refuses connections, does not reply within MLFLOW_HTTP_REQUEST_TIMEOUT, or keeps answering 503.
_UNREACHABLE = (requests.exceptions.ConnectionError, requests.exceptions.Timeout, requests.exceptions.RetryError)


def store_unavailable(err: BaseException) -> StoreUnavailable | None:
    """StoreUnavailable naming the server and why, if `err` is a failure to reach an MLflow server; else None.

    MLflow wraps the requests error in an MlflowException of many lines; the chain of causes keeps the pieces.
    """
    chain: list[BaseException] = []
    while err is not None and err not in chain:
        chain.append(err)
        err = err.__cause__ or err.__context__
    request = next((e for e in chain if isinstance(e, _UNREACHABLE)), None)
    if request is None or isinstance(chain[0], EarshotError):
        return None
    # The URL's path is the endpoint called, not the store.
    url = urlsplit(request.request.url) if request.request is not None else None
    server = f"{url.scheme}://{url.netloc}" if url else "(address unknown)"
    root = chain[-1]
    why = root.strerror if isinstance(root, OSError) and root.strerror else str(root)
    return StoreUnavailable(f"MLflow store {server} unreachable: {why}")


@contextmanager
def reaching_store() -> Iterator[None]:
    """Raise a failure to reach the MLflow server as StoreUnavailable, one line; anything else passes unchanged."""
    try:
        yield
    except Exception as err:
        down = store_unavailable(err)
        if down is None:
            raise
        raise down from err


def use_store(cfg: Tracking) -> None:
    user_choice = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(tracking_uri(cfg))
    # set_tracking_uri also exports MLFLOW_TRACKING_URI; left there, it would pass for the user's override and
    # send the next params file's runs to this store.
    if user_choice is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    mlflow.set_experiment(cfg.experiment)


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested settings as dotted keys, the shape MLflow params take."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            flat |= flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


# The keyword track's sections of params.yaml; the other tracks keep theirs inside `asr` and `esc`.
KWS_SETTINGS = {"dataset", "features", "model", "train", "export", "gate"}


@contextmanager
def training_run(params: Params, run_file: Path, tags: dict[str, str], foreign: set[str], resume: bool = False
                 ) -> Iterator[mlflow.ActiveRun]:
    """Start a run for one training, log every setting but the `foreign` sections (other tracks' settings, which do
    not shape this model and would only bury the ones that do), and record its id in `run_file` for later stages.

    With `resume`, an interrupted training of the same `training_key` continues the run `run_file` names, so its
    curves stay in one place.
    """
    use_store(params.mlflow)
    recorded = json.loads(run_file.read_text()) if resume and run_file.is_file() else {}
    same = recorded.get("training_key") == tags.get("training_key")
    with mlflow.start_run(run_id=recorded["run_id"] if same else None, tags=tags) as run:
        settings = flatten(params.model_dump(mode="json", exclude={"synthesis", "paths", "tracking", "demo", "keywords",
                                                                   *foreign}))
        mlflow.log_params({k: str(v)[:6000] for k, v in settings.items()})
        write_text_atomically(run_file, json.dumps({"run_id": run.info.run_id, "experiment_id": run.info.experiment_id,
                                                    "training_key": tags.get("training_key")}) + "\n")
        yield run


@contextmanager
def resume_run(params: Params, run_file: Path) -> Iterator[mlflow.ActiveRun]:
    """Re-open the run that trained the model, so its evaluation and export sit beside its training curves."""
    if not run_file.is_file():
        raise EarshotError(f"{run_file}: no training run recorded; run the train stage first")
    use_store(params.mlflow)
    with mlflow.start_run(run_id=json.loads(run_file.read_text())["run_id"]) as run:
        yield run
