"""DICOM CT series in: the same `Scan` as a NIfTI file, with the geometry checked from the headers.

The parts, one module each, none importing pydicom before a DICOM file is read (`deps`):

* `geometry`: slices (one per image or per frame) -> their order along the slice normal, the refusals
  of a series that is no regular grid (tilt, gaps, duplicates, mixed orientation/spacing/size), and the
  RAS affine (LPS with the first two axes flipped).
* `series`: a folder (tree) -> its CT series (`find_series`, `DicomSeries`), headers only; localizers
  and non-image objects skipped with a line that says so, other modalities refused or skipped.
  `one_series(path)`: the one series a dataset's image (a folder, or one file of it) names.
* `read`: a series -> `DicomScan` (a `Scan`: float32 HU per slice's own rescale, RAS affine, a NIfTI
  header of that grid for the outputs).
* `seg` writes a DICOM Segmentation of a series; `segread` reads one organ's mask from one, on the series' grid
  (imported on use: they need highdicom). `write` writes a volume as a DICOM CT series (the demo's DICOM
  copy of the real CT, the read benchmark, the tests' series).
"""

from edgeseg.runtime.dicom.geometry import SeriesGeometry, Slice, series_geometry
from edgeseg.runtime.dicom.read import DicomScan, load_series
from edgeseg.runtime.dicom.series import (DicomSeries, Found, dicom_files, find_series, looks_like_dicom, one_series,
                                          series_at)

__all__ = ["DicomScan", "DicomSeries", "Found", "SeriesGeometry", "Slice", "dicom_files", "find_series",
           "load_series", "looks_like_dicom", "one_series", "series_at", "series_geometry"]
