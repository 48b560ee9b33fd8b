"""The continuous-training loop under a real Prefect API and a real MLflow store (sqlite), end to end.

Domains are tone worlds (each word a pitch of its own, other pitch ranges per domain) so a tiny model learns them
in seconds and every gate verdict below is decided by the data, not by luck.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml

from components.acoustics import resample
from components.config import Params, load_params
from components.dataset import which_set
from components.export import INT8_FILE
from components.ingest import DropError
from components.lock import Busy, exclusive
from components.registry import (
    CHAMPION,
    PREVIOUS,
    champion,
    deployable_files,
    promotion_log,
    registry_client,
    rollback,
)
from components.tracks.kws import track as kws
from pipelines.flows import _transient, continuous_training, deployments, score_champion, watch_incoming
from tests.conftest import (
    free_port,
    healthy,
    invoke,
    read_api,
    start_model_server,
    stop_server,
    tiny_settings,
    wait_until,
    write_tree,
)

BIN = Path(sys.executable).parent


def labels(settings: dict) -> list[str]:
    return [*settings["dataset"]["words"], *settings["synthesis"]["unknown_words"]]


def pitches(settings: dict, lowest: float) -> dict[str, float]:
    return {word: lowest + 100.0 * i for i, word in enumerate(labels(settings))}


def speakers(prefix: str, count: int, split: str | None = None) -> list[str]:
    """Speaker ids with a prefix per domain, in `split` by the rule write_tree's lists follow; without a split, half
    training and a quarter each validation and testing, so a small domain still has every split."""
    if split is None:
        shares = {"training": count // 2, "validation": count // 4}
        shares["testing"] = count - sum(shares.values())
        return [name for part, n in shares.items() for name in speakers(prefix, n, part)]
    def rule(name: str, percent: float) -> str:
        return which_set(f"x/{name}_nohash_0.wav", percent, percent)

    # Training speakers must train under the params' 25/25 rule too (ingest may re-derive splits with it).
    names = (f"{prefix}{i:07x}" for i in range(10_000))
    return [n for n in names if rule(n, 20.0) == split and (split != "training" or rule(n, 25.0) == split)][:count]


class World:
    """A project folder with params, a base tone domain `lab_a`, and helpers to drop data and run the loop."""

    def __init__(self, root: Path, **gate: float) -> None:
        self.root = root
        settings = tiny_settings(root)
        self.settings = settings
        write_tree(root / "base/lab_a", pitches(settings, 300.0), speakers("a", 12))
        settings["dataset"]["domains"] = {"lab_a": str(root / "base/lab_a")}
        settings["train"] |= {"epochs": 40, "patience": 40}
        # Tones 100 Hz apart above 1.6 kHz share a band of 40 mels; 80 tell them apart.
        settings["features"]["n_mels"] = 80
        settings["model"] |= {"channels": 64}
        settings["export"]["min_parity"] = 0.9
        # Margins no seed crosses (make test-flaky). A domain has 36 test clips, one is 2.8 points: a good drop
        # scores about 80 % or more on its domain and may flip a couple of old clips by chance, a shuffled drop
        # scores < 20 %, and the yes/no swap below flips six clips of lab_a (16.7 points). A model this small may
        # relabel one of its six golden clips by chance (seed 3 turned a silence clip into _unknown_), so one of six
        # may change: the loop still pins and reports them, and tests/test_gate.py checks the check itself.
        settings["gate"] |= {"min_new_domain_accuracy": 0.6, "min_int8_parity": 0.9, "golden_clips": 6,
                             "max_golden_changed": 1, "max_domain_regression_points": 9.0} | gate
        settings["continuous"] = {"incoming": str(root / "incoming"), "lock": str(root / "retrain.lock")}
        self.params_path = root / "params.yaml"
        self.params_path.write_text(yaml.safe_dump(settings, sort_keys=False))
        self.params: Params = load_params(self.params_path)
        self.client = registry_client(self.params.mlflow)
        self.name = self.params.mlflow.registered_model

    def drop(self, domain: str, lowest: float, count: int = 12, detune: int = 0, shuffled: bool = False,
             split: str | None = None) -> Path:
        folder = self.params.incoming / domain / f"drop-{lowest:.0f}-{detune}"
        write_tree(folder, pitches(self.settings, lowest), speakers(domain[-1], count, split), detune=detune)
        if shuffled:
            shuffle_labels(folder)
        return folder

    def retrain(self, drop: Path | None = None, domain: str | None = None) -> dict:
        return continuous_training(str(self.params_path), str(drop) if drop else None, domain)

    def aliases(self) -> dict[str, str]:
        return {alias: str(version) for alias, version in self.client.get_registered_model(self.name).aliases.items()}

    def assert_one_valid_champion(self) -> None:
        current = champion(self.client, self.name)
        assert current is not None and current.tags["gate"] == "passed"
        with tempfile.TemporaryDirectory() as scratch:
            files = deployable_files(self.client, self.name, str(current.version), Path(scratch))
            assert (files / INT8_FILE).is_file()


def shuffle_labels(tree: Path) -> None:
    """Give each speaker's clips each other's labels (a seeded derangement per speaker), as a careless vendor might."""
    rng = np.random.default_rng(7)
    by_speaker: dict[str, list[Path]] = {}
    for path in sorted(tree.glob("*/*.wav")):
        if path.parent.name != "_background_noise_":
            by_speaker.setdefault(path.name, []).append(path)
    for name, paths in by_speaker.items():
        words = [p.parent.name for p in paths]
        shift = int(rng.integers(1, len(words)))
        staged = [p.read_bytes() for p in paths]
        for data, word in zip(staged, words[shift:] + words[:shift], strict=True):
            (tree / word / name).write_bytes(data)


@pytest.fixture(scope="module")
def story(prefect_api, tmp_path_factory):
    """Baseline on lab_a, a good drop of lab_b, then a shuffled-label drop of lab_c: each step's outcome."""
    root = tmp_path_factory.mktemp("story")
    cwd = Path.cwd()
    os.chdir(root)  # MLflow puts a sqlite store's artifacts under the working directory
    try:
        world = World(root)
        baseline = world.retrain()
        after_baseline = world.aliases()
        good_drop = world.drop("lab_b", 1600.0)
        good = world.retrain(good_drop, "lab_b")
        after_good = world.aliases()
        bad = world.retrain(world.drop("lab_c", 2900.0, shuffled=True), "lab_c")
        after_bad = world.aliases()
        yield {"world": world, "baseline": baseline, "good": good, "bad": bad, "good_drop": good_drop,
               "after_baseline": after_baseline, "after_good": after_good, "after_bad": after_bad}
    finally:
        os.chdir(cwd)


