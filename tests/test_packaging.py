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
