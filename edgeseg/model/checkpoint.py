"""Load SwinUNETR checkpoints from the public key layouts, safely; save them with their spec inside.

Reading: ``.pt/.pth/.bin/.ckpt`` only through ``torch.load(weights_only=True)`` (a pickle that holds
code or arbitrary objects is refused, never executed); ``.safetensors`` through safetensors.
Mapping: the file's keys are renamed to MONAI's ``SwinUNETR`` names by a short ordered rule table
(``_KEY_RULES``), the layout is named (``_LAYOUTS``) and a `LoadReport` says, by name and by module,
what was loaded, what is missing, what the file had that the model lacks, and what was ignored.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from edgeseg.model.spec import UNIVERSAL_CLASSES, ModelSpec
from edgeseg.model.swinunetr import build_swinunetr
from edgeseg.runtime.artifacts.trunk import TrunkManifest
from edgeseg.runtime.atomic import atomic_path
from edgeseg.runtime.errors import InputError

__all__ = [
    "CONTAINER_KEYS", "LoadReport", "RawCheckpoint", "SPEC_METADATA_KEY", "infer_spec", "load_checkpoint",
    "load_exported_checkpoint", "load_state_dict_file", "map_keys", "read_checkpoint", "save_checkpoint", "sha256_file",
]

SPEC_METADATA_KEY = "edgeseg_spec"
TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
# Keys under which training scripts nest the state dict, tried in this order.
CONTAINER_KEYS = ("state_dict", "net", "model", "model_state_dict", "module")
HEAD_PREFIX = "out."
_PREFIX_RE = re.compile(r"^(?:module\.|backbone\.)+")  # DataParallel/DDP wrappers, Universal Model's backbone
_DERIVED_BUFFER = ".relative_position_index"  # recomputed by MONAI from the window size; never learned


# --- reading ---------------------------------------------------------------------------------------


@dataclass
class RawCheckpoint:
    """A checkpoint file's tensors, where they were found, and its safetensors metadata (if any)."""

    tensors: dict[str, Tensor]
    container: str | None  # dotted key path of the state dict inside the file; None: the file is the state dict
    metadata: dict[str, str] = field(default_factory=dict)


def read_checkpoint(path: str | Path) -> RawCheckpoint:
    path = Path(path)
    if not path.exists():
        raise InputError("checkpoint file not found", path=path, fix="check the path")
    if not path.is_file():
        raise InputError("checkpoint path is not a file", path=path, fix="give the checkpoint file itself")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        return _read_safetensors(path)
    if suffix in TORCH_SUFFIXES:
        tensors, container = _unwrap(_torch_load(path), path)
        return RawCheckpoint(tensors, container)
    raise InputError(
        f"unknown checkpoint format {suffix or '(no suffix)'!r}",
        path=path,
        fix=f"use a .safetensors file or a PyTorch state dict ({', '.join(TORCH_SUFFIXES)})",
    )


def load_state_dict_file(path: str | Path) -> dict[str, Tensor]:
    """The state dict in `path`, unwrapped from its container (`CONTAINER_KEYS`, first match wins)."""
    return read_checkpoint(path).tensors


def _numpy_scalar_globals() -> list:
    # Training scripts often save metrics such as `best_acc` as numpy scalars beside the weights.
    # A numpy scalar is plain data (a dtype and its bytes), so numpy's scalar constructor and dtypes are
    # allowed; everything else (numpy arrays included) stays refused by the weights-only unpickler.
    try:
        import numpy as np
    except ImportError:
        return []
    core = getattr(np, "_core", None) or np.core
    scalar = core.multiarray.scalar
    dtype_classes = {type(np.dtype(code)) for code in "?bhilqBHILQefd"}  # numpy >= 1.25 builds dtypes by class
    return [np.dtype, scalar, (scalar, "numpy.core.multiarray.scalar"), *dtype_classes]


