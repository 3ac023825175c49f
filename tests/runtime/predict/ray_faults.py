"""Faults for the Ray cohort tests, installed in every Ray worker (`worker_process_setup_hook`).

A worker that writes the first mask of case C dies on the spot (`os._exit`, as the OOM killer or a
lost node ends it) when it can take a token `<C>.<n>` from the folder EDGESEG_TEST_KILL_DIR names:
each token kills one attempt (taking one is an atomic unlink), so `<C>.1` kills the first attempt and
`<C>.1` plus `<C>.2` kill two. Nothing here is in the product: the actor runs edgeseg's own code.
"""

from __future__ import annotations

import os
from pathlib import Path


def install() -> None:
    kill_dir = os.environ.get("EDGESEG_TEST_KILL_DIR")
    if not kill_dir:
        return
    import edgeseg.runtime.predict.case as case_mod

    real = case_mod.save_like

    def save_like(data, like, path, **kw):
        written = real(data, like, path, **kw)  # the first output is complete on disk: the case is half-written
        case = Path(path).name.split("_")[0]
        for token in sorted(Path(kill_dir).glob(f"{case}.*")):
            try:
                token.unlink()
            except FileNotFoundError:
                continue  # another worker took it
            os._exit(1)
        return written

    case_mod.save_like = save_like
