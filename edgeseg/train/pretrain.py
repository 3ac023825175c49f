"""Pretrain the embedded default: a small SwinUNETR on "source domain" phantom CT (`edgeseg pretrain`).

Why: no public SwinUNETR weights or labelled CT ship with a Python package, and the project must work
offline, so the foundation model that the few-shot story starts from is made here, from phantoms.

Recipe (chosen to finish within an hour on 2 CPU cores): phantoms from the SOURCE scanner domain are
generated at their own sampled spacing (coarsened to at most `gen_max_voxels`), then go through the same
preprocessing as any scan (RAS, `spacing` mm, HU window); the model is a MONAI SwinUNETR with a
multi-label sigmoid head over the base organs; crops of `window`^3 voxels are centred on a voxel of a
randomly chosen present organ (`fg_fraction` of them) or anywhere; loss Dice + BCE per channel; AdamW,
linear warm-up then cosine to 0, gradient norm clipped at 1, a fixed number of steps so that a seed reproduces the run on one machine
and library set. Validation: sliding-window Dice per base organ on held-out SOURCE and TARGET phantoms.
Novel organs (`NOVEL_ORGANS`) are never labelled here: the few-shot protocol adapts to them.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from edgeseg.runtime.errors import InputError

BASE_ORGANS: tuple[str, ...] = (
    "liver", "spleen", "kidney_left", "kidney_right", "stomach", "aorta", "lung_left", "lung_right", "spine",
    "urinary_bladder",
)
NOVEL_ORGANS: tuple[str, ...] = ("gallbladder", "pancreas", "esophagus", "duodenum", "inferior_vena_cava")
WEIGHTS_NAME = "phantom-swinunetr.safetensors"
REPORT_NAME = "pretrain.json"
CARD_NAME = "MODEL_CARD.md"


@dataclass(frozen=True)
class PretrainConfig:
    feature_size: int = 12
    depths: tuple[int, ...] = (1, 1, 1, 1)  # one Swin block per stage: half the attention cost of (2, 2, 2, 2)
    num_heads: tuple[int, ...] = (3, 6, 12, 24)
    spacing: float = 3.0  # mm; a 64^3 window then spans 192 mm
    window: int = 64
    n_train: int = 48
    n_val: int = 6  # per domain (SOURCE and TARGET)
    data_seed: int = 0
    seed: int = 0
    steps: int = 1000
    batch_size: int = 2
    lr: float = 1e-3
    warmup: int = 50
    fg_fraction: float = 0.8
    gen_max_voxels: int = 6_000_000  # phantoms are generated at their sampled spacing, coarsened to this
    threads: int | None = None
    eval_every: int = 0  # steps between validations during training (0: only at the end)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["depths"], d["num_heads"] = list(self.depths), list(self.num_heads)
        return d

    def model_spec(self):
        from edgeseg.model.spec import ModelSpec
        from edgeseg.runtime.preprocess import PreprocessSpec

        s = float(self.spacing)
        return ModelSpec(feature_size=self.feature_size, depths=tuple(self.depths), num_heads=tuple(self.num_heads),
                         out_channels=len(BASE_ORGANS), class_names=BASE_ORGANS,
                         preprocess=PreprocessSpec(spacing=(s, s, s), window=(self.window,) * 3))


@dataclass
class PreparedCase:
    case_id: str
    domain: str
    image: np.ndarray  # float32 [0, 1], model grid
    label: np.ndarray  # uint8: 0 background, i + 1 for BASE_ORGANS[i], 255 for a novel or other organ
    spacing: tuple[float, float, float]
    meta: dict


def prepare_phantom(seed: int, domain, spec, *, gen_max_voxels: int, case_id: str = "") -> PreparedCase:
    """Generate one phantom and bring it to the model grid through the package's own preprocessing."""
    from edgeseg.data.phantom import ORGANS, generate_case, label_map
    from edgeseg.runtime.nifti import Scan
    from edgeseg.runtime.preprocess import preprocess_scan, to_model_grid

    case = generate_case(seed, domain, max_voxels=gen_max_voxels)
    scan = Scan(path=Path(f"<phantom {case_id or seed}>"), data=case.ct.astype(np.float32), affine=case.affine,
                header=None)  # type: ignore[arg-type]
    prepared = preprocess_scan(scan, spec.preprocess)
    full = to_model_grid(label_map(case), prepared.transform, order=0)
    lut = np.zeros(len(ORGANS) + 1, np.uint8)
    for i, name in enumerate(ORGANS):
        lut[i + 1] = BASE_ORGANS.index(name) + 1 if name in BASE_ORGANS else 255
    return PreparedCase(case_id=case_id, domain=getattr(domain, "name", str(domain)), image=prepared.image,
                        label=lut[full], spacing=tuple(spec.preprocess.spacing), meta=case.meta)


