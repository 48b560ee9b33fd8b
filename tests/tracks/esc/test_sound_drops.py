"""Drops of a new acoustic domain for the sound-event track: real files, real GX suites, a real DVC repo and Prefect.

The worlds are tones (each class a pitch of its own, other pitch ranges per domain), so a small model learns a domain
in seconds and each gate verdict below is decided by the data: see tests/test_continuous.py for the keyword track.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml

from components.config import Ingest, Params, load_params
from components.files import write_csv
from components.ingest import DropError, ingest_drop, ledger_rows
from components.registry import champion, registry_client
from components.tracks.esc.corpus import CLASSES
from components.tracks.esc.drops import sound_dataset, sound_drops, source_fold
from components.tracks.esc.events import URBANSOUND8K_COLUMNS, URBANSOUND8K_CSV, load_urbansound8k
from pipelines.flows import continuous_training
from tests.conftest import tiny_settings
from tests.test_ingest import earshot, tree_digest

RATE = 16000
NAMES = CLASSES[:4]
FOLDS = 10
STEP_HZ = 250.0


def tone(pitch: float, rng: np.random.Generator, seconds: float = 1.0, rate: int = RATE) -> np.ndarray:
    """A steady tone a little off `pitch` over faint noise: every clip of a class differs, the class does not."""
    t = np.arange(int(seconds * rate)) / rate
    wave = 0.3 * np.sin(2 * np.pi * pitch * rng.uniform(0.99, 1.01) * t) + 0.003 * rng.standard_normal(t.size)
    return wave.astype(np.float32)


def wav(wave: np.ndarray, rate: int = RATE) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, wave, rate, subtype="PCM_16", format="WAV")
    return buffer.getvalue()


def write_base(root: Path, lowest: float, sources_per_fold: int, domain: str, seed: int = 0) -> Path:
    """An UrbanSound8K tree of tones, `sources_per_fold` one-slice sources per class and fold, all in `domain`."""
    rng = np.random.default_rng(seed)
    rows, domains = [], []
    for fold in range(1, FOLDS + 1):
        (root / "audio" / f"fold{fold}").mkdir(parents=True, exist_ok=True)
        for class_id, name in enumerate(NAMES):
            for n in range(sources_per_fold):
                source = f"{fold}{class_id}{n}{seed}"
                file = f"{source}-{class_id}-0-0.wav"
                (root / "audio" / f"fold{fold}" / file).write_bytes(wav(tone(lowest + STEP_HZ * class_id, rng)))
                rows.append({"slice_file_name": file, "fsID": source, "start": 0, "end": 1.0, "salience": 1,
                             "fold": fold, "classID": class_id, "class": name})
                domains.append({"fsID": source, "domain": domain})
    write_csv(root / URBANSOUND8K_CSV, rows, list(URBANSOUND8K_COLUMNS))
    write_csv(root / "metadata/domains.csv", domains, ["fsID", "domain"])
    return root


def write_class_folders(folder: Path, lowest: float, sources_per_class: int, prefix: str, seed: int = 1,
                        mislabeled: bool = False) -> Path:
    """A folder-per-class drop of tones, <class>/<source>-0.wav; mislabeled: each source filed under a wrong class."""
    rng = np.random.default_rng(seed)
    for class_id in range(len(NAMES)):
        for n in range(sources_per_class):
            filed = (class_id + int(rng.integers(1, len(NAMES)))) % len(NAMES) if mislabeled else class_id
            path = folder / NAMES[filed] / f"{prefix}{class_id}x{n}-0.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(wav(tone(lowest + STEP_HZ * class_id, rng)))
    return folder


def plant_faults(drop: Path, held_file: Path) -> dict[str, str]:
    """One bad file per fault the audio checks must catch: file -> the column its rejection names."""
    rng = np.random.default_rng(5)
    faults = {
        f"{NAMES[0]}/corrupt-0.wav": (os.urandom(2048), "readable"),
        f"{NAMES[0]}/empty-0.wav": (b"", "readable"),
        f"{NAMES[1]}/quiet-0.wav": (wav(np.zeros(RATE, np.float32)), "rms_dbfs"),
        f"{NAMES[1]}/loud-0.wav": (wav(np.clip(tone(900.0, rng) * 30, -1, 1)), "clipping_ratio"),
        f"{NAMES[2]}/narrow-0.wav": (wav(tone(900.0, rng, rate=4000), 4000), "sample_rate"),
        f"{NAMES[2]}/long-0.wav": (wav(tone(900.0, rng, seconds=6.0)), "duration_s"),
        f"{NAMES[3]}/blip-0.wav": (wav(tone(900.0, rng, seconds=0.1)), "duration_s"),
        "banana/fruit-0.wav": (wav(tone(900.0, rng)), "label"),
        f"{NAMES[3]}/copy-0.wav": (held_file.read_bytes(), "duplicate"),
    }
    for file, (data, _) in faults.items():
        (drop / file).parent.mkdir(exist_ok=True)
        (drop / file).write_bytes(data)
    return {file: column for file, (_, column) in faults.items()}


def esc_settings(root: Path) -> dict:
    settings = tiny_settings(root)
    settings["track"] = "esc"
    esc = settings["esc"]
    esc["root"] = str(root / "base/lab_a")
    esc["features"] |= {"win_ms": 40.0, "hop_ms": 40.0}
    esc["train"] |= {"channels": 16, "blocks": 3, "epochs": 25, "patience": 25, "batch_size": 32, "mixup": False}
    esc["cv_folds"] = [FOLDS]  # the holdout fold: the deployed model stands for its round, nothing more trains
    esc["export"] |= {"calibration_clips": 32, "latency_runs": 5, "min_parity": 0.9}
    # The holdout fold holds 12 clips of lab_a: one flipped clip is 8.3 points. A learned tone domain scores ~100 %,
    # a mislabeled one (each source under a wrong class) about nothing on its own test clips.
    esc["gate"] |= {"min_new_domain_accuracy": 0.6, "min_int8_parity": 0.9, "max_domain_regression_points": 20.0,
                    "golden_clips": 4, "max_golden_changed": 1}
    esc["ingest"]["max_label_share"] = 0.5
    return settings


@pytest.fixture
def project(tmp_path) -> Params:
    """A project whose sound dataset is a tone world lab_a; nothing ingested yet."""
    settings = esc_settings(tmp_path)
    write_base(tmp_path / "base/lab_a", 400.0, 1, "lab_a")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(settings, sort_keys=False))
    return Params.model_validate(settings)


def quarantine_reasons(ingest: Ingest, drop: Path) -> dict[str, dict[str, str]]:
    """file -> its row of reasons.csv, in the quarantine of the drop `ingest`'s ledger lists."""
    [row] = [r for r in ledger_rows(ingest.root) if r["source"] == str(drop)]
    folder = next(Path(ingest.quarantine).glob(f"{drop.name}-{row['drop_id'][:8]}"))
    return {r["file"]: r for r in csv.DictReader((folder / "reasons.csv").open())}


