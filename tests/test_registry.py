"""Promotion, rejection and rollback against a real MLflow sqlite store and real ONNX Runtime sessions.

Every version is a real export folder logged in a real run; one store serves the module and each test registers
its own model name, so the tests stay independent without paying for a fresh database each.
"""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import mlflow
import numpy as np
import onnx
import pytest
from mlflow import MlflowClient
from onnx import TensorProto, helper, numpy_helper

from components import registry
from components.config import Tracking
from components.export import FP32_FILE, INT8_FILE
from components.registry import (
    CHAMPION,
    MLMODEL,
    PREVIOUS,
    PromotionError,
    champion,
    deployable_files,
    finish_decision,
    gated_version,
    promote,
    promotion_log,
    register_candidate,
    registry_client,
    reject,
    rollback,
)
from components.serving import ARTIFACTS


def tiny_onnx(input_name: str = "mels") -> bytes:
    """A 4 -> 3 MatMul: small, but a graph ONNX Runtime really has to parse and plan."""
    weight = numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(4, 3), "weight")
    graph = helper.make_graph(
        [helper.make_node("MatMul", [input_name, "weight"], ["logits"])],
        "tiny",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])],
        initializer=[weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model.SerializeToString()


GOOD = tiny_onnx()
BOTH = {FP32_FILE: GOOD, INT8_FILE: GOOD}


@dataclass(frozen=True)
class Store:
    client: MlflowClient
    uri: str
    experiment_id: str
    root: Path


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    root = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{root}/mlflow.db"
    before, exported = mlflow.get_tracking_uri(), os.environ.get("MLFLOW_TRACKING_URI")
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        # Promotion log runs get the store's default artifact root, which is relative to the working directory.
        patch.chdir(root)
        client = registry_client(Tracking(uri=uri))
        experiment_id = client.create_experiment("exports", artifact_location=(root / "artifacts").as_uri())
        yield Store(client, uri, experiment_id, root)
    mlflow.set_tracking_uri(before)
    # set_tracking_uri exports MLFLOW_TRACKING_URI, which earshot takes for the user's choice of store: left set, it
    # sent every later test of this process to the mlflow.db of the folder pytest started in.
    if exported is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)


@pytest.fixture
def name(request: pytest.FixtureRequest) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "-", request.node.name)


@pytest.fixture
def client(store: Store) -> MlflowClient:
    return store.client


@pytest.fixture
def candidate(store: Store, tmp_path: Path) -> Callable[..., str]:
    """Log an export folder in a real run and register it as a new version of `name`; returns the version."""
    counter = itertools.count()

    def make(name: str, gate: str = "passed", files: dict[str, bytes] = BOTH, key: str | None = None,
             packaged: bool = True) -> str:
        folder = tmp_path / f"export-{next(counter)}"
        (folder / ARTIFACTS).mkdir(parents=True)
        if packaged:  # the registry checks that an MLmodel file is there, not what it says
            (folder / MLMODEL).write_text("flavors: {}\n")
        for file, data in files.items():
            (folder / ARTIFACTS / file).write_bytes(data)
        mlflow.set_tracking_uri(store.uri)
        with mlflow.start_run(experiment_id=store.experiment_id) as run:
            mlflow.log_artifacts(str(folder), artifact_path="export")
        tags = {"gate": gate, "training_key": key or f"key-{folder.name}"}
        version = register_candidate(store.client, name, run.info.run_id, f"runs:/{run.info.run_id}/export", tags,
                                     f"## Gate {gate}\n")
        return str(version.version)

    return make


def aliases(client: MlflowClient, name: str) -> dict[str, str]:
    return {alias: str(v) for alias, v in client.get_registered_model(name).aliases.items()}


def one_passed_champion(client: MlflowClient, name: str) -> str:
    """The registry's invariant: exactly one version holds champion, and it passed the gate."""
    versions = [client.get_model_version(name, v.version) for v in client.search_model_versions(f"name='{name}'")]
    holders = [v for v in versions if CHAMPION in v.aliases]
    assert len(holders) == 1, f"{len(holders)} versions hold {CHAMPION}"
    assert holders[0].tags["gate"] == "passed"
    return str(holders[0].version)


