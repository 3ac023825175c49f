"""Reading a found DICOM series' pixels into the same `Scan` that a NIfTI file gives.

The voxels come out in the series' own voxel order (i along a row, j down a column, k along the
sorted slices: see `geometry`), as float32 Hounsfield units with each slice's RescaleSlope and
RescaleIntercept applied to its own stored values (in float64, before any cast). The scan's header is
a NIfTI header holding the series' RAS affine (qform and sform, code "scanner"), so every step after
reading (preprocessing, `GridTransform`, masks written with `save_like`) is the code NIfTI input runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import nibabel as nib
import numpy as np

from edgeseg.runtime.dicom.deps import require_pydicom
from edgeseg.runtime.dicom.series import DicomSeries
from edgeseg.runtime.errors import InputError
from edgeseg.runtime.nifti import Scan, check_affine, check_hounsfield


@dataclass
class DicomScan(Scan):
    """A `Scan` read from a DICOM series; `series` says which (its UIDs, its slices' files)."""

    series: DicomSeries | None = field(default=None, repr=False)


def nifti_header_for(shape: tuple[int, int, int], affine: np.ndarray) -> nib.Nifti1Header:
    """A NIfTI header for float32 data of this shape on this RAS grid (qform and sform: scanner coordinates)."""
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(np.float32)
    header.set_qform(affine, code=1)
    header.set_sform(affine, code=1)
    header.set_xyzt_units("mm")
    return header


def load_series(series: DicomSeries, *, hu_check: bool = True) -> DicomScan:
    """Read the series' pixels, slice by slice in voxel order; HU as float32 on the series' RAS grid."""
    pydicom = require_pydicom(series.label)
    name = series.label
    affine = check_affine(series.affine, name)
    cols, rows, n = series.shape
    data = np.empty((cols, rows, n), dtype=np.float32)
    current, frames = None, None
    for k, s in enumerate(series.slices):
        if s.file != current:
            frames = _read_pixels(s, name, pydicom)
            current = s.file
        stored = frames if s.frame is None else frames[s.frame]
        if stored.shape != (rows, cols):
            raise InputError(f"{s.file.name}: pixels of shape {stored.shape}, the header says {rows}x{cols}", path=name,
                             fix="the file is corrupt or truncated: copy the series again from the source")
        data[:, :, k] = (stored.T.astype(np.float64) * s.slope + s.intercept).astype(np.float32)
    if not np.all(np.isfinite(data)):
        raise InputError("holds NaN/Inf values after rescaling", path=name, fix="export the series again")
    if hu_check:
        check_hounsfield(data, name)
    return DicomScan(path=series.folder, data=data, affine=affine, header=nifti_header_for(series.shape, affine),
                     series=series)


def _read_pixels(s, name: str, pydicom) -> np.ndarray:
    """The stored values of one file (all its frames for a multi-frame image), checked to be the file listed."""
    try:
        ds = pydicom.dcmread(s.file)
        if str(ds.get("SOPInstanceUID", "")) != s.sop_instance_uid:
            raise InputError(f"{s.file.name} changed since the series was listed (another SOPInstanceUID)", path=name,
                             fix="do not change the input folder during a run; run again")
        return ds.pixel_array
    except InputError:
        raise
    except (OSError, EOFError, ValueError, AttributeError, KeyError, RuntimeError,
            pydicom.errors.InvalidDicomError) as e:
        raise InputError(f"{s.file.name}: pixel data cannot be read ({type(e).__name__}: {e})", path=name,
                         fix="the file is corrupt or truncated, or its decoder failed: copy the series again, or "
                             "export it uncompressed") from None
