"""One writer per output folder: an exclusive lock held for the whole run.

`output_lock(folder, command)` takes an exclusive, non-blocking `flock` on `folder/.edgeseg.lock`
(creating the folder when needed), writes the holder's PID, host, command and start time into it,
and holds it until the block ends. A second run on the same folder is refused at once with an
`InputError` naming the folder and the run that holds it: two runs never interleave their writes.
The kernel drops the lock when its process dies (killed, crashed, power cut), so a lock file left
behind never blocks a later run. On release the lock file is removed, and the folder too when this
lock created it and nothing was written into it. A folder that cannot be created (no permission,
read-only) is a clean `InputError`, and a full disk inside the block a `ResourceError` naming the
folder, not a traceback.

`locks_output(command)` does the same for a whole function whose `out` argument is the folder.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import functools
import inspect
import json
import os
import socket
from pathlib import Path
from typing import Callable, Iterator, TypeVar

from edgeseg.runtime.atomic import refuse_link
from edgeseg.runtime.errors import InputError, user_facing_os_errors

__all__ = ["LOCK_NAME", "locks_output", "output_lock", "read_holder"]

LOCK_NAME = ".edgeseg.lock"

try:  # POSIX
    import fcntl

    def _try_lock(fd: int) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False

    _UNLINK_WHILE_OPEN = True
except ImportError:  # Windows: a byte-range lock on the file's first byte
    import msvcrt

    def _try_lock(fd: int) -> bool:
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
            return True
        except OSError:
            return False

    _UNLINK_WHILE_OPEN = False


def read_holder(folder: str | Path) -> dict:
    """What the lock file of `folder` says about the run holding it ({} when unreadable)."""
    try:
        return json.loads((Path(folder) / LOCK_NAME).read_text() or "{}")
    except (OSError, ValueError):
        return {}


def _describe(holder: dict) -> str:
    if not holder.get("pid"):
        return "another edgeseg run"
    where = f" on {holder['host']}" if holder.get("host") and holder["host"] != socket.gethostname() else ""
    since = f", started {holder['started']}" if holder.get("started") else ""
    return f"{holder.get('command') or 'another edgeseg run'} (PID {holder['pid']}{where}{since})"


@contextlib.contextmanager
def output_lock(folder: str | Path, command: str = "edgeseg") -> Iterator[Path]:
    """Hold the exclusive lock of output folder `folder` for the block; yields the folder."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise InputError("is a file, not a folder", path=folder, fix="choose a folder for --out")
    created = []  # folders this lock makes, deepest first: removed again if they stay empty
    p = folder
    while not p.exists() and p != p.parent:
        created.append(p)
        p = p.parent
    with user_facing_os_errors(folder, doing="creating the output folder"):
        folder.mkdir(parents=True, exist_ok=True)
    lock_path = folder / LOCK_NAME
    refuse_link(lock_path)
    fd = None
    try:
        with user_facing_os_errors(lock_path, doing="creating the lock file"):
            fd = _acquire(lock_path, folder)
            record = {"pid": os.getpid(), "host": socket.gethostname(), "command": command,
                      "started": _dt.datetime.now().astimezone().isoformat(timespec="seconds")}
            os.ftruncate(fd, 0)
            os.write(fd, (json.dumps(record) + "\n").encode())
        with user_facing_os_errors(folder, doing="writing into the output folder", disk_full_only=True):
            yield folder
    finally:
        if fd is not None:
            if _UNLINK_WHILE_OPEN and _is_our_file(fd, lock_path):
                with contextlib.suppress(OSError):
                    lock_path.unlink()  # still held: nobody can take a lock on this file in between
            os.close(fd)  # releases the lock
            if not _UNLINK_WHILE_OPEN and not lock_path.is_symlink():
                with contextlib.suppress(OSError):
                    lock_path.unlink()
        for d in created:
            try:
                d.rmdir()  # only succeeds while empty: never removes what a run wrote
            except OSError:
                break


def _is_our_file(fd: int, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), os.lstat(path))
    except OSError:
        return False


def _acquire(lock_path: Path, folder: Path) -> int:
    for _ in range(20):
        try:  # O_NOFOLLOW: a link planted at the lock's name is refused, never opened (and truncated)
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o666)
        except OSError as e:
            if e.errno == errno.ELOOP:
                refuse_link(lock_path)
            raise
        if not _try_lock(fd):
            os.close(fd)
            raise InputError(
                f"is in use by {_describe(read_holder(folder))}: two runs must not write into one folder",
                path=folder,
                fix="wait for that run to finish (or stop it), or write to another folder (--out)")
        # The holder before us may have removed the file between our open and our lock: then the lock we
        # hold is on a file nobody else will open. Only a lock on the file at the path counts.
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(lock_path))
        except FileNotFoundError:
            same = False
        if same or not _UNLINK_WHILE_OPEN:
            return fd
        os.close(fd)
    raise InputError("its lock file keeps changing under this run", path=folder,
                     fix="another program is creating and removing .edgeseg.lock here; write to another folder")


F = TypeVar("F", bound=Callable)


def locks_output(command: str, argument: str = "out") -> Callable[[F], F]:
    """Decorator: hold `output_lock` on the function's `argument` (a folder) for the whole call."""

    def wrap(fn: F) -> F:
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def locked(*args, **kwargs):
            folder = signature.bind(*args, **kwargs).arguments[argument]
            with output_lock(Path(folder).expanduser(), command):
                return fn(*args, **kwargs)

        return locked  # type: ignore[return-value]

    return wrap
