"""Speech Commands v2 loader: the same code reads a synthesized domain tree or a real extracted dataset.

It yields the 12-class protocol (10 words + `_silence_` cut from `_background_noise_` + sampled `_unknown_`)
as int16 waveform tensors, tagged with split and acoustic domain, plus a content hash that names the data version.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from rich.progress import Progress

from components.acoustics import resample
from components.config import Dataset
from components.errors import EarshotError
from components.features import featurize
from components.files import atomic_path

SPLITS = ("training", "validation", "testing")
SILENCE, UNKNOWN = "_silence_", "_unknown_"
BACKGROUND_DIR = "_background_noise_"
# Clips the synthesized corpus's clip check refused: kept for review beside the tree, never read as training data.
REJECTED_DIR = "_rejected_"
# Who each speaker of a synthesized tree is; its `engine` column names the synthesizer behind the voice.
SPEAKERS_FILE = "speakers.csv"
RECORDED = "recorded"  # the engine of a clip with no speakers.csv entry: a real recording, as far as earshot knows
BACKGROUND = "background"  # the engine of a silence clip cut from background noise
SPLIT_FILES = {"validation": "validation_list.txt", "testing": "testing_list.txt"}
SHARD_INDEX = "index.json"  # domain -> fingerprint of a folder of per-domain feature shards
MAX_NUM_WAVS_PER_CLASS = 2**27 - 1  # the constant Speech Commands' split hash is defined with
FULL_SCALE = 32767.0
# Below this a header's rate is a damaged one (telephone speech is 8 kHz); upsampling from it would multiply the
# samples by thousands.
MIN_AUDIO_RATE = 1000


class AudioError(EarshotError):
    """An input file that cannot be used as audio; the message names the file."""


def which_set(filename: str, validation_percentage: float, testing_percentage: float) -> str:
    """Speech Commands' split rule: hash the speaker part of the name, so one speaker stays in one split."""
    speaker = re.sub(r"_nohash_.*$", "", Path(filename).name)
    digest = int(hashlib.sha1(speaker.encode()).hexdigest(), 16)
    percentage = (digest % (MAX_NUM_WAVS_PER_CLASS + 1)) * (100.0 / MAX_NUM_WAVS_PER_CLASS)
    if percentage < validation_percentage:
        return "validation"
    if percentage < validation_percentage + testing_percentage:
        return "testing"
    return "training"


@dataclass(frozen=True)
class ClipRef:
    """One labelled recording in a Speech Commands tree."""

    path: Path
    word: str
    speaker: str
    split: str
    engine: str = RECORDED


def index_speech_commands(
    root: Path, split_percentages: tuple[float, float] | None = None
) -> tuple[list[ClipRef], list[Path]]:
    """List the word clips with their split, and the background-noise files.

    Splits come from the tree's list files; a tree without them (a drop) needs `split_percentages` for which_set.
    """
    root = Path(root)
    if not root.is_dir():
        raise AudioError(f"{root}: dataset folder not found")
    listed: dict[str, str] = {}
    for split, name in SPLIT_FILES.items():
        lists = root / name
        if lists.is_file():
            listed |= {line.strip(): split for line in lists.read_text().splitlines() if line.strip()}
        elif split_percentages is None:
            raise AudioError(f"{lists}: split list missing (a Speech Commands v2 tree has one)")
    engines = speaker_engines(root)
    clips = []
    # os.scandir and plain strings: a tree holds tens of thousands of clips and pathlib's glob is slow at that.
    for word in sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith(("_", "."))):
        folder = root / word
        for file in sorted(e.name for e in os.scandir(folder) if e.name.endswith(".wav")):
            name = f"{word}/{file}"
            split = listed.get(name) or (which_set(name, *split_percentages) if split_percentages else "training")
            speaker = file.split("_nohash_")[0]
            clips.append(ClipRef(folder / file, word, speaker, split, engines.get(speaker, RECORDED)))
    return clips, sorted((root / BACKGROUND_DIR).glob("*.wav"))


