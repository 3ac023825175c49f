"""Errors a user can act on.

Every error names the file, says what is wrong and what to do. The CLI maps `InputError`
(bad input: exit code 2) apart from everything else (internal error: exit code 1).
"""

from __future__ import annotations

from pathlib import Path


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
