"""`edgeseg pretrain`, `edgeseg fewshot` and `edgeseg demo`: the experiments, each end to end."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from edgeseg.cli.output import JSON_OPT, console, printer, show, user_errors
from edgeseg.cli.parse import int_list, names
from edgeseg.runtime.support import BackendChoice


def pretrain(
    out: Path = typer.Option(..., "--out", help="Folder for the weights (fp16 safetensors), pretrain.json, MODEL_CARD.md and the resumable state."),
    steps: int = typer.Option(3000, "--steps", min=1, help="Optimiser steps (fixed, so a seed reproduces the run)."),
    n_train: int = typer.Option(48, "--n-train", min=1, help="SOURCE-domain training phantoms."),
    n_val: int = typer.Option(6, "--n-val", min=1, help="Held-out phantoms per domain (SOURCE and TARGET) for validation Dice."),
    feature_size: int = typer.Option(12, "--feature-size", help="SwinUNETR feature size (multiple of 12)."),
    swin_window: int = typer.Option(4, "--swin-window", min=2, help="Attention window of the Swin stages (4 is cheap on a CPU)."),
    spacing: float = typer.Option(3.0, "--spacing", help="Model grid spacing, mm."),
    window: int = typer.Option(64, "--window", help="Crop and sliding-window side, voxels (multiple of 32)."),
    lr: float = typer.Option(2e-3, "--lr"),
    restart: Optional[list[str]] = typer.Option(None, "--restart", metavar="STEPS:LR[:adaptive]",
                                                help="A warm restart after --steps: STEPS more steps, warm-up to LR then cosine to 0; "
                                                     "':adaptive' draws each crop's organ by difficulty (1 - its running training Dice) "
                                                     "(repeatable; 'none' for none; default: the shipped recipe's). "
                                                     "With --resume --force it extends a finished pretraining."),
    seed: int = typer.Option(0, "--seed", help="Seed of the initialisation and the crop draw."),
    data_seed: int = typer.Option(0, "--data-seed", help="Seed of the phantom dataset."),
    eval_every: int = typer.Option(0, "--eval-every", min=0, help="Validate every N steps as well as at the end."),
    save_every: int = typer.Option(100, "--save-every", min=1, help="Save the resumable training state every N steps."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the training state in --out (same options)."),
    max_minutes: Optional[float] = typer.Option(None, "--max-minutes", min=0.0,
                                                help="Stop this run at the first state save after N minutes of training; continue with --resume."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1),
    force: bool = typer.Option(False, "--force", help="Replace existing weights or an unfinished state in --out."),
    as_json: bool = JSON_OPT,
) -> None:
    """Pretrain a small SwinUNETR on phantom CT (the embedded default foundation model); resumable."""
    from rich.markup import escape
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    with user_errors(as_json):
        from edgeseg.train.pretrain import PretrainConfig, parse_restart
        from edgeseg.train.pretrain import pretrain as run_pretrain

        config = PretrainConfig(steps=steps, n_train=n_train, n_val=n_val, feature_size=feature_size,
                                swin_window=swin_window, spacing=spacing, window=window, lr=lr,
                                restarts=PretrainConfig.restarts if restart is None else
                                tuple(parse_restart(r) for r in restart if r.lower() != "none"), seed=seed,
                                data_seed=data_seed, eval_every=eval_every, save_every=save_every, threads=threads)
        con = console(stderr=as_json)
        columns = (TextColumn("{task.description}"), MofNCompleteColumn(), BarColumn(),
                   TextColumn("loss {task.fields[loss]}"), TimeElapsedColumn(), TimeRemainingColumn())
        tasks: dict[str, int] = {}
        with Progress(*columns, console=con) as bar:
            def progress(stage: str, done: int, total: int, loss: float | None) -> None:
                if stage not in tasks:
                    tasks[stage] = bar.add_task(stage, total=total, loss="-", completed=done)
                bar.update(tasks[stage], completed=done, loss="-" if loss is None else f"{loss:.4f}")

            report = run_pretrain(out, config, force=force, resume=resume, max_minutes=max_minutes, progress=progress,
                                  log=printer(con))

        def text() -> None:
            if not report["finished"]:
                con.print(f"[yellow]paused[/] at step {report['step']} of {report['steps']}: continue with "
                          f"`edgeseg pretrain --out {escape(str(out))} --resume` and the same options", highlight=False)
                return
            val = report["validation_dice"]
            con.print(f"[green]pretrained[/] {escape(str(out))}: mean validation Dice "
                      + ", ".join(f"{d} {v['mean']:.3f}" for d, v in val.items())
                      + f"; {report['total_wall_seconds'] / 60:.1f} min over {len(report['runs'])} run(s)", highlight=False)

        show({k: v for k, v in report.items() if k != "loss_curve"}, as_json, text)


def fewshot(
    out: Path = typer.Option(..., "--out", help="Folder for features/, runs.jsonl (resumable), results.json, table.md, dsc_vs_k.png."),
    checkpoint_path: Optional[Path] = typer.Option(None, "--checkpoint", help="Pretrained SwinUNETR with a head (default: the shipped phantom model)."),
    organs: str = typer.Option("liver,kidney_left,pancreas,gallbladder,inferior_vena_cava,esophagus", "--organs",
                               help="Organs, comma-separated: those the model's head knows are setting A (other scanner), the others setting B (novel)."),
    ks: str = typer.Option("1,5,10", "--k", help="Support counts K, comma-separated."),
    seeds: str = typer.Option("0,1,2", "--seeds", help="Seeds (each draws other supports), comma-separated."),
    methods: str = typer.Option("generalization,ft-last,lp,spatial,decoder-block,decoder-block+ti", "--methods",
                                help="Methods, comma-separated; scratch and ft (whole model) are off by default: a real budget costs a pretraining per run on a CPU."),
    n_cases: int = typer.Option(22, "--n-cases", min=2, help="Target-domain phantoms (queries + support pool)."),
    n_query: int = typer.Option(5, "--n-query", min=1, help="Query scans per organ (the same for every run)."),
    model_steps: int = typer.Option(300, "--model-steps", min=1, help="Steps for scratch and ft (adapters use `edgeseg adapt`'s defaults)."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1),
    report: bool = typer.Option(False, "--report", help="Run nothing: summarise the runs finished so far in --out "
                                "(results.json and table.md say how many of the planned runs they hold)."),
    as_json: bool = JSON_OPT,
) -> None:
    """The paper's few-shot protocol on target-domain phantoms: DSC per method, K and organ (resumable)."""
    from rich.markup import escape
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    with user_errors(as_json):
        from edgeseg.assets import DEFAULT_MODEL
        from edgeseg.fewshot import FewshotConfig, run_protocol

        config = FewshotConfig(organs=names(organs), ks=int_list(ks, "--k"), seeds=int_list(seeds, "--seeds"),
                               methods=names(methods), n_cases=n_cases, n_query=n_query, model_steps=model_steps, threads=threads)
        con = console(stderr=as_json)
        columns = (TextColumn("{task.description}"), MofNCompleteColumn(), BarColumn(), TimeElapsedColumn(),
                   TimeRemainingColumn())
        tasks: dict[str, int] = {}
        with Progress(*columns, console=con) as bar:
            def progress(stage: str, done: int, total: int) -> None:
                if stage not in tasks:
                    tasks[stage] = bar.add_task(stage, total=total)
                bar.update(tasks[stage], completed=done)

            summary = run_protocol(checkpoint_path or DEFAULT_MODEL, out, config, progress=progress, log=printer(con),
                                   report_only=report)

        def text() -> None:
            con.print((out / "table.md").read_text(), highlight=False, markup=False)
            con.print(f"[green]results[/] {escape(str(out))}", highlight=False)

        show({k: v for k, v in summary.items() if k != "records"}, as_json, text)


