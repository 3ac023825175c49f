"""A cohort on Ray Data: the loop over cases spread over actors, each holding one open engine.

`predict_cohort` replaces `predict_many`'s loop and nothing else. The driver collects the inputs and
names the cases exactly as the local run does (`collect_inputs`, `case_names`), refuses what needs no
voxel (an output folder inside the inputs, a file at a report's name that edgeseg did not write, an
engine whose manifest does not hold), holds the output folder's lock for the whole cohort, and makes
one Ray Data row per scan (`ray.data.from_items`, one block each). `map_batches` hands the rows, one
at a time, to a pool of `CasePredictor` actors (`compute=ray.data.ActorPoolStrategy`, `num_cpus` /
`num_gpus` per actor). An actor opens the engine once; per row it makes the local loop's choice for
that scan (`choose_cases`: skip a case whose report holds, redo one made otherwise), plans it
(`plan_case`) and runs it (`run_case`), so windows still batch inside a scan (`--sw-batch`), the
outputs, reports and markers are the local run's, and the masks are the same bytes.

Shared filesystem: every node must see the inputs, the engine folder and `--out` at the same paths
(NFS or a cluster filesystem); Ray moves no scans. The driver writes a token into
`OUT/.edgeseg-cohort/` and each actor reads it back before its first case: an actor that cannot see
it (or the engine) stops the cohort at once with an error that names its node and the fix.

Faults: a case that fails (a bad scan, a refusal) is recorded as failed in the summary with its error,
its outputs and marker removed by `run_case`, and the cohort goes on. An actor that dies mid-case
(killed, out of memory) leaves the case's `<case>.partial` and no report, as a killed local run does;
Ray restarts the actor and retries the case (Ray Data's actor pools restart actors and retry their
tasks without limit; the limit is ours: each attempt is counted in `OUT/.edgeseg-cohort/`, and a case
whose worker died on `MAX_ATTEMPTS` attempts is recorded as failed instead of being run a third
time). Ray's per-call `ray_remote_args` (`max_task_retries`) would do the counting, but they are
deprecated since Ray 2.60 and removed in 2.64. Rerunning the same command resumes: finished cases are
skipped, failed and unfinished ones are redone. At the end the driver writes `cohort.csv` and
`cohort.json` (`summary.py`).

Ray is imported inside the functions only: `edgeseg.runtime` stays importable without it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pickle
import secrets
import socket
import time
from pathlib import Path
from typing import Callable, Sequence

from edgeseg.runtime.atomic import refuse_link, unlink_own, write_small_text
from edgeseg.runtime.dicom.series import DicomSeries
from edgeseg.runtime.errors import EdgesegError, InputError
from edgeseg.runtime.lock import output_lock
from edgeseg.runtime.predict.options import PredictOptions
from edgeseg.runtime.predict.plan import case_names, check_out_folder, choose_cases, collect_inputs
from edgeseg.runtime.predict.report import read_report

STATE = ".edgeseg-cohort"  # inside --out: the driver's token, and each case's attempts
MAX_ATTEMPTS = 2  # a case whose worker died this many times is recorded as failed, not run again
TOKEN_WAIT_S = 10.0  # how long an actor waits for the token (a network filesystem's directory cache)
INSTALL = "pip install 'edgeseg[ray]'"
SHARED_FS_FIX = ("put the scans, the engine and --out on a filesystem every Ray node mounts at the same path "
                 "(NFS, a cluster filesystem), or run without --ray on one machine")


@dataclasses.dataclass(frozen=True)
class RayOptions:
    """How the cohort runs on Ray: where, how many actors, what each reserves, and the engine it opens."""

    address: str = "auto"  # "auto": RAY_ADDRESS or the cluster started last on this machine, else a local Ray
    actors: tuple[int, int] | None = None  # (min, max) actors; None: as many as the cluster's resources fit
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 0.0
    backend: str = "auto"
    precision: str | None = None
    threads: int | None = None  # per actor; None: the CPUs it reserves (at least 1)
    # how long an actor waits for the driver's token to appear in --out (a network filesystem's caches)
    visibility_wait_s: float = TOKEN_WAIT_S

    def __post_init__(self) -> None:
        if not (isinstance(self.cpus_per_actor, (int, float)) and math.isfinite(self.cpus_per_actor)
                and self.cpus_per_actor > 0):
            raise InputError(f"--cpus-per-actor {self.cpus_per_actor!r} must be a positive number",
                             fix="e.g. --cpus-per-actor 2")
        if not (isinstance(self.gpus_per_actor, (int, float)) and math.isfinite(self.gpus_per_actor)
                and self.gpus_per_actor >= 0):
            raise InputError(f"--gpus-per-actor {self.gpus_per_actor!r} must be 0 or more (fractions share a GPU)",
                             fix="e.g. --gpus-per-actor 1, or 0.5 for two actors per GPU")
        if not isinstance(self.address, str) or not self.address.strip():
            raise InputError(f"--ray {self.address!r} must be auto or a cluster address",
                             fix="e.g. --ray auto, --ray 10.0.0.5:6379 or --ray ray://head:10001")

    @property
    def actor_threads(self) -> int:
        return self.threads or max(1, int(self.cpus_per_actor))


def parse_actors(text: str | None) -> tuple[int, int] | None:
    """`--actors N` (a fixed pool) or `--actors MIN-MAX` (autoscaling between them); None stays None."""
    if text is None:
        return None
    parts = str(text).strip().split("-")
    try:
        low, high = (int(parts[0]), int(parts[-1])) if len(parts) in (1, 2) else (0, -1)
    except ValueError:
        low, high = 0, -1
    if not 1 <= low <= high:
        raise InputError(f"--actors {text!r} must be a number of actors N >= 1, or MIN-MAX with 1 <= MIN <= MAX",
                         fix="e.g. --actors 4, or --actors 1-8 to let the pool grow with the cluster")
    return low, high


def require_ray():
    """Ray Data, or the error that says how to get it."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as e:
        raise InputError(f"--ray needs Ray Data, which cannot be imported here ({e})", fix=INSTALL) from None
    return ray


