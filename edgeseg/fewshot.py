"""`edgeseg fewshot`: the FSEFT paper's few-shot experiment, run on phantoms from another scanner.

Protocol (the paper's, scaled to 2 CPU cores; every scaling is a field of `FewshotConfig`, recorded):

- Data: `n_cases` phantoms from the TARGET domain (other noise, HU offset, contrast phases, spacing) made
  with `data_seed`, brought to the model grid by the package's preprocessing. For each organ, the cases
  that hold it (at least `min_organ_ml`) are split once: the first `n_query` are the queries (the same
  for every method, K and seed), the rest the support pool. Supports and queries never overlap.
- Draw: for seed s and K, `K` supports drawn from the pool without replacement by
  ``default_rng([s, K, organ index])``: the same seed gives the same draw, another seed another one.
- Features: the frozen model runs once per case (sliding window, Gaussian blending) and its features at
  both cuts and its head's probabilities are stored (fp16, memory-mapped; each case written whole or not
  at all by `edgeseg.features.cases`), so the adapters never re-run the trunk, as `edgeseg cache` does for
  one organ; a run's supports become the `CacheEntry` regions that cache would store.
- Settings (the paper's two): (A) organs the foundation model was pretrained on (its head knows them),
  adapted on the other scanner, against the pretrained head's own target Dice (``generalization``);
  (B) truly novel structures, never labelled in pretraining. `results.json` lists them as
  ``base_organs`` and ``novel_organs`` (decided by the checkpoint's head, not by a list here).
- Methods: ``generalization`` (the pretrained head as is; base organs only), ``scratch`` (a randomly
  initialised SwinUNETR with a one-organ head), ``ft`` (the whole pretrained model fine-tuned), ``ft-last``,
  ``lp``, ``spatial``, ``decoder-block``, ``decoder-block+ti`` (with the transductive size prior on the
  queries). Adapters train with exactly `edgeseg adapt`'s defaults (`AdaptConfig().resolved(feature_size)`: its step
  budget, learning rate, crops, organ / neighbour / negative mix, and with K >= 5 one support left out
  to pick the kept state) on the regions `edgeseg cache` stores (organ box + margin, negative windows in
  the body). ``scratch`` and ``ft`` are not in the default methods: on 2 CPU cores a budget that means
  anything for 3.8M parameters (hundreds of 64^3 steps) costs about as much as pretraining, per run;
  `--methods` adds them with `model_steps` steps.
- Metric: Dice of the 0.5-thresholded probabilities on each query, on the model grid, predicted by
  sliding windows of the model's window; the mean over queries is one run's DSC; the table shows the
  mean (and std) over seeds.
- Each finished run is appended to ``runs.jsonl``; a rerun with the same configuration skips what is done,
  so an interrupted protocol resumes.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from edgeseg.features.cases import remove_leftovers, save_npy, write_durable, writing_case
from edgeseg.features.reader import CacheEntry, map_array
from edgeseg.features.regions import organ_bbox, region_slices
from edgeseg.features.regions import support_regions
from edgeseg.features.writer import CacheConfig
from edgeseg.runtime.atomic import atomic_path, refuse_link, write_small_text, write_text_atomic
from edgeseg.runtime.errors import InputError
from edgeseg.paper_claims import check_claims, check_goals, render_claims

METHODS: tuple[str, ...] = (
    "generalization", "scratch", "ft", "ft-last", "lp", "spatial", "decoder-block", "decoder-block+ti",
)
# scratch and FT train the whole 3.8M-parameter model: a real budget costs about a pretraining per run on
# 2 CPU cores, so they run only when asked for (--methods).
DEFAULT_METHODS: tuple[str, ...] = tuple(m for m in METHODS if m not in ("scratch", "ft"))
# Setting A: organs the stand-in was pretrained on (two of them small), on the other scanner;
# setting B: structures never labelled in pretraining.
SETTING_A: tuple[str, ...] = ("liver", "kidney_left", "pancreas", "gallbladder")
SETTING_B: tuple[str, ...] = ("inferior_vena_cava", "esophagus")
# scratch / FT learning rates (the adapters use `edgeseg adapt`'s recipe)
MODEL_LR: dict[str, float] = {"scratch": 1e-3, "ft": 3e-4}
RUNS_NAME = "runs.jsonl"
FEATURES_DIR = "features"
_TAPS = ("enc0", "dec0", "feat", "probs")
# the regions `edgeseg cache` stores by default: its margin around the organ box, its negative windows
REGION_MARGIN_MM = CacheConfig.margin_mm
NEGATIVES_PER_CASE = CacheConfig.negatives_per_case
MIN_BODY_FRACTION = CacheConfig.min_body_fraction


@dataclass(frozen=True)
class FewshotConfig:
    organs: tuple[str, ...] = SETTING_A + SETTING_B
    ks: tuple[int, ...] = (1, 5, 10)
    seeds: tuple[int, ...] = (0, 1, 2)
    methods: tuple[str, ...] = DEFAULT_METHODS
    n_cases: int = 22
    n_query: int = 5
    data_seed: int = 2026  # never the pretraining's dataset seed: other patients, another scanner
    domain: str = "target"
    min_organ_ml: float = 1.0
    batch_size: int = 2
    model_crop: int = 64  # scratch and FT: 32 would leave SwinUNETR's bottleneck 1 voxel, where instance norm is undefined
    model_steps: int = 300  # scratch and FT
    overlap: float = 0.25
    ti_gamma: float = 0.3
    ti_lambda: float = 0.1
    threads: int | None = None
    gen_max_voxels: int = 6_000_000

    def to_dict(self, feature_size: int) -> dict:
        """The settings, with `edgeseg adapt`'s defaults for a trunk of `feature_size` (its crop depends on it)."""
        d = dataclasses.asdict(self)
        for key in ("organs", "ks", "seeds", "methods"):
            d[key] = list(d[key])
        from edgeseg.train.adapt import AdaptConfig

        d["adapt_defaults"] = {k: AdaptConfig(adapter=k).resolved(feature_size).to_dict()
                              for k in ("lp", "spatial", "decoder-block", "ft-last")}
        d["model_lr"] = dict(MODEL_LR)
        return d

    def check(self) -> None:
        from edgeseg.data.phantom import ORGANS

        bad = [m for m in self.methods if m not in METHODS]
        if bad:
            raise InputError(f"unknown method(s) {bad}", fix=f"choose from {', '.join(METHODS)}")
        unknown = [o for o in self.organs if o not in ORGANS]
        if unknown:
            raise InputError(f"unknown organ(s) {unknown}", fix=f"phantoms label {', '.join(ORGANS)}")
        if not self.ks or min(self.ks) < 1:
            raise InputError(f"ks={list(self.ks)} must be positive support counts", fix="e.g. --k 1,5,10")
        if self.n_query < 1 or self.n_cases < self.n_query + max(self.ks):
            raise InputError(f"n_cases={self.n_cases} cannot hold {self.n_query} queries and K={max(self.ks)} supports",
                             fix=f"use --n-cases >= {self.n_query + max(self.ks)}")
        if self.model_crop % 32 or self.model_crop < 64:
            raise InputError(f"model_crop={self.model_crop} must be a multiple of 32 and at least 64 (SwinUNETR)",
                             fix="use 64 or 96")

    def run_settings(self, feature_size: int) -> dict:
        """What a finished run's result depends on, besides its key: a run made under others is redone."""
        d = self.to_dict(feature_size)
        return {k: d[k] for k in ("n_cases", "n_query", "data_seed", "domain", "min_organ_ml", "batch_size", "model_crop",
                                  "model_steps", "overlap", "ti_gamma", "ti_lambda", "gen_max_voxels", "adapt_defaults",
                                  "model_lr")}


