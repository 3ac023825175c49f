"""Name and describe the machine a benchmark ran on (torch-free: the GPU through nvidia-smi).

    python -m edgeseg.bench.machine          # the tag, e.g. cpu-amd-epyc-2c, or cpu-amd-epyc-16c-h100-80gb-hbm3 with a GPU
    python -m edgeseg.bench.machine --cpu    # the CPU part only (the folder the CPU benchmark scripts write to)
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

from edgeseg.runtime.host import cpu_model, host_description


def _slug(text: str, parts: int = 4) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return "-".join(slug.split("-")[:parts]) or "unknown"


def cpu_tag() -> str:
    """e.g. 'cpu-amd-epyc-2c': CPU vendor and model, cores (the scheme of benchmarks/results/)."""
    model = cpu_model().lower()
    model = re.sub(r"\((r|tm)\)|\bcpu\b|\bprocessor\b|@.*$|\d+-core", " ", model)
    return f"cpu-{_slug(model)}-{os.cpu_count()}c"


def gpus() -> list[dict]:
    """NVIDIA GPUs as nvidia-smi lists them (name, memory, driver); [] without nvidia-smi or a GPU."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    try:
        proc = subprocess.run([exe, "--query-gpu=index,name,memory.total,driver_version,compute_cap",
                               "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return []
    if proc.returncode != 0:
        return []
    out = []
    for line in proc.stdout.strip().splitlines():
        fields = [f.strip() for f in line.split(",")]
        if len(fields) < 4:
            continue
        entry = {"index": int(fields[0]) if fields[0].isdigit() else fields[0], "name": fields[1],
                 "memory_gib": round(float(fields[2]) / 1024, 1) if re.fullmatch(r"[\d.]+", fields[2]) else None,
                 "driver": fields[3]}
        if len(fields) > 4:
            entry["compute_capability"] = fields[4]
        out.append(entry)
    return out


def gpu_tag(gpu_list: list[dict] | None = None) -> str | None:
    """e.g. 'h100-80gb-hbm3' for the first GPU, None without one."""
    gpu_list = gpus() if gpu_list is None else gpu_list
    if not gpu_list:
        return None
    return _slug(re.sub(r"\bnvidia\b|\bgeforce\b", " ", gpu_list[0]["name"].lower()), parts=5)


def machine_tag(*, with_gpu: bool = True) -> str:
    """The folder name under benchmarks/results/: the CPU tag, plus the first GPU's when there is one."""
    tag = cpu_tag()
    g = gpu_tag() if with_gpu else None
    return f"{tag}-{g}" if g else tag


def describe() -> dict:
    """What a result records about the machine: CPU, cores, memory, platform, GPUs, Python."""
    return {**host_description(), "gpus": gpus(), "python": sys.version.split()[0]}


if __name__ == "__main__":
    print(cpu_tag() if "--cpu" in sys.argv[1:] else machine_tag())
