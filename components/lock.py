"""One retraining at a time: an exclusive lock on a file, released by the kernel even when the holder is killed.

Two retrainings would write the same feature shards, model files and registry aliases; the second one stops at once.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from components.errors import EarshotError


class Busy(EarshotError):
    """Another process holds the lock."""


@contextmanager
def exclusive(path: Path, what: str) -> Iterator[None]:
    """Hold an flock on `path` for the block; Busy (naming the holder's pid) if another process has it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            raise Busy(f"{path}: another {what} is running (pid {holder}); try again when it ends") from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        try:
            yield
        finally:
            handle.truncate(0)
            fcntl.flock(handle, fcntl.LOCK_UN)
