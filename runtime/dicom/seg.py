"""DICOM Segmentation out (highdicom): one SEG per case, BINARY, one segment per organ, on the source's frames.

The masks arrive on the series' own grid (i, j, k: `geometry`), so each frame of the SEG is one source
slice, transposed back to rows x columns: pixel-aligned with the source, no resampling. Segments carry
SNOMED CT codes from `organ_codes.csv` (laterality as a modifier, as TotalSegmentator encodes it) and
the algorithm that made them (edgeseg, its version, family Artificial Intelligence, the engine's
manifest hash). Frames with no voxel of a segment are omitted; the file is uncompressed (what OHIF,
3D Slicer and PACS viewers open most reliably) and written atomically. The SEG references the source
instances, series and Frame of Reference; it carries the patient module of its source, as a SEG must:
it is the one output that does.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from edgeseg.runtime.atomic import atomic_path
from edgeseg.runtime.dicom.deps import INSTALL_HINT, require_pydicom
from edgeseg.runtime.dicom.series import DicomSeries
from edgeseg.runtime.errors import InputError

CODES_FILE = Path(__file__).with_name("organ_codes.csv")
LATERALITY = {"left": ("7771000", "Left"), "right": ("24028007", "Right")}


@dataclass(frozen=True)
class OrganCode:
    organ: str
    code: str  # SNOMED CT concept of the segmented property type
    meaning: str
    laterality: str  # "", "left" or "right"


@lru_cache(maxsize=1)
def organ_codes() -> dict[str, OrganCode]:
    """The organ -> SNOMED CT table shipped with edgeseg."""
    with open(CODES_FILE, newline="") as fh:
        rows = csv.DictReader(line for line in fh if not line.startswith("#"))
        return {r["organ"]: OrganCode(r["organ"], r["code"], r["meaning"], r["laterality"]) for r in rows}


def check_organs_coded(organs: Sequence[str], name) -> None:
    """Refuse, before any work, organs that a DICOM-SEG cannot describe (no code in the table)."""
    table = organ_codes()
    missing = [o for o in organs if o not in table]
    if missing:
        raise InputError(f"no SNOMED CT code for the organ(s) {missing} of this engine: a DICOM-SEG cannot describe "
                         f"them ({len(table)} organs are coded, e.g. {', '.join(list(table)[:4])})", path=name,
                         fix="pass --format nifti for this engine, or add the organ's code to "
                             "edgeseg/runtime/dicom/organ_codes.csv")


def write_seg(path: Path, series: DicomSeries, masks: Mapping[str, np.ndarray], *, algorithm_version: str,
              engine_hash: str | None, force: bool = False) -> Path:
    """Write the masks (uint8 on the series' grid, one per organ) as a DICOM Segmentation of the series."""
    pydicom = require_pydicom(series.label)
    try:
        import highdicom as hd
    except ImportError:
        raise InputError("writing a DICOM-SEG needs highdicom, which is not installed", path=series.label,
                         fix=f"{INSTALL_HINT}, or pass --format nifti") from None
    from pydicom.sr.codedict import codes

    check_organs_coded(list(masks), series.label)
    table = organ_codes()
    params = {"engine_manifest_sha256": engine_hash} if engine_hash else None
    algorithm = hd.AlgorithmIdentificationSequence(name="edgeseg", version=algorithm_version,
                                                   family=codes.cid7162.ArtificialIntelligence, parameters=params)
    descriptions = []
    for number, organ in enumerate(masks, start=1):
        row = table[organ]
        desc = hd.seg.SegmentDescription(
            segment_number=number, segment_label=organ, segmented_property_category=codes.SCT.AnatomicalStructure,
            segmented_property_type=hd.sr.CodedConcept(row.code, "SCT", row.meaning),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=algorithm)
        if row.laterality:  # a modifier of the property type, as dcmqi and TotalSegmentator write it
            code, meaning = LATERALITY[row.laterality]
            desc.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [
                hd.sr.CodedConcept(code, "SCT", meaning)]
        descriptions.append(desc)
    sources, frames = _sources(series, pydicom)
    cols, rows, n = series.shape
    pixels = np.zeros((frames, rows, cols, len(masks)), dtype=np.uint8)
    for s_idx, (organ, mask) in enumerate(masks.items()):
        if tuple(mask.shape) != series.shape:
            raise ValueError(f"mask of {organ} has shape {mask.shape}, the series {series.shape}")
        for k, s in enumerate(series.slices):
            pixels[k if s.frame is None else s.frame, :, :, s_idx] = mask[:, :, k].T
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=pixels, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=_seg_series_number(series),
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="edgeseg", manufacturer_model_name="edgeseg predict",
        software_versions=algorithm_version, device_serial_number="none", omit_empty_frames=True,
        series_description=f"edgeseg {', '.join(masks)}"[:64], content_label="EDGESEG")
    with atomic_path(path, force=force) as tmp:
        seg.save_as(tmp)
    return path


def _sources(series: DicomSeries, pydicom):
    """The source datasets (headers only) in the frame order of the SEG, and the number of frames."""
    if all(s.frame is None for s in series.slices):
        return [pydicom.dcmread(s.file, stop_before_pixels=True) for s in series.slices], len(series.slices)
    files = series.files
    if len(files) != 1:
        raise InputError(f"is spread over {len(files)} multi-frame files; a DICOM-SEG here references one", path=series.label,
                         fix="pass --format nifti for this series")
    ds = pydicom.dcmread(files[0], stop_before_pixels=True)
    return [ds], int(ds.NumberOfFrames)


def _seg_series_number(series: DicomSeries) -> int:
    return 9000 + (series.series_number or 0) % 1000  # a number of its own, near the source's in a viewer's list
