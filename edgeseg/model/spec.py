"""The declared model spec: what a SwinUNETR is and how its input is prepared.

Torch-free on purpose: manifests, the CLI and the runtime read specs without importing torch.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from edgeseg.runtime.errors import InputError
from edgeseg.runtime.preprocess import PreprocessSpec

# The 29 structures of the FSEFT foundation model's head (the code release's UNIVERSAL_TEMPLATE,
# in head order), spelled as TotalSegmentator spells them where it has them.
UNIVERSAL_CLASSES: tuple[str, ...] = (
    "spleen", "kidney_right", "kidney_left", "gallbladder", "esophagus", "liver", "stomach", "aorta",
    "inferior_vena_cava", "portal_vein_and_splenic_vein", "pancreas", "adrenal_gland_right",
    "adrenal_gland_left", "duodenum", "urinary_bladder", "prostate_or_uterus", "liver_tumor",
    "kidney_tumor", "kidney_cyst", "celiac_trunk", "lung_right", "lung_left", "bone", "brain",
    "lung_tumor", "pancreas_tumor", "hepatic_vessel", "hepatic_vessel_tumor", "colon_tumor",
)

CUTS = ("decoder1", "pre-decoder1")


@dataclass(frozen=True)
class ModelSpec:
    """A SwinUNETR as MONAI builds it, plus the preprocessing its weights expect."""

    feature_size: int = 48
    depths: tuple[int, ...] = (2, 2, 2, 2)
    num_heads: tuple[int, ...] = (3, 6, 12, 24)
    in_channels: int = 1
    out_channels: int = 29
    swin_window: int = 7  # attention window of the Swin stages, not the input window
    downsample: str = "merging"  # MONAI's default patch merging: the one the released weights use
    use_v2: bool = False
    class_names: tuple[str, ...] = UNIVERSAL_CLASSES
    preprocess: PreprocessSpec = field(default_factory=PreprocessSpec)

    def __post_init__(self) -> None:
        problems = []
        if self.feature_size % 12:
            problems.append(f"feature_size={self.feature_size} must be a multiple of 12 (SwinUNETR)")
        if len(self.depths) != 4 or len(self.num_heads) != 4:
            problems.append(f"depths {self.depths} and num_heads {self.num_heads} need 4 stages each")
        if self.class_names and len(self.class_names) != self.out_channels:
            problems.append(f"{len(self.class_names)} class names for out_channels={self.out_channels}")
        if self.downsample not in ("merging", "mergingv2"):
            problems.append(f"downsample={self.downsample!r} is not one of 'merging', 'mergingv2'")
        if problems:
            raise InputError("invalid model spec: " + "; ".join(problems), fix="correct the spec (see `edgeseg info`)")

    @property
    def window(self) -> tuple[int, int, int]:
        return self.preprocess.window

    def class_index(self, organ: str) -> int | None:
        """Head channel of `organ`, or None when this model's head does not know it."""
        return self.class_names.index(organ) if organ in self.class_names else None

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["depths"], d["num_heads"], d["class_names"] = list(self.depths), list(self.num_heads), list(self.class_names)
        d["preprocess"] = self.preprocess.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ModelSpec":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise InputError(f"unknown model spec keys {sorted(unknown)}", fix=f"use only {sorted(known)}")
        d = dict(d)
        for key in ("depths", "num_heads", "class_names"):
            if key in d:
                d[key] = tuple(d[key])
        if "preprocess" in d and isinstance(d["preprocess"], dict):
            d["preprocess"] = PreprocessSpec.from_dict(d["preprocess"])
        if "out_channels" in d and "class_names" not in d:
            d["class_names"] = tuple(f"class_{i}" for i in range(d["out_channels"]))
        return cls(**d)

    @classmethod
    def from_json(cls, path: str | Path) -> "ModelSpec":
        path = Path(path)
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except FileNotFoundError:
            raise InputError("spec file not found", path=path, fix="check the path") from None
        except json.JSONDecodeError as e:
            raise InputError(f"not valid JSON ({e})", path=path, fix="fix the JSON syntax") from None
        except InputError as e:
            raise InputError(e.problem, path=path, fix=e.fix) from None


TINY_TEST_SPEC = dict(feature_size=12, depths=(2, 1, 1, 1), num_heads=(3, 6, 12, 24))
