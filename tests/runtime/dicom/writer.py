"""A small DICOM CT writer for tests (pydicom): a NIfTI-like volume (data[i, j, k], RAS affine) -> a series.

Voxel i runs along a DICOM row, j down a column, k along the slices, as edgeseg reads them; patient
coordinates are LPS (the RAS affine with its first two rows negated). Options make the faults that
real series have: shuffled file names, per-slice rescale, a tilt, a missing or duplicated slice, a
scout beside the series, another modality, a compressed transfer syntax.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

PATIENT = {"PatientName": "Doe^Jane^Secret", "PatientID": "PID-7734-SECRET", "PatientBirthDate": "19510203",
           "AccessionNumber": "ACC-99812-SECRET"}


def base_dataset(path: Path, *, study_uid: str, series_uid: str, frame_uid: str, series_number: int,
                 description: str, modality: str = "CT", sop_class=CTImageStorage) -> FileDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
    for k, v in PATIENT.items():
        setattr(ds, k, v)
    ds.PatientSex = "F"
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
    ds.StudyDate, ds.StudyTime, ds.StudyID, ds.ReferringPhysicianName = "20240101", "120000", "1", ""
    ds.Modality, ds.SeriesNumber, ds.SeriesDescription = modality, series_number, description
    ds.Manufacturer = "edgeseg tests"
    ds.PositionReferenceIndicator = ""
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.KVP = "120"
    ds.AcquisitionNumber = 1
    return ds


def write_series(folder: Path, data: np.ndarray, affine_ras: np.ndarray, *, series_number: int = 1,
                 description: str = "abdomen", study_uid: str | None = None, series_uid: str | None = None,
                 frame_uid: str | None = None, modality: str = "CT", shuffle: bool = True, seed: int = 0,
                 rescale: list[tuple[float, float]] | None = None, tilt_mm: float = 0.0, drop: int | None = None,
                 duplicate: int | None = None, compress: str | None = None, prefix: str = "") -> list[Path]:
    """Write data (HU, i/j/k) as one series; returns the files in slice order (k), a dropped one left out.

    rescale: (slope, intercept) per slice, cycled (stored values are (HU - intercept) / slope, exactly).
    tilt_mm: each slice shifted this far along the row direction per slice (a gantry tilt kept as is).
    """
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ np.asarray(affine_ras, dtype=np.float64)
    row, col = lps[:3, 0], lps[:3, 1]
    dc, dr = np.linalg.norm(row), np.linalg.norm(col)
    study_uid, series_uid, frame_uid = study_uid or generate_uid(), series_uid or generate_uid(), frame_uid or generate_uid()
    rescale = rescale or [(1.0, -1024.0)]
    n = data.shape[2]
    names = [f"{prefix}{i:04d}.dcm" for i in range(n)]
    if shuffle:
        rng.shuffle(names)
    files = []
    for k in range(n):
        if k == drop:
            continue
        path = folder / names[k]
        ds = base_dataset(path, study_uid=study_uid, series_uid=series_uid, frame_uid=frame_uid,
                          series_number=series_number, description=description, modality=modality)
        ds.InstanceNumber = n - k if shuffle else k + 1  # against the slice order: never to be sorted by
        ds.ImagePositionPatient = [_ds(v) for v in lps[:3, 3] + k * lps[:3, 2] + k * tilt_mm * row / dc]
        ds.ImageOrientationPatient = [_ds(v) for v in (*(row / dc), *(col / dr))]
        ds.PixelSpacing = [_ds(dr), _ds(dc)]
        ds.SliceThickness = _ds(np.linalg.norm(lps[:3, 2]))
        slope, intercept = rescale[k % len(rescale)]
        ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = _ds(slope), _ds(intercept), "HU"
        stored = np.round((data[:, :, k].T.astype(np.float64) - intercept) / slope)
        assert np.array_equal(stored * slope + intercept, data[:, :, k].T), "pick a rescale that is exact"
        ds.Rows, ds.Columns = data.shape[1], data.shape[0]
        ds.PixelData = stored.astype(np.int16).tobytes()
        if compress:
            ds.compress(compress)
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
        if k == duplicate:
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
            dup = folder / f"copy_{names[k]}"
            ds.save_as(dup, enforce_file_format=True)
    return files


def write_scout(folder: Path, *, series_uid: str | None = None, series_number: int = 100, study_uid: str | None = None,
                frame_uid: str | None = None, name: str = "scout.dcm") -> Path:
    """A coronal localizer image (ImageType LOCALIZER), in its own series or in `series_uid`'s."""
    path = folder / name
    ds = base_dataset(path, study_uid=study_uid or generate_uid(), series_uid=series_uid or generate_uid(),
                      frame_uid=frame_uid or generate_uid(), series_number=series_number, description="scout")
    ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    ds.ImagePositionPatient, ds.ImageOrientationPatient = [-250, 0, 200], [1, 0, 0, 0, 0, -1]
    ds.PixelSpacing, ds.InstanceNumber = [1, 1], 1
    ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
    ds.Rows, ds.Columns = 8, 8
    ds.PixelData = np.zeros((8, 8), np.int16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def _ds(v: float) -> str:
    """A DS value that keeps the geometry to a micron (DS holds at most 16 characters)."""
    return f"{float(v):.10g}"[:16]


def read_back(path: Path):
    return pydicom.dcmread(path)
