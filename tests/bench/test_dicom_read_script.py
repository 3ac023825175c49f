"""benchmarks/dicom_read.py on a tiny scan: it writes a series and its NIfTI, reads both, checks they are the
same voxels and records medians with repository-relative paths only (the real run is 512 x 512 x 300, by hand)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

pytest.importorskip("pydicom", reason="the DICOM read benchmark needs pip install 'edgeseg[dicom]'")

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "dicom_read.py"


def test_the_dicom_read_benchmark_records_both_reads_of_the_same_scan(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("dicom_read_bench", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    work = tmp_path / "work"
    assert bench.main(["--shape", "40,32,12", "--repeats", "2", "--workdir", str(work),
                       "--results", str(tmp_path / "results"), "--name", "smoke"]) == 0
    (dest,) = (tmp_path / "results").glob("*/smoke.json")
    text = dest.read_text()
    r = json.loads(text)
    assert r["same_voxels"] is True and r["scan"]["files"] == 12 and r["scan"]["shape"] == [40, 32, 12]
    for key in ("dicom_plan", "dicom_read", "dicom_total", "nifti_gz_read", "nifti_read", "nifti_gz_plan"):
        assert len(r["seconds"][key]["runs"]) == 2 and r["seconds"][key]["median"] > 0, key
    assert r["seconds"]["dicom_total"]["median"] >= r["seconds"]["dicom_read"]["median"]
    assert r["ratios"]["dicom_read_vs_nifti_gz_read"] > 0 and r["libraries"]["pydicom"]
    assert r["command"] == "python benchmarks/dicom_read.py --shape 40,32,12 --repeats 2"
    assert str(tmp_path) not in text and "/tmp" not in text and "/work" not in text  # no machine's own paths
    assert len(list((work / "series").glob("*.dcm"))) == 12  # --workdir is kept
    assert "same voxels: True" in capsys.readouterr().out
