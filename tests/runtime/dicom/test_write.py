"""The package's DICOM series writer: reads back as the volume it was written from, stable UIDs from a seed,
no patient attribute unless given, a volume it cannot store exactly refused."""

from __future__ import annotations

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom", reason="DICOM tests need pip install 'edgeseg[dicom]'")

from edgeseg.runtime.dicom import load_series, one_series  # noqa: E402
from edgeseg.runtime.dicom.write import write_series  # noqa: E402
from edgeseg.runtime.errors import InputError  # noqa: E402

AFFINE = np.array([[-0.7, 0, 0, 120.0], [0, -0.7, 0, 90.5], [0, 0, 2.0, -300.25], [0, 0, 0, 1]])


def test_a_written_series_reads_back_as_its_volume_with_stable_uids_and_no_patient(tmp_path):
    data = np.random.default_rng(0).integers(-1024, 2000, size=(12, 9, 5)).astype(np.float32)
    a = write_series(tmp_path / "a", data, AFFINE, uid_seed="x", description="abdomen", rescale=[(1, -1024), (0.5, -1000)])
    b = write_series(tmp_path / "b", data, AFFINE, uid_seed="x", description="abdomen", rescale=[(1, -1024), (0.5, -1000)])
    c = write_series(tmp_path / "c", data, AFFINE, description="abdomen")
    scan = load_series(one_series(tmp_path / "a"))
    np.testing.assert_array_equal(scan.data, data)
    np.testing.assert_allclose(scan.affine, AFFINE, atol=1e-6)
    uids = [[str(pydicom.dcmread(f).SOPInstanceUID) for f in files] for files in (a, b, c)]
    assert uids[0] == uids[1] and not set(uids[0]) & set(uids[2]) and len(set(uids[0])) == 5
    ds = pydicom.dcmread(a[0])
    assert (str(ds.PatientName), ds.PatientID, ds.PatientBirthDate, ds.AccessionNumber) == ("", "", "", "")
    with pytest.raises(InputError, match="already exists"):
        write_series(tmp_path / "a", data, AFFINE, uid_seed="x")
    with pytest.raises(InputError, match="slice 0 cannot be stored as int16 .* read back exactly"):
        write_series(tmp_path / "d", data + 0.5, AFFINE)