def test_a_faulty_class_folder_drop_quarantines_each_bad_file_and_publishes_the_rest(project, tmp_path):
    drop = write_class_folders(tmp_path / "drop", 1600.0, 3, "b")
    held = next((tmp_path / "base/lab_a/audio/fold1").glob("*.wav"))
    faults = plant_faults(drop, held)
    originals = tree_digest(drop)
    done = earshot(["ingest", str(drop), "--domain", "lab_b", "--params", str(tmp_path / "params.yaml")], tmp_path)
    assert done.returncode == 0, done.stderr
    assert tree_digest(drop) == originals
    reasons = quarantine_reasons(project.esc.ingest, drop)
    assert set(reasons) == set(faults)
    for file, column in faults.items():
        assert f"({column})" in reasons[file]["expectation"], (file, reasons[file])
    tree = Path(project.esc.ingest.root) / "lab_b"
    published = load_urbansound8k(tree)
    assert len(published) == 3 * len(NAMES)
    assert {clip.label_name for clip in published} == set(NAMES)
    # Each source in the fold its name draws, every file normalised to the track's rate.
    assert all(clip.fold == source_fold(clip.source, FOLDS) for clip in published)
    assert {sf.info(clip.path).samplerate for clip in published} == {project.esc.sample_rate}
    clips, domains = sound_dataset(project)
    assert domains.count("lab_b") == len(published) and domains.count("lab_a") == len(NAMES) * FOLDS
    again = ingest_drop(sound_drops(project), drop, "lab_b", tmp_path / "docs", progress=False)
    assert again.already_ingested


