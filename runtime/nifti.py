"""Read and write NIfTI scans with checks, keeping the input's header geometry bit for bit."""

from __future__ import annotations

import gzip
import zlib
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from edgeseg.runtime.atomic import atomic_path
from edgeseg.runtime.errors import InputError

NIFTI_SUFFIXES = (".nii", ".nii.gz")


def is_nifti_path(path: str | Path) -> bool:
    return str(path).lower().endswith(NIFTI_SUFFIXES)


@dataclass
class Scan:
    """A 3D volume read from disk: data in the file's own voxel order, affine and header untouched."""

    path: Path
    data: np.ndarray  # float32 (scaled by scl_slope/inter) or the label's integer values
    affine: np.ndarray  # 4x4 float64, as nibabel derives it from the header
    header: nib.Nifti1Header

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.data.shape)  # type: ignore[return-value]

    @property
    def spacing(self) -> tuple[float, float, float]:
        return tuple(float(s) for s in np.linalg.norm(self.affine[:3, :3], axis=0))  # type: ignore[return-value]


def open_nifti(path: Path) -> nib.Nifti1Image:
    if not path.exists():
        raise InputError("file not found", path=path, fix="check the path (relative paths are from the current folder)")
    if path.is_dir():
        raise InputError("is a folder, not a NIfTI file", path=path, fix="give a .nii or .nii.gz file")
    if not is_nifti_path(path):
        raise InputError("not a NIfTI file name (expected .nii or .nii.gz)", path=path, fix="convert the scan to NIfTI (e.g. dcm2niix)")
    with open(path, "rb") as fh:
        magic = fh.read(2)
    gz_name, gz_data = path.name.lower().endswith(".gz"), magic == b"\x1f\x8b"
    if gz_name and not gz_data:
        raise InputError("is named .nii.gz but is not gzip-compressed (an uncompressed NIfTI renamed?)", path=path,
                         fix="rename it to .nii, or compress it (gzip -k FILE, then name it .nii.gz)")
    if gz_data and not gz_name:
        raise InputError("is gzip-compressed but named .nii", path=path, fix="rename it to .nii.gz")
    try:
        img = nib.load(str(path))
    except (nib.filebasedimages.ImageFileError, OSError, EOFError, zlib.error, gzip.BadGzipFile, ValueError) as e:
        raise InputError(f"cannot be read as NIfTI ({type(e).__name__}: {e})", path=path,
                         fix="the file is corrupt or truncated: copy it again from the source") from None
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise InputError(f"is a {type(img).__name__}, not NIfTI", path=path, fix="convert the scan to NIfTI")
    return img


def shape_3d(shape: tuple[int, ...], path: Path) -> tuple[int, int, int]:
    """The 3D shape of a scan; refuses 2D, 4D (see `select_volume`), 5D and empty images."""
    return select_volume(shape, path, None)[0]


def select_volume(shape: tuple[int, ...], path: Path, volume: int | None) -> tuple[tuple[int, int, int], int | None]:
    """(3D shape, index along the 4th axis or None) for a scan of this shape and a `--volume` choice.

    Trailing singleton dimensions (x, y, z, 1) are common and harmless. A 4D series (x, y, z, t) needs
    `volume` (0 to t - 1) to say which volume to take; anything else that is not 3D is refused.
    """
    dims = list(shape)
    if dims and min(dims) < 1:
        raise InputError(f"has an empty axis (shape {tuple(shape)})", path=path, fix="the file holds no voxels: export the scan again")
    while len(dims) > 3 and dims[-1] == 1:
        dims.pop()
    if len(dims) == 4:
        n = dims[3]
        if volume is None:
            raise InputError(f"is a 4D series of {n} volumes (shape {tuple(shape)}); a 3D volume is needed",
                             path=path, fix=f"say which volume to segment: edgeseg predict --volume INDEX (0 to {n - 1}); "
                                            "elsewhere extract one 3D volume first (e.g. fslroi IN OUT INDEX 1)")
        if not (isinstance(volume, int) and 0 <= volume < n):
            raise InputError(f"--volume {volume} is out of range: the scan holds {n} volumes (shape {tuple(shape)})",
                             path=path, fix=f"pass --volume 0 to {n - 1}")
        return tuple(dims[:3]), int(volume)  # type: ignore[return-value]
    if len(dims) != 3:
        raise InputError(f"has shape {tuple(shape)}; a 3D volume is needed", path=path,
                         fix="pass a single 3D CT volume (a 2D slice cannot be segmented; export the whole series)")
    if volume not in (None, 0):
        raise InputError(f"is a single 3D volume (shape {tuple(shape)}); --volume {volume} does not exist", path=path,
                         fix="leave --volume out (it is only for 4D series), or pass --volume 0")
    return tuple(dims), None  # type: ignore[return-value]


