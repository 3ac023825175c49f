"""The `edgeseg` command line: the Typer app, one module per command group, registered here in the order
`edgeseg --help` lists them.

Heavy modules (torch, monai, onnxruntime, scipy) are imported inside the commands so that
`edgeseg --help` answers at once. Every command maps a user error to exit code 2 and an internal
error to 1; with `--json`, errors are printed as JSON too (`edgeseg.cli.output`).
"""

from __future__ import annotations

import os
import sys

import typer

from edgeseg.cli import adapt, bench, cache, data, experiments, export, fuse, info, predict, triton

# OpenMP threads that wait for work sleep instead of spinning: on a machine where another job holds a
# core, spinning threads turned 45 s of adapter training into 460-650 s. Set before torch loads its
# OpenMP runtime (the commands import torch lazily); a value the user set wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

app = typer.Typer(
    name="edgeseg",
    help="Few-shot CT organ segmentation at the clinical edge: export, adapt, fuse, predict, benchmark.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

for command in (info.info, data.phantom, export.export, experiments.pretrain, cache.cache, adapt.adapt, fuse.fuse,
                predict.predict, triton.triton, experiments.fewshot, experiments.demo, export.checkpoint, data.dataset):
    app.command()(command)
app.add_typer(bench.app, name="bench")


def main() -> None:
    import logging
    import signal
    import warnings

    from edgeseg.runtime.errors import Terminated

    def _terminate(signum, frame):  # SIGTERM (kill, a scheduler's timeout) stops a run as Ctrl-C does: cleanup, exit 143
        raise Terminated()

    signal.signal(signal.SIGTERM, _terminate)
    if not os.environ.get("EDGESEG_DEBUG"):  # libraries' warnings are for their developers, not for a user's terminal
        warnings.filterwarnings("ignore")
        logging.getLogger("nibabel").setLevel(logging.ERROR)
    if "--json" not in sys.argv[1:]:
        app()
        return
    # With --json every error is one JSON object on stdout, a bad option value (Typer checks the choices) too.
    import json

    from edgeseg.runtime.errors import InputError

    try:
        code = app(standalone_mode=False)
    except typer.Abort:
        raise SystemExit(1) from None
    except Exception as e:  # a usage error: click's, or Typer's own copy of it in newer Typer (same interface)
        if not (callable(getattr(e, "format_message", None)) and isinstance(getattr(e, "exit_code", None), int)):
            raise
        where = e.ctx.command_path if getattr(e, "ctx", None) is not None else "edgeseg"
        print(json.dumps(InputError(e.format_message(), fix=f"see `{where} --help`").to_dict()))
        raise SystemExit(e.exit_code) from None
    raise SystemExit(code if isinstance(code, int) else 0)
