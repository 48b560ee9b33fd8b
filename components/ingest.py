"""Ingestion of a drop of new recordings into a versioned acoustic domain, with validation and a quarantine.

Originals are only read. Accepted files are normalised into a staged copy of the domain tree that replaces the
old tree in one rename, so a crash leaves the dataset at its old version; rejects are copied to a quarantine.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf

from components.config import Ingest, Params
from components.dataset import (
    BACKGROUND_DIR,
    SPLIT_FILES,
    index_speech_commands,
    read_audio,
    to_int16,
    which_set,
)
from components.errors import EarshotError
from components.files import contained_file, write_csv, write_text_atomically
from components.validate import ValidationReport, facts_frame, validate_drop

MANIFEST = "manifest.csv"
LEDGER = "drops.csv"
LEDGER_FIELDS = ["drop_id", "domain", "source", "accepted", "rejected", "data_version", "ingested_at"]


class DropError(EarshotError):
    """A drop that cannot be used as a whole: nothing is ingested."""


@dataclass(frozen=True)
class IngestReport:
    drop_id: str
    domain: str
    accepted: int
    rejected: int
    data_version: str
    already_ingested: bool
    quarantine: Path | None
    docs_dir: Path | None
    validation: ValidationReport | None
    drop_rejected: str = ""  # why the drop failed as a whole; nothing was published then


def checked_drop(drop: Path, index_files: Iterable[str | Path]) -> Path:
    """`drop` as a folder whose index files (manifest, metadata, split lists: what a layout reads before any audio)
    lie inside it where they exist; DropError naming the file otherwise."""
    drop = Path(drop)
    if not drop.is_dir():
        raise DropError(f"{drop}: not a folder")
    for name in index_files:
        target, why = contained_file(drop, drop / name)
        if target is None and os.path.lexists(drop / name):
            raise DropError(f"{drop / name}: {why}")
    return drop


def read_drop(drop: Path, validation_percentage: float, testing_percentage: float) -> list[dict[str, object]]:
    """The entries of a drop, from its manifest.csv or its Speech Commands layout; DropError if unusable.

    Every entry's path has passed contained_file: one that leads out of the drop is None, with its reason.
    """
    drop = checked_drop(drop, (MANIFEST, *SPLIT_FILES.values()))
    if (drop / MANIFEST).is_file():
        entries = _manifest_entries(drop)
    else:
        clips, _ = index_speech_commands(drop, (validation_percentage, testing_percentage))
        entries = [{"file": f"{c.word}/{c.path.name}", "label": c.word, "speaker": c.speaker, "split": c.split}
                   for c in clips]
    if not entries:
        raise DropError(f"{drop}: no audio files (expected {MANIFEST} or <word>/<speaker>_nohash_<n>.wav)")
    for entry in entries:
        entry["path"], entry["path_error"] = contained_file(drop, drop / entry["file"])
        if not entry["split"]:
            entry["split"] = which_set(f"{entry['speaker']}_nohash_0.wav", validation_percentage, testing_percentage)
    return entries


def _manifest_entries(drop: Path) -> list[dict[str, object]]:
    manifest = drop / MANIFEST
    try:
        rows = list(csv.DictReader(io.StringIO(manifest.read_text(encoding="utf-8", errors="strict"))))
        header = set(rows[0]) if rows else set(next(csv.reader(io.StringIO(manifest.read_text())), []))
    except (UnicodeDecodeError, csv.Error) as err:
        raise DropError(f"{manifest}: not a readable CSV ({err})") from None
    missing = [c for c in ("path", "label", "speaker") if c not in header]
    if missing:
        raise DropError(f"{manifest}: missing column(s) {', '.join(missing)} (expected path,label,speaker[,split])")
    return [{"file": (row.get("path") or "").strip(), "label": (row.get("label") or "").strip(),
             "speaker": (row.get("speaker") or "").strip(), "split": (row.get("split") or "").strip()}
            for row in rows]


def drop_fingerprint(facts: pd.DataFrame) -> str:
    """A drop's identity: its entries and their content, so the same drop is recognised wherever it lies."""
    lines = sorted(f"{r.file}\t{r.label}\t{r.speaker}\t{r.split}\t{r.sha256}" for r in facts.itertuples())
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]


def read_ledger(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(Path(path).open())) if Path(path).is_file() else []


def ingested_domains(root: Path) -> dict[str, Path]:
    """Domain name -> tree for every domain a drop has been published into (each carries its own ledger)."""
    # pathlib's "*" also matches dot-folders, and a staging tree must never count as published.
    return {tree.parent.name: tree.parent for tree in sorted(Path(root).glob(f"*/{LEDGER}"))
            if not tree.parent.name.startswith((".", "_"))}