def _multi_hot(label: np.ndarray, n: int) -> np.ndarray:
    return np.stack([label == i + 1 for i in range(n)]).astype(np.float32)


def sample_crop(case: PreparedCase, window: int, rng: np.random.Generator, fg_fraction: float):
    """A `window`^3 crop (zero-padded where the scan is smaller) and its multi-hot target."""
    from edgeseg.runtime.preprocess import crop_window

    shape = case.label.shape
    centre = None
    if rng.random() < fg_fraction:
        present = [i for i in range(1, len(BASE_ORGANS) + 1) if case.meta.get("_present", {}).get(i, True)]
        rng.shuffle(present)
        for cls in present:
            idx = np.flatnonzero(case.label.ravel() == cls)
            if len(idx):
                centre = tuple(int(c) for c in np.unravel_index(idx[int(rng.integers(len(idx)))], shape))
                break
            case.meta.setdefault("_present", {})[cls] = False
    if centre is None:
        centre = tuple(int(rng.integers(0, s)) for s in shape)
    size = (window,) * 3
    image = crop_window(case.image, centre, size, 0.0)
    label = crop_window(case.label, centre, size, 0)
    return image, _multi_hot(label, len(BASE_ORGANS))


def multilabel_loss(logits, target, smooth: float = 1.0):
    """Mean over channels of each channel's soft Dice loss (so small organs count as much as the liver), plus BCE."""
    import torch

    p = torch.sigmoid(logits)
    dims = (0, 2, 3, 4)
    dice = 1.0 - (2.0 * (p * target).sum(dims) + smooth) / (p.sum(dims) + target.sum(dims) + smooth)
    return dice.mean() + torch.nn.functional.binary_cross_entropy_with_logits(logits, target)


def dice_per_organ(prob: np.ndarray, label: np.ndarray, threshold: float = 0.5) -> dict[str, float | None]:
    """Dice per base organ of `prob` (C, D, H, W) against the label map; None where the organ is absent."""
    out: dict[str, float | None] = {}
    for i, name in enumerate(BASE_ORGANS):
        ref = label == i + 1
        if not ref.any():
            out[name] = None
            continue
        pred = prob[i] > threshold
        out[name] = float(2 * np.logical_and(pred, ref).sum() / (pred.sum() + ref.sum()))
    return out


def predict_volume(model, image: np.ndarray, window: int, *, overlap: float = 0.25, sw_batch_size: int = 2) -> np.ndarray:
    """Sigmoid probabilities (C, D, H, W) of the whole volume with MONAI's Gaussian sliding window."""
    import torch
    from monai.inferers import sliding_window_inference

    x = torch.from_numpy(np.ascontiguousarray(image))[None, None]
    with torch.no_grad():
        logits = sliding_window_inference(x, (window,) * 3, sw_batch_size, model, overlap=overlap, mode="gaussian")
    return torch.sigmoid(logits)[0].numpy()


def evaluate(model, cases: Sequence[PreparedCase], window: int) -> dict:
    """Mean Dice per base organ per domain (organs absent from a case are skipped for that case)."""
    per_domain: dict[str, dict[str, list[float]]] = {}
    for case in cases:
        scores = dice_per_organ(predict_volume(model, case.image, window), case.label)
        d = per_domain.setdefault(case.domain, {n: [] for n in BASE_ORGANS})
        for name, v in scores.items():
            if v is not None:
                d[name].append(v)
    result = {}
    for domain, d in per_domain.items():
        organs = {n: (round(float(np.mean(v)), 4) if v else None) for n, v in d.items()}
        vals = [v for v in organs.values() if v is not None]
        result[domain] = {"per_organ": organs, "mean": round(float(np.mean(vals)), 4) if vals else None,
                          "cases": sum(c.domain == domain for c in cases)}
    return result


