"""Synthetic data drops: new speakers of one acoustic domain, written the way outside recordings arrive.

A drop can carry one planted file per fault kind plus an answer key (faults.csv), so ingest validation is tested
against known-bad input instead of whatever a real vendor happens to send.
"""

from __future__ import annotations

import hashlib
import io
import shutil
import zlib
from collections.abc import Collection
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal, get_args

import numpy as np
import soundfile as sf

from components.acoustics import resample
from components.config import Params
from components.corpus import clip_name, render_domain
from components.dataset import SPLIT_FILES, ClipRef, index_speech_commands
from components.errors import EarshotError
from components.files import write_csv
from components.ingest import MANIFEST

Layout = Literal["speech_commands", "manifest"]
Fault = Literal[
    "corrupt_bytes",
    "zero_length",
    "resampled_stereo",
    "clipped",
    "silent",
    "unknown_label",
    "speaker_conflict",
    "duplicate_held",
    "duplicate_in_drop",
    "path_escape",
]
# The validator expectation each fault must fail; "" means the file is fine and must be accepted.
EXPECTATIONS: dict[Fault, str] = {
    "corrupt_bytes": "readable",
    "zero_length": "readable",
    "resampled_stereo": "",
    "clipped": "clipping_ratio",
    "silent": "rms_dbfs",
    "unknown_label": "label",
    "speaker_conflict": "speaker_conflict",
    "duplicate_held": "duplicate",
    "duplicate_in_drop": "duplicate",
    "path_escape": "path_ok",
}
NEEDS_HELD: set[Fault] = {"speaker_conflict", "duplicate_held"}
# A Speech Commands tree names files by their place in it, so it has no way to point outside itself.
MANIFEST_ONLY: set[Fault] = {"path_escape"}

MANIFEST_COLUMNS = ["path", "label", "speaker", "split"]
FAULTS_FILE = "faults.csv"
FAULTS_COLUMNS = ["file", "fault", "expected_expectation"]
AUDIO_DIR = "audio"
UNKNOWN_LABEL = "banana"
ESCAPE_PATH = "../../etc/passwd"
STEREO_RATE = 44100
CORRUPT_BYTES = 4096
CLIP_DRIVE = 30.0  # peak driven to 30x full scale: every sample of the word above ~3 % of its peak clips
SILENT_DBFS = -80.0
RENDER_DIR = ".render"


@dataclass
class _Clip:
    """One file of the drop before it is written; `data` None is a manifest row with no file behind it."""

    label: str
    speaker: str
    take: int
    split: str
    data: bytes | None
    fixed_path: str | None = None

    def path(self, layout: Layout) -> str:
        if self.fixed_path is not None:
            return self.fixed_path
        if layout == "speech_commands":
            return f"{self.label}/{clip_name(self.speaker, self.take)}"
        return f"{AUDIO_DIR}/{self.speaker}-{self.label}-{self.take}.wav"


def write_drop(
    params: Params,
    domain: str,
    out: Path,
    *,
    speakers: int,
    layout: Layout = "manifest",
    faults: bool | Collection[Fault] = False,
    held_root: Path | None = None,
    drop_seed: int = 1,
    progress: bool = True,
    shuffled_labels: bool = False,
) -> Path:
    """Write a drop of `speakers` new speakers of `domain` saying every corpus word into `out`; returns `out`.

    faults=True plants every fault kind the layout can carry (a collection picks some) and writes faults.csv.
    shuffled_labels=True permutes the labels among each speaker's clips: a drop that passes ingest validation
    (same files, same label mix) but teaches the wrong words, for the model gate to refuse.
    The same (params.seed, drop_seed) give byte-identical drops; nothing is written outside `out`.
    """
    out = Path(out)
    if layout not in get_args(Layout):
        raise EarshotError(f"layout {layout!r}: expected one of {', '.join(get_args(Layout))}")
    known = [*params.synthesis.domains, *params.synthesis.drop_domains]
    if domain not in known:
        raise EarshotError(f"domain {domain!r}: not in synthesis.domains or drop_domains ({', '.join(known)})")
    if speakers < 1:
        raise EarshotError(f"speakers={speakers}: a drop needs at least one speaker")
    kinds = _fault_kinds(faults, layout, held_root)
    # Each fault takes a clip of its own, and only task-word clips surely pass every other check.
    if speakers * len(params.dataset.words) < len(kinds):
        raise EarshotError(f"{len(kinds)} faults need {len(kinds)} task-word clips; use more speakers")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise EarshotError(f"{out}: already exists and is not an empty folder")
    held = index_speech_commands(held_root)[0] if held_root is not None and NEEDS_HELD & set(kinds) else []
    if NEEDS_HELD & set(kinds) and not held:
        raise EarshotError(f"{held_root}: holds no clips to conflict with or duplicate")
    seed = _mixed_seed(params.seed, drop_seed)
    out.mkdir(parents=True, exist_ok=True)
    clips = _render(params, domain, speakers, seed, out / RENDER_DIR, progress)
    if shuffled_labels:
        _shuffle_labels(clips, np.random.default_rng([seed, zlib.crc32(b"shuffle")]))
    rng = np.random.default_rng([seed, zlib.crc32(b"faults")])
    planted = _plant(kinds, clips, held, params, rng)
    _write(out, layout, clips)
    if faults:
        write_csv(out / FAULTS_FILE, [dict(zip(FAULTS_COLUMNS, (c.path(layout), k, EXPECTATIONS[k]), strict=True))
                                      for k, c in planted], FAULTS_COLUMNS)
    return out


