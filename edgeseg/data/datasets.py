"""Readers for the dataset layouts hospital users have; torch-free.

Understood layouts (`open_dataset` tells them apart):

* TotalSegmentator: ``ROOT/<case>/ct.nii.gz`` and ``ROOT/<case>/segmentations/<organ>.nii.gz``
  (one 0/1 mask per organ).
* nnU-Net v2 and the Medical Segmentation Decathlon (MSD): ``ROOT/dataset.json``,
  ``ROOT/imagesTr/<case>_0000.nii.gz`` (v2) or ``ROOT/imagesTr/<case>.nii.gz`` (MSD) and
  ``ROOT/labelsTr/<case>.nii.gz`` (multi-label maps, names in dataset.json).
* CSV: a header row ``image,label[,organ][,label_value][,case_id]``; paths relative to the CSV's
  folder or absolute. An image is a NIfTI file or a DICOM CT series (its folder, or one file of it);
  a label is a NIfTI mask or map on the image's grid, or, for a DICOM image, a DICOM-SEG of that series
  (the organ's segment picked by its SNOMED CT code or label, or by its number in ``label_value``).

A reader lists, for one requested organ, the cases that have a label for it (`cases()`) and the
cases that lack one, with the reason (`inventory()`). Cases lacking the organ are never dropped
silently: with ``require=True`` (the default) asking for the cases raises an `InputError` naming
the case and the missing file; with ``require=False`` they are skipped and the reasons are kept in
``reader.skipped``. Listing is cheap (file names and dataset.json only); voxels are read when a
case's mask or image is loaded.
"""

from __future__ import annotations

import csv
import difflib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from edgeseg.runtime.errors import InputError
# The private helpers are reused on purpose: a header-only read must refuse exactly what
# load_scan refuses (missing file, not NIfTI, corrupt, not 3D) with the same messages.
from edgeseg.runtime.nifti import Scan, shape_3d, open_nifti, is_nifti_path, load_scan
from edgeseg.runtime.preprocess import check_same_grid

LAYOUTS_HELP = (
    "give one of: a TotalSegmentator folder (<case>/ct.nii.gz and <case>/segmentations/<organ>.nii.gz), "
    "an nnU-Net v2 or MSD folder (dataset.json, imagesTr/, labelsTr/), "
    "or a .csv file with a header row image,label[,organ][,label_value] (images NIfTI files or DICOM series, "
    "labels NIfTI or DICOM-SEG)"
)

_LABELS_EXAMPLE = '"labels": {"background": 0, "liver": 1} (nnU-Net v2) or {"0": "background", "1": "liver"} (MSD)'
_CHANNEL_RE = re.compile(r"(?P<case>.+)_(?P<channel>\d{4})")  # nnU-Net v2: <case>_0000<file_ending>


# ----------------------------------------------------------------------------------------------
# Cases


