"""Scanner and protocol knobs: a `Domain`, the shipped SOURCE and TARGET domains, a domain by name.

Pretraining uses SOURCE; the few-shot experiments adapt to TARGET (noisier, other contrast mix and
slice spacings, an HU offset).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

from edgeseg.data.phantom.tissues import PHASES
from edgeseg.runtime.errors import InputError


@dataclass(frozen=True)
class Domain:
    """What a scanner and protocol (and, a little, its population) look like. Ranges are sampled per case.

    noise_hu: (low, high) standard deviation of the image noise, HU.
    hu_offset: calibration offset added to every voxel, HU; hu_offset_jitter: its per-case std.
    phases: (phase, weight) pairs for the contrast phase; contrast_strength: (low, high) multiplier
        of the enhancement (phase HU - native HU).
    inplane_mm: (low, high) in-plane spacing; slice_mm: slice spacings to choose from (uniformly;
        repeat a value to weight it).
    psf_mm: in-plane blur (Gaussian sigma, mm) of the reconstruction; slice_profile: slice blur as a
        fraction of the slice spacing. The same blur shapes the noise (a softer kernel, coarser grain).
    z_top_mm / z_bottom_mm: (low, high) range of the scan's top and bottom (reference z, mm): a low
        top cuts off the lungs, a high bottom the bladder.
    margin_mm: (low, high) air around the body in-plane.
    fat_mm: (low, high) subcutaneous fat thickness; visceral_fat: (low, high) 0..1 share of fat
        between the bowel loops.
    """

    name: str
    noise_hu: tuple[float, float] = (8.0, 14.0)
    hu_offset: float = 0.0
    hu_offset_jitter: float = 3.0
    phases: tuple[tuple[str, float], ...] = (("portal", 0.7), ("arterial", 0.2), ("native", 0.1))
    contrast_strength: tuple[float, float] = (0.85, 1.15)
    inplane_mm: tuple[float, float] = (0.6, 1.0)
    slice_mm: tuple[float, ...] = (1.0, 1.5, 2.0, 2.5, 3.0, 3.0, 5.0)
    psf_mm: float = 0.5
    slice_profile: float = 0.35
    z_top_mm: tuple[float, float] = (110.0, 230.0)
    z_bottom_mm: tuple[float, float] = (-295.0, -110.0)
    margin_mm: tuple[float, float] = (2.0, 20.0)
    fat_mm: tuple[float, float] = (8.0, 32.0)
    visceral_fat: tuple[float, float] = (0.2, 0.6)

    def __post_init__(self) -> None:
        problems = []
        for key in ("noise_hu", "contrast_strength", "inplane_mm", "z_top_mm", "z_bottom_mm", "margin_mm",
                    "fat_mm", "visceral_fat"):
            v = getattr(self, key)
            if len(v) != 2 or not (float(v[0]) <= float(v[1])):
                problems.append(f"{key}={v!r} must be a (low, high) pair with low <= high")
        if self.noise_hu[0] < 0:
            problems.append(f"noise_hu={self.noise_hu!r} must be >= 0")
        if min(self.inplane_mm) <= 0 or not self.slice_mm or min(self.slice_mm) <= 0:
            problems.append("spacings must be positive")
        weights = [w for _, w in self.phases]
        if not self.phases or any(p not in PHASES for p, _ in self.phases) or min(weights) < 0 or sum(weights) <= 0:
            problems.append(f"phases={self.phases!r}: use (phase, weight) pairs with phase in {PHASES}, weights >= 0")
        if self.z_bottom_mm[1] >= self.z_top_mm[0]:
            problems.append(f"z_bottom_mm {self.z_bottom_mm} must lie below z_top_mm {self.z_top_mm}")
        if problems:
            raise InputError(f"invalid phantom domain {self.name!r}: " + "; ".join(problems),
                             fix="start from SOURCE or TARGET with dataclasses.replace(...)")

    def to_dict(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self)))


SOURCE = Domain("source")
TARGET = Domain(
    "target",
    noise_hu=(20.0, 32.0),
    hu_offset=20.0,
    hu_offset_jitter=5.0,
    phases=(("native", 0.35), ("arterial", 0.45), ("portal", 0.2)),
    contrast_strength=(0.65, 1.0),
    inplane_mm=(0.7, 0.98),
    slice_mm=(2.0, 4.0, 5.0),
    psf_mm=0.9,
    slice_profile=0.45,
    z_top_mm=(90.0, 200.0),
    z_bottom_mm=(-280.0, -100.0),
    fat_mm=(14.0, 45.0),
    visceral_fat=(0.35, 0.8),
)
DOMAINS: dict[str, Domain] = {"source": SOURCE, "target": TARGET}


def _domain(domain) -> Domain:
    if isinstance(domain, Domain):
        return domain
    if isinstance(domain, str) and domain.lower() in DOMAINS:
        return DOMAINS[domain.lower()]
    raise InputError(f"domain {domain!r} is not known", fix=f"use one of {sorted(DOMAINS)} or a Domain(...)")