def ledger_rows(root: Path) -> list[dict[str, str]]:
    """Every ingested drop, oldest first, gathered from the domain trees that hold the data."""
    rows = [row for tree in ingested_domains(root).values() for row in read_ledger(tree / LEDGER)]
    return sorted(rows, key=lambda row: row["ingested_at"])


def write_ledger(root: Path) -> None:
    """Rebuild root/drops.csv, the one file `dvc repro` watches for new data, from the domain ledgers."""
    write_csv(Path(root) / LEDGER, ledger_rows(root), LEDGER_FIELDS)


def held_clips(params: Params) -> tuple[set[str], dict[str, str]]:
    """Content hashes and speaker -> split of every clip the pipeline already holds (base corpus and ingested)."""
    hashes: set[str] = set()
    speakers: dict[str, str] = {}
    roots = list(params.dataset.domains.values()) + list(ingested_domains(params.ingest.root).values())
    for root in roots:
        if not Path(root).is_dir():
            continue
        for clip in index_speech_commands(root)[0]:
            hashes.add(hashlib.sha256(clip.path.read_bytes()).hexdigest())
            speakers.setdefault(clip.speaker, clip.split)
    return hashes, speakers


def data_version(trees: dict[str, Path]) -> str:
    """Content hash of every file in the domain trees (audio, lists, metadata) but their ledgers: the data's version."""
    lines = sorted(f"{domain}/{path.relative_to(tree)} {hashlib.sha256(path.read_bytes()).hexdigest()}"
                   for domain, tree in trees.items() for path in tree.rglob("*")
                   if path.is_file() and path.name != LEDGER)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]


def recover_interrupted(root: Path) -> None:
    """Finish or undo a publish a crash cut short: the old tree comes back, a half-built staging tree goes."""
    retired, staged = list(Path(root).glob(".*.retired")), list(Path(root).glob(".*.staging"))
    for old in retired:
        final = old.with_name(old.name[1 : -len(".retired")])
        if final.exists():
            shutil.rmtree(old)
        else:
            os.rename(old, final)
    for staging in staged:
        shutil.rmtree(staging)
    if retired or staged:  # else nothing changed: a refused drop leaves no trace, not even an empty ledger
        write_ledger(root)


def stored_id(speaker: str) -> str:
    """A speaker or source id fit to name a file: anything but letters and digits could climb out of the folder."""
    return speaker if speaker.isalnum() and len(speaker) <= 64 else hashlib.sha1(speaker.encode()).hexdigest()[:8]


def publish_tree(root: Path, domain: str, write: Callable[[Path], None], row: dict[str, object]) -> str:
    """Let `write` add files to a staged copy of the domain's tree, then swap it in; return the new data version.

    The staging copy is made of hard links to the old files (so `write` must replace a file, never edit it) and gets
    the domain's ledger row; one rename swaps it in, so a crash leaves the old tree and ledger or the new ones.
    """
    final, staging = root / domain, root / f".{domain}.staging"
    retired = root / f".{domain}.retired"
    shutil.rmtree(staging, ignore_errors=True)
    if final.exists():
        shutil.copytree(final, staging, copy_function=os.link)
    else:
        staging.mkdir(parents=True)
    write(staging)
    version = data_version(ingested_domains(root) | {domain: staging})
    rows = [*read_ledger(staging / LEDGER), row | {"data_version": version}]
    write_csv(staging / LEDGER, rows, LEDGER_FIELDS)
    if final.exists():
        os.rename(final, retired)
    os.rename(staging, final)
    shutil.rmtree(retired, ignore_errors=True)
    write_ledger(root)
    return version


def normalised_wav(path: Path, sample_rate: int) -> bytes:
    """A file's audio as `sample_rate` mono PCM_16 WAV bytes: the one form a published tree holds."""
    wave, _ = read_audio(path, sample_rate)
    buffer = io.BytesIO()
    sf.write(buffer, to_int16(np.clip(wave, -1.0, 1.0)), sample_rate, subtype="PCM_16", format="WAV")
    return buffer.getvalue()


def write_speech_commands(staging: Path, accepted: list[dict], sample_rate: int) -> None:
    """Add accepted keyword clips to a Speech Commands tree: <word>/<speaker>_nohash_<n>.wav and the split lists."""
    (staging / BACKGROUND_DIR).mkdir(exist_ok=True)
    lists = {split: (staging / name).read_text().split() if (staging / name).is_file() else []
             for split, name in SPLIT_FILES.items()}
    for entry in accepted:
        speaker = stored_id(entry["speaker"])
        folder = staging / entry["label"]
        folder.mkdir(exist_ok=True)
        take = sum(1 for _ in folder.glob(f"{speaker}_nohash_*.wav"))
        name = f"{entry['label']}/{speaker}_nohash_{take}.wav"
        (staging / name).write_bytes(normalised_wav(entry["path"], sample_rate))
        if entry["split"] in lists:
            lists[entry["split"]].append(name)
    for split, name in SPLIT_FILES.items():
        # A new file, not an edit: the staging list may be a hard link to the live one.
        write_text_atomically(staging / name, "".join(f"{line}\n" for line in lists[split]))