# --- the driver ------------------------------------------------------------------------------------------
def predict_cohort(engine: str | Path, inputs: Sequence[str | Path], out: str | Path, opts: PredictOptions,
                   ray_opts: RayOptions = RayOptions(), *, progress: Callable[[int, int], None] | None = None,
                   log: Callable[[str], None] = lambda m: None, locked: bool = False) -> tuple[list[dict], dict]:
    """Segment every input on Ray actors; returns one entry per input in input order (a report, a skipped
    entry as `predict_many` returns, or a failed entry with its error) and the summary written to `out`.

    locked: the caller holds the output folder's lock already (`edgeseg predict` takes it first).
    """
    if opts.prefetch == "on":
        raise InputError("--prefetch on reads the next scan ahead inside one process; a cohort's actors each run one "
                         "scan at a time", fix="leave --prefetch out with --ray (more actors overlap the reads)")
    ray = require_ray()
    from edgeseg.runtime.artifacts.engine import EngineManifest
    from edgeseg.runtime.predict.summary import check_summary_names

    out, engine = Path(out).absolute(), Path(engine).absolute()
    scans = collect_inputs(inputs, log=log)
    check_out_folder(out, inputs, scans)
    names = case_names(scans)  # from the paths as given: the local run's names
    check_summary_names(out, names)
    for case in names:  # a file at a report's name that edgeseg did not write: refused before any work
        read_report(out / f"{case}.json")
    EngineManifest.from_folder(engine)  # a broken engine is refused here, not by every actor
    if locked:
        return _run(ray, engine, scans, names, out, opts, ray_opts, progress, log)
    with output_lock(out, "edgeseg predict --ray"):
        return _run(ray, engine, scans, names, out, opts, ray_opts, progress, log)