def speaker_engines(root: Path) -> dict[str, str]:
    """Speaker id -> the engine that voiced it, from a tree's speakers.csv; empty for a tree without one."""
    path = Path(root) / SPEAKERS_FILE
    if not path.is_file():
        return {}
    with path.open(newline="") as f:
        return {row["speaker"]: row.get("engine") or RECORDED for row in csv.DictReader(f)}


def read_audio(path: Path, sample_rate: int) -> tuple[np.ndarray, str]:
    """Decode a file to float32 mono at `sample_rate`, with the sha256 of its bytes; AudioError if unusable."""
    try:
        raw = Path(path).read_bytes()
    except OSError as err:
        raise AudioError(f"{path}: cannot be read ({err.strerror})") from None
    return decode_audio(raw, path, sample_rate), hashlib.sha256(raw).hexdigest()


def decode_audio(raw: bytes, path: Path, sample_rate: int) -> np.ndarray:
    """Decode file bytes to float32 mono at `sample_rate`; AudioError naming `path` if they are not usable audio."""
    try:
        audio, rate = sf.read(io.BytesIO(raw), dtype="float32", always_2d=True)
    except (RuntimeError, sf.LibsndfileError) as err:
        reason = str(err).split(":")[-1].strip() or type(err).__name__
        raise AudioError(f"{path}: not readable audio ({reason})") from None
    if audio.size == 0:
        raise AudioError(f"{path}: no samples")
    if not np.isfinite(audio).all():
        raise AudioError(f"{path}: contains NaN or infinite samples")
    if rate < MIN_AUDIO_RATE:
        raise AudioError(f"{path}: sample rate {rate} Hz is not audio (at least {MIN_AUDIO_RATE} Hz)")
    mono = audio.mean(axis=1)
    return mono if rate == sample_rate else resample(mono, rate, sample_rate)


def fit_length(wave: np.ndarray, samples: int) -> np.ndarray:
    """Centre-pad with zeros or centre-crop to exactly `samples`, as short Speech Commands clips need."""
    if len(wave) >= samples:
        start = (len(wave) - samples) // 2
        return wave[start : start + samples]
    left = (samples - len(wave)) // 2
    return np.pad(wave, (left, samples - len(wave) - left))


def to_int16(wave: np.ndarray) -> np.ndarray:
    return np.clip(np.round(wave * FULL_SCALE), -32768, 32767).astype(np.int16)