def demo(
    out: Path = typer.Option(Path("out/demo"), "--out", help="The one folder every artifact lands in."),
    organs: str = typer.Option("kidney_left,inferior_vena_cava", "--organs",
                               help="Organs, comma-separated (default: kidney_left, a pretrained class on another scanner; inferior_vena_cava, never labelled in pretraining)."),
    k: int = typer.Option(5, "--k", min=1, help="Support phantoms."),
    seed: int = typer.Option(0, "--seed"),
    backend: BackendChoice = typer.Option(BackendChoice.AUTO, "--backend", case_sensitive=False,
                                          help="The backend of the cache and predict stages (auto prints which ran)."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1),
    force: bool = typer.Option(False, "--force", help="Run again into an --out that holds a finished demo."),
    as_json: bool = JSON_OPT,
) -> None:
    """Phantoms -> export the shipped model -> cache -> adapt (decoder-block, two organs) -> fuse -> predict."""
    from rich.markup import escape

    with user_errors(as_json):
        from edgeseg.demo import run_demo

        con = console(stderr=as_json)
        with con.status("demo") as status:
            summary = run_demo(out, organs=list(names(organs)), k=k, seed=seed,
                               backend=backend.value, threads=threads,
                               force=force, log=printer(con),
                               stage=lambda name: status.update(f"demo: {name}"))

        def text() -> None:
            for organ, by_case in summary["dice_heldout"].items():
                con.print(f"\n[bold]Dice on held-out phantoms, {organ} (setting {summary['setting'][organ]}), "
                          f"K={summary['k']}:[/] " + ", ".join(f"{c} {d:.3f}" for c, d in by_case.items())
                          + f"; mean {summary['dice_mean'][organ]:.3f}", highlight=False)
            con.print("time per stage: " + ", ".join(f"{s} {v:.0f} s" for s, v in summary["seconds"].items())
                      + f"; total {summary['total_seconds'] / 60:.1f} min; peak RSS {summary['peak_rss_gib']:.2f} GiB", highlight=False)
            con.print(f"ran: {summary['ran']}", highlight=False)
            con.print(f"real CT: {escape(summary['real_ct']['preview'])}", highlight=False)
            if summary.get("real_ct_dicom"):
                con.print(f"real CT as DICOM: {escape(summary['real_ct_dicom']['series'])} -> DICOM-SEG "
                          f"{escape(summary['real_ct_dicom']['seg'])}", highlight=False)
            con.print(f"[green]everything is in[/] {escape(summary['out'])}", highlight=False)

        show(summary, as_json, text)
