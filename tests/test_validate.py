"""Drop validation with real GX suites over real files: every fault gets its own primary reason, good files pass."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from components.config import Ingest
from components.validate import (
    FACT_COLUMNS,
    FILE_SUITE,
    ValidationError,
    ValidationReport,
    facts_frame,
    probe_audio,
    validate_drop,
)
from tests.conftest import tone

WORDS = ["yes", "no", "up", "down"]
LABELS = [*WORDS, "_silence_", "_unknown_"]
HELD_SPLITS = {"alice": "testing"}


def expect(name: str, column: str) -> str:
    return f"expect_column_values_to_be_{name}({column})"


# file -> (primary expectation, text the observed value must contain)
FAULTS = {
    "corrupt.wav": (expect("in_set", "readable"), "Format not recognised"),
    "empty.wav": (expect("in_set", "readable"), "empty file"),
    "nan.wav": (expect("in_set", "finite"), "False"),
    "long.wav": (expect("between", "duration_s"), "3"),
    "silent.wav": (expect("between", "rms_dbfs"), "-120"),
    "clipped.wav": (expect("between", "clipping_ratio"), "0.99"),
    "unknown_label.wav": (expect("in_set", "label"), "banana"),
    "conflict.wav": (expect("in_set", "speaker_conflict"), "alice"),
    "held_copy.wav": (expect("in_set", "duplicate"), "True"),
    "drop_copy.wav": (expect("in_set", "duplicate"), "True"),
    "../outside.wav": (expect("in_set", "path_ok"), "False"),
}


def write(root: Path, name: str, wave: np.ndarray, rate: int = 16000, subtype: str = "PCM_16") -> Path:
    sf.write(root / name, wave, rate, subtype=subtype)
    return root / name


@pytest.fixture(scope="module")
def drop(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[dict], set[str], Path]:
    """A drop with two good files and one of each fault, plus the hash of a file that is already held."""
    root = tmp_path_factory.mktemp("drop")
    nan = tone(500)
    nan[100:200] = np.nan
    paths = {
        "good.wav": write(root, "good.wav", tone(440)),
        "stereo44.wav": write(root, "stereo44.wav", np.stack([tone(300, rate=44100), tone(310, rate=44100)], 1), 44100),
        "nan.wav": write(root, "nan.wav", nan, subtype="FLOAT"),
        "long.wav": write(root, "long.wav", tone(600, seconds=3.0)),
        "silent.wav": write(root, "silent.wav", np.zeros(16000, np.float32)),
        "clipped.wav": write(root, "clipped.wav", np.sign(tone(700)).astype(np.float32)),
        "unknown_label.wav": write(root, "unknown_label.wav", tone(800)),
        "conflict.wav": write(root, "conflict.wav", tone(900)),
        "held_copy.wav": write(root, "held_copy.wav", tone(1000)),
        "drop_copy.wav": shutil.copy(root / "good.wav", root / "drop_copy.wav"),
        "corrupt.wav": root / "corrupt.wav",
        "empty.wav": root / "empty.wav",
        "../outside.wav": None,
    }
    (root / "corrupt.wav").write_bytes(b"this is not audio " * 50)
    (root / "empty.wav").write_bytes(b"")
    # corrupt.wav also has an unknown label: its primary reason must still be the more basic one.
    labels = {"good.wav": "yes", "stereo44.wav": "no", "unknown_label.wav": "banana", "corrupt.wav": "banana"}
    entries = [{"file": file, "path": path, "label": labels.get(file, "up"),
                "speaker": "alice" if file == "conflict.wav" else f"spk{i}", "split": "training"}
               for i, (file, path) in enumerate(paths.items())]
    held = {hashlib.sha256((root / "held_copy.wav").read_bytes()).hexdigest()}
    return entries, held, root


@pytest.fixture(scope="module")
def report(drop: tuple[list[dict], set[str], Path]) -> ValidationReport:
    entries, held, root = drop
    facts = facts_frame(entries, held, HELD_SPLITS, progress=False)
    return validate_drop(facts, Ingest(), set(WORDS), LABELS, root / "docs")


def test_every_fault_is_rejected_with_its_primary_reason(report: ValidationReport) -> None:
    primary = {r.file: (r.expectation, r.observed) for r in report.rejections}
    assert set(primary) == set(FAULTS)
    for file, (expectation, observed) in FAULTS.items():
        assert primary[file][0] == expectation, file
        assert observed in primary[file][1], (file, primary[file][1])
    assert {"file": "corrupt.wav", "expectation": FAULTS["corrupt.wav"][0],
            "observed": primary["corrupt.wav"][1]} in report.to_rows()


def test_good_files_are_accepted_whatever_their_rate_and_channels(
    drop: tuple[list[dict], set[str], Path], report: ValidationReport
) -> None:
    # The first copy of duplicated bytes is fine; only the later one is a duplicate.
    assert report.accepted == ["good.wav", "stereo44.wav"]
    assert report.success and report.drop_failures == []
    facts = probe_audio(drop[2] / "stereo44.wav")
    assert (facts["readable"], facts["sample_rate"], facts["channels"]) == (True, 44100, 2)
    assert facts["duration_s"] == pytest.approx(1.0) and facts["finite"]


def test_data_docs_site_is_built(report: ValidationReport) -> None:
    index = report.docs_dir / "index.html"
    assert index.is_file() and FILE_SUITE in index.read_text()
    assert list((report.docs_dir / "validations").rglob("*.html"))


def test_a_drop_dominated_by_one_label_fails_whole(tmp_path: Path) -> None:
    entries = [{"file": f"{i}.wav", "path": write(tmp_path, f"{i}.wav", tone(300 + 20 * i)),
                "label": "no" if i == 0 else "yes", "speaker": f"s{i}", "split": "training"} for i in range(10)]
    facts = facts_frame(entries, set(), {}, progress=False)
    result = validate_drop(facts, Ingest(max_label_share=0.5), set(WORDS), LABELS, tmp_path / "docs")
    assert not result.success
    assert [(r.file, r.expectation, r.observed) for r in result.drop_failures] == [
        ("*", expect("between", "label_share"), "0.9 (yes)")
    ]
    assert result.rejections == [] and len(result.accepted) == 10


def test_an_empty_drop_fails_min_files(tmp_path: Path) -> None:
    facts = facts_frame([], set(), {}, progress=False)
    assert list(facts.columns) == list(FACT_COLUMNS)
    result = validate_drop(facts, Ingest(min_files=1), set(WORDS), LABELS, tmp_path / "docs")
    assert [(r.file, r.expectation, r.observed) for r in result.drop_failures] == [
        ("*", "expect_table_row_count_to_be_between", "0")
    ]
    assert result.accepted == [] and (tmp_path / "docs" / "index.html").is_file()


def test_probe_never_raises_on_arbitrary_bytes(tmp_path: Path) -> None:
    write(tmp_path, "valid.wav", tone(440, seconds=0.1))
    valid = (tmp_path / "valid.wav").read_bytes()
    rng = np.random.default_rng(0)
    for i in range(200):
        if i % 2:
            blob = rng.bytes(int(rng.integers(0, 400)))
        else:
            # A real header with a few bytes mutated: plausible enough to get past format detection.
            blob = bytearray(valid[: int(rng.integers(12, len(valid)))])
            for at in rng.integers(0, 44, size=int(rng.integers(1, 6))):
                blob[at] = int(rng.integers(0, 256))
        path = tmp_path / "fuzz.wav"
        path.write_bytes(bytes(blob))
        facts = probe_audio(path)
        assert facts["sha256"] == hashlib.sha256(blob).hexdigest()
        assert facts["readable"] or facts["error"]
    assert probe_audio(tmp_path / "missing.wav")["error"]


def test_an_expectation_that_cannot_run_is_an_error_not_a_pass(tmp_path: Path) -> None:
    facts = facts_frame([], set(), {}, progress=False).drop(columns="duplicate")
    with pytest.raises(ValidationError, match="duplicate"):
        validate_drop(facts, Ingest(), set(WORDS), LABELS, tmp_path / "docs")


def test_one_speaker_in_two_splits_of_the_same_drop_is_a_conflict(tmp_path):
    clips = []
    for i, split in enumerate(["training", "training", "testing"]):
        path = tmp_path / f"{i}.wav"
        sf.write(path, np.sin(np.linspace(0, 300 * (i + 1), 16000)).astype(np.float32) * 0.3, 16000)
        clips.append({"file": path.name, "path": path, "label": "yes", "speaker": "abc", "split": split})
    facts = facts_frame(clips, held_hashes=set(), held_speaker_splits={}, progress=False)
    assert facts["speaker_conflict"].tolist() == [False, False, True]
