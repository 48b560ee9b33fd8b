"""Readers of the UrbanSound8K and ESC-50 layouts, and the fold split their protocols prescribe.

Both datasets put every slice of one source recording in one fold, so scores are fold-wise cross-validation;
a random split would let slices of one recording sit on both sides and overstate accuracy.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

from components.errors import EarshotError

URBANSOUND8K_CSV = Path("metadata/UrbanSound8K.csv")
URBANSOUND8K_COLUMNS = ("slice_file_name", "fsID", "start", "end", "salience", "fold", "classID", "class")
URBANSOUND8K_FOLDS = 10
ESC50_CSV = Path("meta/esc50.csv")
ESC50_COLUMNS = ("filename", "fold", "target", "category", "esc10", "src_file", "take")
ESC50_FOLDS = 5
# UrbanSound8K's salience: the event is in the foreground (1) or the background (2) of the recording.
SALIENCES = range(1, 3)


class SoundDatasetError(EarshotError):
    """A sound-event dataset folder, metadata row or split that cannot be used, with a one-line reason."""


@dataclass(frozen=True)
class SoundClip:
    """One labelled audio file; `source` is the recording it was cut from (fsID, src_file), shared by its slices."""

    path: Path
    fold: int
    label: int
    label_name: str
    source: str
    salience: int | None


def _rows(csv_path: Path, columns: Sequence[str]) -> Iterator[tuple[int, dict[str, str]]]:
    """(line number, row) of a metadata CSV whose header holds exactly `columns`, every row complete."""
    if not csv_path.is_file():
        raise SoundDatasetError(f"{csv_path}: no such metadata file")
    with csv_path.open(newline="", encoding="utf-8-sig") as file:
        reader = csv.DictReader(file)
        header = reader.fieldnames or []
        missing, extra = [c for c in columns if c not in header], [c for c in header if c not in columns]
        if missing or extra or len(set(header)) != len(header):
            raise SoundDatasetError(
                f"{csv_path}: columns missing {missing}, unexpected {extra}; expected {list(columns)} once each"
            )
        for row in reader:
            if None in row or None in row.values():
                raise SoundDatasetError(f"{csv_path}: line {reader.line_num} does not have {len(columns)} fields")
            yield reader.line_num, {key: value.strip() for key, value in row.items()}


def _integer(value: str, column: str, where: str, allowed: range | None = None) -> int:
    try:
        number = int(value)
    except ValueError:
        raise SoundDatasetError(f"{where}: {column} {value!r} is not an integer") from None
    if allowed is not None and number not in allowed:
        raise SoundDatasetError(f"{where}: {column} {number} is outside {allowed.start}..{allowed.stop - 1}")
    return number


def _audio_file(root: Path, folder: Path, name: str, where: str) -> Path:
    """root/folder/name, refused unless `name` is a bare file name: a listed path must never lead outside root."""
    bare = PurePosixPath(name).name == name and PureWindowsPath(name).name == name and name not in ("", ".", "..")
    if not bare:
        raise SoundDatasetError(f"{where}: {name!r} is not a file name inside {folder.as_posix()}/")
    path = root / folder / name
    if not path.is_file():
        raise SoundDatasetError(f"{where}: listed audio file {path} does not exist")
    return path


def _check_labels(clips: list[SoundClip], csv_path: Path, lines: list[int]) -> None:
    """Each class id must go with one class name and each name with one id across the whole file."""
    name_of: dict[int, tuple[str, int]] = {}
    id_of: dict[str, tuple[int, int]] = {}
    for clip, line in zip(clips, lines, strict=True):
        name, name_line = name_of.setdefault(clip.label, (clip.label_name, line))
        label, label_line = id_of.setdefault(clip.label_name, (clip.label, line))
        if name != clip.label_name:
            raise SoundDatasetError(
                f"{csv_path}: line {line} names class id {clip.label} {clip.label_name!r}, line {name_line} {name!r}"
            )
        if label != clip.label:
            raise SoundDatasetError(
                f"{csv_path}: line {line} gives class {clip.label_name!r} id {clip.label}, line {label_line} id {label}"
            )


def _finish(clips: list[SoundClip], csv_path: Path, lines: list[int]) -> list[SoundClip]:
    if not clips:
        raise SoundDatasetError(f"{csv_path}: lists no audio files")
    _check_labels(clips, csv_path, lines)
    seen: dict[Path, int] = {}
    for clip, line in zip(clips, lines, strict=True):
        if (first := seen.setdefault(clip.path, line)) != line:
            raise SoundDatasetError(f"{csv_path}: line {line} lists {clip.path.name} again (first on line {first})")
    return clips


def load_urbansound8k(root: Path) -> list[SoundClip]:
    """Every slice of an UrbanSound8K folder (metadata/UrbanSound8K.csv, audio/fold1..fold10/), in CSV order.

    Every row is checked, and its audio file must exist, so a half-copied dataset fails here naming the row.
    """
    root = Path(root)
    csv_path = root / URBANSOUND8K_CSV
    clips, lines = [], []
    for line, row in _rows(csv_path, URBANSOUND8K_COLUMNS):
        where = f"{csv_path}: line {line}"
        fold = _integer(row["fold"], "fold", where, range(1, URBANSOUND8K_FOLDS + 1))
        if not row["fsID"] or not row["class"]:
            raise SoundDatasetError(f"{where}: empty fsID or class")
        clips.append(SoundClip(
            path=_audio_file(root, Path("audio") / f"fold{fold}", row["slice_file_name"], where),
            fold=fold,
            label=_integer(row["classID"], "classID", where),
            label_name=row["class"],
            source=row["fsID"],
            salience=_integer(row["salience"], "salience", where, SALIENCES),
        ))
        lines.append(line)
    return _finish(clips, csv_path, lines)


def load_esc50(root: Path) -> list[SoundClip]:
    """Every clip of an ESC-50 folder (meta/esc50.csv, audio/), in CSV order; the source is `src_file`.

    Checked as strictly as UrbanSound8K; ESC-50 has no salience, so it is None.
    """
    root = Path(root)
    csv_path = root / ESC50_CSV
    clips, lines = [], []
    for line, row in _rows(csv_path, ESC50_COLUMNS):
        where = f"{csv_path}: line {line}"
        if not row["src_file"] or not row["category"]:
            raise SoundDatasetError(f"{where}: empty src_file or category")
        clips.append(SoundClip(
            path=_audio_file(root, Path("audio"), row["filename"], where),
            fold=_integer(row["fold"], "fold", where, range(1, ESC50_FOLDS + 1)),
            label=_integer(row["target"], "target", where),
            label_name=row["category"],
            source=row["src_file"],
            salience=None,
        ))
        lines.append(line)
    return _finish(clips, csv_path, lines)


def check_sources_disjoint(train: Sequence[SoundClip], test: Sequence[SoundClip]) -> None:
    """Raise if any source recording has a clip on both sides: its slices would leak the test set into training."""
    shared = sorted({clip.source for clip in train} & {clip.source for clip in test})
    if shared:
        example = next(clip for clip in test if clip.source == shared[0])
        raise SoundDatasetError(
            f"{example.path}: source {shared[0]} is in both training and test folds ({len(shared)} shared sources)"
        )


def folds_split(clips: Sequence[SoundClip], test_fold: int) -> tuple[list[SoundClip], list[SoundClip]]:
    """(train, test) for one round of fold cross-validation: test is `test_fold`, train every other fold.

    The split is checked for shared sources, so a dataset whose folds were cut by clip rather than by source fails.
    """
    test = [clip for clip in clips if clip.fold == test_fold]
    if not test:
        raise SoundDatasetError(f"fold {test_fold} holds no clip; folds present: {sorted({c.fold for c in clips})}")
    train = [clip for clip in clips if clip.fold != test_fold]
    check_sources_disjoint(train, test)
    return train, test
