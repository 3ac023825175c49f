"""Pretrain the embedded default: a small SwinUNETR on "source domain" phantom CT (`edgeseg pretrain`).

Why: no public SwinUNETR weights or labelled CT ship with a Python package, and the project must work
offline, so the foundation model that the few-shot story starts from is made here, from phantoms.

Recipe, trained like the paper's foundation model (many labelled structures, one scanner):
- Data: phantoms from the SOURCE scanner, generated at their own sampled spacing (coarsened to at most
  `gen_max_voxels`), then the same preprocessing as any scan (RAS, `spacing` mm, HU window).
- Labels: every phantom structure except `NOVEL_ORGANS`, which are never labelled here (the few-shot
  protocol's truly novel structures).
- Sampling: `fg_fraction` of the crops are centred on a voxel of an organ drawn uniformly among the
  labelled organs (then a training case that has it), so small and rare organs get their share; the
  rest on a random voxel inside the body. A warm restart may instead draw the organ by difficulty
  (`--restart STEPS:LR:adaptive`): in proportion to 1 - its running soft Dice on the training batches
  (`OrganDifficulty`), so an organ the model has not learned gets the crops the learned ones no longer need.
- Intensity augmentation for the scanner shift (HU offset and gain, blur, noise; never a left-right flip:
  left and right organs are different classes).
- Loss: per-channel soft Dice over the batch on the channels present in the batch (an absent channel's
  Dice only teaches it to stay silent, which BCE already does) + BCE on every channel.
- AdamW, linear warm-up then cosine to 0, optionally followed by warm restarts (SGDR, Loshchilov & Hutter
  2017: each restart warms up again to its own peak and anneals to 0 over its own steps), gradient norm clipped at 1 (a step whose gradient is not
  finite is skipped and counted), a fixed number of steps, float32 throughout (bfloat16 autocast was
  1.4x faster per step on this CPU but its backward overflowed to inf within 5 steps).
- Resumable: the whole training state is saved every `save_every` steps; `--resume` continues the same
  schedule, so the weights can be trained across several runs; each run is recorded (wall and CPU time).
  A finished schedule can be extended by a warm restart (`--restart STEPS:LR`): the state continues into
  it, and a schedule that is not an extension of the state's is refused.
- Validation: sliding-window Dice per labelled organ on held-out SOURCE and TARGET phantoms.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from edgeseg.runtime.errors import InputError
from edgeseg.train.schedule import warmup_cosine

# The truly novel structures: never labelled in pretraining (the paper's setting B).
NOVEL_ORGANS: tuple[str, ...] = ("inferior_vena_cava", "esophagus")
# Every other phantom structure is a class of the stand-in's head (the paper's setting A adapts these
# on another scanner), in the phantom's order.
BASE_ORGANS: tuple[str, ...] = (
    "liver", "spleen", "kidney_left", "kidney_right", "stomach", "pancreas", "gallbladder", "aorta", "duodenum",
    "urinary_bladder", "lung_left", "lung_right", "spine", "ribs",
)
WEIGHTS_NAME = "phantom-swinunetr.safetensors"
REPORT_NAME = "pretrain.json"
CARD_NAME = "MODEL_CARD.md"
STATE_NAME = "pretrain-state.pt"


UNIFORM, ADAPTIVE = "uniform", "adaptive"  # how a crop's organ is drawn (see `CropSampler.centre`)


@dataclass(frozen=True)
class PretrainConfig:
    feature_size: int = 12
    depths: tuple[int, ...] = (1, 1, 1, 1)  # one Swin block per stage: half the attention cost of (2, 2, 2, 2)
    num_heads: tuple[int, ...] = (3, 6, 12, 24)
    swin_window: int = 4  # 4^3 attention windows: about 2.4x faster per CPU step than 7^3 at 64^3 crops
    spacing: float = 3.0  # mm; a 64^3 window then spans 192 mm
    window: int = 64
    n_train: int = 48
    n_val: int = 6  # per domain (SOURCE and TARGET)
    data_seed: int = 0
    seed: int = 0
    steps: int = 3000
    batch_size: int = 2
    lr: float = 2e-3
    warmup: int = 100
    fg_fraction: float = 0.9
    augment: bool = True
    gen_max_voxels: int = 6_000_000  # phantoms are generated at their sampled spacing, coarsened to this
    threads: int | None = None
    eval_every: int = 0  # steps between validations during training (0: only at the end)
    # warm restarts after `steps`: (steps, peak lr) each, or (steps, peak lr, "adaptive") to draw organs by difficulty
    # the shipped model's: a warm restart of 3000 steps at lr 1e-3 (validation 0.74 -> 0.82 source), then two
    # drawing organs by difficulty, 1000 and 2000 steps (0.82 -> 0.86 -> 0.885; the bladder 0.00 -> 0.60 -> 0.75)
    restarts: tuple[tuple, ...] = ((3000, 1e-3), (1000, 1e-3, "adaptive"), (2000, 1e-3, "adaptive"))
    save_every: int = 100  # steps between saves of the resumable training state

    # Fields that do not change the weights a run produces: a resumed run may differ in these.
    RUN_ONLY = ("threads", "eval_every", "save_every")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["depths"], d["num_heads"] = list(self.depths), list(self.num_heads)
        d["restarts"] = [[int(r[0]), float(r[1]), *r[2:]] for r in self.restarts]
        return d

    @property
    def cycles(self) -> list[tuple[int, float]]:
        """The schedule's cycles, (steps, peak lr) each: the first run, then every warm restart."""
        return [(self.steps, self.lr), *((int(r[0]), float(r[1])) for r in self.restarts)]

    def sampling_at(self, step: int) -> str:
        """How `step` draws the organ of a crop: "uniform", or "adaptive" in a restart that asks for it."""
        for n, mode in [(self.steps, UNIFORM), *((int(r[0]), r[2] if len(r) > 2 else UNIFORM) for r in self.restarts)]:
            if step < n:
                return mode
            step -= n
        return UNIFORM

    @property
    def total_steps(self) -> int:
        return sum(n for n, _ in self.cycles)

    def lr_at(self, step: int) -> float:
        """Learning rate of `step`: in each cycle a linear warm-up to its peak, then cosine to 0."""
        for n, peak in self.cycles:
            if step < n:
                return warmup_cosine(step, n, self.warmup, peak)
            step -= n
        return 0.0

    def schedule_dict(self) -> dict:
        return {k: v for k, v in self.to_dict().items() if k not in self.RUN_ONLY}

    def model_spec(self):
        from edgeseg.model.spec import ModelSpec
        from edgeseg.runtime.preprocess import PreprocessSpec

        s = float(self.spacing)
        return ModelSpec(feature_size=self.feature_size, depths=tuple(self.depths), num_heads=tuple(self.num_heads),
                         swin_window=self.swin_window, out_channels=len(BASE_ORGANS), class_names=BASE_ORGANS,
                         preprocess=PreprocessSpec(spacing=(s, s, s), window=(self.window,) * 3))