@dataclass(frozen=True)
class Case:
    """One CT and the label of one organ in it."""

    case_id: str
    image: Path  # a NIfTI file, or a DICOM CT series (its folder, or one file of it)
    label: Path | None  # a NIfTI file, or a DICOM-SEG of the image's series
    label_value: int | None  # the organ's value in a multi-label map (a SEG: its segment number); None: a 0/1 mask
    organ: str

    @property
    def label_is_seg(self) -> bool:
        return self.label is not None and not is_nifti_path(self.label)

    def load_image(self) -> Scan:
        """The CT, as `load_scan` (NIfTI) or `load_series` (DICOM) reads it: float32 HU, the input's own voxel order."""
        if not is_nifti_path(self.image):
            from edgeseg.runtime.dicom import load_series, one_series

            return load_series(one_series(self.image))
        return load_scan(self.image)

    def load_mask(self) -> np.ndarray:
        """The organ's mask (uint8 0/1) on the image's grid; refuses a misplaced, invalid or empty label."""
        # Only the image header(s) are read: the grid check needs shape and affine, not voxels.
        grid = _image_grid(self.image)
        return self._select(self._load_label(grid), grid)

    def load_pair(self) -> tuple[Scan, np.ndarray]:
        """The CT and the organ's mask, reading the image once (for training and evaluation)."""
        image = self.load_image()
        return image, self._select(self._load_label(image), image)

    def has_organ(self) -> bool:
        """Whether the label marks the organ at all; reads the label's voxels, not the image's.

        False when there is no label file. A corrupt label still raises: that is not "absent".
        Does not validate the values: `load_mask` does.
        """
        if self.label is None or not self.label.is_file():
            return False
        if self.label_is_seg:
            return bool(self._load_label(_image_grid(self.image)).data.any())
        data = load_scan(self.label, label=True).data
        return bool(np.any(data == self.label_value)) if self.label_value is not None else bool(np.any(data))

    def _load_label(self, image: Scan) -> Scan:
        """The label as read (a NIfTI file's values), or the organ's 0/1 mask from a DICOM-SEG on `image`'s series."""
        if self.label is None:
            raise InputError(
                f"case {self.case_id!r} has no label for organ {self.organ!r}", path=self.image,
                fix="add the label, or drop the case from the dataset",
            )
        if self.label_is_seg:
            from edgeseg.runtime.dicom.segread import read_seg_mask

            series = getattr(image, "series", None)
            if series is None:
                raise InputError(f"is a DICOM-SEG, but the image of case {self.case_id!r} is a NIfTI file "
                                 f"({self.image}): a SEG maps onto the DICOM series it was drawn on", path=self.label,
                                 fix="list that DICOM series as the image (its folder), or give the label as a NIfTI "
                                     "mask on the image's grid")
            mask = read_seg_mask(self.label, series, self.organ, segment_number=self.label_value)
            return Scan(path=self.label, data=mask, affine=image.affine, header=image.header)
        return load_scan(self.label, label=True)

    def _select(self, label: Scan, image: Scan) -> np.ndarray:
        check_same_grid(image, label)
        data = label.data  # integer dtype: load_scan(label=True) and read_seg_mask guarantee it
        value = None if self.label_is_seg else self.label_value  # a SEG's segment is chosen when it is read
        if value is None:
            # min/max is exact for integers and far cheaper than np.unique on a full volume.
            if data.size and (data.min() < 0 or data.max() > 1):
                raise InputError(
                    f"a per-organ mask of {self.organ!r} must hold only 0 and 1, "
                    f"but it holds values {_describe_values(data)}", path=label.path,
                    fix="if this is a multi-label map, give the organ's value (CSV column label_value); "
                        "otherwise re-export the mask as 0/1 (e.g. mask > 0)",
                )
            mask = data.astype(np.uint8)
        else:
            mask = np.equal(data, value).view(np.uint8)  # bool -> uint8 without a copy
        if not mask.any():
            where = f" (no voxel has value {value})" if value is not None else ""
            raise InputError(
                f"organ {self.organ!r} is absent from case {self.case_id!r}: the mask is empty{where}",
                path=label.path,
                fix=f"drop case {self.case_id!r} from the dataset, or check that this label belongs to "
                    f"{self.image.name} and marks {self.organ!r}",
            )
        return mask


@dataclass(frozen=True)
class Skipped:
    """A case that cannot be used for the organ, and why (a missing label or image file)."""

    case_id: str
    path: Path  # the file that is missing
    reason: str


@dataclass(frozen=True)
class Inventory:
    """What a dataset holds for one organ: usable cases and cases lacking it, both sorted by case id."""

    usable: tuple[Case, ...]
    lacking: tuple[Skipped, ...]


def _image_grid(path: Path) -> Scan:
    """The image's grid (shape, affine) from its header(s) alone; no voxel is read or decompressed. A DICOM
    series gives a `DicomScan` that holds the series (a DICOM-SEG label is mapped onto it)."""
    if not is_nifti_path(path):
        from edgeseg.runtime.dicom import DicomScan, one_series
        from edgeseg.runtime.dicom.read import nifti_header_for

        series = one_series(path)
        data = np.broadcast_to(np.zeros((), dtype=np.float32), series.shape)
        return DicomScan(path=series.folder, data=data, affine=series.affine,
                         header=nifti_header_for(series.shape, series.affine), series=series)
    img = open_nifti(path)
    shape = shape_3d(img.shape, path)
    # check_same_grid looks only at path, shape and affine; a zero-stride stand-in costs one float.
    data = np.broadcast_to(np.zeros((), dtype=np.float32), shape)
    return Scan(path=path, data=data, affine=np.asarray(img.affine, dtype=np.float64), header=img.header)


