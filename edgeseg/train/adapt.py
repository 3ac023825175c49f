"""`edgeseg adapt`: train a few-shot adapter on cached trunk features, optionally with the size prior.

The trunk never runs here: crops are read from the memory-mapped feature cache, so memory does not
grow with the number or size of the support scans. The recipe follows the FSEFT code release:
AdamW (weight decay 0), one linear warm-up epoch then cosine decay, Dice loss (+ BCE on request),
crops sampled 1:1 around the organ and in negative windows (six per support scan per epoch), and the
release's early stop (the training loss, smoothed over a window, has not improved for `patience`
epochs; at most `max_epochs`). With `ti=True` the transductive size prior (the poster's band on the
query's predicted organ volume, in mL) takes a separate optimiser step each epoch after a warm-up.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from edgeseg.runtime.errors import InputError
from edgeseg.runtime.host import peak_rss_gib

ADAPTER_KIND = "adapter"


@dataclass(frozen=True)
class AdaptConfig:
    adapter: str = "lp"
    lr: float | None = None  # None: the release's rate for the adapter (LP 1e-2, others 1e-4)
    max_epochs: int = 200
    patience: int = 20  # epochs without improvement of the smoothed loss
    smooth: int = 5  # epochs in the moving average the plateau test looks at
    crops_per_case: int = 6  # per support scan per epoch, half around the organ, half negative
    crop: int = 64  # crop side in voxels (clipped to the cached regions)
    batch_size: int = 2
    loss: str = "dice"  # "dice" or "dice+bce"
    ti: bool = False
    ti_gamma: float = 0.3  # band half-width (the release's margin)
    ti_lambda: float = 0.1
    ti_warmup: int = 50  # epochs before the size prior starts (the release's)
    seed: int = 0
    threads: int | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class CropSampler:
    """Crops from the cache: positives centred on a random organ voxel, negatives anywhere in a negative window.

    For the pre-decoder1 cut the crop starts on even voxels so that the half-resolution `dec0` crop is exact.
    """

    def __init__(self, entries, crop: int, rng: np.random.Generator, align: int):
        self.pos = [e for e in entries if e.role == "positive"]
        self.neg = [e for e in entries if e.role == "negative"] or self.pos
        if not self.pos:
            raise InputError("the cache holds no organ region", fix="rebuild the cache with supports that contain the organ")
        self.crop, self.rng, self.align = crop, rng, align
        self._fg = {id(e): np.argwhere(np.asarray(e.label) > 0) for e in self.pos}

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

    def sample(self, positive: bool):
        pool = self.pos if positive else self.neg
        entry = pool[int(self.rng.integers(len(pool)))]
        fg = self._fg.get(id(entry))
        centre = fg[int(self.rng.integers(len(fg)))] if positive and fg is not None and len(fg) else None
        start, size = self._start(entry, centre), self._size(entry)
        feats = []
        full = entry.label.shape
        for f in entry.features:
            scale = full[0] // f.shape[1] if f.shape[1] else 1
            sl = tuple(slice(s // scale, (s + n) // scale) for s, n in zip(start, size))
            feats.append(np.asarray(f[(slice(None), *sl)], dtype=np.float32))
        label = np.asarray(entry.label[tuple(slice(s, s + n) for s, n in zip(start, size))], dtype=np.float32)
        return feats, label


def _plateaued(losses: list[float], smooth: int, patience: int) -> bool:
    """The release's stop: the smoothed training loss has not improved for `patience` epochs."""
    if len(losses) < smooth + patience:
        return False
    avg = np.convolve(losses, np.ones(smooth) / smooth, mode="valid")
    return int(np.argmin(avg)) < len(avg) - patience


