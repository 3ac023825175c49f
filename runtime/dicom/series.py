"""Finding the CT series in a folder (tree) of DICOM files, from their headers alone.

`find_series(root)` reads every file's header (never its pixels), groups the images by
SeriesInstanceUID, drops localizers/scouts and what is not an image (a SEG, an SR, a DICOMDIR), and
checks each CT series' geometry (`geometry.series_geometry`). The result, one `DicomSeries` per CT
series, holds everything planning needs without a voxel: shape, RAS affine, bytes per stored value,
the transfer syntax (a compressed one without a decoder is refused here), and the UIDs that reports
carry. It never holds patient attributes: names, IDs, birth dates and accession numbers stay in
the files.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from edgeseg.runtime.dicom.deps import check_decoder, require_pydicom
from edgeseg.runtime.dicom.geometry import MIN_SLICES, SeriesGeometry, Slice, series_geometry
from edgeseg.runtime.errors import InputError

# Files that are never images of a series: the media directory, and what tools leave beside exports.
NOT_IMAGES = {"DICOMDIR"}
# SOP classes of multi-frame CT: the frames are the slices (per-frame functional groups).
ENHANCED_CT = {"1.2.840.10008.5.1.4.1.1.2.1", "1.2.840.10008.5.1.4.1.1.2.2"}  # Enhanced CT, Legacy Converted Enhanced CT


@dataclass(frozen=True)
class SliceSource:
    """Where slice k of a series is stored: its file, the frame in it (None: a single-frame image), its UID."""

    file: Path
    frame: int | None
    sop_instance_uid: str
    slope: float
    intercept: float


@dataclass(frozen=True)
class DicomSeries:
    """One CT series found on disk, checked from its headers: enough to plan and read it, no patient attribute."""

    folder: Path  # the folder it was found in (a case's input, as a NIfTI file is)
    series_instance_uid: str
    study_instance_uid: str
    frame_of_reference_uid: str
    sop_class_uid: str
    series_number: int | None
    series_description: str
    slices: tuple[SliceSource, ...]  # in voxel order k (sorted along the slice normal)
    shape: tuple[int, int, int]  # (columns, rows, slices)
    affine_rows: tuple[tuple[float, ...], ...]  # 4x4 RAS
    itemsize: int  # bytes per stored value (BitsAllocated / 8)
    transfer_syntax: str

    @property
    def path(self) -> Path:
        return self.folder

    @property
    def affine(self) -> np.ndarray:
        return np.asarray(self.affine_rows, dtype=np.float64)

    @property
    def files(self) -> list[Path]:
        return sorted({s.file for s in self.slices})

    @property
    def label(self) -> str:
        """How messages and logs name the series: its folder, number, description and UID (no patient data)."""
        return series_label(self.folder, self.series_number, self.series_description, self.series_instance_uid)

    @property
    def case_name(self) -> str:
        """A stable output name: series number and description, and a short hash of the SeriesInstanceUID
        (so two series of the same number and description in one run never collide)."""
        parts = ["series" if self.series_number is None else f"series{self.series_number}"]
        desc = re.sub(r"[^A-Za-z0-9]+", "_", self.series_description).strip("_")[:40]
        if desc:
            parts.append(desc)
        parts.append(hashlib.sha256(self.series_instance_uid.encode()).hexdigest()[:8])
        return "_".join(parts)

    def identity(self) -> dict:
        """What the report records of the input: UIDs and sizes, never a patient attribute."""
        return {"series_instance_uid": self.series_instance_uid, "study_instance_uid": self.study_instance_uid,
                "frame_of_reference_uid": self.frame_of_reference_uid, "sop_class_uid": self.sop_class_uid,
                "series_number": self.series_number, "series_description": self.series_description,
                "slices": len(self.slices), "files": len(self.files), "transfer_syntax": self.transfer_syntax}


@dataclass
class Found:
    """What `find_series` saw: the CT series, and a line for each thing it skipped."""

    series: list[DicomSeries] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    other_modalities: dict[str, int] = field(default_factory=dict)  # modality -> image series of it


def looks_like_dicom(path: Path) -> bool:
    """A DICOM Part 10 file (the 'DICM' marker after the 128-byte preamble), or a name that says so."""
    if path.name.upper() in NOT_IMAGES:
        return False
    if path.suffix.lower() in (".dcm", ".dicom", ".ima"):
        return True
    try:
        with open(path, "rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def dicom_files(root: Path) -> list[Path]:
    """Every DICOM file under `root` (a folder, searched through its tree; hidden names skipped), sorted."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for f in filenames:
            p = Path(dirpath, f)
            if not f.startswith(".") and p.is_file() and looks_like_dicom(p):
                found.append(p)
    return sorted(found)


