"""Synthetic drops: both layouts, every planted fault really faulty, byte-identical reruns, nothing written outside."""

from __future__ import annotations

import csv
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from components.config import Params
from components.corpus import corpus_words, plan_speakers, render_domain
from components.dataset import SPLIT_FILES, index_speech_commands, which_set
from components.drops import EXPECTATIONS, write_drop
from components.errors import EarshotError
from tests.conftest import tiny_settings

SPEAKERS = 3
SHUFFLE_SPEAKERS = 2
SPEAKER_ID = r"[0-9a-f]{8}"
SC_NAME = re.compile(rf"^[a-z]+/{SPEAKER_ID}_nohash_\d+\.wav$")
MANIFEST_NAME = re.compile(rf"^audio/{SPEAKER_ID}-[a-z]+-\d+\.wav$")


@pytest.fixture(scope="module")
def params(tmp_path_factory: pytest.TempPathFactory) -> Params:
    """Tiny params with one 4-speaker base domain: 1 validation, 1 testing and 2 training speakers to conflict with."""
    settings = tiny_settings(tmp_path_factory.mktemp("base"))
    synthesis = settings["synthesis"]
    synthesis |= {"speakers_per_domain": 4, "domains": {"studio_us": synthesis["domains"]["studio_us"]}}
    settings["dataset"]["domains"] = {"studio_us": str(Path(synthesis["out_dir"]) / "kws" / "studio_us")}
    return Params.model_validate(settings)


@pytest.fixture(scope="module")
def held(params: Params) -> Path:
    return render_domain(params, "studio_us", progress=False)


