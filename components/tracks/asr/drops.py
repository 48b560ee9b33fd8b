"""Drops of transcribed speech for the speech-to-text track: a manifest or a LibriSpeech tree of utterances.

Each transcript is checked against its audio and the track's lexicon by the same GX machinery as every other drop
(audio checks first, duplicates and speaker leaks last); accepted utterances are published in the LibriSpeech layout
the track's reader already reads.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import shutil
import tempfile
from functools import cache, partial
from pathlib import Path

import numpy as np
import pandas as pd

from components.asr_data import domain_utterances, speech_domains
from components.config import AsrIngest, Params, Subsets
from components.dataset import SPLITS, read_audio, which_set
from components.files import contained_file, write_csv
from components.ingest import MANIFEST, DropError, DropKind, checked_drop, stored_id
from components.librispeech import ALPHABET, normalize_transcript, write_chapter
from components.tracks.asr.corpus import synthesize_asr_corpus
from components.validate import (
    DETAIL,
    ValidationReport,
    audio_expectations,
    cross_file_expectations,
    decoded_conditions,
    validate_facts,
)

MANIFEST_COLUMNS = ("path", "transcript", "speaker")
AUDIO_SUFFIXES = (".flac", ".wav")
FILE_SUITE, DROP_SUITE = "earshot_transcribed_files", "earshot_transcribed_drop"
# A bare "False" or rate says little; these facts of the same row say which characters or words were wrong.
TRANSCRIPT_DETAIL = DETAIL | {"text_ok": "text_error", "oov_rate": "oov_words"}
# Utterances per written chapter (a LibriSpeech chapter holds about this many): bounds the audio held in memory.
CHAPTER_SIZE = 100
OOV_SHOWN = 8  # unknown words named in a report row; more would only bury the first ones


def read_transcribed_drop(drop: Path, validation_percentage: float, testing_percentage: float) -> list[dict]:
    """The entries of a drop (see ingest.DropKind), from its manifest.csv or LibriSpeech layout; DropError if unusable.

    A transcript is only normalised here, never judged: a bad one is a per-file fact. A speaker without a split is
    placed by which_set's hash of its id, so one speaker always lands in one split.
    """
    drop = checked_drop(drop, [MANIFEST])
    rows = _manifest_rows(drop) if (drop / MANIFEST).is_file() else _librispeech_rows(drop)
    if not rows:
        raise DropError(f"{drop}: no audio files (expected {MANIFEST} with columns {','.join(MANIFEST_COLUMNS)}"
                        "[,split] or <speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac|.wav with trans.txt)")
    entries = []
    for file, text, speaker, split in rows:
        path, path_error = contained_file(drop, drop / file)
        # Stored ids, as held_utterances reads them back from folder names, so held speakers compare equal.
        speaker = stored_id(speaker)
        entries.append({"file": file, "label": normalize_transcript(text), "speaker": speaker,
                        "split": split or which_set(f"{speaker}_nohash_0.wav", validation_percentage,
                                                    testing_percentage),
                        "path": path, "path_error": path_error})
    return entries


def _manifest_rows(drop: Path) -> list[tuple[str, str, str, str]]:
    """(file, transcript, speaker, split) of each manifest row; DropError naming the line of a row that is unusable."""
    manifest = drop / MANIFEST
    try:
        reader = csv.DictReader(io.StringIO(manifest.read_text(encoding="utf-8", errors="strict")))
        lines = [(reader.line_num, row) for row in reader]
        header = reader.fieldnames or []
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise DropError(f"{manifest}: not a readable CSV ({err})") from None
    missing = [column for column in MANIFEST_COLUMNS if column not in header]
    if missing:
        raise DropError(f"{manifest}: missing column(s) {', '.join(missing)} (expected "
                        f"{','.join(MANIFEST_COLUMNS)}[,split])")
    rows, first_line = [], {}
    for line, row in lines:
        file, speaker, split = ((row.get(key) or "").strip() for key in ("path", "speaker", "split"))
        if split and split not in SPLITS:
            raise DropError(f"{manifest}: line {line} has split {split!r}, not one of {', '.join(SPLITS)}")
        if not speaker:
            raise DropError(f"{manifest}: line {line} has no speaker, so no split could keep that voice apart")
        # The file name is a row's identity in every report, and one file cannot have two transcripts.
        if file in first_line:
            raise DropError(f"{manifest}: line {line} lists {file!r} again (first on line {first_line[file]})")
        first_line[file] = line
        rows.append((file, row.get("transcript") or "", speaker, split))
    return rows


def _librispeech_rows(drop: Path) -> list[tuple[str, str, str, str]]:
    """(file, transcript, speaker, "") of every audio file of every <speaker>/<chapter> folder; a file without a
    transcript line gets an empty transcript, which validation rejects alone."""
    rows = []
    chapters = sorted(p for p in drop.glob("*/*") if p.is_dir() and not p.name.startswith(".")
                      and not p.parent.name.startswith("."))
    for chapter_dir in chapters:
        speaker, chapter = chapter_dir.parent.name, chapter_dir.name
        audio: dict[str, Path] = {}
        for path in sorted(chapter_dir.iterdir()):
            if path.suffix.lower() not in AUDIO_SUFFIXES or path.name.startswith("."):
                continue
            if path.stem in audio:
                raise DropError(f"{path}: a second audio file of utterance {path.stem} ({audio[path.stem].name})")
            audio[path.stem] = path
        transcript = chapter_dir / f"{speaker}-{chapter}.trans.txt"
        texts = _chapter_texts(drop, transcript, audio) if os.path.lexists(transcript) else {}
        rows += [(path.relative_to(drop).as_posix(), texts.get(utt, ""), speaker, "") for utt, path in audio.items()]
    return rows


def _chapter_texts(drop: Path, transcript: Path, audio: dict[str, Path]) -> dict[str, str]:
    """utterance id -> raw text of one trans.txt; DropError if it cannot be read or a line names no audio file."""
    target, why = contained_file(drop, transcript)
    if target is None:
        raise DropError(f"{transcript}: {why}")
    try:
        lines = target.read_text(encoding="utf-8", errors="strict").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise DropError(f"{transcript}: not readable text ({err})") from None
    texts: dict[str, str] = {}
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        utterance, _, text = line.strip().partition(" ")
        if utterance not in audio:
            raise DropError(f"{transcript}: line {number} names {utterance}, which has no .flac or .wav beside it")
        if utterance in texts:
            raise DropError(f"{transcript}: line {number} repeats utterance {utterance}")
        texts[utterance] = text
    return texts


def transcript_facts(facts: pd.DataFrame, lexicon: set[str]) -> pd.DataFrame:
    """facts_frame's facts (label = transcript) plus text_ok, outside_alphabet, oov_rate and chars_per_second.

    text_error and oov_words say, for the report, why text_ok or oov_rate failed; an unread file has 0 chars/s.
    """
    texts = [normalize_transcript(str(text)) for text in facts["label"]]
    outside = ["".join(sorted(set(text) - set(ALPHABET))) for text in texts]
    words = [text.split() for text in texts]
    unknown = [[word for word in spoken if word not in lexicon] for spoken in words]
    checked = facts.copy()
    checked["text_ok"] = [bool(text) and not bad for text, bad in zip(texts, outside, strict=True)]
    checked["outside_alphabet"] = outside
    checked["text_error"] = ["empty transcript" if not text else
                             f"characters outside a-z, ' and space: {' '.join(bad)}" if bad else ""
                             for text, bad in zip(texts, outside, strict=True)]
    checked["oov_rate"] = [len(out) / len(spoken) if spoken else 1.0
                           for out, spoken in zip(unknown, words, strict=True)]
    checked["oov_words"] = [_listed(list(dict.fromkeys(out))) for out in unknown]
    checked["chars_per_second"] = [len(text) / seconds if seconds > 0 else 0.0
                                   for text, seconds in zip(texts, facts["duration_s"], strict=True)]
    return checked.astype({"text_ok": "bool", "outside_alphabet": "object", "text_error": "object",
                           "oov_rate": "float64", "oov_words": "object", "chars_per_second": "float64"})


def _listed(words: list[str]) -> str:
    return ", ".join(words[:OOV_SHOWN]) + (f", … ({len(words)} words)" if len(words) > OOV_SHOWN else "")


def validate_transcribed_drop(facts: pd.DataFrame, cfg: AsrIngest, lexicon: set[str], docs_dir: Path
                              ) -> ValidationReport:
    """Run the transcribed-speech file suite, then the drop suite on the files that passed; Data Docs into docs_dir.

    The transcript facts are computed here from `facts` (see transcript_facts), so the caller passes facts_frame's.
    """
    checked = transcript_facts(facts, lexicon)
    return validate_facts(checked, lambda: _file_expectations(cfg), lambda: _drop_expectations(cfg),
                          lambda passed: checked.loc[passed, ["file"]], docs_dir, (FILE_SUITE, DROP_SUITE),
                          TRANSCRIPT_DETAIL)


def _file_expectations(cfg: AsrIngest) -> list:
    """The audio checks, then the transcript's own, then the cross-file facts; each text check skips rows whose text
    already failed, and the speaking rate is only judged where there is decoded audio to divide by."""
    import great_expectations.expectations as gxe
    from great_expectations.expectations.row_conditions import Column

    _, _, clean = decoded_conditions()
    has_text = Column("text_ok") == True  # noqa: E712 - a GX row condition, not a Python boolean
    return [
        *audio_expectations(cfg),
        gxe.ExpectColumnValuesToBeInSet(column="text_ok", value_set=[True]),
        gxe.ExpectColumnValuesToBeBetween(column="oov_rate", max_value=cfg.max_oov_rate, row_condition=has_text),
        gxe.ExpectColumnValuesToBeBetween(column="chars_per_second", min_value=cfg.min_chars_per_second,
                                          max_value=cfg.max_chars_per_second, row_condition=clean & has_text),
        *cross_file_expectations(),
    ]


def _drop_expectations(cfg: AsrIngest) -> list:
    import great_expectations.expectations as gxe

    return [gxe.ExpectTableRowCountToBeBetween(min_value=cfg.min_files)]


def held_utterances(folders: list[Path], subsets: Subsets) -> tuple[set[str], dict[str, str], set[str]]:
    """Content sha256 of every audio file, speaker -> split, and the words of the training and validation
    transcripts (the lexicon a drop's transcripts are held to), of every utterance in the domain folders' subsets."""
    hashes: set[str] = set()
    speakers: dict[str, str] = {}
    words: set[str] = set()
    for split, utterance in domain_utterances(folders, subsets):
        hashes.add(hashlib.sha256(utterance.path.read_bytes()).hexdigest())
        speakers.setdefault(utterance.speaker, split)
        if split != "testing":
            words.update(utterance.text.split())
    return hashes, speakers, words


def transcript_drops(params: Params) -> DropKind:
    """Speech-to-text drops: audio checked as every track's, transcripts against the alphabet, the words the track
    already trains on, and the audio's length; a held speaker keeps its split."""
    asr = params.asr
    held = cache(lambda: held_utterances([f for folders in speech_domains(params).values() for f in folders],
                                         asr.subsets))
    return DropKind(
        track="asr",
        cfg=asr.ingest,
        read=partial(read_transcribed_drop, validation_percentage=asr.corpus.validation_percentage,
                     testing_percentage=asr.corpus.testing_percentage),
        held=lambda: held()[:2],
        validate=lambda facts, docs: validate_transcribed_drop(facts, asr.ingest, held()[2], docs),
        write=partial(write_transcribed_files, sample_rate=asr.sample_rate, subsets=asr.subsets))


def write_transcribed_files(staging: Path, accepted: list[dict], sample_rate: int, subsets: Subsets) -> None:
    """Add accepted utterances to a LibriSpeech domain tree: new chapters of <subset>/<speaker>/, FLAC at
    `sample_rate` mono, each chapter with its trans.txt.

    Every file written is new (a fresh chapter folder), so a staged tree of hard links to the live one is never
    edited through a link, and a speaker's existing chapters and utterance ids stay as they were.
    """
    folders = {split: getattr(subsets, split) for split in SPLITS}
    by_speaker: dict[tuple[str, str], list[dict]] = {}
    for entry in accepted:
        by_speaker.setdefault((folders[entry["split"]], stored_id(entry["speaker"])), []).append(entry)
    for (subset, speaker), entries in by_speaker.items():
        for start in range(0, len(entries), CHAPTER_SIZE):
            chapter = _new_chapter(Path(staging), list(folders.values()), speaker)
            # Resampling can overshoot full scale, and a 16-bit encoder would wrap such a sample, not clip it.
            items = [(np.clip(read_audio(entry["path"], sample_rate)[0], -1.0, 1.0), entry["label"])
                     for entry in entries[start : start + CHAPTER_SIZE]]
            write_chapter(Path(staging) / subset, speaker, chapter, items, sample_rate)


def _new_chapter(staging: Path, subset_folders: list[str], speaker: str) -> str:
    """A chapter id the speaker has in no subset of the tree: one past its highest numbered chapter."""
    taken = [p.name for folder in subset_folders for p in (staging / folder / speaker).glob("*")]
    return str(max((int(name) for name in taken if name.isdigit()), default=0) + 1)


def write_transcribed_drop(params: Params, domain: str, folder: Path, speakers: int, seed: int,
                           misaligned: bool = False) -> Path:
    """A manifest drop (path,transcript,speaker,split) of `speakers` new speakers of the synthesis recipe `domain`
    saying grammar sentences, each split as the corpus plans it; misaligned: every transcript is the next
    utterance's, as an export shifted by one line would give."""
    settings = params.model_dump(mode="json") | {"seed": seed, "track": "asr"}
    with tempfile.TemporaryDirectory() as scratch:
        settings["synthesis"]["out_dir"] = scratch
        settings["asr"]["corpus"] |= {"domains": [domain], "speakers_per_domain": speakers}
        corpus = Params.model_validate(settings)
        [tree] = synthesize_asr_corpus(corpus, progress=False).values()
        rows = []
        for split, utterance in domain_utterances([tree], corpus.asr.subsets):
            target = Path(folder) / "audio" / utterance.path.name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(utterance.path, target)
            rows.append({"path": f"audio/{target.name}", "transcript": utterance.text, "speaker": utterance.speaker,
                         "split": split})
    if misaligned:
        texts = [row["transcript"] for row in rows]
        rows = [row | {"transcript": texts[(i + 1) % len(texts)]} for i, row in enumerate(rows)]
    write_csv(Path(folder) / MANIFEST, rows, [*MANIFEST_COLUMNS, "split"])
    return Path(folder)
