"""The LibriSpeech reader and writer: round trips, a hand-written real-style subset, and one-line errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from components.librispeech import (
    LibriSpeechError,
    Utterance,
    index_librispeech,
    normalize_transcript,
    write_chapter,
)
from tests.conftest import tone

RATE = 16000

# As in LibriSpeech's dev-clean: upper case, apostrophes, no punctuation.
REAL = {
    ("84", "121123"): ["GO DO YOU HEAR", "BUT IN LESS THAN FIVE MINUTES THE STAIRCASE GROANED"],
    ("84", "121550"): ["AND THE SOUL'S SILENCE"],
    ("174", "50561"): ["FOREVER IF THEY'RE NOT CAUGHT", "ONE", "NO"],
    ("174", "84280"): ["HOW WE MUST SIMPLIFY"],
}


def _real_subset(root: Path) -> Path:
    """A dev-clean folder written by hand the way LibriSpeech ships it (.flac files, CRLF-free upper-case lines)."""
    subset = root / "LibriSpeech" / "dev-clean"
    for (speaker, chapter), texts in REAL.items():
        folder = subset / speaker / chapter
        folder.mkdir(parents=True)
        lines = []
        for n, text in enumerate(texts):
            utt = f"{speaker}-{chapter}-{n:04d}"
            sf.write(folder / f"{utt}.flac", tone(200 + 50 * n, 0.3), RATE, subtype="PCM_16")
            lines.append(f"{utt} {text}\n")
        (folder / f"{speaker}-{chapter}.trans.txt").write_text("".join(lines))
    (root / "LibriSpeech" / "SPEAKERS.TXT").write_text("; not part of the subset\n")
    return subset


def test_normalize_transcript_lowers_and_single_spaces() -> None:
    assert normalize_transcript("  GO  DO\tYOU HEAR\n") == "go do you hear"
    assert normalize_transcript("THE SOUL'S") == "the soul's"


def test_reads_a_real_style_subset_sorted_by_id(tmp_path: Path) -> None:
    subset = _real_subset(tmp_path)
    utterances = index_librispeech(subset)
    assert [u.id for u in utterances] == sorted(u.id for u in utterances)
    assert len(utterances) == sum(len(t) for t in REAL.values())
    assert {(u.speaker, u.chapter) for u in utterances} == set(REAL)
    first = utterances[0]
    path = subset / "174" / "50561" / "174-50561-0000.flac"
    assert first == Utterance("174-50561-0000", "174", "50561", path, "forever if they're not caught")
    assert sf.info(first.path).samplerate == RATE


def test_write_chapter_round_trips(tmp_path: Path) -> None:
    subset = tmp_path / "train"
    items = [(tone(300, 0.5), "turn the kitchen lights off"), (tone(400, 0.4), "call mom")]
    written = write_chapter(subset, "10001", "100010", items, RATE)
    written += write_chapter(subset, "10002", "100020", [(tone(500, 0.2), "what's  the   time")], RATE)
    assert index_librispeech(subset) == written
    assert written[2].text == "what's the time"
    assert (subset / "10001" / "100010" / "10001-100010.trans.txt").read_text() == (
        "10001-100010-0000 TURN THE KITCHEN LIGHTS OFF\n10001-100010-0001 CALL MOM\n"
    )
    audio, rate = sf.read(written[0].path, dtype="float32")
    assert rate == RATE and sf.info(written[0].path).subtype == "PCM_16"
    np.testing.assert_allclose(audio, tone(300, 0.5), atol=1 / 32768)


def test_write_chapter_refuses_text_outside_the_alphabet(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="outside"):
        write_chapter(tmp_path, "1", "2", [(tone(300, 0.1), "room 101")], RATE)


def _break(subset: Path, how: str) -> Path:
    """Damage a real-style subset one way; returns the file the error must name."""
    chapter = subset / "84" / "121123"
    transcript = chapter / "84-121123.trans.txt"
    if how == "missing audio":
        (chapter / "84-121123-0001.flac").unlink()
        return transcript
    if how == "unlisted audio":
        sf.write(chapter / "84-121123-0007.flac", tone(300, 0.1), RATE)
        return chapter / "84-121123-0007.flac"
    if how == "no transcript":
        transcript.unlink()
        return chapter / "84-121123-0000.flac"
    lines = {
        "no text": "84-121123-0000\n",
        "wrong chapter": "84-999999-0000 GO DO YOU HEAR\n",
        "digits": "84-121123-0000 ROOM 101\n",
        "punctuation": "84-121123-0000 GO, DO YOU HEAR?\n",
    }[how]
    transcript.write_text(lines + "84-121123-0001 BUT IN LESS THAN FIVE MINUTES\n")
    return transcript


@pytest.mark.parametrize(
    "how", ["missing audio", "unlisted audio", "no transcript", "no text", "wrong chapter", "digits", "punctuation"]
)
def test_damaged_subsets_fail_naming_the_file(tmp_path: Path, how: str) -> None:
    culprit = _break(_real_subset(tmp_path), how)
    with pytest.raises(LibriSpeechError) as err:
        index_librispeech(tmp_path / "LibriSpeech" / "dev-clean")
    message = str(err.value)
    assert message.startswith(f"{culprit}: ") and "\n" not in message


def test_missing_or_empty_folder_fails(tmp_path: Path) -> None:
    with pytest.raises(LibriSpeechError, match="no such LibriSpeech subset folder"):
        index_librispeech(tmp_path / "dev-clean")
    (tmp_path / "dev-clean" / "84").mkdir(parents=True)
    with pytest.raises(LibriSpeechError, match="holds no"):
        index_librispeech(tmp_path / "dev-clean")