def pretrain(out: str | Path, config: PretrainConfig = PretrainConfig(), *, force: bool = False,
             progress: Callable[[str, int, int, float | None], None] | None = None,
             log: Callable[[str], None] = lambda m: None) -> dict:
    """Generate the phantoms, train, validate; write fp16 weights, `pretrain.json` and a model card into `out`."""
    import torch

    from edgeseg.data.phantom import SOURCE, TARGET, case_seed
    from edgeseg.model.checkpoint import save_checkpoint
    from edgeseg.model.swinunetr import build_swinunetr, count_params
    from edgeseg.runtime.atomic import write_text_atomic
    from edgeseg.runtime.host import host_description, peak_rss_gib

    out = Path(out)
    weights = out / WEIGHTS_NAME
    if weights.exists() and not force:
        raise InputError("already holds pretrained weights", path=weights, fix="pass --force to replace them, or choose another --out")
    if config.steps < 1 or config.batch_size < 1:
        raise InputError(f"steps={config.steps} and batch_size={config.batch_size} must be positive")
    if config.window % 32:
        raise InputError(f"window={config.window} must be a multiple of 32 (SwinUNETR)", fix="use 64 or 96")
    if config.threads:
        torch.set_num_threads(config.threads)
    spec = config.model_spec()
    timings: dict[str, float] = {}

    t0 = time.perf_counter()
    train: list[PreparedCase] = []
    for i in range(config.n_train):
        train.append(prepare_phantom(case_seed(config.data_seed, i), SOURCE, spec,
                                     gen_max_voxels=config.gen_max_voxels, case_id=f"train-{i:03d}"))
        if progress:
            progress("phantoms", i + 1, config.n_train, None)
    val: list[PreparedCase] = []
    # validation seeds come from another dataset seed: never a training patient
    for domain in (SOURCE, TARGET):
        for i in range(config.n_val):
            val.append(prepare_phantom(case_seed(config.data_seed + 1_000_003, i), domain, spec,
                                       gen_max_voxels=config.gen_max_voxels, case_id=f"val-{domain.name}-{i:03d}"))
    timings["data_seconds"] = round(time.perf_counter() - t0, 1)
    log(f"{len(train)} training and {len(val)} validation phantoms prepared in {timings['data_seconds']} s")

    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    model = build_swinunetr(spec).train()
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=1e-5)

    def lr_at(step: int) -> float:
        if step < config.warmup:
            return config.lr * (step + 1) / config.warmup
        t = (step - config.warmup) / max(1, config.steps - config.warmup)
        return 0.5 * config.lr * (1 + math.cos(math.pi * t))

    losses: list[float] = []
    evals: list[dict] = []
    t1 = time.perf_counter()
    for step in range(config.steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        crops = [sample_crop(train[int(rng.integers(len(train)))], config.window, rng, config.fg_fraction)
                 for _ in range(config.batch_size)]
        x = torch.from_numpy(np.stack([c[0] for c in crops]))[:, None]
        y = torch.from_numpy(np.stack([c[1] for c in crops]))
        loss = multilabel_loss(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(float(loss.detach()))
        if progress:
            progress("train", step + 1, config.steps, float(np.mean(losses[-20:])))
        if config.eval_every and (step + 1) % config.eval_every == 0 and step + 1 < config.steps:
            model.eval()
            evals.append({"step": step + 1, **evaluate(model, val, config.window)})
            model.train()
            log(f"step {step + 1}: " + json.dumps({d: v["mean"] for d, v in evals[-1].items() if d != "step"}))
    timings["train_seconds"] = round(time.perf_counter() - t1, 1)
    model.eval()
    t2 = time.perf_counter()
    validation = evaluate(model, val, config.window)
    timings["validation_seconds"] = round(time.perf_counter() - t2, 1)
    timings["total_seconds"] = round(time.perf_counter() - t0, 1)

    out.mkdir(parents=True, exist_ok=True)
    save_checkpoint(model, spec, weights, force=force, dtype=torch.float16, drop_derived=True)
    from edgeseg.runtime.manifest import sha256_file

    report = {
        "kind": "pretrain",
        "model_spec": spec.to_dict(),
        "config": config.to_dict(),
        "params": count_params(model),
        "weights": {"file": WEIGHTS_NAME, "dtype": "float16", "bytes": weights.stat().st_size,
                    "sha256": sha256_file(weights)},
        "data": {"generator": "edgeseg.data.phantom", "train_domain": SOURCE.name, "n_train": config.n_train,
                 "val_domains": [SOURCE.name, TARGET.name], "n_val_per_domain": config.n_val,
                 "base_organs": list(BASE_ORGANS), "novel_organs_never_labelled": list(NOVEL_ORGANS)},
        "loss_curve": [round(v, 5) for v in losses],
        "intermediate_validation": evals,
        "validation_dice": validation,
        "timings": timings,
        "peak_rss_gib": peak_rss_gib(),
        "host": host_description(),
        "torch": torch.__version__, "threads": torch.get_num_threads(),
    }
    write_text_atomic(out / REPORT_NAME, json.dumps(report, indent=1) + "\n", force=True)
    write_text_atomic(out / CARD_NAME, model_card(report), force=True)
    log(f"wrote {weights} ({weights.stat().st_size / 2**20:.1f} MiB), {REPORT_NAME}, {CARD_NAME}")
    return report


def model_card(report: dict) -> str:
    """The model card, rendered from the pretraining report (so it never disagrees with it)."""
    spec, cfg, val, t = report["model_spec"], report["config"], report["validation_dice"], report["timings"]
    curve = report["loss_curve"]
    k = max(1, len(curve) // 10)
    lines = [
        "# edgeseg phantom SwinUNETR (the embedded default foundation model)",
        "",
        "A small SwinUNETR pretrained by `edgeseg pretrain` on phantom abdominal CT made by "
        "`edgeseg.data.phantom`. It exists so that the pretrain-then-adapt workflow runs offline on a laptop; "
        "it has never seen a real patient and is **not for clinical use**. Real checkpoints "
        "(MONAI BTCV, CLIP-Driven Universal / SuPreM, the FSEFT release) plug into the same commands.",
        "",
        "## Model",
        f"- MONAI SwinUNETR, feature_size {spec['feature_size']}, depths {spec['depths']}, heads {spec['num_heads']}, "
        f"{report['params']:,} parameters; weights {report['weights']['dtype']} safetensors "
        f"({report['weights']['bytes'] / 2**20:.1f} MiB), sha256 `{report['weights']['sha256'][:16]}...`.",
        f"- Head: {len(spec['class_names'])} sigmoid channels (multi-label), in order: {', '.join(spec['class_names'])}.",
        f"- Input: {spec['preprocess']['spacing'][0]:g} mm isotropic RAS, HU clipped to "
        f"[{spec['preprocess']['hu_min']:g}, {spec['preprocess']['hu_max']:g}] and scaled to [0, 1], "
        f"{spec['preprocess']['window'][0]}^3 windows.",
        "",
        "## Data",
        f"- Training: {cfg['n_train']} SOURCE-domain phantoms (dataset seed {cfg['data_seed']}), generated at their "
        f"sampled spacing (at most {cfg['gen_max_voxels']:,} voxels) and resampled by edgeseg's preprocessing.",
        f"- Labelled: the base organs above. Never labelled: {', '.join(report['data']['novel_organs_never_labelled'])} "
        "(the novel organs of the few-shot protocol).",
        f"- Validation: {cfg['n_val']} held-out phantoms per domain (another dataset seed), SOURCE and TARGET "
        "(the other scanner: more noise, HU offset, other phases and spacing).",
        "",
        "## Training",
        f"- {cfg['steps']} steps, batch {cfg['batch_size']}, {cfg['window']}^3 crops ({cfg['fg_fraction']:.0%} centred on "
        f"a base organ), Dice + BCE, AdamW lr {cfg['lr']:g} with {cfg['warmup']} warm-up steps then cosine, seed {cfg['seed']}.",
        f"- Wall time on {report['host'].get('cpu', '?')} ({report['threads']} threads, torch {report['torch']}): "
        f"phantoms {t['data_seconds']:.0f} s, training {t['train_seconds']:.0f} s, validation "
        f"{t['validation_seconds']:.0f} s, total {t['total_seconds'] / 60:.1f} min; peak RSS {report['peak_rss_gib']:.2f} GiB.",
        *([f"- {report['timing_note']}"] if report.get("timing_note") else []),
        "- Loss (Dice + BCE, mean of each tenth of training): "
        + ", ".join(f"{np.mean(curve[i:i + k]):.3f}" for i in range(0, len(curve), k)),
        "",
        "## Validation Dice (sliding window, overlap 0.25, threshold 0.5)",
        "",
        "| organ | " + " | ".join(val) + " |",
        "|---|" + "---|" * len(val),
    ]
    for name in spec["class_names"]:
        cells = [val[d]["per_organ"].get(name) for d in val]
        lines.append(f"| {name} | " + " | ".join("-" if c is None else f"{c:.3f}" for c in cells) + " |")
    lines.append("| **mean** | " + " | ".join(f"**{val[d]['mean']:.3f}**" for d in val) + " |")
    first = next(iter(val))
    weak = [n for n, v in val[first]["per_organ"].items() if v is not None and v < 0.1]
    if weak:
        lines += ["", f"Not learned within this training budget ({first} Dice < 0.1): {', '.join(weak)}: the head's "
                  "output for them means nothing; adapting to them is a few-shot task, as for a novel organ."]
    lines += ["", f"Reproduce: `edgeseg pretrain --out DIR --steps {cfg['steps']} --seed {cfg['seed']}` "
              "(same machine and library versions give the same weights).", ""]
    return "\n".join(lines)
