"""Helpers shared by the benchmark scripts: where results go and how a machine and its memory are named."""

from __future__ import annotations

import os
import re
import resource
from pathlib import Path

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


def peak_rss_gib() -> float:
    """This process's peak resident memory (VmHWM: unlike ru_maxrss, not inherited across fork/exec)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 2**20, 2)
    except OSError:
        pass
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