def test_first_promotion_sets_champion_and_no_previous(client: MlflowClient, name: str,
                                                       candidate: Callable[..., str]) -> None:
    v1 = candidate(name)
    assert champion(client, name) is None

    event = promote(client, name, v1, "first model")

    assert one_passed_champion(client, name) == v1
    assert PREVIOUS not in aliases(client, name)
    assert datetime.fromisoformat(client.get_model_version(name, v1).tags["promoted_at"]) == \
        datetime.fromisoformat(event.at)
    assert promotion_log(client, name) == [event]
    assert (event.action, event.version, event.replaced, event.reason) == ("promote", v1, "", "first model")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", event.at)


def test_second_promotion_keeps_the_old_champion_as_previous(client: MlflowClient, name: str,
                                                             candidate: Callable[..., str]) -> None:
    v1, v2 = candidate(name), candidate(name)
    promote(client, name, v1, "first")
    promote(client, name, v2, "better on car_scottish")

    assert one_passed_champion(client, name) == v2
    assert str(champion(client, name).version) == v2
    assert aliases(client, name)[PREVIOUS] == v1
    log = promotion_log(client, name)
    assert [(e.action, e.version, e.replaced) for e in log] == [("promote", v1, ""), ("promote", v2, v1)]


def test_promote_leaves_the_callers_active_run_alone(store: Store, name: str, candidate: Callable[..., str]) -> None:
    v1 = candidate(name)
    with mlflow.start_run(experiment_id=store.experiment_id) as run:
        promote(store.client, name, v1, "from inside a flow run")
        assert mlflow.active_run().info.run_id == run.info.run_id
    logged = store.client.get_run(run.info.run_id).data.tags
    assert "action" not in logged
    assert one_passed_champion(store.client, name) == v1


def test_nothing_reads_the_process_wide_mlflow_uri(store: Store, name: str, candidate: Callable[..., str],
                                                   tmp_path: Path) -> None:
    v1, v2 = candidate(name), candidate(name)
    elsewhere = tmp_path / "elsewhere.db"
    mlflow.set_tracking_uri(f"sqlite:///{elsewhere}")
    try:
        promote(store.client, name, v1, "first")
        promote(store.client, name, v2, "second")
        rollback(store.client, name, "second was bad")
        assert (deployable_files(store.client, name, v1, tmp_path / "v1") / INT8_FILE).is_file()
    finally:
        mlflow.set_tracking_uri(store.uri)
    assert not elsewhere.exists()
    assert one_passed_champion(store.client, name) == v1


def test_promote_refuses_a_refused_version(client: MlflowClient, name: str, candidate: Callable[..., str]) -> None:
    v1, v2 = candidate(name), candidate(name, gate="refused")
    promote(client, name, v1, "first")

    with pytest.raises(PromotionError, match=f"version {v2}: gate tag is 'refused'"):
        promote(client, name, v2, "try anyway")

    assert aliases(client, name) == {CHAMPION: v1}
    assert one_passed_champion(client, name) == v1
    assert len(promotion_log(client, name)) == 1


@pytest.mark.parametrize("files, problem", [
    pytest.param({FP32_FILE: GOOD}, f"{INT8_FILE} missing from runs:/", id="no-int8"),
    pytest.param({FP32_FILE: GOOD, INT8_FILE: b"not an onnx model"}, f"{INT8_FILE} does not load in ONNX Runtime",
                 id="garbage-int8"),
    pytest.param({FP32_FILE: b"\x08\x07garbage", INT8_FILE: GOOD}, f"{FP32_FILE} does not load in ONNX Runtime",
                 id="garbage-fp32"),
    pytest.param({FP32_FILE: GOOD, INT8_FILE: tiny_onnx("audio")}, f"{INT8_FILE} takes ['audio'] and gives ['logits']",
                 id="wrong-input"),
])
def test_promote_refuses_an_export_that_cannot_serve(client: MlflowClient, name: str,
                                                     candidate: Callable[..., str], files: dict[str, bytes],
                                                     problem: str) -> None:
    v1, v2 = candidate(name), candidate(name, files=files)
    promote(client, name, v1, "first")

    with pytest.raises(PromotionError, match=f"^model '{name}' version {v2}: {re.escape(problem)}") as caught:
        promote(client, name, v2, "looks fine")

    assert "\n" not in str(caught.value)
    assert aliases(client, name) == {CHAMPION: v1}
    assert one_passed_champion(client, name) == v1


