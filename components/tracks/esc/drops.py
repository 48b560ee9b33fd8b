"""Drops of a new acoustic domain for the sound-event track: folder-per-class, UrbanSound8K or ESC-50 layouts.

Each clip keeps its source recording (fsID, src_file, or a file's name up to its first '-'), which the shared drop
checks read as the speaker: a source stays in one fold, so fold cross-validation never hears one recording on both
sides. Accepted clips are published in the UrbanSound8K layout.
"""

from __future__ import annotations

import csv
import hashlib
import io
from collections.abc import Callable
from functools import cache
from pathlib import Path

import numpy as np
import soundfile as sf

from components.config import Params
from components.errors import EarshotError
from components.files import contained_file, write_csv
from components.ingest import DropError, DropKind, checked_drop, ingested_domains, normalised_wav, stored_id
from components.tracks.esc.corpus import CLASSES, DOMAINS_CSV, source_domains, synthesize_urbansound
from components.tracks.esc.events import (
    ESC50_CSV,
    ESC50_FOLDS,
    URBANSOUND8K_COLUMNS,
    URBANSOUND8K_CSV,
    URBANSOUND8K_FOLDS,
    SoundClip,
    SoundDatasetError,
    load_esc50,
    load_urbansound8k,
)
from components.validate import validate_drop

LOADERS: dict[str, Callable[[Path], list[SoundClip]]] = {"urbansound8k": load_urbansound8k, "esc50": load_esc50}
LAYOUT_FOLDS = {"urbansound8k": URBANSOUND8K_FOLDS, "esc50": ESC50_FOLDS}
METADATA_FILES = {URBANSOUND8K_CSV: load_urbansound8k, ESC50_CSV: load_esc50}
# A drop's own salience is unknown outside UrbanSound8K; its column must hold 1 (foreground) or 2.
SALIENCE = 1


def source_fold(source: str, folds: int) -> int:
    """The fold a new source lands in, drawn from its name: the same source always lands in the same fold."""
    return 1 + int(hashlib.sha1(source.encode()).hexdigest(), 16) % folds


def read_sound_drop(drop: Path, folds: int, held_folds: dict[str, str]) -> list[dict]:
    """The entries of a drop (see DropKind), from its UrbanSound8K or ESC-50 metadata or its folder-per-class layout.

    A source already held keeps its fold; a listed fold must lie in 1..folds, the protocol of the track's dataset.
    """
    drop = checked_drop(drop, METADATA_FILES)
    listed = next((load for name, load in METADATA_FILES.items() if (drop / name).is_file()), None)
    try:
        entries = _listed_entries(drop, listed(drop), folds) if listed else _class_folder_entries(drop)
    except SoundDatasetError as err:
        raise DropError(str(err)) from None
    if not entries:
        raise DropError(f"{drop}: no audio files (expected <class>/<source>-<n>.wav, {URBANSOUND8K_CSV} or "
                        f"{ESC50_CSV})")
    for entry in entries:
        entry["path"], entry["path_error"] = contained_file(drop, drop / entry["file"])
        entry["split"] = entry["split"] or held_folds.get(entry["speaker"]) or str(source_fold(entry["speaker"],
                                                                                               folds))
    return entries


def _listed_entries(drop: Path, clips: list[SoundClip], folds: int) -> list[dict]:
    outside = next((clip for clip in clips if clip.fold > folds), None)
    if outside is not None:
        raise DropError(f"{outside.path}: fold {outside.fold} is outside the track's folds 1..{folds}")
    return [{"file": clip.path.relative_to(drop).as_posix(), "label": clip.label_name,
             "speaker": stored_id(clip.source), "split": str(clip.fold)} for clip in clips]


def _class_folder_entries(drop: Path) -> list[dict]:
    """<class>/<source>-<anything>.<ext>: every file of every class folder, its source its name up to the first '-'."""
    return [{"file": path.relative_to(drop).as_posix(), "label": path.parent.name,
             "speaker": stored_id(path.stem.split("-", 1)[0]), "split": ""}
            for folder in sorted(p for p in drop.iterdir() if p.is_dir() and not p.name.startswith("."))
            for path in sorted(folder.iterdir()) if not path.name.startswith(".") and not path.is_dir()]


def clip_domains(root: Path, clips: list[SoundClip], layout: str) -> list[str]:
    """Each clip's acoustic domain: from metadata/domains.csv of a synthesized corpus, else the dataset's name."""
    if not (root / DOMAINS_CSV).is_file():
        return [layout] * len(clips)
    by_source = source_domains(root)
    missing = sorted({clip.source for clip in clips} - set(by_source))
    if missing:
        raise EarshotError(f"{root / DOMAINS_CSV}: no domain for source {missing[0]} ({len(missing)} missing)")
    return [by_source[clip.source] for clip in clips]


