"""What every command shares about output: the --json option, the console, showing a result as text or
JSON, logging, and turning errors into a message and an exit code.

With --json, stdout carries only the JSON result (or the JSON error); progress and log lines go to stderr.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any, Callable, Iterator

import typer

JSON_OPT = typer.Option(False, "--json", help="Print machine-readable JSON on stdout.")


def console(stderr: bool = False):
    from rich.console import Console

    return Console(stderr=stderr)


def printer(con) -> Callable[[str], None]:
    """A `log` for the library: each message printed as it is (no rich markup, no highlighting)."""
    from rich.markup import escape

    return lambda msg: con.print(escape(msg), highlight=False)


def show(result: Any, as_json: bool, text: Callable[[], None] | None = None) -> None:
    """A command's result: its JSON on stdout with --json, else what `text()` prints (nothing if None)."""
    if as_json:
        print(json.dumps(result, indent=2))
    elif text is not None:
        text()


@contextlib.contextmanager
def user_errors(as_json: bool) -> Iterator[None]:
    """Turn edgeseg errors into a clear message and the right exit code; never a traceback for bad input."""
    from edgeseg.runtime.errors import EdgesegError, internal_errors

    try:
        with internal_errors():  # a bug exits 1 with one clean message (JSON too), Ctrl-C 130, disk full 2
            yield
    except EdgesegError as e:
        if as_json:
            print(json.dumps(e.to_dict()))
        else:
            from rich.markup import escape

            console(stderr=True).print(f"[bold red]error:[/] {escape(e.message)}", highlight=False, soft_wrap=True)
        raise typer.Exit(e.exit_code) from None
    except KeyboardInterrupt as e:
        from edgeseg.runtime.errors import Terminated

        console(stderr=True).print("[yellow]terminated[/]" if isinstance(e, Terminated) else "[yellow]interrupted[/]")
        raise typer.Exit(143 if isinstance(e, Terminated) else 130) from None
