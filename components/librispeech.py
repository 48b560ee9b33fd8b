"""The LibriSpeech layout: one subset folder of `<speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac` files, each
chapter with a `<speaker>-<chapter>.trans.txt` of "<utterance id> <UPPER CASE TEXT>" lines.

The synthesized corpus is written in it and the same reader reads a real extracted LibriSpeech subset.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from components.errors import EarshotError

# The transcript alphabet of the speech-to-text track.
ALPHABET = "abcdefghijklmnopqrstuvwxyz' "
_LINE = re.compile(r"(\S+) (.+)")
_TEXT = re.compile(r"[a-z']+( [a-z']+)*")


class LibriSpeechError(EarshotError):
    """A LibriSpeech folder or file that cannot be read, with a one-line reason naming the file."""


@dataclass(frozen=True)
class Utterance:
    """One audio file of a subset and its transcript, lower case."""

    id: str
    speaker: str
    chapter: str
    path: Path
    text: str


def normalize_transcript(text: str) -> str:
    """A transcript in the track's form: lower case, single spaces, no leading or trailing space."""
    return " ".join(text.lower().split())


def _read_transcripts(path: Path, speaker: str, chapter: str) -> dict[str, str]:
    """utterance id -> normalised text of one chapter's trans.txt, every line checked."""
    texts: dict[str, str] = {}
    prefix = f"{speaker}-{chapter}-"
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        match = _LINE.fullmatch(line.strip())
        if not match or not match[1].startswith(prefix) or not match[1][len(prefix):].isdigit():
            raise LibriSpeechError(f"{path}: line {number} is not '{prefix}<number> <TEXT>'")
        utt, text = match[1], normalize_transcript(match[2])
        if not _TEXT.fullmatch(text):
            bad = sorted(set(text) - set(ALPHABET))
            raise LibriSpeechError(f"{path}: line {number} has characters outside a-z, ' and space: {bad}")
        if utt in texts:
            raise LibriSpeechError(f"{path}: line {number} repeats utterance {utt}")
        texts[utt] = text
    return texts


def index_librispeech(folder: Path) -> list[Utterance]:
    """Every utterance of one subset folder (e.g. .../LibriSpeech/dev-clean), sorted by id.

    Each transcript line must name an existing .flac and each .flac must have a line, so a half-copied subset fails
    here, naming the file, not later in training.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise LibriSpeechError(f"{folder}: no such LibriSpeech subset folder")
    utterances: list[Utterance] = []
    for chapter_dir in sorted(p for p in folder.glob("*/*") if p.is_dir()):
        speaker, chapter = chapter_dir.parent.name, chapter_dir.name
        transcript = chapter_dir / f"{speaker}-{chapter}.trans.txt"
        audio = {p.stem: p for p in chapter_dir.glob("*.flac")}
        if not transcript.is_file():
            if audio:
                raise LibriSpeechError(f"{min(audio.values())}: no transcript {transcript.name} beside it")
            continue
        texts = _read_transcripts(transcript, speaker, chapter)
        unlisted, silent = sorted(audio.keys() - texts.keys()), sorted(texts.keys() - audio.keys())
        if unlisted:
            raise LibriSpeechError(f"{audio[unlisted[0]]}: no line for {unlisted[0]} in {transcript.name}")
        if silent:
            raise LibriSpeechError(f"{transcript}: {silent[0]} has no audio file {silent[0]}.flac")
        utterances += [Utterance(utt, speaker, chapter, audio[utt], texts[utt]) for utt in texts]
    if not utterances:
        raise LibriSpeechError(f"{folder}: holds no <speaker>/<chapter>/*.trans.txt transcripts")
    return sorted(utterances, key=lambda u: u.id)


def write_chapter(
    subset_folder: Path, speaker: str, chapter: str, items: list[tuple[np.ndarray, str]], sample_rate: int
) -> list[Utterance]:
    """Write one chapter: (audio, text) pairs as 16-bit FLAC files numbered from 0, and its trans.txt.

    Texts are normalised first and must then be in the alphabet, so whatever is written reads back.
    """
    folder = Path(subset_folder) / speaker / chapter
    folder.mkdir(parents=True, exist_ok=True)
    utterances = []
    for number, (audio, text) in enumerate(items):
        utt = f"{speaker}-{chapter}-{number:04d}"
        text = normalize_transcript(text)
        if not _TEXT.fullmatch(text):
            raise ValueError(f"{utt}: transcript {text!r} has characters outside a-z, ' and space")
        path = folder / f"{utt}.flac"
        # Encoded in memory: soundfile's close() fsyncs, which costs more than encoding a short file.
        buffer = io.BytesIO()
        sf.write(buffer, audio, sample_rate, subtype="PCM_16", format="FLAC")
        path.write_bytes(buffer.getvalue())
        utterances.append(Utterance(utt, speaker, chapter, path, text))
    lines = "".join(f"{u.id} {u.text.upper()}\n" for u in utterances)
    (folder / f"{speaker}-{chapter}.trans.txt").write_text(lines, encoding="utf-8")
    return utterances