def _describe_values(data: np.ndarray, limit: int = 10) -> str:
    values = np.unique(data)
    shown = ", ".join(str(v) for v in values[:limit].tolist())
    return f"{{{shown}}}" if len(values) <= limit else f"{{{shown}, ...}} ({len(values)} distinct)"


# ----------------------------------------------------------------------------------------------
# Readers


class DatasetReader:
    """Cases of one organ in one dataset. Subclasses fill `_usable`, `_lacking` and `_organs`."""

    layout: str = ""

    def __init__(self, root: Path, organ: str, *, require: bool = True):
        self.root = Path(root)
        self.organ = _check_organ_arg(organ, root)  # replaced by the dataset's own spelling
        self.require = require
        self.skipped: list[Skipped] = []  # filled by cases() / iteration when cases are skipped
        self._usable: list[Case] = []
        self._lacking: list[Skipped] = []
        self._organs: list[str] = []

    def organs(self) -> list[str]:
        """Organ names the dataset offers (sorted; background excluded)."""
        return list(self._organs)

    def inventory(self) -> Inventory:
        """All cases: those with a label for the organ, and those lacking it with the reason."""
        return Inventory(usable=tuple(self._usable), lacking=tuple(self._lacking))

    def cases(self, *, require: bool | None = None) -> list[Case]:
        """The usable cases, sorted by id. Cases lacking the organ raise (require) or go to `skipped`."""
        require = self.require if require is None else require
        if self._lacking and require:
            first, others = self._lacking[0], self._lacking[1:]
            more = ""
            if others:
                ids = ", ".join(s.case_id for s in others[:5]) + (", ..." if len(others) > 5 else "")
                more = f" ({len(others)} more case(s) lack it too: {ids})"
            raise InputError(
                f"case {first.case_id!r}: {first.reason}{more}", path=first.path,
                fix="add the missing file or remove the case from the dataset; to go on without such "
                    "cases, allow skipping them (require=False)",
            )
        self.skipped = list(self._lacking)
        return list(self._usable)

    def __iter__(self) -> Iterator[Case]:
        return iter(self.cases())

    def __len__(self) -> int:
        """The number of usable cases (never raises; `cases()` is where lacking cases are reported)."""
        return len(self._usable)

    def __repr__(self) -> str:
        return (f"<{type(self).__name__} layout={self.layout} root={str(self.root)!r} organ={self.organ!r} "
                f"cases={len(self._usable)} lacking={len(self._lacking)}>")


class TotalSegmentatorReader(DatasetReader):
    """``ROOT/<case>/ct.nii.gz`` + ``ROOT/<case>/segmentations/<organ>.nii.gz`` (0/1 masks)."""

    layout = "totalsegmentator"

    def __init__(self, root: str | Path, organ: str, *, require: bool = True):
        super().__init__(Path(root), organ, require=require)
        found: list[tuple[str, Path, dict[str, Path]]] = []  # (case id, ct, organ -> mask)
        no_image: list[tuple[str, Path]] = []
        for d in _subdirs(self.root):
            seg_dir = d / "segmentations"
            masks = {_nifti_stem(p.name): p for p in _nifti_files(seg_dir)} if seg_dir.is_dir() else {}
            image = _find_nifti(d, "ct")
            if image is not None:
                found.append((d.name, image, masks))
            elif masks:  # a case folder with labels but no CT; other folders are not cases
                no_image.append((d.name, d / "ct.nii.gz"))
        if not found:
            raise InputError("no case folder holds ct.nii.gz", path=self.root,
                             fix="give the TotalSegmentator root (the folder holding s0000/, s0001/, ...)")
        self._organs = sorted({name for _, _, masks in found for name in masks})
        if not self._organs:
            raise InputError("no case has a segmentations/ folder with masks", path=self.root,
                             fix="this copy holds CTs only: download the dataset with its segmentations")
        self.organ = _resolve_organ(organ, self._organs, where=self.root)
        for case_id, image, masks in found:
            label = masks.get(self.organ)
            if label is None:
                expected = image.parent / "segmentations" / f"{self.organ}.nii.gz"
                self._lacking.append(Skipped(case_id, expected,
                                             f"lacks organ {self.organ!r}: segmentations/{expected.name} not found"))
            else:
                self._usable.append(Case(case_id, image, label, None, self.organ))
        self._lacking += [Skipped(cid, path, "has segmentations but no CT image (ct.nii.gz)") for cid, path in no_image]
        self._lacking.sort(key=lambda s: s.case_id)


