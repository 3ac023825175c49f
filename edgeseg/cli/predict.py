"""`edgeseg predict`: segment new scans with an engine folder."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from edgeseg.cli.output import JSON_OPT, console, printer, show, user_errors
from edgeseg.runtime.support import BackendChoice, Precision


def predict(
    inputs: list[Path] = typer.Argument(..., help="NIfTI scans, folders of them, DICOM CT series (a folder or folder tree: each CT series is a "
                                             "case; needs the dicom extra), or text files listing them."),
    engine: Path = typer.Option(..., "--engine", help="An engine folder (edgeseg fuse); it holds one head per organ."),
    out: Path = typer.Option(..., "--out", help="Output folder: <case>_<organ>.nii.gz, <case>.json, ..."),
    backend: BackendChoice = typer.Option(BackendChoice.AUTO, "--backend", case_sensitive=False,
                                          help="auto (prints which ran), or ort, openvino or tensorrt (a fused engine "
                                               "has no torch form)."),
    precision: Optional[Precision] = typer.Option(None, "--precision", case_sensitive=False,
                                                  help="Graph to run: fp32 (default) or fp16; bf16: OpenVINO on the fp32 graph; int8: the quantized graphs (edgeseg fuse --precision int8)."),
    overlap: float = typer.Option(0.25, "--overlap", min=0.0, max=0.95, help="Sliding-window overlap."),
    sw_batch: int = typer.Option(1, "--sw-batch", min=1, help="Windows per inference batch."),
    reuse_blank: bool = typer.Option(
        True, "--reuse-blank/--run-every-window",
        help="Run the graph once for all windows of pure air (exact: they all get the same input)."),
    prefetch: str = typer.Option(
        "auto", "--prefetch", help="Read and preprocess the next scan during this one's inference: auto (on when the "
                                   "engine runs on a GPU; a CPU backend already uses every core), on, off."),
    threshold: float = typer.Option(0.5, "--threshold", min=0.0, max=1.0),
    lcc: bool = typer.Option(False, "--lcc", help="Keep each organ's largest connected component."),
    save_prob: bool = typer.Option(False, "--save-prob", help="Also write <case>_<organ>_prob.nii.gz."),
    preview: bool = typer.Option(False, "--preview", help="Also write <case>_preview.png (three slices, contours)."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1),
    volume: Optional[int] = typer.Option(None, "--volume", min=0, help="For 4D series: which volume to segment (0-based)."),
    max_memory: Optional[float] = typer.Option(
        None, "--max-memory", help="Memory budget in GiB for the whole run (default: what is available now); "
                                   "a scan that needs more is refused with the number needed, before it is read."),
    hu_check: bool = typer.Option(True, "--hu-check/--no-hu-check",
                                  help="Refuse scans whose intensities cannot be Hounsfield units (no air, 0..255, a mask); "
                                       "--no-hu-check for a scan you know is HU (a tight crop without air)."),
    out_format: str = typer.Option(
        "auto", "--format", help="What each case writes: nifti (masks on the scan's grid), dicom-seg (one DICOM "
                                 "Segmentation of the source series), both, or auto: both for DICOM input, nifti for NIfTI."),
    force: bool = typer.Option(False, "--force", help="Redo cases that have a report and overwrite existing outputs."),
    ray_address: Optional[str] = typer.Option(
        None, "--ray", metavar="auto|ADDRESS",
        help="Run the cohort on Ray Data (needs the ray extra): auto joins the cluster RAY_ADDRESS names or the one "
             "started last on this machine, else starts Ray here; or a cluster address (HOST:6379, ray://HOST:10001). "
             "Scans, engine and --out must be on a filesystem every node sees. Writes cohort.csv and cohort.json."),
    actors: Optional[str] = typer.Option(
        None, "--actors", metavar="N|MIN-MAX", help="With --ray: N actors, or an autoscaling pool of MIN to MAX "
                                                    "(default: as many as the cluster's CPUs/GPUs fit)."),
    gpus_per_actor: float = typer.Option(0.0, "--gpus-per-actor", help="With --ray: GPUs each actor reserves "
                                                                       "(0.5: two actors share one)."),
    cpus_per_actor: float = typer.Option(1.0, "--cpus-per-actor", help="With --ray: CPUs each actor reserves; its "
                                                                       "inference threads unless --threads."),
    as_json: bool = JSON_OPT,
) -> None:
    """Segment new scans: NIfTI or DICOM CT in, mask NIfTI out in each scan's own space, one report per scan."""
    from rich.markup import escape
    from rich.progress import Progress

    with user_errors(as_json):
        from edgeseg.runtime.engine import open_engine
        from edgeseg.runtime.predict import PredictOptions, predict_many

        opts = PredictOptions(overlap=overlap, sw_batch=sw_batch, threshold=threshold, lcc=lcc, save_prob=save_prob,
                              preview=preview, force=force, volume=volume, max_memory_gib=max_memory,
                              reuse_blank=reuse_blank, prefetch=prefetch, hu_check=hu_check,
                              format=out_format)
        con = console(stderr=as_json)
        if ray_address is not None:
            _cohort(inputs, engine, out, opts, con, as_json, address=ray_address, actors=actors,
                    gpus_per_actor=gpus_per_actor, cpus_per_actor=cpus_per_actor, backend=backend,
                    precision=precision, threads=threads)
            return
        if actors is not None or gpus_per_actor != 0.0 or cpus_per_actor != 1.0:
            from edgeseg.runtime.errors import InputError

            raise InputError("--actors, --gpus-per-actor and --cpus-per-actor size a cohort on Ray; this run is local",
                             fix="add --ray auto (or --ray ADDRESS), or leave those options out")
        from edgeseg.runtime.lock import output_lock
        from edgeseg.runtime.predict import check_out_folder, collect_inputs

        scans = collect_inputs(inputs, log=printer(con))  # the inputs, the output folder and its lock before the engine loads (seconds)
        check_out_folder(out, inputs, scans)
        with output_lock(out, "edgeseg predict"), \
                open_engine(engine, backend=backend, precision=precision, threads=threads) as eng:
            con.print(escape(f"engine {engine}: {', '.join(eng.organs)} on {eng.ran['backend']} {eng.ran['precision']} "
                             f"({eng.ran['device']})"), highlight=False)
            with Progress(console=con, transient=True) as bar:
                task = bar.add_task("segmenting", total=None)
                reports = predict_many(eng, scans, out, opts, locked=True,
                                       progress=lambda done, total: bar.update(task, completed=done, total=total),
                                       log=printer(con))
        show(reports, as_json)  # the text is the log above