def test_promote_refuses_a_version_that_is_not_a_packaged_model(client: MlflowClient, name: str,
                                                               candidate: Callable[..., str]) -> None:
    version = candidate(name, packaged=False)

    with pytest.raises(PromotionError, match=f"^model '{name}' version {version}: runs:/.* is not a packaged model "
                                             f"\\(no {MLMODEL}\\)$"):
        promote(client, name, version, "no MLmodel")

    assert aliases(client, name) == {}


def test_promote_refuses_the_current_champion_and_unknown_versions(client: MlflowClient, name: str,
                                                                   candidate: Callable[..., str]) -> None:
    v1, v2 = candidate(name), candidate(name)
    promote(client, name, v1, "first")
    promote(client, name, v2, "second")

    with pytest.raises(PromotionError, match="already champion"):
        promote(client, name, v2, "again")
    with pytest.raises(PromotionError, match="version 99: not in the registry"):
        promote(client, name, "99", "typo")

    assert aliases(client, name) == {CHAMPION: v2, PREVIOUS: v1}


def test_deployable_files_downloads_both_models(client: MlflowClient, name: str, candidate: Callable[..., str],
                                                tmp_path: Path) -> None:
    v1 = candidate(name)
    folder = deployable_files(client, name, v1, tmp_path / "deploy")
    assert folder.is_relative_to(tmp_path / "deploy")
    assert (folder / FP32_FILE).read_bytes() == GOOD
    assert (folder / INT8_FILE).read_bytes() == GOOD


def test_reject_marks_the_challenger_and_leaves_the_champion(client: MlflowClient, name: str,
                                                             candidate: Callable[..., str],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    v1, *refused = [candidate(name) for _ in range(5)]
    promote(client, name, v1, "first")
    # A clock that moves a microsecond per reading: all rejections fall in one second (and one millisecond, so
    # only the microseconds kept in the log can order them), deterministically.
    # An hour ahead of the real clock the promotion above read, so the log's order is the order of the calls.
    start = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=1)
    stamp = f"rejected-{start:%Y%m%d-%H%M%S}"
    ticks = itertools.count()
    monkeypatch.setattr(registry, "_now", lambda: start + timedelta(microseconds=next(ticks)))

    events = [reject(client, name, refused[0], ["domain car_scottish: -2.1 points", "int8 latency 3.1 ms"]),
              reject(client, name, refused[1], ["x" * 6000])]
    events += [reject(client, name, v, [f"failure {v}"]) for v in refused[2:]]

    assert aliases(client, name) == {CHAMPION: v1, stamp: refused[0],
                                     **{f"{stamp}-{n}": v for n, v in enumerate(refused[1:], 2)}}
    assert one_passed_champion(client, name) == v1
    tags = client.get_model_version(name, refused[0]).tags
    assert tags["gate"] == "refused"
    assert tags["gate_failures"] == "domain car_scottish: -2.1 points; int8 latency 3.1 ms"
    assert len(client.get_model_version(name, refused[1]).tags["gate_failures"]) == registry.MAX_TEXT
    assert (events[0].action, events[0].version, events[0].replaced, events[0].at) == \
        ("reject", refused[0], "", start.isoformat())
    log = promotion_log(client, name)
    assert [(e.action, e.version) for e in log] == [("promote", v1)] + [("reject", v) for v in refused]
    assert log[1:] == events
    with pytest.raises(PromotionError, match="gate tag is 'refused'"):
        promote(client, name, refused[0], "override")


def test_reject_refuses_to_mark_the_champion(client: MlflowClient, name: str, candidate: Callable[..., str]) -> None:
    v1 = candidate(name)
    promote(client, name, v1, "first")

    with pytest.raises(PromotionError, match="is the champion"):
        reject(client, name, v1, ["late finding"])

    assert client.get_model_version(name, v1).tags["gate"] == "passed"
    assert one_passed_champion(client, name) == v1


def test_rollback_walks_back_the_chain_of_champions(client: MlflowClient, name: str,
                                                    candidate: Callable[..., str]) -> None:
    v1, v2, v3 = candidate(name), candidate(name), candidate(name)
    for version in (v1, v2, v3):
        promote(client, name, version, f"promote {version}")
    assert aliases(client, name) == {CHAMPION: v3, PREVIOUS: v2}

    event = rollback(client, name, "v3 misfires in the field")
    assert (event.action, event.version, event.replaced) == ("rollback", v2, v3)
    assert aliases(client, name) == {CHAMPION: v2, PREVIOUS: v1}
    assert one_passed_champion(client, name) == v2

    rollback(client, name, "v2 too")
    assert aliases(client, name) == {CHAMPION: v1}
    assert one_passed_champion(client, name) == v1

    with pytest.raises(PromotionError, match=f"^model '{name}': no previous champion to roll back to$"):
        rollback(client, name, "and again")
    assert aliases(client, name) == {CHAMPION: v1}
    actions = [(e.action, e.version, e.replaced) for e in promotion_log(client, name)]
    assert actions == [("promote", v1, ""), ("promote", v2, v1), ("promote", v3, v2),
                       ("rollback", v2, v3), ("rollback", v1, v2)]


