"""`bench scan` and `bench adapt`: their pure parts (spacings, scaling fit, run plan, schema, tables)."""

from __future__ import annotations

import pytest

from edgeseg.bench import report, schema
from edgeseg.bench.adapt import plan_runs
from edgeseg.bench.machine import gpu_tag
from edgeseg.bench.scan import DEFAULT_SPACINGS, parse_spacing, phantom_name, scaling
from edgeseg.runtime.errors import InputError


def test_parse_spacing_and_names():
    assert parse_spacing("2") == (2.0, 2.0, 2.0)
    assert parse_spacing("0.78,0.78,1.5") == parse_spacing("0.78x0.78x1.5") == (0.78, 0.78, 1.5)
    for bad in ("", "a", "1,2", "0", "-1"):
        with pytest.raises(InputError):
            parse_spacing(bad)
    assert phantom_name((0.78, 0.78, 1.5)) == "phantom-0.78x0.78x1.5mm"
    assert len(DEFAULT_SPACINGS) >= 4  # the scaling curve needs at least four sizes


def scan_row(name, mvox, seconds, rss, status="ok"):
    if status != "ok":
        return {"scan": name, "source": "phantom", "status": status, "reason": "the worker was killed by signal 9"}
    stages = {"read": 0.1 * seconds, "preprocess": 0.1 * seconds, "inference": 0.7 * seconds,
              "postprocess": 0.05 * seconds, "write": 0.05 * seconds}
    return {"scan": name, "source": "phantom", "status": "ok", "reason": None, "voxels": int(mvox * 1e6),
            "model_voxels": int(mvox * 5e5), "shape": [10, 10, 10], "model_grid": [5, 5, 5], "seconds": stages,
            "total_seconds": seconds, "peak_rss_gib": rss, "ran": {"backend": "ort-cpu", "precision": "fp32"},
            "windows": {"run": 8}, "load_s": 1.0}


def test_scaling_fit_and_scan_schema():
    rows = [scan_row(f"p{i}", m, 2 + 0.5 * m, 1 + 0.01 * m) for i, m in enumerate((1, 4, 10, 40))]
    rows.append(scan_row("p-big", 80, 0, 0, status="error"))
    sc = scaling(rows)
    assert sc["n_scans"] == 4 and sc["seconds_per_mvoxel"] == pytest.approx(0.5) and sc["seconds_at_zero"] == pytest.approx(2)
    assert sc["rss_gib_per_mvoxel"] == pytest.approx(0.01)
    result = {"schema": "edgeseg.bench.scan/1", "benchmark": "scan", "machine": "m", "host": {}, "date": "d",
              "engine": {"folder": "/e", "organs": ["liver"], "feature_size": 48}, "settings": {"backend": "ort"},
              "stages": ["read", "preprocess", "inference", "postprocess", "write"], "rows": rows, "scaling": sc}
    assert schema.problems(result) == []
    md = report.to_markdown(result)
    assert "| p2 | 10x10x10 | 10.0 |" in md and "0.500 s per Mvoxel" in md and "error: the worker was killed" in md
    rows[1]["windows"] = {"run": 40, "blank": 24}  # pure-air windows are said, beside the windows run
    assert "| 40 + 24 air |" in report.to_markdown(result)
    del rows[0]["total_seconds"]
    assert any("total_seconds" in p for p in schema.problems(result))


def test_adapt_plan_and_schema():
    runs = plan_runs(["cached", "trunk-per-step", "full-finetune"], [1, 5, 10])
    assert runs[:3] == [("cached", "lp", 1), ("cached", "lp", 5), ("cached", "lp", 10)]
    assert ("trunk-per-step", "decoder-block", 1) in runs and ("trunk-per-step", "lp", 5) not in runs
    assert [r for r in runs if r[0] == "full-finetune"] == [("full-finetune", "lp", 1)]
    assert len(runs) == 9 + 3 + 1
    with pytest.raises(InputError):
        plan_runs(["cached", "magic"], [1])
    with pytest.raises(InputError):
        plan_runs(["cached"], [0])
    result = {"schema": "edgeseg.bench.adapt/1", "benchmark": "adapt_memory", "machine": "m", "host": {}, "date": "d",
              "feature_size": 48, "crop": 96, "device": "cpu", "threads": 2,
              "rows": [{"mode": "cached", "adapter": "lp", "k": 1, "trainable_params": 49, "crop": 96,
                        "seconds_per_step": 0.44, "peak_rss_gib": 0.99},
                       {"mode": "cached", "adapter": "lp", "k": 5, "error": "the worker was killed"}]}
    assert schema.problems(result) == []
    md = report.to_markdown(result)
    assert "| cached | lp | 1 | 49 | 0.440 | 0.99 |" in md and "error: the worker was killed" in md
    assert report.default_stem(result) == "adapt_memory"
    result["rows"][0].pop("seconds_per_step")
    assert schema.problems(result)


def test_gpu_tag_names_the_card():
    assert gpu_tag([{"name": "NVIDIA H100 80GB HBM3"}]) == "h100-80gb-hbm3"
    assert gpu_tag([]) is None
