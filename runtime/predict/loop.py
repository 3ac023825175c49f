"""The loop over a run's cases: lock, choose, plan, read ahead, run, log, progress.

`predict_many` is the single-machine driver: one open engine, cases in input order, the next
case's read and preprocessing overlapped with this one's inference when the engine runs on a GPU
and the memory budget allows. A cohort on Ray (`ray_loop.predict_cohort`) replaces this loop and
keeps the rest: its actors make the same choice (`choose_cases`) and plan (`plan_choice`) per scan and
hand it to `run_case`, and it logs with the same lines (`case_line`, `skipped_line`, `redo_line`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

from edgeseg.runtime.errors import InputError, ResourceError
from edgeseg.runtime.lock import output_lock
from edgeseg.runtime.predict.case import ReadAhead, load_and_prepare, run_case
from edgeseg.runtime.predict.options import PredictOptions
from edgeseg.runtime.predict.plan import (CaseChoice, CasePlan, check_memory, check_out_folder, choose_cases,
                                          collect_inputs, fits_beside, plan_case)


def predict_many(engine, inputs: Sequence[str | Path], out: str | Path, opts: PredictOptions, *,
                 progress: Callable[[int, int], None] | None = None, log: Callable[[str], None] = lambda m: None,
                 locked: bool = False) -> list[dict]:
    """Segment every input with one loaded engine; cases with a report are skipped unless `force`.

    Returns one report per input, in input order (a skipped case: {"case", "skipped": True, "report"}).
    The output folder is locked for the whole run: a second run into it is refused (`locked`: the caller
    holds that lock already, as `edgeseg predict` does, taking it before the engine loads).
    """
    out = Path(out)
    scans = collect_inputs(inputs, log=log)
    check_out_folder(out, inputs, scans)
    engine.check_window()
    if locked:
        return _run_all(engine, scans, out, opts, progress, log)
    with output_lock(out, "edgeseg predict"):
        return _run_all(engine, scans, out, opts, progress, log)


def _run_all(engine, scans: list, out: Path, opts: PredictOptions,
             progress: Callable[[int, int], None] | None, log: Callable[[str], None]) -> list[dict]:
    choices = choose_cases(engine, scans, out, opts)
    for c in choices:
        if c.redo_because is not None:
            log(redo_line(c.case, c.redo_because))
    todo = [i for i, c in enumerate(choices) if c.run]
    pool = None
    if _use_prefetch(engine, opts) and len(todo) > 1:
        from concurrent.futures import ThreadPoolExecutor

        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="edgeseg-prefetch")
    reports: list[dict] = []
    planned: dict[int, CasePlan] = {}  # the next case's plan, made in this case's turn to decide its read-ahead
    ahead: dict[int, ReadAhead] = {}
    try:
        for i, choice in enumerate(choices):
            if not choice.run:
                log(skipped_line(choice.case))
                reports.append(skipped_entry(choice.case, out))
            else:
                plan = planned.pop(i, None) or plan_choice(engine, choice, out, opts)
                nxt = next((j for j in todo if j > i), None)
                if pool is not None and nxt is not None:
                    following = _plan_ahead(engine, choices[nxt], out, opts)
                    if following is not None:
                        planned[nxt] = following
                        read_ahead = _start_read_ahead(engine, plan, following, opts, pool)
                        if read_ahead is not None:
                            ahead[nxt] = read_ahead
                r = run_case(engine, plan, opts, ahead.pop(i, None))
                log(case_line(r))
                reports.append(r)
            if progress:
                progress(i + 1, len(choices))
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)  # a read in flight ends before we return or raise
    return reports


def plan_choice(engine, choice: CaseChoice, out: Path, opts: PredictOptions) -> CasePlan:
    """The plan of a case chosen to run (a redo carries why)."""
    return plan_case(engine, choice.path, choice.case, out, opts, redo_because=choice.redo_because)


def _plan_ahead(engine, choice: CaseChoice, out: Path, opts: PredictOptions) -> CasePlan | None:
    """The following case's plan, made early to decide its read-ahead; None when planning refuses it (a bad
    header, outputs in the way ...): no read-ahead, and the case is planned and refused in its own turn."""
    try:
        return plan_choice(engine, choice, out, opts)
    except Exception:
        return None


def _start_read_ahead(engine, current: CasePlan, following: CasePlan, opts: PredictOptions,
                      pool) -> ReadAhead | None:
    """Start reading the following case in `pool` when it fits beside this case's peak and its memory check
    passes now, before its read (a refusal is raised in its own turn instead); None when it does not start."""
    if not fits_beside(current, following, opts):
        return None
    try:
        memory = check_memory(following, engine, opts)
    except (InputError, ResourceError):
        return None
    return ReadAhead(memory, pool.submit(load_and_prepare, engine, following.path, opts))


def skipped_entry(case: str, out: Path) -> dict:
    """What a run returns for a case whose report still holds (the report itself stays on disk)."""
    return {"case": case, "skipped": True, "report": str(out / f"{case}.json")}


def skipped_line(case: str) -> str:
    return f"{case}: already segmented ({case}.json); skipped (--force to redo)"


def redo_line(case: str, because: str) -> str:
    return f"{case}: segmented again ({because}); its earlier outputs are replaced"


def case_line(r: dict) -> str:
    """One finished case in the log: volumes, seconds, what ran, windows."""
    vols = ", ".join(f"{o} {v:.1f} mL" for o, v in r["volume_ml"].items())
    w = r["windows"]
    blank = f" ({w['blank']} more of pure air: one run for all)" if w.get("blank") else ""
    return (f"{r['case']}: {vols}; {r['total_seconds']:.1f} s ({r['ran']['backend']} {r['ran']['precision']}), "
            f"{w['run']} windows{blank}" + (", read ahead" if r.get("prefetched") else ""))


def _use_prefetch(engine, opts: PredictOptions) -> bool:
    if opts.prefetch != "auto":
        return opts.prefetch == "on"
    return bool(getattr(engine, "on_gpu", False))  # OpenedArtifact.on_gpu: the backend's typed device
