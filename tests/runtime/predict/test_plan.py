"""Planning a run: inputs, case names, the output folder, and each case's plan before any voxel is read."""

from __future__ import annotations

import dataclasses

import nibabel as nib
import pytest

from edgeseg.runtime.errors import InputError
from edgeseg.runtime.predict import PredictOptions, case_names, collect_inputs, predict_many
from edgeseg.runtime.predict.plan import choose_cases, estimate_memory, plan_case
from tests.conftest import PRE5
from tests.runtime.predict.oracle import OracleEngine

def test_inputs_folders_lists_and_errors(scans, tmp_path):
    assert collect_inputs([scans[0]]) == [scans[0] / "ct.nii.gz"]
    with pytest.raises(InputError, match="not found"):
        collect_inputs([tmp_path / "missing.nii.gz"])
    assert case_names([scans[0] / "ct.nii.gz", scans[1] / "ct.nii.gz"]) == [f"{s.name}_ct" for s in scans[:2]]
    with pytest.raises(InputError, match="share the case name"):
        collect_inputs([scans[0] / "ct.nii.gz", scans[0] / "ct.nii.gz"])
    with pytest.raises(InputError, match="no .nii"):
        collect_inputs([tmp_path])


def test_an_output_folder_inside_the_inputs_or_beside_a_scan_is_refused(scans, tmp_path):
    engine = OracleEngine(scans)
    folder = scans[0]
    for out, what in ((folder, "is the input folder"), (folder / "pred", "is inside the input folder")):
        with pytest.raises(InputError, match=what):
            predict_many(engine, [folder], out, PredictOptions())
    with pytest.raises(InputError, match="folder of the input scan ct.nii.gz"):
        predict_many(engine, [folder / "ct.nii.gz"], folder, PredictOptions())
    assert engine.calls == 0 and not (folder / "pred").exists()


def test_a_case_is_planned_from_its_header_and_planning_writes_nothing(scans, tmp_path):
    engine = OracleEngine(scans)
    scan, out = scans[0] / "ct.nii.gz", tmp_path / "out"
    plan = plan_case(engine, scan, "s", out, PredictOptions(save_prob=True))
    assert plan.outputs == ("s_liver.nii.gz", "s_spleen.nii.gz", "s_labels.nii.gz", "s_liver_prob.nii.gz",
                            "s_spleen_prob.nii.gz")
    assert plan.report_path == out / "s.json" and plan.marker == out / "s.partial"
    assert not plan.force and not plan.resumed and plan.redo_because is None
    shape = nib.load(str(scan)).shape
    assert plan.input_shape == shape and plan.model_shape == shape  # written at the engine's 5 mm
    assert plan.memory == estimate_memory(shape, shape, 2, PRE5.window, input_itemsize=2, save_prob=True)
    assert not out.exists()
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.force = True  # type: ignore[misc]


def test_planning_refuses_outputs_in_the_way_unless_they_are_ours_to_redo(scans, tmp_path):
    engine = OracleEngine(scans)
    scan, out = scans[0] / "ct.nii.gz", tmp_path / "out"
    out.mkdir()
    (out / "s_spleen.nii.gz").write_bytes(b"a user's file")
    with pytest.raises(InputError, match="outputs already exist: s_spleen.nii.gz"):
        plan_case(engine, scan, "s", out, PredictOptions())
    assert plan_case(engine, scan, "s", out, PredictOptions(force=True)).force
    assert plan_case(engine, scan, "s", out, PredictOptions(), redo_because="another engine").force
    (out / "s.partial").write_text("an edgeseg run began this case")
    resumed = plan_case(engine, scan, "s", out, PredictOptions())
    assert resumed.force and resumed.resumed


def test_choose_cases_skips_done_cases_and_runs_the_rest(scans, tmp_path):
    engine = OracleEngine(scans)
    inputs, out = [s / "ct.nii.gz" for s in scans], tmp_path / "out"
    assert [c.run for c in choose_cases(engine, inputs, out, PredictOptions())] == [True, True]
    predict_many(engine, inputs[:1], out, PredictOptions())
    first, second = choose_cases(engine, inputs, out, PredictOptions())
    assert (first.case, first.run, second.run) == (f"{scans[0].name}_ct", False, True)
    redo = choose_cases(engine, inputs, out, PredictOptions(threshold=0.7))[0]
    assert redo.run and redo.redo_because == "--threshold 0.5 -> 0.7"
    assert choose_cases(engine, inputs, out, PredictOptions(force=True))[0].run