def test_baseline_becomes_the_first_champion(story):
    assert story["baseline"]["outcome"] == "promoted"
    assert story["after_baseline"] == {CHAMPION: story["baseline"]["version"]}


def test_good_drop_is_promoted_and_the_old_champion_kept_as_previous(story):
    world, good = story["world"], story["good"]
    assert good["outcome"] == "promoted", good["gate"]
    assert story["after_good"][CHAMPION] == good["version"]
    assert story["after_good"][PREVIOUS] == story["baseline"]["version"]
    # The drift signal: the old champion had never heard lab_b and it showed before retraining.
    assert good["drift"]["new_domain"] < 0.5 < good["drift"]["known_domains"]
    version = world.client.get_model_version(world.name, good["version"])
    assert version.tags["gate"] == "passed" and version.tags["new_domain"] == "lab_b"
    assert version.tags["training_key"] == good["training_key"] and version.tags["dataset_version"]
    # The model card: data version, domains, test figures per domain, INT8 size and latency, the gate report.
    card = version.description
    assert "Gate PASSED" in card and version.tags["dataset_version"] in card
    assert "Acoustic domains: lab_a, lab_b." in card and "| test_accuracy.lab_b |" in card
    assert "KiB" in card and "ms p50" in card
    run = world.client.get_run(good["run_id"])
    assert run.data.metrics["drift.champion_accuracy.new_domain"] == pytest.approx(good["drift"]["new_domain"])
    assert run.data.tags["champion_version"] == story["baseline"]["version"]