class NnUNetReader(DatasetReader):
    """nnU-Net v2 (``layout == "nnunetv2"``) or MSD (``layout == "msd"``): dataset.json, imagesTr/, labelsTr/."""

    def __init__(self, root: str | Path, organ: str, *, require: bool = True):
        super().__init__(Path(root), organ, require=require)
        json_path = self.root / "dataset.json"
        meta = _read_json(json_path)
        # v2 requires channel_names and file_ending; MSD has modality and names images <case>.nii.gz.
        v2 = "channel_names" in meta or "file_ending" in meta
        self.layout = "nnunetv2" if v2 else "msd"
        self.json_path = json_path

        channels_key = "channel_names" if "channel_names" in meta else "modality"
        channels = meta.get(channels_key)
        if isinstance(channels, dict) and len(channels) > 1:
            raise InputError(
                f"dataset has {len(channels)} input channels ({channels_key}: {channels}); CT must be single channel",
                path=json_path, fix="make a dataset with the CT channel only (imagesTr/<case>_0000.nii.gz)",
            )
        ending = meta.get("file_ending", ".nii.gz")
        if not isinstance(ending, str) or not is_nifti_path(ending):
            raise InputError(f"file_ending {ending!r} is not NIfTI; only .nii.gz and .nii are read", path=json_path,
                             fix="convert the images and labels to NIfTI and set \"file_ending\": \".nii.gz\"")
        self.file_ending = ending

        labels = _parse_labels(meta.get("labels"), json_path)
        self._organs = sorted(name for name, value in labels.items() if value != 0 and name.lower() != "background")
        self.organ = _resolve_organ(organ, self._organs, where=json_path)
        value = labels[self.organ]
        if isinstance(value, tuple):
            raise InputError(
                f"label {self.organ!r} is region-based (values {list(value)}): a union of labels, not one organ",
                path=json_path, fix=f"ask for one of the single-valued labels instead: "
                                    f"{', '.join(n for n in self._organs if not isinstance(labels[n], tuple))}",
            )

        images_dir, labels_dir = self.root / "imagesTr", self.root / "labelsTr"
        for d in (images_dir, labels_dir):
            if not d.is_dir():
                raise InputError(f"{d.name}/ not found next to dataset.json", path=d,
                                 fix="an nnU-Net/MSD dataset needs imagesTr/ (CTs) and labelsTr/ (labels)")
        label_files = {f.name[: -len(ending)]: f for f in _files_ending(labels_dir, ending)}
        images: dict[str, Path] = {}
        for f in _files_ending(images_dir, ending):
            case_id, channel = f.name[: -len(ending)], 0
            m = _CHANNEL_RE.fullmatch(case_id)
            # MSD names carry no channel suffix, but a copy renamed for nnU-Net keeps an MSD json:
            # read the suffix there only when that is what pairs the image with its label.
            if m and (v2 or (case_id not in label_files and m["case"] in label_files)):
                case_id, channel = m["case"], int(m["channel"])
            if channel != 0:
                raise InputError(
                    f"is input channel {channel} of case {case_id!r}: a multi-channel dataset; CT must be single channel",
                    path=f, fix="keep only the CT channel (<case>_0000) in imagesTr/, or use a CT-only dataset",
                )
            images[case_id] = f
        if not images:
            raise InputError(f"imagesTr/ holds no image ending in {ending}", path=images_dir,
                             fix="put the CTs in imagesTr/ as <case>_0000.nii.gz (nnU-Net v2) or <case>.nii.gz (MSD)")
        suffix = "_0000" if v2 else ""
        for case_id in sorted(images.keys() | label_files.keys()):
            image, label = images.get(case_id), label_files.get(case_id)
            if image is not None and label is not None:
                self._usable.append(Case(case_id, image, label, int(value), self.organ))
            elif image is not None:
                self._lacking.append(Skipped(case_id, labels_dir / f"{case_id}{ending}",
                                             f"image {image.name} has no label: labelsTr/{case_id}{ending} not found"))
            else:
                self._lacking.append(Skipped(case_id, images_dir / f"{case_id}{suffix}{ending}",
                                             f"label {case_id}{ending} has no image: "
                                             f"imagesTr/{case_id}{suffix}{ending} not found"))


