"""DICOM Segmentation in (highdicom): one organ's mask from a SEG, on the grid of the series it was drawn on.

What annotators export from OHIF or 3D Slicer is a SEG that references its source series. `read_seg_mask`
checks that reference against the series it is paired with (the SEG's referenced series and Frame of
Reference must be the series'; a SEG of another series is refused, naming both), picks the organ's
segment (its SNOMED CT code and laterality from `organ_codes.csv`, else its label; or a segment number
given outright) and maps the SEG's frames onto the series' voxels (i, j, k: `geometry`):

* by the source instances (and frames, for an Enhanced CT) each SEG frame references, when every frame
  references an image of the series and keeps its pixel locations: exact, whatever the positions say;
* otherwise by the frames' positions and orientation (`highdicom.Volume.match_geometry`: axes permuted
  or flipped, never resampled), refused when the SEG's grid is not the series' lattice or reaches
  beyond the series.

Empty frames omitted by the writer read as empty. FRACTIONAL segments are taken at 0.5.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeseg.runtime.dicom.deps import INSTALL_HINT, require_pydicom
from edgeseg.runtime.dicom.seg import LATERALITY, organ_codes
from edgeseg.runtime.dicom.series import DicomSeries
from edgeseg.runtime.errors import InputError

SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
LABELMAP_SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.7"
_SIDES = {code: side for side, (code, _) in LATERALITY.items()}


@dataclass(frozen=True)
class SegSegment:
    """One segment of a SEG, as messages list it."""

    number: int
    label: str
    code: str  # the segmented property type's code value ("" when absent)
    scheme: str
    meaning: str
    side: str  # "left", "right" or "" (its laterality modifier)

    def describe(self) -> str:
        side = f", {self.side}" if self.side else ""
        return f"#{self.number} {self.label!r} ({self.scheme} {self.code} {self.meaning}{side})"


def read_seg_mask(path: str | Path, series: DicomSeries, organ: str, *, segment_number: int | None = None) -> np.ndarray:
    """The organ's mask (uint8 0/1) from the DICOM-SEG at `path`, on `series`' voxel grid (its `shape`).

    `segment_number`: take this segment, whatever its code and label; None: the one segment that is `organ`.
    """
    path = Path(path)
    seg = _segread(path)
    _check_reference(seg, path, series)
    segment = pick_segment(segments(seg), organ, path, number=segment_number)
    try:
        mask = _by_source(seg, series, segment.number, path)
        if mask is None:
            mask = _by_position(seg, series, segment.number, path)
    except (ValueError, RuntimeError, KeyError, AttributeError, IndexError) as e:  # highdicom's refusals
        raise InputError(f"its frames cannot be mapped onto the series {series.label} ({type(e).__name__}: {e})",
                         path=path, fix="export the segmentation again from the viewer, on this series") from None
    if seg.SegmentationType == "FRACTIONAL":
        return (mask >= 0.5).astype(np.uint8)
    return (mask > 0).astype(np.uint8)


def segments(seg) -> list[SegSegment]:
    """The segments a SEG describes, by number."""
    found = []
    for item in seg.SegmentSequence:
        code, scheme, meaning, side = "", "", "", ""
        if "SegmentedPropertyTypeCodeSequence" in item and len(item.SegmentedPropertyTypeCodeSequence):
            t = item.SegmentedPropertyTypeCodeSequence[0]
            code, scheme, meaning = str(t.get("CodeValue", "")), str(t.get("CodingSchemeDesignator", "")), \
                str(t.get("CodeMeaning", ""))
            for m in t.get("SegmentedPropertyTypeModifierCodeSequence", []):
                side = _SIDES.get(str(m.get("CodeValue", "")), side)
        found.append(SegSegment(int(item.SegmentNumber), str(item.get("SegmentLabel", "") or ""), code, scheme,
                                meaning, side))
    return found


def pick_segment(found: list[SegSegment], organ: str, path: Path, *, number: int | None = None) -> SegSegment:
    """The segment that is `organ`: its SNOMED CT code and laterality (organ_codes.csv), else its label.

    Refused, listing the segments, when none is the organ or several are (and their labels do not decide).
    """
    listing = "; ".join(s.describe() for s in found) or "none"
    if number is not None:
        chosen = [s for s in found if s.number == number]
        if not chosen:
            raise InputError(f"has no segment number {number} (its segments: {listing})", path=path,
                             fix="give one of the segment numbers listed (CSV column label_value), or leave it empty "
                                 "to pick the segment by --organ")
        return chosen[0]
    row = organ_codes().get(organ)
    by_code = [s for s in found if row is not None and s.scheme in ("SCT", "SNOMED") and s.code == row.code
               and s.side == row.laterality]
    by_label = [s for s in found if _norm(s.label) == _norm(organ)]
    candidates = by_code if len(by_code) == 1 else [s for s in by_code if s in by_label] if by_code else by_label
    if len(candidates) == 1:
        return candidates[0]
    what = (f"SNOMED CT {row.code} {row.meaning}{', ' + row.laterality if row.laterality else ''} or label {organ!r}"
            if row is not None else f"label {organ!r} (no SNOMED CT code for it in organ_codes.csv)")
    if not candidates and not by_code:
        raise InputError(f"has no segment of organ {organ!r} (looked for {what}; its segments: {listing})", path=path,
                         fix="pass --organ as one of the segment labels listed, or give the segment's number in the "
                             "CSV column label_value")
    several = candidates or by_code
    raise InputError(f"has {len(several)} segments of organ {organ!r} ({'; '.join(s.describe() for s in several)})",
                     path=path, fix="give the segment's number in the CSV column label_value")


def _segread(path: Path):
    pydicom = require_pydicom(path)
    try:
        import highdicom as hd
    except ImportError:
        raise InputError("reading a DICOM-SEG label needs highdicom, which is not installed", path=path,
                         fix=INSTALL_HINT) from None
    try:
        head = pydicom.dcmread(path, stop_before_pixels=True)
    except (pydicom.errors.InvalidDicomError, OSError, ValueError, EOFError, KeyError) as e:
        raise InputError(f"cannot be read as DICOM ({type(e).__name__}: {e})", path=path,
                         fix="the file is corrupt or truncated: export the segmentation again") from None
    sop_class = str(head.get("SOPClassUID", ""))
    if sop_class not in (SEG_STORAGE, LABELMAP_SEG_STORAGE):
        what = f"a {head.get('Modality', '?')} object" if sop_class else "no DICOM object with a SOP class"
        raise InputError(f"is {what} (SOP class {sop_class or 'missing'}), not a DICOM Segmentation", path=path,
                         fix="give the organ's label as a DICOM-SEG (OHIF, 3D Slicer: export as DICOM SEG) or as a "
                             "NIfTI mask on the image's grid")
    try:
        return hd.seg.segread(path)
    except (ValueError, AttributeError, KeyError, TypeError, NotImplementedError, RuntimeError) as e:
        raise InputError(f"is a DICOM-SEG that highdicom cannot read ({type(e).__name__}: {e})", path=path,
                         fix="export the segmentation again from the viewer (BINARY, uncompressed)") from None


def _check_reference(seg, path: Path, series: DicomSeries) -> None:
    """The SEG must be drawn on this series: its referenced series and its Frame of Reference are the series'."""
    referenced = [str(s.SeriesInstanceUID) for s in seg.get("ReferencedSeriesSequence", []) if "SeriesInstanceUID" in s]
    for study in seg.get("StudiesContainingOtherReferencedInstancesSequence", []):
        referenced += [str(s.SeriesInstanceUID) for s in study.get("ReferencedSeriesSequence", [])]
    frame = str(seg.get("FrameOfReferenceUID", ""))
    if series.series_instance_uid in referenced and frame == series.frame_of_reference_uid:
        return
    raise InputError(f"is a segmentation of series {', '.join(referenced) or '(none referenced)'} in Frame of Reference "
                     f"{frame or '(none)'}, but its image row is series {series.series_instance_uid} in Frame of "
                     f"Reference {series.frame_of_reference_uid} ({series.folder})", path=path,
                     fix="pair the SEG with the series it was drawn on (the viewer's export names its source series), "
                         "or draw the label on this series")