def _fault_kinds(faults: bool | Collection[Fault], layout: Layout, held_root: Path | None) -> list[Fault]:
    """The requested fault kinds in answer-key order; EarshotError for kinds the arguments cannot support."""
    every: tuple[Fault, ...] = get_args(Fault)
    if isinstance(faults, bool):
        requested = set(every) - (MANIFEST_ONLY if layout == "speech_commands" else set()) if faults else set()
    else:
        requested = set(faults)
    unknown = requested - set(every)
    if unknown:
        raise EarshotError(f"faults {', '.join(sorted(unknown))}: unknown (known: {', '.join(every)})")
    if layout == "speech_commands" and requested & MANIFEST_ONLY:
        raise EarshotError(f"faults {', '.join(sorted(requested & MANIFEST_ONLY))}: only the manifest layout has them")
    if held_root is None and requested & NEEDS_HELD:
        raise EarshotError(f"faults {', '.join(sorted(requested & NEEDS_HELD))} need held_root (a held dataset tree)")
    return [kind for kind in every if kind in requested]


def _mixed_seed(seed: int, drop_seed: int) -> int:
    # A seed of its own per drop: new voices, rooms and noise, and speaker ids unlike the base corpus's.
    return int.from_bytes(hashlib.sha256(f"{seed}/drop/{drop_seed}".encode()).digest()[:8]) >> 1


def _render(params: Params, domain: str, speakers: int, seed: int, scratch: Path, progress: bool) -> list[_Clip]:
    """Synthesize one take per corpus word of each new speaker with the corpus generator, in `scratch`.

    The generator writes a whole Speech Commands tree; it is read into memory and removed, so only the drop stays.
    """
    settings = params.model_dump(mode="json")
    settings["seed"] = seed
    settings["synthesis"] |= {
        "out_dir": str(scratch),
        "domains": {domain: params.synthesis.recipe(domain).model_dump(mode="json")},
        "drop_domains": {},
        "speakers_per_domain": speakers,
        "takes_per_word": 1,
        "background_seconds": 1,
        # A drop stands for field recordings, slips included: catching a bad clip is ingestion's job, not the maker's.
        "check_clips": False,
    }
    try:
        root = render_domain(Params.model_validate(settings), domain, progress)
        refs = index_speech_commands(root)[0]
        return [_Clip(r.word, r.speaker, _take(r), r.split, r.path.read_bytes()) for r in refs]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _take(ref: ClipRef) -> int:
    return int(ref.path.stem.rsplit("_nohash_", 1)[1])


def _shuffle_labels(clips: list[_Clip], rng: np.random.Generator) -> None:
    """Permute the labels among each speaker's clips in place: the label mix stays exact, most labels turn wrong.

    Within a speaker, not across the drop: a speaker's clips all share a take number, so a speaker given the same
    label twice would name two files alike, while a permutation of their labels keeps every name distinct.
    """
    by_speaker: dict[str, list[_Clip]] = {}
    for clip in clips:
        by_speaker.setdefault(clip.speaker, []).append(clip)
    for group in by_speaker.values():
        for clip, label in zip(group, rng.permutation([c.label for c in group]), strict=True):
            clip.label = str(label)