def find_series(root: str | Path, *, only_file: Path | None = None) -> Found:
    """The CT series under `root`, checked from their headers; `only_file`: just the series holding this file.

    Refused: a folder without a CT series (naming what it holds instead), a CT series that is no regular
    grid (`series_geometry`), a compressed one without its decoder.
    """
    pydicom = require_pydicom(root)
    root = Path(root)
    files = dicom_files(root)
    found = Found()
    groups: dict[str, list] = defaultdict(list)
    unreadable = 0
    for f in files:
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True)
        except (pydicom.errors.InvalidDicomError, OSError, ValueError, EOFError, KeyError):
            unreadable += 1
            continue
        uid = str(ds.get("SeriesInstanceUID", ""))
        groups[uid].append((f, ds))
    if unreadable:
        found.skipped.append(f"{root}: {unreadable} file(s) that cannot be read as DICOM skipped")
    if only_file is not None:
        groups = {u: g for u, g in groups.items() if any(f == only_file for f, _ in g)}
    for uid, members in sorted(groups.items(), key=lambda kv: str(kv[1][0][0])):
        folder = _common_folder([f for f, _ in members], root)
        modality = str(members[0][1].get("Modality", "")) or "no modality"
        ds0 = members[0][1]
        number = _int_or_none(ds0.get("SeriesNumber"))
        name = series_label(folder, number, "", uid or "missing")
        images = [(f, ds) for f, ds in members if "Rows" in ds and "Columns" in ds]
        if not images:
            found.skipped.append(f"{name}: {len(members)} {modality} object(s) without an image (SEG, SR, "
                                 "presentation state ...) skipped")
            continue
        if modality != "CT":
            found.other_modalities[modality] = found.other_modalities.get(modality, 0) + 1
            found.skipped.append(f"{name}: a {modality} series, not CT, skipped")
            continue
        scouts = [f for f, ds in images if _is_localizer(ds)]
        if scouts:
            found.skipped.append(f"{name}: {len(scouts)} localizer/scout image(s) skipped")
            images = [(f, ds) for f, ds in images if not _is_localizer(ds)]
            if not images:
                continue
        if not uid:
            raise InputError("holds CT images without a SeriesInstanceUID", path=folder,
                             fix="the files are not valid DICOM: export the series again from the scanner or PACS")
        found.series.append(_series_from_headers(images, folder, uid, pydicom))
    if not found.series:
        if found.other_modalities:
            kinds = ", ".join(f"{n} {m} series" for m, n in sorted(found.other_modalities.items()))
            problem = f"holds no CT series, only {kinds}: edgeseg segments CT"
            fix = "point at the CT series (edgeseg's models are trained on CT Hounsfield units)"
        elif files:
            problem = f"holds {len(files)} DICOM file(s) but no CT image series ({'; '.join(found.skipped) or 'none'})"
            fix = "point at the folder of the CT series itself"
        else:
            problem = "holds no .nii/.nii.gz file and no DICOM file"
            fix = "point at the scans themselves (NIfTI files, or a folder of DICOM series)"
        raise InputError(problem, path=only_file or root, fix=fix)
    return found


