"""The featurized sound-event dataset: every clip's log-mel at its own length, with its fold, class and domain.

The featurize stage writes it once; cross-validation, the deployed model, export and the gate all read it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from components.config import Features
from components.errors import EarshotError
from components.files import atomic_path
from components.tracks.esc.events import SoundClip, SoundDatasetError
from components.tracks.esc.train import class_names, clip_log_mels


@dataclass(frozen=True)
class SoundData:
    """Clips in dataset order, one log-mel (n_mels, frames_i) and one acoustic domain each.

    Has the fields evaluate_predictions and the gate read (labels, domains and their names, sources).
    """

    clips: tuple[SoundClip, ...]
    mels: tuple[torch.Tensor, ...]
    clip_domains: tuple[str, ...]
    label_names: list[str]  # of the whole dataset, kept by a subset that lacks some class
    version: str  # content of every file and the settings its log-mel depends on

    @property
    def domain_names(self) -> list[str]:
        return sorted(set(self.clip_domains))

    @property
    def labels(self) -> torch.Tensor:
        return torch.tensor([clip.label for clip in self.clips], dtype=torch.long)

    @property
    def domains(self) -> torch.Tensor:
        names = self.domain_names
        return torch.tensor([names.index(d) for d in self.clip_domains], dtype=torch.long)

    @property
    def sources(self) -> list[str]:
        """Each clip's file: what golden clips are pinned by."""
        return [str(clip.path) for clip in self.clips]

    @property
    def mels_by_path(self) -> dict[Path, torch.Tensor]:
        return {clip.path: mel for clip, mel in zip(self.clips, self.mels, strict=True)}

    def subset(self, clips: Sequence[SoundClip]) -> SoundData:
        """These clips' rows, in the order given, with the whole dataset's label and domain names."""
        row = {clip.path: i for i, clip in enumerate(self.clips)}
        picks = [row[clip.path] for clip in clips]
        return SoundData(tuple(self.clips[i] for i in picks), tuple(self.mels[i] for i in picks),
                         tuple(self.clip_domains[i] for i in picks), self.label_names, self.version)

    def save(self, path: Path) -> None:
        rows = [asdict(clip) | {"path": str(clip.path)} for clip in self.clips]
        with atomic_path(path) as partial:
            torch.save({"clips": rows, "mels": list(self.mels), "clip_domains": list(self.clip_domains),
                        "label_names": self.label_names, "version": self.version}, partial)

    @classmethod
    def load(cls, path: Path) -> SoundData:
        if not Path(path).is_file():
            raise EarshotError(f"{path}: features not found; run the featurize stage first")
        saved = torch.load(path, weights_only=True)
        clips = tuple(SoundClip(**(row | {"path": Path(row["path"])})) for row in saved["clips"])
        return cls(clips, tuple(saved["mels"]), tuple(saved["clip_domains"]), saved["label_names"], saved["version"])


def featurize_clips(clips: Sequence[SoundClip], clip_domains: Sequence[str], *, sample_rate: int, features: Features,
                    min_frames: int) -> SoundData:
    """Every clip's log-mel (at least min_frames long) and the dataset's version, from file contents and settings."""
    if len(clip_domains) != len(clips):
        raise SoundDatasetError(f"{len(clips)} clips but {len(clip_domains)} domains")
    label_names = list(class_names(clips))  # refuses class ids with gaps before any file is read
    digest = hashlib.sha256(json.dumps([sample_rate, features.model_dump(), min_frames]).encode())
    for clip, domain in zip(clips, clip_domains, strict=True):
        digest.update(json.dumps([str(clip.path), clip.fold, clip.label, clip.source, domain]).encode())
        digest.update(hashlib.sha256(clip.path.read_bytes()).digest())
    mels = clip_log_mels(clips, sample_rate=sample_rate, features=features, min_frames=min_frames)
    return SoundData(tuple(clips), tuple(mels[clip.path] for clip in clips), tuple(clip_domains), label_names,
                     digest.hexdigest()[:16])