def parse_restart(text: str) -> tuple:
    """``"3000:1e-3"`` -> ``(3000, 0.001)``: a warm restart's steps and peak learning rate;
    ``"1500:5e-4:adaptive"`` -> ``(1500, 0.0005, "adaptive")``: one that draws organs by difficulty."""
    parts = text.split(":")
    try:
        if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] not in (UNIFORM, ADAPTIVE)):
            raise ValueError
        steps, peak = int(parts[0]), float(parts[1])
    except ValueError:
        raise InputError(f"--restart {text!r} is not STEPS:LR or STEPS:LR:adaptive",
                         fix="e.g. --restart 3000:1e-3 or --restart 1500:5e-4:adaptive") from None
    if steps < 1 or not peak > 0:
        raise InputError(f"--restart {text!r}: steps and lr must be positive", fix="e.g. --restart 3000:1e-3")
    return (steps, peak, ADAPTIVE) if parts[2:] == [ADAPTIVE] else (steps, peak)


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


class CropSampler:
    """Draws training crops: organ first (uniform over the labelled organs), then a case that has it, then a voxel.

    Drawing the organ first gives a bladder present in half the cases, or a gallbladder of 500 voxels, the
    same share of crops as the liver; the rest of the crops are centred anywhere inside the body.
    """

    def __init__(self, cases: Sequence[PreparedCase], window: int, fg_fraction: float):
        self.cases, self.window, self.fg_fraction = list(cases), window, fg_fraction
        self.voxels: dict[int, list[tuple[int, np.ndarray]]] = {}
        for ci, case in enumerate(self.cases):
            flat = case.label.ravel()
            order = np.argsort(flat, kind="stable").astype(np.int32)
            bounds = np.searchsorted(flat[order], np.arange(len(BASE_ORGANS) + 2))
            for cls in range(1, len(BASE_ORGANS) + 1):
                idx = order[bounds[cls]:bounds[cls + 1]]
                if len(idx):
                    self.voxels.setdefault(cls, []).append((ci, idx))
        self.organs = sorted(self.voxels)

    def centre(self, rng: np.random.Generator, organ_p: np.ndarray | None = None) -> tuple[int, tuple[int, int, int]]:
        """A crop centre: on an organ (drawn uniformly, or with probabilities `organ_p` over `self.organs`)
        with probability `fg_fraction`, else anywhere inside the body."""
        if self.organs and rng.random() < self.fg_fraction:
            pick = int(rng.integers(len(self.organs))) if organ_p is None else int(rng.choice(len(self.organs), p=organ_p))
            holders = self.voxels[self.organs[pick]]
            ci, idx = holders[int(rng.integers(len(holders)))]
            flat = int(idx[int(rng.integers(len(idx)))])
            return ci, tuple(int(c) for c in np.unravel_index(flat, self.cases[ci].label.shape))
        ci = int(rng.integers(len(self.cases)))
        case = self.cases[ci]
        for _ in range(20):  # a voxel inside the body (not air): air-only crops teach nothing
            c = tuple(int(rng.integers(0, s)) for s in case.label.shape)
            if case.image[c] > 0.0 or case.label[c]:
                break
        return ci, c

    def sample(self, rng: np.random.Generator, *, augment: bool = False, organ_p: np.ndarray | None = None):
        """One (image, multi-hot target) pair of `window`^3 voxels, zero-padded where the scan is smaller."""
        from edgeseg.runtime.preprocess import crop_window

        ci, centre = self.centre(rng, organ_p)
        case = self.cases[ci]
        size = (self.window,) * 3
        image = crop_window(case.image, centre, size, 0.0)
        if augment:
            image = augment_intensity(image, rng)
        return image, _multi_hot(crop_window(case.label, centre, size, 0), len(BASE_ORGANS))


