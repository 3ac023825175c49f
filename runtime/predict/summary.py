"""A run's summary over its cases: `cohort.csv` (one row per case) and `cohort.json`.

Any loop over cases can write it from what it returns: `predict_many`'s list (a report per case run, a
`skipped_entry` per case whose report still holds) and, for a cohort that goes on past a bad scan
(`edgeseg predict --ray`), a `failed_entry` per case that did not finish. A skipped case's row is
filled from its report on disk, so the summary of a resumed run still covers every case.

A row: the case, its status (done, skipped, failed), the input, the node that ran it, the backend,
precision and device that ran, the attempts (a cohort retries a case whose worker died), the
seconds per stage (read, preprocess, inference, postprocess, write) and in all, each organ's volume
in mL, why it was redone, and for a failed case its error (problem and fix). Both files are written
atomically and replaced by each run; a file at either name that edgeseg did not write is refused
before any work (`check_summary_names`), and so is a case whose report would be `cohort.json`.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Sequence

from edgeseg.runtime.atomic import refuse_link, write_text_atomic
from edgeseg.runtime.errors import InputError
from edgeseg.runtime.predict.report import read_report

SUMMARY_KIND = "edgeseg-cohort-summary"
CSV_NAME, JSON_NAME = "cohort.csv", "cohort.json"
STAGES = ("read", "preprocess", "inference", "postprocess", "write")
CSV_HEAD = "case,status,"  # how edgeseg recognises its own cohort.csv


def failed_entry(case: str, input_name: str, error: dict, **extra) -> dict:
    """What a cohort returns for a case that did not finish: its error as `EdgesegError.to_dict` gives it."""
    return {"case": case, "failed": True, "input": input_name, "error": error, **extra}


def check_summary_names(out: Path, cases: Sequence[str]) -> None:
    """Before any work: no case may be named like the summary, and a cohort.csv / cohort.json in `out`
    must be edgeseg's own (a user's file there is never replaced)."""
    if "cohort" in cases:
        raise InputError(f"a scan's case name is 'cohort': its report would be {JSON_NAME}, the cohort summary's name",
                         path=out, fix="rename that scan (e.g. cohort_01.nii.gz) or segment it without the cohort run")
    for name, ours in ((JSON_NAME, _is_our_json), (CSV_NAME, _is_our_csv)):
        p = Path(out) / name
        refuse_link(p)
        if p.exists() and not ours(p):
            raise InputError("exists and is not an edgeseg cohort summary: edgeseg never overwrites it", path=p,
                             fix="move that file away, or write the outputs to another folder (--out)")


def _is_our_json(p: Path) -> bool:
    try:
        return json.loads(p.read_text()).get("kind") == SUMMARY_KIND
    except (OSError, ValueError, AttributeError):
        return False


def _is_our_csv(p: Path) -> bool:
    try:
        with p.open(encoding="utf-8") as fh:
            return fh.readline().startswith(CSV_HEAD)
    except (OSError, UnicodeDecodeError):
        return False


def summary_rows(entries: Sequence[dict], out: Path, *, meta: dict[str, dict] | None = None) -> list[dict]:
    """One row per case, in the entries' order. meta: per case, what the loop knows beyond the report
    (a cohort: the attempts and the Ray node)."""
    rows = []
    for e in entries:
        case = e["case"]
        extra = (meta or {}).get(case, {})
        if e.get("failed"):
            err = e.get("error") or {}
            rows.append({"case": case, "status": "failed", "input": e.get("input"), "node": extra.get("node"),
                         "attempts": extra.get("attempts"), "error": err})
            continue
        report = read_report(Path(e["report"])) if e.get("skipped") else e
        if report is None:  # the report went away between the choice and the summary
            rows.append({"case": case, "status": "failed", "input": None, "node": None, "attempts": None,
                         "error": {"problem": f"its report {case}.json is gone", "fix": "run the same command again"}})
            continue
        ran = report.get("ran") or {}
        rows.append({
            "case": case, "status": "skipped" if e.get("skipped") else "done", "input": report.get("input"),
            "node": extra.get("node") or report.get("host"), "attempts": extra.get("attempts"),
            "backend": ran.get("backend"), "precision": ran.get("precision"), "device": ran.get("device"),
            "seconds": report.get("seconds") or {}, "total_seconds": report.get("total_seconds"),
            "volume_ml": report.get("volume_ml") or {}, "redone_because": report.get("redone_because"),
        })
    return rows


def write_summary(out: Path, entries: Sequence[dict], *, meta: dict[str, dict] | None = None,
                  run: dict | None = None) -> dict:
    """Write `cohort.csv` and `cohort.json` into `out` (replacing this run's earlier ones); returns the JSON.

    run: what the loop adds about the whole run (how it ran, wall seconds, ...).
    """
    out = Path(out)
    rows = summary_rows(entries, out, meta=meta)
    counts = {s: sum(r["status"] == s for r in rows) for s in ("done", "skipped", "failed")}
    summary = {"kind": SUMMARY_KIND, "out": str(out.resolve()), "cases": len(rows), **counts, **(run or {}),
               "rows": rows}
    check_summary_names(out, [])  # a user's file that appeared during the run is still not replaced
    write_text_atomic(out / CSV_NAME, to_csv(rows), force=True)
    write_text_atomic(out / JSON_NAME, json.dumps(summary, indent=2) + "\n", force=True)
    return summary


def to_csv(rows: Sequence[dict]) -> str:
    """The rows as CSV: fixed columns, then one `<organ>_ml` column per organ seen (in order of appearance)."""
    organs: list[str] = []
    for r in rows:
        organs += [o for o in r.get("volume_ml") or {} if o not in organs]
    head = ["case", "status", "input", "node", "backend", "precision", "device", "attempts",
            *(f"{s}_s" for s in STAGES), "total_s", *(f"{o}_ml" for o in organs), "redone_because", "error"]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(head)
    for r in rows:
        sec, vol, err = r.get("seconds") or {}, r.get("volume_ml") or {}, r.get("error")
        error = "" if not err else f"{err.get('problem')}" + (f" (fix: {err['fix']})" if err.get("fix") else "")
        w.writerow([r["case"], r["status"], _cell(r.get("input")), _cell(r.get("node")), _cell(r.get("backend")),
                    _cell(r.get("precision")), _cell(r.get("device")), _cell(r.get("attempts")),
                    *(_num(sec.get(s)) for s in STAGES), _num(r.get("total_seconds")),
                    *(_num(vol.get(o)) for o in organs), _cell(r.get("redone_because")), error])
    return buf.getvalue()


def _cell(v) -> str:
    return "" if v is None else str(v)


def _num(v) -> str:
    return "" if v is None else f"{float(v):.3f}"
