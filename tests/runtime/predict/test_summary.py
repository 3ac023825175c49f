"""The run summary (`cohort.csv`, `cohort.json`) from what a loop over cases returns."""

from __future__ import annotations

import csv
import json

import pytest

from edgeseg.runtime.errors import InputError
from edgeseg.runtime.predict import PredictOptions, predict_many
from edgeseg.runtime.predict.summary import check_summary_names, failed_entry, write_summary
from tests.runtime.predict.oracle import OracleEngine


def test_the_local_loops_results_make_a_summary_and_a_resumed_run_keeps_every_row(scans, tmp_path):
    inputs = [s / "ct.nii.gz" for s in scans]
    out = tmp_path / "out"
    first = predict_many(OracleEngine(scans), inputs, out, PredictOptions())
    again = predict_many(OracleEngine(scans), inputs, out, PredictOptions())  # both skipped now
    assert all(e["skipped"] for e in again)
    error = InputError("is not a CT", path="x.nii.gz", fix="pass a CT").to_dict()
    summary = write_summary(out, [*again, failed_entry("x", "x.nii.gz", error)], meta={"x": {"attempts": 1}},
                            run={"loop": "local"})
    assert (summary["cases"], summary["done"], summary["skipped"], summary["failed"]) == (3, 0, 2, 1)
    assert json.loads((out / "cohort.json").read_text()) == summary and summary["loop"] == "local"
    with open(out / "cohort.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["case"] for r in rows] == [e["case"] for e in first] + ["x"]
    for row, report in zip(rows, first):  # a skipped case's row is its report's
        assert row["status"] == "skipped" and row["backend"] == "oracle" and row["node"] == report["host"]
        for organ, ml in report["volume_ml"].items():
            assert float(row[f"{organ}_ml"]) == pytest.approx(ml, abs=1e-3)
        assert float(row["total_s"]) == pytest.approx(report["total_seconds"], abs=1e-3)
    assert rows[-1]["status"] == "failed" and rows[-1]["error"] == "is not a CT (fix: pass a CT)"
    write_summary(out, first)  # the next run replaces edgeseg's own summary
    assert json.loads((out / "cohort.json").read_text())["done"] == 2


def test_a_users_file_at_the_summarys_name_and_a_case_named_cohort_are_refused(tmp_path):
    check_summary_names(tmp_path, ["a", "b"])
    with pytest.raises(InputError, match="'cohort'"):
        check_summary_names(tmp_path, ["a", "cohort"])
    for name in ("cohort.json", "cohort.csv"):
        (tmp_path / name).write_text("participant,age\n")
        with pytest.raises(InputError, match="not an edgeseg cohort summary") as e:
            check_summary_names(tmp_path, ["a"])
        assert e.value.path.endswith(name) and (tmp_path / name).read_text() == "participant,age\n"
        (tmp_path / name).unlink()