def series_at(path: str | Path) -> Found:
    """The CT series a path names: every one under a folder (tree) or beside a DICOMDIR; for one DICOM file,
    the series holding it (its folder's tree is read for the rest of the series)."""
    path = Path(path)
    if path.is_dir():
        return find_series(path)
    if path.name.upper() == "DICOMDIR":
        return find_series(path.parent)
    return find_series(path.parent, only_file=path)


def one_series(path: str | Path) -> DicomSeries:
    """The one CT series a folder or one of its files holds (a dataset's image); several are refused, named."""
    found = series_at(path)
    if len(found.series) > 1:
        names = "; ".join(s.label for s in found.series[:4]) + ("; ..." if len(found.series) > 4 else "")
        raise InputError(f"holds {len(found.series)} CT series ({names}), and an image is one series", path=path,
                         fix="point at the folder of one series, or at one file of it")
    return found.series[0]


def series_label(folder: Path, number: int | None, description: str, uid: str) -> str:
    """How messages and logs name a series: folder, number, description, UID; never a patient attribute."""
    desc = f" {description!r}" if description else ""
    return f"{folder} (series {'?' if number is None else number}{desc}, UID {uid})"


def _series_from_headers(images: list, folder: Path, uid: str, pydicom) -> DicomSeries:
    ds0 = images[0][1]
    number = _int_or_none(ds0.get("SeriesNumber"))
    desc = str(ds0.get("SeriesDescription", "") or "").strip()
    name = series_label(folder, number, desc, uid)
    syntaxes = {str(ds.file_meta.get("TransferSyntaxUID", pydicom.uid.ImplicitVRLittleEndian)) for _, ds in images}
    for ts in sorted(syntaxes):
        check_decoder(ts, name)
    slices, sources = [], []
    for f, ds in images:
        for frame, s in _frames(f, ds, name):
            slices.append(s)
            sources.append(SliceSource(f, frame, str(ds.SOPInstanceUID), s.slope, s.intercept))
    for key, what in (("SamplesPerPixel", "samples per pixel"), ("BitsAllocated", "bits per stored value")):
        values = {int(ds.get(key, 1 if key == "SamplesPerPixel" else 16)) for _, ds in images}
        if len(values) > 1:
            raise InputError(f"mixes {what}: {sorted(values)}", path=name,
                             fix="split the series: its images were not stored by one reconstruction")
    if int(ds0.get("SamplesPerPixel", 1)) != 1 or str(ds0.get("PhotometricInterpretation", "MONOCHROME2")) not in (
            "MONOCHROME2", "MONOCHROME1"):
        raise InputError(f"holds {ds0.get('PhotometricInterpretation')} images, not the grey levels of a CT", path=name,
                         fix="point at the original CT series (not a colour rendering or a screenshot series)")
    geom: SeriesGeometry = series_geometry(slices, name, min_slices=MIN_SLICES)
    return DicomSeries(
        folder=folder, series_instance_uid=uid, study_instance_uid=str(ds0.get("StudyInstanceUID", "")),
        frame_of_reference_uid=str(ds0.get("FrameOfReferenceUID", "")), sop_class_uid=str(ds0.get("SOPClassUID", "")),
        series_number=number, series_description=desc, slices=tuple(sources[i] for i in geom.order),
        shape=geom.shape, affine_rows=tuple(tuple(float(v) for v in row) for row in geom.affine),
        itemsize=max(1, int(ds0.get("BitsAllocated", 16)) // 8), transfer_syntax=",".join(sorted(syntaxes)))


def _frames(f: Path, ds, name: str):
    """(frame index or None, Slice) for each 2D image the file holds."""
    if "PerFrameFunctionalGroupsSequence" in ds:  # Enhanced CT: geometry and rescale per frame, or shared
        shared = ds.SharedFunctionalGroupsSequence[0] if "SharedFunctionalGroupsSequence" in ds else None
        for i, per in enumerate(ds.PerFrameFunctionalGroupsSequence):
            def group(seq, _per=per):
                for g in (_per, shared):
                    if g is not None and seq in g and len(g[seq].value):
                        return g[seq][0]
                return None

            pos, ornt, meas = group("PlanePositionSequence"), group("PlaneOrientationSequence"), group("PixelMeasuresSequence")
            if pos is None or ornt is None or meas is None:
                raise InputError(f"frame {i + 1} of {f.name} has no plane position, orientation or pixel spacing",
                                 path=name, fix="the multi-frame file is incomplete: export the series again")
            rescale = group("PixelValueTransformationSequence")
            yield i, _slice(f"{f.name} frame {i + 1}", pos.ImagePositionPatient, ornt.ImageOrientationPatient,
                            meas.PixelSpacing, ds, rescale if rescale is not None else ds, name)
    else:
        if int(ds.get("NumberOfFrames", 1) or 1) > 1:
            raise InputError(f"{f.name} holds {ds.NumberOfFrames} frames without per-frame geometry", path=name,
                             fix="export the series as single-frame images or as Enhanced CT")
        yield None, _slice(f.name, ds.get("ImagePositionPatient"), ds.get("ImageOrientationPatient"),
                           ds.get("PixelSpacing"), ds, ds, name)


def _slice(source: str, position, orientation, spacing, ds, rescale, name: str) -> Slice:
    missing = [k for k, v in (("ImagePositionPatient", position), ("ImageOrientationPatient", orientation),
                              ("PixelSpacing", spacing)) if v is None or len(v) == 0]
    if missing:
        raise InputError(f"{source} has no {', '.join(missing)}: its place in the patient is unknown", path=name,
                         fix="export the series again from the scanner or PACS (a secondary capture or an anonymiser "
                             "that stripped geometry?)")
    try:
        slope = float(rescale.get("RescaleSlope", 1.0) if rescale.get("RescaleSlope") is not None else 1.0)
        intercept = float(rescale.get("RescaleIntercept", 0.0) if rescale.get("RescaleIntercept") is not None else 0.0)
        s = Slice(source=source, position=tuple(float(v) for v in position),
                  orientation=tuple(float(v) for v in orientation), pixel_spacing=tuple(float(v) for v in spacing),
                  rows=int(ds.Rows), columns=int(ds.Columns), slope=slope, intercept=intercept)
    except (TypeError, ValueError) as e:
        raise InputError(f"{source}: a geometry or rescale field cannot be read as numbers ({e})", path=name,
                         fix="the header is broken: export the series again") from None
    if len(s.position) != 3 or len(s.orientation) != 6 or len(s.pixel_spacing) != 2 or min(s.pixel_spacing) <= 0:
        raise InputError(f"{source}: ImagePositionPatient/ImageOrientationPatient/PixelSpacing are malformed "
                         f"({s.position}, {s.orientation}, {s.pixel_spacing})", path=name,
                         fix="the header is broken: export the series again")
    if not np.isfinite(slope) or slope == 0 or not np.isfinite(intercept):
        raise InputError(f"{source}: RescaleSlope {slope:g} / RescaleIntercept {intercept:g} cannot map stored values "
                         "to HU", path=name, fix="the header is broken: export the series again")
    return s


def _is_localizer(ds) -> bool:
    return any(str(v).upper() == "LOCALIZER" for v in (ds.get("ImageType") or []))


def _int_or_none(value) -> int | None:
    try:
        return None if value is None or value == "" else int(value)
    except (TypeError, ValueError):
        return None


def _common_folder(files: list[Path], root: Path) -> Path:
    folders = {f.parent for f in files}
    if len(folders) == 1:
        return folders.pop()
    common = Path(os.path.commonpath([str(f) for f in folders]))
    return common if common.is_relative_to(root) else root


def log_skipped(found: Found, log: Callable[[str], None]) -> None:
    for line in found.skipped:
        log(line)