def _run(ray, engine: Path, scans: list, names: list[str], out: Path, opts: PredictOptions, ray_opts: RayOptions,
         progress, log) -> tuple[list[dict], dict]:
    from edgeseg.runtime.predict.loop import case_line, redo_line, skipped_entry, skipped_line
    from edgeseg.runtime.predict.summary import failed_entry, write_summary

    t0 = time.perf_counter()
    token = _write_state(out)
    started = _connect(ray, ray_opts.address)
    entries: list[dict | None] = [None] * len(scans)
    meta: dict[str, dict] = {}
    try:
        size = _pool_size(ray, ray_opts, len(scans), started, log)
        rows = [{"index": i, "case": c, "scan": pickle.dumps(_absolute(s))} for i, (s, c) in enumerate(zip(scans, names))]
        ds = ray.data.from_items(rows, override_num_blocks=max(1, len(rows)))
        ds = ds.map_batches(
            CasePredictor, batch_size=1, udf_modifying_row_count=False,
            compute=ray.data.ActorPoolStrategy(min_size=size[0], max_size=size[1], max_tasks_in_flight_per_actor=1),
            num_cpus=ray_opts.cpus_per_actor, num_gpus=ray_opts.gpus_per_actor or None,
            fn_constructor_kwargs={"engine": str(engine), "out": str(out), "token": token, "opts": opts,
                                   "ray_opts": ray_opts})
        ds.context.enable_progress_bars = False  # the driver shows its own bar, over cases
        ds.context.print_on_execution_start = False
        done = 0
        results = iter(ds.iter_rows())
        try:
            for row in results:
                r = json.loads(row["result"])
                i, case = r["index"], r["case"]
                if r["status"] == "refused":  # an actor cannot run anything (a path its node cannot see)
                    raise InputError(r["error"]["problem"], path=r["error"].get("path"), fix=r["error"].get("fix"))
                meta[case] = {"node": r["node"], "attempts": r["attempts"]}
                if r["status"] == "done":
                    entries[i] = r["report"]
                    if r["report"].get("redone_because"):
                        log(redo_line(case, r["report"]["redone_because"]))
                    log(case_line(r["report"]) + f" [{r['node']}]")
                elif r["status"] == "skipped":
                    entries[i] = skipped_entry(case, out)
                    log(skipped_line(case))
                else:
                    entries[i] = failed_entry(case, r["input"], r["error"])
                    log(f"{case}: failed: {r['error'].get('problem')}")
                done += 1
                if progress:
                    progress(done, len(scans))
        finally:
            close = getattr(results, "close", None)
            if close is not None:
                close()  # stops the actors when the driver stops early
        for i, e in enumerate(entries):  # no result came back (Ray Data dropped the block): never silent
            if e is None:
                entries[i] = failed_entry(names[i], _label(scans[i]), {
                    "error": "InternalError", "problem": "no result came back from the Ray actors for this case",
                    "fix": "run the same command again: finished cases are skipped, this one is redone"})
        resources = ray.cluster_resources()
        run = {"loop": "ray", "engine": str(engine), "wall_seconds": round(time.perf_counter() - t0, 3),
               "ray": {"address": ray_opts.address, "actors": list(size), "cpus_per_actor": ray_opts.cpus_per_actor,
                       "gpus_per_actor": ray_opts.gpus_per_actor, "threads_per_actor": ray_opts.actor_threads,
                       "cluster": {"cpus": resources.get("CPU", 0), "gpus": resources.get("GPU", 0),
                                   "nodes": len([n for n in ray.nodes() if n.get("Alive")])}}}
        done_cases = sum(1 for e in entries if not e.get("skipped") and not e.get("failed"))
        run["scans_per_minute"] = round(done_cases / run["wall_seconds"] * 60, 3) if run["wall_seconds"] else None
        summary = write_summary(out, entries, meta=meta, run=run)
    finally:
        if started:
            ray.shutdown()
        _remove_state(out)
    return entries, summary


