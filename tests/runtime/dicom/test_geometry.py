"""Series geometry from slice headers alone: order along the normal, the RAS affine by hand, and refusals."""

from __future__ import annotations

import numpy as np
import pytest

from edgeseg.runtime.dicom.geometry import Slice, series_geometry
from edgeseg.runtime.errors import InputError

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def stack(n=5, *, iop=AXIAL, origin=(-100.0, -50.0, 20.0), step=2.5, spacing=(0.7, 0.8), shift=(0.0, 0.0, 0.0),
          rows=4, cols=6):
    iop = np.asarray(iop, dtype=np.float64)
    normal = np.cross(iop[:3], iop[3:])
    return [Slice(source=f"f{k}", position=tuple(np.asarray(origin) + k * step * normal + k * np.asarray(shift)),
                  orientation=tuple(iop), pixel_spacing=spacing, rows=rows, columns=cols) for k in range(n)]


def test_affine_is_the_lps_affine_with_x_and_y_flipped_computed_by_hand():
    slices = stack()
    g = series_geometry(list(reversed(slices)), "s")  # given against z order: sorted along the normal
    assert g.order == (4, 3, 2, 1, 0) and g.shape == (6, 4, 5)
    # by hand: column index i steps PixelSpacing[1] = 0.8 along the row cosine (LPS x), row index j steps
    # PixelSpacing[0] = 0.7 along the column cosine (LPS y), k steps 2.5 mm along z; RAS negates x and y
    expected = np.array([[-0.8, 0, 0, 100.0], [0, -0.7, 0, 50.0], [0, 0, 2.5, 20.0], [0, 0, 0, 1]])
    np.testing.assert_allclose(g.affine, expected, atol=1e-12)
    assert g.spacing == pytest.approx((0.8, 0.7, 2.5))
    # and a voxel: (i, j, k) = (2, 3, 1) lies at LPS (-100 + 1.6, -50 + 2.1, 22.5) = RAS (98.4, 47.9, 22.5)
    np.testing.assert_allclose(g.affine @ [2, 3, 1, 1], [98.4, 47.9, 22.5, 1], atol=1e-12)


def test_an_oblique_series_keeps_its_cosines_and_sorts_along_its_own_normal():
    c, s = np.cos(np.radians(20)), np.sin(np.radians(20))
    iop = (c, s, 0.0, 0.0, 0.0, -1.0)  # an oblique coronal plane: normal = row x col = (-s, c, 0)
    slices = stack(4, iop=iop, step=3.0)
    rng = np.random.default_rng(0)
    perm = rng.permutation(4)
    g = series_geometry([slices[i] for i in perm], "s")
    assert [perm[i] for i in g.order] == [0, 1, 2, 3]
    lps = g.affine_lps
    np.testing.assert_allclose(lps[:3, 0], 0.8 * np.array([c, s, 0]), atol=1e-12)
    np.testing.assert_allclose(lps[:3, 1], 0.7 * np.array([0, 0, -1]), atol=1e-12)
    np.testing.assert_allclose(lps[:3, 2], 3.0 * np.array([-s, c, 0]), atol=1e-12)
    np.testing.assert_allclose(g.affine, np.diag([-1, -1, 1, 1]) @ lps, atol=0)


@pytest.mark.parametrize("fault, match", [
    ("tilt", "do not stack along their normal"),
    ("gap", "about 1 slice\\(s\\) missing"),
    ("duplicate", "duplicate slice position"),
    ("orientation", "mixes image orientations"),
    ("spacing", "mixes pixel spacings"),
    ("size", "mixes image sizes"),
    ("short", "too short"),
])
def test_a_series_that_is_no_regular_grid_is_refused_naming_it(fault, match):
    slices = stack(6)
    if fault == "tilt":
        slices = stack(6, shift=(0.0, 0.1, 0.0))  # 0.1 mm per 2.5 mm step: 2.3 degrees
    elif fault == "gap":
        del slices[3]
    elif fault == "duplicate":
        slices.append(Slice(**{**slices[2].__dict__, "source": "copy"}))
    elif fault == "orientation":
        slices[2] = Slice(**{**slices[2].__dict__, "orientation": (1.0, 0, 0, 0, 0, -1.0)})
    elif fault == "spacing":
        slices[2] = Slice(**{**slices[2].__dict__, "pixel_spacing": (0.7, 0.9)})
    elif fault == "size":
        slices[2] = Slice(**{**slices[2].__dict__, "rows": 5})
    elif fault == "short":
        slices = slices[:2]
    with pytest.raises(InputError, match=match) as e:
        series_geometry(slices, "my series (UID 1.2.3)")
    assert e.value.path == "my series (UID 1.2.3)" and e.value.fix and e.value.exit_code == 2


def test_rounding_in_the_headers_is_tolerated():
    slices = stack(6)
    jitter = [0.004, -0.005, 0.0, 0.003, -0.002, 0.005]  # positions written to 0.01 mm
    slices = [Slice(**{**s.__dict__, "position": (s.position[0] + j, s.position[1], s.position[2] + j)})
              for s, j in zip(slices, jitter)]
    g = series_geometry(slices, "s")
    assert g.shape == (6, 4, 6)
