"""Seeding: the one way a training loop starts, so every random choice follows the `seed` in params.yaml.

Same seed, thread count, torch build and CPU give bit-identical weights; other CPUs or thread counts reorder float
sums (oneDNN picks kernels per instruction set, threads split reductions) and give close, not equal, weights.
"""

from __future__ import annotations

import torch


def seeded_generator(seed: int, threads: int | None = None) -> torch.Generator:
    """Seed torch's global generator (initial weights, dropout) and return a private one (batch order, augmentation)
    from `seed`; with deterministic kernels where torch has a choice, and `threads` threads if given."""
    torch.use_deterministic_algorithms(True, warn_only=True)
    if threads is not None:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)
