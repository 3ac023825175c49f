"""The torch-free sliding window: plan, padding, Gaussian blending, half-resolution outputs, regions.

Stand-ins with known answers replace the model: 2 * x (no spatial context) must come back as
2 * volume everywhere; 2x average pooling must come back as the pooled volume.
"""

from __future__ import annotations

import itertools
import math
import tracemalloc

import numpy as np
import pytest

from edgeseg.runtime.errors import EdgesegError, InputError
from edgeseg.runtime.sliding_window import (
    WindowAggregator,
    box_at_scale,
    gaussian_importance,
    pad_widths,
    plan_windows,
    sliding_window,
    sliding_window_region,
    window_starts,
)

W16 = (16, 16, 16)


def count_windows(shape, window, overlap=0.25, *, align=1) -> int:
    """How many windows the plan runs: the product of the windows per axis."""
    return math.prod(len(window_starts(n, w, overlap, align=align)) for n, w in zip(shape, window))


def rand(shape, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).random(shape, dtype=np.float32)


def double(x):
    return 2 * x


def pool2(x: np.ndarray) -> np.ndarray:
    """2x average pooling of (N, C, D, H, W) with even D, H, W."""
    n, c, d, h, w = x.shape
    return x.reshape(n, c, d // 2, 2, h // 2, 2, w // 2, 2).mean(axis=(3, 5, 7))


def double_and_pool(x):
    return 2 * x, pool2(x)


def pooled_reference(volume: np.ndarray, pad_value: float = 0.0) -> np.ndarray:
    """The documented half-resolution grid: cell j = voxels [2j, 2j + 2), an odd axis padded after."""
    pads = [(0, 0)] + [(0, n % 2) for n in volume.shape[1:]]
    return pool2(np.pad(volume, pads, constant_values=pad_value)[None])[0]


class Recorder:
    """A predict that records the batches it saw and delegates to `fn`."""

    def __init__(self, fn=double):
        self.fn, self.sizes = fn, []

    def __call__(self, x):
        assert x.dtype == np.float32 and x.flags.c_contiguous
        self.sizes.append(x.shape[0])
        return self.fn(x)


# --- the plan -------------------------------------------------------------------------------------
def test_window_starts_examples():
    assert window_starts(37, 16, 0.25) == [0, 12, 21]  # stride int(16 * 0.75) = 12, last at 37 - 16
    assert window_starts(37, 16, 0.5) == [0, 8, 16, 21]
    assert window_starts(32, 16, 0.0) == [0, 16]
    assert window_starts(16, 16, 0.5) == [0]
    assert window_starts(9, 16, 0.25) == [0]  # shorter than the window: padded to it
    assert window_starts(20, 8, 0.9) == list(range(13))  # stride max(1, int(0.8)) = 1
    # aligned to 2: even stride, the axis padded to an even size, even starts
    assert window_starts(37, 16, 0.25, align=2) == [0, 12, 22]
    assert window_starts(37, 10, 0.3, align=2) == [0, 6, 12, 18, 24, 28]  # stride int(7) -> 6


@pytest.mark.parametrize("align", [1, 2])
@pytest.mark.parametrize("size", [1, 7, 8, 15, 16, 17, 37, 64, 101])
@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5, 0.75])
def test_window_starts_cover_every_voxel(size, overlap, align):
    window = 16
    starts = window_starts(size, window, overlap, align=align)
    (lo, hi), = {p for p in pad_widths((size, size, size), (window,) * 3, align=align)}
    padded = size + lo + hi
    assert padded >= window and padded % align == 0 and lo % align == 0
    assert starts[0] == 0 and starts[-1] == padded - window and starts == sorted(set(starts))
    assert all(s % align == 0 for s in starts)
    covered = np.zeros(padded, bool)
    for s in starts:
        covered[s:s + window] = True
    assert covered.all()
    stride = max(align, max(1, int(window * (1 - overlap))) // align * align)
    assert all(b - a <= stride for a, b in itertools.pairwise(starts))


def test_pad_widths_split_like_monai():
    # short axes: floor(diff / 2) before, the rest after; long axes: nothing
    assert pad_widths((11, 16, 37), W16) == ((2, 3), (0, 0), (0, 0))
    assert pad_widths((9, 16, 37), W16, align=2) == ((2, 5), (0, 0), (0, 1))  # 7 // 2 = 3 -> 2: even before


def test_plan_windows_order_and_count():
    plan = plan_windows((37, 41, 29), (16, 12, 8), 0.5)
    per_axis = [window_starts(n, w, 0.5) for n, w in zip((37, 41, 29), (16, 12, 8))]
    assert len(plan) == count_windows((37, 41, 29), (16, 12, 8), 0.5) == math.prod(map(len, per_axis))
    assert plan == sorted(plan)  # D outermost, W innermost
    assert plan[0] == (0, 0, 0) and plan[-1] == (21, 29, 21)


# --- known answers --------------------------------------------------------------------------------
SHAPES = [
    ((1, 11, 13, 9), W16),  # smaller than the window on every axis
    ((1, 17, 20, 9), W16),  # mixed
    ((1, 16, 16, 16), W16),  # equal
    ((1, 37, 41, 29), W16),  # larger, odd
    ((2, 23, 18, 30), (8, 12, 16)),  # two channels, anisotropic window
]


@pytest.mark.parametrize("batch_size", [1, 3])
@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5])
@pytest.mark.parametrize("shape,window", SHAPES)
def test_doubling_comes_back_exactly(shape, window, overlap, batch_size):
    volume = rand(shape)
    predict = Recorder()
    stats = {}
    out = sliding_window(volume, window, predict, overlap=overlap, batch_size=batch_size, stats=stats)
    assert isinstance(out, tuple) and len(out) == 1
    assert out[0].shape == volume.shape and out[0].dtype == np.float32
    np.testing.assert_allclose(out[0], 2 * volume, atol=1e-5, rtol=0)
    n = count_windows(shape[1:], window, overlap)
    assert stats["windows"] == stats["run"] == n
    assert predict.sizes == [batch_size] * (n // batch_size) + ([n % batch_size] if n % batch_size else [])
    assert stats["batches"] == len(predict.sizes) == math.ceil(n / batch_size)


@pytest.mark.parametrize("batch_size", [1, 4])
@pytest.mark.parametrize("overlap", [0.25, 0.5])
@pytest.mark.parametrize("shape", [(1, 11, 13, 9), (1, 17, 20, 9), (1, 16, 16, 16), (1, 37, 41, 29), (2, 32, 34, 40)])
def test_half_resolution_output(shape, overlap, batch_size):
    volume = rand(shape, seed=1)
    stats = {}
    full, half = sliding_window(volume, W16, double_and_pool, overlap=overlap, batch_size=batch_size, stats=stats)
    # ceil: an odd axis's last cell holds the last voxel and one voxel of padding
    assert half.shape == (shape[0], *(math.ceil(n / 2) for n in shape[1:]))
    np.testing.assert_allclose(full, 2 * volume, atol=1e-5, rtol=0)
    ref = pooled_reference(volume)
    np.testing.assert_allclose(half, ref, atol=1e-6, rtol=0)  # everywhere, edge cells included
    assert stats["scales"] == [1, 2]
    assert stats["run"] == count_windows(shape[1:], W16, overlap, align=stats["align"])
    # align=2 up front: the same answer, nothing run twice
    stats2 = {}
    full2, half2 = sliding_window(volume, W16, double_and_pool, overlap=overlap, batch_size=batch_size,
                                  align=2, stats=stats2)
    np.testing.assert_allclose(half2, ref, atol=1e-6, rtol=0)
    np.testing.assert_allclose(full2, 2 * volume, atol=1e-5, rtol=0)
    assert stats2["discarded_windows"] == 0 and stats2["batches"] == math.ceil(stats2["run"] / batch_size)


def test_half_resolution_realigns_the_plan_once():
    # 37 = odd: the MONAI plan's last start (21) is odd, so the plan is redone aligned to 2;
    # with batch_size 1 the first window (0, 0, 0) is in both plans and is blended, not rerun
    volume = rand((1, 37, 41, 29))
    predict = Recorder(double_and_pool)
    stats = {}
    sliding_window(volume, W16, predict, overlap=0.25, batch_size=1, stats=stats)
    assert stats["align"] == 2 and stats["discarded_windows"] == 0
    assert len(predict.sizes) == stats["run"] == count_windows((37, 41, 29), W16, 0.25, align=2)
    # a window padded differently under the two plans is discarded, and the answer is still right
    small = rand((1, 9, 20, 20))
    stats = {}
    _, half = sliding_window(small, W16, double_and_pool, overlap=0.25, stats=stats)
    assert stats["discarded_windows"] == 1 and stats["batches"] == stats["run"] + 1
    np.testing.assert_allclose(half, pooled_reference(small), atol=1e-6, rtol=0)


def test_pad_value_reaches_the_windows_and_not_the_outputs():
    volume = np.full((1, 9, 9, 9), 0.5, np.float32)
    seen = []
    full, half = sliding_window(volume, W16, lambda x: (seen.append(x.copy()) or 2 * x, pool2(x)), pad_value=-1.0)
    assert seen[0].min() == -1.0 and seen[0].max() == 0.5  # padded with pad_value
    np.testing.assert_array_equal(full, 1.0)
    np.testing.assert_allclose(half, pooled_reference(volume, -1.0), atol=1e-7)


# --- coverage, progress ----------------------------------------------------------------------------
@pytest.mark.parametrize("shape,window", SHAPES)
def test_every_voxel_is_covered(shape, window):
    volume = rand(shape)
    ones, = sliding_window(volume, window, lambda x: np.ones((x.shape[0], 3, *x.shape[2:]), np.float32),
                           overlap=0.25, batch_size=2)
    assert ones.shape == (3, *shape[1:])
    assert (ones == 1.0).all()  # the weights accumulate exactly like the outputs: 1 exactly


def context_dependent(x):
    """Depends on the whole window (a shift-invariant model's stand-in): its value on a blank window is not 0."""
    return x.cumsum(axis=2) / 10 + x.mean(axis=(2, 3, 4), keepdims=True) + 0.25, pool2(x) + 0.5


def body_in_air(shape=(1, 70, 60, 52)) -> np.ndarray:
    volume = np.zeros(shape, np.float32)  # air at the HU window's floor
    volume[:, 20:45, 15:40, 10:30] = rand((1, 25, 25, 20), seed=5) + 0.1  # a body, never at the floor
    return volume


@pytest.mark.parametrize("batch_size", [1, 3])
def test_blank_windows_reuse_one_run_and_change_nothing(batch_size):
    volume = body_in_air()
    ref_stats, stats = {}, {}
    ref = sliding_window(volume, W16, context_dependent, overlap=0.25, batch_size=batch_size, stats=ref_stats)
    predict = Recorder(context_dependent)
    got = sliding_window(volume, W16, predict, overlap=0.25, batch_size=batch_size, reuse_blank=True, stats=stats)
    for r, g in zip(ref, got):  # the same blend as running every window
        np.testing.assert_allclose(g, r, atol=1e-6, rtol=0)
    assert stats["blank"] > 0 and stats["blank_runs"] == 1
    assert stats["run"] + stats["blank"] == stats["windows"] == ref_stats["run"]
    assert sum(predict.sizes) == stats["run"] + 1  # each non-blank window once, plus the one blank window


def test_blank_means_equal_to_the_pad_value_and_padding_counts_as_blank():
    volume = np.full((1, 40, 40, 10), 0.3, np.float32)  # W shorter than the window: padded with pad_value
    stats = {}
    sliding_window(volume, W16, double, reuse_blank=True, pad_value=0.3, stats=stats)
    assert stats["blank"] == stats["windows"] and stats["run"] == 0  # everything, padding included, is 0.3
    volume[0, 5, 5, 5] = 0.3001  # one voxel off the floor makes its windows real
    stats = {}
    out, = sliding_window(volume, W16, double, reuse_blank=True, pad_value=0.3, stats=stats)
    assert 0 < stats["run"] < stats["windows"]
    np.testing.assert_allclose(out, 2 * volume, atol=1e-6)


def test_blank_reuse_off_by_default():
    stats = {}
    sliding_window(body_in_air(), W16, double, stats=stats)
    assert stats["blank"] == 0 and stats["blank_runs"] == 0 and stats["run"] == stats["windows"]


def test_progress_with_blank_windows_ends_at_its_total():
    calls, stats = [], {}
    sliding_window(body_in_air(), W16, double, reuse_blank=True, progress=lambda d, t: calls.append((d, t)),
                   stats=stats)
    assert calls[-1] == (stats["run"] + 1, stats["run"] + 1) and {t for _, t in calls} == {stats["run"] + 1}


def test_progress_counts_up_to_the_total():
    calls = []
    stats = {}
    sliding_window(rand((1, 37, 30, 20)), W16, double, overlap=0.5, batch_size=5,
                   progress=lambda done, total: calls.append((done, total)), stats=stats)
    dones = [d for d, _ in calls]
    assert dones == sorted(set(dones)) and dones[-1] == stats["run"]
    assert {t for _, t in calls} == {stats["run"]} and len(calls) == stats["batches"]
    assert all(b - a <= 5 for a, b in zip([0] + dones, dones))


# --- the accumulator -----------------------------------------------------------------------------
def test_aggregator_blends_with_the_gaussian_weights_and_cuts_windows_at_the_borders():
    agg = WindowAggregator((20, 16, 16), W16, channels=[2], scales=[1])
    assert agg.window_shapes == [(2, 16, 16, 16)]
    a, b = np.full((2, *W16), 1.0, np.float32), np.full((2, *W16), 3.0, np.float32)
    agg.add([a], (0, 0, 0))
    agg.add([b], (4, 0, 0))  # overlaps the first on D 4..15; nothing outside the volume
    out, = agg.finalize()
    g = gaussian_importance(W16)
    np.testing.assert_allclose(out[:, :4], 1.0, rtol=1e-6)  # only the first window there
    np.testing.assert_allclose(out[:, 16:], 3.0, rtol=1e-6)  # only the second
    d = 10  # both: the weighted mean with each window's Gaussian weight at that voxel
    w1, w2 = g[d, 8, 8], g[d - 4, 8, 8]
    np.testing.assert_allclose(out[0, d, 8, 8], (w1 * 1 + w2 * 3) / (w1 + w2), rtol=1e-6)


def test_aggregator_places_half_resolution_outputs_and_windows_in_the_padding():
    agg = WindowAggregator((9, 16, 16), W16, channels=[1, 1], scales=[1, 2])
    assert agg.window_shapes == [(1, 16, 16, 16), (1, 8, 8, 8)]
    full = np.arange(16 ** 3, dtype=np.float32).reshape(1, *W16)
    agg.add([full, pool2(full[None])[0]], (-4, 0, 0))  # 9 < 16: the window starts 4 voxels before the volume
    f, h = agg.finalize()
    assert f.shape == (1, 9, 16, 16) and h.shape == (1, 5, 8, 8)  # ceil(9 / 2) = 5 cells
    np.testing.assert_allclose(f, full[:, 4:13], rtol=1e-6)  # one window: the blend is that window, cut to the volume
    np.testing.assert_allclose(h, pool2(full[None])[0][:, 2:7], rtol=1e-6)


def test_aggregator_casts_at_the_end_and_refuses_what_float16_cannot_hold():
    agg = WindowAggregator((16, 16, 16), W16, channels=[1], scales=[1])
    agg.add([np.full((1, *W16), 0.1, np.float32)], (0, 0, 0))
    out, = agg.finalize(np.float16)
    assert out.dtype == np.float16
    np.testing.assert_allclose(out, 0.1, rtol=1e-3)
    agg = WindowAggregator((16, 16, 16), W16, channels=[1], scales=[1])
    agg.add([np.full((1, *W16), 1e6, np.float32)], (0, 0, 0))
    with pytest.raises(EdgesegError, match="float16"):
        agg.finalize(np.float16)


# --- Gaussian weights -----------------------------------------------------------------------------
@pytest.mark.parametrize("window", [(16, 16, 16), (15, 15, 15), (16, 12, 8)])
def test_gaussian_importance(window):
    g = gaussian_importance(window)
    assert g.shape == window and g.dtype == np.float32
    assert g.max() == 1.0 and g.min() >= 1e-3
    for ax in range(3):
        np.testing.assert_array_equal(g, np.flip(g, ax))
    c = tuple(w // 2 for w in window)
    assert g[c] > g[0, c[1], c[2]] and g[c] > g[c[0], 0, c[2]] and g[c] > g[c[0], c[1], 0]
    assert gaussian_importance(window) is g and not g.flags.writeable  # cached, protected
    assert gaussian_importance(window, 0.125, 0.01).min() >= 0.01
    if any(w % 2 for w in window):
        with pytest.raises(InputError, match="scale 2"):
            gaussian_importance(window, scale=2)
        return
    # at half resolution: the same map sampled at the cells' centres
    np.testing.assert_allclose(gaussian_importance(window, scale=2), gaussian_importance(tuple(w // 2 for w in window)),
                               rtol=1e-6)


def test_blending_a_constant_gives_the_constant():
    volume = rand((1, 37, 41, 29))
    for c in (1.0, 0.3, -7.25):
        full, half = sliding_window(volume, W16, lambda x, c=c: (np.full_like(x, c), np.full_like(pool2(x), c)),
                                    overlap=0.5, batch_size=2)
        np.testing.assert_allclose(full, c, rtol=1e-6)
        np.testing.assert_allclose(half, c, rtol=1e-6)


def test_matches_monai_on_a_context_dependent_stand_in():
    monai = pytest.importorskip("monai.inferers")
    torch = pytest.importorskip("torch")

    def f(x):  # depends on the whole window, so the plan and the weights must both match
        return x.cumsum(axis=2) / 10 + x.mean(axis=(2, 3, 4), keepdims=True)

    for shape, overlap in [((1, 40, 33, 20), 0.25), ((1, 37, 11, 29), 0.5)]:
        volume = rand(shape, seed=3)
        ref = monai.sliding_window_inference(torch.from_numpy(volume[None]), W16, 4,
                                             lambda t: torch.from_numpy(f(t.numpy())), overlap=overlap,
                                             mode="gaussian", sigma_scale=0.125).numpy()[0]
        out, = sliding_window(volume, W16, f, overlap=overlap, batch_size=3)
        np.testing.assert_allclose(out, ref, atol=2e-6, rtol=0)


# --- memory and dtype -----------------------------------------------------------------------------
def test_memory_is_bounded_by_the_accumulators_and_one_batch():
    volume = rand((1, 64, 64, 64))
    batch_size = 4
    window_bytes = 4 * 16 ** 3
    full_bytes = volume.nbytes  # one full-resolution output; half-res output and its weights are 1/8 each
    bound = 1.5 * (full_bytes + full_bytes / 8 + full_bytes + full_bytes / 8 + 2 * batch_size * window_bytes * 2)
    predict = Recorder(double_and_pool)
    stats = {}
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        outputs = sliding_window(volume, W16, predict, overlap=0.25, batch_size=batch_size, stats=stats)
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    n = count_windows((64, 64, 64), W16, 0.25)
    assert stats["run"] == n == 125 and stats["batches"] == len(predict.sizes) == math.ceil(n / batch_size)
    assert [o.shape for o in outputs] == [(1, 64, 64, 64), (1, 32, 32, 32)]
    assert peak < bound, f"peak {peak / 2**20:.2f} MiB over the bound {bound / 2**20:.2f} MiB"


def test_float16_output():
    volume = rand((1, 37, 20, 18))
    full, half = sliding_window(volume, W16, double_and_pool, out_dtype=np.float16)
    assert full.dtype == half.dtype == np.float16
    np.testing.assert_allclose(full, 2 * volume, atol=2e-3)
    with pytest.raises(EdgesegError, match="float16"):
        sliding_window(volume, W16, lambda x: 1e6 * x + 1e5, out_dtype=np.float16)


# --- regions --------------------------------------------------------------------------------------
@pytest.mark.parametrize("box", [
    (slice(10, 30), slice(4, 36), slice(0, 22)),  # even starts and stops
    (slice(11, 29), slice(0, 41), slice(7, 8)),  # odd: half-res rounded outward
    (slice(0, 37), slice(0, 41), slice(0, 29)),  # the whole volume
])
def test_region_equals_the_full_run_on_the_box(box):
    volume = rand((2, 37, 41, 29), seed=2)
    full, half = sliding_window(volume, W16, double_and_pool, overlap=0.5)
    stats = {}
    rfull, rhalf = sliding_window_region(volume, box, W16, double_and_pool, overlap=0.5, stats=stats)
    assert rfull.shape == (2, *(b.stop - b.start for b in box))
    hbox = box_at_scale(box, 2)
    assert rhalf.shape == (2, *(b.stop - b.start for b in hbox))
    np.testing.assert_allclose(rfull, full[(slice(None), *box)], atol=1e-5, rtol=0)
    np.testing.assert_allclose(rhalf, half[(slice(None), *hbox)], atol=1e-6, rtol=0)
    for (r0, r1), b, n in zip(stats["run_box"], box, volume.shape[1:]):  # context, even start, clipped
        assert r0 % 2 == 0 and r0 <= max(0, b.start - 4) and min(n, b.stop + 4) <= r1 <= n


def test_region_of_an_even_box_has_half_the_size_and_runs_fewer_windows():
    volume = rand((1, 64, 64, 64))
    box = (slice(8, 24), slice(32, 48), slice(20, 36))
    stats = {}
    full, half = sliding_window_region(volume, box, W16, double_and_pool, context=0, stats=stats)
    assert full.shape == (1, 16, 16, 16) and half.shape == (1, 8, 8, 8)
    assert stats["run"] < count_windows((64, 64, 64), W16, 0.25)
    np.testing.assert_allclose(full, 2 * volume[(slice(None), *box)], atol=1e-5)


# --- bad inputs -----------------------------------------------------------------------------------
V = np.zeros((1, 20, 20, 20), np.float32)


@pytest.mark.parametrize("kwargs,needle", [
    ({"volume": np.zeros((20, 20, 20), np.float32)}, "(20, 20, 20)"),
    ({"window": (16, 16)}, "(16, 16)"),
    ({"window": (16, 0, 16)}, "(16, 0, 16)"),
    ({"window": (16, 16.5, 16)}, "16.5"),
    ({"overlap": 1.0}, "overlap 1.0"),
    ({"overlap": -0.1}, "-0.1"),
    ({"batch_size": 0}, "batch_size 0"),
    ({"batch_size": 2.0}, "batch_size 2.0"),
    ({"align": 3}, "align 3"),
    ({"out_dtype": np.int16}, "int16"),
    ({"pad_value": float("nan")}, "nan"),
])
def test_bad_inputs_raise_input_error(kwargs, needle):
    args = {"volume": V, "window": W16, "predict": double, **kwargs}
    with pytest.raises(InputError) as e:
        sliding_window(args.pop("volume"), args.pop("window"), args.pop("predict"), **args)
    assert needle in str(e.value) and e.value.fix


@pytest.mark.parametrize("box,needle", [
    ((slice(0, 10), slice(0, 10)), "box"),
    ((slice(0, 10), slice(0, 30), slice(0, 10)), "slice(0, 30"),
    ((slice(5, 5), slice(0, 10), slice(0, 10)), "slice(5, 5"),
])
def test_bad_boxes_raise_input_error(box, needle):
    with pytest.raises(InputError, match=None) as e:
        sliding_window_region(V, box, W16, double)
    assert needle in str(e.value)


def test_bad_predict_outputs_name_the_shapes():
    with pytest.raises(EdgesegError, match=r"\(1, 1, 5, 5, 5\)"):  # 16 / 5 is no integer factor
        sliding_window(V, W16, lambda x: np.zeros((x.shape[0], 1, 5, 5, 5), np.float32))
    with pytest.raises(EdgesegError, match=r"N=1"):
        sliding_window(V, W16, lambda x: np.zeros((2, 1, 16, 16, 16), np.float32))
    with pytest.raises(EdgesegError, match="align=2"):
        sliding_window(V, W16, double_and_pool, align=1)
    shapes = iter([16, 8])
    with pytest.raises(EdgesegError, match="changed"):
        sliding_window(rand((1, 40, 20, 20)), W16, lambda x: np.zeros((x.shape[0], 1, *(3 * (next(shapes),))),
                                                                      np.float32))
