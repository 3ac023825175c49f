"""Planning a predict run: the inputs, their stable case names, and one plan per case, made once.

`collect_inputs` expands files, folders and lists; `case_names` gives each scan a name that does not
depend on the rest of the batch; `choose_cases` decides, from the reports already there, which cases
run, which are skipped and which are redone (and why). `plan_case` then makes a case's `CasePlan`:
its output names and every refusal that needs no voxel (a link at an output name, a foreign file at
the report's name, outputs that exist without --force), and its memory estimate from the header
alone (`estimate_memory`). The plan is frozen and made once per case: the loop reuses the plan it
made to decide a read-ahead when the case's turn comes. `check_memory` holds a plan against the
memory budget at the moment the case (or its read-ahead) starts. Nothing here writes a file.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from edgeseg.runtime.atomic import refuse_link
from edgeseg.runtime.dicom.series import DicomSeries, dicom_files, looks_like_dicom, series_at
from edgeseg.runtime.errors import InputError, ResourceError
from edgeseg.runtime.host import available_memory, available_memory_bytes, current_rss_gib
from edgeseg.runtime.nifti import is_nifti_path, open_nifti, scan_geometry
from edgeseg.runtime.predict.options import PredictOptions
from edgeseg.runtime.predict.report import made_with, read_report, why_redo

GIB = 2**30


# --- inputs and names ----------------------------------------------------------------------------------
def check_out_folder(out: Path, inputs: Sequence[str | Path], scans: Sequence[Path | DicomSeries]) -> None:
    """Refuse an output folder that is an input folder (or inside one), or the folder of an input scan or DICOM
    series: a second run would segment its own masks, and a report could land on a sidecar's name."""
    o = Path(out).resolve()
    folders = [Path(i).resolve() for i in inputs if isinstance(i, (str, Path)) and Path(i).is_dir()]
    folders += [s.folder.resolve() for s in scans if isinstance(s, DicomSeries)]
    for f in folders:
        if o == f or f in o.parents:
            raise InputError(f"the output folder is {'the' if o == f else 'inside the'} input folder {f}", path=out,
                             fix="write the outputs to a folder outside the inputs (--out)")
    for p in scans:
        if isinstance(p, Path) and o == p.resolve().parent:
            raise InputError(f"the output folder is the folder of the input scan {p.name}", path=out,
                             fix="write the outputs to a folder of their own (--out)")