def test_rollback_refuses_a_previous_that_cannot_serve(client: MlflowClient, name: str,
                                                       candidate: Callable[..., str]) -> None:
    v1, v2 = candidate(name), candidate(name)
    promote(client, name, v1, "first")
    promote(client, name, v2, "second")
    # The stored export of v1 is damaged after it served.
    run_id = client.get_model_version(name, v1).run_id
    artifacts = Path(client.get_run(run_id).info.artifact_uri.removeprefix("file://"))
    (artifacts / "export" / ARTIFACTS / INT8_FILE).unlink()

    with pytest.raises(PromotionError, match=f"version {v1}: {re.escape(INT8_FILE)} missing"):
        rollback(client, name, "v2 is bad")

    assert aliases(client, name) == {CHAMPION: v2, PREVIOUS: v1}


def test_gated_version_finds_a_version_by_training_key(client: MlflowClient, name: str,
                                                       candidate: Callable[..., str]) -> None:
    assert gated_version(client, name, "abc") is None  # no registered model yet
    v1 = candidate(name, key="abc")
    v2 = candidate(name, gate="refused", key="def")

    assert str(gated_version(client, name, "abc").version) == v1
    assert str(gated_version(client, name, "def").version) == v2
    assert gated_version(client, name, "unknown") is None
    assert gated_version(client, f"{name}-other", "abc") is None


def test_unknown_model_has_no_champion_and_an_empty_log(client: MlflowClient, name: str) -> None:
    assert champion(client, name) is None
    assert promotion_log(client, name) == []
    with pytest.raises(PromotionError, match="no previous champion"):
        rollback(client, name, "nothing to roll back")


def test_finish_decision_rejects_a_refused_version_a_killed_run_left_unmarked(client: MlflowClient, name: str,
                                                                              candidate: Callable[..., str]) -> None:
    v1 = candidate(name)
    promote(client, name, v1, "first")
    # What a decide killed between registering a refused challenger and rejecting it leaves behind.
    v2 = candidate(name, gate="refused")

    assert f"version {v2}: refused by the gate" in finish_decision(client, name, client.get_model_version(name, v2))

    [alias] = [a for a, v in aliases(client, name).items() if v == v2]
    assert alias.startswith("rejected-") and one_passed_champion(client, name) == v1
    assert [(e.action, e.version) for e in promotion_log(client, name)] == [("promote", v1), ("reject", v2)]
    assert finish_decision(client, name, client.get_model_version(name, v2)) == ""


def test_finish_decision_keeps_the_alias_of_a_rejection_killed_before_its_log(client: MlflowClient, name: str,
                                                                              candidate: Callable[..., str]) -> None:
    v1 = candidate(name, gate="refused")
    client.set_registered_model_alias(name, "rejected-20250101-000000", v1)  # the rejection's first write only

    finish_decision(client, name, client.get_model_version(name, v1))

    assert aliases(client, name) == {"rejected-20250101-000000": v1}
    assert [(e.action, e.version) for e in promotion_log(client, name)] == [("reject", v1)]


def test_finish_decision_leaves_a_passed_version_a_newer_champion_overtook(client: MlflowClient, name: str,
                                                                           candidate: Callable[..., str]) -> None:
    v1, v2 = candidate(name), candidate(name)
    promote(client, name, v2, "promoted by hand while v1's run was down")

    note = finish_decision(client, name, client.get_model_version(name, v1))

    assert f"the newer version {v2} is champion" in note
    assert aliases(client, name) == {CHAMPION: v2} and len(promotion_log(client, name)) == 1


def test_finish_decision_ignores_a_version_without_a_gate_verdict(client: MlflowClient, name: str,
                                                                  candidate: Callable[..., str]) -> None:
    v1 = candidate(name, gate="")

    assert finish_decision(client, name, client.get_model_version(name, v1)) == ""
    assert champion(client, name) is None and promotion_log(client, name) == []
