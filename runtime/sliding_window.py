"""The one sliding-window stitcher for every backend: numpy only, memory-bounded, Gaussian-blended.

MONAI's `sliding_window_inference` idea without torch. Used for feature caching (trunk outputs:
48 channels at full resolution, or for the `pre-decoder1` cut `enc0` at full and `dec0` at half
resolution) and for inference (probabilities).

Conventions (every function here follows them):

* Volumes are (C, D, H, W); a window is three voxel counts (wd, wh, ww); `predict` maps a batch
  (N, C, wd, wh, ww) float32 to one array or a tuple of arrays (N, Co_k, wd/s_k, wh/s_k, ww/s_k):
  s_k, the output's downsampling factor, is inferred from the first call and must divide the window.
* Window starts, per axis: stride = max(1, int(window * (1 - overlap))) (as MONAI), starts
  0, stride, 2 * stride, ... and a last start at padded_size - window, so every voxel is covered.
* Padding (with `pad_value`; 0.0 is the HU window's lower bound on the [0, 1] scale, as MONAI pads
  with 0): an axis shorter than the window is padded to the window, floor(diff / 2) voxels before
  and the rest after (MONAI's split). Nothing is padded on an axis at least as long as the window.
* Alignment, for downsampled outputs: output cell j at scale s is voxels [s*j, s*j + s) of the
  volume, so every window must start at a multiple of s on the volume grid. With `align=A` the
  stride is rounded down to a multiple of A (at least A), the padded size rounded up to a multiple
  of A (padding after the volume) and the padding before it rounded down to a multiple of A.
  `align=None` (default) infers A = lcm(s_k) from the first batch: when the plan for A = 1 is not
  already aligned, the plan is redone once for A; the first batch's windows that the new plan also
  runs are blended, the others discarded (stats["discarded_windows"]; none when no axis is shorter
  than the window and the first batch's starts are multiples of A, the usual case). Pass `align=2`
  up front for a `pre-decoder1` cut to be sure nothing is discarded. A = 1 is MONAI's plan exactly.
* Output shapes: ceil(n / s) per axis for an axis of n voxels (ceil: the last cell of an odd axis
  at s = 2 averages the last voxel with one voxel of padding, so every voxel has a coarse parent).
* Blending: sum(importance * output) / sum(importance) per output, with one Gaussian importance map
  per scale (`gaussian_importance`), accumulated in float32 (`WindowAggregator`) and cast to
  `out_dtype` at the end.
* Memory: the output accumulators (one float32 array per output, one weight map per scale), one
  batch of windows in and out, and one window of scratch per output; a float32 volume is never
  copied or padded as a whole (windows are cut from it, and padded, one at a time).
"""

from __future__ import annotations

import functools
import itertools
import math
import numbers
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from edgeseg.runtime.errors import EdgesegError, InputError

__all__ = [
    "WindowAggregator",
    "box_at_scale",
    "gaussian_importance",
    "pad_widths",
    "plan_windows",
    "sliding_window",
    "sliding_window_region",
    "window_starts",
]

Window = tuple[int, int, int]
Start = tuple[int, int, int]
Box = tuple[slice, slice, slice]


# --- validation ------------------------------------------------------------------------------------
def _is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _check_window(window: Any) -> Window:
    try:
        ok = len(window) == 3 and all(_is_int(w) and w > 0 for w in window)
    except TypeError:
        ok = False
    if not ok:
        raise InputError(f"window {window!r} must be three positive integers (voxels, D H W)",
                         fix="pass e.g. window=(96, 96, 96), the spec's window")
    return tuple(int(w) for w in window)  # type: ignore[return-value]


def _check_overlap(overlap: Any) -> float:
    if (not isinstance(overlap, numbers.Real) or isinstance(overlap, bool) or not math.isfinite(overlap)
            or not 0.0 <= overlap < 1.0):
        raise InputError(f"overlap {overlap!r} must be a number with 0 <= overlap < 1",
                         fix="pass e.g. overlap=0.25 (MONAI's default) or 0.5")
    return float(overlap)


def _check_align(align: Any, window: Window) -> int:
    if not _is_int(align) or align < 1:
        raise InputError(f"align {align!r} must be a positive integer",
                         fix="pass align=1, or align=2 when an output is at half resolution")
    if any(w % align for w in window):
        raise InputError(f"align {align} does not divide the window {window}",
                         fix="use a window whose sides are multiples of every output's downsampling factor")
    return int(align)


