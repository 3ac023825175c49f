"""A case folder is written whole or not at all, so an interrupted feature computation resumes.

Each case is written into ``.<id>.partial/`` beside its final folder (every file fsynced as it is
written) and renamed to ``<id>/`` when complete; a rerun keeps complete cases and deletes the partial
ones (`remove_leftovers`). `edgeseg cache` and the few-shot protocol write their cases this way.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from edgeseg.runtime.atomic import fsync_dir, refuse_link
from edgeseg.runtime.errors import InputError

__all__ = ["PARTIAL_SUFFIX", "case_complete", "commit_case", "own_cases", "remove_leftovers", "save_npy",
           "write_durable", "writing_case"]

PARTIAL_SUFFIX = ".partial"


def save_npy(path: Path, array: np.ndarray) -> int:
    """Write `array` as .npy (no pickles), fsynced; returns its size in bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        np.save(fh, array, allow_pickle=False)
        fh.flush()
        os.fsync(fh.fileno())
    return path.stat().st_size


def write_durable(path: Path, text: str) -> None:
    """Write `text` into a file of an unfinished case, fsynced (the case's rename makes it visible)."""
    with open(path, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())


def commit_case(partial: Path, final: Path) -> None:
    """Make a fully written case visible: one rename, then the folder's entry is made durable."""
    fsync_dir(partial)
    os.replace(partial, final)
    fsync_dir(final.parent)


@contextlib.contextmanager
def writing_case(final: Path) -> Iterator[Path]:
    """Yield the case's empty ``.<id>.partial/`` folder to write into; commit it as `final` when the block
    ends. Any failure (disk full, Ctrl-C, a bad scan) removes the unfinished folder and is raised."""
    partial = final.with_name(f".{final.name}{PARTIAL_SUFFIX}")
    refuse_link(partial)
    partial.mkdir()
    try:
        yield partial
        commit_case(partial, final)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise


def remove_leftovers(cases_dir: Path, log: Callable[[str], None]) -> None:
    """Delete the unfinished cases a killed run left in `cases_dir` (a SIGKILL cannot clean up after itself)."""
    for leftover in cases_dir.glob(f".*{PARTIAL_SUFFIX}"):
        refuse_link(leftover, doing="deletes")
        log(f"removing the unfinished case {leftover.name} left by an interrupted run")
        shutil.rmtree(leftover)


def case_complete(folder: Path) -> bool:
    """True when `folder/meta.json` lists its files and each is there at its recorded size."""
    meta = folder / "meta.json"
    if not meta.is_file():
        return False
    try:
        m = json.loads(meta.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return all((folder / name).is_file() and (folder / name).stat().st_size == size
               for name, size in (m.get("files") or {}).items()) and bool(m.get("files"))


_OWN_CASE_FILE = re.compile(r"^[^/]+/[^/]+\.(npy|json)$|^[^/]+/[^/]+/[^/]+\.(npy|json)$")


def own_cases(cases_dir: Path) -> list[Path]:
    """The case folders in `cases_dir` that a feature build wrote (only .npy and .json files, at the depths
    it writes them: a case's own files and its regions' files); anything else there is refused, never deleted."""
    refuse_link(cases_dir, doing="deletes")
    if not cases_dir.exists():
        return []
    found, strangers = [], []
    for d in sorted(cases_dir.iterdir()):
        files = [p.relative_to(cases_dir).as_posix() for p in d.rglob("*") if p.is_file() or p.is_symlink()] \
            if d.is_dir() and not d.is_symlink() else [d.name]
        bad = [f for f in files if not _OWN_CASE_FILE.match(f) or (cases_dir / f).is_symlink()]
        (strangers.extend(bad) if bad or not d.is_dir() or d.is_symlink() else found.append(d))
    if strangers:
        raise InputError(f"holds files that a feature cache does not write ({', '.join(strangers[:5])}): edgeseg will "
                         "not delete them, even with --force", path=cases_dir,
                         fix="choose a new or empty folder for --out")
    return found
