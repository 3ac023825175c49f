"""DICOM CT series in: the same `Scan` as a NIfTI file, with the geometry checked from the headers.

Three parts, one module each, none importing pydicom before a DICOM file is read (`deps`):

* `geometry`: slices (one per image or per frame) -> their order along the slice normal, the refusals
  of a series that is no regular grid (tilt, gaps, duplicates, mixed orientation/spacing/size), and the
  RAS affine (LPS with the first two axes flipped).
* `series`: a folder (tree) -> its CT series (`find_series`, `DicomSeries`), headers only; localizers
  and non-image objects skipped with a line that says so, other modalities refused or skipped.
* `read`: a series -> `DicomScan` (a `Scan`: float32 HU per slice's own rescale, RAS affine, a NIfTI
  header of that grid for the outputs).
"""

from edgeseg.runtime.dicom.geometry import SeriesGeometry, Slice, series_geometry
from edgeseg.runtime.dicom.read import DicomScan, load_series
from edgeseg.runtime.dicom.series import DicomSeries, Found, dicom_files, find_series, looks_like_dicom

__all__ = ["DicomScan", "DicomSeries", "Found", "SeriesGeometry", "Slice", "dicom_files", "find_series",
           "load_series", "looks_like_dicom", "series_geometry"]