def test_shuffled_label_drop_is_refused_and_the_champion_stays(story):
    world, bad = story["world"], story["bad"]
    assert bad["outcome"] == "refused"
    gate = json.loads(bad["gate"])
    failed = {check["name"] for check in gate["checks"] if not check["passed"]}
    assert "new domain lab_c" in failed
    assert gate["challenger"]["per_domain"]["lab_c"] < 0.5
    assert story["after_bad"][CHAMPION] == story["good"]["version"]
    assert story["after_bad"][PREVIOUS] == story["baseline"]["version"]
    rejected = [alias for alias, version in story["after_bad"].items() if version == bad["version"]]
    assert len(rejected) == 1 and rejected[0].startswith("rejected-")
    version = world.client.get_model_version(world.name, bad["version"])
    assert version.tags["gate"] == "refused" and "new domain lab_c" in version.tags["gate_failures"]
    world.assert_one_valid_champion()


def test_the_gate_report_is_a_prefect_markdown_artifact(story, prefect_api):
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    reports = read_api("read_artifacts", artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["gate-report"])))
    texts = [artifact.data for artifact in reports]
    assert any("Gate REFUSED" in text and "new domain lab_c" in text for text in texts), texts
    assert any("Gate PASSED" in text and "Drift" in text and "new domain lab_b" in text for text in texts), texts


def test_the_same_drop_never_retrains_twice(story):
    world = story["world"]
    versions_before = len(world.client.search_model_versions(f"name='{world.name}'"))
    aliases_before = world.aliases()  # whichever order the story's tests run in (the rollback test moves them)
    again = world.retrain(story["good_drop"], "lab_b")
    assert again["outcome"] == "skipped"
    assert len(world.client.search_model_versions(f"name='{world.name}'")) == versions_before
    nightly = world.retrain()  # no drop and nothing changed: the nightly run does nothing either
    assert nightly["outcome"] == "skipped"
    assert world.aliases() == aliases_before


def test_watcher_starts_one_flow_run_per_drop_however_often_it_looks(story, prefect_api):
    world = story["world"]
    for deployment in deployments(str(world.params_path)):
        deployment.apply()
    first = watch_incoming(str(world.params_path))
    second = watch_incoming(str(world.params_path))
    drops = sorted(str(p) for p in (world.root / "incoming/kws").glob("*/*"))
    assert sorted(first) == drops and second == []
    [manual] = [d for d in read_api("read_deployments") if d.name == "manual"]
    runs = [r for r in read_api("read_flow_runs") if r.deployment_id == manual.id]
    try:
        assert sorted(r.parameters["drop"] for r in runs) == drops
        listed = subprocess.run([str(BIN / "prefect"), "deployment", "ls"], capture_output=True, text=True,
                                env=os.environ | {"PREFECT_API_URL": prefect_api}, timeout=120)
        assert listed.returncode == 0, listed.stderr
        for name in ("manual", "nightly", "new-data"):
            assert name in listed.stdout, listed.stdout
    finally:
        # Nobody serves these deployments here. Left on the session's API, the next `earshot serve` (same names)
        # would run their scheduled runs: the new-data schedule's watcher runs start this world's drops again, and
        # Ctrl-C waits for a run in flight, which under load outlasted the serve test's 60 s.
        applied = {d.id for d in read_api("read_deployments") if d.name in {"manual", "nightly", "new-data"}}
        for run in read_api("read_flow_runs"):
            if run.deployment_id in applied:
                read_api("delete_flow_run", flow_run_id=run.id)
        for deployment_id in applied:
            read_api("delete_deployment", deployment_id=deployment_id)


