"""Fuzzing every reader of outside input: mutated WAV and FLAC bytes, manifest rows, dataset metadata rows.

Whatever arrives, a reader returns usable data or refuses with one line naming the file; it never crashes otherwise,
never hangs (hypothesis fails an example slower than its deadline), and never writes a file.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from components.dataset import AudioError, decode_audio
from components.ingest import MANIFEST, DropError, read_drop
from components.tracks.esc.events import (
    ESC50_COLUMNS,
    ESC50_CSV,
    URBANSOUND8K_COLUMNS,
    URBANSOUND8K_CSV,
    SoundDatasetError,
    load_esc50,
    load_urbansound8k,
)
from components.validate import probe_audio

RATE = 16000
# No deadline: beside other test files a slow example is the machine, not the code (speed is for benchmarks/).
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _encoded(fmt: str, subtype: str) -> bytes:
    tone = 0.3 * np.sin(2 * np.pi * 440 * np.arange(RATE // 10) / RATE).astype(np.float32)
    buffer = io.BytesIO()
    sf.write(buffer, tone, RATE, format=fmt, subtype=subtype)
    return buffer.getvalue()


SOURCES = {"wav": _encoded("WAV", "PCM_16"), "flac": _encoded("FLAC", "PCM_16"), "float": _encoded("WAV", "FLOAT")}


@st.composite
def mutated_audio(draw: st.DrawFn) -> bytes:
    """A valid file with bytes overwritten (mostly in the header, where lengths and formats live), cut or extended."""
    data = bytearray(SOURCES[draw(st.sampled_from(sorted(SOURCES)))])
    for _ in range(draw(st.integers(0, 8))):
        where = draw(st.integers(0, 63) | st.integers(0, len(data) - 1))
        data[where] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    return bytes(data) + draw(st.binary(max_size=64))


def files_under(root: Path) -> set[Path]:
    return {Path(folder) / name for folder, _, names in os.walk(root) for name in names}


@FUZZ
@given(raw=mutated_audio())
def test_mutated_audio_decodes_or_is_refused_in_one_line(raw: bytes) -> None:
    path = Path("drop/yes/a_nohash_0.wav")
    try:
        audio = decode_audio(raw, path, RATE)
    except AudioError as err:
        assert str(err).startswith(f"{path}: ") and "\n" not in str(err)
    else:
        assert audio.dtype == np.float32 and audio.ndim == 1 and audio.size > 0 and np.isfinite(audio).all()


@FUZZ
@given(raw=mutated_audio())
def test_validation_probes_any_bytes_without_raising(tmp_path: Path, raw: bytes) -> None:
    path = tmp_path / "clip.wav"
    path.write_bytes(raw)
    facts = probe_audio(path)
    if facts["readable"]:
        assert facts["sample_rate"] > 0 and facts["channels"] > 0 and facts["duration_s"] >= 0
    else:
        assert facts["error"] and "\n" not in str(facts["error"])


# Cells a hostile or careless manifest may hold: paths out of the drop, absolute paths, odd text, empty cells.
CELLS = st.sampled_from(["yes/a_nohash_0.wav", "../outside.wav", "/etc/passwd", "yes/../../outside.wav", "",
                         "yes", "nohash", "a,b", 'quo"te', "\x00", "ünï", "C:\\x.wav"]) | st.text(max_size=12)


@FUZZ
@given(header=st.lists(st.sampled_from(["path", "label", "speaker", "split", "extra"]), max_size=5),
       rows=st.lists(st.lists(CELLS, max_size=5), max_size=6))
@example(header=["path", "label", "speaker"], rows=[["yes/a_nohash_0.wav\x00", "yes", "a"]])  # once a ValueError
def test_manifest_rows_are_read_or_refused_and_never_lead_outside_the_drop(tmp_path: Path, header: list[str],
                                                                           rows: list[list[str]]) -> None:
    drop = tmp_path / "drop"
    (drop / "yes").mkdir(parents=True, exist_ok=True)
    (drop / "yes/a_nohash_0.wav").write_bytes(SOURCES["wav"])
    (tmp_path / "outside.wav").write_bytes(SOURCES["wav"])
    buffer = io.StringIO()
    csv.writer(buffer).writerows([header, *rows])
    (drop / MANIFEST).write_text(buffer.getvalue())
    before = files_under(tmp_path)
    try:
        entries = read_drop(drop, 10.0, 10.0)
    except DropError as err:
        assert str(err).startswith(str(drop)) and "\n" not in str(err)
    else:
        for entry in entries:
            assert entry["path"] is None or Path(entry["path"]).resolve().is_relative_to(drop.resolve())
    assert files_under(tmp_path) == before


DATASETS = {
    "urbansound8k": (load_urbansound8k, URBANSOUND8K_CSV, URBANSOUND8K_COLUMNS,
                     ["a.wav", "100", "0.0", "4.0", "1", "1", "0", "siren"], Path("audio/fold1/a.wav")),
    "esc50": (load_esc50, ESC50_CSV, ESC50_COLUMNS, ["a.wav", "1", "0", "dog", "True", "1-100-A", "A"],
              Path("audio/a.wav")),
}


@pytest.mark.parametrize("layout", sorted(DATASETS))
@FUZZ
@given(edits=st.lists(st.tuples(st.integers(0, 7), CELLS), max_size=4), extra_rows=st.integers(0, 2))
@example(edits=[(0, "0\n0")], extra_rows=0)  # found by this test: a file name with a newline broke the line
def test_dataset_metadata_rows_are_read_or_refused_in_one_line(tmp_path: Path, layout: str,
                                                               edits: list[tuple[int, str]], extra_rows: int) -> None:
    loader, csv_name, columns, row, audio = DATASETS[layout]
    root = tmp_path / layout
    (root / audio).parent.mkdir(parents=True, exist_ok=True)
    (root / audio).write_bytes(SOURCES["wav"])
    (root / csv_name).parent.mkdir(parents=True, exist_ok=True)
    row = list(row)
    for column, value in edits:
        row[column % len(row)] = value
    buffer = io.StringIO()
    csv.writer(buffer).writerows([columns, *[row] * (1 + extra_rows)])
    (root / csv_name).write_text(buffer.getvalue())
    before = files_under(tmp_path)
    try:
        clips = loader(root)
    except SoundDatasetError as err:
        assert str(err).startswith(str(root / csv_name)) and "\n" not in str(err)
    else:
        assert all(clip.path.resolve().is_relative_to(root.resolve()) and clip.path.is_file() for clip in clips)
    assert files_under(tmp_path) == before


def _wav(rate: int, seconds: float) -> bytes:
    tone = 0.5 * np.sin(2 * np.pi * 1000.0 * np.arange(round(rate * seconds)) / rate)
    buffer = io.BytesIO()
    sf.write(buffer, tone.astype(np.float32), rate, format="WAV")
    return buffer.getvalue()


def test_a_rate_sharing_no_divisor_with_16_khz_decodes_and_a_damaged_rate_is_refused() -> None:
    """A mutated header once gave 44 101 Hz, and resampling it built a 16 000 x 44 101 sinc kernel that took a test
    worker to 21 GB; such rates now go through polyphase filtering."""
    audio = decode_audio(_wav(44101, 1.0), Path("odd.wav"), RATE)
    assert audio.shape == (RATE,)
    assert np.argmax(np.abs(np.fft.rfft(audio))) == 1000  # 1 Hz bins: the 1 kHz tone is where it was
    with pytest.raises(AudioError) as refused:
        decode_audio(_wav(3, 30.0), Path("damaged.wav"), RATE)
    assert str(refused.value) == "damaged.wav: sample rate 3 Hz is not audio (at least 1000 Hz)"