def fit_adapter(adapter, sampler, config: AdaptConfig, *, lr: float, steps_per_epoch: int, estimators=(),
                S_ml: float | None = None, progress: Callable[[int, int, float], None] | None = None,
                record_after: bool = True) -> dict:
    """The training loop shared by `edgeseg adapt` and the few-shot protocol: returns losses, stop reason and
    the size-prior history.

    `sampler.sample(positive)` gives ``(features, label)``; the batch alternates organ-centred and negative
    crops. Each epoch is `steps_per_epoch` steps: the first is a linear warm-up, then cosine to 0 over
    `config.max_epochs`. With `estimators` (one `QuerySizeEstimator` per query scan) and `S_ml`, from
    epoch `config.ti_warmup` on, each epoch ends with the release's separate size-prior step on the mean
    S_hat of the queries (one query: the release's own; several: the size prior over the query set).
    `record_after` also records S_hat after each size-prior step (one more pass over the queries).
    """
    import torch

    from edgeseg.train.losses import segmentation_loss
    from edgeseg.train.size_prior import ti_loss

    opt = torch.optim.AdamW([p for p in adapter.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)

    def lr_at(epoch: int, step: int) -> float:  # one linear warm-up epoch, then cosine to 0
        if epoch == 0:
            return lr * (step + 1) / steps_per_epoch
        return 0.5 * lr * (1 + math.cos(math.pi * (epoch - 1) / max(1, config.max_epochs - 1)))

    estimators = list(estimators)
    losses: list[float] = []
    history: list[dict] = []
    stopped = "max_epochs"
    adapter.train()
    for epoch in range(config.max_epochs):
        epoch_loss = 0.0
        for step in range(steps_per_epoch):
            for group in opt.param_groups:
                group["lr"] = lr_at(epoch, step)
            batch = [sampler.sample(positive=(i % 2 == 0)) for i in range(config.batch_size)]
            feats = [torch.from_numpy(np.stack([b[0][k] for b in batch])) for k in range(len(batch[0][0]))]
            target = torch.from_numpy(np.stack([b[1] for b in batch]))[:, None]
            logits = adapter(*feats)
            loss = segmentation_loss(logits, target, config.loss)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            epoch_loss += float(loss.detach()) / steps_per_epoch
        losses.append(epoch_loss)
        if estimators and S_ml is not None and epoch >= config.ti_warmup:
            s_hat = sum(est(adapter) for est in estimators) / len(estimators)
            penalty = config.ti_lambda * ti_loss(s_hat, S_ml, config.ti_gamma)
            opt.zero_grad(set_to_none=True)
            penalty.backward()
            opt.step()  # the release's separate size-prior step
            after = None
            if record_after:
                with torch.no_grad():  # what this step did, recorded so it can be checked
                    after = sum(float(est.exact_ml(adapter)) for est in estimators) / len(estimators)
            history.append({"epoch": epoch, "S_hat_ml": float(s_hat.detach()), "S_hat_after_ml": after,
                            "loss": float(penalty.detach())})
        if progress:
            progress(epoch + 1, config.max_epochs, epoch_loss)
        if _plateaued(losses, config.smooth, config.patience):
            stopped = f"plateau at epoch {epoch + 1}"
            break
    adapter.eval()
    return {"losses": losses, "stopped": stopped, "size_prior_history": history}


def adapt(cache_dir: str | Path, out: str | Path, config: AdaptConfig, *, force: bool = False,
          progress: Callable[[int, int, float], None] | None = None, log: Callable[[str], None] = lambda m: None) -> dict:
    """Train `config.adapter` on the cache in `cache_dir`; write the adapter folder `out`; return its manifest."""
    import torch

    from edgeseg.adapters import CUT_OF, LR, build_adapter, count_trainable, resolve_kind
    from edgeseg.cache import open_cache
    from edgeseg.runtime.manifest import MANIFEST_NAME, content_hash, read_manifest
    from edgeseg.train.size_prior import QuerySizeEstimator, target_size_ml

    kind = resolve_kind(config.adapter)
    out = Path(out)
    if (out / MANIFEST_NAME).exists() and not force:
        raise InputError("already holds an adapter", path=out, fix="pass --force to replace it, or choose another --out")
    cache = open_cache(cache_dir)
    if cache.cut != CUT_OF[kind]:
        raise InputError(f"the {kind} adapter trains on the {CUT_OF[kind]} cut but this cache holds {cache.cut} features",
                         path=cache_dir, fix=f"export a trunk with --cut {CUT_OF[kind]} and cache with it")
    if config.ti and not cache.queries:
        raise InputError("--ti needs a cached query scan (the unlabelled scan the size prior looks at)", path=cache_dir,
                         fix="rebuild the cache with --query SCAN")
    if config.loss not in ("dice", "dice+bce"):
        raise InputError(f"loss {config.loss!r} is not one of dice, dice+bce", fix="use --loss dice or dice+bce")

    torch.manual_seed(config.seed)
    if config.threads:
        torch.set_num_threads(config.threads)
    trunk_manifest = read_manifest(cache.trunk_dir, "trunk", verify_files=False)
    model_spec = trunk_manifest["model_spec"]
    class_names = model_spec["class_names"]
    class_index = class_names.index(cache.organ) if cache.organ in class_names else None
    pretrained = None
    if kind == "ft-last" or class_index is not None:  # the head starts from the organ's pretrained row
        from edgeseg.model.checkpoint import load_checkpoint
        from edgeseg.model.spec import ModelSpec
        from edgeseg.runtime.manifest import sha256_file

        ckpt = Path(trunk_manifest["checkpoint"]["path"])
        if not ckpt.exists() or sha256_file(ckpt) != trunk_manifest["checkpoint"]["sha256"]:
            raise InputError(f"{kind} initialises from the trunk's checkpoint, which is missing or changed", path=ckpt,
                             fix="put the checkpoint the trunk was exported from back at that path")
        pretrained, _, _ = load_checkpoint(ckpt, ModelSpec.from_dict(model_spec))
    adapter = build_adapter(kind, feature_size=model_spec["feature_size"], pretrained=pretrained,
                            class_index=class_index)
    init = {"block": "checkpoint decoder1" if kind == "ft-last" else ("identity" if kind == "spatial" else "random"),
            "head": f"pretrained head row {class_index} ({cache.organ})" if class_index is not None else "random"}
    lr = config.lr if config.lr is not None else LR[kind]
    rng = np.random.default_rng(config.seed)
    sampler = CropSampler(cache.supports, config.crop, rng, align=2 if cache.cut == "pre-decoder1" else 1)
    n_cases = len({e.case_id for e in cache.supports})
    crops_per_epoch = max(2, config.crops_per_case * n_cases)
    steps_per_epoch = math.ceil(crops_per_epoch / config.batch_size)

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
    fit = fit_adapter(adapter, sampler, config, lr=lr, steps_per_epoch=steps_per_epoch,
                      estimators=[estimator] if size_prior is not None else [],
                      S_ml=size_prior["S_ml"] if size_prior is not None else None, progress=progress)
    losses, stopped = fit["losses"], fit["stopped"]
    if size_prior is not None:
        size_prior["history"] = fit["size_prior_history"]
    wall = time.perf_counter() - t0
    adapter.eval()
    log(f"trained {kind} ({count_trainable(adapter):,} parameters) for {len(losses)} epochs in {wall:.1f} s; "
        f"final loss {losses[-1]:.4f}; stop: {stopped}")

    from edgeseg.export.adapter import save_adapter

    body = {
        "adapter": kind, "organ": cache.organ, "cut": cache.cut, "init": init, "trainable_params": count_trainable(adapter),
        "feature_size": model_spec["feature_size"], "config": {**config.to_dict(), "lr": lr},
        "cache": {"path": str(Path(cache_dir).resolve()), "manifest_sha256": content_hash(cache.manifest)},
        "trunk_manifest_sha256": cache.trunk_manifest_hash,
        "loss_curve": [round(v, 6) for v in losses], "epochs": len(losses), "stopped": stopped,
        "wall_seconds": round(wall, 2), "peak_rss_gib": peak_rss_gib(), "size_prior": size_prior,
        "io": {"inputs": list(trunk_manifest["io"]["outputs"]), "output": "logits"},
    }
    return save_adapter(adapter, out, body, force=force)
