"""Intensities (rendering.py): HU per tissue and phase, noise and HU offset as the domain says, contrast phase."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy import ndimage

from edgeseg.data.phantom import ORGANS, SOURCE, TARGET, PhantomCase, generate_case, label_map
from tests.data.phantom.common import WHOLE


def median_hu(c: PhantomCase, organ: str, erode: int = 0) -> float:
    m = c.labels[organ] > 0
    if erode:
        inner = ndimage.binary_erosion(m, iterations=erode)
        m = inner if inner.sum() > 20 else m
    return float(np.median(c.ct[m]))


@pytest.mark.parametrize("phase", ["native", "arterial", "portal"])
def test_hu_per_tissue_is_plausible(phase):
    c = generate_case(5, spacing=(4, 4, 4), z_range=WHOLE, phase=phase)
    assert c.meta["phase"] == phase
    liver = median_hu(c, "liver", 1)
    assert 30 < liver < 160
    assert median_hu(c, "lung_left", 1) < -500 and median_hu(c, "lung_right", 1) < -500
    assert -20 < median_hu(c, "gallbladder") < 45
    assert -20 < median_hu(c, "urinary_bladder", 1) < 45
    assert median_hu(c, "spine") > 150
    outside = c.ct[~c.body]
    assert np.median(outside) < -900
    fat = c.ct[c.body & (label_map(c) == 0) & (c.ct < -50) & (c.ct > -200)]
    assert fat.size > 1000 and -140 < np.median(fat) < -60
    aorta = median_hu(c, "aorta", 1)
    if phase == "native":
        assert 20 < aorta < 70 and liver < 90
    elif phase == "arterial":
        assert aorta > 200
        assert median_hu(c, "kidney_left") > 120  # cortex enhances
    else:
        assert 100 < aorta < 250 and liver > 70


def noise_std(c: PhantomCase) -> float:
    """Noise estimate: spread of slice-to-slice differences inside the eroded liver (noise is not
    correlated across slices, the anatomy barely changes)."""
    m = ndimage.binary_erosion(c.labels["liver"] > 0, iterations=2)
    d = np.diff(c.ct.astype(np.float32), axis=2)[m[:, :, 1:] & m[:, :, :-1]]
    return float(np.std(d) / np.sqrt(2.0))


def test_domain_knobs_change_what_they_should():
    src = generate_case(9, SOURCE, spacing=(3, 3, 3), z_range=(-40, 140), phase="portal")
    tgt = generate_case(9, TARGET, spacing=(3, 3, 3), z_range=(-40, 140), phase="portal")
    assert src.meta["domain"] == "source" and tgt.meta["domain"] == "target"
    assert tgt.meta["noise_hu"] > src.meta["noise_hu"]
    assert noise_std(tgt) > 1.5 * noise_std(src)
    # The HU offset moves everything, air included (the -1024 clip only trims the lower tail).
    for c in (src, tgt):
        away = ~ndimage.binary_dilation(c.body, iterations=3)
        away[:, : c.ct.shape[1] // 2] = False  # the table lies behind the patient
        air = c.ct[away]
        assert abs(np.median(air) - (-1000 + c.meta["hu_offset"])) < 4
        assert abs(np.std(air) / c.meta["noise_hu"] - 1.0) < 0.15  # the noise level is what meta says
    assert tgt.meta["hu_offset"] > src.meta["hu_offset"] + 5
    quiet = dataclasses.replace(SOURCE, noise_hu=(0.0, 0.0))
    clean = generate_case(9, quiet, spacing=(3, 3, 3), z_range=(-40, 140), phase="portal")
    assert noise_std(clean) < noise_std(src)


def test_contrast_phase_knob():
    kw = dict(spacing=(4, 4, 4), z_range=(-60, 140))
    art = generate_case(2, phase="arterial", **kw)
    nat = generate_case(2, phase="native", **kw)
    assert median_hu(art, "aorta", 1) > median_hu(nat, "aorta", 1) + 150
    assert all(np.array_equal(art.labels[o], nat.labels[o]) for o in ORGANS)  # same patient
