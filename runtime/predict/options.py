"""What `edgeseg predict` was asked to do: one frozen set of options, checked when made."""

from __future__ import annotations

import math
from dataclasses import dataclass

from edgeseg.runtime.errors import InputError

MAX_MEMORY_GIB = 1 << 20  # 1 PiB: anything larger is a typo, not a budget
FORMATS = ("auto", "nifti", "dicom-seg", "both")


@dataclass(frozen=True)
class PredictOptions:
    overlap: float = 0.25
    sw_batch: int = 1
    threshold: float = 0.5
    lcc: bool = False  # keep only each organ's largest connected component
    save_prob: bool = False
    preview: bool = False
    force: bool = False
    volume: int | None = None  # which volume of 4D series to segment (a 4D scan without it is refused)
    max_memory_gib: float | None = None  # memory budget of the whole process; None: what is available now
    reuse_blank: bool = True  # run the graph once for all pure-air windows (exact; see Engine.probabilities)
    # read and preprocess the next scan while this one infers: "auto" does it when the engine runs on a GPU
    # (the CPU is idle during inference); on a CPU backend inference already uses every core
    prefetch: str = "auto"
    hu_check: bool = True  # refuse intensities that cannot be Hounsfield units (nifti.check_hounsfield)
    # what a case writes: NIfTI masks, a DICOM-SEG, or both; "auto": both for a DICOM series, NIfTI for a NIfTI
    format: str = "auto"

    def __post_init__(self) -> None:
        if self.volume is not None and (isinstance(self.volume, bool) or not isinstance(self.volume, int)
                                        or self.volume < 0):
            raise InputError(f"--volume {self.volume!r} must be a whole number >= 0", fix="e.g. --volume 0")
        if self.max_memory_gib is not None and not (isinstance(self.max_memory_gib, (int, float))
                                                    and math.isfinite(self.max_memory_gib)
                                                    and 0 < self.max_memory_gib <= MAX_MEMORY_GIB):
            raise InputError(f"--max-memory {self.max_memory_gib!r} must be a positive number of GiB, at most "
                             f"{MAX_MEMORY_GIB:,}", fix="e.g. --max-memory 8")
        if isinstance(self.overlap, (int, float)) and not isinstance(self.overlap, bool) and 0.75 < self.overlap < 1:
            factor = (0.5 / (1 - self.overlap)) ** 3
            raise InputError(f"--overlap {self.overlap:g} runs about {factor:.0f}x the windows of --overlap 0.5 for "
                             "no measurable gain", fix="use --overlap 0.25 (the default) to 0.5; at most 0.75")
        if self.format not in FORMATS:
            raise InputError(f"--format {self.format!r} must be one of {', '.join(FORMATS)}", fix="e.g. --format both")
        if self.prefetch not in ("auto", "on", "off"):
            raise InputError(f"--prefetch {self.prefetch!r} must be auto, on or off", fix="e.g. --prefetch auto")

    def output_format(self, dicom: bool, name=None) -> str:
        """What a case writes: "nifti", "dicom-seg" or "both" (`format` resolved for a DICOM or a NIfTI input)."""
        if self.format == "auto":
            return "both" if dicom else "nifti"
        if self.format != "nifti" and not dicom:
            raise InputError(f"--format {self.format} needs a DICOM series as input: a NIfTI scan has no DICOM instances "
                             "for a Segmentation to reference", path=name,
                             fix="pass --format nifti (or leave --format out) for NIfTI scans")
        return self.format