@pytest.fixture(scope="module")
def manifest_drop(params: Params, held: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("drops") / "manifest"
    return write_drop(params, "studio_us", out, speakers=SPEAKERS, faults=True, held_root=held, progress=False)


@pytest.fixture(scope="module")
def sc_drop(params: Params, held: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("drops") / "sc"
    return write_drop(params, "kitchen_caribbean", out, speakers=SPEAKERS, layout="speech_commands", faults=True,
                      held_root=held, progress=False)


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _entries(drop: Path) -> dict[str, dict[str, str]]:
    """file -> label, speaker, split, read the way ingest reads either layout."""
    if (drop / "manifest.csv").is_file():
        return {row["path"]: row for row in _rows(drop / "manifest.csv")}
    listed = {line: split for split, name in SPLIT_FILES.items() for line in (drop / name).read_text().split()}
    return {name: {"label": name.split("/")[0], "speaker": name.split("/")[1].split("_nohash_")[0],
                   "split": listed.get(name, "training")}
            for name in (p.relative_to(drop).as_posix() for p in sorted(drop.glob("*/*.wav")))}


def _faults(drop: Path) -> dict[str, str]:
    """fault kind -> the file it was planted in."""
    return {row["fault"]: row["file"] for row in _rows(drop / "faults.csv")}


def _shares(params: Params) -> tuple[float, float]:
    return params.synthesis.validation_percentage, params.synthesis.testing_percentage


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_manifest_layout(params: Params, manifest_drop: Path) -> None:
    rows = _rows(manifest_drop / "manifest.csv")
    assert list(rows[0]) == ["path", "label", "speaker", "split"]
    escape = _faults(manifest_drop)["path_escape"]
    files = {row["path"] for row in rows if row["path"] != escape}
    assert set(_files(manifest_drop)) == files | {"manifest.csv", "faults.csv"}
    assert all(MANIFEST_NAME.match(f) for f in files)
    conflict = _faults(manifest_drop)["speaker_conflict"]
    for row in rows:
        if row["path"] != conflict:
            assert row["split"] == which_set(f"{row['speaker']}_nohash_0.wav", *_shares(params))
    # One take of every corpus word per speaker, plus the three rows the faults add (two copies, one escape).
    assert len(rows) == SPEAKERS * len(corpus_words(params)) + 3
    assert {row["label"] for row in rows} == {*corpus_words(params), "banana"}


def test_speech_commands_layout(params: Params, sc_drop: Path) -> None:
    wavs = [p.relative_to(sc_drop).as_posix() for p in sc_drop.rglob("*.wav")]
    assert all(SC_NAME.match(name) for name in wavs)
    assert set(_files(sc_drop)) == {*wavs, "validation_list.txt", "testing_list.txt", "faults.csv"}
    assert {name.split("/")[0] for name in wavs} == {*corpus_words(params), "banana"}
    conflict = _faults(sc_drop)["speaker_conflict"]
    for split, name in SPLIT_FILES.items():
        for line in (sc_drop / name).read_text().split():
            assert (sc_drop / line).is_file()
            assert line == conflict or which_set(line, *_shares(params)) == split
    clips, _ = index_speech_commands(sc_drop)
    assert len({c.speaker for c in clips}) == SPEAKERS + 1  # the new speakers and the conflicting held one


@pytest.mark.parametrize("layout", ["manifest", "sc"])
def test_answer_key_names_each_fault_once(layout: str, request: pytest.FixtureRequest) -> None:
    drop = request.getfixturevalue(f"{layout}_drop")
    rows = _rows(drop / "faults.csv")
    assert list(rows[0]) == ["file", "fault", "expected_expectation"]
    kinds = [row["fault"] for row in rows]
    assert sorted(kinds) == sorted(set(EXPECTATIONS) - ({"path_escape"} if layout == "sc" else set()))
    assert all(row["expected_expectation"] == EXPECTATIONS[row["fault"]] for row in rows)
    assert len({row["file"] for row in rows}) == len(rows)
    entries = _entries(drop)
    assert all(row["file"] in entries for row in rows)


@pytest.mark.parametrize("layout", ["manifest", "sc"])
def test_planted_files_have_their_fault(
    layout: str, params: Params, held: Path, request: pytest.FixtureRequest
) -> None:
    drop = request.getfixturevalue(f"{layout}_drop")
    faults, entries = _faults(drop), _entries(drop)
    data = {kind: (drop / f).read_bytes() for kind, f in faults.items() if kind != "path_escape"}

    assert data["zero_length"] == b""
    assert data["corrupt_bytes"].startswith(b"RIFF")
    with pytest.raises(sf.LibsndfileError):
        sf.read(drop / faults["corrupt_bytes"])

    clipped, _ = sf.read(drop / faults["clipped"], dtype="int16")
    assert np.mean(np.abs(clipped.astype(np.int32)) >= 32767) > params.ingest.max_clipping_ratio

    silent, _ = sf.read(drop / faults["silent"], dtype="float32")
    assert 20 * np.log10(np.sqrt(np.mean(silent**2)) + 1e-12) < params.ingest.min_rms_dbfs

    info = sf.info(drop / faults["resampled_stereo"])
    assert (info.samplerate, info.channels) == (44100, 2)
    assert info.duration == pytest.approx(params.dataset.clip_seconds, abs=0.01)

    assert entries[faults["unknown_label"]]["label"] == "banana"

    held_splits = {c.speaker: c.split for c in index_speech_commands(held)[0]}
    conflict = entries[faults["speaker_conflict"]]
    assert conflict["speaker"] in held_splits
    assert conflict["split"] != held_splits[conflict["speaker"]]

    assert data["duplicate_held"] in {p.read_bytes() for p in held.glob("*/*.wav")}
    others = [(drop / f).read_bytes() for f in entries if f != faults["duplicate_in_drop"] and (drop / f).is_file()]
    assert data["duplicate_in_drop"] in others

    if layout == "manifest":
        assert faults["path_escape"] == "../../etc/passwd"
        assert faults["path_escape"] in entries


def test_speaker_ids_are_new(params: Params, held: Path, manifest_drop: Path, sc_drop: Path) -> None:
    conflict = _entries(manifest_drop)[_faults(manifest_drop)["speaker_conflict"]]["speaker"]
    new = {e["speaker"] for e in _entries(manifest_drop).values()} - {conflict}
    assert len(new) == SPEAKERS and all(re.fullmatch(SPEAKER_ID, s) for s in new)
    assert not new & {p.id for p in plan_speakers(params, "studio_us")}
    assert not new & {c.speaker for c in index_speech_commands(held)[0]}


def test_same_call_same_bytes_and_nothing_written_outside(
    params: Params, held: Path, manifest_drop: Path, tmp_path: Path
) -> None:
    def snapshot() -> set[tuple[str, int, int]]:
        # Folders by name only: creating `out` rightly touches its parent's mtime.
        return {(str(p), p.stat().st_size, p.stat().st_mtime_ns) if p.is_file() else (str(p), 0, 0)
                for p in tmp_path.parent.rglob("*")}

    out = tmp_path / "again"
    before = snapshot()
    write_drop(params, "studio_us", out, speakers=SPEAKERS, faults=True, held_root=held, progress=False)
    changed = snapshot() - before
    assert changed and all(Path(path).is_relative_to(out) for path, _, _ in changed)
    assert _files(out) == _files(manifest_drop)


def test_another_drop_seed_gives_another_drop(params: Params, sc_drop: Path, tmp_path: Path) -> None:
    out = write_drop(params, "kitchen_caribbean", tmp_path / "d", speakers=1, layout="speech_commands", drop_seed=2,
                     progress=False)
    assert not {e["speaker"] for e in _entries(out).values()} & {e["speaker"] for e in _entries(sc_drop).values()}
    assert not {p.read_bytes() for p in out.rglob("*.wav")} & {p.read_bytes() for p in sc_drop.rglob("*.wav")}
    assert not (out / "faults.csv").exists()


def _labels_by_audio(drop: Path) -> dict[bytes, tuple[str, str]]:
    """audio bytes -> (speaker, label): a clip is known by its sound, whatever name its label gave the file."""
    return {(drop / name).read_bytes(): (e["speaker"], e["label"]) for name, e in _entries(drop).items()}


@pytest.mark.parametrize("layout", ["manifest", "speech_commands"])
def test_shuffled_labels_keep_the_files_and_label_mix_but_mislabel_most(
    params: Params, tmp_path: Path, layout: str
) -> None:
    def labels(name: str, shuffled: bool) -> dict[bytes, tuple[str, str]]:
        drop = write_drop(params, "studio_us", tmp_path / name, speakers=SHUFFLE_SPEAKERS, layout=layout,
                          shuffled_labels=shuffled, progress=False)
        return _labels_by_audio(drop)

    plain, shuffled = labels("plain", False), labels("shuffled", True)
    assert len(plain) == SHUFFLE_SPEAKERS * len(corpus_words(params))  # every clip's audio is unique
    assert shuffled.keys() == plain.keys()
    # Each speaker still says every corpus word once, so the label shares of every split are unchanged.
    assert Counter(shuffled.values()) == Counter(plain.values())
    # In the Speech Commands layout the label is the folder, so this also shows the file moved with its label.
    assert sum(shuffled[audio] != plain[audio] for audio in plain) > len(plain) / 2


def test_shuffled_drop_is_byte_identical_when_rewritten(params: Params, held: Path, tmp_path: Path) -> None:
    first, second = (write_drop(params, "studio_us", tmp_path / name, speakers=SHUFFLE_SPEAKERS, faults=True,
                                held_root=held, shuffled_labels=True, progress=False) for name in ("a", "b"))
    assert _files(first) == _files(second)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"domain": "moon_base"}, "not in synthesis.domains"),
        ({"faults": True}, "need held_root"),
        ({"faults": ["speaker_conflict"]}, "need held_root"),
        ({"faults": ["path_escape"], "layout": "speech_commands"}, "only the manifest layout"),
        ({"faults": ["gremlins"]}, "unknown"),
        ({"layout": "zip"}, "layout 'zip'"),
        ({"speakers": 0}, "at least one speaker"),
    ],
)
def test_bad_arguments_are_refused_before_writing(
    params: Params, tmp_path: Path, kwargs: dict, message: str
) -> None:
    call = {"domain": "studio_us", "speakers": 1} | kwargs
    domain = call.pop("domain")
    with pytest.raises(EarshotError, match=message) as err:
        write_drop(params, domain, tmp_path / "drop", progress=False, **call)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "drop").exists()


def test_refuses_more_faults_than_task_word_clips(params: Params, tmp_path: Path) -> None:
    dataset = params.dataset.model_dump() | {"words": ["yes", "no"]}
    two_words = Params.model_validate(params.model_dump() | {"dataset": dataset})
    with pytest.raises(EarshotError, match="use more speakers"):
        write_drop(two_words, "studio_us", tmp_path / "drop", speakers=2, faults=True, held_root=tmp_path,
                   progress=False)
    assert not (tmp_path / "drop").exists()


def test_refuses_a_folder_that_is_not_empty(params: Params, tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("mine\n")
    with pytest.raises(EarshotError, match="not an empty folder"):
        write_drop(params, "studio_us", tmp_path, speakers=1, progress=False)
    assert _files(tmp_path) == {"keep.txt": b"mine\n"}