def sound_dataset(params: Params) -> tuple[list[SoundClip], list[str]]:
    """Every clip the track trains on and its acoustic domain: the dataset of esc.layout under esc.root, every row
    checked, then each domain that drops were ingested into."""
    esc = params.esc
    clips = LOADERS[esc.layout](esc.root)
    domains = clip_domains(esc.root, clips, esc.layout)
    for name, tree in ingested_domains(esc.ingest.root).items():
        ingested = load_urbansound8k(tree)
        clips, domains = clips + ingested, domains + [name] * len(ingested)
    return clips, domains


def held_sounds(params: Params) -> tuple[list[SoundClip], set[str], dict[str, str]]:
    """Every clip the track holds (see sound_dataset), their content hashes, and source -> fold."""
    if not Path(params.esc.root).is_dir():
        raise DropError(f"{params.esc.root}: no sound dataset to add a domain to yet (run `earshot synthesize` or "
                        "point esc.root at one)")
    clips, _ = sound_dataset(params)
    hashes = {hashlib.sha256(clip.path.read_bytes()).hexdigest() for clip in clips}
    return clips, hashes, {stored_id(clip.source): str(clip.fold) for clip in clips}


def sound_drops(params: Params) -> DropKind:
    """Sound-event drops: checked on their audio, against the dataset's classes and the folds of held sources."""
    esc = params.esc
    held = cache(lambda: held_sounds(params))
    class_ids = cache(lambda: {clip.label_name: clip.label for clip in held()[0]})
    return DropKind(
        track="esc",
        cfg=esc.ingest,
        read=lambda drop: read_sound_drop(drop, LAYOUT_FOLDS[esc.layout], held()[2]),
        held=lambda: held()[1:],
        validate=lambda facts, docs: validate_drop(facts, esc.ingest, set(class_ids()), sorted(class_ids()), docs),
        write=lambda staging, accepted: write_urbansound(staging, accepted, esc.sample_rate, class_ids()))


def write_urbansound(staging: Path, accepted: list[dict], sample_rate: int, class_ids: dict[str, int]) -> None:
    """Add accepted clips to an UrbanSound8K tree: audio/fold<n>/<source>-<classID>-<take>-0.wav and its metadata
    rows (start 0, salience 1)."""
    metadata = staging / URBANSOUND8K_CSV
    rows = list(csv.DictReader(metadata.open(newline=""))) if metadata.is_file() else []
    for entry in accepted:
        folder = staging / "audio" / f"fold{entry['split']}"
        folder.mkdir(parents=True, exist_ok=True)
        source, class_id = entry["speaker"], class_ids[entry["label"]]
        take = sum(1 for _ in folder.glob(f"{source}-*.wav"))
        name = f"{source}-{class_id}-{take}-0.wav"
        audio = normalised_wav(entry["path"], sample_rate)
        (folder / name).write_bytes(audio)
        seconds = sf.info(io.BytesIO(audio)).duration
        rows.append({"slice_file_name": name, "fsID": source, "start": 0, "end": round(seconds, 6),
                     "salience": SALIENCE, "fold": entry["split"], "classID": class_id, "class": entry["label"]})
    rows.sort(key=lambda row: row["slice_file_name"])  # by file name, as the real CSV is
    # Written atomically, a new file: the staged metadata may be a hard link to the live one.
    write_csv(metadata, rows, list(URBANSOUND8K_COLUMNS))


def write_sound_drop(params: Params, domain: str, folder: Path, clips_per_class: int, seed: int,
                     mislabeled: bool = False) -> list[SoundClip]:
    """A drop of the ten procedural classes heard in the recipe esc.corpus.drop_domains[domain], in the UrbanSound8K
    layout; mislabeled: each source listed under one other class, drawn by `seed`, as a careless vendor might."""
    corpus = params.esc.corpus
    if domain not in corpus.drop_domains:
        raise EarshotError(f"{domain!r}: no recipe in esc.corpus.drop_domains ({', '.join(corpus.drop_domains)})")
    clips = synthesize_urbansound(folder, clips_per_class=clips_per_class, sample_rate=corpus.sample_rate, seed=seed,
                                  domains={domain: corpus.drop_domains[domain]},
                                  max_slices_per_source=corpus.max_slices_per_source)
    if mislabeled:
        rng = np.random.default_rng(seed)
        rows = list(csv.DictReader((folder / URBANSOUND8K_CSV).open(newline="")))
        wrong: dict[str, int] = {}
        for row in rows:
            class_id = wrong.setdefault(row["fsID"], (int(row["classID"]) + int(rng.integers(1, len(CLASSES))))
                                        % len(CLASSES))
            row |= {"classID": class_id, "class": CLASSES[class_id]}
        write_csv(folder / URBANSOUND8K_CSV, rows, list(URBANSOUND8K_COLUMNS))
        clips = load_urbansound8k(folder)
    return clips
