"""Publishing files atomically: a crash or a full disk never leaves a half-written file at the final path."""

from __future__ import annotations

import csv
import io
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary sibling of `path` to write (a file, or a folder the caller makes); rename it over `path`
    on success, remove it on failure."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    try:
        yield partial
        os.replace(partial, path)
    finally:
        if partial.is_dir():
            shutil.rmtree(partial)
        else:
            partial.unlink(missing_ok=True)


def write_text_atomically(path: Path, text: str) -> None:
    with atomic_path(path) as partial:
        partial.write_text(text)


def write_csv(path: Path, rows: list[dict[str, object]], fields: list[str]) -> None:
    """A CSV with a header, "\n" line ends (so git sees no churn), written atomically."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomically(path, buffer.getvalue())


def contained_file(root: Path, path: Path) -> tuple[Path | None, str]:
    """`path` resolved when it is a file inside resolved `root`, else None and why. The one check every reader of
    a drop passes first, so a symlink, `..` or absolute name that leads out of the drop is refused unread."""
    try:
        target = Path(path).resolve()
        if not target.is_relative_to(Path(root).resolve()):
            return None, f"leads outside the drop (to {target})"
        return (target, "") if target.is_file() else (None, "names no file")
    except (OSError, RuntimeError, ValueError) as err:  # a symlink loop, a NUL byte, a name too long
        return None, f"cannot be resolved ({err})"