def sample_crop(case: PreparedCase, window: int, rng: np.random.Generator, fg_fraction: float):
    """A `window`^3 crop of one case (zero-padded where the scan is smaller) and its multi-hot target."""
    return CropSampler([case], window, fg_fraction).sample(rng)


def augment_intensity(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """What another scanner does to the [0, 1] image: HU offset and gain, a softer kernel, more noise.

    Ranges cover the TARGET phantom scanner's shift (HU offset ~ +20 HU = 0.05, noise 20-32 HU =
    0.05-0.075 on the 425 HU window, blur 0.9 mm) and as much again the other way. Voxels at the HU
    window's floor (air, lung) stay there, as they do on a real scanner whose offset is a few HU.
    """
    from scipy import ndimage

    floor = image <= 0.0
    x = image.astype(np.float32, copy=True)
    if rng.random() < 0.3:
        x = ndimage.gaussian_filter(x, float(rng.uniform(0.3, 1.0)))
    x = x * np.float32(rng.uniform(0.85, 1.15)) + np.float32(rng.uniform(-0.07, 0.07))
    sd = float(rng.uniform(0.0, 0.08))
    if sd > 0.0:
        x += rng.standard_normal(x.shape, dtype=np.float32) * np.float32(sd)
    np.clip(x, 0.0, 1.0, out=x)
    x[floor] = 0.0
    return x


def soft_dice_per_channel(logits, target, smooth: float = 1.0):
    """Soft Dice of each channel over the batch, and which channels are present in the target."""
    import torch

    p = torch.sigmoid(logits)
    dims = (0, 2, 3, 4)
    ref = target.sum(dims)
    return (2.0 * (p * target).sum(dims) + smooth) / (p.sum(dims) + ref + smooth), ref > 0


def multilabel_loss(logits, target, smooth: float = 1.0, *, dice_out: list | None = None):
    """Soft Dice per channel over the batch, averaged over the channels present in the batch, plus BCE.

    Each present organ weighs alike (a small organ counts as much as the liver); a channel absent from
    the batch gets no Dice term (its smoothed Dice would only push it towards silence, everywhere).
    `dice_out` receives the (detached) per-channel Dice and presence, for `OrganDifficulty`.
    """
    import torch

    dice, present = soft_dice_per_channel(logits, target, smooth)
    if dice_out is not None:
        dice_out[:] = [dice.detach().numpy().astype(np.float64), present.numpy()]
    dice_term = (1.0 - dice[present]).mean() if bool(present.any()) else logits.new_zeros(())
    return dice_term + torch.nn.functional.binary_cross_entropy_with_logits(logits, target)


class OrganDifficulty:
    """Each organ's running soft Dice on the training batches that hold it (an exponential moving average),
    and from it the adaptive restart's organ draw: in proportion to 1 - Dice, at least `floor`.

    Only training batches feed it: the validation phantoms never choose anything. Its state is part of the
    resumable training state, so a resumed run draws the same crops.
    """

    def __init__(self, n: int, decay: float = 0.98, floor: float = 0.1):
        self.decay, self.floor = decay, floor
        self.dice = np.zeros(n)  # a model starts knowing nothing: the first draws are uniform
        self.seen = np.zeros(n, dtype=np.int64)

    def update(self, dice: np.ndarray, present: np.ndarray) -> None:
        d = self.decay
        self.dice[present] = d * self.dice[present] + (1.0 - d) * dice[present]
        self.seen[present] += 1

    def draw_p(self, organs: Sequence[int]) -> np.ndarray:
        """Probabilities over `organs` (label values i + 1 of channel i)."""
        w = np.maximum(1.0 - self.debiased()[[o - 1 for o in organs]], self.floor)
        return w / w.sum()

    def debiased(self) -> np.ndarray:
        """The average with its zero start corrected (as Adam corrects its moments), 0 where never seen."""
        corr = 1.0 - self.decay ** self.seen
        return np.divide(self.dice, corr, out=np.zeros_like(self.dice), where=corr > 0)

    def to_dict(self) -> dict:
        return {"dice": [float(x) for x in self.dice], "seen": [int(x) for x in self.seen]}

    def load(self, d: dict) -> None:
        self.dice, self.seen = np.array(d["dice"], dtype=np.float64), np.array(d["seen"], dtype=np.int64)


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


def _prepare_data(config: PretrainConfig, spec, progress) -> tuple[list[PreparedCase], list[PreparedCase]]:
    from edgeseg.data.phantom import SOURCE, TARGET, case_seed

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
    return train, val


def save_state(path: Path, *, model, opt, step: int, rng: np.random.Generator, config: PretrainConfig,
               losses: list[float], evals: list[dict], runs: list[dict], difficulty: OrganDifficulty | None = None) -> None:
    """The whole training state in one file, written atomically (a kill mid-save keeps the previous one).

    Weights stay float32; AdamW's two moments are stored as bfloat16 (same exponent range as float32),
    which keeps the file under 32 MB for the stand-in; a resumed run continues from them.
    """
    import io

    import torch

    from edgeseg.runtime.atomic import write_bytes_atomic

    opt_state = opt.state_dict()
    packed = {k: {n: (v.to(torch.bfloat16) if torch.is_tensor(v) and v.is_floating_point() and v.dim() > 0 else v)
                  for n, v in st.items()} for k, st in opt_state["state"].items()}
    blob = {"format": 1, "step": step, "config": config.schedule_dict(), "model": model.state_dict(),
            "opt": {"state": packed, "param_groups": opt_state["param_groups"]},
            "numpy_rng": json.dumps(rng.bit_generator.state), "torch_rng": torch.get_rng_state(),
            "losses": losses, "evals": json.dumps(evals), "runs": json.dumps(runs)}
    if difficulty is not None:
        blob["organ_difficulty"] = json.dumps(difficulty.to_dict())
    buf = io.BytesIO()
    torch.save(blob, buf)
    write_bytes_atomic(path, buf.getvalue(), force=True)


def load_state(path: Path, config: PretrainConfig, model, opt, rng: np.random.Generator,
               difficulty: OrganDifficulty | None = None) -> tuple[int, list, list, list]:
    """Restore what `save_state` wrote; refuse a state made with another schedule. A state from before
    `OrganDifficulty` leaves `difficulty` at its start (it learns each organ's Dice again within ~50 batches)."""
    import torch

    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file gets the same advice
        raise InputError(f"cannot read the pretraining state ({type(e).__name__}: {e})", path=path,
                         fix="delete it and start again without --resume") from None
    if not isinstance(blob, dict) or blob.get("format") != 1:
        raise InputError("is not an edgeseg pretraining state", path=path, fix="start again without --resume")
    theirs, ours = {"restarts": [], **blob["config"]}, config.schedule_dict()  # states before restarts had none
    diff = sorted(k for k in set(theirs) | set(ours) if theirs.get(k) != ours.get(k))
    if diff == ["restarts"] and ours["restarts"][:len(theirs["restarts"])] == theirs["restarts"]:
        diff = []  # the same schedule extended by warm restarts: the state continues into them
    if diff:
        raise InputError("was saved with another training schedule: " + ", ".join(
            f"{k} {theirs.get(k)!r} there, {ours.get(k)!r} now" for k in diff), path=path,
            fix="resume with the same options (see its config), adding only warm restarts (--restart), "
                "or start again in another --out")
    model.load_state_dict(blob["model"])
    state = {k: {n: (v.float() if torch.is_tensor(v) and v.dtype == torch.bfloat16 else v) for n, v in st.items()}
             for k, st in blob["opt"]["state"].items()}
    opt.load_state_dict({"state": state, "param_groups": blob["opt"]["param_groups"]})
    rng.bit_generator.state = json.loads(blob["numpy_rng"])
    torch.set_rng_state(blob["torch_rng"])
    if difficulty is not None and "organ_difficulty" in blob:
        difficulty.load(json.loads(blob["organ_difficulty"]))
    return int(blob["step"]), list(blob["losses"]), json.loads(blob["evals"]), json.loads(blob["runs"])


def pretrain(out: str | Path, config: PretrainConfig = PretrainConfig(), *, force: bool = False, resume: bool = False,
             max_minutes: float | None = None,
             progress: Callable[[str, int, int, float | None], None] | None = None,
             log: Callable[[str], None] = lambda m: None) -> dict:
    """Generate the phantoms, train, validate; write fp16 weights, `pretrain.json` and a model card into `out`.

    `resume`: continue from `out/pretrain-state.pt` (same schedule). `max_minutes`: stop this run at the
    first state save past that many minutes of training; the report then has `"finished": False` and
    the next run continues with `resume`.
    """
    import torch

    from edgeseg.data.phantom import SOURCE, TARGET
    from edgeseg.model.checkpoint import save_checkpoint
    from edgeseg.model.swinunetr import build_swinunetr, count_params
    from edgeseg.runtime.atomic import write_text_atomic
    from edgeseg.runtime.host import host_description, peak_rss_gib

    from edgeseg.runtime.atomic import refuse_link

    out = Path(out)
    weights, state_path = out / WEIGHTS_NAME, out / STATE_NAME
    for p in (weights, state_path, out / REPORT_NAME, out / CARD_NAME):
        refuse_link(p)  # before any work: never write through a link someone planted
    if weights.exists() and not force:
        raise InputError("already holds pretrained weights", path=weights, fix="pass --force to replace them, or choose another --out")
    if resume and not state_path.exists():
        raise InputError("no pretraining state to resume from", path=state_path, fix="start without --resume")
    if state_path.exists() and not resume and not force:
        raise InputError("holds an unfinished pretraining state", path=state_path,
                         fix="pass --resume to continue it, or --force to start again")
    if config.steps < 1 or config.batch_size < 1 or any(r[0] < 1 or r[1] <= 0 or r[2:] not in ((), (ADAPTIVE,), (UNIFORM,))
                                                         for r in config.restarts):
        raise InputError(f"steps={config.steps}, batch_size={config.batch_size} and every restart's steps and lr "
                         f"({config.restarts}) must be positive", fix="e.g. --steps 3000 --restart 3000:1e-3")
    if config.window % 32:
        raise InputError(f"window={config.window} must be a multiple of 32 (SwinUNETR)", fix="use 64 or 96")
    if config.threads:
        torch.set_num_threads(config.threads)
    spec = config.model_spec()
    timings: dict[str, float] = {}

    t0 = time.perf_counter()
    cpu0 = time.process_time()
    train, val = _prepare_data(config, spec, progress)
    timings["data_seconds"] = round(time.perf_counter() - t0, 1)
    log(f"{len(train)} training and {len(val)} validation phantoms prepared in {timings['data_seconds']} s")

    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    model = build_swinunetr(spec).train()
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=1e-5)
    sampler = CropSampler(train, config.window, config.fg_fraction)
    difficulty = OrganDifficulty(len(BASE_ORGANS))
    losses: list[float] = []
    evals: list[dict] = []
    runs: list[dict] = []
    skipped: list[int] = []
    start = 0
    if resume:
        start, losses, evals, runs = load_state(state_path, config, model, opt, rng, difficulty)
        skipped = [s for r in runs for s in r.get("skipped_steps", [])]
        log(f"resumed at step {start} of {config.total_steps} (run {len(runs) + 1})")
    run = {"run": len(runs) + 1, "from_step": start, "to_step": start, "wall_seconds": 0.0, "cpu_seconds": 0.0,
           "threads": torch.get_num_threads(), "host": host_description(), "torch": torch.__version__,
           "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    runs.append(run)

    def checkpoint(step: int) -> None:
        run.update(to_step=step, wall_seconds=round(time.perf_counter() - t0, 1),
                   cpu_seconds=round(time.process_time() - cpu0, 1),
                   skipped_steps=[s for s in skipped if s >= run["from_step"]])
        out.mkdir(parents=True, exist_ok=True)
        save_state(state_path, model=model, opt=opt, step=step, rng=rng, config=config, losses=losses, evals=evals,
                   runs=runs, difficulty=difficulty)

    t1 = time.perf_counter()
    step = start
    total = config.total_steps
    while step < total:
        for g in opt.param_groups:
            g["lr"] = config.lr_at(step)
        organ_p = difficulty.draw_p(sampler.organs) if config.sampling_at(step) == ADAPTIVE else None
        crops = [sampler.sample(rng, augment=config.augment, organ_p=organ_p) for _ in range(config.batch_size)]
        x = torch.from_numpy(np.stack([c[0] for c in crops]))[:, None]
        y = torch.from_numpy(np.stack([c[1] for c in crops]))
        batch_dice: list = []
        loss = multilabel_loss(model(x), y, dice_out=batch_dice)
        difficulty.update(*batch_dice)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        if torch.isfinite(norm):
            opt.step()
        else:  # one bad batch must not turn every weight into NaN: skip it, and count it
            skipped.append(step)
        losses.append(round(float(loss.detach()), 5))
        step += 1
        if progress:
            progress("train", step, total, float(np.mean(losses[-20:])))
        if config.eval_every and step % config.eval_every == 0 and step < total:
            model.eval()
            evals.append({"step": step, **evaluate(model, val, config.window)})
            model.train()
            log(f"step {step}: " + json.dumps({d: v["mean"] for d, v in evals[-1].items() if d != "step"}))
        if step % max(1, config.save_every) == 0 and step < total:
            checkpoint(step)
            if max_minutes is not None and time.perf_counter() - t1 > 60.0 * max_minutes:
                log(f"stopped at step {step} of {total} after {max_minutes:g} min; "
                    f"the state is in {state_path}: continue with --resume")
                return {"kind": "pretrain", "finished": False, "step": step, "steps": total,
                        "state": STATE_NAME, "runs": runs}
    timings["train_seconds"] = round(time.perf_counter() - t1, 1)
    model.eval()
    t2 = time.perf_counter()
    validation = evaluate(model, val, config.window)
    timings["validation_seconds"] = round(time.perf_counter() - t2, 1)
    timings["total_seconds"] = round(time.perf_counter() - t0, 1)
    checkpoint(step)

    out.mkdir(parents=True, exist_ok=True)
    save_checkpoint(model, spec, weights, force=True, dtype=torch.float16, drop_derived=True)
    from edgeseg.runtime.manifest import sha256_file

    report = {
        "kind": "pretrain",
        "finished": True,
        "model_spec": spec.to_dict(),
        "config": config.to_dict(),
        "params": count_params(model),
        "weights": {"file": WEIGHTS_NAME, "dtype": "float16", "bytes": weights.stat().st_size,
                    "sha256": sha256_file(weights)},
        "data": {"generator": "edgeseg.data.phantom", "train_domain": SOURCE.name, "n_train": config.n_train,
                 "val_domains": [SOURCE.name, TARGET.name], "n_val_per_domain": config.n_val,
                 "base_organs": list(BASE_ORGANS), "novel_organs_never_labelled": list(NOVEL_ORGANS)},
        "loss_curve": losses,
        "intermediate_validation": evals,
        "validation_dice": validation,
        "timings": timings,
        "runs": runs,
        "total_wall_seconds": round(sum(r["wall_seconds"] for r in runs), 1),
        "total_cpu_seconds": round(sum(r["cpu_seconds"] for r in runs), 1),
        "skipped_steps": skipped,
        # each organ's running soft Dice on the training batches (what an adaptive restart draws by)
        "organ_training_dice": {n: round(float(v), 4) for n, v in zip(BASE_ORGANS, difficulty.debiased())},
        "peak_rss_gib": peak_rss_gib(),
        "host": host_description(),
        "torch": torch.__version__, "threads": torch.get_num_threads(),
    }
    write_text_atomic(out / REPORT_NAME, json.dumps(report, indent=1) + "\n", force=True)
    write_text_atomic(out / CARD_NAME, model_card(report), force=True)
    log(f"wrote {weights} ({weights.stat().st_size / 2**20:.1f} MiB), {REPORT_NAME}, {CARD_NAME}")
    return report


def _runs_lines(report: dict) -> list[str]:
    """One line per training run (a resumed pretraining has several), and the totals."""
    runs = report.get("runs") or []
    if not runs:
        return []
    lines = [f"- Runs: {len(runs)}, {report['total_wall_seconds'] / 60:.1f} min wall and "
             f"{report['total_cpu_seconds'] / 3600:.2f} CPU hours in all"
             + (f"; {len(report['skipped_steps'])} step(s) skipped for a non-finite gradient" if report.get("skipped_steps") else "")
             + ":"]
    for r in runs:
        lines.append(f"  - run {r['run']}: steps {r['from_step']}-{r['to_step']}, started {r['started']}, "
                     f"{r['wall_seconds'] / 60:.1f} min wall, {r['cpu_seconds'] / 60:.1f} CPU min, {r['threads']} thread(s) "
                     f"on {r['host'].get('cpu', '?')} ({r['host'].get('cores', '?')} cores)")
    return lines


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
        "a voxel of an organ drawn uniformly among the labelled organs, the rest anywhere in the body)"
        + (", intensity augmentation (HU offset and gain, blur, noise; no flips)" if cfg.get("augment") else "")
        + f"; Dice over the organs present in the batch + BCE; AdamW lr {cfg['lr']:g} with {cfg['warmup']} warm-up "
        f"steps then cosine"
        + "".join(f", then a warm restart of {r[0]} steps to lr {r[1]:g}"
                  + (" drawing organs by difficulty (1 - running training Dice)" if r[2:] == [ADAPTIVE] else "")
                  for r in cfg.get("restarts") or [])
        + f"; Swin attention window {spec.get('swin_window', 7)}; seed {cfg['seed']}.",
        f"- Last run on {report['host'].get('cpu', '?')} ({report['threads']} threads, torch {report['torch']}): "
        f"phantoms {t['data_seconds']:.0f} s, training {t['train_seconds']:.0f} s, validation "
        f"{t['validation_seconds']:.0f} s; peak RSS {report['peak_rss_gib']:.2f} GiB.",
        *([f"- {report['timing_note']}"] if report.get("timing_note") else []),
        *_runs_lines(report),
        *([("- Mean validation Dice during training: " + "; ".join(
            f"step {e['step']} " + " / ".join(f"{e[d]['mean']:.3f}" for d in val if d in e)
            for e in report.get("intermediate_validation") or []) + f" ({' / '.join(val)})")]
          if report.get("intermediate_validation") else []),
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
    short = [f"{n} {v:.2f}" for n, v in val[first]["per_organ"].items() if v is not None and 0.1 <= v < 0.85]
    if short:
        lines += ["", f"Below the 0.85 aim on {first} validation: {', '.join(short)}."]
    restarts = "".join(f" --restart {r[0]}:{r[1]:g}" + "".join(f":{m}" for m in r[2:]) for r in cfg.get("restarts") or [])
    lines += ["", f"Reproduce: `edgeseg pretrain --out DIR --steps {cfg['steps']}{restarts} --seed {cfg['seed']}` "
              "(same machine and library versions give the same weights; `--max-minutes` and `--resume` split it "
              "into runs, which continue from a state with bfloat16 optimiser moments, so a split run's weights "
              "differ from an unsplit one's in the last bits).", ""]
    return "\n".join(lines)