class CsvReader(DatasetReader):
    """A CSV listing ``image,label[,organ][,label_value][,case_id]``, one row per (case, organ).

    With an ``organ`` column a row's label is a 0/1 mask of that organ and only the requested
    organ's rows are read; without it every label is a 0/1 mask of the requested organ. A
    ``label_value`` cell marks the label as a multi-label map and gives the organ's value.
    """

    layout = "csv"

    def __init__(self, path: str | Path, organ: str, *, require: bool = True):
        path = Path(path)
        super().__init__(path.parent, organ, require=require)
        self.csv_path = path
        header, rows = _read_csv(path)
        for col in ("image", "label"):
            if col not in header:
                raise InputError(
                    f"row 1 (header) has no {col!r} column (columns: {', '.join(header) or 'none'})", path=path,
                    fix="the first row must name the columns: image,label[,organ][,label_value]",
                )
        has_organ = "organ" in header
        parsed: list[tuple[int, dict[str, str]]] = []
        for line, cells in rows:
            if len(cells) > len(header):
                raise InputError(f"row {line} has {len(cells)} cells but the header has {len(header)}", path=path,
                                 fix="quote paths that contain commas, or remove the extra cells")
            row = dict(zip(header, [c.strip() for c in cells] + [""] * (len(header) - len(cells))))
            if not row["image"]:
                raise InputError(f"row {line} has an empty image cell", path=path,
                                 fix="give the CT's path, or delete the row")
            if has_organ and not row["organ"]:
                raise InputError(f"row {line} has an empty organ cell", path=path,
                                 fix="name the organ the row's label marks")
            parsed.append((line, row))

        if has_organ:
            self._organs = sorted({row["organ"] for _, row in parsed})
            self.organ = _resolve_organ(organ, self._organs, where=path)
            parsed = [(line, row) for line, row in parsed if row["organ"] == self.organ]
        else:
            self._organs = [self.organ]  # the file does not say: every label is the requested organ

        base = path.parent
        selected: list[tuple[int, Case]] = []
        for line, row in parsed:
            image = _csv_path(row["image"], base, line, "image", path)
            label = _csv_path(row["label"], base, line, "label", path) if row["label"] else None
            value = _label_value(row.get("label_value", ""), line, path)
            case_id = row.get("case_id", "") or _image_stem(image)
            if not image.exists():
                self._lacking.append(Skipped(case_id, image, f"row {line} of {path.name}: image {row['image']!r} not found"))
            elif label is None:
                self._lacking.append(Skipped(case_id, image, f"row {line} of {path.name}: no label given for {image.name}"))
            elif not label.is_file():
                self._lacking.append(Skipped(case_id, label, f"row {line} of {path.name}: label {row['label']!r} not found"))
            else:
                selected.append((line, Case(case_id, image, label, value, self.organ)))
        self._usable = _unique_ids(selected, base, path, has_id_column="case_id" in header)
        self._lacking.sort(key=lambda s: s.case_id)


