"""`edgeseg adapt`: train a few-shot adapter on cached trunk features, optionally with the size prior.

The trunk never runs here: crops are read from the memory-mapped feature cache, so memory does not
grow with the number or size of the support scans.

The recipe is a step budget measured to converge on a 2-core CPU (`RECIPE`; the code release's "up to
200 epochs at 1e-4" means hours there): AdamW (weight decay 0), a linear warm-up over the first 5% of
the steps, then cosine to 0; Dice + BCE; batches of crops centred on an organ voxel (half), on a
non-organ voxel of the organ's own region, i.e. its neighbours inside the body (a quarter), or in a
negative window inside the body (a quarter). With K >= 5 supports one support is left out and the
adapter's Dice on it, every `eval_every` steps, picks the state that is kept and stops training when it
no longer improves (`patience`, never before half the steps); `max_minutes` stops at the best state so
far and says so. With `ti=True` the transductive size prior (the poster's band on the query's predicted
organ volume, in mL) takes a separate optimiser step every `ti_every` steps after `ti_warmup` steps.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from edgeseg.runtime.errors import InputError
from edgeseg.runtime.host import peak_rss_gib

# The CPU recipe per adapter: steps, learning rate, crop side (feature voxels). Measured on cached
# features of the stand-in (benchmarks/results/<machine>/adapt_recipe.json): the decoder block reaches
# its best held-out Dice near 500 steps at 3e-3 and over-fits beyond ~1000.
RECIPE: dict[str, dict] = {
    "lp": {"steps": 300, "lr": 1e-2, "crop": 32},
    "spatial": {"steps": 400, "lr": 1e-3, "crop": 32},
    "decoder-block": {"steps": 500, "lr": 3e-3, "crop": 32},
    "ft-last": {"steps": 500, "lr": 1e-3, "crop": 32},
}
# The decoder block's instance norms see a whole 64^3 window at inference, so larger crops help it, but
# their cost grows with the trunk's width. Measured on 2 cores, 500 steps: on the stand-in (feature size
# 12) 48^3 crops lift the never-labelled vena cava from 0.47 to 0.55 in 162 s (32^3: 84 s); at feature
# size 48 they take 1324 s and 1.69 GiB (32^3: 393 s, 1.09 GiB), past the CPU aims of 10 min and 1.5 GiB.
# So trunks up to this width train the decoder block on 48^3 crops, wider ones keep the recipe's 32^3.
SMALL_TRUNK_CROP: dict[str, tuple[int, int]] = {"decoder-block": (12, 48)}  # adapter: (max feature size, crop)
HOLDOUT_MIN_K = 5  # from this many supports on, one is left out to pick the state that is kept


def recipe_crop(kind: str, feature_size: int) -> int:
    """The default training crop side of adapter `kind` on a trunk of `feature_size` (see SMALL_TRUNK_CROP)."""
    small = SMALL_TRUNK_CROP.get(kind)
    return small[1] if small is not None and feature_size <= small[0] else RECIPE[kind]["crop"]


@dataclass(frozen=True)
class AdaptConfig:
    adapter: str = "lp"
    steps: int | None = None  # None: RECIPE[adapter]["steps"]
    lr: float | None = None  # None: RECIPE[adapter]["lr"]
    crop: int | None = None  # crop side in voxels (clipped to the cached regions); None: `recipe_crop`
    warmup: float = 0.05  # fraction of the steps in the linear warm-up
    batch_size: int = 2
    loss: str = "dice+bce"  # "dice" or "dice+bce"
    neighbour_fraction: float = 0.25  # crops centred on a non-organ voxel of the organ's region
    negative_fraction: float = 0.25  # crops in a negative window
    holdout: bool = True  # leave one support out (K >= 5) to pick the kept state and stop early
    eval_every: int = 50  # steps between held-out evaluations
    patience: int = 4  # held-out evaluations without improvement before stopping
    max_minutes: float | None = None  # stop at the best state so far after this long
    ti: bool = False
    ti_gamma: float = 0.3  # band half-width (the release's margin)
    ti_lambda: float = 0.1
    ti_warmup: int | None = None  # steps before the size prior starts; None: half the steps
    ti_every: int = 10  # steps between size-prior steps
    seed: int = 0
    threads: int | None = None  # None: the cores that are idle now (see `edgeseg.runtime.host.idle_cores`)

    def resolved(self, feature_size: int) -> "AdaptConfig":
        """This config with the recipe's values for a trunk of `feature_size` filled in for the fields left as None."""
        from edgeseg.adapters import resolve_kind

        kind = resolve_kind(self.adapter)
        r = RECIPE[kind]
        steps = self.steps if self.steps is not None else r["steps"]
        return dataclasses.replace(
            self, adapter=kind, steps=steps, lr=self.lr if self.lr is not None else r["lr"],
            crop=self.crop if self.crop is not None else recipe_crop(kind, feature_size),
            ti_warmup=self.ti_warmup if self.ti_warmup is not None else steps // 2)

    def check(self) -> None:
        problems = []
        if self.steps is not None and self.steps < 1:
            problems.append(f"steps={self.steps} must be >= 1")
        if self.crop is not None and self.crop < 8:
            problems.append(f"crop={self.crop} must be >= 8")
        if self.loss not in ("dice", "dice+bce"):
            problems.append(f"loss {self.loss!r} is not one of dice, dice+bce")
        if not (0 <= self.neighbour_fraction and 0 <= self.negative_fraction
                and self.neighbour_fraction + self.negative_fraction < 1):
            problems.append("neighbour and negative fractions must be >= 0 and leave room for organ crops")
        if self.eval_every < 1 or self.patience < 1 or self.ti_every < 1 or self.batch_size < 1:
            problems.append("eval_every, patience, ti_every and batch_size must be >= 1")
        if self.max_minutes is not None and self.max_minutes <= 0:
            problems.append(f"max_minutes={self.max_minutes} must be > 0")
        if problems:
            raise InputError("invalid adaptation settings: " + "; ".join(problems), fix="see `edgeseg adapt --help`")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class CropSampler:
    """Crops from the cache's regions: organ-centred, neighbour-centred (non-organ voxels of the organ's own
    region: the structures around it, inside the body), or anywhere in a negative window.

    For the pre-decoder1 cut the crop starts on even voxels so that the half-resolution `dec0` crop is exact.
    Every `RELEASE_EVERY` crops the mapped pages read so far are released (`release_pages`): the crops wander
    over the whole cache, whose pages would otherwise all end up in this process's resident memory.
    """

    KINDS = ("positive", "neighbour", "negative")
    RELEASE_EVERY = 8

    def __init__(self, entries, crop: int, rng: np.random.Generator, align: int):
        self.pos = [e for e in entries if e.role == "positive"]
        self.neg = [e for e in entries if e.role == "negative"] or self.pos
        if not self.pos:
            raise InputError("the cache holds no organ region", fix="rebuild the cache with supports that contain the organ")
        self.crop, self.rng, self.align = crop, rng, align
        self._drawn = 0
        self._fg: dict[int, np.ndarray] = {}
        self._bg: dict[int, np.ndarray] = {}
        for e in self.pos:
            lab = np.asarray(e.label) > 0
            self._fg[id(e)] = np.flatnonzero(lab).astype(np.int64)
            self._bg[id(e)] = np.flatnonzero(~lab).astype(np.int64)

    def _size(self, entry) -> tuple[int, int, int]:
        shape = entry.label.shape
        return tuple(max(self.align, min(self.crop, s) // self.align * self.align) for s in shape)  # type: ignore

    def _start(self, entry, centre=None) -> tuple[int, int, int]:
        size, shape = self._size(entry), entry.label.shape
        starts = []
        for ax in range(3):
            hi = shape[ax] - size[ax]
            s = int(self.rng.integers(0, hi + 1)) if centre is None else int(np.clip(centre[ax] - size[ax] // 2, 0, hi))
            starts.append(s // self.align * self.align)
        return tuple(starts)  # type: ignore[return-value]

    def kind_of(self, draw: float, neighbour_fraction: float, negative_fraction: float) -> str:
        if draw < negative_fraction:
            return "negative"
        if draw < negative_fraction + neighbour_fraction:
            return "neighbour"
        return "positive"

    def sample(self, kind: str | bool):
        """(features, label) of one crop; `kind` is one of `KINDS` (True / False: positive / negative)."""
        kind = {True: "positive", False: "negative"}.get(kind, kind)  # type: ignore[arg-type]
        pool = self.neg if kind == "negative" else self.pos
        entry = pool[int(self.rng.integers(len(pool)))]
        voxels = {"positive": self._fg, "neighbour": self._bg}.get(kind, {}).get(id(entry))
        centre = None
        if voxels is not None and len(voxels):
            centre = np.unravel_index(int(voxels[int(self.rng.integers(len(voxels)))]), entry.label.shape)
        start, size = self._start(entry, centre), self._size(entry)
        feats = []
        full = entry.label.shape
        for f in entry.features:
            scale = full[0] // f.shape[1] if f.shape[1] else 1
            sl = tuple(slice(s // scale, (s + n) // scale) for s, n in zip(start, size))
            feats.append(np.asarray(f[(slice(None), *sl)], dtype=np.float32))
        label = np.asarray(entry.label[tuple(slice(s, s + n) for s, n in zip(start, size))], dtype=np.float32)
        self._drawn += 1
        if self._drawn % self.RELEASE_EVERY == 0:
            from edgeseg.features import release_pages

            release_pages([f for e in {id(e): e for e in [*self.pos, *self.neg]}.values() for f in e.features])
        return feats, label


def predict_features(adapter, features: Sequence[np.ndarray], window: Sequence[int], *, overlap: float = 0.25) -> np.ndarray:
    """The adapter's organ probability (D, H, W) over whole feature volumes, by Gaussian-blended sliding windows.

    `features` are the cut's arrays in trunk order on nested grids (``(feat,)``, or ``(enc0, dec0)`` with dec0
    at half resolution). Windows start on multiples of the coarsest scale, so each window slices every array
    at its own scale; only one window's features are ever float32 (a whole float16 region at feature size
    48 is hundreds of MB as float32). Padding beyond the volume is 0, as `sliding_window` pads.
    """
    import torch

    from edgeseg.features import release_pages
    from edgeseg.runtime.sliding_window import WindowAggregator, pad_widths, plan_windows

    fine = features[0]
    shape = tuple(int(n) for n in fine.shape[1:])
    scales = [1] + [max(1, round(shape[0] / max(1, f.shape[1]))) for f in features[1:]]  # 2 for dec0, odd sizes too
    align = max(scales)
    window = tuple(min(int(w), n) // align * align for w, n in zip(window, shape))
    pads = pad_widths(shape, window, align=align)
    agg = WindowAggregator(shape, window, channels=[1], scales=[1])

    def crop(array, start, s: int) -> np.ndarray:
        """The window of `array` (at scale s) starting at `start` (volume grid), float32, 0 outside it."""
        out = np.zeros((array.shape[0], *(w // s for w in window)), np.float32)
        src, dst = [], []
        for v, w, n in zip(start, window, array.shape[1:]):
            lo, hi = max(v // s, 0), min((v + w) // s, n)
            src.append(slice(lo, max(hi, lo)))
            dst.append(slice(lo - v // s, max(hi, lo) - v // s))
        out[(slice(None), *dst)] = array[(slice(None), *src)]
        return out

    with torch.no_grad():
        for padded_start in plan_windows(shape, window, overlap, align=align):
            start = tuple(p - lo for p, (lo, _) in zip(padded_start, pads))
            args = [torch.from_numpy(crop(f, start, s))[None] for f, s in zip(features, scales)]
            release_pages(features)  # mapped arrays: this window's pages need not stay resident
            agg.add([torch.sigmoid(adapter(*args))[0].numpy()], start)
    return agg.finalize(np.float32)[0][0]


def heldout_dice(adapter, entries, window: Sequence[int]) -> float:
    """One Dice over a left-out support's regions (organ region and negative windows pooled): 2TP / (P + G)."""
    tp = pred = ref = 0
    for e in entries:
        p = predict_features(adapter, e.features, window) > 0.5
        g = np.asarray(e.label) > 0
        tp += int(np.logical_and(p, g).sum())
        pred += int(p.sum())
        ref += int(g.sum())
    return 1.0 if pred + ref == 0 else 2.0 * tp / (pred + ref)


def split_holdout(entries, config: AdaptConfig) -> tuple[list, list]:
    """(training entries, left-out entries): the last support by case id is left out when K >= HOLDOUT_MIN_K."""
    cases = sorted({e.case_id for e in entries})
    if not config.holdout or len(cases) < HOLDOUT_MIN_K:
        return list(entries), []
    left = cases[-1]
    return [e for e in entries if e.case_id != left], [e for e in entries if e.case_id == left]


def fit_adapter(adapter, sampler, config: AdaptConfig, *, heldout=(), estimators=(), S_ml: float | None = None, progress: Callable[[int, int, float], None] | None = None,
                record_after: bool = True) -> dict:
    """The training loop shared by `edgeseg adapt` and the few-shot protocol (`config` already `resolved()`).

    `sampler.sample(kind)` gives ``(features, label)``. With `heldout` entries (a left-out support), every
    `config.eval_every` steps the adapter's Dice on them (`heldout_dice`) is recorded; the best state is kept
    and training stops after `config.patience` evaluations without improvement (not before half the steps).
    The held-out windows are the training crop's size: the statistics its instance norms were trained on,
    and an eighth of the activations of a 64^3 window (at feature size 48 these took 0.9 GB, over the 1.5 GB budget).
    With `estimators` (one `QuerySizeEstimator` per query scan) and `S_ml`, from step `config.ti_warmup`
    on, every `config.ti_every` steps the size prior takes its own optimiser step on the mean S_hat of the
    queries. Returns the loss curve (per step), the held-out curve, the stop reason, the steps run and the
    size-prior history; the adapter is left in the state that was kept, in eval mode.
    """
    import torch

    from edgeseg.train.losses import segmentation_loss
    from edgeseg.train.schedule import warmup_cosine
    from edgeseg.train.size_prior import ti_loss

    steps, lr = int(config.steps), float(config.lr)
    opt = torch.optim.AdamW([p for p in adapter.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    warm = max(1, int(round(config.warmup * steps)))


    estimators = list(estimators)
    heldout = list(heldout)
    losses: list[float] = []
    evals: list[dict] = []
    history: list[dict] = []
    best: tuple[float, int, dict] | None = None
    stopped = "step budget"
    deadline = None if config.max_minutes is None else time.perf_counter() + 60.0 * config.max_minutes
    rng = np.random.default_rng(config.seed + 1)
    adapter.train()

    def evaluate(step: int) -> bool:
        """Record the held-out Dice; keep the best state; True when patience has run out."""
        nonlocal best
        adapter.eval()
        d = heldout_dice(adapter, heldout, (int(config.crop),) * 3)
        adapter.train()
        evals.append({"step": step, "dice": round(d, 4)})
        if best is None or d > best[0]:
            best = (d, step, copy.deepcopy(adapter.state_dict()))
        # never before half the budget: a structure the features only slowly reveal (the esophagus) scores 0
        # on the left-out support for its first evaluations, and stopping there kept an untrained adapter
        return (step >= steps // 2
                and len(evals) - 1 - next(i for i, e in enumerate(evals) if e["step"] == best[1]) >= config.patience)

    step = 0
    for step in range(1, steps + 1):
        for group in opt.param_groups:
            group["lr"] = warmup_cosine(step - 1, steps, warm, lr)
        kinds = ["positive"] + [sampler.kind_of(float(rng.random()), config.neighbour_fraction, config.negative_fraction)
                                for _ in range(config.batch_size - 1)]
        batch = [sampler.sample(k) for k in kinds]
        feats = [torch.from_numpy(np.stack([b[0][k] for b in batch])) for k in range(len(batch[0][0]))]
        target = torch.from_numpy(np.stack([b[1] for b in batch]))[:, None]
        loss = segmentation_loss(adapter(*feats), target, config.loss)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if estimators and S_ml is not None and step >= int(config.ti_warmup or 0) and step % config.ti_every == 0:
            s_hat = sum(est(adapter) for est in estimators) / len(estimators)
            penalty = config.ti_lambda * ti_loss(s_hat, S_ml, config.ti_gamma)
            opt.zero_grad(set_to_none=True)
            penalty.backward()
            opt.step()  # the release's separate size-prior step
            after = None
            if record_after:
                with torch.no_grad():  # what this step did, recorded so it can be checked
                    after = sum(float(est.exact_ml(adapter)) for est in estimators) / len(estimators)
            history.append({"step": step, "S_hat_ml": float(s_hat.detach()), "S_hat_after_ml": after,
                            "loss": float(penalty.detach())})
        if progress:
            progress(step, steps, float(np.mean(losses[-20:])))
        if heldout and (step % config.eval_every == 0 or step == steps) and evaluate(step):
            stopped = f"held-out Dice not better for {config.patience} evaluations (best at step {best[1]})"
            break
        if deadline is not None and time.perf_counter() > deadline and step < steps:
            stopped = f"--max-minutes {config.max_minutes:g} reached after {step} of {steps} steps"
            if heldout:
                evaluate(step)
                stopped += f"; kept the best held-out state (step {best[1]})"
            break
    if best is not None:
        adapter.load_state_dict(best[2])
    adapter.eval()
    return {"losses": losses, "steps_run": step, "stopped": stopped, "heldout": evals,
            "kept_step": best[1] if best is not None else step,
            "heldout_dice": best[0] if best is not None else None, "size_prior_history": history}


def adapt(cache_dir: str | Path, out: str | Path, config: AdaptConfig, *, force: bool = False,
          progress: Callable[[int, int, float], None] | None = None, log: Callable[[str], None] = lambda m: None) -> dict:
    """Train `config.adapter` on the cache in `cache_dir`; write the adapter folder `out`; return its manifest."""
    import torch

    from edgeseg.adapters import CUT_OF, build_adapter, count_trainable, resolve_kind
    from edgeseg.features import open_cache
    from edgeseg.runtime.host import idle_cores
    from edgeseg.runtime.artifacts.adapter import AdapterIO, AdapterManifest
    from edgeseg.runtime.artifacts.trunk import TrunkManifest
    from edgeseg.train.size_prior import QuerySizeEstimator, target_size_ml

    config.check()
    kind = resolve_kind(config.adapter)
    out = Path(out)
    # only an edgeseg adapter is ever replaced (with --force); a user's files there are refused, even with it
    AdapterManifest.claim(out, force=force, dry_run=True)
    cache = open_cache(cache_dir, verify_files=True)  # every file's sha256: junk is refused before training
    if cache.cut != CUT_OF[kind]:
        raise InputError(f"the {kind} adapter trains on the {CUT_OF[kind]} cut but this cache holds {cache.cut} features",
                         path=cache_dir, fix=f"export a trunk with --cut {CUT_OF[kind]} and cache with it")
    if config.ti and not cache.queries:
        raise InputError("--ti needs a cached query scan (the unlabelled scan the size prior looks at)", path=cache_dir,
                         fix="rebuild the cache with --query SCAN")

    cache.check_features()  # NaN/Inf refused with exit 2, before anything is trained or written
    torch.manual_seed(config.seed)
    threads = config.threads or idle_cores()
    torch.set_num_threads(threads)
    trunk_manifest = TrunkManifest.from_folder(cache.trunk_dir, verify_files=False)
    model_spec = trunk_manifest.model_spec
    config = config.resolved(model_spec["feature_size"])  # the crop default depends on the trunk's width
    class_names = model_spec["class_names"]
    class_index = class_names.index(cache.organ) if cache.organ in class_names else None
    pretrained = None
    if kind == "ft-last" or class_index is not None:  # the head starts from the organ's pretrained row
        from edgeseg.model.checkpoint import load_exported_checkpoint

        # a complete checkpoint only (allow_partial=False): the head row or block must be trained weights
        pretrained = load_exported_checkpoint(trunk_manifest, cache.trunk_dir, allow_partial=False,
                                              needed_for=f"{kind} initialises from the trunk's checkpoint")
    adapter = build_adapter(kind, feature_size=model_spec["feature_size"], pretrained=pretrained,
                            class_index=class_index)
    del pretrained  # the whole checkpoint model (250 MB at feature size 48): only its head row / block was needed
    init = {"block": "checkpoint decoder1" if kind == "ft-last" else ("identity" if kind == "spatial" else "random"),
            "head": f"pretrained head row {class_index} ({cache.organ})" if class_index is not None else "random"}
    train_entries, heldout = split_holdout(cache.supports, config)
    rng = np.random.default_rng(config.seed)
    sampler = CropSampler(train_entries, config.crop, rng, align=2 if cache.cut == "pre-decoder1" else 1)
    if heldout:
        log(f"support {heldout[0].case_id} left out to pick the kept state (K = {len({e.case_id for e in cache.supports})})")

    size_prior = None
    if config.ti:
        masks = [np.asarray(e.label) > 0 for e in cache.supports if e.role == "positive"]
        estimate = target_size_ml(masks, [e.voxel_ml for e in cache.supports if e.role == "positive"])
        query = cache.queries[0]
        estimator = QuerySizeEstimator(query.features, voxel_volume_ml=query.voxel_ml, pool=query.pool, seed=config.seed)
        size_prior = {"S_ml": estimate.S_ml, "support_ml": estimate.per_support_ml, "kept": list(estimate.kept),
                      "query": query.case_id, "history": []}
        log(f"size prior: target S = {estimate.S_ml:.1f} mL from {len(estimate.kept)} support(s)")

    t0 = time.perf_counter()
    fit = fit_adapter(adapter, sampler, config, heldout=heldout,
                      estimators=[estimator] if size_prior is not None else [],
                      S_ml=size_prior["S_ml"] if size_prior is not None else None, progress=progress)
    losses, stopped = fit["losses"], fit["stopped"]
    if size_prior is not None:
        size_prior["history"] = fit["size_prior_history"]
    wall = time.perf_counter() - t0
    log(f"trained {kind} ({count_trainable(adapter):,} parameters) for {fit['steps_run']} steps in {wall:.1f} s on "
        f"{threads} thread(s); kept step {fit['kept_step']}"
        + (f" (held-out Dice {fit['heldout_dice']:.3f})" if fit["heldout_dice"] is not None else "")
        + f"; stop: {stopped}")

    if not all(bool(torch.isfinite(p).all()) for p in adapter.parameters()):
        raise InputError(f"training diverged: the {kind} adapter's weights are NaN or Inf after {fit['steps_run']} steps "
                         f"at lr {config.lr:g}; nothing was written", path=out, fix="lower --lr (e.g. by 10x)")
    from edgeseg.export.adapter import save_adapter

    AdapterManifest.claim(out, force=force)  # trained: the old adapter's files go
    k = max(1, len(losses) // 200)  # the curve, thinned to at most ~200 points
    manifest = AdapterManifest(
        adapter=kind, organ=cache.organ, cut=cache.cut, feature_size=model_spec["feature_size"],
        trunk_manifest_sha256=cache.trunk_manifest_hash, io=AdapterIO(trunk_manifest.io.outputs, "logits"),
        extra={
            "init": init, "trainable_params": count_trainable(adapter),
            "config": {**config.to_dict(), "threads": threads},
            "cache": {"path": str(Path(cache_dir).resolve()), "manifest_sha256": cache.manifest_hash},
            "loss_curve": [round(float(np.mean(losses[i:i + k])), 6) for i in range(0, len(losses), k)],
            "loss_curve_every": k, "steps": fit["steps_run"], "kept_step": fit["kept_step"], "stopped": stopped,
            "heldout": {"case": heldout[0].case_id, "dice": fit["heldout_dice"], "curve": fit["heldout"]} if heldout else None,
            "wall_seconds": round(wall, 2), "threads": threads, "peak_rss_gib": peak_rss_gib(), "size_prior": size_prior,
        })
    return dict(save_adapter(adapter, out, manifest, force=force).record)
