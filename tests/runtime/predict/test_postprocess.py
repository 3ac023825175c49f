"""Post-processing: the one largest-component function (its connectivity stated by each caller) and the
way from probabilities on the model grid to masks, volumes and the multi-label map."""

from __future__ import annotations

import numpy as np
import pytest

from edgeseg.runtime.errors import InputError
from edgeseg.runtime.predict.postprocess import largest_component, segment
from edgeseg.runtime.preprocess import PreprocessSpec, plan_grid


def organ_with_attachments() -> np.ndarray:
    m = np.zeros((12, 12, 12), np.uint8)
    m[1:5, 1:5, 1:5] = 1  # 64 voxels
    m[9, 9, 9] = 1  # stray island
    m[4, 4, 5] = 1  # face-attached to (4, 4, 4)
    m[5, 5, 5] = 1  # corner-attached to (4, 4, 4), edge-attached to (4, 4, 5)
    return m


@pytest.mark.parametrize("connectivity,size", [(6, 65), (18, 66), (26, 66)])
def test_largest_component_follows_the_connectivity_it_is_given(connectivity, size):
    kept = largest_component(organ_with_attachments(), connectivity=connectivity)
    assert kept.dtype == bool and kept.sum() == size and not kept[9, 9, 9] and kept[4, 4, 5]


def test_largest_component_of_empty_single_and_tied_masks():
    empty = largest_component(np.zeros((4, 4, 4), np.float32), connectivity=6)
    assert empty.dtype == bool and not empty.any()
    one = np.zeros((4, 4, 4), bool)
    one[1, 1, 1] = True
    assert largest_component(one, connectivity=26) is one  # a bool mask of one component comes back as it is
    tied = np.zeros((4, 4, 9), bool)
    tied[0, 0, 0:2] = tied[3, 3, 6:8] = True
    assert np.flatnonzero(largest_component(tied, connectivity=6)).tolist() == [0, 1]  # the first in C order


def test_largest_component_refuses_other_connectivities_and_shapes():
    with pytest.raises(InputError, match="connectivity 8 must be 6, 18 or 26"):
        largest_component(np.ones((3, 3, 3)), connectivity=8)
    with pytest.raises(InputError, match="must be 3-D"):
        largest_component(np.ones((3, 3)), connectivity=6)


def test_segment_thresholds_cleans_up_and_labels_the_most_probable_organ():
    spec = PreprocessSpec(window=(64, 64, 64), spacing=(5.0, 5.0, 5.0))
    t = plan_grid((12, 10, 8), np.diag([5.0, 5.0, 5.0, 1.0]), spec)  # the scan is on the model grid already
    probs = np.zeros((2, 12, 10, 8), np.float32)
    probs[0, 1:4, 1:4, 1:4] = 0.9  # organ a: 27 voxels
    probs[0, 8, 8, 6] = 0.9  # and an island
    probs[1, 5:9, 2:5, 2:5] = 0.7  # organ b: 36 voxels
    probs[0, 6, 3, 3] = 0.8  # inside b, where a is the more probable
    plain = segment(probs, ("a", "b"), t, 0.125, threshold=0.5, lcc=False)
    clean = segment(probs, ("a", "b"), t, 0.125, threshold=0.5, lcc=True)
    assert {o: int(m.sum()) for o, m in plain.masks.items()} == {"a": 29, "b": 36}
    assert {o: int(m.sum()) for o, m in clean.masks.items()} == {"a": 27, "b": 36}  # the island and the stray go
    assert clean.volume_ml == {"a": 3.38, "b": 4.5} and clean.masks["a"].dtype == np.uint8
    labels, counts = np.unique(clean.labels, return_counts=True)  # no clean-up in the label map
    assert labels.tolist() == [0, 1, 2] and counts[1:].tolist() == [29, 35] and clean.labels[6, 3, 3] == 1
    assert segment(probs[:1], ("a",), t, 0.125, threshold=0.5, lcc=False).labels is None  # one organ: no map