def _check_shape(shape: Any) -> Window:
    try:
        ok = len(shape) == 3 and all(_is_int(n) and n > 0 for n in shape)
    except TypeError:
        ok = False
    if not ok:
        raise InputError(f"spatial shape {shape!r} must be three positive integers (D H W)",
                         fix="pass the volume's spatial shape, volume.shape[1:] for a (C, D, H, W) volume")
    return tuple(int(n) for n in shape)  # type: ignore[return-value]


# --- importance map --------------------------------------------------------------------------------
def gaussian_importance(window: Sequence[int], sigma_scale: float = 0.125, min_weight: float = 1e-3, *,
                        scale: int = 1) -> np.ndarray:
    """The Gaussian blending weights of one window, float32 (wd/scale, wh/scale, ww/scale), read-only.

    As MONAI's `compute_importance_map(mode="gaussian")`: per axis a Gaussian centred on the window's
    centre with sigma = sigma_scale * side (in full-resolution voxels), the product over axes,
    clamped below at `min_weight` so every voxel has weight (as MONAI), then normalised to a maximum
    of 1 (MONAI's map peaks below 1 for an even side; scaling does not change a blend, so blending
    with this map is MONAI's blend exactly). Every value lies in [min_weight, 1].
    `scale` > 1 samples the same map at the centres of the cells of an output downsampled by `scale`
    (cell i covers voxels [scale*i, scale*i + scale)). Cached per (window, sigma_scale, min_weight, scale).
    """
    window = _check_window(window)
    if not isinstance(sigma_scale, numbers.Real) or not (math.isfinite(sigma_scale) and sigma_scale > 0):
        raise InputError(f"sigma_scale {sigma_scale!r} must be a positive number", fix="pass e.g. 0.125 (MONAI's)")
    if not isinstance(min_weight, numbers.Real) or not 0 < min_weight <= 1:
        raise InputError(f"min_weight {min_weight!r} must satisfy 0 < min_weight <= 1", fix="pass e.g. 1e-3")
    if not _is_int(scale) or scale < 1 or any(w % scale for w in window):
        raise InputError(f"scale {scale!r} must be a positive integer dividing the window {window}",
                         fix="pass the output's downsampling factor, e.g. scale=2 for a half-resolution output")
    return _importance(window, float(sigma_scale), float(min_weight), scale)


@functools.lru_cache(maxsize=32)
def _importance(window: Window, sigma_scale: float, min_weight: float, scale: int) -> np.ndarray:
    axes = []
    for w in window:
        centres = scale * np.arange(w // scale, dtype=np.float64) + (scale - 1) / 2.0 - (w - 1) / 2.0
        axes.append(np.exp(-(centres ** 2) / (2.0 * (sigma_scale * w) ** 2)))
    imp = (axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]).astype(np.float32)
    np.maximum(imp, np.float32(min_weight), out=imp)  # MONAI clamps first: same blend as MONAI's map
    out = imp / imp.max()
    out.setflags(write=False)
    return out


