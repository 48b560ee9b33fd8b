"""Promotion in the MLflow model registry: which version serves (alias `champion`), which one served before it
(alias `previous`), and which challengers the gate refused (aliases `rejected-YYYYMMDD-HHMMSS`).

Registry stages are deprecated, so only aliases are used. MLflow keeps no history of aliases, and a rollback needs
to know which champion preceded the one it restores, so every promotion, rejection and rollback is also written as
a finished run in the experiment `<model>-promotions`: that experiment is the promotion log.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import mlflow
import onnxruntime as ort
from mlflow import MlflowClient
from mlflow.entities import Run
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, RESOURCE_DOES_NOT_EXIST, ErrorCode

from components.config import Tracking
from components.errors import EarshotError
from components.export import FP32_FILE, INPUT, INT8_FILE, LOG_PROBS, OUTPUT
from components.serving import ARTIFACTS
from components.tracking import tracking_uri

CHAMPION = "champion"
PREVIOUS = "previous"
# Below MLflow's 8000-character limit on run tag values, which the promotion log's `reason` is stored in.
MAX_TEXT = 5000
_MISSING = ErrorCode.Name(RESOURCE_DOES_NOT_EXIST)
_EXISTS = ErrorCode.Name(RESOURCE_ALREADY_EXISTS)
_LOG_PAGE = 1000
MLMODEL = "MLmodel"  # what makes a folder an MLflow model


class PromotionError(EarshotError):
    """A promotion, rejection or rollback that must not happen, with a one-line reason."""


@dataclass(frozen=True)
class PromotionEvent:
    action: str  # "promote" | "reject" | "rollback"
    version: str  # the new champion for promote and rollback; the refused version for reject
    replaced: str  # the champion before the event; "" if there was none, and always "" for reject
    reason: str
    at: str  # ISO-8601 UTC, seconds


def registry_client(cfg: Tracking) -> MlflowClient:
    """Client on the project's store (tracking and registry share the URI)."""
    uri = tracking_uri(cfg)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def register_candidate(client: MlflowClient, name: str, run_id: str, source: str, tags: dict[str, str],
                       description: str) -> ModelVersion:
    """Create the registered model if missing, then a new version with tags and description (a model card)."""
    try:
        client.create_registered_model(name)
    except MlflowException as err:
        # Asking first and creating after would race with another flow registering the first version.
        if err.error_code != _EXISTS:
            raise
    return client.create_model_version(name, source=source, run_id=run_id, tags=tags, description=description)


def champion(client: MlflowClient, name: str) -> ModelVersion | None:
    """The version holding alias champion, or None (also None when the registered model does not exist yet)."""
    version = _aliases(client, name).get(CHAMPION)
    return None if version is None else client.get_model_version(name, version)


def gated_version(client: MlflowClient, name: str, training_key: str) -> ModelVersion | None:
    """A version already registered for this training key (tag `training_key`), passed or refused; None if none.

    The flow uses it so the same data + settings are never trained and gated twice. Should a key have been
    registered more than once, the newest version answers.
    """
    found = client.search_model_versions(f"name='{name}' and tags.training_key='{training_key}'")
    return max(found, key=lambda v: int(v.version), default=None)


def deployable_files(client: MlflowClient, name: str, version: str, dest: Path) -> Path:
    """Download the version's package (components.serving) into dest; return the folder of its ONNX files and card.

    PromotionError (one line naming model, version and the problem) unless its tag `gate` is "passed", it is an
    MLflow model, and both ONNX files exist, open in an ONNX Runtime CPU session and take `mels` and give `logits`
    (keywords) or `log_probs` (speech to text), as serving expects.
    """
    where = f"model {name!r} version {version}"
    gate = _version(client, name, version).tags.get("gate")
    if gate != "passed":
        raise PromotionError(f"{where}: gate tag is {gate!r}, not 'passed'")
    uri = client.get_model_version_download_uri(name, version)
    try:
        # Not `models:/name/version`: MLflow resolves that through the process-wide registry URI, not this client's.
        folder = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dest),
                                                          tracking_uri=client.tracking_uri))
    except (MlflowException, OSError) as err:
        raise PromotionError(f"{where}: cannot download {uri} ({_first_line(err)})") from None
    if not (folder / MLMODEL).is_file():
        raise PromotionError(f"{where}: {uri} is not a packaged model (no {MLMODEL})")
    folder = folder / ARTIFACTS
    for file in (FP32_FILE, INT8_FILE):
        path = folder / file
        if not path.is_file():
            raise PromotionError(f"{where}: {file} missing from {uri}")
        try:
            session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except Exception as err:  # ONNX Runtime's errors (InvalidProtobuf, Fail, ...) share no narrower base
            raise PromotionError(f"{where}: {file} does not load in ONNX Runtime ({_first_line(err)})") from None
        inputs, outputs = [i.name for i in session.get_inputs()], [o.name for o in session.get_outputs()]
        if inputs != [INPUT] or outputs not in ([OUTPUT], [LOG_PROBS]):
            raise PromotionError(f"{where}: {file} takes {inputs} and gives {outputs}, not [{INPUT!r}] and "
                                 f"[{OUTPUT!r}] or [{LOG_PROBS!r}]")
    return folder


