"""The worker process and its runner: parity arithmetic, the skip/error mapping, a failing job as a row."""

from __future__ import annotations

import numpy as np
import pytest

from edgeseg.bench import runner, worker
from edgeseg.runtime.errors import BackendUnavailable, InputError


def test_chunked_rel_l2_equals_the_export_metric():
    from edgeseg.export.parity import rel_l2

    rng = np.random.default_rng(0)
    ref = rng.standard_normal((2, 3, 4, 5, 6)).astype(np.float32)
    got = ref + 1e-3 * rng.standard_normal(ref.shape).astype(np.float32)
    assert worker.rel_l2(ref, got) == pytest.approx(rel_l2(ref, got), rel=1e-9)
    assert worker.rel_l2(ref, ref) == 0.0


def test_compare_against_a_saved_reference(tmp_path):
    rng = np.random.default_rng(1)
    ref = rng.standard_normal((2, 4, 6, 6, 6)).astype(np.float32)
    np.save(tmp_path / "out0.npy", ref)
    same = worker.compare((ref[:1].copy(),), tmp_path, kind="trunk", cut="decoder1", batch=1)
    assert same["rel_l2"] == 0.0 and same["max_abs"] == 0.0 and same["mask_flip"] == 0.0
    flipped = worker.compare((-ref[:1],), tmp_path, kind="trunk", cut="decoder1", batch=1)
    expected = float(np.mean(worker.head_mask(ref[:1]) != worker.head_mask(-ref[:1])))
    assert flipped["rel_l2"] == pytest.approx(2.0) and flipped["mask_flip"] == pytest.approx(expected) and expected > 0.3
    assert worker.compare((ref,), tmp_path, kind="trunk", cut="pre-decoder1", batch=2)["mask_flip"] is None
    probs = np.clip(ref, 0, 1)
    np.save(tmp_path / "out0.npy", probs)
    moved = probs.copy()
    moved[0, 0, 0, 0, 0] = 1.0 - (probs[0, 0, 0, 0, 0] >= 0.5)  # one voxel across the threshold
    eng = worker.compare((moved,), tmp_path, kind="engine", cut="decoder1", batch=2)
    assert eng["mask_flip"] == pytest.approx(1 / probs.size)


def test_head_mask_is_a_fixed_linear_head():
    feats = np.random.default_rng(2).standard_normal((2, 5, 3, 3, 3)).astype(np.float32)
    rng = np.random.default_rng(worker.HEAD_SEED)
    w = rng.uniform(-1 / np.sqrt(5), 1 / np.sqrt(5), 5)
    b = rng.uniform(-1 / np.sqrt(5), 1 / np.sqrt(5))
    expected = np.einsum("c,ncxyz->nxyz", w, feats) + b > 0
    assert np.array_equal(worker.head_mask(feats), expected)


def test_run_maps_errors_to_rows(monkeypatch):
    def unavailable(job):
        raise BackendUnavailable("CUDAExecutionProvider did not load", fix="install onnxruntime-gpu")

    def bad(job):
        raise InputError("has no fp16 graph", path="/x", fix="re-export")

    def bug(job):
        raise ZeroDivisionError("oops")

    monkeypatch.setitem(worker.JOBS, "u", unavailable)
    monkeypatch.setitem(worker.JOBS, "b", bad)
    monkeypatch.setitem(worker.JOBS, "z", bug)
    assert worker.run({"type": "u"}) == {"status": "skipped",
                                         "reason": "CUDAExecutionProvider did not load (to enable: install onnxruntime-gpu)"}
    assert worker.run({"type": "b"}) == {"status": "error", "reason": "/x: has no fp16 graph; fix: re-export"}
    z = worker.run({"type": "z"})
    assert z["status"] == "error" and z["reason"] == "ZeroDivisionError: oops" and "ZeroDivisionError" in z["traceback"]


def test_a_failing_job_in_a_real_worker_process_is_an_error_row(tmp_path):
    job = {"type": "window", "kind": "trunk", "folder": str(tmp_path / "nothing-here"), "config": {
        "name": "ort-cpu-fp32", "backend": "ort", "device": "cpu", "precision": "fp32", "probe": "ort-cpu",
        "graph": "fp32", "options": {}, "label": ""}, "batch": 1, "input": str(tmp_path / "x.npy"), "threads": 1}
    np.save(tmp_path / "x.npy", np.zeros((1, 1, 64, 64, 64), np.float32))
    result = runner.run_job(job, tmp_path / "jobs", "t")
    assert result["status"] == "error" and "not an edgeseg trunk folder" in result["reason"]
    assert result["worker_wall_s"] > 0
    assert (tmp_path / "jobs" / "t.job.json").exists() and (tmp_path / "jobs" / "t.result.json").exists()


def test_gpu_sampler_without_nvidia_smi_measures_nothing():
    sampler = runner.GpuMemorySampler()
    sampler.exe = None
    with sampler:
        pass
    assert sampler.available is False and sampler.peak_gib is None


def test_gpu_sampler_peak_is_above_the_start(monkeypatch):
    readings = iter([10.0, 10.5, 12.0, 11.0] + [11.0] * 1000)
    sampler = runner.GpuMemorySampler(interval=0.001)
    monkeypatch.setattr(sampler, "used_gib", lambda: next(readings))
    with sampler:
        import time

        time.sleep(0.05)
    assert sampler.peak_gib == pytest.approx(2.0)


def test_a_worker_past_its_timeout_is_killed_and_becomes_an_error_row(tmp_path):
    job = {"type": "window", "kind": "trunk", "folder": str(tmp_path), "config": {}, "batch": 1}
    result = runner.run_job(job, tmp_path / "jobs", "slow", timeout=0.001)  # not even Python starts in 1 ms
    assert result["status"] == "error" and result["reason"] == "timed out after 0.001 s (--timeout)"
