"""Ingestion of drops: real synthesized drops with planted faults, real GX validation, real files and processes."""

from __future__ import annotations

import copy
import csv
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import get_args

import pytest
import yaml

from components.config import Params
from components.corpus import render_domain
from components.drops import Layout, write_drop
from components.ingest import LEDGER, MANIFEST, ingest_drop, keyword_drops, ledger_rows, recover_interrupted
from tests.conftest import tiny_settings

BIN = Path(sys.executable).parent


def tree_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def held_corpus(tmp_path_factory) -> dict:
    """A tiny base corpus (the held data), rendered once; the settings that point at it."""
    settings = tiny_settings(tmp_path_factory.mktemp("held"))
    settings["synthesis"]["speakers_per_domain"] = 6
    params = Params.model_validate(settings)
    for domain in params.synthesis.domains:
        render_domain(params, domain, progress=False)
    return settings


@pytest.fixture
def workspace(held_corpus, tmp_path) -> tuple[Path, Params]:
    """A project of this test's own over the held corpus: its ingested domains, ledger (drops.csv) and quarantine
    start empty, so no test sees another's drops whatever the order or worker."""
    root = tmp_path / "project"
    settings = copy.deepcopy(held_corpus)
    settings["ingest"] |= {"root": str(root / "data/domains"), "quarantine": str(root / "data/quarantine")}
    settings["paths"]["reports"] = str(root / "reports")
    root.mkdir()
    (root / "params.yaml").write_text(yaml.safe_dump(settings))
    return root, Params.model_validate(settings)