def _torch_load(path: Path) -> object:
    try:
        with torch.serialization.safe_globals(_numpy_scalar_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        detail = _unpickler_reason(str(e))
        raise InputError(
            "refusing to load: the file contains pickled Python code or objects, not just tensors"
            + (f" ({detail})" if detail else "")
            + "; unpickling them could execute code, and edgeseg will not execute it (it loads weights only)",
            path=path,
            fix="if you trust its source, re-save it in a trusted environment as a plain state dict "
            "(torch.save(model.state_dict(), path)) or as .safetensors, and load that",
        ) from None
    except Exception as e:  # torch raises RuntimeError, OSError, EOFError, KeyError... for damaged files
        raise InputError(
            f"cannot be read as a PyTorch checkpoint; it looks truncated or corrupt ({type(e).__name__}: {_first_line(e)})",
            path=path,
            fix="download or copy the file again and compare its sha256 with the published one",
        ) from None


def _read_safetensors(path: Path) -> RawCheckpoint:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # SafetensorError for a bad header, OSError for a short file
        raise InputError(
            f"cannot be read as safetensors; it looks truncated or corrupt ({type(e).__name__}: {_first_line(e)})",
            path=path,
            fix="download or copy the file again and compare its sha256 with the published one",
        ) from None
    if not tensors:
        raise InputError("the safetensors file holds no tensors", path=path, fix="check that this is a model checkpoint")
    return RawCheckpoint(tensors, None, metadata)


def _is_tensor_dict(node: object) -> bool:
    return (
        isinstance(node, Mapping)
        and len(node) > 0
        and all(isinstance(k, str) and isinstance(v, Tensor) for k, v in node.items())
    )


def _unwrap(obj: object, path: Path) -> tuple[dict[str, Tensor], str | None]:
    """Find the state dict: the object itself, or under a `CONTAINER_KEYS` key (nested at most 3 deep)."""
    node, trail = obj, []
    for _ in range(4):
        if _is_tensor_dict(node):
            return dict(node), ".".join(trail) or None
        if not isinstance(node, Mapping):
            break
        present = [k for k in CONTAINER_KEYS if isinstance(node.get(k), Mapping)]
        key = next((k for k in present if _is_tensor_dict(node[k])), present[0] if present else None)
        if key is None:
            break
        node, trail = node[key], [*trail, key]
    found = sorted(map(str, node))[:12] if isinstance(node, Mapping) else type(node).__name__
    raise InputError(
        f"no state dict (a dict of named tensors) found{' under ' + '.'.join(trail) if trail else ''}; found {found}",
        path=path,
        fix=f"save the model's state_dict(), at the top level or under one of {', '.join(CONTAINER_KEYS)}",
    )


# --- key mapping -----------------------------------------------------------------------------------

# Rules applied in order to every key once leading `module.` / `backbone.` prefixes are stripped.
_KEY_RULES: tuple[tuple[re.Pattern[str], str], ...] = (
    # Releases that spell the encoder `swin_vit` instead of MONAI's `swinViT`.
    (re.compile(r"^swin_vit\."), "swinViT."),
    # MONAI self-supervised encoder (model_swinvit.pt): bare `patch_embed.*`, `layers1.0.*` ...
    (re.compile(r"^(patch_embed|layers[1-4]c?)\."), r"swinViT.\1."),
    # MONAI self-supervised encoder: timm's `mlp.fc1/fc2`; MONAI's MLPBlock names them linear1/linear2.
    (re.compile(r"^(swinViT\.layers[1-4]\.0\.blocks\.\d+\.mlp)\.fc([12])\."), r"\1.linear\2."),
    # FSEFT release: the 29-class 1x1x1 head is `classifier`; MONAI's UnetOutBlock is `out.conv.conv`.
    (re.compile(r"^classifier\."), "out.conv.conv."),
)


def _strip(key: str) -> str:
    return _PREFIX_RE.sub("", key)


def _map_key(key: str) -> str:
    key = _strip(key)
    for pattern, replacement in _KEY_RULES:
        key = pattern.sub(replacement, key)
    return key


@dataclass(frozen=True)
class _Layout:
    name: str
    description: str
    detect: Callable[[RawCheckpoint], bool]
    ignore: re.Pattern[str] | None = None  # tensors this layout is known to carry beside the SwinUNETR


def _any_key(raw: RawCheckpoint, test: Callable[[str], bool]) -> bool:
    return any(test(k) for k in raw.tensors)


# Named public layouts, detected in this order (the first match names the layout in the report).
_LAYOUTS: tuple[_Layout, ...] = (
    _Layout("edgeseg", "edgeseg safetensors with its model spec", lambda r: SPEC_METADATA_KEY in r.metadata),
    _Layout(
        "universal-model",
        "CLIP-Driven Universal Model / SuPreM (`net`, `module.backbone.` prefix, text-driven head beside it)",
        lambda r: _any_key(r, lambda k: re.sub(r"^(?:module\.)+", "", k).startswith("backbone.")),
        # The text embedding and the dynamic-head controller are not part of SwinUNETR.
        ignore=re.compile(r"^(organ_embedding|text_to_vision|text_encoder|controller|precls_conv|GAP)(\.|$)"),
    ),
    _Layout(
        "fseft",
        "FSEFT release (`module.` prefix, head `classifier`)",
        lambda r: _any_key(r, lambda k: _strip(k).startswith("classifier.")),
    ),
    _Layout(
        "monai-ssl-encoder",
        "MONAI self-supervised Swin encoder model_swinvit.pt (bare `layersN`, `mlp.fc`; encoder only)",
        lambda r: _any_key(r, lambda k: _strip(k).startswith(("patch_embed.", "layers1."))),
    ),
    _Layout(
        "swin_vit",
        "SwinUNETR release spelling the encoder `swin_vit`",
        lambda r: _any_key(r, lambda k: _strip(k).startswith("swin_vit.")),
    ),
    _Layout("monai-btcv", "MONAI BTCV fine-tuned SwinUNETR (`state_dict`)", lambda r: r.container == "state_dict"),
    _Layout("monai", "plain MONAI SwinUNETR state dict", lambda r: True),
)


def _detect(raw: RawCheckpoint) -> _Layout:
    return next(layout for layout in _LAYOUTS if layout.detect(raw))


def map_keys(
    state_dict: Mapping[str, Tensor], ignore: re.Pattern[str] | None = None, *, path: str | Path | None = None
) -> tuple[dict[str, Tensor], dict[str, str], list[str]]:
    """Rename keys to MONAI's: ``(mapped, source key of each mapped key, ignored keys)``."""
    mapped: dict[str, Tensor] = {}
    source: dict[str, str] = {}
    ignored: list[str] = []
    for key, tensor in state_dict.items():
        if ignore is not None and ignore.search(_strip(key)):
            ignored.append(_strip(key))
            continue
        new = _map_key(key)
        if new in mapped:
            raise InputError(
                f"tensors {source[new]!r} and {key!r} both map to {new!r}",
                path=path,
                fix="remove the duplicate from the checkpoint (it holds two copies of one layer)",
            )
        mapped[new], source[new] = tensor, key
    return mapped, source, ignored


# --- spec inference --------------------------------------------------------------------------------


def infer_spec(state_dict: Mapping[str, Tensor], *, need_head: bool = False) -> ModelSpec:
    """The ModelSpec whose SwinUNETR has these tensors (any supported layout).

    Without a head (encoder-only or backbone-only files) the number of classes is unknown: a 1-class
    placeholder head is assumed unless `need_head`.
    """
    sd, _, _ = map_keys(state_dict)
    fix = "pass the model spec that matches this checkpoint"
    embed = sd.get("swinViT.patch_embed.proj.weight")
    if embed is None or embed.ndim != 5:
        raise InputError(
            "cannot infer the model spec: no SwinUNETR patch embedding (swinViT.patch_embed.proj.weight); "
            "is this a SwinUNETR checkpoint?",
            fix=fix,
        )
    if tuple(embed.shape[2:]) != (2, 2, 2):
        raise InputError(f"cannot infer the model spec: patch size {tuple(embed.shape[2:])} is not MONAI's 2", fix=fix)
    feature_size, in_channels = int(embed.shape[0]), int(embed.shape[1])

    depths, heads, windows = [], [], set()
    for stage in range(1, 5):
        prefix = f"swinViT.layers{stage}.0.blocks."
        blocks = {int(k[len(prefix):].split(".", 1)[0]) for k in sd if k.startswith(prefix)}
        table = sd.get(f"{prefix}0.attn.relative_position_bias_table")
        if not blocks or table is None:
            raise InputError(f"cannot infer the model spec: Swin stage {stage} (swinViT.layers{stage}) has no blocks", fix=fix)
        depths.append(max(blocks) + 1)
        heads.append(int(table.shape[1]))
        side = round(int(table.shape[0]) ** (1 / 3))
        if side**3 != table.shape[0] or side % 2 == 0:
            raise InputError(
                f"cannot infer the Swin window: stage {stage}'s position bias table has {table.shape[0]} rows, "
                "not (2w-1)^3",
                fix=fix,
            )
        windows.add((side + 1) // 2)
    if len(windows) != 1:
        raise InputError(f"cannot infer the model spec: the stages use different Swin windows {sorted(windows)}", fix=fix)

    head = sd.get(HEAD_PREFIX + "conv.conv.weight")
    if head is None and need_head:
        raise InputError(
            "cannot infer the number of classes: the checkpoint has no segmentation head (out.conv.conv.weight)",
            fix=fix + " (out_channels and class_names)",
        )
    out_channels = 1 if head is None else int(head.shape[0])
    if out_channels == len(UNIVERSAL_CLASSES):
        names = UNIVERSAL_CLASSES
    else:
        names = tuple(f"class_{i}" for i in range(out_channels))
    return ModelSpec(
        feature_size=feature_size,
        depths=tuple(depths),
        num_heads=tuple(heads),
        in_channels=in_channels,
        out_channels=out_channels,
        swin_window=windows.pop(),
        use_v2=any(k.startswith("swinViT.layers1c.") for k in sd),
        class_names=names,
    )


# --- the report ------------------------------------------------------------------------------------


def _module_of(key: str) -> str:
    """Top-level module of a key: `swinViT.layers1`, `encoder1`, `decoder1`, `out`..."""
    parts = key.split(".")
    return ".".join(parts[:2]) if parts[0] == "swinViT" and len(parts) > 1 else parts[0]


def _grouped(keys: list[str]) -> str:
    counts = Counter(_module_of(k) for k in keys)
    return ", ".join(f"{m} ({n})" for m, n in counts.items())


@dataclass
class LoadReport:
    """What a checkpoint load did, by tensor name (names are MONAI's, after mapping)."""

    path: str
    layout: str
    layout_description: str
    container: str | None  # where the state dict was found in the file (None: top level)
    spec_source: str  # "given", "metadata" (edgeseg safetensors) or "inferred" (from the tensors)
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # model tensors the file lacks (kept at random init)
    unexpected: list[str] = field(default_factory=list)  # file tensors the model has no place for
    ignored: list[str] = field(default_factory=list)  # file tensors the layout is known to carry beside SwinUNETR
    renamed: int = 0  # how many keys were renamed to MONAI's names
    notes: list[str] = field(default_factory=list)

    @property
    def head_loaded(self) -> bool:
        return any(k.startswith(HEAD_PREFIX) for k in self.loaded) and not any(
            k.startswith(HEAD_PREFIX) for k in self.missing
        )

    def by_module(self) -> dict[str, dict[str, int]]:
        """Counts per top-level module: ``{"swinViT.layers1": {"loaded": 30, "missing": 0, ...}, ...}``."""
        table: dict[str, dict[str, int]] = defaultdict(lambda: dict(loaded=0, missing=0, unexpected=0, ignored=0))
        for kind in ("loaded", "missing", "unexpected", "ignored"):
            for key in getattr(self, kind):
                table[_module_of(key)][kind] += 1
        return dict(table)

    def summary(self) -> str:
        where = f"under {self.container!r}" if self.container else "at the top level"
        lines = [
            f"{self.path}: layout {self.layout} ({self.layout_description}); state dict {where}; spec {self.spec_source}",
            f"  loaded {len(self.loaded)} tensors ({self.renamed} renamed to MONAI names); "
            f"head {'loaded' if self.head_loaded else 'NOT loaded (random init)'}",
        ]
        for kind in ("missing", "unexpected", "ignored"):
            keys = getattr(self, kind)
            if keys:
                lines.append(f"  {kind} {len(keys)}: {_grouped(keys)}")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {
            "path": self.path, "layout": self.layout, "container": self.container, "spec_source": self.spec_source,
            "loaded": len(self.loaded), "missing": self.missing, "unexpected": self.unexpected,
            "ignored": self.ignored, "renamed": self.renamed, "notes": self.notes,
        }


# --- loading and saving ----------------------------------------------------------------------------


def _spec_from_metadata(raw: RawCheckpoint, path: Path) -> ModelSpec | None:
    text = raw.metadata.get(SPEC_METADATA_KEY)
    if text is None:
        return None
    try:
        return ModelSpec.from_dict(json.loads(text))
    except json.JSONDecodeError as e:
        raise InputError(f"the embedded model spec is not valid JSON ({e})", path=path, fix="re-save the checkpoint") from None
    except InputError as e:
        raise InputError(f"the embedded model spec is invalid: {e.problem}", path=path, fix=e.fix) from None


def load_checkpoint(
    path: str | Path, spec: ModelSpec | None = None, *, allow_partial: bool = False, need_head: bool = False
) -> tuple[torch.nn.Module, ModelSpec, LoadReport]:
    """Build the SwinUNETR of `spec` (or the file's own spec, or one inferred) and load `path` into it.

    Refuses shape mismatches, missing trunk tensors (unless `allow_partial`) and a missing head (if
    `need_head`). Returns ``(model in eval mode, spec, report)``.
    """
    path = Path(path)
    raw = read_checkpoint(path)
    layout = _detect(raw)
    mapped, source, ignored = map_keys(raw.tensors, layout.ignore, path=path)

    notes: list[str] = []
    spec_source = "given"
    if spec is None:
        spec, spec_source = _spec_from_metadata(raw, path), "metadata"
    if spec is None:
        try:
            spec, spec_source = infer_spec(mapped, need_head=need_head), "inferred"
        except InputError as e:
            raise InputError(e.problem, path=path, fix=e.fix) from None
        if HEAD_PREFIX + "conv.conv.weight" not in mapped:
            notes.append("no head in the file: out_channels is unknown, a 1-class placeholder head was built")

    model = build_swinunetr(spec)
    expected = model.state_dict()

    mismatched = [
        f"{k}: checkpoint {tuple(mapped[k].shape)} vs model {tuple(v.shape)}"
        + (f" (file key {source[k]!r})" if source[k] != k else "")
        for k, v in expected.items()
        if k in mapped and mapped[k].shape != v.shape
    ]
    if mismatched:
        more = f" ... and {len(mismatched) - 5} more" if len(mismatched) > 5 else ""
        raise InputError(
            f"{len(mismatched)} tensor shape(s) differ from the {spec_source} spec: " + "; ".join(mismatched[:5]) + more,
            path=path,
            fix="pass the spec this checkpoint was trained with, or none to infer it from the tensors",
        )

    loaded = [k for k in expected if k in mapped]
    wrong_type = [k for k in loaded if expected[k].is_floating_point() and not mapped[k].is_floating_point()]
    if wrong_type:
        raise InputError(f"{len(wrong_type)} weight tensor(s) are not floating point (e.g. {wrong_type[0]}: "
                         f"{mapped[wrong_type[0]].dtype})", path=path,
                         fix="this is not a trained SwinUNETR's state dict: use the checkpoint as training saved it")
    bad = [k for k in loaded if mapped[k].is_floating_point() and not bool(torch.isfinite(mapped[k]).all())]
    if bad:
        raise InputError(f"{len(bad)} tensor(s) hold NaN or Inf (e.g. {bad[0]}): a diverged or damaged checkpoint",
                         path=path, fix="use a checkpoint saved before training diverged, or copy the file again")
    missing = [k for k in expected if k not in mapped and not k.endswith(_DERIVED_BUFFER)]
    unexpected = [k for k in mapped if k not in expected]
    report = LoadReport(
        path=str(path), layout=layout.name, layout_description=layout.description, container=raw.container,
        spec_source=spec_source, loaded=loaded, missing=missing, unexpected=unexpected, ignored=ignored,
        renamed=sum(source[k] != k for k in mapped), notes=notes,
    )

    trunk_missing = [k for k in missing if not k.startswith(HEAD_PREFIX)]
    if trunk_missing and not allow_partial:
        raise InputError(
            f"{len(trunk_missing)} trunk tensors are missing from the checkpoint (layout {layout.name}), by module: "
            f"{_grouped(trunk_missing)}; e.g. {trunk_missing[0]}",
            path=path,
            fix="use a complete SwinUNETR checkpoint, or allow a partial load (allow_partial) to keep random "
            "weights for those modules (e.g. for encoder-only self-supervised weights)",
        )
    if need_head and any(k.startswith(HEAD_PREFIX) for k in missing):
        raise InputError(
            "the checkpoint has no segmentation head (out.conv.conv.*), and this step needs one",
            path=path,
            fix="use a checkpoint with a trained head, or train an adapter head first",
        )
    if trunk_missing:
        notes.append(f"partial load: random weights kept for {_grouped(trunk_missing)}")

    result = model.load_state_dict({k: mapped[k] for k in loaded}, strict=False)
    assert not result.unexpected_keys, result.unexpected_keys  # `loaded` only holds the model's own keys
    return model.eval(), spec, report


def load_exported_checkpoint(trunk: TrunkManifest, folder: str | Path, *, needed_for: str, otherwise: str = "",
                             allow_partial: bool = True) -> torch.nn.Module:
    """The model (eval mode) rebuilt from the checkpoint the trunk in `folder` was exported from, as its
    manifest names it: refused when the file is not there or its sha256 differs from the recorded one.

    needed_for: what needs it, the start of the refusal ("the torch backend rebuilds the trunk from its
    checkpoint"); otherwise: the alternative the fix offers. allow_partial as at export (the trunk's
    graphs were exported from this load).
    """
    ckpt = trunk.checkpoint
    path = Path(ckpt.path if ckpt is not None else "")
    if ckpt is None or not ckpt.path or not path.is_file():
        raise InputError(f"{needed_for}, which is not at {str(path)!r}", path=folder,
                         fix="put the checkpoint the trunk was exported from back at that path"
                             + (f", or {otherwise}" if otherwise else ""))
    if sha256_file(path) != ckpt.sha256:
        raise InputError("the checkpoint differs from the one this trunk was exported from (sha256)", path=path,
                         fix=f"restore the original checkpoint, or re-export the trunk from this one ({trunk.REBUILD})")
    model, _, _ = load_checkpoint(path, ModelSpec.from_dict(dict(trunk.model_spec)), allow_partial=allow_partial)
    return model.eval()


def save_checkpoint(model: torch.nn.Module, spec: ModelSpec, path: str | Path, *, force: bool = False,
                    dtype: torch.dtype | None = None, drop_derived: bool = False) -> Path:
    """Write `model`'s tensors as safetensors with `spec` as JSON in the metadata, atomically.

    `dtype` (e.g. torch.float16, to halve a shipped file) converts the floating-point tensors; loading
    casts them back to the model's float32. `drop_derived` leaves out the Swin blocks'
    relative_position_index buffers (int64, recomputed by MONAI from the window size; a third of a small
    model's file).
    """
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        raise InputError("edgeseg saves checkpoints as safetensors", path=path, fix="give the file a .safetensors suffix")
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    if drop_derived:
        tensors = {k: v for k, v in tensors.items() if not k.endswith(_DERIVED_BUFFER)}
    if dtype is not None:
        tensors = {k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}
    metadata = {"format": "pt", SPEC_METADATA_KEY: json.dumps(spec.to_dict(), sort_keys=True)}
    with atomic_path(path, force=force) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return path


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes, for manifests."""
    path = Path(path)
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    except FileNotFoundError:
        raise InputError("file not found", path=path, fix="check the path") from None
    return digest.hexdigest()


def _unpickler_reason(message: str) -> str:
    # torch wraps the reason ("Unsupported global: GLOBAL posix.system ...") in advice to set weights_only=False.
    lines = [ln.strip() for ln in message.splitlines() if ln.strip() and not ln.startswith("Check the documentation")]
    reason = lines[-1] if lines else ""
    return reason.removeprefix("WeightsUnpickler error:").strip()[:200]


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else "no message"


def file_spec(path: str | Path) -> ModelSpec:
    """The spec a checkpoint carries (safetensors metadata) or that its tensors tell; the base for overrides."""
    path = Path(path)
    raw = read_checkpoint(path)
    spec = _spec_from_metadata(raw, path)
    if spec is not None:
        return spec
    mapped, _, _ = map_keys(raw.tensors, _detect(raw).ignore, path=path)
    try:
        return infer_spec(mapped)
    except InputError as e:
        raise InputError(e.problem, path=path, fix=e.fix) from None