def test_a_held_source_keeps_its_fold_and_a_listed_fold_that_would_leak_it_is_refused(project, tmp_path):
    base = load_urbansound8k(tmp_path / "base/lab_a")
    held = base[0]
    other_fold = held.fold % FOLDS + 1
    drop = tmp_path / "us8k-drop"
    rng = np.random.default_rng(3)
    rows = []
    for fold, source in ((held.fold, held.source), (other_fold, held.source), (2, "newsource")):
        file = f"{source}-{held.label}-{len(rows)}-0.wav"
        (drop / "audio" / f"fold{fold}").mkdir(parents=True, exist_ok=True)
        (drop / "audio" / f"fold{fold}" / file).write_bytes(wav(tone(1700.0, rng)))
        rows.append({"slice_file_name": file, "fsID": source, "start": 0, "end": 1.0, "salience": 1, "fold": fold,
                     "classID": held.label, "class": held.label_name})
    write_csv(drop / URBANSOUND8K_CSV, rows, list(URBANSOUND8K_COLUMNS))
    settings = esc_settings(tmp_path) | {"seed": 0}
    settings["esc"]["ingest"]["max_label_share"] = 1.0  # one class only: this drop tests folds, not the label mix
    params = Params.model_validate(settings)
    report = ingest_drop(sound_drops(params), drop, "lab_b", tmp_path / "docs", progress=False)
    [rejection] = report.validation.rejections
    assert rejection.file == f"audio/fold{other_fold}/{rows[1]['slice_file_name']}"
    assert "speaker_conflict" in rejection.expectation and held.source in rejection.observed
    published = {clip.source: clip.fold for clip in load_urbansound8k(Path(params.esc.ingest.root) / "lab_b")}
    assert published == {held.source: held.fold, "newsource": 2}

    # A folder-per-class file of a held source lands in the source's fold, whatever its name would draw.
    folders = tmp_path / "folders"
    (folders / held.label_name).mkdir(parents=True)
    (folders / held.label_name / f"{held.source}-9.wav").write_bytes(wav(tone(1750.0, rng)))
    ingest_drop(sound_drops(params), folders, "lab_c", tmp_path / "docs", progress=False)
    [clip] = load_urbansound8k(Path(params.esc.ingest.root) / "lab_c")
    assert clip.fold == held.fold


def test_a_drop_unusable_as_a_whole_is_refused_in_one_line_naming_the_file(project, tmp_path):
    drop = tmp_path / "half-copied"
    (drop / "audio/fold1").mkdir(parents=True)
    write_csv(drop / URBANSOUND8K_CSV, [{"slice_file_name": "gone.wav", "fsID": "1", "start": 0, "end": 1,
                                         "salience": 1, "fold": 1, "classID": 0, "class": NAMES[0]}],
              list(URBANSOUND8K_COLUMNS))
    with pytest.raises(DropError, match="gone.wav does not exist"):
        ingest_drop(sound_drops(project), drop, "lab_b", tmp_path / "docs", progress=False)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DropError, match="no audio files"):
        ingest_drop(sound_drops(project), empty, "lab_b", tmp_path / "docs", progress=False)
    assert not (Path(project.esc.ingest.root) / "lab_b").exists()


def git(args: list[str], cwd: Path) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout


def init_story_repo(root: Path) -> None:
    """A git + DVC repo at `root` with a test identity, for a story's data commits."""
    git(["init", "-q"], root)
    git(["config", "user.email", "test@earshot"], root)
    git(["config", "user.name", "earshot test"], root)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=root, check=True)