def promote(client: MlflowClient, name: str, version: str, reason: str) -> PromotionEvent:
    """Make `version` champion, the old champion becoming `previous`; refuses anything deployable_files refuses.

    The old champion gets `previous` before `champion` moves (one overwriting call), so that the registry is
    never without a champion, even if the process dies between the two writes. Tags the version `promoted_at`
    and records the event, last: a promotion the log lacks is unfinished (see finish_decision).
    """
    version = str(version)
    current = _aliases(client, name).get(CHAMPION)
    if current == version:
        raise PromotionError(f"model {name!r} version {version}: already champion")
    with tempfile.TemporaryDirectory() as tmp:
        deployable_files(client, name, version, Path(tmp))
    at = _now()
    if current is not None:
        client.set_registered_model_alias(name, PREVIOUS, current)
    client.set_registered_model_alias(name, CHAMPION, version)
    return _crowned(client, name, version, current or "", reason, at)


def _crowned(client: MlflowClient, name: str, version: str, replaced: str, reason: str,
             at: datetime) -> PromotionEvent:
    """What follows `champion` moving to `version`: its `promoted_at` tag, then the promotion log's record."""
    client.set_model_version_tag(name, version, "promoted_at", _seconds(at))
    return _record(client, name, "promote", version, replaced, reason, at)


def reject(client: MlflowClient, name: str, version: str, failures: list[str]) -> PromotionEvent:
    """Mark a refused challenger with alias `rejected-YYYYMMDD-HHMMSS` (UTC) and tags gate=refused, gate_failures.

    The alias gets -2, -3... when taken, as two refusals can fall in one second; a version that already holds one
    (its rejection was killed midway) keeps it. Never touches champion or previous, and refuses to mark the
    champion, which must always point at a passed version. Records the event, last.
    """
    version = str(version)
    _version(client, name, version)
    aliases = _aliases(client, name)
    if aliases.get(CHAMPION) == version:
        raise PromotionError(f"model {name!r} version {version}: is the champion; promote or roll back first")
    at = _now()
    base = f"rejected-{at:%Y%m%d-%H%M%S}"
    held = [a for a, v in aliases.items() if v == version and a.startswith("rejected-")]
    alias, n = (held[0] if held else base), 2
    while aliases.get(alias, version) != version:
        alias, n = f"{base}-{n}", n + 1
    failed = "; ".join(failures)[:MAX_TEXT]
    client.set_registered_model_alias(name, alias, version)
    client.set_model_version_tag(name, version, "gate", "refused")
    client.set_model_version_tag(name, version, "gate_failures", failed)
    return _record(client, name, "reject", version, "", failed, at)


def rollback(client: MlflowClient, name: str, reason: str) -> PromotionEvent:
    """Move champion back to the version holding `previous`, checked with deployable_files first.

    `previous` then moves to the champion that preceded the restored one by the promotion log (the `replaced` of
    the latest promote or rollback that made it champion), or is deleted when there is none, so that repeated
    rollbacks walk back the chain of champions. champion is written before previous changes. Records the event.
    """
    aliases = _aliases(client, name)
    restored = aliases.get(PREVIOUS)
    if restored is None:
        raise PromotionError(f"model {name!r}: no previous champion to roll back to")
    with tempfile.TemporaryDirectory() as tmp:
        deployable_files(client, name, restored, Path(tmp))
    at = _now()
    client.set_registered_model_alias(name, CHAMPION, restored)
    crowned = [e for e in promotion_log(client, name) if e.action in ("promote", "rollback") and e.version == restored]
    before = crowned[-1].replaced if crowned else ""
    if before and before != restored:
        client.set_registered_model_alias(name, PREVIOUS, before)
    else:
        client.delete_registered_model_alias(name, PREVIOUS)
    return _record(client, name, "rollback", restored, aliases.get(CHAMPION, ""), reason, at)


