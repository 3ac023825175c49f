"""Making a case (cases.py): determinism, case seeds, the same patient at another spacing, the label map,
refused options."""

from __future__ import annotations

import numpy as np
import pytest
from edgeseg.runtime.errors import InputError

from edgeseg.data.phantom import ORGANS, case_seed, generate_case, label_map
from tests.data.phantom.common import WHOLE, centroid_world


def test_same_seed_is_bit_identical():
    a = generate_case(7, spacing=(4, 4, 4))
    b = generate_case(7, spacing=(4, 4, 4))
    assert a.ct.dtype == np.int16 and np.array_equal(a.ct, b.ct)
    assert all(np.array_equal(a.labels[o], b.labels[o]) for o in ORGANS)
    assert np.array_equal(a.affine, b.affine)
    assert a.meta == b.meta


def test_different_seeds_differ(cases):
    a, b = cases[0], cases[1]
    assert a.ct.shape != b.ct.shape or not np.array_equal(a.ct, b.ct)
    assert a.meta["volumes_ml"] != b.meta["volumes_ml"]


def test_case_seeds_are_distinct_and_stable():
    seeds = [case_seed(0, i) for i in range(50)] + [case_seed(1, i) for i in range(50)]
    assert len(set(seeds)) == 100
    assert case_seed(0, 3) == case_seed(0, 3)


def test_same_patient_at_another_spacing():
    # The anatomy lives in mm: a finer grid samples the same organs (volumes agree to a few percent).
    a = generate_case(11, spacing=(6, 6, 6), z_range=WHOLE)
    b = generate_case(11, spacing=(3, 3, 3), z_range=WHOLE)
    for organ in ("liver", "spleen", "kidney_left", "lung_right"):
        va, vb = a.meta["volumes_ml"][organ], b.meta["volumes_ml"][organ]
        assert abs(va - vb) / vb < 0.12, (organ, va, vb)
    assert np.linalg.norm(centroid_world(a, "liver") - centroid_world(b, "liver")) < 4.0


def test_label_map_matches_the_masks(cases):
    c = cases[2]
    lm = label_map(c)
    assert lm.shape == c.ct.shape and lm.max() == len(ORGANS)
    for i, organ in enumerate(ORGANS):
        assert np.array_equal(lm == i + 1, c.labels[organ] > 0)


def test_bad_options_are_refused_with_a_fix():
    with pytest.raises(InputError, match="max_voxels"):
        generate_case(0, spacing=0.4)
    for kwargs in ({"phase": "delayed"}, {"orientation": "RAI"}, {"spacing": (1, 2)}, {"z_range": (10, -10)}):
        with pytest.raises(InputError) as e:
            generate_case(0, **kwargs)
        assert e.value.fix
    with pytest.raises(InputError):
        generate_case(-1)
