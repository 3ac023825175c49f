"""Write files so that a killed run never leaves one that looks complete, and never through a link.

Write to a temporary name in the same folder, fsync, then rename over the target (and fsync the
folder, so the rename itself survives a power cut). A failure or Ctrl-C inside the block removes
the temporary file and leaves the target as it was; a full disk or a folder without write
permission becomes a clean `ResourceError` / `InputError` naming the target. Temporaries left by
a run that was killed outright (SIGKILL, power cut) are hidden (`.<name>.<random>.tmp<suffix>`)
and removed by `remove_stale_temporaries` when the writer resumes.

Symbolic links: a name edgeseg creates, truncates, renames over or deletes is never followed. Anyone
who can write into a shared output folder could otherwise plant `OUT/.edgeseg.lock -> ~/victim` and
make the next run overwrite the victim. `refuse_link` stops such a run with exit 2 naming the link;
`open_new` opens with O_NOFOLLOW so the check cannot be raced; `unlink_own` deletes only files, never
a link someone else put there.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from pathlib import Path
from typing import Iterator

from edgeseg.runtime.errors import InputError, os_error

TMP_MARK = ".tmp"


@contextlib.contextmanager
def atomic_path(target: str | Path, *, force: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside `target`; on success it is renamed to `target`.

    Keeps the target's suffixes (e.g. `.nii.gz`) on the temporary name so that writers which
    infer the format from the name (nibabel) do the right thing.
    """
    target = Path(target)
    refuse_link(target, doing="replaces a file")
    if target.exists() and not force:
        raise InputError(
            "already exists; refusing to overwrite it", path=target, fix="pass --force to overwrite, or choose another output"
        )
    suffix = "".join(target.suffixes)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=f"{TMP_MARK}{suffix}", dir=target.parent)
    except OSError as e:
        _reraise(e, target)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        try:
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; the result should read like any file the user writes
            yield tmp
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp, target)
        except OSError as e:
            _reraise(e, target)
        fsync_dir(target.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


def refuse_link(path: str | Path, *, doing: str = "writes") -> None:
    """Refuse (InputError, exit 2) when `path` is a symbolic link: edgeseg never follows one at a name it manages."""
    p = Path(path)
    if p.is_symlink():
        try:
            to = os.readlink(p)
        except OSError:
            to = "?"
        raise InputError(f"is a symbolic link (to {to}); edgeseg never {doing} through a link at a name it manages",
                         path=p, fix="remove or rename the link (it may be someone else's trap), or choose another --out")


def open_new(path: str | Path, *, append: bool = False) -> int:
    """A file descriptor for writing `path` (created, truncated unless `append`), never through a link."""
    p = Path(path)
    refuse_link(p)
    flags = os.O_WRONLY | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | (os.O_APPEND if append else os.O_TRUNC)
    try:
        return os.open(p, flags, 0o666)
    except OSError as e:
        if e.errno == errno.ELOOP:  # became a link between the check and the open
            refuse_link(p)
        raise


def write_small_text(path: str | Path, text: str, *, append: bool = False) -> None:
    """Write (or append) a small text file in place, never through a link (for markers and logs)."""
    fd = open_new(path, append=append)
    with os.fdopen(fd, "a" if append else "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()


def unlink_own(path: str | Path, *, missing_ok: bool = True) -> None:
    """Delete a file edgeseg wrote; a symbolic link at that name is refused, not deleted."""
    refuse_link(path, doing="deletes")
    Path(path).unlink(missing_ok=missing_ok)


def _reraise(e: OSError, target: Path) -> None:
    err = os_error(e, target, doing=f"writing {target.name}")
    if err is None:
        raise e
    raise err from None


def fsync_dir(folder: Path) -> None:
    """Make a rename or a new file in `folder` durable (no-op where directories cannot be fsynced)."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return  # not supported here (e.g. Windows): the rename is still atomic
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def temporaries_of(target: str | Path) -> list[Path]:
    """The temporary files `atomic_path(target)` makes (and a killed run may have left behind)."""
    target = Path(target)
    suffix = "".join(target.suffixes)
    return sorted(target.parent.glob(f".{_glob_escape(target.name)}.*{TMP_MARK}{_glob_escape(suffix)}"))


def remove_stale_temporaries(targets) -> list[Path]:
    """Remove what killed runs left while writing `targets`; call it only while holding the folder's lock."""
    removed = []
    for target in targets:
        for tmp in temporaries_of(target):
            if tmp.is_symlink():
                continue  # not a temporary edgeseg made: never delete it
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def _glob_escape(text: str) -> str:
    import glob

    return glob.escape(text)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_bytes_atomic(target: str | Path, data: bytes, *, force: bool = False) -> Path:
    with atomic_path(target, force=force) as tmp:
        tmp.write_bytes(data)
    return Path(target)


def write_text_atomic(target: str | Path, text: str, *, force: bool = False) -> Path:
    return write_bytes_atomic(target, text.encode("utf-8"), force=force)
