"""The speech-to-text data: log-mels and transcripts of one or more domains' LibriSpeech subsets, tagged by split.

Utterances differ in length, so the log-mels are a list (float16, half the memory) rather than one tensor.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from components.config import Params, Subsets
from components.dataset import SPLITS, AudioError, read_audio
from components.errors import EarshotError
from components.features import LogMel
from components.files import atomic_path
from components.ingest import ingested_domains
from components.librispeech import Utterance, index_librispeech


@dataclass
class AsrData:
    """One row per utterance: log-mel, normalised transcript, id, domain and split."""

    mels: list[torch.Tensor]  # float16 (n_mels, frames_i)
    texts: list[str]
    ids: list[str]
    domains: torch.Tensor  # int64 index into domain_names
    splits: torch.Tensor  # int64 index into SPLITS
    domain_names: list[str]
    version: str  # content hash of the audio, the transcripts and the feature settings

    def split(self, name: str) -> AsrData:
        """The rows of one split; names and version are shared."""
        keep = self.splits == SPLITS.index(name)
        rows = keep.nonzero().flatten().tolist()
        return replace(self, mels=[self.mels[i] for i in rows], texts=[self.texts[i] for i in rows],
                       ids=[self.ids[i] for i in rows], domains=self.domains[keep], splits=self.splits[keep])

    def save(self, path: Path) -> None:
        """Write the set as plain tensors, lists and strings, loadable with torch.load(weights_only=True)."""
        with atomic_path(path) as partial:
            torch.save(self.__dict__, partial)

    @classmethod
    def load(cls, path: Path) -> AsrData:
        """Read a set written by save; EarshotError naming the file if there is none."""
        if not Path(path).is_file():
            raise EarshotError(f"{path}: features not found; run the featurize stage first")
        return cls(**torch.load(path, weights_only=True))

    @classmethod
    def concat(cls, parts: list[AsrData]) -> AsrData:
        """One set from per-domain parts; domain ids are renumbered, versions combined."""
        offsets = [sum(len(p.domain_names) for p in parts[:i]) for i in range(len(parts))]
        return cls(
            mels=[m for p in parts for m in p.mels],
            texts=[t for p in parts for t in p.texts],
            ids=[u for p in parts for u in p.ids],
            domains=torch.cat([p.domains + o for p, o in zip(parts, offsets, strict=True)]),
            splits=torch.cat([p.splits for p in parts]),
            domain_names=[name for p in parts for name in p.domain_names],
            version=hashlib.sha256(" ".join(p.version for p in parts).encode()).hexdigest()[:16],
        )


def speech_domains(params: Params) -> dict[str, list[Path]]:
    """Domain -> the folders of LibriSpeech subsets it is read from: asr.domains, then each domain that drops were
    ingested into (a drop into a configured domain adds a folder to it)."""
    folders = {name: [Path(folder)] for name, folder in params.asr.domains.items()}
    for name, tree in ingested_domains(params.asr.ingest.root).items():
        folders.setdefault(name, []).append(tree)
    return folders


def domain_utterances(folders: list[Path], subsets: Subsets) -> Iterator[tuple[str, Utterance]]:
    """(split, utterance) of every subset the folders hold, split by split.

    A folder need not hold every subset (a drop's speakers may all have hashed into training), but the first folder,
    the one params.yaml names, must hold at least one, so a misnamed path is an error, not an empty domain.
    """
    for i, folder in enumerate(folders):
        present = [split for split in SPLITS if (Path(folder) / getattr(subsets, split)).is_dir()]
        if not present and i == 0:
            raise EarshotError(f"{folder}: holds none of the subsets {', '.join(subsets.model_dump().values())} "
                               "(asr.domains, asr.subsets); run the synthesize stage or fix the path")
        for split in present:
            for utterance in index_librispeech(Path(folder) / getattr(subsets, split)):
                yield split, utterance


@torch.no_grad()
def build_asr_data(params: Params, domain: str, folders: list[Path]) -> AsrData:
    """Read and featurize the training, validation and testing subsets (params.asr.subsets) of one domain's folders."""
    cfg = params.asr
    front_end = LogMel(cfg.features, cfg.sample_rate)
    mels, texts, ids, splits = [], [], [], []
    digests = [json.dumps([cfg.sample_rate, cfg.features.model_dump()])]
    for split, utterance in domain_utterances(folders, cfg.subsets):
        audio, digest = read_audio(utterance.path, cfg.sample_rate)
        if len(audio) < front_end.mel.n_fft:
            raise AudioError(f"{utterance.path}: too short for one log-mel frame ({len(audio)} samples)")
        mels.append(front_end(torch.from_numpy(audio)).half())
        texts.append(utterance.text)  # index_librispeech has normalised it and checked its alphabet
        ids.append(utterance.id)
        splits.append(SPLITS.index(split))
        digests.append(f"{getattr(cfg.subsets, split)}/{utterance.id} {digest} {texts[-1]}")
    return AsrData(mels=mels, texts=texts, ids=ids, domains=torch.zeros(len(ids), dtype=torch.long),
                   splits=torch.tensor(splits, dtype=torch.long), domain_names=[domain],
                   version=hashlib.sha256("\n".join(digests).encode()).hexdigest()[:16])