# --- data and splits --------------------------------------------------------------------------------
def split_cases(presence: dict[str, Sequence[str]], organ: str, n_query: int) -> tuple[list[str], list[str]]:
    """(queries, pool) of the cases holding `organ`, in case order: queries first, the pool the rest."""
    holding = list(presence.get(organ, ()))
    if len(holding) <= n_query:
        raise InputError(f"only {len(holding)} phantom(s) hold {organ}; {n_query} queries and at least one support "
                         "are needed", fix="raise --n-cases")
    return holding[:n_query], holding[n_query:]


def draw_supports(pool: Sequence[str], k: int, seed: int, organ_index: int) -> list[str]:
    """K supports from `pool`, without replacement; the same (seed, K, organ) always gives the same draw."""
    if k > len(pool):
        raise InputError(f"K={k} supports asked for but the pool holds {len(pool)} case(s)",
                         fix="raise --n-cases or lower K")
    rng = np.random.default_rng([int(seed), int(k), int(organ_index)])
    return [pool[i] for i in sorted(rng.choice(len(pool), size=k, replace=False))]


@dataclass
class CaseFeatures:
    """One prepared case: image and label map on the model grid, and the frozen model's outputs (memory-mapped)."""

    case_id: str
    folder: Path
    voxel_ml: float

    def _load(self, name: str) -> np.ndarray:
        return map_array(self.folder / f"{name}.npy")

    @property
    def image(self) -> np.ndarray:
        return self._load("image")

    @property
    def labels(self) -> np.ndarray:
        return self._load("labels")

    def mask(self, organ: str) -> np.ndarray:
        from edgeseg.data.phantom import ORGANS

        return (np.asarray(self.labels) == ORGANS.index(organ) + 1).astype(np.uint8)

    def taps(self, name: str) -> np.ndarray:
        return self._load(name)


