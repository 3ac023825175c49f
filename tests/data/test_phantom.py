"""The phantom CT generator: determinism, anatomy, intensities, domain knobs, files on disk."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from edgeseg.runtime.errors import InputError
from scipy import ndimage

from edgeseg.data.phantom import (
    ORGANS,
    SOURCE,
    TARGET,
    Domain,
    PhantomCase,
    case_seed,
    generate_case,
    label_map,
    write_dataset,
)

COARSE = (5.0, 5.0, 5.0)
WHOLE = (-280.0, 230.0)  # reference z range holding every organ
SEEDS = (0, 1, 2, 3, 4, 5)


@pytest.fixture(scope="module")
def cases() -> dict[int, PhantomCase]:
    return {s: generate_case(s, spacing=COARSE, z_range=WHOLE) for s in SEEDS}


def centroid_world(case: PhantomCase, organ: str) -> np.ndarray:
    idx = np.argwhere(case.labels[organ] > 0)
    assert idx.size, f"{organ} is empty"
    return (case.affine @ np.append(idx.mean(axis=0), 1.0))[:3]


def world_z(case: PhantomCase, organ: str, fn) -> float:
    idx = np.argwhere(case.labels[organ] > 0)
    k = fn(idx[:, 2])
    return float((case.affine @ np.array([0.0, 0.0, k, 1.0]))[2])


# ---- determinism ------------------------------------------------------------------------------------


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


# ---- anatomy ----------------------------------------------------------------------------------------


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


def test_label_map_matches_the_masks(cases):
    c = cases[2]
    lm = label_map(c)
    assert lm.shape == c.ct.shape and lm.max() == len(ORGANS)
    for i, organ in enumerate(ORGANS):
        assert np.array_equal(lm == i + 1, c.labels[organ] > 0)


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


def test_field_of_view_cuts_organs_and_says_so():
    c = generate_case(3, spacing=COARSE, z_range=(-120.0, 40.0))
    for organ in ("lung_left", "lung_right", "urinary_bladder", "esophagus"):
        assert organ in c.meta["organs_absent"] and not c.labels[organ].any(), organ
    for organ in ("kidney_left", "kidney_right", "aorta", "spine"):
        assert organ in c.meta["organs_present"] and c.labels[organ].any(), organ
    assert set(c.meta["organs_present"]) | set(c.meta["organs_absent"]) == set(ORGANS)
    assert c.meta["organs_carved_away"] == []


# ---- intensities ------------------------------------------------------------------------------------


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


def test_bad_options_are_refused_with_a_fix():
    with pytest.raises(InputError, match="max_voxels"):
        generate_case(0, spacing=0.4)
    for kwargs in ({"phase": "delayed"}, {"orientation": "RAI"}, {"spacing": (1, 2)}, {"z_range": (10, -10)}):
        with pytest.raises(InputError) as e:
            generate_case(0, **kwargs)
        assert e.value.fix
    with pytest.raises(InputError):
        generate_case(-1)
    with pytest.raises(InputError):
        generate_case(0, "nowhere")
    with pytest.raises(InputError):
        Domain("bad", noise_hu=(10.0, 5.0))
    with pytest.raises(InputError):
        Domain("bad", phases=(("venous", 1.0),))
    assert generate_case(0, "target", spacing=COARSE).meta["domain"] == "target"


# ---- files ------------------------------------------------------------------------------------------


def load(path: Path) -> nib.Nifti1Image:
    return nib.load(str(path))


def test_written_dataset_layout_and_contents(tmp_path):
    calls = []
    out = tmp_path / "phantoms"
    dirs = write_dataset(out, 2, seed=4, spacing=6, progress=lambda i, n: calls.append((i, n)))
    assert calls == [(1, 2), (2, 2)]
    assert [d.name for d in dirs] == ["s0000", "s0001"]
    summary = json.loads((out / "phantoms.json").read_text())
    assert summary["n"] == 2 and summary["seed"] == 4 and summary["organs"] == list(ORGANS)
    assert [c["case_id"] for c in summary["cases"]] == ["s0000", "s0001"]
    for i, d in enumerate(dirs):
        ct = load(d / "ct.nii.gz")
        assert ct.get_data_dtype() == np.int16
        meta = json.loads((d / "meta.json").read_text())
        assert meta["case_id"] == d.name and meta["index"] == i and meta["seed"] == case_seed(4, i)
        assert list(ct.shape) == meta["shape"] and np.allclose(ct.affine, meta["affine"])
        again = generate_case(case_seed(4, i), spacing=6)
        assert np.array_equal(np.asarray(ct.dataobj), again.ct)
        total = np.zeros(ct.shape, np.int32)
        for organ in ORGANS:
            seg = load(d / "segmentations" / f"{organ}.nii.gz")
            assert seg.get_data_dtype() == np.uint8
            assert seg.shape == ct.shape and np.array_equal(seg.affine, ct.affine)
            data = np.asarray(seg.dataobj)
            assert set(np.unique(data)) <= {0, 1}
            assert np.array_equal(data, again.labels[organ])
            assert (organ in meta["organs_present"]) == bool(data.any())
            total += data
        assert total.max() <= 1  # no voxel carries two labels
        assert not list(d.rglob(".*tmp*"))  # no leftovers of the atomic writes


def test_existing_output_is_refused_without_force(tmp_path):
    out = tmp_path / "ds"
    write_dataset(out, 1, seed=0, spacing=8)
    before = (out / "s0000" / "ct.nii.gz").read_bytes()
    with pytest.raises(InputError) as e:
        write_dataset(out, 1, seed=1, spacing=8)
    assert "--force" in e.value.fix
    assert (out / "s0000" / "ct.nii.gz").read_bytes() == before
    write_dataset(out, 1, seed=1, spacing=8, force=True)
    assert (out / "s0000" / "ct.nii.gz").read_bytes() != before
    assert json.loads((out / "phantoms.json").read_text())["seed"] == 1


def test_lps_output_is_the_same_anatomy(tmp_path):
    ras = write_dataset(tmp_path / "ras", 1, seed=3, spacing=6)[0]
    lps = write_dataset(tmp_path / "lps", 1, seed=3, spacing=6, orientation="LPS")[0]
    a, b = load(ras / "ct.nii.gz"), load(lps / "ct.nii.gz")
    assert nib.aff2axcodes(a.affine) == ("R", "A", "S")
    assert nib.aff2axcodes(b.affine) == ("L", "P", "S")
    assert not np.array_equal(np.asarray(a.dataobj), np.asarray(b.dataobj))
    ca, cb = nib.as_closest_canonical(a), nib.as_closest_canonical(b)
    assert np.allclose(ca.affine, cb.affine)
    assert np.array_equal(np.asarray(ca.dataobj), np.asarray(cb.dataobj))
    for organ in ("liver", "spleen"):
        sa, sb = load(ras / "segmentations" / f"{organ}.nii.gz"), load(lps / "segmentations" / f"{organ}.nii.gz")

        def centre(img):
            idx = np.argwhere(np.asarray(img.dataobj) > 0)
            return (img.affine @ np.append(idx.mean(0), 1.0))[:3]

        assert np.allclose(centre(sa), centre(sb), atol=1e-6)
    # Liver on the patient's right in world space, whatever the voxel order.
    liver = load(lps / "segmentations" / "liver.nii.gz")
    spleen = load(lps / "segmentations" / "spleen.nii.gz")
    xl = (liver.affine @ np.append(np.argwhere(np.asarray(liver.dataobj) > 0).mean(0), 1))[0]
    xs = (spleen.affine @ np.append(np.argwhere(np.asarray(spleen.dataobj) > 0).mean(0), 1))[0]
    assert xl > xs
