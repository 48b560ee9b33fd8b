"""UrbanSound8K and ESC-50 readers on folders written like the real ones, their one-line errors, and the fold split."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import soundfile as sf

from components.errors import EarshotError
from components.tracks.esc.events import (
    ESC50_COLUMNS,
    ESC50_CSV,
    URBANSOUND8K_COLUMNS,
    URBANSOUND8K_CSV,
    SoundClip,
    check_sources_disjoint,
    folds_split,
    load_esc50,
    load_urbansound8k,
)
from tests.conftest import tone

RATE = 22050

# Rows as in the real UrbanSound8K.csv: two slices of one source, sources in several folds, both saliences.
US8K_ROWS = [
    ["100032-3-0-0.wav", "100032", "0.0", "0.317551", "1", "5", "3", "dog_bark"],
    ["100263-2-0-117.wav", "100263", "58.5", "62.5", "1", "5", "2", "children_playing"],
    ["100263-2-0-121.wav", "100263", "60.5", "64.5", "1", "5", "2", "children_playing"],
    ["100648-1-0-0.wav", "100648", "4.823402", "5.471927", "2", "10", "1", "car_horn"],
    ["101415-3-0-2.wav", "101415", "1.0", "5.0", "1", "1", "3", "dog_bark"],
    ["102305-6-0-0.wav", "102305", "0.0", "2.61161", "1", "1", "6", "gun_shot"],
]
# Rows as in the real esc50.csv: the file name is {fold}-{src_file}-{take}-{target}.wav.
ESC50_ROWS = [
    ["1-100032-A-0.wav", "1", "0", "dog", "True", "100032", "A"],
    ["1-100038-A-14.wav", "1", "14", "chirping_birds", "False", "100038", "A"],
    ["2-100648-A-43.wav", "2", "43", "car_horn", "False", "100648", "A"],
    ["5-9032-A-0.wav", "5", "0", "dog", "True", "9032", "A"],
    ["5-9032-B-0.wav", "5", "0", "dog", "True", "9032", "B"],
]


def _write_csv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as file:
        csv.writer(file).writerows([header, *rows])


def write_urbansound8k(root: Path, rows: list[list[str]] = US8K_ROWS, header: list[str] | None = None) -> Path:
    """An UrbanSound8K folder: metadata CSV, each slice a short tone in audio/fold{fold}/, and the README beside."""
    for n, row in enumerate(rows):
        folder = root / "audio" / f"fold{row[5]}"
        folder.mkdir(parents=True, exist_ok=True)
        sf.write(folder / row[0], tone(300 + 40 * n, 0.2, RATE), RATE, subtype="PCM_16")
    _write_csv(root / "metadata" / "UrbanSound8K.csv", header or list(URBANSOUND8K_COLUMNS), rows)
    (root / "UrbanSound8K_README.txt").write_text("not metadata, as in the real dataset\n")
    return root


def write_esc50(root: Path, rows: list[list[str]] = ESC50_ROWS, header: list[str] | None = None) -> Path:
    (root / "audio").mkdir(parents=True, exist_ok=True)
    for n, row in enumerate(rows):
        sf.write(root / "audio" / row[0], tone(300 + 40 * n, 0.2, 44100), 44100, subtype="PCM_16")
    _write_csv(root / "meta" / "esc50.csv", header or list(ESC50_COLUMNS), rows)
    return root


def test_reads_urbansound8k_rows_in_order(tmp_path: Path) -> None:
    clips = load_urbansound8k(write_urbansound8k(tmp_path))
    assert [c.path.name for c in clips] == [row[0] for row in US8K_ROWS]
    assert clips[3] == SoundClip(tmp_path / "audio" / "fold10" / "100648-1-0-0.wav", 10, 1, "car_horn", "100648", 2)
    assert {c.source for c in clips if c.label_name == "children_playing"} == {"100263"}
    assert all(c.path.is_file() for c in clips)


def test_reads_esc50_rows_with_src_file_as_source(tmp_path: Path) -> None:
    clips = load_esc50(write_esc50(tmp_path))
    assert clips[0] == SoundClip(tmp_path / "audio" / "1-100032-A-0.wav", 1, 0, "dog", "100032", None)
    assert [c.fold for c in clips] == [1, 1, 2, 5, 5]
    assert clips[3].source == clips[4].source == "9032"


def test_columns_in_another_order_still_read(tmp_path: Path) -> None:
    order = [7, 6, 5, 4, 3, 2, 1, 0]
    header = [URBANSOUND8K_COLUMNS[i] for i in order]
    root = write_urbansound8k(tmp_path)
    expected = load_urbansound8k(root)
    _write_csv(root / "metadata" / "UrbanSound8K.csv", header, [[row[i] for i in order] for row in US8K_ROWS])
    assert load_urbansound8k(root) == expected


def _replace(rows: list[list[str]], index: int, column: int, value: str) -> list[list[str]]:
    changed = [list(row) for row in rows]
    changed[index][column] = value
    return changed


BAD_ROWS = {
    "us8k non-integer fold": (_replace(US8K_ROWS, 1, 5, "five"), "line 3: fold 'five' is not an integer"),
    "us8k fold above ten": (_replace(US8K_ROWS, 0, 5, "11"), "line 2: fold 11 is outside 1..10"),
    "us8k fold zero": (_replace(US8K_ROWS, 0, 5, "0"), "line 2: fold 0 is outside 1..10"),
    "us8k salience three": (_replace(US8K_ROWS, 4, 4, "3"), "line 6: salience 3 is outside 1..2"),
    "us8k non-integer class id": (_replace(US8K_ROWS, 2, 6, "2.0"), "line 4: classID '2.0' is not an integer"),
    "us8k id named twice": (_replace(US8K_ROWS, 4, 7, "siren"), "line 6 names class id 3 'siren', line 2 'dog_bark'"),
    "us8k name with two ids": (_replace(US8K_ROWS, 4, 6, "8"), "line 6 gives class 'dog_bark' id 8, line 2 id 3"),
    "us8k empty fsID": (_replace(US8K_ROWS, 5, 1, ""), "line 7: empty fsID or class"),
    "esc50 fold six": (_replace(ESC50_ROWS, 2, 1, "6"), "line 4: fold 6 is outside 1..5"),
    "esc50 non-integer fold": (_replace(ESC50_ROWS, 0, 1, ""), "line 2: fold '' is not an integer"),
    "esc50 id named twice": (_replace(ESC50_ROWS, 3, 3, "rooster"), "line 5 names class id 0 'rooster', line 2 'dog'"),
    "esc50 non-integer target": (_replace(ESC50_ROWS, 1, 2, "x"), "line 3: target 'x' is not an integer"),
}
# The layout a case's name starts with: how to write it, how to load it, where its CSV sits.
LAYOUTS = {"us8k": (write_urbansound8k, load_urbansound8k, URBANSOUND8K_CSV),
           "esc50": (write_esc50, load_esc50, ESC50_CSV)}


@pytest.mark.parametrize("case", BAD_ROWS)
def test_bad_rows_fail_in_one_line_naming_the_file(tmp_path: Path, case: str) -> None:
    rows, message = BAD_ROWS[case]
    write, load, csv_file = LAYOUTS[case.split()[0]]
    root = write(tmp_path, rows)
    with pytest.raises(EarshotError) as error:
        load(root)
    text = str(error.value)
    assert "\n" not in text and text.startswith(str(root / csv_file))
    assert message in text


def test_missing_metadata_file(tmp_path: Path) -> None:
    with pytest.raises(EarshotError, match="UrbanSound8K.csv: no such metadata file"):
        load_urbansound8k(tmp_path)
    with pytest.raises(EarshotError, match="esc50.csv: no such metadata file"):
        load_esc50(tmp_path)


def test_missing_and_extra_columns(tmp_path: Path) -> None:
    header = [c for c in URBANSOUND8K_COLUMNS if c != "salience"] + ["comment"]
    root = write_urbansound8k(tmp_path / "us8k", header=header)
    with pytest.raises(EarshotError, match=r"columns missing \['salience'\], unexpected \['comment'\]"):
        load_urbansound8k(root)
    root = write_esc50(tmp_path / "esc50", [row[:-1] for row in ESC50_ROWS], header=list(ESC50_COLUMNS[:-1]))
    with pytest.raises(EarshotError, match=r"columns missing \['take'\], unexpected \[\]"):
        load_esc50(root)
    root = write_esc50(tmp_path / "twice", [[*row, "1"] for row in ESC50_ROWS], header=[*ESC50_COLUMNS, "fold"])
    with pytest.raises(EarshotError, match=r"columns missing \[\], unexpected \[\]; expected .* once each"):
        load_esc50(root)


def test_a_row_with_too_few_or_too_many_fields(tmp_path: Path) -> None:
    root = write_urbansound8k(tmp_path / "short", [*US8K_ROWS[:2], US8K_ROWS[2][:-1]])
    with pytest.raises(EarshotError, match="line 4 does not have 8 fields"):
        load_urbansound8k(root)
    root = write_esc50(tmp_path / "long", [ESC50_ROWS[0] + ["extra"]])
    with pytest.raises(EarshotError, match="line 2 does not have 7 fields"):
        load_esc50(root)


def test_an_empty_metadata_file(tmp_path: Path) -> None:
    with pytest.raises(EarshotError, match="lists no audio files"):
        load_esc50(write_esc50(tmp_path, []))


def test_a_listed_file_that_does_not_exist(tmp_path: Path) -> None:
    root = write_urbansound8k(tmp_path / "us8k")
    (root / "audio" / "fold1" / "102305-6-0-0.wav").unlink()
    with pytest.raises(EarshotError, match=r"line 7: listed audio file .*fold1/102305-6-0-0.wav does not exist"):
        load_urbansound8k(root)
    # Real fold, wrong folder: the file is only found where its fold says.
    root = write_urbansound8k(tmp_path / "moved")
    (root / "audio" / "fold5" / "100032-3-0-0.wav").rename(root / "audio" / "fold1" / "100032-3-0-0.wav")
    with pytest.raises(EarshotError, match="line 2: listed audio file .*fold5/100032-3-0-0.wav does not exist"):
        load_urbansound8k(root)


@pytest.mark.parametrize("name", ["../outside.wav", "../../outside.wav", "/tmp/outside.wav", "sub/x.wav",
                                  "..\\outside.wav", "..", ""])
def test_a_path_leading_out_of_the_dataset_is_refused_even_if_the_file_exists(tmp_path: Path, name: str) -> None:
    (tmp_path / "outside.wav").write_bytes(b"RIFF")
    (tmp_path / "audio").mkdir()
    (tmp_path / "audio" / "outside.wav").write_bytes(b"RIFF")
    root = write_esc50(tmp_path / "esc50", ESC50_ROWS[:1])
    _write_csv(root / "meta" / "esc50.csv", list(ESC50_COLUMNS), [ESC50_ROWS[0], [name, *ESC50_ROWS[1][1:]]])
    with pytest.raises(EarshotError, match=f"line 3: {name!r} is not a file name inside audio/".replace("\\", "\\\\")):
        load_esc50(root)


def test_the_same_file_listed_twice(tmp_path: Path) -> None:
    root = write_urbansound8k(tmp_path, [*US8K_ROWS, US8K_ROWS[0]])
    with pytest.raises(EarshotError, match="line 8 lists 100032-3-0-0.wav again"):
        load_urbansound8k(root)


def test_folds_split_is_fold_cross_validation(tmp_path: Path) -> None:
    clips = load_urbansound8k(write_urbansound8k(tmp_path))
    tested = []
    for fold in sorted({c.fold for c in clips}):
        train, test = folds_split(clips, fold)
        assert {c.fold for c in test} == {fold} and fold not in {c.fold for c in train}
        assert sorted(train + test, key=clips.index) == clips
        assert not {c.source for c in train} & {c.source for c in test}
        tested += test
    assert sorted(tested, key=clips.index) == clips  # every clip is tested exactly once


def test_a_source_on_both_sides_is_refused(tmp_path: Path) -> None:
    # fsID 100263 cut by clip, not by source: one of its slices moved to fold 1.
    rows = _replace(US8K_ROWS, 2, 5, "1")
    clips = load_urbansound8k(write_urbansound8k(tmp_path, rows))
    for fold in (1, 5):
        with pytest.raises(EarshotError, match="source 100263 is in both training and test folds"):
            folds_split(clips, fold)
    train, test = folds_split(clips, 10)
    check_sources_disjoint(train, test)
    with pytest.raises(EarshotError, match="100263-2-0-121.wav: source 100263"):
        check_sources_disjoint(clips[:2], clips[2:3])


def test_a_fold_without_clips_is_refused(tmp_path: Path) -> None:
    clips = load_urbansound8k(write_urbansound8k(tmp_path))
    with pytest.raises(EarshotError, match=r"fold 3 holds no clip; folds present: \[1, 5, 10\]"):
        folds_split(clips, 3)