def case_name(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", ".nii"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


LIST_SUFFIXES = (".txt", ".lst", ".list")


def collect_inputs(inputs: Sequence[str | Path | DicomSeries], *,
                   log: Callable[[str], None] = lambda m: None) -> list[Path | DicomSeries]:
    """The scans of a run: NIfTI files and DICOM CT series (`DicomSeries`, one case each).

    An input is a NIfTI file, a folder of them (sorted), a folder (tree) of DICOM files (each CT series in it;
    localizers and other objects skipped, each with a line to `log`), one DICOM file or a DICOMDIR (its series /
    its folder's), a `DicomSeries` already found, or a text file listing any of these (relative to the list).
    """
    found: list[Path | DicomSeries] = []
    for item in inputs:
        if isinstance(item, DicomSeries):
            found.append(item)
            continue
        item = Path(item)
        if item.suffix.lower() in LIST_SUFFIXES and item.is_file():
            lines = [ln.strip() for ln in item.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
            listed = [p if p.is_absolute() else item.parent / p for p in map(Path, lines)]
            found += collect_inputs([p for p in listed if p.exists()], log=log)
            found += [p for p in listed if not p.exists()]  # refused below, by name
        else:
            found += _expand(item, log)
    for p in found:
        if isinstance(p, Path) and not p.exists():
            raise InputError("input scan not found", path=p, fix="check the path (lists are read relative to their folder)")
    case_names(found)  # refuse colliding outputs before any work
    return found


def _expand(item: Path, log: Callable[[str], None]) -> list[Path | DicomSeries]:
    if item.is_dir():
        scans = sorted(p for p in item.iterdir() if p.is_file() and is_nifti_path(p))
        if scans:
            return scans
        if not dicom_files(item):
            raise InputError("folder holds no .nii or .nii.gz file and no DICOM file", path=item,
                             fix="point at the scans themselves (NIfTI files, or a folder of DICOM series)")
        return _series(series_at(item), log)
    if item.is_file() and not is_nifti_path(item) and (item.name.upper() == "DICOMDIR" or looks_like_dicom(item)):
        return _series(series_at(item), log)
    return [item]


def _series(found, log: Callable[[str], None]) -> list[DicomSeries]:
    for line in found.skipped:
        log(line)
    return list(found.series)


# File names that dataset layouts give every scan (TotalSegmentator: sXXXX/ct.nii.gz): the folder names the case.
GENERIC_NAMES = {"ct", "image", "img", "scan", "volume"}


def case_names(paths: Sequence[Path | DicomSeries]) -> list[str]:
    """Output names per scan, stable whatever else is in the batch: the file name without .nii(.gz), or
    `<folder>_<name>` for a generic file name such as ct.nii.gz; a DICOM series: `DicomSeries.case_name`
    (its number, description and a hash of its SeriesInstanceUID; never a patient attribute)."""
    names = []
    for p in paths:
        if isinstance(p, DicomSeries):
            names.append(p.case_name)
        else:
            stem = case_name(p)
            names.append(f"{p.parent.name}_{stem}" if stem.lower() in GENERIC_NAMES else stem)
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise InputError(f"several inputs share the case name(s) {dupes}: their outputs would collide",
                         fix="rename the scans or run them into separate --out folders (the same DICOM series given "
                             "twice?)")
    return names


def outputs_for(case: str, organs: Sequence[str], opts: PredictOptions, *, dicom: bool = False) -> list[str]:
    """The file names a case writes, its report aside (`dicom`: the input is a DICOM series)."""
    fmt = opts.output_format(dicom, case)
    names = []
    if fmt != "dicom-seg":
        names += [f"{case}_{o}.nii.gz" for o in organs]
        if len(organs) > 1:
            names.append(f"{case}_labels.nii.gz")
    if fmt != "nifti":
        names.append(f"{case}_seg.dcm")
    if opts.save_prob:
        names += [f"{case}_{o}_prob.nii.gz" for o in organs]
    if opts.preview:
        names.append(f"{case}_preview.png")
    return names


# --- which cases run -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class CaseChoice:
    """One scan of a run, before its header is read: its name, and whether (and why) it is segmented."""

    path: Path | DicomSeries
    case: str
    run: bool  # False: its report holds for this engine and these options; the case is skipped
    redo_because: str | None = None  # it has a report made under something else: why it is segmented again


def choose_cases(engine, scans: Sequence[Path | DicomSeries], out: Path, opts: PredictOptions, *,
                 names: Sequence[str] | None = None) -> list[CaseChoice]:
    """Every scan's name and fate, from the reports in `out`; a file there that is not an edgeseg report
    is refused here, before any work. names: the scans' case names when the caller made them already
    (a cohort's driver names the whole run; a worker chooses for one scan of it)."""
    choices = []
    for path, case in zip(scans, case_names(scans) if names is None else names, strict=True):
        report = read_report(out / f"{case}.json")
        if opts.force or report is None or (out / f"{case}.partial").exists():
            choices.append(CaseChoice(path, case, True))
        else:
            why = why_redo(report, made_with(engine, path, opts))
            choices.append(CaseChoice(path, case, why is not None, why))
    return choices


# --- one case's plan -----------------------------------------------------------------------------------
def estimate_memory(input_shape, model_shape, n_organs: int, window, *, sw_batch: int = 1,
                    input_itemsize: int = 4, save_prob: bool = False) -> dict[str, int]:
    """Peak bytes of the arrays one case allocates, per stage, and their maximum (`peak`).

    Follows what the case runner (`run_case`) holds at each stage: the scan as float32 (and its raw
    voxels while they are converted), the model-grid image and its resampling, the sliding window's
    accumulators (one float32 map per organ, one weight map) and their concatenation into the
    probabilities, a batch of windows in and out, and the masks on the way back to the scan's grid (the
    multi-label map's int64 argmax included). The backend's own memory (weights, one batch of
    activations) is not in it: it is already resident when the check runs, and is counted there.
    """
    n_in, n_m = int(np.prod(input_shape)), int(np.prod(model_shape))
    o, f4 = int(n_organs), 4
    win = int(np.prod(window))
    scan = n_in * f4
    # a batch in and out, per-output scratch, and the Gaussian map (float64 while it is made, then float32)
    windows = sw_batch * win * f4 * (1 + o) + o * win * f4 + win * (8 + f4 + f4)
    # per organ: two bool masks (this organ's and the last one's), int32 components or the float copy,
    # float back on the scan grid and its contiguous copy; labels: int64 argmax, float32 max, bool, int64
    # where and its int64 operand, then float32, while the last organ's bool mask is still held
    post_organ = n_m * (2 + f4 + f4) + n_in * (f4 + f4 + 1)
    post_labels = n_m * (1 + 8 + f4 + 1 + 8 + 8) + n_in * (f4 + f4 + 1) if o > 1 else 0
    post_prob = n_in * (f4 + f4) if save_prob else 0
    stages = {
        "read": n_in * (f4 + int(input_itemsize) + 8),  # raw voxels, float64 while scl_slope is applied, float32
        "preprocess": scan + n_m * 2 * f4,
        "inference": scan + n_m * f4 * max(1 + 2 * o, 2 + o) + windows,
        "postprocess": scan + n_m * f4 * (1 + o) + o * n_in + max(post_organ, post_labels, post_prob),
    }
    return {**stages, "peak": max(stages.values())}


@dataclass(frozen=True)
class CasePlan:
    """Everything decided about one case before any voxel is read: the input, where its outputs go,
    whether they may replace files there, and the memory it needs (from the header)."""

    path: Path | DicomSeries  # the input scan: a NIfTI file, or a DICOM series (found, headers checked)
    case: str  # its stable name: outputs are `<case>_<organ>.nii.gz`, `<case>.json`, ...
    out: Path  # the output folder
    outputs: tuple[str, ...]  # the file names it writes, its report aside (`outputs_for`)
    force: bool  # existing outputs are replaced: --force, a redo, or a marker of an earlier edgeseg run
    resumed: bool  # an earlier edgeseg run began it (its marker is there): what that run left is ours to remove
    input_shape: tuple[int, ...]  # the scan's (or its chosen volume's) shape
    model_shape: tuple[int, int, int]  # the model grid it is resampled to
    memory: dict[str, int]  # `estimate_memory`: bytes per stage and "peak"
    redo_because: str | None = None  # why its earlier report no longer holds (None: not a redo)

    @property
    def input_name(self) -> str:
        """How messages name the input: the NIfTI file, or the DICOM series (folder, number, UID)."""
        return self.path.label if isinstance(self.path, DicomSeries) else str(self.path)

    @property
    def report_path(self) -> Path:
        return self.out / f"{self.case}.json"

    @property
    def marker(self) -> Path:
        """`<case>.partial`: written before the first output, removed after the report."""
        return self.out / f"{self.case}.partial"

    def output_paths(self) -> list[Path]:
        return [self.out / n for n in self.outputs]


def plan_case(engine, path: Path | DicomSeries, case: str, out: Path, opts: PredictOptions, *,
              redo_because: str | None = None) -> CasePlan:
    """The case's plan, or the refusal that needs no voxel: a link at any of its names, a file at its report's
    name that edgeseg did not write (refused even with --force), outputs that exist (without --force), a
    header that cannot be read or a 4D series without --volume. Reads the header only; writes nothing."""
    from edgeseg.runtime.preprocess import plan_grid

    out = Path(out)
    dicom = isinstance(path, DicomSeries)
    if not dicom:
        opts.output_format(False, path)  # --format dicom-seg for a NIfTI: refused, naming the scan
    names = tuple(outputs_for(case, engine.organs, opts, dicom=dicom))
    if dicom and opts.output_format(True) != "nifti":
        from edgeseg.runtime.dicom.seg import check_organs_coded

        check_organs_coded(engine.organs, path.label)
    report_path, marker = out / f"{case}.json", out / f"{case}.partial"
    for p in (marker, report_path, *(out / n for n in names)):
        refuse_link(p)  # before anything is read or written: never through a link someone planted
    read_report(report_path)  # a file of that name that is not ours: refused, even with --force
    resumed = marker.exists()
    force = opts.force or redo_because is not None or resumed  # a marker: an edgeseg run began it, its files are ours
    if not force:
        clash = [n for n in names if (out / n).exists()]
        if clash:
            raise InputError(f"outputs already exist: {', '.join(clash)}", path=out, fix="pass --force to overwrite them")
    if isinstance(path, DicomSeries):  # the headers were read and checked when the series was found
        if opts.volume not in (None, 0):
            raise InputError(f"is one 3D series; --volume {opts.volume} does not exist", path=path.label,
                             fix="leave --volume out (it is only for 4D NIfTI series)")
        shape, affine, itemsize = path.shape, path.affine, path.itemsize
    else:
        shape, affine = scan_geometry(path, volume=opts.volume)
        itemsize = int(open_nifti(path).get_data_dtype().itemsize)
    t = plan_grid(shape, affine, engine.preprocess)
    memory = estimate_memory(shape, t.model_shape, len(engine.organs), engine.preprocess.window,
                             sw_batch=opts.sw_batch, input_itemsize=itemsize, save_prob=opts.save_prob)
    return CasePlan(path if isinstance(path, DicomSeries) else Path(path), case, out, names, force, resumed, tuple(shape), tuple(t.model_shape), memory,
                    redo_because)


# --- memory ----------------------------------------------------------------------------------------------
def check_memory(plan: CasePlan, engine, opts: PredictOptions) -> dict:
    """Refuse a case that would not fit the memory budget now, before any voxel is read; return the numbers.

    Budget: `opts.max_memory_gib` for the whole process, or (when unset) the memory available now on
    top of what the process already holds. The process's resident memory now (engine loaded) plus the
    case's estimated peak must fit.
    """
    shape, model_shape, peak = plan.input_shape, plan.model_shape, plan.memory["peak"]
    resident = int(current_rss_gib() * GIB)
    need = resident + peak
    if opts.max_memory_gib is not None:
        budget, source = int(opts.max_memory_gib * GIB), f"--max-memory {opts.max_memory_gib:g}"
    else:
        available, limit = available_memory()
        budget = None if available is None else resident + available
        source = (f"the {(available or 0) / GIB:.1f} GiB this process can still take now ({limit}; no --max-memory "
                  "given)")
    info = {"input_shape": list(shape), "model_shape": list(model_shape), "estimated_peak_gib": round(peak / GIB, 3),
            "resident_gib": round(resident / GIB, 3), "budget_gib": None if budget is None else round(budget / GIB, 3)}
    if budget is not None and need > budget:
        need_gib = math.ceil(need / GIB * 10) / 10
        raise ResourceError(
            f"needs about {need_gib:.1f} GiB of memory: {peak / GIB:.2f} GiB for this scan (shape "
            f"{'x'.join(map(str, shape))}, model grid {'x'.join(map(str, model_shape))} at "
            f"{'x'.join(f'{v:g}' for v in engine.preprocess.spacing)} mm, {len(engine.organs)} organ(s)) on top of the "
            f"{resident / GIB:.2f} GiB this run holds already; over the budget of {source}; nothing was written",
            path=plan.input_name,
            fix=f"run it with --max-memory {need_gib:.1f} (or more) on a machine with that much free memory, or crop "
                "the scan to the region of interest first (a large field of view or an unusual spacing makes the "
                "model grid large)")
    return info


def fits_beside(current: CasePlan, following: CasePlan, opts: PredictOptions) -> bool:
    """Whether the following case, read and preprocessed, fits beside this one's peak in the memory budget."""
    peak = current.memory["peak"] + following.memory["preprocess"]
    resident = int(current_rss_gib() * GIB)
    if opts.max_memory_gib is not None:
        return resident + peak <= opts.max_memory_gib * GIB
    available = available_memory_bytes()
    return available is None or peak <= available
