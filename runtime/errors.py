"""Errors a user can act on.

Every error names the file, says what is wrong and what to do. The CLI maps `InputError`
(bad input: exit code 2) apart from everything else (internal error: exit code 1). `ResourceError`
(disk full, memory budget) exits with 2 too: the user can act on it. `internal_errors` wraps a
command so that even a bug ends in one clear message (and one JSON object with `--json`), exit 1.
"""

from __future__ import annotations

import contextlib
import errno
import os
import traceback
from pathlib import Path
from typing import Iterator


class EdgesegError(Exception):
    """An error with a user-facing message; `exit_code` is what the CLI exits with."""

    exit_code = 1

    def __init__(self, problem: str, *, path: str | Path | None = None, fix: str | None = None):
        self.path = None if path is None else str(path)
        self.problem = problem
        self.fix = fix
        super().__init__(self.message)

    @property
    def message(self) -> str:
        head = f"{self.path}: {self.problem}" if self.path else self.problem
        return f"{head}\n  fix: {self.fix}" if self.fix else head

    def to_dict(self) -> dict:
        return {
            "error": type(self).__name__,
            "path": self.path,
            "problem": self.problem,
            "fix": self.fix,
            "exit_code": self.exit_code,
        }


class InputError(EdgesegError):
    """The user's input (scan, label, checkpoint, dataset, option) is wrong."""

    exit_code = 2


class BackendUnavailable(EdgesegError):
    """An optional backend is not installed or cannot run here; never fall back silently."""

    exit_code = 2


class ResourceError(EdgesegError):
    """The machine's limits, not the input and not a bug: disk full, a scan beyond the memory budget.

    Exit code 2, as for bad input: the user can act on it (free space, raise the budget, choose
    another output disk); nothing was left half-written.
    """

    exit_code = 2


class InternalError(EdgesegError):
    """An unexpected failure: a bug in edgeseg, not a problem with the input. Exit code 1.

    Carries the traceback so that `--json` output is still one machine-readable object.
    """

    exit_code = 1

    def __init__(self, problem: str, *, path: str | Path | None = None, fix: str | None = None,
                 traceback_text: str | None = None):
        self.traceback_text = traceback_text
        super().__init__(problem, path=path, fix=fix)

    def to_dict(self) -> dict:
        return {**super().to_dict(), "traceback": self.traceback_text}


class Interrupted(EdgesegError):
    """The user stopped the run (Ctrl-C / SIGINT): exit code 130, as shells expect."""

    exit_code = 130


class Terminated(KeyboardInterrupt):
    """SIGTERM turned into an exception (by the CLI), so a run stops as on Ctrl-C: cleanup, a message."""


class TerminatedError(Interrupted):
    """The run was terminated (SIGTERM): exit code 143 (128 + 15), as shells expect."""

    exit_code = 143


DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)})
NO_PERMISSION_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS})


def os_error(e: OSError, path: str | Path | None = None, *, doing: str = "writing") -> EdgesegError | None:
    """The user-facing error for an OSError the user can fix (disk full, no permission); None for others."""
    where = path if path is not None else getattr(e, "filename", None)
    if e.errno in DISK_FULL_ERRNOS:
        what = "disk quota exceeded" if e.errno != errno.ENOSPC else "no space left on the device"
        return ResourceError(
            f"{doing} failed: {what}; the unfinished file was removed", path=where,
            fix="free some disk space (or write to a disk with room, e.g. another --out) and run the same "
                "command again: finished outputs are kept and the rest is redone")
    if e.errno in NO_PERMISSION_ERRNOS:
        what = "read-only file system" if e.errno == errno.EROFS else "permission denied"
        return InputError(f"{doing} failed: {what}", path=where,
                          fix="choose a folder you can write to (e.g. another --out), or fix its permissions")
    return None


@contextlib.contextmanager
def user_facing_os_errors(path: str | Path | None = None, *, doing: str = "writing",
                          disk_full_only: bool = False) -> Iterator[None]:
    """Turn a disk-full or permission OSError raised inside the block into a clean `EdgesegError`.

    `disk_full_only`: translate only ENOSPC/EDQUOT (which only writes raise), for blocks that also read.
    """
    try:
        yield
    except OSError as e:
        if disk_full_only and e.errno not in DISK_FULL_ERRNOS:
            raise
        err = os_error(e, path, doing=doing)
        if err is None:
            raise
        raise err from None


@contextlib.contextmanager
def internal_errors() -> Iterator[None]:
    """Turn any other exception raised inside the block into an `InternalError` (exit 1, traceback kept).

    `EdgesegError` (and its exit code) and SystemExit pass through; Ctrl-C becomes `Interrupted` (exit
    130, one JSON object with --json); OSErrors the user can fix become `os_error`'s. Set EDGESEG_DEBUG=1
    to let the original exception through instead.
    """
    try:
        yield
    except EdgesegError:
        raise
    except MemoryError as e:
        if os.environ.get("EDGESEG_DEBUG"):
            raise
        raise ResourceError(f"ran out of memory ({type(e).__name__}{': ' + str(e) if str(e) else ''}); nothing "
                            "unfinished was kept",
                            fix="free memory or run on a machine with more; for predict, --max-memory makes edgeseg "
                                "refuse a scan that will not fit before reading it; crop very large scans") from None
    except Terminated:
        raise TerminatedError("terminated (SIGTERM); nothing unfinished was kept",
                              fix="run the same command again to resume: finished cases are kept, the rest is redone") from None
    except KeyboardInterrupt:
        raise Interrupted("interrupted (Ctrl-C); nothing unfinished was kept",
                          fix="run the same command again to resume: finished cases are kept, the rest is redone") from None
    except OSError as e:
        err = os_error(e)
        if err is not None:
            raise err from None
        _raise_internal(e)
    except Exception as e:
        if type(e).__module__.split(".")[0] in ("click", "typer"):  # the CLI's own exits and usage errors
            raise
        _raise_internal(e)


def _raise_internal(e: BaseException) -> None:
    if os.environ.get("EDGESEG_DEBUG"):
        raise e
    tb = traceback.extract_tb(e.__traceback__)
    where = f" at {Path(tb[-1].filename).name}:{tb[-1].lineno} in {tb[-1].name}" if tb else ""
    raise InternalError(
        f"internal error: {type(e).__name__}: {e}{where}",
        fix="this is a bug in edgeseg, not a problem with your input: please report it with this message "
            "(rerun with EDGESEG_DEBUG=1 for the full traceback; --json output carries it)",
        traceback_text="".join(traceback.format_exception(type(e), e, e.__traceback__)),
    ) from e
