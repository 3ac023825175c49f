"""Write files so that a killed run never leaves one that looks complete.

Write to a temporary name in the same folder, fsync, then rename over the target.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator

from edgeseg.runtime.errors import InputError


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
    target.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(target.suffixes)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=f".tmp{suffix}", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; the result should read like any file the user writes
    try:
        yield tmp
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


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