def _connect(ray, address: str) -> bool:
    """Join (or start) Ray unless this process already has; True when this call did (and shuts it down)."""
    if ray.is_initialized():
        return False
    kw = {"include_dashboard": False, "log_to_driver": False, "logging_level": "WARNING"}
    try:
        if address == "auto":  # RAY_ADDRESS, else the cluster started last on this machine, else a new local Ray
            ray.init(**kw)
        else:
            ray.init(address=address, **kw)
    except (ConnectionError, ValueError, RuntimeError) as e:
        raise InputError(f"cannot join the Ray cluster at {address!r}: {e}",
                         fix="start it (`ray start --head` on the head node) and pass its address (--ray HOST:6379, "
                             "or ray://HOST:10001 for Ray Client), or --ray auto for a Ray on this machine") from None
    return True


def _pool_size(ray, ro: RayOptions, n_cases: int, started: bool, log) -> tuple[int, int]:
    """The actor pool's (min, max): --actors, or as many as the cluster's CPUs (GPUs) fit; never more than cases."""
    res = ray.cluster_resources()
    cpus, gpus = float(res.get("CPU", 0)), float(res.get("GPU", 0))
    fit = int(cpus // ro.cpus_per_actor)
    if ro.gpus_per_actor:
        fit = min(fit, int(gpus // ro.gpus_per_actor))
    low, high = ro.actors or (max(1, fit), max(1, fit))
    low, high = min(low, max(1, n_cases)), min(high, max(1, n_cases))
    need = (f"{low} actor(s) x {ro.cpus_per_actor:g} CPU" + (f", {ro.gpus_per_actor:g} GPU" if ro.gpus_per_actor else ""))
    if fit < low:
        problem = (f"the Ray cluster has {cpus:g} CPU(s) and {gpus:g} GPU(s): {need} do not fit")
        fix = "ask for fewer (--actors, --cpus-per-actor, --gpus-per-actor) or add nodes to the cluster"
        if started and ro.address == "auto":  # a Ray started here does not grow: waiting would never end
            raise InputError(problem, fix=fix)
        log(f"warning: {problem}; the cohort waits for the cluster to grow ({fix})")
    log(f"ray: {low if low == high else f'{low}-{high}'} actor(s), each {ro.cpus_per_actor:g} CPU"
        + (f" + {ro.gpus_per_actor:g} GPU" if ro.gpus_per_actor else "")
        + f", {ro.actor_threads} thread(s); cluster: {cpus:g} CPU, {gpus:g} GPU")
    return low, high


def _absolute(scan):
    """The scan with absolute paths: actors run in other folders (and on other nodes)."""
    if isinstance(scan, DicomSeries):
        return dataclasses.replace(scan, folder=scan.folder.absolute(), slices=tuple(
            dataclasses.replace(s, file=s.file.absolute()) for s in scan.slices))
    return Path(scan).absolute()


def _label(scan) -> str:
    return scan.label if isinstance(scan, DicomSeries) else str(scan)


# --- the state the driver and its actors share through --out ------------------------------------------------
def _write_state(out: Path) -> str:
    """A fresh token in OUT/.edgeseg-cohort/token (earlier attempts counts cleared); returns the token."""
    _remove_state(out)
    state = out / STATE
    refuse_link(state)
    state.mkdir(parents=True, exist_ok=True)
    token = secrets.token_hex(16)
    write_small_text(state / "token", json.dumps({"token": token, "host": socket.gethostname(), "pid": os.getpid()}))
    return token


def _remove_state(out: Path) -> None:
    state = out / STATE
    refuse_link(state)
    if state.is_dir():
        for p in state.iterdir():
            unlink_own(p)
        state.rmdir()


def check_token(out: Path, token: str, *, wait_s: float = TOKEN_WAIT_S) -> None:
    """Refuse to work (InputError naming this node) when this node does not see the driver's token in --out."""
    path = out / STATE / "token"
    deadline = time.monotonic() + wait_s
    while True:
        try:
            if json.loads(path.read_text()).get("token") == token:
                return
            seen = "a token of another run"
        except (OSError, ValueError) as e:
            seen = f"no token ({type(e).__name__})"
        if time.monotonic() >= deadline:
            raise InputError(f"Ray node {socket.gethostname()} does not see the output folder the driver writes: "
                             f"{seen} at {path} after {wait_s:g} s", path=out, fix=SHARED_FS_FIX)
        time.sleep(0.5)


def record_attempt(out: Path, case: str) -> int:
    """Count one more attempt at `case` in this cohort run; returns the count, this one included."""
    path = out / STATE / f"{case}.attempts"
    write_small_text(path, f"{socket.gethostname()} {os.getpid()} {time.time():.3f}\n", append=True)
    return len(path.read_text().splitlines())


# --- the actor ----------------------------------------------------------------------------------------------
class CasePredictor:
    """A Ray Data actor: opens the engine once, then segments one scan per row with the local run's code."""

    def __init__(self, engine: str, out: str, token: str, opts: PredictOptions, ray_opts: RayOptions):
        from edgeseg.runtime.engine import open_engine

        self.out, self.opts, self.node = Path(out), opts, socket.gethostname()
        self.engine, self.refused = None, None
        try:
            check_token(self.out, token, wait_s=ray_opts.visibility_wait_s)
            if not Path(engine).is_dir():
                raise InputError(f"Ray node {self.node} does not see the engine folder", path=engine, fix=SHARED_FS_FIX)
            self.engine = open_engine(engine, backend=ray_opts.backend, precision=ray_opts.precision,
                                      threads=ray_opts.actor_threads)
            self.engine.check_window()
        except EdgesegError as e:  # answered on every row: the driver stops the cohort with it
            self.refused = e.to_dict()
            if self.node not in e.problem:
                self.refused["problem"] = f"on Ray node {self.node}: {e.problem}"

    def __call__(self, batch: dict) -> dict:
        results = [json.dumps(self._one(int(i), str(c), pickle.loads(s)))
                   for i, c, s in zip(batch["index"], batch["case"], batch["scan"])]
        return {"result": results}

    def _one(self, index: int, case: str, scan) -> dict:
        from edgeseg.runtime.errors import internal_errors
        from edgeseg.runtime.predict.case import run_case
        from edgeseg.runtime.predict.loop import plan_choice

        row = {"index": index, "case": case, "input": _label(scan), "node": self.node, "attempts": None}
        if self.refused is not None:
            return {**row, "status": "refused", "error": self.refused}
        try:
            with internal_errors():  # any failure becomes the error a user reads (problem, fix; a bug: traceback)
                attempts = record_attempt(self.out, case)
                row["attempts"] = min(attempts, MAX_ATTEMPTS)  # the attempts that ran
                if attempts > MAX_ATTEMPTS:
                    raise InputError(
                        f"the Ray worker segmenting it died on each of its {MAX_ATTEMPTS} attempts (killed, out of "
                        "memory or crashed; see the Ray logs of the node); it was not run again", path=row["input"],
                        fix="give each actor more memory (fewer actors per node, --max-memory to refuse what will not "
                            "fit) and run the same command again: its unfinished outputs are redone")
                if not Path(scan.path if isinstance(scan, DicomSeries) else scan).exists():
                    raise InputError(f"Ray node {self.node} does not see this input", path=row["input"],
                                     fix=SHARED_FS_FIX)
                choice = choose_cases(self.engine, [scan], self.out, self.opts, names=[case])[0]
                if not choice.run:
                    return {**row, "status": "skipped"}
                report = run_case(self.engine, plan_choice(self.engine, choice, self.out, self.opts), self.opts)
                return {**row, "status": "done", "report": report}
        except EdgesegError as e:
            return {**row, "status": "failed", "error": e.to_dict()}
