"""Which regions of a support are stored: the organ's box with its margin, negative windows in the body."""

from __future__ import annotations

import numpy as np

from edgeseg.features.regions import BODY_THRESHOLD, negative_boxes, organ_bbox, positive_box, support_regions


def test_positive_box_is_the_organ_plus_margin_grown_to_the_window_on_even_voxels():
    label = np.zeros((100, 40, 81), np.uint8)
    label[31:50, 10:20, 70:81] = 1
    bbox = organ_bbox(label)
    assert bbox == ((31, 50), (10, 20), (70, 81))
    box = positive_box(bbox, label.shape, (2.0, 2.0, 2.0), 10.0, (64, 64, 64))
    assert box[0][1] - box[0][0] >= 64 and box[0][0] <= 26 and box[0][1] >= 55
    assert box[1] == (0, 40)  # the axis is shorter than the window: all of it
    assert box[2] == (16, 80)  # grown to the window, the odd last voxel left out
    assert all(a % 2 == 0 and b % 2 == 0 for a, b in box)
    assert organ_bbox(np.zeros((4, 4, 4))) is None


def test_negative_windows_fall_back_honestly_when_nothing_is_clear_of_the_organ():
    body = np.ones((80, 70, 70), bool)
    label = np.zeros(body.shape, np.uint8)
    label[10:70, 10:60, 5:65] = 1  # no 64-window can miss this box
    rng = np.random.default_rng(0)
    got = negative_boxes(body, label, organ_bbox(label), (64, 64, 64), 2, rng)
    assert len(got) == 2
    for box, info in got:
        assert info["tier"] == 3 and info["overlaps_organ_box"]
        sl = tuple(slice(a, b) for a, b in box)
        assert info["organ_voxels"] == int(label[sl].sum())
        assert all(b - a == 64 and a % 2 == 0 for a, b in box)
    # Drawing is seeded: the same rng seed gives the same windows.
    again = negative_boxes(body, label, organ_bbox(label), (64, 64, 64), 2, np.random.default_rng(0))
    assert [b for b, _ in again] == [b for b, _ in got]


def test_support_regions_are_the_positive_box_then_named_negative_windows_drawn_with_the_rng():
    volume = np.zeros((120, 70, 70), np.float32)
    volume[4:116, 3:67, 3:67] = 0.4  # the body
    label = np.zeros(volume.shape, np.uint8)
    label[20:40, 20:40, 20:40] = 1
    bbox = organ_bbox(label)
    regions = support_regions(volume, label, bbox, (2.0, 2.0, 2.0), (32, 32, 32), margin_mm=10.0, negatives=3,
                              min_body_fraction=0.5, rng=np.random.default_rng(5))
    assert [(r.name, r.role) for r in regions] == [("positive", "positive"), ("negative-0", "negative"),
                                                   ("negative-1", "negative"), ("negative-2", "negative")]
    assert regions[0].box == positive_box(bbox, volume.shape, (2.0, 2.0, 2.0), 10.0, (32, 32, 32))
    want = negative_boxes(volume > BODY_THRESHOLD, label, bbox, (32, 32, 32), 3, np.random.default_rng(5))
    assert [(r.box, r.info) for r in regions[1:]] == want
    assert all(r.info["tier"] == 1 and not r.info["overlaps_organ_box"] for r in regions[1:])
