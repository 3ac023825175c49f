"""What a voxel can be: the organ labels (ORGANS), the contrast phases (PHASES) and the tissue table.

Painting writes tissue indices into one map (`_T` names them); rendering turns a tissue into HU for
the scan's phase (`_TISSUE_HU`, plus `_TISSUE_TEX`'s texture), and `_TISSUE_LABEL` turns the map into
organ labels. Several tissues share a label (kidney cortex, medulla and pelvis are all the kidney).
"""

from __future__ import annotations

import numpy as np


ORGANS: tuple[str, ...] = (
    "liver", "spleen", "kidney_left", "kidney_right", "stomach", "pancreas", "gallbladder", "aorta",
    "inferior_vena_cava", "esophagus", "duodenum", "urinary_bladder", "lung_left", "lung_right", "spine", "ribs",
)
PHASES: tuple[str, ...] = ("native", "arterial", "portal")


# name, organ label (or None), native, arterial, portal, texture HU (std of the smooth texture)
_TISSUE_TABLE: list[tuple[str, str | None, float, float, float, float]] = [
    ("air", None, -1000, -1000, -1000, 0),
    ("table", None, -300, -300, -300, 40),
    ("subcut_fat", None, -105, -105, -105, 10),
    ("visceral_fat", None, -95, -95, -95, 14),
    ("muscle", None, 50, 56, 62, 7),
    ("bowel_wall", None, 40, 90, 100, 10),
    ("bowel_fluid", None, 12, 12, 15, 8),
    ("bowel_air", None, -960, -960, -960, 25),
    ("feces", None, -70, -70, -70, 140),
    ("heart_muscle", None, 45, 100, 110, 8),
    ("heart_blood", None, 40, 270, 165, 10),
    ("cartilage", None, 110, 110, 110, 20),
    ("bone", None, 260, 260, 260, 70),
    ("bone_cortex", None, 750, 750, 750, 90),
    ("disc", None, 85, 85, 90, 10),
    ("canal", None, 25, 25, 28, 6),
    ("renal_sinus_fat", None, -80, -80, -80, 15),
    ("artery", None, 42, 310, 160, 8),
    ("portal_vein", None, 40, 95, 185, 8),
    ("vein", None, 40, 80, 150, 8),
    ("lung_right", "lung_right", -860, -860, -860, 40),
    ("lung_left", "lung_left", -860, -860, -860, 40),
    ("lung_vessel_right", "lung_right", 0, 180, 130, 40),
    ("lung_vessel_left", "lung_left", 0, 180, 130, 40),
    ("liver", "liver", 60, 75, 110, 7),
    ("liver_vessel", "liver", 38, 60, 170, 8),
    ("spleen", "spleen", 48, 115, 125, 9),
    ("kidney_right_cortex", "kidney_right", 35, 200, 175, 8),
    ("kidney_right_medulla", "kidney_right", 30, 75, 150, 8),
    ("kidney_right_pelvis", "kidney_right", 10, 10, 15, 5),
    ("kidney_left_cortex", "kidney_left", 35, 200, 175, 8),
    ("kidney_left_medulla", "kidney_left", 30, 75, 150, 8),
    ("kidney_left_pelvis", "kidney_left", 10, 10, 15, 5),
    ("stomach_wall", "stomach", 40, 85, 100, 8),
    ("stomach_fluid", "stomach", 12, 12, 14, 6),
    ("stomach_food", "stomach", 35, 35, 35, 45),
    ("stomach_air", "stomach", -960, -960, -960, 25),
    ("pancreas", "pancreas", 42, 120, 90, 14),
    ("gallbladder", "gallbladder", 18, 18, 20, 4),
    ("aorta", "aorta", 42, 310, 160, 8),
    ("ivc", "inferior_vena_cava", 40, 85, 145, 8),
    ("esophagus", "esophagus", 42, 60, 70, 6),
    ("esophagus_air", "esophagus", -900, -900, -900, 30),
    ("duodenum_wall", "duodenum", 40, 85, 100, 8),
    ("duodenum_fluid", "duodenum", 12, 12, 15, 6),
    ("duodenum_air", "duodenum", -960, -960, -960, 25),
    ("bladder_wall", "urinary_bladder", 40, 60, 75, 6),
    ("urine", "urinary_bladder", 8, 8, 10, 4),
    ("vb_cancellous", "spine", 230, 230, 230, 45),
    ("vb_cortex", "spine", 560, 560, 560, 70),
    ("vb_arch", "spine", 400, 400, 400, 70),
    ("rib_marrow", "ribs", 220, 220, 220, 40),
    ("rib_cortex", "ribs", 560, 560, 560, 70),
]
TISSUES: tuple[str, ...] = tuple(t[0] for t in _TISSUE_TABLE)
_T = {name: i for i, name in enumerate(TISSUES)}
_TISSUE_LABEL = np.array([0 if t[1] is None else ORGANS.index(t[1]) + 1 for t in _TISSUE_TABLE], dtype=np.uint8)
_TISSUE_HU = np.array([t[2:5] for t in _TISSUE_TABLE], dtype=np.float64)  # (n_tissues, 3 phases)
_TISSUE_TEX = np.array([t[5] for t in _TISSUE_TABLE], dtype=np.float32)
assert len(TISSUES) < 256
