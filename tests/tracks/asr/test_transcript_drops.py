"""Transcribed-speech drops with real files and real GX suites: each planted fault gets its own primary reason, good
drops pass whole, and accepted utterances land in a LibriSpeech tree the track's reader reads, old files untouched."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from components.asr_data import build_asr_data
from components.config import AsrIngest, Params, Subsets
from components.dataset import which_set
from components.ingest import DropError
from components.librispeech import index_librispeech, write_chapter
from components.tracks.asr.drops import (
    FILE_SUITE,
    held_utterances,
    read_transcribed_drop,
    transcript_facts,
    validate_transcribed_drop,
    write_transcribed_files,
)
from components.validate import ValidationReport, facts_frame
from tests.conftest import tiny_settings, tone

RATE = 16000
PERCENTAGES = (10.0, 10.0)
# Not the defaults, so a reader or writer that ignores its `subsets` argument fails.
SUBSETS = Subsets(training="train-clean-5", validation="dev-clean-2", testing="test-clean")
LEXICON = {"turn", "left", "right", "go", "up", "down", "stop", "the", "lights", "on", "off", "and", "then"}
ENTRY_KEYS = {"file", "label", "speaker", "split", "path", "path_error"}


def expect(name: str, column: str) -> str:
    return f"expect_column_values_to_be_{name}({column})"


def voice(seconds: float, seed: int, rate: int = RATE) -> np.ndarray:
    """A tone under a little noise, different bytes for every seed."""
    noise = np.random.default_rng(seed).normal(0.0, 0.02, round(seconds * rate)).astype(np.float32)
    return tone(200 + 37 * seed, seconds, rate) + noise


def write_manifest(drop: Path, rows: list[tuple[str, str, str, str]], header: str = "path,transcript,speaker,split"
                   ) -> None:
    lines = [header, *(",".join(f'"{cell}"' for cell in row) for row in rows)]
    (drop / "manifest.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")


def read(drop: Path) -> list[dict]:
    return read_transcribed_drop(drop, *PERCENTAGES)


@pytest.fixture(scope="module")
def held(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A published domain: speaker 100 in training (two utterances), speaker 200 in testing."""
    root = tmp_path_factory.mktemp("held")
    write_chapter(root / SUBSETS.training, "100", "1", [(voice(1.0, 1), "turn left"), (voice(1.0, 2), "go up")], RATE)
    write_chapter(root / SUBSETS.testing, "200", "1", [(voice(1.0, 3), "stop the lights")], RATE)
    return root


# file -> (primary expectation, text its observed value must contain)
FAULTS = {
    "audio/empty.wav": (expect("in_set", "text_ok"), "empty transcript"),
    "audio/accent.wav": (expect("in_set", "text_ok"), "é"),
    "audio/digits.wav": (expect("in_set", "text_ok"), ": 2"),
    "audio/oov.wav": (expect("between", "oov_rate"), "0.6667 (zorp, blick)"),
    "audio/fast.wav": (expect("between", "chars_per_second"), ""),
    "audio/slow.wav": (expect("between", "chars_per_second"), "0.2222"),
    "audio/corrupt.wav": (expect("in_set", "readable"), "Format not recognised"),
    "audio/silent.wav": (expect("between", "rms_dbfs"), "-120"),
    "audio/held_copy.flac": (expect("in_set", "duplicate"), "True"),
    "audio/conflict.wav": (expect("in_set", "speaker_conflict"), "200"),
    "../outside.wav": (expect("in_set", "path_ok"), "leads outside the drop"),
}
GOOD = ["audio/good_a.wav", "audio/good_b.wav", "audio/good_c.flac"]


