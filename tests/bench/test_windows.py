"""`edgeseg bench trunk` end to end on the tiny exported trunk, and the skip path without any worker."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from edgeseg.bench import schema
from edgeseg.bench.windows import bench_windows, make_windows
from edgeseg.export.parity import TOLERANCES
from edgeseg.cli import app
from edgeseg.runtime.availability import BackendStatus

PROBES = ("torch-cpu", "torch-cuda", "ort-cpu", "ort-cuda", "ort-tensorrt", "openvino", "tensorrt")


def test_nothing_usable_gives_only_skipped_rows_with_reasons(trunk5, tmp_path):
    none = {n: BackendStatus(n, False, f"{n} absent in this test", f"get {n}") for n in PROBES}
    result = bench_windows(trunk5, "trunk", backends="all", batches=[1], warmup=0, runs=1, threads=1,
                           workdir=tmp_path / "work", statuses=none)
    assert schema.problems(result) == []
    assert result["rows"] and all(r["status"] == "skipped" for r in result["rows"])
    from edgeseg.bench.configs import BY_NAME

    for r in result["rows"]:
        probe = BY_NAME[r["config"]].probe
        assert r["reason"] == f"{probe} absent in this test (to enable: get {probe})", r
        assert r["latency_ms"] is None and r["windows_per_s"] is None and r["parity"] is None
    assert result["reference"]["config"] is None
    assert not (tmp_path / "work" / "jobs").exists()  # no worker was started for a skipped row
    assert result["flops"]["per_window"] > 0
    assert any("no fp32 reference" in n for n in result["notes"])


def test_windows_are_real_ct_through_the_artifact_preprocessing(trunk5):
    manifest = json.loads((trunk5 / "manifest.json").read_text())
    x, desc = make_windows(manifest["preprocess"], 3, 1)
    assert x.shape == (3, 1, 64, 64, 64) and x.dtype == np.float32
    assert 0.0 <= x.min() and x.max() <= 1.0 and x.std() > 0.01  # HU windowed to [0, 1], not blank
    assert not np.array_equal(x[0], x[1]) and not np.array_equal(x[1], x[2])
    assert "example_ct" in desc


def test_cli_bench_trunk_on_ort(trunk5, tmp_path):
    """The command on the tiny trunk: ort only, one run; the structure of what it writes, timings only > 0."""
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["bench", "trunk", str(trunk5), "--backends", "ort", "--batch", "1", "--runs", "1",
                                      "--warmup", "0", "--threads", "1", "--out", str(out),
                                      "--json", str(tmp_path / "r.json")])
    assert result.exit_code == 0, result.output
    r = json.loads((tmp_path / "r.json").read_text())
    assert schema.problems(r) == []
    from edgeseg.runtime.manifest import portable_paths

    assert portable_paths(r) == json.loads((out / "bench_trunk_fs12_decoder1.json").read_text())  # the file: no absolute path
    assert (out / "bench_trunk_fs12_decoder1.md").exists()
    rows = {row["config"]: row for row in r["rows"]}
    assert set(rows) == {"ort-cpu-fp32", "ort-cpu-fp16", "ort-cuda-fp32", "ort-cuda-fp16", "ort-tensorrt-fp16",
                         "ort-cpu-int8", "ort-tensorrt-int8"}  # the folder has no int8 graph: those rows say why
    ok = rows["ort-cpu-fp32"]
    assert ok["status"] == "ok" and ok["batch"] == 1
    assert ok["ran"]["backend"] == "ort-cpu" and ok["ran"]["precision"] == "fp32"
    assert ok["latency_ms"]["n"] == 1 and ok["latency_ms"]["median"] > 0
    assert ok["windows_per_s"] > 0 and ok["tflops"] > 0 and ok["peak_rss_gib"] > 0 and ok["load_s"] > 0
    # parity against the PyTorch fp32 reference, which ran untimed in its own process
    assert r["reference"]["config"] == "torch-cpu-fp32" and r["reference"]["runs"]["torch-cpu-fp32"]["1"]["status"] == "ok"
    assert r["reference"]["runs"]["torch-cpu-fp32"]["1"]["timed_row"] is False  # not selected: run once, untimed
    ct = TOLERANCES[("fp32", "ct")]  # the bench's windows are of the shipped real CT
    assert ok["parity"]["reference"] == "torch-cpu-fp32" and ok["parity"]["rel_l2"] <= ct.rel_l2
    assert 0 <= ok["parity"]["mask_flip"] <= ct.mask_flip
    assert "fp16 graph" in rows["ort-cpu-fp16"]["reason"] and "int8 graph" in rows["ort-cpu-int8"]["reason"]
    for name in ("ort-cuda-fp32", "ort-tensorrt-fp16"):
        assert rows[name]["status"] == "skipped" and "ExecutionProvider" in rows[name]["reason"]
    assert ok["vs_baseline"] is None and any("baseline torch-cpu-fp32 did not run" in n for n in r["notes"])
    assert r["flops"]["counted_from"] == "trunk.fp32.onnx" and r["flops"]["per_window"] > 1e9
    # the physical floor, from this machine's measured peaks (a worker of its own)
    assert r["peaks"]["cpu"]["tflops"]["fp32"] > 0 and r["peaks"]["cpu"]["bandwidth_gbs"] > 0
    assert ok["floor"]["compute_precision"] == "fp32" and ok["floor"]["floor_s"] > 0
    assert ok["fraction_of_floor"] == pytest.approx(ok["floor"]["floor_s"] / (ok["latency_ms"]["median"] / 1000), rel=1e-2)
    assert "measured peaks" in (out / "bench_trunk_fs12_decoder1.md").read_text()


def test_cli_bench_bad_batch_is_exit_code_2(trunk5):
    result = CliRunner().invoke(app, ["bench", "trunk", str(trunk5), "--batch", "one", "--json", "-"])
    assert result.exit_code == 2
    err = json.loads(result.output)
    assert err["error"] == "InputError" and "--batch" in err["problem"]


def test_a_failing_reference_hands_over_to_the_next(trunk5, tmp_path, monkeypatch):
    """torch fp32 fails (e.g. its checkpoint changed): ONNX Runtime fp32 becomes the reference; no timing involved."""
    from edgeseg.bench import runner
    from edgeseg.bench.stats import summarize

    jobs = []

    def fake_run_job(job, workdir, name, *, gpu=False, timeout=None):
        jobs.append(job)
        if job["config"]["name"] == "torch-cpu-fp32":
            return {"status": "error", "reason": "the checkpoint differs from the one this trunk was exported from"}
        return {"status": "ok", "ran": {"backend": "ort-cpu", "precision": "fp32"}, "latency_ms": summarize([0.5]),
                "open_s": 1.0, "load_s": 0.5, "first_call_s": 0.6, "peak_rss_gib": 1.0, "notes": []}

    monkeypatch.setattr(runner, "run_job", fake_run_job)
    usable = {n: BackendStatus(n, n in ("torch-cpu", "ort-cpu"), "detail", "" if n in ("torch-cpu", "ort-cpu") else "hint")
              for n in PROBES}
    result = bench_windows(trunk5, "trunk", backends="ort-cpu-fp32", batches=[1], warmup=0, runs=1, threads=1,
                           workdir=tmp_path / "w", statuses=usable, peaks=False)
    assert [j["config"]["name"] for j in jobs] == ["torch-cpu-fp32", "ort-cpu-fp32"]
    assert all("save_output" in j for j in jobs)  # both tried as the reference
    assert result["reference"]["config"] == "ort-cpu-fp32"
    assert result["reference"]["tried"] == ["torch-cpu-fp32", "ort-cpu-fp32"]
    assert any("torch-cpu-fp32 failed at batch 1" in n for n in result["notes"])
    (row,) = result["rows"]
    assert row["config"] == "ort-cpu-fp32" and row["status"] == "ok" and row["parity"]["self"] is True
    assert schema.problems(result) == []


def test_int8_rows_get_their_ratio_to_bf16_of_the_same_run():
    from edgeseg.bench.windows import add_ratios

    def row(config, backend, precision, ms, batch=1):
        return {"config": config, "backend": backend, "precision": precision, "batch": batch, "status": "ok",
                "latency_ms": {"median": ms}, "peak_rss_gib": 1.0, "notes": []}

    rows = [row("torch-cpu-fp32", "torch", "fp32", 8000.0), row("openvino-bf16", "openvino", "bf16", 2000.0),
            row("ort-cpu-bf16", "ort", "bf16", 3000.0), row("openvino-int8", "openvino", "int8", 1600.0),
            row("ort-cpu-int8", "ort", "int8", 4000.0), row("tensorrt-int8", "tensorrt", "int8", 500.0)]
    add_ratios(rows, "torch-cpu-fp32")
    by = {r["config"]: r for r in rows}
    assert by["openvino-int8"]["vs_baseline"]["speedup"] == 5.0
    assert by["openvino-int8"]["vs_bf16"] == {"config": "openvino-bf16", "batch": 1, "speedup": 1.25}
    assert by["ort-cpu-int8"]["vs_bf16"]["config"] == "ort-cpu-bf16"  # the same backend's bf16 first
    assert by["tensorrt-int8"]["vs_bf16"] == {"config": "openvino-bf16", "batch": 1, "speedup": 4.0}  # else the fastest
    assert "1.25x vs openvino-bf16" in by["openvino-int8"]["notes"] and "vs_bf16" not in by["openvino-bf16"]
