"""Seconds per pretraining step of the shipped phantom SwinUNETR's recipe, alone on the machine.

    .venv/bin/python benchmarks/pretrain_step.py [--steps 12]

The shipped model's pretraining run shared its 2 cores with other jobs for part of its hour, so its
wall time overstates what the recipe needs; this measures one step (batch 2, 64^3, forward + backward +
AdamW) on its own and projects the whole run: phantoms + steps x step + validation, from the report.
Writes benchmarks/results/<machine>/pretrain_step.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_tag, write_result  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import torch

    from edgeseg.assets import DEFAULT_MODEL
    from edgeseg.model.swinunetr import build_swinunetr
    from edgeseg.train.pretrain import REPORT_NAME, PretrainConfig, multilabel_loss

    torch.set_num_threads(args.threads)
    report = json.loads((DEFAULT_MODEL.parent / REPORT_NAME).read_text())
    cfg = PretrainConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in report["config"].items()})
    torch.manual_seed(0)
    model = build_swinunetr(cfg.model_spec()).train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    w = cfg.window
    x = torch.rand(cfg.batch_size, 1, w, w, w)
    y = (torch.rand(cfg.batch_size, len(cfg.model_spec().class_names), w, w, w) > 0.9).float()
    times = []
    for _ in range(args.steps + 2):
        t = time.perf_counter()
        loss = multilabel_loss(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        times.append(time.perf_counter() - t)
    step = statistics.median(times[2:])  # two warm-up steps
    t = report["timings"]
    projected = t["data_seconds"] + cfg.steps * step + t["validation_seconds"]
    result = {
        "benchmark": "pretrain_step", "machine": machine_tag(), "threads": args.threads, "torch": torch.__version__,
        "steps_timed": args.steps, "step_seconds_median": round(step, 3),
        "step_seconds": [round(v, 3) for v in times[2:]],
        "recorded_run": {"train_seconds": t["train_seconds"], "total_seconds": t["total_seconds"]},
        "projected_total_seconds_alone": round(projected, 1),
    }
    write_result("pretrain_step", result, indent=1)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