@pytest.fixture(scope="module")
def faulty_drop(tmp_path_factory: pytest.TempPathFactory, held: Path) -> Path:
    """A manifest drop of three good utterances and one of each planted fault."""
    root = tmp_path_factory.mktemp("faulty")
    drop = root / "drop"
    (drop / "audio").mkdir(parents=True)
    clips = {"good_a.wav": voice(1.0, 10), "good_b.wav": voice(1.0, 11), "empty.wav": voice(1.0, 12),
             "accent.wav": voice(1.0, 13), "digits.wav": voice(1.0, 14), "oov.wav": voice(1.0, 15),
             "fast.wav": voice(0.5, 16), "slow.wav": voice(18.0, 17), "silent.wav": np.zeros(RATE, np.float32),
             "conflict.wav": voice(1.0, 18)}
    for name, wave in clips.items():
        sf.write(drop / "audio" / name, wave, RATE, subtype="PCM_16")
    sf.write(drop / "audio" / "good_c.flac", voice(1.5, 19, rate=22050), 22050, subtype="PCM_16")
    (drop / "audio" / "corrupt.wav").write_bytes(b"not audio at all " * 100)
    shutil.copy(min((held / SUBSETS.training).rglob("*.flac")), drop / "audio" / "held_copy.flac")
    sf.write(root / "outside.wav", voice(1.0, 20), RATE)
    write_manifest(drop, [
        ("audio/good_a.wav", "Turn   LEFT", "Ann Lee", ""),
        ("audio/good_b.wav", "go up", "300", "validation"),
        ("audio/good_c.flac", "turn the lights off", "301", "training"),
        ("audio/empty.wav", "", "401", "training"),
        ("audio/accent.wav", "héllo up", "402", "training"),
        ("audio/digits.wav", "turn 2 left", "403", "training"),
        ("audio/oov.wav", "turn zorp blick", "404", "training"),
        ("audio/fast.wav", "turn the lights on and then turn left and go up", "405", "training"),
        ("audio/slow.wav", "stop", "406", "training"),
        # Unreadable and badly transcribed: the more basic fault must be its reason.
        ("audio/corrupt.wav", "héllo", "407", "training"),
        ("audio/silent.wav", "go up", "408", "training"),
        ("audio/held_copy.flac", "turn left", "409", "training"),
        ("audio/conflict.wav", "go up", "200", "training"),
        ("../outside.wav", "turn left", "410", "training"),
    ])
    return drop


@pytest.fixture(scope="module")
def faulty_report(faulty_drop: Path, held: Path) -> ValidationReport:
    hashes, speakers, _ = held_utterances([held], SUBSETS)
    facts = facts_frame(read(faulty_drop), hashes, speakers, progress=False)
    # One more accepted file than the drop has: the drop suite counts accepted rows, not rows.
    return validate_transcribed_drop(facts, AsrIngest(min_files=len(GOOD) + 1), LEXICON, faulty_drop.parent / "docs")


def test_every_planted_fault_gets_its_primary_reason(faulty_report: ValidationReport) -> None:
    primary = {r.file: (r.expectation, r.observed) for r in faulty_report.rejections}
    assert set(primary) == set(FAULTS)
    for file, (expectation, observed) in FAULTS.items():
        assert primary[file][0] == expectation, (file, primary[file])
        assert observed in primary[file][1], (file, primary[file][1])
    assert float(primary["audio/fast.wav"][1]) > AsrIngest().max_chars_per_second
    assert faulty_report.accepted == GOOD


def test_the_drop_suite_counts_accepted_files_and_docs_are_built(faulty_report: ValidationReport) -> None:
    assert not faulty_report.success
    assert [(r.file, r.expectation, r.observed) for r in faulty_report.drop_failures] == [
        ("*", "expect_table_row_count_to_be_between", str(len(GOOD)))]
    index = faulty_report.docs_dir / "index.html"
    assert index.is_file() and FILE_SUITE in index.read_text()


def test_manifest_entries_are_normalised_contained_and_split_by_speaker(faulty_drop: Path) -> None:
    entries = {entry["file"]: entry for entry in read(faulty_drop)}
    assert all(set(entry) == ENTRY_KEYS for entry in entries.values())
    good = entries["audio/good_a.wav"]
    assert good["label"] == "turn left" and good["path"] == (faulty_drop / "audio/good_a.wav").resolve()
    # A speaker id that is no safe folder name is stored hashed; its split is the hash rule's for that id.
    assert good["speaker"] != "Ann Lee" and good["speaker"].isalnum()
    assert good["split"] == which_set(f"{good['speaker']}_nohash_0.wav", *PERCENTAGES)
    assert entries["audio/good_b.wav"]["split"] == "validation"
    assert entries["audio/accent.wav"]["label"] == "héllo up"  # kept, to be judged as a fact
    outside = entries["../outside.wav"]
    assert outside["path"] is None and "leads outside the drop" in outside["path_error"]


def test_transcript_facts(faulty_drop: Path) -> None:
    facts = transcript_facts(facts_frame(read(faulty_drop), set(), {}, progress=False), LEXICON).set_index("file")
    assert facts.loc["audio/good_c.flac", "chars_per_second"] == pytest.approx(len("turn the lights off") / 1.5)
    assert facts.loc["audio/empty.wav", ["text_ok", "oov_rate"]].tolist() == [False, 1.0]
    assert facts.loc["audio/digits.wav", "outside_alphabet"] == "2"
    assert facts.loc["audio/oov.wav", "oov_rate"] == pytest.approx(2 / 3)
    assert facts.loc["audio/corrupt.wav", "chars_per_second"] == 0.0  # never decoded: no duration to divide by
    assert facts["text_ok"].dtype == bool and facts.loc[GOOD, "text_ok"].all()