def _plant(
    kinds: list[Fault], clips: list[_Clip], held: list[ClipRef], params: Params, rng: np.random.Generator
) -> list[tuple[Fault, _Clip]]:
    """Turn a distinct task-word clip into (or use it as the source of) each fault; returns the files to list.

    Faults on audio replace a clip instead of copying it, so no planted file is also a near-duplicate of another.
    """
    candidates = [c for c in clips if c.label in params.dataset.words]
    bases = [candidates[i] for i in rng.choice(len(candidates), size=len(kinds), replace=False)]
    return [(kind, _plant_one(kind, base, clips, held, params, rng)) for kind, base in zip(kinds, bases, strict=True)]


def _plant_one(
    kind: Fault, base: _Clip, clips: list[_Clip], held: list[ClipRef], params: Params, rng: np.random.Generator
) -> _Clip:
    """Plant one fault on `base` (changed in place, or the source of an added file); returns the faulty file."""
    rate = params.dataset.sample_rate
    match kind:
        case "corrupt_bytes":
            base.data = b"RIFF" + rng.bytes(CORRUPT_BYTES)
        case "zero_length":
            base.data = b""
        case "resampled_stereo":
            wide = resample(_decode(base.data), rate, STEREO_RATE)
            base.data = _encode(np.stack([wide, wide], axis=1), STEREO_RATE)
        case "clipped":
            audio = _decode(base.data)
            base.data = _encode(np.clip(audio * CLIP_DRIVE / np.abs(audio).max(), -1.0, 1.0), rate)
        case "silent":
            base.data = _encode(rng.normal(0.0, 10 ** (SILENT_DBFS / 20), params.dataset.clip_samples), rate)
        case "unknown_label":
            base.label = UNKNOWN_LABEL
        case "speaker_conflict":
            splits = {ref.speaker: ref.split for ref in held}
            speaker = sorted(splits)[int(rng.integers(len(splits)))]
            # Both other splits are listed ones, so the conflict is explicit in either layout.
            base.split = "testing" if splits[speaker] == "validation" else "validation"
            # A take the speaker has nowhere in held_root, so the file never shares a name with a held one.
            base.speaker, base.take = speaker, 1 + max(_take(ref) for ref in held if ref.speaker == speaker)
        case "duplicate_held":
            sources = [ref for ref in held if ref.word in params.dataset.words]
            if not sources:
                raise EarshotError("held_root has no clip of a task word to duplicate")
            source = sources[int(rng.integers(len(sources)))]
            return _add(clips, replace(base, label=source.word, data=source.path.read_bytes()))
        case "duplicate_in_drop":
            return _add(clips, base)
        case "path_escape":
            return _add(clips, replace(base, data=None, fixed_path=ESCAPE_PATH))
    return base


def _add(clips: list[_Clip], clip: _Clip) -> _Clip:
    """Append `clip` as the next take of its speaker, so its name is new in either layout."""
    added = replace(clip, take=1 + max(c.take for c in clips if c.speaker == clip.speaker))
    clips.append(added)
    return added


def _decode(data: bytes) -> np.ndarray:
    return sf.read(io.BytesIO(data), dtype="float32")[0]


def _encode(audio: np.ndarray, sample_rate: int) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, audio, sample_rate, subtype="PCM_16", format="WAV")
    return buffer.getvalue()


def _write(out: Path, layout: Layout, clips: list[_Clip]) -> None:
    """The audio files, then the labels: manifest.csv, or the split lists of a Speech Commands tree."""
    for clip in clips:
        if clip.data is not None:
            target = out / clip.path(layout)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(clip.data)
    if layout == "manifest":
        rows = sorted([c.path(layout), c.label, c.speaker, c.split] for c in clips)
        write_csv(out / MANIFEST, [dict(zip(MANIFEST_COLUMNS, row, strict=True)) for row in rows], MANIFEST_COLUMNS)
        return
    for split, name in SPLIT_FILES.items():
        (out / name).write_text("".join(f"{p}\n" for p in sorted(c.path(layout) for c in clips if c.split == split)))


