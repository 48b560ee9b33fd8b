"""Per-domain feature shards: one file per acoustic domain and an index of their fingerprints, for every track.

DVC sees one output folder; inside it a drop into a new domain costs only that domain's files, because a shard is
rebuilt only when its domain's fingerprint (files and settings) changed.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import torch

from components.dataset import SHARD_INDEX, SPLITS, AudioError
from components.files import write_text_atomically


class Shard(Protocol):
    splits: torch.Tensor  # each row's split, an index into SPLITS

    def save(self, path: Path) -> None: ...


def refresh_shards(out: Path, fingerprints: dict[str, str], build: Callable[[str], Shard], where: str,
                   what: str) -> dict[str, str]:
    """Build the shard of each domain whose fingerprint changed (or whose file is gone), drop the shards of domains no
    longer listed, and write the index; returns domain -> fingerprint.

    Every split must hold rows in some domain, else AudioError names `where` and the `what` (rows' noun) missing.
    """
    index_file = out / SHARD_INDEX
    built = json.loads(index_file.read_text()) if index_file.is_file() else {}
    index = {}
    for domain, fingerprint in fingerprints.items():
        if built.get(domain, {}).get("fingerprint") != fingerprint or not (out / f"{domain}.pt").is_file():
            part = build(domain)
            part.save(out / f"{domain}.pt")
            built[domain] = {"fingerprint": fingerprint, "splits": torch.bincount(part.splits, minlength=3).tolist()}
        index[domain] = built[domain]
    for stale in set(built) - set(index):
        (out / f"{stale}.pt").unlink(missing_ok=True)
    for i, split in enumerate(SPLITS):
        if not any(entry["splits"][i] for entry in index.values()):
            raise AudioError(f"{where}: no {split} {what}")
    # Not sorted keys: the index's order is the domains' order, and with it the rows training sees.
    write_text_atomically(index_file, json.dumps(index, indent=2) + "\n")
    return {domain: entry["fingerprint"] for domain, entry in index.items()}