def test_mlflow_models_serve_answers_the_champion_as_earshot_predict_does(story, tmp_path):
    """`mlflow models serve` of models:/<name>@champion over real HTTP answers exactly what `earshot predict` answers
    for the same files, whatever the model learned: as WAV bytes, as samples, at 44.1 kHz in stereo (resampled and
    downmixed on both paths); non-audio is a 400 the server survives."""
    world = story["world"]
    clips = [sorted((story["good_drop"] / word).glob("*.wav"))[0] for word in labels(world.settings)[:4]]
    waves = [sf.read(clip, dtype="float32")[0] for clip in clips]
    stereo = tmp_path / "stereo_44k.wav"
    sf.write(stereo, np.stack([resample(waves[0], 16000, 44100)] * 2, axis=1), 44100)
    done = subprocess.run([str(BIN / "earshot"), "predict", "--json", "--params", str(world.params_path),
                           *map(str, [*clips, stereo])], capture_output=True, text=True, cwd=world.root, timeout=300)
    assert done.returncode == 0, done.stderr
    *expected, expected_stereo = [json.loads(line) for line in done.stdout.splitlines()]

    def same_answers(served: list[dict], wanted: list[dict]) -> None:
        assert [p["label"] for p in served] == [e["label"] for e in wanted]
        assert [p["confidence"] for p in served] == pytest.approx([e["confidence"] for e in wanted], abs=1e-6)

    port, log = free_port(), tmp_path / "serve.log"
    server = start_model_server(f"models:/{world.name}@champion", world.params.tracking.uri, port, world.root, log)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: healthy(url), server, "mlflow models serve", log)
        as_files = {"audio": [base64.b64encode(clip.read_bytes()).decode() for clip in clips]}
        status, answer = invoke(url, as_files)
        assert status == 200, answer
        served = answer["predictions"]
        same_answers(served, expected)
        status, answer = invoke(url, {"samples": [w.tolist() for w in waves]})
        assert status == 200, answer
        same_answers(answer["predictions"], expected)
        status, answer = invoke(url, {"audio": [base64.b64encode(stereo.read_bytes()).decode()]})
        assert status == 200, answer
        same_answers(answer["predictions"], [expected_stereo])
        status, refused = invoke(url, {"audio": [base64.b64encode(b"<html>not audio</html>").decode()]})
        assert status == 400
        assert "clip 0: not readable audio" in refused["message"]
        status, answer = invoke(url, as_files)
        assert status == 200 and answer["predictions"] == served  # still up, same answers
    finally:
        stop_server(server)


def test_earshot_stream_hears_each_keyword_once_where_it_is_said_from_a_file_and_from_stdin(story, tmp_path):
    """Each word said is heard once, in a window that overlaps it. Each word is the clip `earshot predict` is surest
    of (labelled right, >= 0.6) and the stream listens at 0.5, so the test is about listening, not about how sure
    the tiny champion is: its confidences change with the machine and the seed."""
    world = story["world"]
    words = labels(world.settings)[:2]
    # The model that learned lab_b, not whichever is champion when this runs (the rollback test moves it).
    model = ["--model", f"models:/{world.name}/{story['good']['version']}", "--params", str(world.params_path)]
    candidates = [clip for word in words for clip in sorted((story["good_drop"] / word).glob("*.wav"))]
    done = subprocess.run([str(BIN / "earshot"), "predict", "--json", *model, *map(str, candidates)],
                          capture_output=True, text=True, cwd=world.root, timeout=300)
    assert done.returncode == 0, done.stderr
    right = [(answer["confidence"], clip) for clip, answer in zip(candidates, map(json.loads, done.stdout.splitlines()),
                                                                    strict=True) if answer["label"] == clip.parent.name]
    noise = np.random.default_rng(1).normal(0, 0.05, 16000 * 7).astype(np.float32)  # as _background_noise_
    said = {words[0]: 1.0, words[1]: 4.0}  # seconds, on the hop grid: one window holds exactly the clip
    for word, at in said.items():
        confidence, clip = max(((c, clip) for c, clip in right if clip.parent.name == word), default=(0.0, None))
        assert confidence >= 0.6, f"the champion labels no clip of {word!r} right at >= 0.6"
        tone_wave = sf.read(clip, dtype="float32")[0]
        noise[round(at * 16000) : round(at * 16000) + tone_wave.size] = tone_wave
    recording = tmp_path / "long.wav"
    sf.write(recording, noise, 16000, subtype="PCM_16")
    command = [str(BIN / "earshot"), "stream", "--json", "--threshold", "0.5", *model]

    from_file = subprocess.run([*command, str(recording)], capture_output=True, text=True, cwd=world.root,
                               timeout=300)
    assert from_file.returncode == 0, from_file.stderr
    events = [json.loads(line) for line in from_file.stdout.splitlines()]
    assert [e["text"] for e in events] == words
    for event in events:  # the window that fired overlaps the word
        assert event["start_s"] < said[event["text"]] + 1.0 and event["end_s"] > said[event["text"]]
        assert event["confidence"] >= 0.5

    pcm = sf.read(recording, dtype="int16")[0].astype("<i2").tobytes()
    from_stdin = subprocess.run([*command, "-"], input=pcm, capture_output=True, cwd=world.root, timeout=300)
    assert from_stdin.returncode == 0, from_stdin.stderr
    assert [json.loads(line) for line in from_stdin.stdout.decode().splitlines()] == events