class ClipCache:
    """Decoded clips and their log-mels by content hash, kept between featurize runs in append-only shards.

    DVC re-runs a stage when one file of a folder changes; this cache makes a new drop cost only its own files.
    A file whose size and mtime are unchanged is not even re-read, as DVC does for its own hashes.
    """

    def __init__(self, folder: Path | None, key: str = "") -> None:
        self.folder, self.key = (Path(folder) if folder else None), key
        self.waves: dict[str, np.ndarray] = {}
        self.mels: dict[str, np.ndarray] = {}
        self.hashes: dict[str, str] = {}  # "path|size|mtime_ns" -> sha256 of the bytes
        self.new: set[str] = set()
        self.new_stats: set[str] = set()
        for shard in self._shards():
            # Memory-mapped: opening the cache reads nothing; only the rows a run uses are paged in.
            hashes = np.load(shard / "hashes.npy").tolist()
            # np.asarray drops the memmap subclass, whose per-row views cost more than the rows themselves.
            self.waves |= dict(zip(hashes, np.asarray(np.load(shard / "waves.npy", mmap_mode="r")), strict=True))
            self.mels |= dict(zip(hashes, np.asarray(np.load(shard / "mels.npy", mmap_mode="r")), strict=True))
            stat_keys, stat_hashes = np.load(shard / "stat_keys.npy"), np.load(shard / "stat_hashes.npy")
            self.hashes |= dict(zip(stat_keys.tolist(), stat_hashes.tolist(), strict=True))

    def _shards(self) -> list[Path]:
        return sorted(self.folder.glob(f"{self.key}-*[0-9]")) if self.folder and self.folder.is_dir() else []

    @property
    def added(self) -> int:
        return len(self.new)

    def digest(self, path: Path) -> str:
        """sha256 of the file's bytes, read only if its size or mtime changed since it was last hashed."""
        info = os.stat(path)
        # abspath, not resolve(): a realpath per file was a third of a warm run.
        stat_key = f"{os.path.abspath(path)}|{info.st_size}|{info.st_mtime_ns}"
        if stat_key not in self.hashes:
            self.hashes[stat_key] = hashlib.sha256(Path(path).read_bytes()).hexdigest()
            self.new_stats.add(stat_key)
        return self.hashes[stat_key]

    def clip(self, path: Path, sample_rate: int, samples: int) -> tuple[np.ndarray, str]:
        """The clip at `path` as int16 of exactly `samples`, decoded only if its content is new; with its hash."""
        digest = self.digest(path)
        if digest not in self.waves:
            self.waves[digest] = to_int16(fit_length(decode_audio(Path(path).read_bytes(), path, sample_rate),
                                                     samples))
            self.new.add(digest)
        return self.waves[digest], digest

    def log_mels(self, waves: torch.Tensor, content: list[str], front_end: torch.nn.Module) -> torch.Tensor:
        """Log-mels of every row, computed only for rows whose content has none cached ("" rows: always)."""
        missing = [i for i, digest in enumerate(content) if digest not in self.mels]
        fresh = dict(zip(missing, featurize(waves[missing].float() / FULL_SCALE, front_end).numpy(), strict=True))
        for i, mel in fresh.items():
            if content[i]:
                self.mels[content[i]] = mel
        return torch.from_numpy(np.stack([fresh[i] if i in fresh else self.mels[d] for i, d in enumerate(content)]))

    def save(self) -> None:
        """Write what this run added as one new shard; the old shards stay as they are."""
        if not self.folder or not (self.new or self.new_stats):
            return
        hashes = sorted(self.new)
        stat_keys = sorted(self.new_stats)
        arrays = {
            "hashes": np.array(hashes, dtype=str),
            "stat_keys": np.array(stat_keys, dtype=str),
            "stat_hashes": np.array([self.hashes[k] for k in stat_keys], dtype=str),
            "waves": np.stack([self.waves[h] for h in hashes]) if hashes else np.empty((0, 0), np.int16),
            "mels": np.stack([self.mels[h] for h in hashes]) if hashes else np.empty((0, 0, 0), np.float32),
        }
        with atomic_path(self.folder / f"{self.key}-{len(self._shards()):05d}") as partial:
            partial.mkdir(parents=True)
            for name, array in arrays.items():
                np.save(partial / f"{name}.npy", array)
        self.new, self.new_stats = set(), set()


