"""Seeded random-weight artifacts to benchmark with (the timing does not depend on the weights).

    python -m edgeseg.bench.artifacts trunk --out DIR [--feature-size 48] [--window 96] [--cut decoder1]
                                            [--precision fp32,fp16[,int8]] [--batch 4] [--tensorrt]
    python -m edgeseg.bench.artifacts engine --trunk DIR --out DIR [--precision fp32,fp16[,int8]] [--tensorrt]
    python -m edgeseg.bench.artifacts shipped-engine --out DIR [--organs liver,kidney_left]

`trunk`: a SwinUNETR with torch.manual_seed(0) weights, saved as DIR.safetensors beside DIR (the
torch backend rebuilds the trunk from it), exported with `edgeseg.export.trunk.export_trunk` (parity
and all). `engine`: that trunk fused with an untrained linear-probe adapter for "liver", written by
the same adapter writer `edgeseg adapt` uses. `shipped-engine`: the shipped phantom model's trunk
(decoder1 cut) fused with zero-shot linear probes, each the pretrained head's row for its organ (the
start `edgeseg adapt` gives a known organ): real masks on the real CT with no training, in seconds.
An artifact whose manifest already exists is reused.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def random_trunk(out: Path, *, feature_size: int = 48, window: int = 96, cut: str = "decoder1",
                 precisions: tuple[str, ...] = ("fp32", "fp16"), max_batch: int = 4, tensorrt: bool = False,
                 threads: int | None = None, log=print) -> Path:
    if (out / "manifest.json").exists():
        log(f"{out}: exists, reused")
        return out
    import torch

    from edgeseg.export.trunk import export_trunk
    from edgeseg.model.checkpoint import save_checkpoint
    from edgeseg.model.spec import ModelSpec
    from edgeseg.model.swinunetr import build_swinunetr
    from edgeseg.runtime.preprocess import PreprocessSpec

    spec = ModelSpec(feature_size=feature_size, out_channels=1, class_names=("liver",),
                     preprocess=PreprocessSpec(window=(window,) * 3))
    torch.manual_seed(0)
    ckpt = out.parent / f"{out.name}.safetensors"
    out.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(build_swinunetr(spec), spec, ckpt, force=True)
    export_trunk(ckpt, out, cut=cut, precisions=precisions, max_batch=max_batch, tensorrt=tensorrt, threads=threads,
                 force=True, trained_head=False, log=log)  # random weights: int8 flips through its head mean nothing
    return out


def random_engine(trunk: Path, out: Path, *, tensorrt: bool = False, threads: int | None = None,
                  precisions: tuple[str, ...] = ("fp32", "fp16"), log=print) -> Path:
    if (out / "manifest.json").exists():
        log(f"{out}: exists, reused")
        return out
    from edgeseg.adapters import build_adapter
    from edgeseg.export.adapter import save_adapter
    from edgeseg.export.fuse import fuse
    from edgeseg.runtime.artifacts.adapter import AdapterIO, AdapterManifest
    from edgeseg.runtime.artifacts.trunk import TrunkManifest

    manifest = TrunkManifest.from_folder(trunk, verify_files=False)
    fs = manifest.feature_size
    if manifest.cut != "decoder1":
        from edgeseg.runtime.errors import InputError

        raise InputError("the benchmark engine puts a linear probe on a decoder1 trunk", path=trunk,
                         fix="export the trunk with --cut decoder1")
    adapter_dir = out.parent / f"{out.name}-adapter"
    if not (adapter_dir / "manifest.json").exists():
        body = AdapterManifest(adapter="lp", organ="liver", cut="decoder1", feature_size=fs,
                               trunk_manifest_sha256=manifest.record["manifest_sha256"], io=AdapterIO(("features",)),
                               extra={"init": {"block": "random", "head": "random"}, "trainable_params": fs + 1,
                                      "note": "untrained: for timing only"})
        save_adapter(build_adapter("lp", feature_size=fs), adapter_dir, body, force=True)
    fuse(trunk, [adapter_dir], out, precisions=precisions, tensorrt=tensorrt, threads=threads, force=True, log=log)
    return out


def shipped_engine(out: Path, *, organs: tuple[str, ...] = ("liver", "kidney_left"), checkpoint: Path | None = None,
                   max_batch: int = 4, threads: int | None = None, log=print) -> Path:
    """The shipped model (or `checkpoint`) exported at decoder1 (fp32) into DIR-trunk and fused into `out` with one
    zero-shot linear probe per organ: the pretrained head's row for the organ (`LinearProbe.init_from_head`)."""
    if (out / "manifest.json").exists():
        log(f"{out}: exists, reused")
        return out
    from edgeseg.adapters import build_adapter
    from edgeseg.assets import DEFAULT_MODEL
    from edgeseg.export.adapter import save_adapter
    from edgeseg.export.fuse import fuse
    from edgeseg.export.trunk import export_trunk
    from edgeseg.model.checkpoint import load_checkpoint
    from edgeseg.runtime.artifacts.adapter import AdapterIO, AdapterManifest
    from edgeseg.runtime.artifacts.trunk import TrunkManifest
    from edgeseg.runtime.errors import InputError

    checkpoint = Path(checkpoint or DEFAULT_MODEL)
    model, spec, _ = load_checkpoint(checkpoint)
    unknown = [o for o in organs if o not in spec.class_names]
    if unknown or not organs:
        raise InputError(f"organs {list(organs)}: a zero-shot head needs classes of the model", path=checkpoint,
                         fix=f"choose from {', '.join(spec.class_names)}")
    trunk = out.parent / f"{out.name}-trunk"
    if not (trunk / "manifest.json").exists():
        export_trunk(checkpoint, trunk, cut="decoder1", precisions=("fp32",), max_batch=max_batch, threads=threads,
                     force=True, log=log)
    manifest = TrunkManifest.from_folder(trunk, verify_files=False)
    adapter_dirs = []
    for organ in organs:
        folder = out.parent / f"{out.name}-{organ}"
        index = spec.class_names.index(organ)
        body = AdapterManifest(adapter="lp", organ=organ, cut="decoder1", feature_size=spec.feature_size,
                               trunk_manifest_sha256=manifest.sha256, io=AdapterIO(tuple(manifest.io.outputs)),
                               extra={"init": {"block": "random", "head": f"pretrained head row {index} ({organ})"},
                                      "trainable_params": spec.feature_size + 1, "steps": 0,
                                      "note": "zero-shot: the pretrained head's row, not trained"})
        save_adapter(build_adapter("lp", feature_size=spec.feature_size, pretrained=model, class_index=index), folder,
                     body, force=True)
        adapter_dirs.append(folder)
    fuse(trunk, adapter_dirs, out, precisions=("fp32",), threads=threads, force=True, log=log)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="what", required=True)
    t = sub.add_parser("trunk")
    t.add_argument("--out", type=Path, required=True)
    t.add_argument("--feature-size", type=int, default=48)
    t.add_argument("--window", type=int, default=96)
    t.add_argument("--cut", default="decoder1", choices=("decoder1", "pre-decoder1"))
    t.add_argument("--precision", default="fp32,fp16")
    t.add_argument("--batch", type=int, default=4)
    t.add_argument("--tensorrt", action="store_true")
    t.add_argument("--threads", type=int, default=None)
    e = sub.add_parser("engine")
    e.add_argument("--trunk", type=Path, required=True)
    e.add_argument("--out", type=Path, required=True)
    e.add_argument("--precision", default="fp32,fp16")
    e.add_argument("--tensorrt", action="store_true")
    e.add_argument("--threads", type=int, default=None)
    s = sub.add_parser("shipped-engine")
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--organs", default="liver,kidney_left")
    s.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    if args.what == "shipped-engine":
        shipped_engine(args.out, organs=tuple(o.strip() for o in args.organs.split(",") if o.strip()),
                       threads=args.threads)
    elif args.what == "trunk":
        random_trunk(args.out, feature_size=args.feature_size, window=args.window, cut=args.cut,
                     precisions=tuple(p.strip() for p in args.precision.split(",") if p.strip()), max_batch=args.batch,
                     tensorrt=args.tensorrt, threads=args.threads)
    else:
        random_engine(args.trunk, args.out, tensorrt=args.tensorrt, threads=args.threads,
                      precisions=tuple(p.strip() for p in args.precision.split(",") if p.strip()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
