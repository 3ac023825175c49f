"""The plan: the seeded support draw, path-safe unique case ids, queries checked at once, cache.json."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from edgeseg.runtime.errors import InputError

from edgeseg.features.plan import PLAN_KIND, PLAN_NAME, draw_plan, read_plan, write_plan


def test_the_draw_is_seeded_over_sorted_case_ids_and_queries_get_safe_unique_ids(phantoms5, tmp_path):
    support, query = phantoms5
    odd = [tmp_path / "a" / ".my scan.nii.gz", tmp_path / "b" / ".my scan.nii.gz"]
    for p in odd:
        p.parent.mkdir()
        shutil.copy(query, p)
    plan = draw_plan(support, "liver", 2, 0, odd, {"margin_mm": 20.0})
    ids = sorted(plan.drawn["draw"]["candidates"])
    want = [ids[i] for i in sorted(np.random.default_rng(0).choice(len(ids), size=2, replace=False))]
    assert [c.id for c in plan.cases if c.role == "support"] == plan.drawn["draw"]["chosen"] == want
    assert [c.id for c in plan.cases if c.role == "query"] == ["query-.my_scan", "query-.my_scan-2"]
    assert plan.settings == {"margin_mm": 20.0, "organ": "liver"}
    assert draw_plan(support, "liver", None, 0, (), {}).drawn["draw"]["chosen"] == ids  # no k: every case
    as_json = plan.to_dict()
    assert as_json["cases"][-1] == {"id": "query-.my_scan-2", "role": "query", "image": str(odd[1].resolve())}


def test_bad_draws_and_queries_are_refused_before_any_work(phantoms5, tmp_path):
    support, _ = phantoms5
    with pytest.raises(InputError, match="--k 4 must be a whole number from 1 to the 3"):
        draw_plan(support, "liver", 4, 0, (), {})
    with pytest.raises(InputError, match="must be a NIfTI file"):
        draw_plan(support, "liver", 1, 0, [tmp_path / "scan.txt"], {})
    with pytest.raises(InputError):
        draw_plan(support, "liver", 1, 0, [tmp_path / "missing.nii.gz"], {})


def test_the_plan_file_round_trips_and_an_unreadable_one_reads_as_none(tmp_path):
    plan = {"organ": "liver", "cases": [{"id": "s0001", "role": "support", "image": "/x"}]}
    write_plan(tmp_path, "/trunk", "ab" * 32, plan)
    import json

    on_disk = json.loads((tmp_path / PLAN_NAME).read_text())
    assert on_disk == {"kind": PLAN_KIND, "trunk": {"folder": "/trunk", "manifest_sha256": "ab" * 32}, "plan": plan}
    assert read_plan(tmp_path) == plan
    (tmp_path / PLAN_NAME).write_text("{torn")
    assert read_plan(tmp_path) is None
