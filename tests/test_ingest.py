"""Ingestion of drops: real synthesized drops with planted faults, real GX validation, real files and processes."""

from __future__ import annotations

import csv
import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from components.config import Params
from components.corpus import render_domain
from components.drops import write_drop
from components.ingest import LEDGER, ingest_drop, ledger_rows, recover_interrupted
from tests.conftest import tiny_settings

BIN = Path(sys.executable).parent


def tree_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> tuple[Path, Params]:
    """A tiny base corpus (the held data) and params.yaml pointing at it, in a folder of its own."""
    root = tmp_path_factory.mktemp("ingest")
    settings = tiny_settings(root)
    settings["synthesis"]["speakers_per_domain"] = 6
    params = Params.model_validate(settings)
    for domain in params.synthesis.domains:
        render_domain(params, domain, progress=False)
    (root / "params.yaml").write_text(yaml.safe_dump(settings))
    return root, params


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
    first = ingest_drop(params, drop, "kitchen", tmp_path / "docs", progress=False)
    before = tree_digest(Path(params.ingest.root))
    second = ingest_drop(params, drop, "kitchen", tmp_path / "docs", progress=False)
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
    report = ingest_drop(params, drop, "kitchen", tmp_path / "docs", progress=False)
    assert not report.already_ingested and report.accepted > 0
    assert (ingest_root / LEDGER).read_text().count("\n") == len(versions) + 2  # header + one new row
