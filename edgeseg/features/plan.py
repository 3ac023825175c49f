"""The plan of a feature cache: which cases it holds (the seeded support draw, the query scans) and with
which settings. `edgeseg cache` writes it first as ``cache.json``; a rerun into the same folder resumes
only when its own plan is the recorded one.

``cache.json``: ``{"kind": "feature-cache-plan", "trunk": {"folder", "manifest_sha256"}, "plan": {organ,
data, layout, k, seed, draw, settings, cases: [{id, role, image}]}}``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeseg.runtime.atomic import fsync_dir, write_text_atomic
from edgeseg.runtime.errors import InputError

__all__ = ["PLAN_KIND", "PLAN_NAME", "CachePlan", "PlannedCase", "draw_plan", "read_plan", "write_plan"]

PLAN_NAME = "cache.json"
PLAN_KIND = "feature-cache-plan"
_ID_RE = re.compile(r"[^A-Za-z0-9._-]+")


def _safe_id(text: str, taken: set[str]) -> str:
    """A folder name for a case: path-safe, never hidden, unique among `taken` (which it joins)."""
    base = _ID_RE.sub("_", text).lstrip(".") or "case"
    cid, i = base, 2
    while cid in taken:
        cid, i = f"{base}-{i}", i + 1
    taken.add(cid)
    return cid


@dataclass
class PlannedCase:
    id: str  # its folder under cases/
    role: str  # "support" | "query"
    image: Path
    case: Any = None  # the dataset's Case for a support


@dataclass
class CachePlan:
    """The cases to cache and what they were drawn from: ``drawn`` holds organ, data, layout, k, seed, draw."""

    cases: list[PlannedCase]
    drawn: dict
    settings: dict  # how regions and queries are computed (CacheConfig.settings), with the organ

    @property
    def organ(self) -> str:
        return self.drawn["organ"]

    def to_dict(self) -> dict:
        """The plan as ``cache.json`` holds it (JSON types only: a resume compares it with the recorded one)."""
        plan = {**self.drawn, "settings": self.settings,
                "cases": [{"id": c.id, "role": c.role, "image": str(c.image)} for c in self.cases]}
        return json.loads(json.dumps(plan, default=str))


def draw_plan(data, organ: str, k: int | None, seed: int, query: Sequence[str | Path], settings: dict) -> CachePlan:
    """The supports of `organ` in `data` (k of them drawn with numpy's default_rng(seed), or all) and the
    query scans, each checked now (not hours later), to be cached with `settings` (the dataset's organ name
    is added to them)."""
    from edgeseg.data.datasets import open_dataset
    from edgeseg.runtime.nifti import is_nifti_path, open_nifti, shape_3d

    reader = open_dataset(data, organ)
    cases = sorted(reader.cases(), key=lambda c: c.case_id)
    if not cases:
        raise InputError(f"the dataset has no case labelled {organ!r}", path=data, fix="check --organ and --data")
    ids = [c.case_id for c in cases]
    draw: dict[str, Any] = {"from": len(cases), "candidates": ids}
    if k is None:
        chosen = cases
        draw["method"] = "every case (no --k)"
    else:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= int(k) <= len(cases):
            raise InputError(f"--k {k!r} must be a whole number from 1 to the {len(cases)} case(s) labelled {organ!r}",
                             path=data, fix=f"pass --k 1..{len(cases)}, or leave it out to cache every case")
        picked = np.random.default_rng(int(seed)).choice(len(cases), size=int(k), replace=False)
        chosen = [cases[i] for i in sorted(int(i) for i in picked)]
        draw["method"] = "numpy.random.default_rng(seed).choice(len(candidates), k, replace=False), sorted"
    draw["chosen"] = [c.case_id for c in chosen]
    taken: set[str] = set()
    planned = [PlannedCase(_safe_id(c.case_id, taken), "support", Path(c.image), c) for c in chosen]
    for q in query:
        path = Path(q).expanduser()
        if not is_nifti_path(path):
            raise InputError("a query scan must be a NIfTI file (.nii or .nii.gz)", path=path,
                             fix="pass --query SCAN.nii.gz (an unlabelled CT)")
        shape_3d(open_nifti(path).shape, path)  # refuse a missing, unreadable or non-3D scan now, not hours later
        stem = re.sub(r"\.nii(\.gz)?$", "", path.name, flags=re.IGNORECASE)
        planned.append(PlannedCase(_safe_id(f"query-{stem}", taken), "query", path.resolve()))
    layout = getattr(reader, "layout", "")
    drawn = {"organ": reader.organ, "data": str(Path(data).expanduser().resolve()), "layout": layout,
             "k": None if k is None else int(k), "seed": int(seed), "draw": draw}
    return CachePlan(planned, drawn, {**settings, "organ": reader.organ})


def write_plan(out: Path, trunk_folder: str, trunk_hash: str, plan: dict) -> None:
    """Record the plan (and the trunk it is for) in ``out/cache.json``, atomically, before any case."""
    write_text_atomic(out / PLAN_NAME, json.dumps({"kind": PLAN_KIND, "trunk": {
        "folder": trunk_folder, "manifest_sha256": trunk_hash}, "plan": plan}, indent=1) + "\n", force=True)
    fsync_dir(out)


def read_plan(out: Path) -> dict | None:
    """The plan recorded in ``out/cache.json``; None when it is unreadable."""
    try:
        return json.loads((out / PLAN_NAME).read_text()).get("plan")
    except (OSError, json.JSONDecodeError):
        return None
