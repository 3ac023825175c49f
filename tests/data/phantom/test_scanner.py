"""The scan's grid and field of view (scanner.py): sampled from the domain, cutting organs and saying so."""

from __future__ import annotations

from edgeseg.data.phantom import ORGANS, SOURCE, generate_case
from tests.data.phantom.common import COARSE


def test_field_of_view_cuts_organs_and_says_so():
    c = generate_case(3, spacing=COARSE, z_range=(-120.0, 40.0))
    for organ in ("lung_left", "lung_right", "urinary_bladder", "esophagus"):
        assert organ in c.meta["organs_absent"] and not c.labels[organ].any(), organ
    for organ in ("kidney_left", "kidney_right", "aorta", "spine"):
        assert organ in c.meta["organs_present"] and c.labels[organ].any(), organ
    assert set(c.meta["organs_present"]) | set(c.meta["organs_absent"]) == set(ORGANS)
    assert c.meta["organs_carved_away"] == []


def test_sampled_spacing_and_field_of_view_follow_the_domain():
    for seed in range(3):
        c = generate_case(seed, z_range=(0.0, 6.0))  # a thin slab keeps the default in-plane spacing cheap
        sx, sy, sz = c.meta["spacing"]
        assert sx == sy and SOURCE.inplane_mm[0] <= sx <= SOURCE.inplane_mm[1]
        assert sz in SOURCE.slice_mm
        assert not c.meta["spacing_coarsened"]
    tops = {round(generate_case(s, spacing=(8, 8, 8)).meta["z_range_mm"][1], 3) for s in range(4)}
    assert len(tops) == 4  # the field of view varies per case
    small = generate_case(0, max_voxels=200_000)
    assert small.ct.size <= 200_000 and small.meta["spacing_coarsened"]