@dataclass
class KwsData:
    """A loaded dataset: one row per clip, plus the training part of the background noise for augmentation."""

    waves: torch.Tensor  # int16 (clips, samples)
    labels: torch.Tensor  # int64 index into label_names
    domains: torch.Tensor  # int64 index into domain_names
    splits: torch.Tensor  # int64 index into SPLITS
    noise: torch.Tensor  # int16 (samples,), training portions of every domain's background files
    label_names: list[str]
    domain_names: list[str]
    sources: list[str]  # file each clip came from ("<file>@<offset>" for silence cut from background)
    content: list[str]  # sha256 of each clip's file ("" for silence cut from background)
    engines: list[str]  # what voiced each clip: a synthesizer, RECORDED or BACKGROUND
    version: str
    mels: torch.Tensor = field(default_factory=lambda: torch.empty(0))

    def split(self, name: str) -> KwsData:
        """The rows of one split; noise and names are shared."""
        return self.where(self.splits == SPLITS.index(name))

    def where(self, keep: torch.Tensor) -> KwsData:
        """The rows a boolean mask `keep` picks; noise and names are shared."""
        rows = keep.nonzero().flatten().tolist()
        return replace(
            self,
            waves=self.waves[keep],
            labels=self.labels[keep],
            domains=self.domains[keep],
            splits=self.splits[keep],
            sources=[self.sources[i] for i in rows],
            content=[self.content[i] for i in rows],
            engines=[self.engines[i] for i in rows],
            mels=self.mels[keep] if len(self.mels) else self.mels,
        )

    def float_waves(self) -> torch.Tensor:
        return self.waves.float() / FULL_SCALE

    def save(self, path: Path) -> None:
        with atomic_path(path) as partial:
            torch.save(self.__dict__, partial)

    @classmethod
    def load(cls, path: Path) -> KwsData:
        """A features file, or a folder of per-domain shards (what featurize writes) joined in index order."""
        path = Path(path)
        if path.is_dir() and (path / SHARD_INDEX).is_file():
            index = json.loads((path / SHARD_INDEX).read_text())
            return cls.concat([cls.load(path / f"{domain}.pt") for domain in index])
        if not path.is_file():
            raise EarshotError(f"{path}: features not found; run the featurize stage first")
        return cls(**torch.load(path, weights_only=True))

    @classmethod
    def concat(cls, parts: list[KwsData]) -> KwsData:
        """One set from per-domain parts (same labels); domain ids are renumbered, versions combined."""
        names = [name for part in parts for name in part.domain_names]
        offsets = np.cumsum([0] + [len(part.domain_names) for part in parts])
        return cls(
            waves=torch.cat([p.waves for p in parts]),
            labels=torch.cat([p.labels for p in parts]),
            domains=torch.cat([p.domains + int(o) for p, o in zip(parts, offsets, strict=False)]),
            splits=torch.cat([p.splits for p in parts]),
            noise=torch.cat([p.noise for p in parts]),
            label_names=parts[0].label_names,
            domain_names=names,
            sources=[s for p in parts for s in p.sources],
            content=[c for p in parts for c in p.content],
            engines=[e for p in parts for e in p.engines],
            version=hashlib.sha256(" ".join(p.version for p in parts).encode()).hexdigest()[:16],
            mels=torch.cat([p.mels for p in parts]),
        )


def _domain_rng(seed: int, domain: str, purpose: str) -> np.random.Generator:
    # crc32, not hash(): Python salts str hashes per process, which would break determinism.
    return np.random.default_rng([seed, zlib.crc32(domain.encode()), zlib.crc32(purpose.encode())])


def _split_bounds(n: int, cfg_val: float, cfg_test: float) -> dict[str, tuple[int, int]]:
    """Disjoint time ranges of one background file per split, so silence clips never leak across splits."""
    train_end = round(n * (1 - (cfg_val + cfg_test) / 100))
    val_end = train_end + round(n * cfg_val / 100)
    return {"training": (0, train_end), "validation": (train_end, val_end), "testing": (val_end, n)}


