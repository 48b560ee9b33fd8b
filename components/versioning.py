"""Data versions in DVC and git: each ingested drop becomes a commit, so `git log` lists the data's history.

Runs the real `dvc` and `git` commands, as a person would; outside a DVC repo it does nothing.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from components.errors import EarshotError


def _run(args: list[str], cwd: Path) -> str:
    done = subprocess.run(args, cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip().splitlines()
        raise EarshotError(f"{' '.join(args[:4])}: failed ({detail[-1] if detail else done.returncode})")
    return done.stdout


def repo_root(path: Path) -> Path | None:
    """The git + DVC repository holding `path`, or None when there is none."""
    probe = Path(path).resolve()
    while not probe.exists():
        probe = probe.parent
    done = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=probe, capture_output=True, text=True)
    top = Path(done.stdout.strip()) if done.returncode == 0 else None
    return top if top and (top / ".dvc").is_dir() else None


def commit_data_version(tree: Path, ledger: Path, message: str) -> bool:
    """`dvc add` the domain tree, then commit its .dvc file, DVC's .gitignore entry and the ledger."""
    repo = repo_root(tree)
    if repo is None:
        return False
    tree, ledger = Path(tree).resolve(), Path(ledger).resolve()
    _run([sys.executable, "-m", "dvc", "add", "--quiet", str(tree)], repo)
    paths = [str(p.relative_to(repo)) for p in (tree.with_suffix(".dvc"), tree.parent / ".gitignore", ledger)]
    _run(["git", "add", "--", *paths], repo)
    if _run(["git", "status", "--porcelain", "--", *paths], repo).strip():
        _run(["git", "commit", "--quiet", "-m", message, "--", *paths], repo)
    return True


def git_commit(path: Path) -> str:
    """The commit checked out at `path` (with "+dirty" if files differ from it), or "none" outside git."""
    head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=path, capture_output=True, text=True)
    if head.returncode != 0:
        return "none"
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=path, capture_output=True,
                           text=True).stdout.strip()
    return head.stdout.strip() + ("+dirty" if dirty else "")
