"""Data-parallel training with torch.distributed: which process this is, and the few collective steps training takes.

A process started alone is a world of one whose steps change nothing, so the training loop has one path for both.
"""

from __future__ import annotations

import os
import pickle
import socket
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.multiprocessing.spawn import ProcessException, start_processes
from torch.nn.parallel import DistributedDataParallel

from components.errors import EarshotError

T = TypeVar("T")


class DistributedError(EarshotError):
    """A training process of a world failed; the others were stopped with it."""


@dataclass(frozen=True)
class World:
    """The processes training together: this one's rank among `size` (`local_size` of them on this machine), and
    the device it trains on."""

    rank: int = 0
    size: int = 1
    local_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def leader(self) -> bool:
        """Rank 0, the one process that logs, checkpoints and saves."""
        return self.rank == 0

    def share(self, batch: torch.Tensor) -> torch.Tensor:
        """This rank's contiguous share of a global batch's rows; shares differ in size by one row at most."""
        return batch.tensor_split(self.size)[self.rank]

    def wrap(self, model: nn.Module) -> nn.Module:
        """The model under DistributedDataParallel, which starts every rank from rank 0's weights and averages the
        ranks' gradients in backward; alone, the model itself."""
        if self.size == 1:
            return model
        return DistributedDataParallel(model, device_ids=[self.device.index] if self.device.type == "cuda" else None)

    def total(self, *values: float) -> tuple[float, ...]:
        """Each value summed over the ranks."""
        if self.size == 1:
            return values
        summed = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(summed)
        return tuple(summed.tolist())

    def align(self, model: nn.Module) -> None:
        """Give every rank rank 0's buffers: BatchNorm's running statistics, which each rank updates from its own
        share, so that all ranks score the same model and agree on when to stop."""
        if self.size == 1:
            return
        for buffer in model.buffers():
            dist.broadcast(buffer, 0)


def current() -> World:
    """This process's place in the process group it joined, or a world of one."""
    if not dist.is_initialized():
        return World()
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    size = dist.get_world_size()
    return World(dist.get_rank(), size, int(os.environ.get("LOCAL_WORLD_SIZE", size)), device)


def started() -> bool:
    """Whether torchrun (or `launch`) started this process as one rank of a world."""
    return "WORLD_SIZE" in os.environ


def join() -> World:
    """Join the world named by this process's environment (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT, as torchrun
    sets them): NCCL on this machine's GPU of LOCAL_RANK where there are GPUs, gloo on CPU otherwise."""
    if started() and not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return current()


def launch(fn: Callable[[], T], nproc: int) -> list[T]:
    """Run fn() in `nproc` processes on this machine, one world on a free loopback port (as `torchrun --standalone`
    would), and return what each rank's fn returned; when one fails the others are stopped and DistributedError
    names its error."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with tempfile.TemporaryDirectory() as folder:
        results = Path(folder)
        try:
            start_processes(_run_rank, args=(nproc, port, fn, results), nprocs=nproc, start_method="spawn")
        except ProcessException as err:
            raise DistributedError(f"training process {err.error_index} of {nproc} failed: "
                                   f"{str(err).strip().splitlines()[-1]}") from err
        return [pickle.loads((results / f"{rank}.pickle").read_bytes()) for rank in range(nproc)]


def _run_rank(rank: int, size: int, port: int, fn: Callable[[], T], results: Path) -> None:
    os.environ |= {"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(size),
                   "LOCAL_WORLD_SIZE": str(size), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    join()
    try:
        (results / f"{rank}.pickle").write_bytes(pickle.dumps(fn()))
    finally:
        dist.destroy_process_group()