class _Taps:
    """The frozen model's outputs at once: enc0, dec0 (pre-decoder1 cut), decoder1 features, head probabilities."""

    def __init__(self, model):
        import torch

        from edgeseg.model.swinunetr import Trunk

        self.trunk = Trunk(model, "pre-decoder1").eval()
        self.decoder1, self.out = model.decoder1.eval(), model.out.eval()
        self.torch = torch

    def __call__(self, batch: np.ndarray):
        torch = self.torch
        with torch.no_grad():
            enc0, dec0 = self.trunk(torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)))
            feat = self.decoder1(dec0, enc0)
            probs = torch.sigmoid(self.out(feat))
        return tuple(t.numpy() for t in (enc0, dec0, feat, probs))


def _pad_to(array: np.ndarray, shape: Sequence[int], value=0) -> np.ndarray:
    pads = [(0, 0)] * (array.ndim - 3) + [(0, int(t) - int(s)) for s, t in zip(array.shape[-3:], shape)]
    return np.pad(array, pads, constant_values=value)


def prepare_cases(out: Path, config: FewshotConfig, model, spec, *, progress=None, log=lambda m: None) -> dict:
    """Generate, preprocess and run the frozen model over every case once (resumable: each case is written
    whole or not at all, as `edgeseg cache` writes its cases); returns the case index."""
    from edgeseg.data.phantom import DOMAINS, ORGANS, case_seed, generate_case, label_map
    from edgeseg.runtime.nifti import Scan
    from edgeseg.runtime.preprocess import preprocess_scan, to_model_grid
    from edgeseg.runtime.sliding_window import sliding_window

    if config.domain not in DOMAINS:
        raise InputError(f"domain {config.domain!r} is not one of {sorted(DOMAINS)}", fix="use target or source")
    root = out / FEATURES_DIR
    refuse_link(root)
    root.mkdir(parents=True, exist_ok=True)
    remove_leftovers(root, log)
    taps = _Taps(model)
    window = tuple(spec.preprocess.window)
    voxel_ml = float(np.prod(spec.preprocess.spacing)) / 1000.0
    index = {}
    for i in range(config.n_cases):
        cid = f"t{i:04d}"
        folder = root / cid
        info_path = folder / "case.json"
        if not info_path.exists():
            case = generate_case(case_seed(config.data_seed, i), DOMAINS[config.domain], max_voxels=config.gen_max_voxels)
            scan = Scan(path=Path(f"<phantom {cid}>"), data=case.ct.astype(np.float32), affine=case.affine,
                        header=None)  # type: ignore[arg-type]
            prepared = preprocess_scan(scan, spec.preprocess)
            labels = to_model_grid(label_map(case), prepared.transform, order=0).astype(np.uint8)
            # pad to at least one window and even sizes: dec0 (half resolution) then nests exactly
            shape = [max(w, s + (s % 2)) for s, w in zip(labels.shape, window)]
            image = _pad_to(prepared.image, shape, 0.0).astype(np.float32)
            labels = _pad_to(labels, shape, 0)
            outs = sliding_window(image[None], window, taps, overlap=config.overlap, align=2, out_dtype=np.float16)
            refuse_link(folder, doing="replaces a folder")
            if folder.exists():
                shutil.rmtree(folder)  # never completed (no case.json): written again from the start
            with writing_case(folder) as partial:  # a case is complete only once renamed
                save_npy(partial / "image.npy", image.astype(np.float16))
                save_npy(partial / "labels.npy", labels)
                for name, arr in zip(_TAPS, outs):
                    save_npy(partial / f"{name}.npy", arr)
                vols = {o: float((labels == j + 1).sum() * voxel_ml) for j, o in enumerate(ORGANS)}
                write_durable(partial / "case.json", json.dumps({
                    "case_id": cid, "seed": case.meta["seed"], "shape": shape, "phase": case.meta.get("phase"),
                    "spacing_native": case.meta.get("spacing"), "volumes_ml": vols}))
        index[cid] = json.loads(info_path.read_text())
        if progress:
            progress(i + 1, config.n_cases)
    log(f"{config.n_cases} {config.domain} phantoms prepared and run through the frozen model once")
    return index


