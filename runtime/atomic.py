"""Write files so that a killed run never leaves one that looks complete.

Write to a temporary name in the same folder, fsync, then rename over the target (and fsync the
folder, so the rename itself survives a power cut). A failure or Ctrl-C inside the block removes
the temporary file and leaves the target as it was; a full disk or a folder without write
permission becomes a clean `ResourceError` / `InputError` naming the target. Temporaries left by
a run that was killed outright (SIGKILL, power cut) are hidden (`.<name>.<random>.tmp<suffix>`)
and removed by `remove_stale_temporaries` when the writer resumes.
"""

from __future__ import annotations

import contextlib
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