def _by_source(seg, series: DicomSeries, number: int, path: Path) -> np.ndarray | None:
    """Frames mapped by the source images they reference; None when some frame references none or has moved pixels."""
    wanted = {s.sop_instance_uid for s in series.slices}
    refs, moved = [], False
    for frame in seg.PerFrameFunctionalGroupsSequence:
        sources = [src for der in frame.get("DerivationImageSequence", []) for src in der.get("SourceImageSequence", [])]
        if not sources:
            return None
        moved |= any(str(src.get("SpatialLocationsPreserved", "YES")).upper() == "NO" for src in sources)
        refs.append({str(src.ReferencedSOPInstanceUID) for src in sources})
    if moved:
        return None
    missing = [r for r in refs if not r & wanted]
    if missing:
        strangers = sorted(set().union(*missing))
        raise InputError(f"references {len(strangers)} image(s) that the series {series.label} lacks (e.g. "
                         f"{strangers[0]}): the series folder is incomplete, or another series' images are referenced",
                         path=path, fix="copy the whole series the SEG was drawn on, and pair the SEG with it")
    cols, rows, n = series.shape
    if (int(seg.Rows), int(seg.Columns)) != (rows, cols):
        return None  # other pixels: only positions can say where they lie
    if all(s.frame is None for s in series.slices):
        px = seg.get_pixels_by_source_instance([s.sop_instance_uid for s in series.slices], segment_numbers=[number],
                                               ignore_spatial_locations=True, assert_missing_frames_are_empty=True)
    else:
        (uid,) = {s.sop_instance_uid for s in series.slices}
        px = seg.get_pixels_by_source_frame(uid, [s.frame + 1 for s in series.slices], segment_numbers=[number],
                                            ignore_spatial_locations=True, assert_missing_frames_are_empty=True)
    return np.transpose(px[..., 0], (2, 1, 0))  # (k, rows, cols) -> (i, j, k)


def _by_position(seg, series: DicomSeries, number: int, path: Path) -> np.ndarray:
    """Frames placed by their positions: the SEG's volume permuted/flipped/padded onto the series' lattice."""
    import highdicom as hd

    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ series.affine  # (i, j, k) -> LPS
    cols, rows, n = series.shape
    target = hd.VolumeGeometry(lps[:, [2, 1, 0, 3]], (n, rows, cols), coordinate_system="PATIENT",
                               frame_of_reference_uid=series.frame_of_reference_uid)
    volume = seg.get_volume(segment_numbers=[number])
    before = int(np.count_nonzero(volume.array))
    try:
        placed = volume.match_geometry(target)
    except RuntimeError as e:
        raise InputError(f"its frames do not lie on the voxel grid of the series {series.label} ({e})", path=path,
                         fix="export the segmentation on the series' own grid (no resampling), or resample it onto "
                             "the series") from None
    array = placed.array[..., 0] if placed.array.ndim == 4 else placed.array
    if int(np.count_nonzero(array)) != before:
        raise InputError(f"marks {before - int(np.count_nonzero(array))} voxel(s) outside the series {series.label}",
                         path=path, fix="pair the SEG with the whole series it was drawn on")
    return np.transpose(array, (2, 1, 0))


def _norm(name: str) -> str:
    return re.sub(r"[\s\-]+", "_", name.strip().lower())