def build_dataset(
    cfg: Dataset,
    seed: int,
    validation_percentage: float = 10.0,
    testing_percentage: float = 10.0,
    progress: bool = True,
    roots: dict[str, list[Path]] | None = None,
    cache: ClipCache | None = None,
    require_every_split: bool = True,
) -> KwsData:
    """Load every domain's trees (cfg.domains, or `roots`) into one labelled set; silence, unknown sized per split."""
    labels = cfg.labels
    samples = cfg.clip_samples
    cache = cache or ClipCache(None)
    waves, label_ids, domain_ids, split_ids, sources, content, engines, noise = [], [], [], [], [], [], [], []
    digests: list[str] = []
    roots = roots or {name: [root] for name, root in cfg.domains.items()}
    indexed = {}
    for name, trees in roots.items():
        listings = [index_speech_commands(tree) for tree in trees]
        indexed[name] = ([c for clips, _ in listings for c in clips], [b for _, bgs in listings for b in bgs])
    total = sum(len(c) + len(b) for c, b in indexed.values())
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task("reading audio", total=total)
        for d, (domain, (clips, backgrounds)) in enumerate(indexed.items()):
            chosen = _choose_clips(clips, cfg, seed, domain)
            for ref in chosen:
                wave, digest = cache.clip(ref.path, cfg.sample_rate, samples)
                waves.append(wave)
                label_ids.append(labels.index(ref.word if ref.word in cfg.words else UNKNOWN))
                domain_ids.append(d)
                split_ids.append(SPLITS.index(ref.split))
                sources.append(str(ref.path))
                content.append(digest)
                engines.append(ref.engine)
                digests.append(f"{domain}/{ref.path.parent.name}/{ref.path.name} {digest}")
                bar.advance(task)
            bar.advance(task, len(clips) - len(chosen))
            core = {s: sum(r.word in cfg.words and r.split == s for r in chosen) for s in SPLITS}
            rng = _domain_rng(seed, domain, "silence")
            for path in backgrounds:
                background, digest = read_audio(path, cfg.sample_rate)
                digests.append(f"{domain}/{BACKGROUND_DIR}/{path.name} {digest}")
                bounds = _split_bounds(len(background), validation_percentage, testing_percentage)
                noise.append(to_int16(background[slice(*bounds["training"])]))
                for split, (lo, hi) in bounds.items():
                    if hi - lo <= samples:
                        continue
                    count = round(core[split] * cfg.silence_percentage / 100 / len(backgrounds))
                    for offset in rng.integers(lo, hi - samples, size=count):
                        waves.append(to_int16(background[offset : offset + samples] * rng.uniform(0.05, 1.0)))
                        label_ids.append(labels.index(SILENCE))
                        domain_ids.append(d)
                        split_ids.append(SPLITS.index(split))
                        sources.append(f"{path}@{offset}")
                        content.append("")
                        engines.append(BACKGROUND)
                bar.advance(task)
    folders = ", ".join(str(tree) for trees in roots.values() for tree in trees)
    if not waves:
        raise AudioError(f"{folders}: no clips found")
    for i, split in enumerate(SPLITS):
        if require_every_split and i not in split_ids:
            raise AudioError(f"{folders}: no {split} clips (more speakers, or a larger split percentage)")
    return KwsData(
        waves=torch.from_numpy(np.stack(waves)),
        labels=torch.tensor(label_ids),
        domains=torch.tensor(domain_ids),
        splits=torch.tensor(split_ids),
        # A domain without background files (every ingested one) adds no noise; zeros would poison the SNR mix.
        noise=torch.from_numpy(np.concatenate(noise)) if noise else torch.zeros(0, dtype=torch.int16),
        label_names=labels,
        domain_names=list(roots),
        sources=sources,
        content=content,
        engines=engines,
        version=hashlib.sha256("\n".join(sorted(digests)).encode()).hexdigest()[:16],
    )


def _choose_clips(clips: list[ClipRef], cfg: Dataset, seed: int, domain: str) -> list[ClipRef]:
    """All core-word clips, and per split a seeded sample of unknown words sized as the protocol says."""
    rng = _domain_rng(seed, domain, "unknown")
    chosen = [c for c in clips if c.word in cfg.words]
    for split in SPLITS:
        unknown = [c for c in clips if c.word not in cfg.words and c.split == split]
        want = round(sum(c.split == split for c in chosen) * cfg.unknown_percentage / 100)
        picks = rng.choice(len(unknown), size=min(want, len(unknown)), replace=False) if unknown else []
        chosen += [unknown[i] for i in sorted(picks)]
    return chosen