def test_rollback_moves_champion_back_and_is_logged(story):
    world = story["world"]
    event = rollback(world.client, world.name, "test")
    assert event.version == story["baseline"]["version"]
    assert world.aliases()[CHAMPION] == story["baseline"]["version"] and PREVIOUS not in world.aliases()
    actions = [(e.action, e.version) for e in promotion_log(world.client, world.name)]
    assert actions == [("promote", story["baseline"]["version"]), ("promote", story["good"]["version"]),
                       ("reject", story["bad"]["version"]), ("rollback", story["baseline"]["version"])]
    world.assert_one_valid_champion()


def test_one_old_domain_regressing_is_refused_even_when_the_average_improves(prefect_api, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # The swap below flips three to six of lab_a's six test "yes" and "no" clips over seeds 0-3 (8.3 to 16.7
    # points); a margin of 5 points is crossed by two flips. Chance flips from the good drop only add to it.
    world = World(tmp_path, max_domain_regression_points=5.0)
    first = world.retrain()
    assert first["outcome"] == "promoted"
    # Someone ingested a batch into lab_a with "yes" and "no" swapped, and no retrain. Its 40 speakers span lab_a's
    # pitches densely (0.96..1.04 times 301 Hz and up, never a held clip's exact audio): five wrong labels to one
    # right one in training, and in validation too, so the best epoch is one that learned the swap.
    mislabeled = world.root / "vendor"
    swapped = pitches(world.settings, 301.0)
    swapped["yes"], swapped["no"] = swapped["no"], swapped["yes"]
    write_tree(mislabeled, swapped, speakers("v", 30, "training") + speakers("v", 10, "validation"), detune=-20)
    kws.ingest(world.params, mislabeled, "lab_a")
    # Then a good drop of a new domain lands: the challenger gains far more on lab_b than it loses on lab_a.
    result = world.retrain(world.drop("lab_b", 1600.0), "lab_b")
    gate = json.loads(result["gate"])
    assert result["outcome"] == "refused"
    assert gate["challenger"]["accuracy"] > gate["champion"]["accuracy"]
    checks = {check["name"]: check["passed"] for check in gate["checks"]}
    assert checks["no regression on lab_a"] is False
    assert checks["overall accuracy not lower"] is True and checks["new domain lab_b"] is True
    assert world.aliases()[CHAMPION] == first["version"]


def test_a_second_retraining_waits_for_none_it_stops_at_once(tmp_path):
    world_lock = tmp_path / "retrain.lock"
    settings = tiny_settings(tmp_path) | {"continuous": {"lock": str(world_lock)}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(settings))
    with exclusive(world_lock, "retraining"), pytest.raises(Busy, match=str(os.getpid())):
        continuous_training.fn(str(tmp_path / "params.yaml"))


def test_champion_scoring_is_cached_by_its_inputs(story):
    from prefect import flow

    world = story["world"]
    key = kws.training_key(world.params)
    version = world.aliases()[CHAMPION]

    @flow
    def score_twice() -> tuple[str, bool]:
        first, second = (score_champion(world.params, version, key, return_state=True) for _ in range(2))
        return second.name, bool((first.result().answers == second.result().answers).all())

    assert score_twice() == ("Cached", True)


def test_only_transient_failures_are_retried():
    from prefect.states import Failed

    assert _transient(None, None, Failed(data=OSError("disk hiccup")))
    assert not _transient(None, None, Failed(data=DropError("drop: no audio files")))


def test_the_demo_never_wipes_the_project_it_runs_in(tmp_path, monkeypatch):
    from components.config import ConfigError
    from pipelines.demo import prepare_workspace

    monkeypatch.chdir(tmp_path)
    (tmp_path / "keep.txt").write_text("the user's work")
    for workspace in (".", ".."):
        params = Params.model_validate(tiny_settings(tmp_path) | {"demo": {"workspace": workspace}})
        with pytest.raises(ConfigError, match="must be a folder of its own"):
            prepare_workspace(params.demo.workspace, params)
    assert (tmp_path / "keep.txt").read_text() == "the user's work"


def test_demo_story_runs_in_a_repo_of_its_own_and_the_shuffled_drop_is_refused(prefect_api, tmp_path, monkeypatch):
    from rich.console import Console

    from pipelines.demo import run_demo, story_table

    monkeypatch.chdir(tmp_path)
    settings = tiny_settings(None)
    settings["demo"] = {"workspace": str(tmp_path / "demo"), "baseline_domains": ["studio_us"],
                        "good_drop": "car_scottish", "bad_drop": "kitchen_caribbean", "drop_speakers": 6}
    settings["gate"]["min_int8_parity"] = 0.0  # a 16-channel model is far from INT8-stable; not what this tests
    steps = run_demo(Params.model_validate(settings))
    assert [s.outcome for s in steps][0] == "promoted" and len(steps) == 3
    assert steps[2].outcome == "refused" and steps[2].champion_after == steps[1].champion_after
    assert steps[2].drift["new_domain"] < 0.5  # the champion never heard the shuffled domain's labels right
    # Each step's time is split by stage as the Prefect API recorded the tasks, and the split adds up to the step.
    assert {"synthesize corpus", "featurize", "train", "export", "gate", "decide"} <= set(steps[0].stages)
    assert {"record drop", "ingest", "score_champion", "train"} <= set(steps[1].stages)
    for step in steps:
        assert min(step.stages.values()) >= 0 and sum(step.stages.values()) == pytest.approx(step.seconds)
        assert step.stages["train"] > 0.1 * step.seconds
    log = subprocess.run(["git", "log", "--format=%s"], cwd=tmp_path / "demo", capture_output=True, text=True).stdout
    assert sum(line.startswith("data: ingest") for line in log.splitlines()) == 2
    assert any((tmp_path / "demo/dvc-remote").rglob("*"))  # the data was pushed to the demo's DVC remote
    # Per voice source, the challenger's test accuracy is in the story's table and the champion's model card.
    sources = set(settings["synthesis"]["domains"]["studio_us"].get("engines", ["espeak"]))
    assert set(steps[0].by_source) == sources | {"background"}  # "background": the _silence_ clips' noise
    assert all(sources <= set(s.by_source) and all(0 <= v <= 1 for v in s.by_source.values()) for s in steps)
    console = Console(width=250, record=True)
    console.print(story_table(steps))
    assert "challenger by voice source" in console.export_text()
    with monkeypatch.context() as inside:
        inside.chdir(tmp_path / "demo")
        demo = load_params("params.yaml")
        client = registry_client(demo.mlflow)
        card = client.get_model_version(demo.mlflow.registered_model, champion(client, demo.mlflow.registered_model)
                                        .version).description
    assert all(f"test_accuracy.source.{source}" in card for source in sources)
    assert not (tmp_path / "data").exists()  # nothing written into the folder the demo was started from
