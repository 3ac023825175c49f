"""The painted anatomy (anatomy.py, canvas.py, paint_*.py, painting.py): every organ there, plausible
volumes, one label per voxel inside the body, organs where they belong."""

from __future__ import annotations

import numpy as np

from edgeseg.data.phantom import ORGANS, PhantomCase
from tests.data.phantom.common import centroid_world


def world_z(case: PhantomCase, organ: str, fn) -> float:
    idx = np.argwhere(case.labels[organ] > 0)
    k = fn(idx[:, 2])
    return float((case.affine @ np.array([0.0, 0.0, k, 1.0]))[2])


def test_every_organ_present_with_a_whole_field_of_view(cases):
    for s, c in cases.items():
        assert c.meta["organs_present"] == list(ORGANS), (s, c.meta["organs_absent"])
        assert c.meta["organs_carved_away"] == []
        for organ in ORGANS:
            assert c.labels[organ].any(), (s, organ)


def test_organ_volumes_are_plausible(cases):
    ranges = {  # mL, generous: adults vary
        "liver": (900, 2600), "spleen": (40, 500), "kidney_left": (50, 260), "kidney_right": (50, 260),
        "stomach": (120, 1000), "pancreas": (30, 150), "gallbladder": (5, 90), "urinary_bladder": (30, 600),
        "lung_left": (300, 2500), "lung_right": (400, 3000),
    }
    for s, c in cases.items():
        for organ, (lo, hi) in ranges.items():
            assert lo < c.meta["volumes_ml"][organ] < hi, (s, organ, c.meta["volumes_ml"][organ])


def test_labels_are_disjoint_and_inside_the_body(cases):
    for s, c in cases.items():
        stack = np.stack([c.labels[o] for o in ORGANS]).astype(np.int32)
        assert stack.sum(axis=0).max() == 1, s
        assert not np.any(stack.any(axis=0) & ~c.body), s
        assert all(c.labels[o].dtype == np.uint8 and c.labels[o].shape == c.ct.shape for o in ORGANS)


def test_organs_sit_where_they_belong(cases):
    # NIfTI world space is RAS+: larger x is further to the patient's right.
    for s, c in cases.items():
        liver, spleen = centroid_world(c, "liver"), centroid_world(c, "spleen")
        assert liver[0] > spleen[0] + 80, s  # liver on the patient's right
        assert centroid_world(c, "kidney_right")[0] > centroid_world(c, "kidney_left")[0] + 80, s
        spine = centroid_world(c, "spine")
        assert centroid_world(c, "stomach")[0] < spine[0], s  # stomach on the left
        assert centroid_world(c, "inferior_vena_cava")[0] > centroid_world(c, "aorta")[0], s
        assert centroid_world(c, "aorta")[1] > spine[1], s  # aorta in front of the spine
        for kid in ("kidney_left", "kidney_right"):
            assert centroid_world(c, kid)[1] < centroid_world(c, "pancreas")[1], s  # kidneys behind the pancreas
        assert world_z(c, "lung_right", np.min) > world_z(c, "urinary_bladder", np.max) + 150, s
        assert centroid_world(c, "lung_left")[2] > liver[2] and centroid_world(c, "lung_right")[2] > liver[2], s
        assert centroid_world(c, "urinary_bladder")[2] < centroid_world(c, "kidney_left")[2] - 120, s
        assert centroid_world(c, "gallbladder")[0] > spine[0], s  # under the liver, on the right
        assert centroid_world(c, "esophagus")[2] > centroid_world(c, "duodenum")[2], s