def earshot(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = os.environ | {"PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(["earshot", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_faulty_drop_quarantines_each_bad_file_with_its_reason_and_accepts_the_rest(workspace, tmp_path):
    root, params = workspace
    drop = write_drop(params, "kitchen_caribbean", tmp_path / "drop", speakers=6, faults=True,
                      held_root=params.dataset.domains["studio_us"], progress=False)
    originals = tree_digest(drop)
    done = earshot(["ingest", str(drop), "--domain", "kitchen", "--params", str(root / "params.yaml")], root)
    assert done.returncode == 0, done.stderr
    assert "accepted" in done.stdout and "quarantine" in done.stdout
    assert tree_digest(drop) == originals  # originals are byte-identical afterwards

    faults = list(csv.DictReader((drop / "faults.csv").open()))
    [row] = [r for r in ledger_rows(params.ingest.root) if r["source"] == str(drop)]
    quarantine = next(Path(params.ingest.quarantine).glob(f"drop-{row['drop_id'][:8]}"))
    reasons = {r["file"]: r for r in csv.DictReader((quarantine / "reasons.csv").open())}
    for fault in faults:
        if fault["expected_expectation"]:
            assert fault["expected_expectation"] in reasons[fault["file"]]["expectation"], fault
            copied = quarantine / "files" / fault["file"]
            assert copied.is_file() or fault["fault"] == "path_escape"
        else:
            assert fault["file"] not in reasons, fault
    manifest_rows = list(csv.DictReader((drop / "manifest.csv").open()))
    assert int(row["accepted"]) == len(manifest_rows) - len(reasons)
    assert set(reasons) == {f["file"] for f in faults if f["expected_expectation"]}
    tree = Path(params.ingest.root) / "kitchen"
    stored = list(tree.glob("*/*.wav"))
    assert len(stored) == int(row["accepted"])
    assert Path("/etc/passwd").resolve() not in {p.resolve() for p in quarantine.rglob("*")}


def test_the_same_drop_twice_changes_nothing_and_says_so(workspace, tmp_path):
    root, params = workspace
    drop = write_drop(params, "kitchen_caribbean", tmp_path / "again", speakers=4, drop_seed=7, progress=False)
    first = ingest_drop(keyword_drops(params), drop, "kitchen", tmp_path / "docs", progress=False)
    before = tree_digest(Path(params.ingest.root))
    second = ingest_drop(keyword_drops(params), drop, "kitchen", tmp_path / "docs", progress=False)
    assert second.already_ingested and second.data_version == first.data_version
    assert tree_digest(Path(params.ingest.root)) == before
    done = earshot(["ingest", str(drop), "--domain", "kitchen", "--params", str(root / "params.yaml")], root)
    assert done.returncode == 0 and "already ingested" in done.stdout


@pytest.mark.parametrize("kind", ["not a folder", "empty folder", "manifest without columns"])
def test_unusable_drop_is_one_line_and_nonzero_and_publishes_nothing(workspace, tmp_path, kind):
    root, params = workspace
    drop = tmp_path / "bad"
    if kind == "not a folder":
        drop.write_text("hello")
    else:
        drop.mkdir()
        if kind == "manifest without columns":
            (drop / "manifest.csv").write_text("file,word\na.wav,yes\n")
    before = tree_digest(Path(params.ingest.root)) if Path(params.ingest.root).exists() else {}
    done = earshot(["ingest", str(drop), "--domain", "kitchen", "--params", str(root / "params.yaml")], root)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and str(drop) in lines[0] and "Traceback" not in done.stderr
    after = tree_digest(Path(params.ingest.root)) if Path(params.ingest.root).exists() else {}
    assert after == before


def test_drop_with_one_dominant_label_is_rejected_whole(workspace, tmp_path):
    root, params = workspace
    drop = write_drop(params, "kitchen_caribbean", tmp_path / "lopsided", speakers=3, drop_seed=11, progress=False)
    rows = list(csv.DictReader((drop / "manifest.csv").open()))
    keep = [r for r in rows if r["label"] == "yes"] + [r for r in rows if r["label"] != "yes"][:1]
    with (drop / "manifest.csv").open("w", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(keep)
    before = tree_digest(Path(params.ingest.root))
    done = earshot(["ingest", str(drop), "--domain", "kitchen", "--params", str(root / "params.yaml")], root)
    assert done.returncode == 1 and "drop rejected" in done.stderr
    assert tree_digest(Path(params.ingest.root)) == before


def test_ingestion_killed_midway_leaves_the_old_version(workspace, tmp_path):
    """SIGKILL while the staged tree is being written: the dataset stays at its old version, and recovers."""
    root, params = workspace
    old = write_drop(params, "kitchen_caribbean", tmp_path / "old", speakers=3, drop_seed=7, progress=False)
    ingest_drop(keyword_drops(params), old, "kitchen", tmp_path / "docs", progress=False)
    drop = write_drop(params, "kitchen_caribbean", tmp_path / "big", speakers=12, drop_seed=23, progress=False)
    ingest_root = Path(params.ingest.root)
    before, versions = tree_digest(ingest_root), [r["data_version"] for r in ledger_rows(ingest_root)]
    env = os.environ | {"PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.Popen(["earshot", "ingest", str(drop), "--domain", "kitchen", "--params",
                             str(root / "params.yaml")], cwd=root, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    staging = ingest_root / ".kitchen.staging"
    deadline = time.monotonic() + 300
    while not any(staging.glob("*/*.wav")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert staging.exists(), "the kill came too late to test a half-written version"
    assert [r["data_version"] for r in ledger_rows(ingest_root)] == versions
    assert {k: v for k, v in tree_digest(ingest_root).items() if not k.startswith(".")} == before
    recover_interrupted(ingest_root)
    assert tree_digest(ingest_root) == before
    report = ingest_drop(keyword_drops(params), drop, "kitchen", tmp_path / "docs", progress=False)
    assert not report.already_ingested and report.accepted > 0
    assert (ingest_root / LEDGER).read_text().count("\n") == len(versions) + 2  # header + one new row


@pytest.mark.parametrize("link", ["file", "folder"])
@pytest.mark.parametrize("layout", get_args(Layout))
def test_a_symlink_out_of_the_drop_is_quarantined_unread_on_every_layout(workspace, tmp_path, layout, link):
    """Good clips outside the drop, reached through a symlink to one of them or to their word folder: refused for
    leading out, so they are neither published nor copied to the quarantine, and the rest of the drop goes in."""
    root, params = workspace
    drop = write_drop(params, "kitchen_caribbean", tmp_path / "drop", speakers=3, layout=layout, drop_seed=5,
                      progress=False)
    manifest = drop / MANIFEST
    clips = len(list(drop.glob("*/*.wav")))
    outside = tmp_path / "outside"
    (outside / "left").mkdir(parents=True)
    if link == "file":
        some_clip = next(p for p in sorted(drop.glob("*/*.wav")) if "yes" in str(p.relative_to(drop)))
        secret = shutil.copy(some_clip, outside / "zed_nohash_0.wav")
        secret.write_bytes(secret.read_bytes()[:-64] + bytes(64))  # bytes of its own: not refused as a duplicate
        name = "yes/zed_nohash_0.wav" if layout == "speech_commands" else "audio/zed-yes-0.wav"
        (drop / name).symlink_to(secret)
        if layout == "manifest":
            with manifest.open("a", newline="") as rows:
                csv.writer(rows).writerow([name, "yes", "zed"])
        clips += 1
        targets = {name: secret.resolve()}
    else:  # the clips of "left" moved out of the drop, a symlink to their folder left in it
        left = {p: f"left/{p.name}" for p in drop.glob("*/*.wav") if "left" in str(p.relative_to(drop))}
        for clip in left:
            shutil.move(clip, outside / "left" / clip.name)
        if layout == "speech_commands":
            (drop / "left").rmdir()
        (drop / "left").symlink_to(outside / "left", target_is_directory=True)
        if layout == "manifest":
            text = manifest.read_text()
            for clip, name in left.items():
                text = text.replace(str(clip.relative_to(drop)), name)
            manifest.write_text(text)
        targets = {name: (outside / name).resolve() for name in left.values()}
    originals, outside_files = tree_digest(drop), tree_digest(outside)

    report = ingest_drop(keyword_drops(params), drop, "kitchen", tmp_path / "docs", progress=False)
    refused = {r.file: r for r in report.validation.rejections}
    assert set(refused) == set(targets) and report.accepted == clips - len(targets) > 0
    for file, target in targets.items():
        assert refused[file].expectation == "expect_column_values_to_be_in_set(path_ok)"
        assert refused[file].observed == f"False (leads outside the drop (to {target}))"
    reasons = list(csv.DictReader((report.quarantine / "reasons.csv").open()))
    assert {r["file"] for r in reasons} == set(targets)
    assert not (report.quarantine / "files").exists()  # nothing outside was copied in
    held = {hashlib.sha256(p.read_bytes()).hexdigest() for p in Path(params.ingest.root).rglob("*.wav")}
    assert not held & set(outside_files.values())
    assert tree_digest(drop) == originals and tree_digest(outside) == outside_files


@pytest.mark.parametrize("name", ["manifest.csv", "validation_list.txt"])
def test_a_layout_file_that_leads_out_of_the_drop_refuses_the_drop(workspace, tmp_path, name):
    root, params = workspace
    drop = write_drop(params, "kitchen_caribbean", tmp_path / "drop", speakers=2, drop_seed=5, progress=False)
    elsewhere = tmp_path / "elsewhere.txt"
    shutil.copy(drop / MANIFEST, elsewhere)
    (drop / name).unlink(missing_ok=True)
    (drop / name).symlink_to(elsewhere)
    done = earshot(["ingest", str(drop), "--domain", "kitchen", "--params", str(root / "params.yaml")], root)
    assert done.returncode == 1
    assert done.stderr.strip() == f"error: {drop / name}: leads outside the drop (to {elsewhere})"
    assert not Path(params.ingest.root).exists()
