"""The faults real series have, made on the package's own DICOM writer (`edgeseg.runtime.dicom.write`).

`write_series` here is the package's with a patient whose attributes the tests look for in every output
(none may leak), random UIDs, shuffled file names by default, and faults: a tilt, a missing or duplicated
slice. `write_scout` adds a localizer image.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from pydicom.uid import generate_uid

from edgeseg.runtime.dicom.write import _ds, base_dataset, save_dataset, slice_datasets

PATIENT = {"PatientName": "Doe^Jane^Secret", "PatientID": "PID-7734-SECRET", "PatientBirthDate": "19510203",
           "AccessionNumber": "ACC-99812-SECRET"}


def write_series(folder: Path, data: np.ndarray, affine_ras: np.ndarray, *, shuffle: bool = True,
                 tilt_mm: float = 0.0, drop: int | None = None, duplicate: int | None = None,
                 compress: str | None = None, **header) -> list[Path]:
    """Write data (HU, i/j/k) as one series; returns the files in slice order (k), a dropped one left out.

    tilt_mm: each slice shifted this far along the row direction per slice (a gantry tilt kept as is).
    duplicate: slice k written a second time under another SOPInstanceUID.
    """
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for k, (name, ds) in enumerate(slice_datasets(data, affine_ras, shuffle=shuffle, patient=PATIENT, **header)):
        if k == drop:
            continue
        if tilt_mm:
            row = np.asarray([float(v) for v in ds.ImageOrientationPatient[:3]])
            ds.ImagePositionPatient = [_ds(float(v) + k * tilt_mm * r) for v, r in zip(ds.ImagePositionPatient, row)]
        files.append(save_dataset(ds, folder / name, compress=compress))
        if k == duplicate:
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
            save_dataset(ds, folder / f"copy_{name}")
    return files


def write_scout(folder: Path, *, series_uid: str | None = None, series_number: int = 100, study_uid: str | None = None,
                frame_uid: str | None = None, name: str = "scout.dcm") -> Path:
    """A coronal localizer image (ImageType LOCALIZER), in its own series or in `series_uid`'s."""
    path = folder / name
    ds = base_dataset(path, study_uid=study_uid or generate_uid(), series_uid=series_uid or generate_uid(),
                      frame_uid=frame_uid or generate_uid(), sop_uid=generate_uid(), series_number=series_number,
                      description="scout", patient=PATIENT)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    ds.ImagePositionPatient, ds.ImageOrientationPatient = [-250, 0, 200], [1, 0, 0, 0, 0, -1]
    ds.PixelSpacing, ds.InstanceNumber = [1, 1], 1
    ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
    ds.Rows, ds.Columns = 8, 8
    ds.PixelData = np.zeros((8, 8), np.int16).tobytes()
    return save_dataset(ds, path)


def read_back(path: Path):
    return pydicom.dcmread(path)