def write_quarantine(folder: Path, report: ValidationReport, entries: list[dict]) -> Path:
    """Copy every rejected file (all of them if the drop failed as a whole) with reasons.csv; originals stay put."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {entry["file"]: entry["path"] for entry in entries}
    rows = report.to_rows()
    if not report.success:
        rows += [{"file": f, "expectation": "drop rejected", "observed": "; ".join(
            f"{r.expectation}: {r.observed}" for r in report.drop_failures)} for f in report.accepted]
    for row in rows:
        source = paths.get(row["file"])
        if source is not None and source.is_file():
            target = folder / "files" / row["file"]
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    write_csv(folder / "reasons.csv", rows, ["file", "expectation", "observed"])
    return folder


@dataclass(frozen=True)
class DropKind:
    """How one track reads, checks and publishes a drop; ingest_drop runs the same steps around them for every track.

    An entry is a dict with file (relative to the drop), label, speaker (for sound events: the source recording),
    split (or fold), path and path_error (a path that leads out of the drop is None, with its reason).
    """

    track: str  # the track's name, as tagged on the ingest run
    cfg: Ingest
    read: Callable[[Path], list[dict]]  # the drop's entries; DropError if it is unusable as a whole
    held: Callable[[], tuple[set[str], dict[str, str]]]  # content hashes and speaker -> split of every held clip
    validate: Callable[[pd.DataFrame, Path], ValidationReport]  # (facts, Data Docs folder) -> the decision
    write: Callable[[Path, list[dict]], None]  # accepted entries into a staged domain tree (see publish_tree)


def keyword_drops(params: Params) -> DropKind:
    """Keyword drops: a Speech Commands tree or a manifest, checked against the words the spotter knows."""
    syn = params.synthesis
    vocabulary = set(params.dataset.words) | set(syn.unknown_words)
    return DropKind(
        track="kws",
        cfg=params.ingest,
        read=partial(read_drop, validation_percentage=syn.validation_percentage,
                     testing_percentage=syn.testing_percentage),
        held=partial(held_clips, params),
        validate=lambda facts, docs: validate_drop(facts, params.ingest, vocabulary, sorted(vocabulary), docs),
        write=partial(write_speech_commands, sample_rate=params.dataset.sample_rate))


def ingest_drop(kind: DropKind, drop: Path, domain: str, docs_root: Path, progress: bool = True) -> IngestReport:
    """Validate a drop, quarantine its bad files, publish the good ones into `domain`, record the new version."""
    cfg = kind.cfg
    root = Path(cfg.root)
    recover_interrupted(root)
    if not domain.replace("_", "").replace("-", "").isalnum() or domain.startswith(("_", ".")):
        raise DropError(f"{domain!r}: a domain name is letters, digits, '_' and '-'")
    entries = kind.read(Path(drop))
    held_hashes, held_speakers = kind.held()
    facts = facts_frame(entries, held_hashes, held_speakers, progress=progress)
    drop_id = drop_fingerprint(facts)
    for row in ledger_rows(root):
        if row["drop_id"] == drop_id:
            return IngestReport(drop_id, row["domain"], int(row["accepted"]), int(row["rejected"]),
                                row["data_version"], True, None, None, None)
    report = kind.validate(facts, docs_root / drop_id)
    quarantine = None
    if report.rejections or not report.success:
        quarantine = write_quarantine(Path(cfg.quarantine) / f"{Path(drop).name}-{drop_id[:8]}", report, entries)
    if not report.success:
        reasons = "; ".join(f"{r.expectation}: {r.observed}" for r in report.drop_failures)
        return IngestReport(drop_id, domain, 0, len(facts), "", False, quarantine, report.docs_dir, report,
                            drop_rejected=f"{drop}: drop rejected ({reasons}); see {quarantine / 'reasons.csv'}")
    kept = set(report.accepted)
    accepted = [entry for entry in entries if entry["file"] in kept]
    row = {"drop_id": drop_id, "domain": domain, "source": str(drop), "accepted": len(accepted),
           "rejected": len(report.rejections), "ingested_at": datetime.now(UTC).isoformat(timespec="seconds")}
    version = publish_tree(root, domain, partial(kind.write, accepted=accepted), row)
    return IngestReport(drop_id, domain, len(accepted), len(report.rejections), version, False, quarantine,
                        report.docs_dir, report)