@pytest.fixture(scope="module")
def sound_story(prefect_api, tmp_path_factory):
    """In a git + DVC repo: a baseline on lab_a, a good drop of lab_b (with faults planted), then a mislabeled drop
    of lab_c, each through the continuous-training flow."""
    root = tmp_path_factory.mktemp("sound-story")
    cwd = Path.cwd()
    os.chdir(root)  # MLflow puts a sqlite store's artifacts under the working directory
    try:
        init_story_repo(root)
        settings = esc_settings(root)
        settings["continuous"] = {"incoming": str(root / "incoming"), "lock": str(root / "retrain.lock")}
        write_base(root / "base/lab_a", 400.0, 3, "lab_a")
        (root / "params.yaml").write_text(yaml.safe_dump(settings, sort_keys=False))
        params = load_params(root / "params.yaml")
        baseline = continuous_training(str(root / "params.yaml"))
        good_drop = write_class_folders(params.incoming / "lab_b/drop-1", 1600.0, 30, "b")
        faults = plant_faults(good_drop, next((root / "base/lab_a/audio/fold1").glob("*.wav")))
        originals = tree_digest(good_drop)
        good = continuous_training(str(root / "params.yaml"), str(good_drop), "lab_b")
        after_good = champion(registry_client(params.mlflow), params.mlflow.registered_model).version
        bad_drop = write_class_folders(params.incoming / "lab_c/drop-1", 2800.0, 30, "c", seed=2, mislabeled=True)
        bad = continuous_training(str(root / "params.yaml"), str(bad_drop), "lab_c")
        after_bad = champion(registry_client(params.mlflow), params.mlflow.registered_model).version
        yield {"root": root, "params": params, "baseline": baseline, "good": good, "bad": bad, "faults": faults,
               "good_drop": good_drop, "originals": originals, "after_good": after_good, "after_bad": after_bad}
    finally:
        os.chdir(cwd)


def test_a_good_sound_drop_is_versioned_in_dvc_and_its_new_domain_promoted(sound_story):
    assert sound_story["baseline"]["outcome"] == "promoted"
    good = sound_story["good"]
    assert good["outcome"] == "promoted", good["gate"]
    assert str(sound_story["after_good"]) == str(good["version"])
    # The drift signal: the champion before the drop had never heard lab_b's pitches.
    assert good["drift"]["new_domain"] < 0.5 <= good["drift"]["known_domains"]
    root, params = sound_story["root"], sound_story["params"]
    assert tree_digest(sound_story["good_drop"]) == sound_story["originals"]
    reasons = quarantine_reasons(params.esc.ingest, sound_story["good_drop"])
    assert set(reasons) == set(sound_story["faults"])
    assert (Path(params.esc.ingest.root) / "lab_b.dvc").is_file()
    assert "ingest drop-1 into lab_b" in git(["log", "--format=%s"], root)
    assert git(["status", "--porcelain", "--", str(params.esc.ingest.root)], root).strip() == ""


def test_a_mislabeled_sound_drop_is_refused_by_the_gate_and_the_champion_stays(sound_story):
    bad = sound_story["bad"]
    assert bad["outcome"] == "refused"
    assert str(sound_story["after_bad"]) == str(sound_story["good"]["version"])
    failed = {check["name"] for check in json.loads(bad["gate"])["checks"] if not check["passed"]}
    assert "new domain lab_c" in failed, failed


def test_every_published_sound_file_is_one_the_validation_accepted(sound_story):
    params = sound_story["params"]
    published = load_urbansound8k(Path(params.esc.ingest.root) / "lab_b")
    digests = {hashlib.sha256(clip.path.read_bytes()).hexdigest() for clip in published}
    assert len(published) == 30 * len(NAMES) and len(digests) == len(published)


def test_the_sound_demo_tells_the_three_step_story_in_a_repo_of_its_own(prefect_api, tmp_path, monkeypatch):
    from pipelines.demo import run_demo

    monkeypatch.chdir(tmp_path)
    settings = tiny_settings(None)
    settings["esc"]["train"] |= {"channels": 8, "blocks": 3, "batch_size": 16}
    settings["esc"]["export"] |= {"calibration_clips": 16, "latency_runs": 5}
    settings["demo"] = {"workspace": str(tmp_path / "demo"),
                        "esc": {"clips_per_class": 8, "drop_clips_per_class": 8, "epochs": 3}}
    steps = run_demo(Params.model_validate(settings), "esc")
    assert [s.step for s in steps] == ["train on street, hall, car_phone", "drop of kitchen",
                                       "drop of tunnel (labels shuffled)"]
    assert steps[0].outcome == "promoted"
    # Each source of the mislabeled drop sits under a class it is not: its domain's clips score about nothing.
    assert steps[2].outcome == "refused" and steps[2].challenger["tunnel"] < 0.5
    assert str(steps[2].champion_after) == (steps[1].version if steps[1].outcome == "promoted" else steps[0].version)
    log = git(["log", "--format=%s"], tmp_path / "demo")
    assert sum(line.startswith("data: ingest") for line in log.splitlines()) == 2
    assert (tmp_path / "demo/data/esc/domains/kitchen.dvc").is_file()
    assert not (tmp_path / "data").exists()