@pytest.fixture(scope="module")
def librispeech_drop(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A good drop in the LibriSpeech layout: FLAC and WAV (one 44.1 kHz stereo), upper-case transcripts."""
    drop = tmp_path_factory.mktemp("libri") / "drop"
    texts = {("500", "7"): ["TURN LEFT", "GO UP THEN STOP"], ("501", "3"): ["TURN THE LIGHTS OFF"]}
    for (speaker, chapter), lines in texts.items():
        folder = drop / speaker / chapter
        folder.mkdir(parents=True)
        for number, _ in enumerate(lines):
            utt = f"{speaker}-{chapter}-{number:04d}"
            if speaker == "501":
                stereo = np.stack([voice(1.5, 30, 44100), voice(1.5, 31, 44100)], axis=1)
                sf.write(folder / f"{utt}.wav", stereo, 44100, subtype="PCM_16")
            else:
                sf.write(folder / f"{utt}.flac", voice(1.2, 32 + number), RATE, subtype="PCM_16")
        (folder / f"{speaker}-{chapter}.trans.txt").write_text(
            "".join(f"{speaker}-{chapter}-{n:04d} {line}\n" for n, line in enumerate(lines)))
    return drop


def test_good_drops_of_either_layout_are_accepted_whole(librispeech_drop: Path, held: Path, tmp_path: Path) -> None:
    manifest_drop = tmp_path / "manifest_drop"
    manifest_drop.mkdir()
    for number in range(3):
        sf.write(manifest_drop / f"{number}.wav", voice(1.0, 40 + number), RATE)
    write_manifest(manifest_drop, [("0.wav", "turn left", "600", "training"), ("1.wav", "go down", "601", "validation"),
                                   ("2.wav", "lights on", "602", "testing")])
    hashes, speakers, _ = held_utterances([held], SUBSETS)
    for drop in (manifest_drop, librispeech_drop):
        entries = read(drop)
        facts = facts_frame(entries, hashes, speakers, progress=False)
        report = validate_transcribed_drop(facts, AsrIngest(min_files=3), LEXICON, tmp_path / f"docs-{drop.name}")
        assert report.success and report.rejections == [], report.to_rows()
        assert report.accepted == [entry["file"] for entry in entries] and len(entries) == 3
    labels = {entry["file"]: entry["label"] for entry in read(librispeech_drop)}
    assert labels == {"500/7/500-7-0000.flac": "turn left", "500/7/500-7-0001.flac": "go up then stop",
                      "501/3/501-3-0000.wav": "turn the lights off"}


def test_audio_without_a_transcript_line_is_a_file_with_no_transcript(tmp_path: Path) -> None:
    chapter = tmp_path / "drop" / "7" / "1"
    chapter.mkdir(parents=True)
    for number in range(2):
        sf.write(chapter / f"7-1-{number:04d}.flac", voice(1.0, number), RATE)
    (chapter / "7-1.trans.txt").write_text("7-1-0000 GO UP\n")
    other = tmp_path / "drop" / "8" / "2"  # a chapter with no trans.txt at all
    other.mkdir(parents=True)
    sf.write(other / "8-2-0000.wav", voice(1.0, 5), RATE)
    labels = {entry["file"]: entry["label"] for entry in read(tmp_path / "drop")}
    assert labels == {"7/1/7-1-0000.flac": "go up", "7/1/7-1-0001.flac": "", "8/2/8-2-0000.wav": ""}


def unusable(tmp_path: Path, case: str) -> tuple[Path, str]:
    """A drop unusable as a whole, and the file its DropError must name."""
    drop = tmp_path / "drop"
    drop.mkdir()
    sf.write(drop / "a.wav", voice(1.0, 1), RATE)
    if case == "not a folder":
        return drop / "a.wav", "a.wav: not a folder"
    if case == "missing columns":
        write_manifest(drop, [("a.wav", "go", "1", "")], header="path,label,speaker,split")
        return drop, "manifest.csv: missing column(s) transcript"
    if case == "unknown split":
        write_manifest(drop, [("a.wav", "go", "1", "train")])
        return drop, "manifest.csv: line 2 has split 'train'"
    if case == "no speaker":
        write_manifest(drop, [("a.wav", "go", "", "")])
        return drop, "manifest.csv: line 2 has no speaker"
    if case == "listed twice":
        write_manifest(drop, [("a.wav", "go", "1", ""), ("a.wav", "stop", "1", "")])
        return drop, "manifest.csv: line 3 lists 'a.wav' again"
    if case == "manifest outside":
        write_manifest(tmp_path, [("a.wav", "go", "1", "")])
        (drop / "manifest.csv").symlink_to(tmp_path / "manifest.csv")
        return drop, "manifest.csv: leads outside the drop"
    if case == "line names no file":
        chapter = drop / "9" / "4"
        chapter.mkdir(parents=True)
        sf.write(chapter / "9-4-0000.flac", voice(1.0, 2), RATE)
        (chapter / "9-4.trans.txt").write_text("9-4-0000 GO\n9-4-0001 STOP\n")
        return drop, "9-4.trans.txt: line 2 names 9-4-0001"
    (drop / "a.wav").unlink()  # "no audio"
    (drop / "README.txt").write_text("recorded in the lab\n")
    return drop, "drop: no audio files"


@pytest.mark.parametrize("case", ["not a folder", "missing columns", "unknown split", "no speaker", "listed twice",
                                  "manifest outside", "line names no file", "no audio"])
def test_a_drop_unusable_as_a_whole_is_a_drop_error_naming_the_file(tmp_path: Path, case: str) -> None:
    drop, message = unusable(tmp_path, case)
    with pytest.raises(DropError) as raised:
        read(drop)
    assert message in str(raised.value) and "\n" not in str(raised.value)


def test_held_utterances_are_hashed_with_their_speakers_split(held: Path, tmp_path: Path) -> None:
    hashes, speakers, words = held_utterances([held, tmp_path / "not yet ingested"], SUBSETS)
    assert hashes == {hashlib.sha256(p.read_bytes()).hexdigest() for p in held.rglob("*.flac")} and len(hashes) == 3
    assert speakers == {"100": "training", "200": "testing"}
    assert words == {"turn", "left", "go", "up"}  # the test transcripts are not the lexicon's


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_written_utterances_add_to_a_hard_linked_tree_without_touching_the_live_one(tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    for drop in (first, second):
        drop.mkdir()
    sf.write(first / "a.wav", voice(1.0, 1, 22050), 22050)
    sf.write(first / "b.wav", np.stack([voice(1.0, 2), voice(1.0, 3)], axis=1), RATE)  # stereo
    sf.write(first / "c.flac", voice(1.0, 4), RATE)
    sf.write(first / "d.wav", voice(1.0, 5), RATE)
    write_manifest(first, [("a.wav", "turn left", "500", "training"), ("b.wav", "go up", "500", "training"),
                           ("c.flac", "go down", "501", "validation"), ("d.wav", "stop", "502", "testing")])
    sf.write(second / "e.wav", voice(1.0, 6), RATE)
    sf.write(second / "f.wav", voice(1.0, 7), RATE)
    write_manifest(second, [("e.wav", "turn right", "500", "training"),
                            ("f.wav", "lights off", "../../escape", "training")])
    live = tmp_path / "domains" / "lab"
    write_transcribed_files(live, read(first), RATE, SUBSETS)
    before = tree_bytes(live)
    staging = tmp_path / "domains" / ".lab.staging"
    shutil.copytree(live, staging, copy_function=os.link)

    write_transcribed_files(staging, read(second), RATE, SUBSETS)

    assert tree_bytes(live) == before
    old = {u.id: u.text for u in index_librispeech(live / SUBSETS.training)}
    assert old == {"500-1-0000": "turn left", "500-1-0001": "go up"}
    new = {u.id: (u.text, u.path) for u in index_librispeech(staging / SUBSETS.training)}
    escaped = next(entry["speaker"] for entry in read(second) if entry["file"] == "f.wav")
    assert {utt: text for utt, (text, _) in new.items()} == old | {"500-2-0000": "turn right",
                                                                  f"{escaped}-1-0000": "lights off"}
    assert all(path.resolve().is_relative_to(staging.resolve()) for _, path in new.values())
    for utt, (_, path) in new.items():
        info = sf.info(path)
        assert (info.samplerate, info.channels, info.format) == (RATE, 1, "FLAC"), utt
        if utt in old:  # the staged copy of an old file is still the live file itself
            assert path.stat().st_ino == (live / path.relative_to(staging)).stat().st_ino
    assert [u.id for u in index_librispeech(staging / SUBSETS.validation)] == ["501-1-0000"]
    settings = tiny_settings(tmp_path)
    settings["asr"]["subsets"] = SUBSETS.model_dump()
    data = build_asr_data(Params.model_validate(settings), "lab", [staging])
    assert sorted(data.texts) == sorted(["turn left", "go up", "turn right", "lights off", "go down", "stop"])