# --- one run ------------------------------------------------------------------------------------------
def support_entries(case: "CaseFeatures", organ: str, names: Sequence[str], window: Sequence[int],
                    spacing: Sequence[float], seed: int) -> list[CacheEntry]:
    """The `CacheEntry` regions `edgeseg cache` would store for this support, with its default margin and negative
    windows (`edgeseg.features.regions.support_regions`), as views of the case's arrays.

    `names`: the arrays to slice ("image", or the trunk taps); half-resolution taps (dec0) are sliced at
    half the box, which is exact because the boxes start and end on even voxels.
    """
    mask = case.mask(organ)
    bbox = organ_bbox(mask)
    if bbox is None:
        raise InputError(f"support {case.case_id} holds no {organ}", fix="choose supports that hold the organ")
    arrays = [np.asarray(case.image)[None] if n == "image" else case.taps(n) for n in names]
    regions = support_regions(np.asarray(case.image), mask, bbox, spacing, window, margin_mm=REGION_MARGIN_MM,
                              negatives=NEGATIVES_PER_CASE, min_body_fraction=MIN_BODY_FRACTION,
                              rng=np.random.default_rng([int(seed), int(case.case_id.lstrip("t") or 0)]))
    organ_ml = float(mask.sum()) * case.voxel_ml
    out = []
    for r in regions:
        feats = tuple(arr[(slice(None), *region_slices(r.box, max(1, mask.shape[0] // arr.shape[1])))] for arr in arrays)
        out.append(CacheEntry(case_id=case.case_id, name=r.name, role=r.role, box=r.box, voxel_ml=case.voxel_ml,
                              organ_ml=organ_ml, spacing_mm=tuple(spacing), features=feats,
                              label=mask[region_slices(r.box)], info=r.info))
    return out


class _WholeModel:
    """Builds the one-organ SwinUNETR that `scratch` and `ft` train."""

    @staticmethod
    def build(spec, pretrained=None, class_index: int | None = None):
        import torch

        from edgeseg.model.swinunetr import build_swinunetr

        one = dataclasses.replace(spec, out_channels=1, class_names=("organ",))
        model = build_swinunetr(one)
        if pretrained is not None:
            sd = {k: v for k, v in pretrained.state_dict().items() if not k.startswith("out.")}
            model.load_state_dict(sd, strict=False)
            if class_index is not None:
                with torch.no_grad():
                    model.out.conv.conv.weight.copy_(pretrained.out.conv.conv.weight[class_index:class_index + 1])
                    model.out.conv.conv.bias.copy_(pretrained.out.conv.conv.bias[class_index:class_index + 1])
        return model


def run_method(method: str, organ: str, supports: list[CaseFeatures], queries: list[CaseFeatures], config: FewshotConfig,
               spec, pretrained, *, seed: int) -> dict:
    """Train (unless `generalization`) on the supports and return Dice per query, trainable parameters, time."""
    import torch

    from edgeseg.adapters import build_adapter, count_trainable
    from edgeseg.train.adapt import AdaptConfig, CropSampler, fit_adapter, predict_features, split_holdout
    from edgeseg.train.losses import dice_score
    from edgeseg.train.size_prior import QuerySizeEstimator, target_size_ml

    window = tuple(spec.preprocess.window)
    spacing = tuple(spec.preprocess.spacing)
    class_index = spec.class_index(organ)
    t0 = time.perf_counter()
    if method == "generalization":
        if class_index is None:
            return {"skipped": f"the pretrained head has no {organ} channel (a novel organ)"}
        dsc = [dice_score(np.asarray(q.taps("probs")[class_index]) > 0.5, q.mask(organ)) for q in queries]
        return {"dsc_per_query": dsc, "trainable_params": 0, "train_seconds": 0.0,
                "seconds": round(time.perf_counter() - t0, 2)}

    torch.manual_seed(seed)
    kind = "decoder-block" if method == "decoder-block+ti" else method
    ti = method == "decoder-block+ti"
    if method in ("scratch", "ft"):
        module = _WholeModel.build(spec, pretrained if method == "ft" else None,
                                   class_index if method == "ft" else None)
        names: tuple[str, ...] = ("image",)
        adapt_config = AdaptConfig(adapter="lp", steps=config.model_steps, lr=MODEL_LR[method], crop=config.model_crop,
                                   batch_size=config.batch_size, seed=seed).resolved(spec.feature_size)
        align = 1
    else:
        module = build_adapter(kind, feature_size=spec.feature_size, pretrained=pretrained, class_index=class_index)
        names = ("feat",) if kind in ("lp", "spatial") else ("enc0", "dec0")
        adapt_config = AdaptConfig(adapter=kind, ti=ti, ti_gamma=config.ti_gamma, ti_lambda=config.ti_lambda,
                                   seed=seed).resolved(spec.feature_size)  # exactly `edgeseg adapt`'s defaults
        align = 2 if kind in ("decoder-block", "ft-last") else 1
    entries = [e for s in supports for e in support_entries(s, organ, names, window, spacing, seed)]
    train_entries, heldout = split_holdout(entries, adapt_config)
    sampler = CropSampler(train_entries, int(adapt_config.crop), np.random.default_rng(seed), align=align)
    estimators, S = [], None
    size_prior = None
    if ti:
        estimate = target_size_ml([s.mask(organ) for s in supports], [s.voxel_ml for s in supports])
        S = estimate.S_ml
        estimators = [QuerySizeEstimator((q.taps("enc0"), q.taps("dec0")), voxel_volume_ml=q.voxel_ml, pool=1,
                                         chunk=window, grad_chunks=2, seed=seed) for q in queries]
        size_prior = {"S_ml": round(S, 2), "method": estimate.method}
    fit = fit_adapter(module, sampler, adapt_config, heldout=heldout, estimators=estimators, S_ml=S,
                      record_after=False)
    train_seconds = time.perf_counter() - t0
    dsc = []
    for q in queries:
        arrays = [np.asarray(q.image)[None]] if names == ("image",) else [q.taps(n) for n in names]
        dsc.append(dice_score(predict_features(module, arrays, window, overlap=config.overlap) > 0.5, q.mask(organ)))
    record = {"dsc_per_query": dsc, "trainable_params": count_trainable(module),
              "train_seconds": round(train_seconds, 2), "seconds": round(time.perf_counter() - t0, 2),
              "final_loss": round(float(np.mean(fit["losses"][-20:])), 4), "steps_run": fit["steps_run"],
              "kept_step": fit["kept_step"], "heldout_dice": fit["heldout_dice"], "stopped": fit["stopped"]}
    if size_prior is not None:
        size_prior["history"] = fit["size_prior_history"]
        record["size_prior"] = size_prior
    return record


# --- the protocol -------------------------------------------------------------------------------------
def run_key(organ: str, k: int, seed: int, method: str) -> str:
    return f"{organ}|K={k}|seed={seed}|{method}"


def read_runs(path: Path, settings: dict) -> dict[str, dict]:
    """Finished runs made under the same settings (a torn last line from a kill is ignored)."""
    done: dict[str, dict] = {}
    if not path.exists():
        return done
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if rec.get("settings") == settings:
            done[rec["key"]] = rec
    return done


def plan_runs(config: FewshotConfig, presence: dict[str, list[str]]) -> list[dict]:
    """Every (seed, organ, K, method) run with its supports and queries, seed-major (one seed completes a table)."""
    from edgeseg.data.phantom import ORGANS

    plan = []
    for seed in config.seeds:
        for organ in config.organs:
            queries, pool = split_cases(presence, organ, config.n_query)
            for k in config.ks:
                supports = draw_supports(pool, k, seed, ORGANS.index(organ))
                for method in config.methods:
                    plan.append({"key": run_key(organ, k, seed, method), "organ": organ, "k": k, "seed": seed,
                                 "method": method, "supports": supports, "queries": queries})
    return plan


def run_protocol(checkpoint: str | Path, out: str | Path, config: FewshotConfig = FewshotConfig(), *,
                 progress: Callable[[str, int, int], None] | None = None, log: Callable[[str], None] = lambda m: None,
                 report_only: bool = False) -> dict:
    """Run (or resume) the protocol into `out`; returns the summary (also written as results.json, table.md, plot).

    `report_only`: run nothing, summarise the runs finished so far (the protocol spans sessions on a CPU);
    the summary says how many of the planned runs it holds (`complete`, `runs_planned`)."""
    import torch

    from edgeseg.model.checkpoint import load_checkpoint, sha256_file
    from edgeseg.runtime.host import PeakRssDelta, host_description

    config.check()
    if config.threads:
        torch.set_num_threads(config.threads)
    out = Path(out)
    if report_only and not (out / RUNS_NAME).is_file():
        raise InputError(f"has no {RUNS_NAME}: no run has finished there yet, so there is nothing to report",
                         path=out, fix="run `edgeseg fewshot` into it first (without --report)")
    out.mkdir(parents=True, exist_ok=True)
    pretrained, spec, _ = load_checkpoint(checkpoint, need_head=True)
    from edgeseg.runtime.manifest import portable_path

    ckpt = {"path": portable_path(checkpoint), "sha256": sha256_file(checkpoint)}
    settings = {**config.run_settings(spec.feature_size), "checkpoint_sha256": ckpt["sha256"]}
    stamp = out / "features" / "settings.json"
    data_settings = {k: settings[k] for k in ("n_cases", "data_seed", "domain", "gen_max_voxels", "overlap",
                                              "checkpoint_sha256")}
    if stamp.exists() and json.loads(stamp.read_text()) != data_settings:
        raise InputError("holds features made under other settings or by another model", path=out / FEATURES_DIR,
                         fix="choose another --out, or delete that folder to recompute")
    for name in (FEATURES_DIR, RUNS_NAME, "results.json", "table.md", "dsc_vs_k.png"):
        refuse_link(out / name)  # before any work: never write through a link someone planted
    (out / FEATURES_DIR).mkdir(parents=True, exist_ok=True)
    write_text_atomic(stamp, json.dumps(data_settings), force=True)
    t0 = time.perf_counter()
    index = prepare_cases(out, config, pretrained, spec, progress=(lambda d, n: progress("features", d, n)) if progress else None,
                          log=log)
    voxel_ml = float(np.prod(spec.preprocess.spacing)) / 1000.0
    cases = {cid: CaseFeatures(cid, out / FEATURES_DIR / cid, voxel_ml) for cid in index}
    presence = {o: [cid for cid, info in index.items() if info["volumes_ml"][o] >= config.min_organ_ml]
                for o in config.organs}
    plan = plan_runs(config, presence)
    runs_path = out / RUNS_NAME
    done = read_runs(runs_path, settings)
    log(f"{len(plan)} runs planned, {sum(p['key'] in done for p in plan)} already done")
    generalization: dict[str, dict] = {}
    for i, item in enumerate(plan):
        if item["key"] not in done and not report_only:
            gkey = item["organ"]
            if item["method"] == "generalization" and gkey in generalization:
                result = generalization[gkey]  # independent of K and seed: computed once per organ
            else:
                with PeakRssDelta() as mem:
                    result = run_method(item["method"], item["organ"], [cases[c] for c in item["supports"]],
                                        [cases[c] for c in item["queries"]], config, spec, pretrained, seed=item["seed"])
                result["peak_rss_delta_gib"] = mem.delta_gib
                if item["method"] == "generalization":
                    generalization[gkey] = result
            rec = {**item, **result, "settings": settings}
            if "dsc_per_query" in result:
                rec["dsc"] = round(float(np.mean(result["dsc_per_query"])), 4)
            # one line per finished run: a kill loses at most the run in flight
            write_small_text(runs_path, json.dumps(rec) + "\n", append=True)
            done[item["key"]] = rec
        if progress:
            progress("runs", i + 1, len(plan))
    summary = summarise(config, [done[p["key"]] for p in plan if p["key"] in done], spec, ckpt)
    summary["runs_planned"] = len(plan)
    summary["complete"] = summary["runs"] == len(plan)
    summary["claims"], summary["goals"] = check_claims(summary), check_goals(summary)
    summary["wall_seconds_this_invocation"] = round(time.perf_counter() - t0, 1)
    summary["host"] = host_description()
    summary["torch"] = torch.__version__
    summary["threads"] = torch.get_num_threads()
    write_text_atomic(out / "results.json", json.dumps(summary, indent=1) + "\n", force=True)
    write_text_atomic(out / "table.md", render_table(summary), force=True)
    plot_dsc_vs_k(summary, out / "dsc_vs_k.png")
    return summary


def summarise(config: FewshotConfig, records: list[dict], spec, checkpoint: dict) -> dict:
    """Mean and std over seeds of each (method, K, organ) DSC, averages over organs, params, memory, time."""
    cells: dict = {}
    for r in records:
        if "dsc" not in r:
            continue
        cells.setdefault(r["method"], {}).setdefault(str(r["k"]), {}).setdefault(r["organ"], []).append(r)
    table = {}
    for method, by_k in cells.items():
        table[method] = {}
        for k, by_organ in by_k.items():
            organs = {o: {"mean": round(float(np.mean([x["dsc"] for x in rs])), 4),
                          "std": round(float(np.std([x["dsc"] for x in rs])), 4), "n_seeds": len(rs)}
                      for o, rs in by_organ.items()}
            flat = [x for rs in by_organ.values() for x in rs]
            table[method][k] = {"organs": organs, "average": round(float(np.mean([v["mean"] for v in organs.values()])), 4),
                                "trainable_params": flat[0]["trainable_params"],
                                "peak_rss_delta_gib": round(max(x.get("peak_rss_delta_gib", 0.0) for x in flat), 3),
                                "seconds_per_run": round(float(np.mean([x["seconds"] for x in flat])), 1)}
    total = sum(r.get("seconds", 0.0) for r in records)
    return {"kind": "fewshot", "config": config.to_dict(spec.feature_size), "checkpoint": checkpoint,
            "model": {"feature_size": spec.feature_size, "window": list(spec.preprocess.window),
                      "spacing": list(spec.preprocess.spacing), "head": list(spec.class_names)},
            "base_organs": [o for o in config.organs if spec.class_index(o) is not None],
            "novel_organs": [o for o in config.organs if spec.class_index(o) is None],
            "runs": len(records), "run_seconds_total": round(total, 1), "table": table,
            "records": [{k: v for k, v in r.items() if k != "settings"} for r in records]}


def render_table(summary: dict) -> str:
    """The paper-style table: DSC (mean over seeds) per organ and average, per method and K, in Markdown."""
    cfg = summary["config"]
    organs = cfg["organs"]
    base = set(summary["base_organs"])
    head = ["method", "K", "params", "peak RSS +GiB", "s/run"] + [f"{o}{'' if o in base else ' *'}" for o in organs] + ["avg"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for method in cfg["methods"]:
        for k in map(str, cfg["ks"]):
            cell = summary["table"].get(method, {}).get(k)
            if cell is None:
                continue
            row = [method, k, f"{cell['trainable_params']:,}", f"{cell['peak_rss_delta_gib']:.2f}",
                   f"{cell['seconds_per_run']:.0f}"]
            for o in organs:
                v = cell["organs"].get(o)
                row.append("-" if v is None else f"{v['mean']:.3f} ± {v['std']:.3f}")
            row.append(f"**{cell['average']:.3f}**")
            lines.append("| " + " | ".join(row) + " |")
    ad = cfg["adapt_defaults"]
    notes = [
        "",
        f"DSC on {cfg['n_query']} query phantoms per organ ({cfg['domain']} domain), mean ± std over seeds "
        f"{cfg['seeds']}; `*` marks setting B, structures never labelled in pretraining (`generalization` has no "
        "channel for them); the others are setting A, organs of the pretraining on another scanner.",
        "Adapters: `edgeseg adapt`'s defaults: " + "; ".join(
            f"{k} {v['steps']} steps at lr {v['lr']:g} on {v['crop']}^3 crops" for k, v in ad.items())
        + f" (feature voxels), batch {ad['decoder-block']['batch_size']}, half organ-centred, a quarter on the "
        "organ's neighbours, a quarter in negative windows; with K >= 5 one support is left out to pick the kept "
        "state. Scratch and FT (when run): "
        f"{cfg['model_steps']} steps of {cfg['batch_size']} crops of {cfg['model_crop']}^3 image voxels, lr {cfg['model_lr']}.",
        "params: trainable parameters; peak RSS +GiB: the largest rise of resident memory during one run (features "
        "are memory-mapped); s/run: training and query inference.",
        f"Total run time: {summary['run_seconds_total'] / 60:.1f} min of runs (features excluded).",
    ]
    if "claims" in summary:
        notes += render_claims(summary["claims"], summary["goals"])
    if not summary.get("complete", True):
        notes.append("")
        notes.append(f"**Partial: {summary['runs']} of the {summary['runs_planned']} planned runs have finished**; "
                     "a cell averages the seeds it has (`n_seeds` in results.json). `edgeseg fewshot` with the same "
                     "--out resumes the rest.")
    return "\n".join(lines + notes) + "\n"


def plot_dsc_vs_k(summary: dict, path: Path) -> Path | None:
    """DSC (average over organs) against K, one line per method; None where matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    cfg = summary["config"]
    fig, ax = plt.subplots(figsize=(6.5, 4.2), dpi=120)
    for method in cfg["methods"]:
        by_k = summary["table"].get(method, {})
        ks = [k for k in cfg["ks"] if str(k) in by_k]
        if ks:
            ax.plot(ks, [by_k[str(k)]["average"] for k in ks], marker="o", label=method)
    ax.set_xlabel("K (support scans)")
    ax.set_ylabel("DSC, average over organs")
    ax.set_xticks(list(cfg["ks"]))
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    ax.set_title(f"Few-shot on {cfg['domain']}-domain phantoms")
    fig.tight_layout()
    with atomic_path(path, force=True) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path
