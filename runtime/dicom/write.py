"""A DICOM CT series from a volume (pydicom): a NIfTI-like array (data[i, j, k], RAS affine) -> one file per slice.

Voxel i runs along a DICOM row, j down a column, k along the slices, as `read` takes them back; patient
coordinates are LPS (the RAS affine with its first two rows negated). Stored values are int16 with a
per-slice RescaleSlope/Intercept that must map them back to the HU given exactly (so a series written
here reads back as the volume it was written from). Uncompressed unless asked; each file is written
atomically.

Used where a DICOM copy of a NIfTI scan is needed: the demo's DICOM copy of the shipped real CT, the
DICOM read benchmark, and the tests (which build their faulty series from `slice_datasets`). UIDs are
random, or derived from `uid_seed` (the same seed, the same UIDs: stable case names across runs). The
patient attributes are what `patient` says (empty by default: Type 2 attributes may be).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import numpy as np

from edgeseg.runtime.atomic import atomic_path
from edgeseg.runtime.dicom.deps import require_pydicom
from edgeseg.runtime.errors import InputError

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
NO_PATIENT = {"PatientName": "", "PatientID": "", "PatientBirthDate": "", "AccessionNumber": ""}


def base_dataset(path: str | Path, *, study_uid: str, series_uid: str, frame_uid: str, sop_uid: str, series_number: int,
                 description: str, modality: str = "CT", sop_class: str = CT_IMAGE_STORAGE,
                 patient: Mapping[str, str] | None = None):
    """The header every image of a series shares: file meta, patient, study, series, frame of reference, pixel format."""
    pydicom = require_pydicom(path)
    from pydicom.dataset import FileDataset, FileMetaDataset

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, sop_uid
    for key, value in {**NO_PATIENT, **(patient or {})}.items():
        setattr(ds, key, value)
    ds.PatientSex = ""
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
    ds.StudyDate, ds.StudyTime, ds.StudyID, ds.ReferringPhysicianName = "20240101", "120000", "1", ""
    ds.Modality, ds.SeriesNumber, ds.SeriesDescription = modality, series_number, description
    ds.Manufacturer = "edgeseg"
    ds.PositionReferenceIndicator = ""
    ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.KVP = ""
    ds.AcquisitionNumber = 1
    return ds


def slice_datasets(data: np.ndarray, affine_ras: np.ndarray, *, series_number: int = 1, description: str = "",
                   modality: str = "CT", study_uid: str | None = None, series_uid: str | None = None,
                   frame_uid: str | None = None, uid_seed: str | None = None,
                   rescale: Sequence[tuple[float, float]] | None = None, shuffle: bool = False, seed: int = 0,
                   prefix: str = "", patient: Mapping[str, str] | None = None, name: str = "volume",
                   ) -> Iterator[tuple[str, object]]:
    """(file name, dataset) for each slice k in order: the series a volume makes, not yet written.

    rescale: (slope, intercept) per slice, cycled; stored values are (HU - intercept) / slope, which must be
    whole numbers in int16 (refused otherwise, naming the slice). shuffle: file names in a seeded random
    order, and InstanceNumbers against the slice order (as some exports have; readers must sort by position).
    """
    pydicom = require_pydicom(name)
    gen = pydicom.uid.generate_uid

    def uid(*what) -> str:
        return gen(entropy_srcs=[uid_seed, *map(str, what)]) if uid_seed is not None else gen()

    data = np.asarray(data)
    if data.ndim != 3:
        raise InputError(f"a volume of shape {data.shape} is no series: 3 axes are needed", path=name,
                         fix="pass a 3D volume")
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ np.asarray(affine_ras, dtype=np.float64)
    row, col = lps[:3, 0], lps[:3, 1]
    dc, dr = float(np.linalg.norm(row)), float(np.linalg.norm(col))
    study_uid, series_uid, frame_uid = study_uid or uid("study"), series_uid or uid("series", series_number), \
        frame_uid or uid("frame")
    rescale = list(rescale or [(1.0, -1024.0)])
    n = data.shape[2]
    names = [f"{prefix}{i:04d}.dcm" for i in range(n)]
    if shuffle:
        random.Random(seed).shuffle(names)
    for k in range(n):
        sop = uid("image", series_number, k)
        ds = base_dataset(names[k], study_uid=study_uid, series_uid=series_uid, frame_uid=frame_uid, sop_uid=sop,
                          series_number=series_number, description=description, modality=modality, patient=patient)
        ds.InstanceNumber = n - k if shuffle else k + 1
        ds.ImagePositionPatient = [_ds(v) for v in lps[:3, 3] + k * lps[:3, 2]]
        ds.ImageOrientationPatient = [_ds(v) for v in (*(row / dc), *(col / dr))]
        ds.PixelSpacing = [_ds(dr), _ds(dc)]
        ds.SliceThickness = _ds(float(np.linalg.norm(lps[:3, 2])))
        slope, intercept = rescale[k % len(rescale)]
        ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = _ds(slope), _ds(intercept), "HU"
        hu = data[:, :, k].T.astype(np.float64)
        stored = np.round((hu - intercept) / slope)
        if not np.array_equal(stored * slope + intercept, hu) or stored.min() < -32768 or stored.max() > 32767:
            raise InputError(f"slice {k} cannot be stored as int16 with RescaleSlope {slope:g} / RescaleIntercept "
                             f"{intercept:g} and read back exactly", path=name,
                             fix="round the volume to whole HU, or choose a rescale that maps it onto int16")
        ds.Rows, ds.Columns = data.shape[1], data.shape[0]
        ds.PixelData = stored.astype(np.int16).tobytes()
        yield names[k], ds


def save_dataset(ds, path: str | Path, *, compress: str | None = None, force: bool = False) -> Path:
    """Write one dataset as a DICOM file, atomically (compressed with this transfer syntax, if given)."""
    if compress:
        ds.compress(compress)
    with atomic_path(path, force=force) as tmp:
        ds.save_as(tmp, enforce_file_format=True)
    return Path(path)


def write_series(folder: str | Path, data: np.ndarray, affine_ras: np.ndarray, *, compress: str | None = None,
                 force: bool = False, **header) -> list[Path]:
    """Write `data` (HU, i/j/k on the RAS `affine_ras`) as one series in `folder`; the files in slice order (k).

    `header`: `slice_datasets`' options (series number, description, UIDs or `uid_seed`, rescale, shuffle, patient).
    An existing file is refused unless `force`.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return [save_dataset(ds, folder / fname, compress=compress, force=force)
            for fname, ds in slice_datasets(data, affine_ras, name=str(folder), **header)]


def _ds(v: float) -> str:
    """A DS value that keeps the geometry to a micron (DS holds at most 16 characters)."""
    return f"{float(v):.10g}"[:16]
