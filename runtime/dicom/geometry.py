"""The geometry of a DICOM series from its slices' headers: order, checks, and the RAS affine.

Pure numpy, no pydicom: the headers arrive as `Slice` records (one per image, or per frame of an
Enhanced CT), so classic and multi-frame series share every check. Slices are ordered by their
ImagePositionPatient projected on the ImageOrientationPatient normal (never by InstanceNumber or
file name), and a series is refused, naming it and the fix, when it cannot be one regular 3D grid:
mixed orientations, pixel spacings or image sizes, duplicate positions, slices that do not stack
along the normal (gantry tilt), or gaps (missing slices).

Voxel axes, as dcm2niix and nibabel lay them out: i runs along a row (the row direction cosine,
IOP[0:3], stepping PixelSpacing[1]), j down a column (IOP[3:6], PixelSpacing[0]), k along the
sorted slices. DICOM patient coordinates are LPS; the affine is RAS: the LPS affine with its first
two rows negated, exactly (no rounding, no reorientation).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgeseg.runtime.errors import InputError

# Direction cosines of one series may differ by rounding in the header text (6 decimals typically).
ORIENTATION_TOLERANCE = 1e-4
# Pixel spacings (mm) of one series may differ by rounding in the header text.
PIXEL_SPACING_TOLERANCE_MM = 1e-3
# Slices must stack along the normal: the in-plane drift per slice, over the step, at most this (0.57 deg),
# the same bound as nifti.MAX_AXIS_COSINE for a sheared grid.
MAX_TILT_SINE = 0.01
# Steps between slices may differ by header rounding (positions are often written to 0.01 mm), not more.
SPACING_TOLERANCE_MM = 0.02
SPACING_TOLERANCE_REL = 0.01
# Fewer slices than this are no 3D volume to segment (one slice has no slice spacing at all).
MIN_SLICES = 3


@dataclass(frozen=True)
class Slice:
    """One 2D image of a series, from its header: where it lies and how its stored values become HU."""

    source: str  # file name (and frame, for a multi-frame image): for messages only
    position: tuple[float, float, float]  # ImagePositionPatient (LPS, mm): centre of the first pixel
    orientation: tuple[float, ...]  # ImageOrientationPatient: row cosine (3), column cosine (3)
    pixel_spacing: tuple[float, float]  # PixelSpacing: (between rows, between columns) mm
    rows: int
    columns: int
    slope: float = 1.0
    intercept: float = 0.0


@dataclass(frozen=True)
class SeriesGeometry:
    """A checked series grid: the slices in voxel order (k), the shape (i, j, k) and the RAS affine."""

    order: tuple[int, ...]  # indices into the slices given, sorted along the normal
    shape: tuple[int, int, int]  # (columns, rows, slices)
    affine: np.ndarray  # 4x4 RAS, float64
    affine_lps: np.ndarray  # 4x4 LPS, as the DICOM headers say it

    @property
    def spacing(self) -> tuple[float, float, float]:
        return tuple(float(s) for s in np.linalg.norm(self.affine[:3, :3], axis=0))  # type: ignore[return-value]


LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def series_geometry(slices: list[Slice], name: str, *, min_slices: int = MIN_SLICES) -> SeriesGeometry:
    """Order the slices along the normal and check that they form one regular grid; refused otherwise.

    `name`: how messages name the series (its folder and SeriesNumber/UID).
    """
    n = len(slices)
    if n < min_slices:
        raise InputError(f"series of {n} image(s) is too short to segment (at least {min_slices} slices are needed "
                         "for a 3D volume)", path=name,
                         fix="export the whole CT series (all its axial slices), not single images or a thumbnail")
    first = slices[0]
    iop = np.asarray(first.orientation, dtype=np.float64)
    for s in slices[1:]:
        if np.max(np.abs(np.asarray(s.orientation) - iop)) > ORIENTATION_TOLERANCE:
            raise InputError(f"mixes image orientations: {_fmt(first.orientation)} ({first.source}) and "
                             f"{_fmt(s.orientation)} ({s.source})", path=name,
                             fix="split the series by ImageOrientationPatient (a localizer or a reformat mixed in?) "
                                 "and segment the axial (or one) orientation")
        if np.max(np.abs(np.asarray(s.pixel_spacing) - np.asarray(first.pixel_spacing))) > PIXEL_SPACING_TOLERANCE_MM:
            raise InputError(f"mixes pixel spacings: {_fmt(first.pixel_spacing)} mm ({first.source}) and "
                             f"{_fmt(s.pixel_spacing)} mm ({s.source})", path=name,
                             fix="split the series by PixelSpacing (reconstructions with another field of view mixed "
                                 "in?) and segment one")
        if (s.rows, s.columns) != (first.rows, first.columns):
            raise InputError(f"mixes image sizes: {first.rows}x{first.columns} ({first.source}) and "
                             f"{s.rows}x{s.columns} ({s.source})", path=name,
                             fix="split the series by Rows/Columns and segment one reconstruction")
    row, col = iop[:3], iop[3:]
    if (abs(np.linalg.norm(row) - 1) > 1e-3 or abs(np.linalg.norm(col) - 1) > 1e-3
            or abs(float(row @ col)) > MAX_TILT_SINE):
        raise InputError(f"ImageOrientationPatient {_fmt(first.orientation)} is not two orthogonal unit vectors",
                         path=name, fix="the header is broken: export the series again from the scanner or PACS")
    normal = np.cross(row, col)
    normal /= np.linalg.norm(normal)
    pos = np.asarray([s.position for s in slices], dtype=np.float64)
    along = pos @ normal
    order = np.argsort(along, kind="stable")
    along, pos = along[order], pos[order]
    steps = np.diff(along)
    dup = np.flatnonzero(steps < 1e-3)
    if dup.size:
        a, b = slices[order[dup[0]]], slices[order[dup[0] + 1]]
        raise InputError(f"holds {dup.size} duplicate slice position(s): {a.source} and {b.source} both lie at "
                         f"{along[dup[0]]:.3f} mm along the slice normal", path=name,
                         fix="the folder mixes several acquisitions or phases under one SeriesInstanceUID, or holds "
                             "copies of a file: keep one image per position (split by AcquisitionNumber or "
                             "TemporalPositionIdentifier)")
    step = float(np.median(steps))
    drift = pos[1:] - pos[:-1] - np.outer(steps, normal)  # in-plane offset from one slice to the next
    tilt = float(np.max(np.linalg.norm(drift, axis=1) / steps))
    if tilt > MAX_TILT_SINE:
        angle = float(np.degrees(np.arctan(tilt)))
        raise InputError(f"slices do not stack along their normal: each is shifted in its own plane, {angle:.2f} "
                         "degrees off perpendicular (gantry tilt or a sheared acquisition), which no resampling here "
                         "handles exactly", path=name,
                         fix="reconstruct the series without tilt on the scanner, or convert it with tilt correction "
                             "(dcm2niix does so by default) and segment the NIfTI")
    bad = np.flatnonzero(np.abs(steps - step) > SPACING_TOLERANCE_MM + SPACING_TOLERANCE_REL * step)
    if bad.size:
        k = int(bad[0])
        gap = float(steps[k])
        missing = int(round(gap / step)) - 1
        what = f"about {missing} slice(s) missing" if missing >= 1 else "irregular slice spacing"
        raise InputError(f"{what}: slices are {step:.3f} mm apart, but {gap:.3f} mm separate {slices[order[k]].source} "
                         f"and {slices[order[k + 1]].source} ({bad.size} irregular step(s) in {n} slices)", path=name,
                         fix="export the complete series again from the scanner or PACS (every slice), or split it "
                             "where the spacing changes")
    dr, dc = first.pixel_spacing
    lps = np.eye(4)
    lps[:3, 0] = row * float(dc)
    lps[:3, 1] = col * float(dr)
    lps[:3, 2] = (pos[-1] - pos[0]) / (n - 1)  # the mean step along the stack, exactly on the normal when untilted
    lps[:3, 3] = pos[0]
    return SeriesGeometry(order=tuple(int(i) for i in order), shape=(first.columns, first.rows, n),
                          affine=LPS_TO_RAS @ lps, affine_lps=lps)


def _fmt(values) -> str:
    return "(" + ", ".join(f"{float(v):.4g}" for v in values) + ")"