def check_header(img, path: Path) -> None:
    """Refuse header fields that nibabel would silently repair into a wrong geometry."""
    try:  # nibabel's loaded header has zeros already replaced by 1: read the header as stored
        opener = gzip.open if path.name.lower().endswith(".gz") else open
        with opener(path, "rb") as fh:
            raw = type(img.header).from_fileobj(fh, check=False)
    except (OSError, EOFError, ValueError, zlib.error):
        raw = img.header
    slope = float(raw["scl_slope"]) if "scl_slope" in raw else 0.0
    if not np.isfinite(slope) or abs(slope) > 1e6 or (slope != 0 and abs(slope) < 1e-6):
        raise InputError(f"header scl_slope {slope:g} is not a plausible intensity scaling (CT uses 1)", path=path,
                         fix="repair the header's scl_slope/scl_inter (CT: slope 1, intercept -1024 or 0), or "
                             "convert the scan again")
    dims = int(raw["dim"][0])
    pixdim = np.asarray(raw["pixdim"][1:1 + min(3, dims)], dtype=np.float64)
    if np.any(~np.isfinite(pixdim)) or np.any(pixdim == 0):
        # nibabel reads a 0 as 1 mm: a liver of 2104 mL then measures 461 mL
        raise InputError(f"header pixdim {tuple(float(v) for v in pixdim)} holds a zero or non-finite voxel size "
                         "(nibabel would read it as 1 mm, and every volume and resampling would be wrong)", path=path,
                         fix="repair the header's pixdim with the scanner's real spacing (or convert the scan again)")