def _cohort(inputs, engine, out, opts, con, as_json: bool, *, address: str, actors: Optional[str],
            gpus_per_actor: float, cpus_per_actor: float, backend, precision, threads) -> None:
    """`--ray`: the cohort on Ray Data; a progress bar over cases, the summary, and exit 2 when a case failed."""
    from rich.markup import escape
    from rich.progress import Progress

    from edgeseg.runtime.errors import InputError
    from edgeseg.runtime.predict.ray_loop import RayOptions, parse_actors, predict_cohort

    _quiet_ray_data_console()
    ray_opts = RayOptions(address=address, actors=parse_actors(actors), cpus_per_actor=cpus_per_actor,
                          gpus_per_actor=gpus_per_actor, backend=backend, precision=precision, threads=threads)
    with Progress(console=con, transient=True) as bar:
        task = bar.add_task("segmenting (ray)", total=None)
        entries, summary = predict_cohort(engine, inputs, out, opts, ray_opts, log=printer(con),
                                          progress=lambda done, total: bar.update(task, completed=done, total=total))
    con.print(escape(f"cohort: {summary['done']} done, {summary['skipped']} skipped, {summary['failed']} failed in "
                     f"{summary['wall_seconds']:.1f} s ({summary['scans_per_minute']} scans/min); "
                     f"{Path(out) / 'cohort.csv'}"), highlight=False)
    show(entries, as_json)
    failed = [r["case"] for r in summary["rows"] if r["status"] == "failed"]
    if failed:
        err = InputError(f"{len(failed)} of {summary['cases']} case(s) failed: {', '.join(failed[:10])}"
                         + (" ..." if len(failed) > 10 else "") + "; the others are done", path=Path(out) / "cohort.csv",
                         fix="each failed case's error (problem and fix) is in cohort.csv and cohort.json; fix those "
                             "scans and run the same command again: finished cases are skipped, failed ones redone")
        if as_json:  # stdout holds the entries (the failed ones carry their errors): one JSON document
            raise typer.Exit(err.exit_code)
        raise err


def _quiet_ray_data_console() -> None:
    """Ray Data's console lines (execution started/finished, its progress-bar notice) give way to the cohort's own
    log, per case; its log file in the Ray session keeps everything."""
    import importlib
    import logging
    import sys

    try:  # Ray Data configures its loggers on import; without Ray, predict_cohort says how to get it
        importlib.import_module("ray.data")
    except ImportError:
        return
    for handler in logging.getLogger("ray.data").handlers:
        if getattr(handler, "stream", None) in (sys.stderr, sys.stdout):
            handler.setLevel(logging.ERROR)