# --- the plan --------------------------------------------------------------------------------------
def _padded_size(size: int, window: int, align: int) -> int:
    return max(window, -(-size // align) * align)


def window_starts(size: int, window: int, overlap: float = 0.25, *, align: int = 1) -> list[int]:
    """Window starts along one axis, on the padded grid (see `pad_widths`); covers every voxel.

    stride = max(1, int(window * (1 - overlap))) (rounded down to a multiple of `align`, at least
    `align`), starts 0, stride, ... and last start padded_size - window; a size smaller than the
    window gives [0] (the axis is padded to the window).
    """
    if not _is_int(size) or size < 1 or not _is_int(window) or window < 1:
        raise InputError(f"size {size!r} and window {window!r} must be positive integers",
                         fix="pass one axis's voxel count and the window's side along it")
    overlap = _check_overlap(overlap)
    align = _check_align(align, (window,) * 3)
    padded = _padded_size(int(size), int(window), align)
    stride = max(1, int(window * (1 - overlap)))
    stride = max(align, stride // align * align)
    last = padded - window
    starts = list(range(0, last + 1, stride))
    if starts[-1] != last:
        starts.append(last)
    return starts


def pad_widths(shape: Sequence[int], window: Sequence[int], *, align: int = 1) -> tuple[tuple[int, int], ...]:
    """(before, after) padding per spatial axis: to the window, and to a multiple of `align`.

    before = floor(diff / 2) rounded down to a multiple of `align`, after = the rest, where diff is
    how much the axis falls short of max(window, size rounded up to a multiple of align).
    """
    shape, window = _check_shape(shape), _check_window(window)
    align = _check_align(align, window)
    out = []
    for n, w in zip(shape, window):
        diff = _padded_size(n, w, align) - n
        lo = diff // 2 // align * align
        out.append((lo, diff - lo))
    return tuple(out)


def plan_windows(shape: Sequence[int], window: Sequence[int], overlap: float = 0.25, *,
                 align: int = 1) -> list[Start]:
    """Every window's start (padded grid), D outermost, W innermost: the order `sliding_window` runs them.

    A start on the volume grid is this start minus `pad_widths(...)[axis][0]`.
    """
    shape, window = _check_shape(shape), _check_window(window)
    per_axis = [window_starts(n, w, overlap, align=align) for n, w in zip(shape, window)]
    return [tuple(s) for s in itertools.product(*per_axis)]  # type: ignore[misc]


def _aligned(starts: list[Start], pads: tuple[tuple[int, int], ...], a: int) -> bool:
    return all(lo % a == 0 for lo, _ in pads) and all(v % a == 0 for st in starts for v in st)


# --- the accumulator -------------------------------------------------------------------------------
class WindowAggregator:
    """Blends window outputs into whole-volume outputs: a Gaussian-weighted average per output.

    The shape of MONAI's `AvgMerger` and TorchIO's `GridAggregator`: made once the outputs' channels and
    downsampling factors are known, fed one window's outputs at a time with where the window starts
    (`add`), and read once (`finalize`). Holds one float32 accumulator per output, one weight map per
    scale (the sum of the importance maps laid so far) and one window of scratch per output.
    """

    def __init__(self, shape: Window, window: Window, channels: Sequence[int], scales: Sequence[int], *,
                 sigma_scale: float = 0.125, min_weight: float = 1e-3):
        self.window = window
        self.scales = [int(s) for s in scales]
        out_shapes = {s: tuple(-(-n // s) for n in shape) for s in self.scales}
        self._acc: list[np.ndarray | None] = [np.zeros((c, *out_shapes[s]), np.float32)
                                               for c, s in zip(channels, self.scales)]
        self._scratch: list[np.ndarray | None] = [np.empty((c, *(w // s for w in window)), np.float32)
                                                   for c, s in zip(channels, self.scales)]
        self._weights = {s: np.zeros(out_shapes[s], np.float32) for s in out_shapes}
        self._importance = {s: _importance(window, float(sigma_scale), float(min_weight), s) for s in out_shapes}

    @property
    def window_shapes(self) -> list[tuple[int, ...]]:
        """(Co, wd/s, wh/s, ww/s) per output: what each window's output must be."""
        return [tuple(x.shape) for x in self._scratch]  # type: ignore[union-attr]

    def add(self, outputs: Sequence[np.ndarray], start: Start) -> None:
        """Blend one window's outputs (one (Co, wd/s, wh/s, ww/s) array per output), the window starting at
        `start` on the volume grid (negative in the padding; a multiple of every scale: the plan is aligned)."""
        regions = {}
        for s, wmap in self._weights.items():
            osl, wsl = [], []
            for v, w, n in zip(start, self.window, wmap.shape):
                c0, m = v // s, w // s
                lo, hi = max(c0, 0), min(c0 + m, n)
                osl.append(slice(lo, hi))
                wsl.append(slice(lo - c0, hi - c0))
            osl_t, wsl_t = tuple(osl), tuple(wsl)
            imp = self._importance[s][wsl_t]
            wmap[osl_t] += imp
            regions[s] = (osl_t, wsl_t, imp)
        for acc, scratch, s, out in zip(self._acc, self._scratch, self.scales, outputs):
            osl_t, wsl_t, imp = regions[s]
            part = scratch[(slice(None), *(slice(0, x.stop - x.start) for x in wsl_t))]  # type: ignore[index]
            np.multiply(out[(slice(None), *wsl_t)], imp, out=part)
            acc[(slice(None), *osl_t)] += part  # type: ignore[index]

    def finalize(self, out_dtype: Any = np.float32) -> tuple[np.ndarray, ...]:
        """The blends, sum(importance * output) / sum(importance), as `out_dtype` (an error if a value does not
        fit it). Once: the accumulators become the results (each released as the next is made)."""
        self._scratch = [None] * len(self._scratch)
        for acc, s in zip(self._acc, self.scales):
            np.divide(acc, self._weights[s], out=acc)  # every voxel has weight: the plan covers it (min_weight)
        results = []
        for k in range(len(self._acc)):
            acc, self._acc[k] = self._acc[k], None
            if out_dtype != np.float32:
                info = np.finfo(out_dtype)
                if acc.size and (acc.max() > info.max or acc.min() < info.min):  # type: ignore[union-attr]
                    raise EdgesegError(f"output {k} spans [{acc.min():.4g}, {acc.max():.4g}], "  # type: ignore[union-attr]
                                       f"beyond {out_dtype}'s range", fix="cache this output as float32")
                acc = acc.astype(out_dtype)  # type: ignore[union-attr]
            results.append(acc)
        return tuple(results)  # type: ignore[arg-type]


# --- the stitcher ----------------------------------------------------------------------------------
def _describe(outs: Sequence[np.ndarray]) -> str:
    return ", ".join(str(tuple(getattr(o, "shape", "?"))) for o in outs)


def _as_outputs(res: Any, n: int, channels_in: int, window: Window) -> tuple[np.ndarray, ...]:
    outs = (res,) if isinstance(res, np.ndarray) else tuple(res) if isinstance(res, (tuple, list)) else None
    if not outs or not all(isinstance(o, np.ndarray) for o in outs):
        raise EdgesegError(f"predict returned {type(res).__name__}, not an array or a tuple of arrays",
                           fix="make predict return numpy arrays (N, Co, wd/s, wh/s, ww/s)")
    for o in outs:
        if o.ndim != 5 or o.shape[0] != n:
            raise EdgesegError(
                f"predict mapped a batch {(n, channels_in, *window)} to outputs {_describe(outs)}: each must be "
                f"(N={n}, Co, wd/s, wh/s, ww/s)", fix="check that predict returns one row per window of the batch")
    return outs


def _scales(outs: Sequence[np.ndarray], window: Window, batch_shape: tuple[int, ...]) -> list[int]:
    scales = []
    for o in outs:
        sp = o.shape[2:]
        ratios = {w / n if n else 0.0 for w, n in zip(window, sp)}
        s = int(next(iter(ratios))) if len(ratios) == 1 else 0
        if len(ratios) != 1 or s < 1 or any(n * s != w for w, n in zip(window, sp)):
            raise EdgesegError(
                f"output shape {tuple(o.shape)} for input batch {batch_shape}: its spatial size {tuple(sp)} is not "
                f"the window {window} divided by one integer factor on every axis",
                fix="use a window whose sides the model's downsampling divides (e.g. multiples of 32)")
        scales.append(s)
    return scales


def sliding_window(
    volume: np.ndarray,
    window: Sequence[int],
    predict: Callable[[np.ndarray], Any],
    *,
    overlap: float = 0.25,
    batch_size: int = 1,
    pad_value: float = 0.0,
    progress: Callable[[int, int], None] | None = None,
    out_dtype: Any = np.float32,
    align: int | None = None,
    sigma_scale: float = 0.125,
    stats: dict | None = None,
    reuse_blank: bool = False,
) -> tuple[np.ndarray, ...]:
    """Run `predict` over every window of `volume` (C, D, H, W) and blend the outputs; see the module doc.

    Returns one array per output of predict, (Co_k, ceil(D/s_k), ceil(H/s_k), ceil(W/s_k)), `out_dtype`
    (float32, or float16 to halve a feature cache: accumulated in float32, cast at the end; an error if
    a value does not fit). `progress(done, total)` is called after each batch with the windows run so
    far and the windows to run (the one blank run counts as one). `stats`, when given, is filled with:
    windows (planned), run, batches (predict calls), discarded_windows (run under a plan that was then
    aligned, see the module doc), predict_seconds, seconds (all of it), align (that the plan was made
    with), pad ([before, after] per axis), scales (s_k).

    `reuse_blank=True`: a window whose every input value (padding included) equals `pad_value` (air
    below the HU window: pure air outside the body, or beyond the scan) is a blank window. All blank
    windows get the same input, so for a model with no absolute position (SwinUNETR: convolutions
    and relative position bias only) they get the same output: it is computed once, from one window
    of `pad_value`, and blended at every blank window's place. Exact, not an approximation: the
    result equals running every window (tests check it). stats then also hold blank (windows served
    by the one blank run) and blank_runs (0 or 1); run counts the windows run on their own. When every
    window is blank, predict runs one of them first, only to learn the output shapes.
    """
    t_start = time.perf_counter()
    if not isinstance(volume, np.ndarray) or volume.ndim != 4 or volume.size == 0:
        shape = getattr(volume, "shape", type(volume).__name__)
        raise InputError(f"volume of shape {shape} must be a non-empty (C, D, H, W) array",
                         fix="pass the preprocessed image with a channel axis, e.g. image[None]")
    if not (np.issubdtype(volume.dtype, np.floating) or np.issubdtype(volume.dtype, np.integer)):
        raise InputError(f"volume dtype {volume.dtype} is not numeric", fix="pass a float32 image")
    window = _check_window(window)
    overlap = _check_overlap(overlap)
    if not _is_int(batch_size) or batch_size < 1:
        raise InputError(f"batch_size {batch_size!r} must be an integer >= 1", fix="pass e.g. batch_size=1")
    if align is not None:
        align = _check_align(align, window)
    if not isinstance(pad_value, numbers.Real) or not math.isfinite(pad_value):
        raise InputError(f"pad_value {pad_value!r} must be a finite number", fix="pass 0.0 (the HU window's floor)")
    try:
        out_dtype = np.dtype(out_dtype)
    except TypeError as e:
        raise InputError(f"out_dtype {out_dtype!r} is not a numpy dtype", fix="pass np.float32 or np.float16") from e
    if not np.issubdtype(out_dtype, np.floating):
        raise InputError(f"out_dtype {out_dtype} must be a floating dtype", fix="pass np.float32 or np.float16")
    gaussian_importance(window, sigma_scale)  # checks sigma_scale
    for name, fn in (("predict", predict), ("progress", progress)):
        if fn is not None and not callable(fn):
            raise InputError(f"{name} {fn!r} is not callable", fix=f"pass a function as {name}")

    volume = volume.astype(np.float32, copy=False)
    channels_in, shape = volume.shape[0], tuple(int(n) for n in volume.shape[1:])
    batch = np.empty((batch_size, channels_in, *window), dtype=np.float32)
    st: dict[str, Any] = {"batches": 0, "discarded_windows": 0, "predict_seconds": 0.0}

    def call(n: int) -> tuple[np.ndarray, ...]:
        t0 = time.perf_counter()
        res = predict(batch[:n])
        st["predict_seconds"] += time.perf_counter() - t0
        st["batches"] += 1
        return _as_outputs(res, n, channels_in, window)

    def fill(i: int, v0: Start) -> None:
        src, dst = [], []
        for v, w, n in zip(v0, window, shape):
            lo, hi = max(v, 0), min(v + w, n)
            src.append(slice(lo, hi))
            dst.append(slice(lo - v, hi - v))
        if any(d.start > 0 or d.stop < w for d, w in zip(dst, window)):
            batch[i].fill(pad_value)
        batch[(i, slice(None), *dst)] = volume[(slice(None), *src)]

    def is_blank(v0: Start) -> bool:  # padding is pad_value: only the part inside the volume needs a look
        part = volume[(slice(None), *(slice(max(v, 0), max(min(v + w, n), 0)) for v, w, n in zip(v0, window, shape)))]
        return part.size == 0 or not np.any(part != pad_value)

    def blend(outs: tuple[np.ndarray, ...], placed: Sequence[tuple[int, Start]]) -> None:
        for i, v0 in placed:  # row i of the batch's outputs is the window starting at v0
            agg.add([o[i] for o in outs], v0)  # type: ignore[union-attr]

    plan_align = align if align is not None else 1
    agg: WindowAggregator | None = None  # made from the first batch's outputs (their channels and scales)
    carried: list[tuple[int, Start]] = []  # the first batch, run under a plan that then had to be aligned
    carried_outs: tuple[np.ndarray, ...] = ()
    while True:  # at most twice: once more when the first batch shows the plan must be aligned
        pads = pad_widths(shape, window, align=plan_align)
        starts = plan_windows(shape, window, overlap, align=plan_align)
        to_run = [tuple(p - lo for p, (lo, _) in zip(s, pads)) for s in starts]  # on the volume grid
        blanks: list[Start] = []
        if reuse_blank:
            blank_set = {v for v in to_run if is_blank(v)}
            blanks = [v for v in to_run if v in blank_set]
            to_run = [v for v in to_run if v not in blank_set]
        # all blank: one probe window, only to learn the output shapes
        run_list = to_run if to_run or agg is not None else blanks[:1]
        done = 0
        if carried:  # the carried windows that the aligned plan also runs are blended, not run again
            wanted = set(to_run)
            reuse = [(i, v) for i, v in carried if v in wanted]
            st["discarded_windows"] = len(carried) - len(reuse)
            if reuse:
                blend(carried_outs, reuse)
                done = len(reuse)
                if progress is not None:
                    progress(done, len(to_run) + bool(blanks))
                reused = {v for _, v in reuse}
                run_list = [v for v in run_list if v not in reused]
            carried, carried_outs = [], ()
        replan = False
        for b0 in range(0, len(run_list), batch_size):
            group = run_list[b0:b0 + batch_size]
            for i, v0 in enumerate(group):
                fill(i, v0)
            outs = call(len(group))
            items = list(enumerate(group))
            if agg is None:
                scales = _scales(outs, window, batch[:len(group)].shape)
                need = math.lcm(*scales)
                if align is not None and align % need:
                    raise EdgesegError(
                        f"outputs {_describe(outs)} are downsampled by {scales}, which align={align} does not fit",
                        fix=f"pass align={need} (or leave align=None to infer it)")
                agg = WindowAggregator(shape, window, [o.shape[1] for o in outs], scales, sigma_scale=sigma_scale)
                st["scales"] = scales
                if align is None and need > 1 and not _aligned(starts, pads, need):
                    plan_align, replan = need, True
                    carried, carried_outs = items, outs
                    break
            else:
                got = [tuple(o.shape[1:]) for o in outs]
                if got != agg.window_shapes:
                    raise EdgesegError(f"predict's outputs changed between batches: {agg.window_shapes} first, then "
                                       f"{got}", fix="predict must return the same outputs for every batch")
            if not to_run:  # the probe only taught us the shapes
                break
            blend(outs, items)
            done += len(group)
            if progress is not None:
                progress(done, len(to_run) + bool(blanks))
            del outs
        if not replan:
            break

    assert agg is not None  # the plan has at least one window, run or blank
    if blanks:  # one window of pad_value stands for every blank window
        batch[0].fill(pad_value)
        outs = call(1)
        blend(outs, [(0, v) for v in blanks])
        del outs
        if progress is not None:
            progress(len(to_run) + 1, len(to_run) + 1)
    st.update(windows=len(starts), run=len(to_run), blank=len(blanks), blank_runs=int(bool(blanks)), align=plan_align,
              pad=[list(p) for p in pads])
    results = agg.finalize(out_dtype)
    st["seconds"] = time.perf_counter() - t_start
    if stats is not None:
        stats.update(st)
    return results


# --- a region of a volume --------------------------------------------------------------------------
def box_at_scale(box: Box, scale: int) -> Box:
    """The cells of an output downsampled by `scale` that cover `box` (rounded outward)."""
    return tuple(slice(b.start // scale, -(-b.stop // scale)) for b in box)  # type: ignore[return-value]


def _check_box(box: Any, shape: Window) -> Box:
    try:
        ok = len(box) == 3 and all(isinstance(b, slice) for b in box)
    except TypeError:
        ok = False
    if not ok:
        raise InputError(f"box {box!r} must be three slices on the volume grid (D, H, W)",
                         fix="pass e.g. (slice(10, 74), slice(0, 64), slice(5, 69))")
    out = []
    for b, n in zip(box, shape):
        start = 0 if b.start is None else b.start
        stop = n if b.stop is None else b.stop
        if b.step not in (None, 1) or not (_is_int(start) and _is_int(stop)) or not 0 <= start < stop <= n:
            raise InputError(f"box {box!r} does not lie inside the volume's spatial shape {shape} (or is empty, "
                             "or has a step)", fix="clip the box to the volume: 0 <= start < stop <= size, step 1")
        out.append(slice(int(start), int(stop)))
    return tuple(out)  # type: ignore[return-value]


def sliding_window_region(
    volume: np.ndarray,
    box: Sequence[slice],
    window: Sequence[int],
    predict: Callable[[np.ndarray], Any],
    *,
    context: int | Sequence[int] | None = None,
    align: int | None = None,
    stats: dict | None = None,
    **kw: Any,
) -> tuple[np.ndarray, ...]:
    """`sliding_window`'s outputs on the sub-box `box` only (e.g. features around an organ).

    Runs the sliding window over the box grown by `context` voxels per side (default window // 4;
    an int or one per axis), then grown to at least the window where the volume allows (so windows
    see real voxels rather than padding), its start rounded down and stop rounded up to a multiple
    of the alignment (`align`, or 2 when every window side is even), all clipped to the volume;
    then crops back. A full-resolution output has the box's shape; an output downsampled by s covers
    `box_at_scale(box, s)`: the box rounded outward to whole cells, box size / s when the box's
    starts and stops are multiples of s. For a `predict` with no spatial context (e.g. 2 * x) it
    equals `sliding_window` on the whole volume restricted to the box; for a real model it differs
    only in which windows saw the box. Other keywords go to `sliding_window`; `stats` also gets `box` and
    `run_box` ([start, stop] per axis).
    """
    if not isinstance(volume, np.ndarray) or volume.ndim != 4:
        raise InputError(f"volume of shape {getattr(volume, 'shape', None)} must be a (C, D, H, W) array",
                         fix="pass the preprocessed image with a channel axis, e.g. image[None]")
    window = _check_window(window)
    shape = tuple(int(n) for n in volume.shape[1:])
    box = _check_box(box, shape)  # type: ignore[arg-type]
    if align is not None:
        align = _check_align(align, window)
    a = align if align is not None else (2 if all(w % 2 == 0 for w in window) else 1)
    if context is None:
        ctx = tuple(w // 4 for w in window)
    elif _is_int(context) and context >= 0:
        ctx = (int(context),) * 3
    else:
        try:
            ok = len(context) == 3 and all(_is_int(c) and c >= 0 for c in context)  # type: ignore[arg-type]
        except TypeError:
            ok = False
        if not ok:
            raise InputError(f"context {context!r} must be a non-negative integer or three of them",
                             fix="pass e.g. context=24 (voxels added on each side of the box)")
        ctx = tuple(int(c) for c in context)  # type: ignore[union-attr]

    run_box = []
    for b, c, w, n in zip(box, ctx, window, shape):
        e0, e1 = max(0, b.start - c), min(n, b.stop + c)
        if e1 - e0 < w:  # grow to the window, centred, within the volume
            e0 = max(0, e0 - (w - (e1 - e0)) // 2)
            e1 = min(n, e0 + w)
            e0 = max(0, e1 - w)
        e0, e1 = e0 // a * a, min(n, -(-e1 // a) * a)
        run_box.append(slice(e0, e1))
    origin = tuple(r.start for r in run_box)
    st: dict[str, Any] = {}
    outs = sliding_window(volume[(slice(None), *run_box)], window, predict, align=align, stats=st, **kw)
    results = []
    for out, s in zip(outs, st["scales"]):
        if any(o % s for o in origin):
            raise EdgesegError(
                f"an output is downsampled by {s}, but the region's run box starts at {origin}, not a multiple of {s}",
                fix=f"pass align={s}")
        cells = box_at_scale(box, s)
        crop = tuple(slice(c.start - o // s, c.stop - o // s) for c, o in zip(cells, origin))
        results.append(np.ascontiguousarray(out[(slice(None), *crop)]))
        del out
    del outs
    if stats is not None:
        st.update(box=[[b.start, b.stop] for b in box], run_box=[[r.start, r.stop] for r in run_box])
        stats.update(st)
    return tuple(results)