def check_hounsfield(data: np.ndarray, path: Path) -> None:
    """Refuse intensities that cannot be CT Hounsfield units, saying what the scan looks like instead.

    A CT holds air (-1000 HU) around the body or in the lungs and spans well over a thousand HU; a
    scan that does not is stored values without their rescale, display values, a normalised image or a
    mask, and would be segmented confidently and wrongly. Checked on a strided sample (fast).
    """
    flat = data.reshape(-1)
    step = max(1, flat.size // 2_000_000)
    sample = flat[::step]
    mn, mx = float(sample.min()), float(sample.max())
    distinct = np.unique(sample[: 1_000_000]).size
    desc = f"intensities {mn:g} to {mx:g}, {distinct} distinct value(s) in a sample, stored as {data.dtype}"
    problem = None
    if distinct <= 2:
        problem = f"holds only {distinct} distinct value(s) ({desc}): a mask or label map, not a CT"
    elif mx - mn < 50:
        problem = f"spans only {mx - mn:.3g} ({desc}): a normalised or mis-scaled image (a tiny scl_slope?), not HU"
    elif mn > -200:
        if mn >= 0 and mx <= 255:
            problem = f"has no voxel below 0 ({desc}): 8-bit display values, not HU"
        elif mn >= 0:
            problem = (f"has no voxel below 0 ({desc}): stored values without their rescale (HU + 1024?); "
                       "set the header's scl_slope 1 and scl_inter -1024, or convert the scan again")
        else:
            problem = f"has no voxel below -200 HU ({desc}): a CT holds air (-1000 HU) around the body"
    elif mn < -32768 or mx > 65535:
        problem = f"values beyond any CT range ({desc}): a wrong scl_slope or data type"
    if problem:
        raise InputError(f"does not look like a CT in Hounsfield units: {problem}", path=path,
                         fix="convert the scan to HU (dcm2niix keeps the rescale), or pass --no-hu-check if you know "
                             "it is HU (a tight crop without air)")


def check_affine(affine: np.ndarray, path: Path) -> np.ndarray:
    """The affine as float64, refused when it holds NaN/Inf or an implausible voxel spacing."""
    affine = np.asarray(affine, dtype=np.float64)
    if not np.all(np.isfinite(affine)):
        raise InputError("affine holds NaN or Inf", path=path, fix="repair the header's qform/sform")
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    if np.any(spacing < 1e-3) or np.any(spacing > 100):
        raise InputError(f"voxel spacing {tuple(np.round(spacing, 4))} mm is implausible", path=path,
                         fix="repair the header's pixdim/qform/sform (spacing must be between 0.001 and 100 mm)")
    cos = (affine[:3, :3] / spacing).T @ (affine[:3, :3] / spacing)
    off = np.abs(cos - np.diag(np.diag(cos)))
    if off.max() > MAX_AXIS_COSINE:
        i, j = np.unravel_index(int(np.argmax(off)), off.shape)
        angle = float(np.degrees(np.arccos(np.clip(abs(cos[i, j]), 0.0, 1.0))))
        raise InputError(f"its voxel axes {i} and {j} meet at {angle:.2f} degrees, not 90: a sheared or degenerate grid "
                         "(gantry tilt kept as a shear, or a broken sform) that no resampling here handles exactly",
                         path=path, fix="convert the scan again with the tilt corrected (dcm2niix does by default) "
                                        "or resample it to an orthogonal grid")
    return affine


# Axes of a scanner grid are orthogonal; 0.01 (about 0.6 degrees) leaves room for rounding in real headers.
MAX_AXIS_COSINE = 0.01
# qform and sform may differ by rounding; beyond this (mm, at any corner of the volume) they describe
# different positions, and which one a reader uses decides where the organ is.
MAX_QFORM_SFORM_MM = 0.5


def check_qform_sform(img, shape3, path: Path) -> None:
    """Refuse a header whose qform and sform (both set) place the volume differently."""
    hdr = img.header
    q, qcode = hdr.get_qform(coded=True)
    sf, scode = hdr.get_sform(coded=True)
    if q is None or sf is None or not qcode or not scode:
        return
    shape = np.asarray(shape3, dtype=np.float64)
    corners = np.array([[x, y, z, 1.0] for x in (0, shape[0] - 1) for y in (0, shape[1] - 1) for z in (0, shape[2] - 1)])
    gap = float(np.abs(corners @ (np.asarray(q) - np.asarray(sf)).T)[:, :3].max())
    if gap > MAX_QFORM_SFORM_MM:
        raise InputError(f"its qform and sform disagree: they place the volume up to {gap:.1f} mm apart (nibabel, "
                         "and so edgeseg, would use the sform; another viewer may use the qform)", path=path,
                         fix="make them agree (e.g. nibabel: img.set_qform(img.get_sform())) or convert the scan again")


def scan_geometry(path: str | Path, *, volume: int | None = None) -> tuple[tuple[int, int, int], np.ndarray]:
    """(3D shape, affine) from the header alone, checked as `load_scan` checks them; no voxel is read."""
    path = Path(path)
    img = open_nifti(path)
    check_header(img, path)
    shape3, _ = select_volume(img.shape, path, volume)
    affine = check_affine(img.affine, path)
    check_qform_sform(img, shape3, path)
    return shape3, affine


def load_scan(path: str | Path, *, label: bool = False, volume: int | None = None, hu_check: bool = True) -> Scan:
    """Read a 3D NIfTI; CT intensities as float32 HU, labels as their stored integers.

    `volume`: which volume of a 4D series to read (required for one, refused beyond its length).
    `hu_check`: refuse CT intensities that cannot be Hounsfield units (`check_hounsfield`).
    """
    path = Path(path)
    img = open_nifti(path)
    check_header(img, path)
    shape3, index = select_volume(img.shape, path, volume)
    affine = check_affine(img.affine, path)
    check_qform_sform(img, shape3, path)
    try:
        if index is not None:  # read one volume through the proxy: the series is never loaded whole
            data = np.asarray(img.dataobj[(slice(None),) * 3 + (index,)])
            if not label:
                data = data.astype(np.float32, copy=False)
        else:
            data = np.asarray(img.dataobj) if label else img.get_fdata(dtype=np.float32)
    except (OSError, EOFError, zlib.error, ValueError) as e:
        raise InputError(f"voxel data cannot be read ({type(e).__name__}: {e})", path=path,
                         fix="the file is corrupt or truncated: copy it again from the source") from None
    data = data.reshape(shape3)
    if label:
        if not np.issubdtype(data.dtype, np.integer):
            if not np.all(np.isfinite(data)) or not np.all(data == np.round(data)):
                raise InputError("label holds non-integer values", path=path, fix="a label must hold integer class values")
            data = data.astype(np.int32)
    elif not np.all(np.isfinite(data)):
        n_bad = int(np.size(data) - np.count_nonzero(np.isfinite(data)))
        raise InputError(f"holds {n_bad} NaN/Inf voxels", path=path, fix="repair the scan (or replace them with -1024 HU, air)")
    elif hu_check:
        check_hounsfield(data, path)
    return Scan(path=path, data=data, affine=affine, header=img.header)


def save_like(data: np.ndarray, like: Scan, path: str | Path, *, force: bool = False) -> Path:
    """Write `data` on `like`'s grid with `like`'s header geometry, bit for bit, atomically.

    The header is copied (qform, sform, codes, pixdim, units), so a viewer overlays the output on
    the input exactly; only dtype and intensity scaling change.
    """
    path = Path(path)
    if tuple(data.shape) != like.shape:
        raise ValueError(f"output shape {data.shape} differs from the input's {like.shape}")
    header = like.header.copy()
    header.set_data_dtype(data.dtype)
    header.set_data_shape(data.shape)
    img = type_for(header)(data, None, header=header)
    img.header.set_slope_inter(1.0, 0.0)
    with atomic_path(path, force=force) as tmp:
        nib.save(img, str(tmp))
    return path


def type_for(header) -> type:
    return nib.Nifti2Image if isinstance(header, nib.Nifti2Header) else nib.Nifti1Image