def finish_decision(client: MlflowClient, name: str, version: ModelVersion) -> str:
    """Finish the promotion or rejection of a gated version that a killed process left midway; say what was done.

    A decision is finished once the promotion log records it, as that is written last. A passed version is
    promoted unless a newer version became champion since; a refused one gets its rejected-* alias. "" if the
    decision was complete (or the version carries no gate verdict).
    """
    number, gate = str(version.version), version.tags.get("gate")
    finished = {"passed": {"promote", "rollback"}, "refused": {"reject"}}.get(gate)
    if finished is None or any(e.version == number and e.action in finished for e in promotion_log(client, name)):
        return ""
    where = f"model {name!r} version {number}"
    if gate == "refused":
        reject(client, name, number, [version.tags.get("gate_failures") or "see the gate report in its model card"])
        return f"{where}: refused by the gate, its rejection was interrupted; finished it now"
    aliases = _aliases(client, name)
    current = aliases.get(CHAMPION)
    reason = "gate passed (promotion finished after an interrupted run)"
    if current == number:
        _crowned(client, name, number, aliases.get(PREVIOUS, ""), reason, _now())
        return f"{where}: champion, but its promotion was interrupted before the log; logged it now"
    if current is not None and int(current) > int(number):
        return f"{where}: passed the gate, never promoted; the newer version {current} is champion, so left as it is"
    promote(client, name, number, reason)
    return f"{where}: passed the gate, its promotion was interrupted; promoted it now (replacing {current or 'none'})"


def promotion_log(client: MlflowClient, name: str) -> list[PromotionEvent]:
    """Every promotion, rejection and rollback, oldest first."""
    experiment = client.get_experiment_by_name(_log_name(name))
    if experiment is None:
        return []
    runs: list[Run] = []
    token = None
    while True:
        page = client.search_runs([experiment.experiment_id], max_results=_LOG_PAGE, page_token=token)
        runs += page
        token = page.token
        if not token:
            break
    # `at` is stored to the microsecond, as events often share a second (a reject right after a promote).
    runs.sort(key=lambda run: datetime.fromisoformat(run.data.tags["at"]))
    return [PromotionEvent(run.data.tags["action"], run.data.tags["version"], run.data.tags["replaced"],
                           run.data.tags["reason"], _seconds(datetime.fromisoformat(run.data.tags["at"])))
            for run in runs]


def _record(client: MlflowClient, name: str, action: str, version: str, replaced: str, reason: str,
            at: datetime) -> PromotionEvent:
    """Append an event to the promotion log as a finished run; the client API leaves any active run alone."""
    event = PromotionEvent(action, version, replaced, reason[:MAX_TEXT], _seconds(at))
    experiment = client.get_experiment_by_name(_log_name(name))
    if experiment is not None:
        experiment_id = experiment.experiment_id
    else:
        try:
            experiment_id = client.create_experiment(_log_name(name))
        except MlflowException as err:
            # Another process wrote the first event of this model a moment ago.
            if err.error_code != _EXISTS:
                raise
            experiment_id = client.get_experiment_by_name(_log_name(name)).experiment_id
    tags = {"action": event.action, "version": event.version, "replaced": event.replaced,
            "reason": event.reason, "at": at.isoformat(timespec="microseconds")}
    millis = int(at.timestamp() * 1000)
    run = client.create_run(experiment_id, start_time=millis, tags=tags, run_name=f"{event.action} v{event.version}")
    client.set_terminated(run.info.run_id, "FINISHED", end_time=millis)
    return event


def _log_name(name: str) -> str:
    return f"{name}-promotions"


def _aliases(client: MlflowClient, name: str) -> dict[str, str]:
    """Alias -> version of the registered model; empty when the model does not exist yet."""
    try:
        return {alias: str(v) for alias, v in client.get_registered_model(name).aliases.items()}
    except MlflowException as err:
        if err.error_code != _MISSING:
            raise
        return {}


def _version(client: MlflowClient, name: str, version: str) -> ModelVersion:
    try:
        return client.get_model_version(name, version)
    except MlflowException as err:
        if err.error_code != _MISSING:
            raise
        raise PromotionError(f"model {name!r} version {version}: not in the registry") from None


def _now() -> datetime:
    return datetime.now(UTC)


def _seconds(at: datetime) -> str:
    return at.isoformat(timespec="seconds")


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__