def _read_csv(path: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """Header (lower-cased names) and the non-blank rows with their line numbers (header = row 1)."""
    try:
        # utf-8-sig: Excel writes a byte-order mark that would otherwise glue itself to "image".
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise InputError("is not UTF-8 text", path=path, fix="save the CSV as UTF-8") from None
    except OSError as e:
        raise InputError(f"cannot be read ({e.strerror})", path=path, fix="check the path and its permissions") from None
    first = text.split("\n", 1)[0]
    # Spreadsheets in many locales save with ';' (or tabs); a header never holds either otherwise.
    delimiter = "," if "," in first else ";" if ";" in first else "\t" if "\t" in first else ","
    reader = csv.reader(text.splitlines(), delimiter=delimiter)
    header: list[str] | None = None
    rows: list[tuple[int, list[str]]] = []
    for cells in reader:
        if not any(c.strip() for c in cells):
            continue
        if header is None:
            header = [c.strip().lower() for c in cells]
        else:
            rows.append((reader.line_num, cells))
    if header is None:
        raise InputError("the CSV is empty (row 1 should be the header image,label[,organ])", path=path,
                         fix="write a header row and one row per case")
    if not rows:
        raise InputError("the CSV has a header but no rows (row 2 onwards should list the cases)", path=path,
                         fix="add one row per case: image,label[,organ]")
    return header, rows


def _csv_path(cell: str, base: Path, line: int, column: str, csv_path: Path) -> Path:
    """A CSV cell's path: NIfTI; or DICOM (an image: a series' folder or one file of it; a label: a DICOM-SEG file).
    A DICOM path that does not exist is let through, to be reported missing with its case."""
    from edgeseg.runtime.dicom.series import looks_like_dicom

    p = Path(cell).expanduser()
    p = p if p.is_absolute() else base / p
    if is_nifti_path(p):
        return p
    if p.exists():
        if (p.is_dir() and column == "image") or (p.is_file() and looks_like_dicom(p)):
            return p
    elif p.suffix.lower() in ("", ".dcm", ".dicom", ".ima"):
        return p
    what = "a DICOM series (its folder, or one file of it)" if column == "image" else "a DICOM-SEG file"
    raise InputError(f"row {line}: {column} {cell!r} is not a NIfTI file name (.nii or .nii.gz) nor {what}",
                     path=csv_path, fix="list a .nii.gz, or a DICOM series and its DICOM-SEG; convert other formats "
                                        "to NIfTI (e.g. dcm2niix)")


def _label_value(cell: str, line: int, csv_path: Path) -> int | None:
    if not cell:
        return None
    try:
        value = int(cell)
    except ValueError:
        value = 0
    if value < 1:
        raise InputError(f"row {line}: label_value {cell!r} is not a positive integer", path=csv_path,
                         fix="give the organ's value in the multi-label map (e.g. 1), "
                             "or leave the cell empty for a 0/1 mask")
    return value


def _unique_ids(selected: list[tuple[int, Case]], base: Path, csv_path: Path, *, has_id_column: bool) -> list[Case]:
    """Case ids must be unique; ids taken from file names fall back to the path (e.g. s0001/ct)."""
    def clashes(cases: list[tuple[int, Case]]) -> dict[str, list[int]]:
        seen: dict[str, list[int]] = {}
        for line, c in cases:
            seen.setdefault(c.case_id, []).append(line)
        return {k: v for k, v in seen.items() if len(v) > 1}

    if clashes(selected) and not has_id_column:
        def by_path(c: Case) -> str:
            try:
                rel = c.image.relative_to(base)
            except ValueError:
                rel = c.image
            return _nifti_stem(rel.as_posix())

        selected = [(line, Case(by_path(c), c.image, c.label, c.label_value, c.organ)) for line, c in selected]
    dup = clashes(selected)
    if dup:
        case_id, lines = next(iter(dup.items()))
        raise InputError(f"case {case_id!r} is listed twice for the same organ (rows {', '.join(map(str, lines))})",
                         path=csv_path, fix="remove the duplicate row, or give the rows distinct case_id cells")
    return sorted((c for _, c in selected), key=lambda c: c.case_id)


# ----------------------------------------------------------------------------------------------
# Layout detection


def open_dataset(path: str | Path, organ: str, *, require: bool = True) -> DatasetReader:
    """Open a dataset for one organ, telling its layout from what is on disk."""
    path = Path(path).expanduser()
    if not path.exists():
        raise InputError("dataset not found", path=path, fix="check the path (relative paths are from the current folder)")
    if path.is_file():
        if path.suffix.lower() == ".csv":
            return CsvReader(path, organ, require=require)
        if path.name == "dataset.json":
            return NnUNetReader(path.parent, organ, require=require)
        raise InputError("is not a dataset: a file that is neither .csv nor dataset.json", path=path, fix=LAYOUTS_HELP)
    if (path / "dataset.json").is_file():
        return NnUNetReader(path, organ, require=require)
    if any(_find_nifti(d, "ct") is not None for d in _subdirs(path)):
        return TotalSegmentatorReader(path, organ, require=require)
    hint = ""
    if (path / "imagesTr").is_dir():
        hint = " (it has imagesTr/ but no dataset.json)"
    elif _find_nifti(path, "ct") is not None:
        hint = " (it looks like one TotalSegmentator case: give the folder above it)"
    raise InputError(f"unrecognised dataset layout{hint}", path=path, fix=LAYOUTS_HELP)


# ----------------------------------------------------------------------------------------------
# Helpers


def _check_organ_arg(organ: str, where: Path) -> str:
    if not isinstance(organ, str) or not organ.strip():
        raise InputError(f"no organ given ({organ!r})", path=where, fix="name the organ to read, e.g. liver")
    return organ.strip()


def _norm(name: str) -> str:
    return re.sub(r"[\s\-]+", "_", name.strip().lower())


def _resolve_organ(organ: str, available: list[str], *, where: Path) -> str:
    """The dataset's spelling of `organ`: exact, else ignoring case and '-'/' ' vs '_'; else an error."""
    organ = _check_organ_arg(organ, where)
    if organ in available:
        return organ
    matches = [name for name in available if _norm(name) == _norm(organ)]
    if len(matches) == 1:
        return matches[0]
    if _norm(organ) == "background":
        raise InputError("'background' is not an organ", path=where, fix=f"ask for one of: {_listing(available)}")
    close = difflib.get_close_matches(_norm(organ), [_norm(n) for n in available], n=3, cutoff=0.6)
    close_names = [n for c in close for n in available if _norm(n) == c]
    suggestion = f"did you mean {close_names[0]!r}? " if close_names else ""
    raise InputError(
        f"no organ {organ!r} in this dataset; it has: {_listing(available)}", path=where,
        fix=f"{suggestion}ask for one of the names listed",
    )


def _listing(names: list[str], limit: int = 25) -> str:
    if not names:
        return "(none)"
    return ", ".join(names[:limit]) + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def _parse_labels(raw: object, json_path: Path) -> dict[str, int | tuple[int, ...]]:
    """name -> value from nnU-Net v2 ({"liver": 1}, lists for regions) or MSD ({"1": "liver"})."""
    if not isinstance(raw, dict) or not raw:
        raise InputError('has no "labels" mapping', path=json_path,
                         fix=f"add e.g. {_LABELS_EXAMPLE}")
    if all(isinstance(v, str) for v in raw.values()) and all(str(k).strip().isdigit() for k in raw):
        return {str(v).strip(): int(str(k).strip()) for k, v in raw.items()}  # MSD: value -> name
    out: dict[str, int | tuple[int, ...]] = {}
    for name, v in raw.items():
        if isinstance(v, int) and not isinstance(v, bool):
            out[name] = v
        elif isinstance(v, str) and v.strip().isdigit():
            out[name] = int(v)
        elif isinstance(v, list) and v and all(isinstance(x, int) and not isinstance(x, bool) for x in v):
            out[name] = tuple(v)  # region-based training: refused only if this label is asked for
        else:
            raise InputError(f"label {name!r} has value {v!r}; expected an integer", path=json_path,
                             fix=f"write labels as {_LABELS_EXAMPLE}")
    return out


def _read_json(path: Path) -> dict:
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise InputError(f"is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})", path=path,
                         fix="repair dataset.json (a JSON validator shows the exact spot)") from None
    except (UnicodeDecodeError, OSError) as e:
        raise InputError(f"cannot be read ({type(e).__name__})", path=path, fix="save dataset.json as UTF-8 text") from None
    if not isinstance(meta, dict):
        raise InputError("does not hold a JSON object", path=path,
                         fix='dataset.json must be an object with a "labels" key')
    return meta


def _image_stem(path: Path) -> str:
    """A case id from an image's path: a NIfTI file's name; a DICOM series' folder name (for one of its files too)."""
    if is_nifti_path(path):
        return _nifti_stem(path.name)
    return path.name if path.is_dir() or not path.suffix else path.parent.name


def _nifti_stem(name: str) -> str:
    low = name.lower()
    for suffix in (".nii.gz", ".nii"):
        if low.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _visible(p: Path) -> bool:
    # MSD archives carry macOS "._<name>.nii.gz" resource forks: never images.
    return not p.name.startswith(".")


def _subdirs(root: Path) -> list[Path]:
    return sorted(d for d in root.iterdir() if d.is_dir() and _visible(d))


def _nifti_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if _visible(p) and p.is_file() and is_nifti_path(p.name))


def _files_ending(folder: Path, ending: str) -> list[Path]:
    return sorted(p for p in folder.iterdir() if _visible(p) and p.is_file() and p.name.endswith(ending))


def _find_nifti(folder: Path, stem: str) -> Path | None:
    for suffix in (".nii.gz", ".nii"):
        p = folder / f"{stem}{suffix}"
        if p.is_file():
            return p
    return None
