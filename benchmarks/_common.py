"""Helpers shared by the benchmark scripts: where results go and how a machine is named."""

from __future__ import annotations

import os
import re
from pathlib import Path

from edgeseg.runtime.host import peak_rss_gib  # noqa: F401  (re-exported for the scripts)

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def machine_tag() -> str:
    """e.g. 'cpu-amd-epyc-2c': CPU vendor and model, cores (the GPU, when one is used, is named by the caller)."""
    from edgeseg.runtime.host import cpu_model

    model = cpu_model().lower()
    model = re.sub(r"\((r|tm)\)|\bcpu\b|\bprocessor\b|@.*$|\d+-core", " ", model)
    slug = re.sub(r"[^a-z0-9]+", "-", model).strip("-")
    slug = "-".join(slug.split("-")[:4]) or "unknown"
    return f"cpu-{slug}-{os.cpu_count()}c"

