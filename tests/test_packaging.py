"""What `pip install .` ships: every package folder of the tree is listed in pyproject.toml.

The tree maps `runtime/` and `export/` to `edgeseg.runtime` and `edgeseg.export`, so packages are listed by
hand; an editable install finds an unlisted subpackage anyway, a wheel silently leaves it out.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_folder_is_listed_for_the_wheel():
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(tool["packages"])
    found = set()
    for name, folder in tool["package-dir"].items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            found.add(".".join([name, *rel.parts]))
    assert found - listed == set(), f"package folders pyproject.toml does not list: {sorted(found - listed)}"
    assert listed - found == set(), f"listed packages with no folder: {sorted(listed - found)}"


def test_onnxruntime_comes_from_exactly_one_extra_cpu_or_gpu():
    """onnxruntime and onnxruntime-gpu install one module: neither is a base dependency, [gpu] never brings
    the CPU wheel, and the Makefile (CI) installs [cpu]."""
    import re

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]

    def names(reqs):
        return {re.match(r"[A-Za-z0-9_.-]+", r).group(0).lower() for r in reqs}

    assert not names(project["dependencies"]) & {"onnxruntime", "onnxruntime-gpu"}
    extras = project["optional-dependencies"]
    assert names(extras["cpu"]) == {"onnxruntime"}
    for gpu in ("gpu", "gpu-cu12"):
        assert names(extras[gpu]) == {"onnxruntime-gpu"}
    for other, reqs in extras.items():
        if other not in ("cpu", "gpu", "gpu-cu12"):
            assert not names(reqs) & {"onnxruntime", "onnxruntime-gpu"}, other
    assert re.search(r'-e "\.\[cpu,', (ROOT / "Makefile").read_text())
