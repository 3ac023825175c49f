"""Helpers shared by the benchmark scripts: where results go and how a machine is named."""

from __future__ import annotations

import json
from pathlib import Path

from edgeseg.bench.machine import cpu_tag as machine_tag  # noqa: F401  (one naming scheme for every result)
from edgeseg.runtime.atomic import write_text_atomic
from edgeseg.runtime.host import peak_rss_gib  # noqa: F401  (re-exported for the scripts)
from edgeseg.runtime.manifest import portable_paths

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def write_result(name: str, result: dict, *, machine: str | None = None, indent: int = 2, root: Path = RESULTS) -> Path:
    """Write `result` as benchmarks/results/<machine>/<name>.json (machine: this CPU's tag by default; `root`: another
    results folder, for a smoke test)."""
    dest = Path(root) / (machine or machine_tag()) / f"{name}.json"
    dest.parent.mkdir(parents=True, exist_ok=True)
    result = portable_paths(result)  # never this machine's absolute paths
    return write_text_atomic(dest, json.dumps(result, indent=indent) + "\n", force=True)  # never through a link
