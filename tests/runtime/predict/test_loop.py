"""The loop over cases: skip what is done, redo what crashed or changed, read the next scan ahead."""

from __future__ import annotations

import json
from collections import Counter

import nibabel as nib
import numpy as np
import pytest

from edgeseg.runtime.errors import InputError
from edgeseg.runtime.predict import PredictOptions, predict_many
from edgeseg.runtime.predict.loop import _use_prefetch
from tests.runtime.predict.oracle import OracleEngine

def test_done_cases_are_skipped_and_a_crashed_case_is_redone(scans, tmp_path):
    engine = OracleEngine(scans)
    inputs = [tmp_path / "list.txt"]
    (tmp_path / "a.nii.gz").write_bytes((scans[0] / "ct.nii.gz").read_bytes())
    (tmp_path / "b.nii.gz").write_bytes((scans[1] / "ct.nii.gz").read_bytes())
    inputs[0].write_text("a.nii.gz\nb.nii.gz\n")
    out = tmp_path / "out"
    predict_many(engine, inputs, out, PredictOptions())
    assert engine.calls == 2
    (out / "b.json").unlink()
    (out / "b.partial").write_text("crashed")  # as a run killed mid-case leaves it
    reports = predict_many(engine, inputs, out, PredictOptions())
    assert engine.calls == 3 and reports[0]["skipped"] and "volume_ml" in reports[1]


def test_prefetch_reads_the_next_scan_ahead_and_changes_nothing(scans, tmp_path):
    inputs = [s / "ct.nii.gz" for s in scans]
    ahead = predict_many(OracleEngine(scans), inputs, tmp_path / "on", PredictOptions(prefetch="on"))
    plain = predict_many(OracleEngine(scans), inputs, tmp_path / "off", PredictOptions(prefetch="off"))
    assert [r["prefetched"] for r in ahead] == [False, True] and not any(r["prefetched"] for r in plain)
    assert ahead[1]["prefetch_wait_seconds"] >= 0 and ahead[1]["memory"]["estimated_peak_gib"] > 0
    for r_on, r_off in zip(ahead, plain):
        assert r_on["volume_ml"] == r_off["volume_ml"]
        for name in r_on["outputs"]:
            a = np.asarray(nib.load(str(tmp_path / "on" / name)).dataobj)
            b = np.asarray(nib.load(str(tmp_path / "off" / name)).dataobj)
            assert np.array_equal(a, b)


def test_each_case_is_planned_once_even_when_read_ahead(scans, tmp_path, monkeypatch):
    import edgeseg.runtime.predict.plan as plan_mod

    real, headers = plan_mod.scan_geometry, Counter()

    def counted(path, **kw):
        headers[path] += 1
        return real(path, **kw)

    monkeypatch.setattr(plan_mod, "scan_geometry", counted)
    inputs = [s / "ct.nii.gz" for s in scans]
    reports = predict_many(OracleEngine(scans), inputs, tmp_path, PredictOptions(prefetch="on"))
    assert [r["prefetched"] for r in reports] == [False, True] and headers == Counter(inputs)


def test_prefetch_auto_follows_the_device():
    from edgeseg.runtime.artifacts.opened import OpenedArtifact
    from edgeseg.runtime.support import Device

    class E(OpenedArtifact):
        def __init__(self, device):
            self.backend = type("B", (), {"device": device})()

    assert not _use_prefetch(E(Device.CPU), PredictOptions())  # inference already uses every core
    assert _use_prefetch(E(Device.CPU), PredictOptions(prefetch="on"))
    for device in (Device.CUDA, Device.TENSORRT):  # CUDA, and ONNX Runtime's TensorRT execution provider
        assert _use_prefetch(E(device), PredictOptions()) and not _use_prefetch(E(device), PredictOptions(prefetch="off"))
    with pytest.raises(InputError, match="--prefetch"):
        PredictOptions(prefetch="sometimes")


def test_a_rerun_with_other_options_or_another_engine_redoes_the_case_and_says_so(scans, tmp_path):
    engine = OracleEngine(scans)
    engine.manifest_hash = "a" * 64
    scan, out = scans[0] / "ct.nii.gz", tmp_path / "out"
    (first,) = predict_many(engine, [scan], out, PredictOptions())
    assert first["kind"] == "edgeseg-predict-report" and first["made_with"]["options"]["threshold"] == 0.5
    (same,) = predict_many(engine, [scan], out, PredictOptions())
    assert same["skipped"] and engine.calls == 1
    logs: list[str] = []
    (other,) = predict_many(engine, [scan], out, PredictOptions(threshold=0.7), log=logs.append)
    assert engine.calls == 2 and other["redone_because"] == "--threshold 0.5 -> 0.7"
    assert any("segmented again (--threshold 0.5 -> 0.7)" in m for m in logs)
    engine.manifest_hash = "b" * 64  # another engine (re-fused, other adapters)
    (again,) = predict_many(engine, [scan], out, PredictOptions(threshold=0.7))
    assert engine.calls == 3 and again["redone_because"] == "another engine"
    saved = json.loads((out / f"{scans[0].name}_ct.json").read_text())
    assert saved["made_with"]["engine_manifest_sha256"] == "b" * 64
    assert saved["redone_because"] == "another engine"  # the file on disk says why, not only the returned report
