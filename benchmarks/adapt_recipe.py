"""Does `edgeseg adapt`'s default recipe converge on this machine, how fast, in how much memory, to what Dice?

    .venv/bin/python benchmarks/adapt_recipe.py                         # the stand-in (shipped model, fs 12)
    .venv/bin/python benchmarks/adapt_recipe.py --feature-size 48       # a full-size trunk (random weights)

What a hospital runs, stage by stage: K support phantoms from the TARGET scanner (patients the
pretraining never saw) -> `edgeseg export` (the cut the adapter needs) -> `edgeseg cache` per organ ->
`edgeseg adapt --adapter A` with its defaults, in its own process (so its peak RSS is its own and its
wall time is what a user waits) -> Dice of the kept adapter on held-out phantoms, predicted on the
trunk's features of the whole scan. Only the `adapt` process is timed. Feature size 48 has no
pretrained weights that ship offline: its trunk is seeded random, so its Dice says only whether the
recipe fits a random trunk's features, while time and memory are those of the real size.

Writes benchmarks/results/<machine>/adapt_recipe[_fs48].json: `rows` of {adapter, organ, setting,
feature_size, k, adapt_seconds, peak_rss_gib, steps, kept_step, stopped, heldout_dice (the left-out
support), dice (mean over held-out phantoms), dice_per_case}. Run it alone: two cores shared with
another job give other times.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_tag, write_result  # noqa: E402


def _checkpoint(feature_size: int, work: Path) -> Path:
    from edgeseg.assets import DEFAULT_MODEL

    if feature_size == 12:
        return DEFAULT_MODEL
    import torch

    from edgeseg.model.checkpoint import file_spec, save_checkpoint
    from edgeseg.model.spec import ModelSpec
    from edgeseg.model.swinunetr import build_swinunetr

    path = work / f"random-fs{feature_size}.safetensors"
    if path.exists():  # kept from an earlier run: the trunk and caches made from it stay valid
        return path
    shipped = file_spec(DEFAULT_MODEL)
    spec = ModelSpec(feature_size=feature_size, out_channels=shipped.out_channels, class_names=shipped.class_names)
    torch.manual_seed(0)
    return save_checkpoint(build_swinunetr(spec), spec, path)


def _heldout_dice(trunk_dir: Path, adapter_dir: Path, heldout: list[Path], organ: str, threads: int) -> list[float]:
    import numpy as np
    import torch
    from safetensors.torch import load_file

    from edgeseg.adapters import build_adapter
    from edgeseg.runtime.artifacts.adapter import AdapterManifest
    from edgeseg.runtime.artifacts.trunk import TrunkManifest
    from edgeseg.runtime.preprocess import preprocess
    from edgeseg.runtime.trunk import open_trunk
    from edgeseg.train.adapt import predict_features
    from edgeseg.train.losses import dice_score

    m = AdapterManifest.from_folder(adapter_dir)
    adapter = build_adapter(m.adapter, feature_size=m.feature_size)
    adapter.load_state_dict(load_file(str(adapter_dir / AdapterManifest.WEIGHTS)))
    adapter.eval()
    torch.set_num_threads(threads)
    spec = TrunkManifest.from_folder(trunk_dir, verify_files=False).preprocess
    out = []
    with open_trunk(trunk_dir, backend="ort", threads=threads) as trunk:
        for case in heldout:
            prepared = preprocess(case / "ct.nii.gz", spec, label=case / "segmentations" / f"{organ}.nii.gz")
            feats = trunk.features(prepared.image[None], dtype=np.float32)
            prob = predict_features(adapter, feats, spec.window)
            out.append(round(dice_score(prob > 0.5, prepared.label > 0), 4))
    return out


def _made_from(folder: Path, manifest_class, source) -> str | None:
    """What the artifact in `folder` was made from (a hash read by `source`), or None when there is none:
    a work folder kept from an earlier run is reused only if it was made from the same input."""
    if not (folder / "manifest.json").exists():
        return None
    try:
        return source(manifest_class.from_folder(folder, verify_files=False))
    except Exception:  # noqa: BLE001 - unreadable: rebuild it
        return None


def _kept_adapter(out: Path, cache: Path, kind: str, crop: int | None) -> dict | None:
    """The manifest of an adapter trained earlier in `out` on this very cache (same hash) with the default
    recipe (or `crop`), or None: then it is trained again."""
    from edgeseg.runtime.artifacts.adapter import AdapterManifest
    from edgeseg.runtime.artifacts.cache import CacheManifest
    from edgeseg.train.adapt import AdaptConfig

    if not (out / "manifest.json").exists():
        return None
    m = AdapterManifest.from_folder(out, verify_files=True).record
    want = AdaptConfig(adapter=kind, crop=crop).resolved(m["feature_size"]).to_dict()
    same = {k: v for k, v in m["config"].items() if k != "threads"} == {k: v for k, v in want.items() if k != "threads"}
    made_from = (m.get("cache") or {}).get("manifest_sha256")
    return dict(m) if same and made_from == CacheManifest.from_folder(cache, verify_files=False).sha256 else None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--feature-size", type=int, default=12)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--organs", default="kidney_left,inferior_vena_cava")
    ap.add_argument("--adapters", default="lp,spatial,decoder-block")
    ap.add_argument("--heldout", type=int, default=3)
    ap.add_argument("--decoder-crops", default="", help="also train the decoder block at these crop sides (e.g. 64: "
                                                          "the window its instance norms see at inference)")
    ap.add_argument("--variant", action="append", default=[],
                    help="also train the decoder block with these extra `edgeseg adapt` options (quoted, e.g. "
                         "\"--steps 1000\"); repeatable: one row per variant")
    ap.add_argument("--data-seed", type=int, default=None,
                    help="draw supports and held-out phantoms from this seed instead of the demo's: to choose a "
                         "recipe on patients the demo never reports")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reuse-adapters", action="store_true",
                    help="keep an adapter already trained in --work on the same cache with the same crop (its recorded "
                         "time and memory are reported): finishes a run whose held-out Dice was interrupted")
    ap.add_argument("--work", type=Path, default=Path("/tmp/edgeseg-adapt-recipe"))
    ap.add_argument("--name", default=None, help="result name (default adapt_recipe, adapt_recipe_fs48, ...)")
    args = ap.parse_args()

    from edgeseg.adapters import CUT_OF
    from edgeseg.features import CacheConfig, build_cache
    from edgeseg.data.phantom import TARGET, write_dataset
    from edgeseg.demo import DEMO_DATA_SEED
    from edgeseg.export.trunk import export_trunk
    from edgeseg.model.checkpoint import file_spec
    from edgeseg.runtime.artifacts.cache import CacheManifest
    from edgeseg.runtime.artifacts.trunk import TrunkManifest
    from edgeseg.runtime.host import host_description
    from edgeseg.runtime.manifest import portable_path, sha256_file

    data_seed = DEMO_DATA_SEED if args.data_seed is None else args.data_seed
    # the phantoms are kept in --work between runs: another data seed gets its own folder
    work = args.work / (f"fs{args.feature_size}" + ("" if args.data_seed is None else f"-data{data_seed}"))
    work.mkdir(parents=True, exist_ok=True)
    organs = [o for o in args.organs.split(",") if o]
    adapters = [a for a in args.adapters.split(",") if a]
    ckpt = _checkpoint(args.feature_size, work)
    known = set(file_spec(ckpt).class_names)
    support, heldout_dir = work / "support", work / "heldout"
    if not support.exists():
        write_dataset(support, args.k, data_seed, TARGET, z_range=(-200.0, 160.0), max_voxels=6_000_000)
        write_dataset(heldout_dir, args.heldout, data_seed + 1000, TARGET, z_range=(-200.0, 160.0),
                      max_voxels=6_000_000)
    heldout = sorted(p for p in heldout_dir.iterdir() if p.is_dir())
    rows = []
    for cut in sorted({CUT_OF[a] for a in adapters}):
        trunk = work / f"trunk-{cut}"
        if _made_from(trunk, TrunkManifest, lambda m: m.checkpoint.sha256) != sha256_file(ckpt):
            export_trunk(ckpt, trunk, cut=cut, precisions=("fp32",), max_batch=1, threads=args.threads, force=True)
        trunk_hash = TrunkManifest.from_folder(trunk, verify_files=False).sha256
        for organ in organs:
            cache = work / f"cache-{cut}-{organ}"
            if _made_from(cache, CacheManifest, lambda m: m.trunk.manifest_sha256) != trunk_hash:  # never a stale trunk's
                build_cache(trunk, support, organ, cache,
                            CacheConfig(k=args.k, seed=0, backend="ort", threads=args.threads, force=True),
                            log=lambda m: None)
            runs = [(k, None, "") for k in adapters if CUT_OF[k] == cut]
            if cut == "pre-decoder1":
                runs += [("decoder-block", int(c), "") for c in args.decoder_crops.split(",") if c]
                runs += [("decoder-block", None, v) for v in args.variant]
            for kind, crop, variant in runs:
                out = work / (f"adapter-{kind}-{organ}" + ("" if crop is None else f"-crop{crop}")
                              + (f"-v{args.variant.index(variant)}" if variant else ""))
                m = _kept_adapter(out, cache, kind, crop) if args.reuse_adapters and not variant else None
                wall = None  # a kept adapter's time is the one its manifest recorded when it was trained
                if m is None:
                    t0 = time.perf_counter()
                    done = subprocess.run([sys.executable, "-m", "edgeseg", "adapt", "--cache", str(cache), "--adapter", kind,
                                           "--out", str(out), "--threads", str(args.threads), "--force", "--json",
                                           *([] if crop is None else ["--crop", str(crop)]), *shlex.split(variant)],
                                          capture_output=True, text=True)
                    if done.returncode:
                        raise SystemExit(f"edgeseg adapt failed ({done.returncode}): {done.stdout[-2000:]}{done.stderr[-2000:]}")
                    wall = round(time.perf_counter() - t0, 1)
                    m = json.loads(done.stdout)
                dice = _heldout_dice(trunk, out, heldout, organ, args.threads)
                row = {"adapter": kind, "organ": organ,
                       "setting": "A (pretrained class, other scanner)" if organ in known else "B (never labelled)",
                       "feature_size": args.feature_size, "k": args.k, "adapt_seconds": m["wall_seconds"],
                       "process_seconds": wall, "reused": wall is None, "adapter_created": m.get("created"),
                       "peak_rss_gib": m["peak_rss_gib"], "threads": m["threads"],
                       "steps": m["steps"], "kept_step": m["kept_step"], "stopped": m["stopped"],
                       "heldout_dice": (m.get("heldout") or {}).get("dice"), "dice": round(sum(dice) / len(dice), 4),
                       "dice_per_case": dice, "lr": m["config"]["lr"], "crop": m["config"]["crop"],
                       "variant": variant or None}
                rows.append(row)
                print(json.dumps(row), flush=True)
    result = {"kind": "adapt_recipe", "machine": machine_tag(), "host": host_description(),
              "checkpoint": {"path": portable_path(ckpt), "sha256": sha256_file(ckpt),
                             "weights": "shipped stand-in" if args.feature_size == 12 else "seeded random (no offline weights)"},
              "command": "python benchmarks/adapt_recipe.py " + shlex.join(sys.argv[1:]),
              "data": {"support_seed": data_seed, "heldout_seed": data_seed + 1000, "domain": "target",
                       "heldout": [p.name for p in heldout]},
              "rows": rows}
    name = args.name or ("adapt_recipe" if args.feature_size == 12 else f"adapt_recipe_fs{args.feature_size}")
    print(write_result(name, result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
