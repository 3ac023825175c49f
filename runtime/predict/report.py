"""A case's report (`<case>.json`): how edgeseg recognises its own, and whether one still holds.

The report is what marks a case done: written last, atomically. It records what made the case's
outputs (`made_with`: the engine, the options that change outputs, the input file), so a rerun
under other conditions redoes the case (`why_redo`) and an identical rerun skips it. A file at a
report's name that edgeseg did not write (a BIDS sidecar) is refused, never skipped on nor replaced.
"""

from __future__ import annotations

import json
from pathlib import Path

from edgeseg.runtime.atomic import refuse_link
from edgeseg.runtime.errors import InputError
from edgeseg.runtime.predict.options import PredictOptions

REPORT_KIND = "edgeseg-predict-report"
# Options that change what a case's outputs hold: a report made under others is redone, never kept.
OUTPUT_OPTIONS = ("overlap", "threshold", "lcc", "save_prob", "preview", "volume", "hu_check")
# Options added later: recorded only when not at their default, so reports made before them still hold.
OPTIONAL_OUTPUT_OPTIONS = {"format": "auto"}
_LEGACY_REPORT_KEYS = {"case", "engine", "ran", "volume_ml", "options", "outputs"}


def made_with(engine, path, opts: PredictOptions) -> dict:
    """What a case's outputs depend on: the engine (manifest hash, graph, backend), the options, the input file
    (a DICOM series: its UID, and the size and latest change of its files)."""
    ran = getattr(engine, "ran", None) or {}
    return {"engine_manifest_sha256": getattr(engine, "manifest_hash", None),
            "graph": ran.get("graph", ran.get("precision")), "backend": ran.get("backend"),
            "options": {**{k: getattr(opts, k) for k in OUTPUT_OPTIONS},
                        **{k: getattr(opts, k) for k, default in OPTIONAL_OUTPUT_OPTIONS.items()
                           if getattr(opts, k) != default}},
            "input": input_fingerprint(path)}


def input_fingerprint(path) -> dict:
    """Size and modification time of the input (a NIfTI file, or every file of a DICOM series)."""
    files = getattr(path, "files", None)
    if files is None:
        st = Path(path).stat()
        return {"bytes": st.st_size, "mtime_ns": st.st_mtime_ns}
    stats = [f.stat() for f in files]
    return {"series_instance_uid": path.series_instance_uid, "files": len(stats),
            "bytes": sum(st.st_size for st in stats), "mtime_ns": max(st.st_mtime_ns for st in stats)}


def read_report(path: Path) -> dict | None:
    """The edgeseg report at `path`, None when there is none; a file edgeseg did not write is refused.

    A report is recognised by its content, never by its name alone: a BIDS sidecar `sub-01_ct.json` beside
    `sub-01_ct.nii.gz` is the user's, and edgeseg neither skips the case because of it nor overwrites it.
    """
    refuse_link(path)
    if not path.exists():
        return None
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError):
        report = None
    if isinstance(report, dict) and (report.get("kind") == REPORT_KIND or _LEGACY_REPORT_KEYS <= set(report)):
        return report
    raise InputError("exists and is not an edgeseg report (another tool's file, e.g. a BIDS sidecar): edgeseg "
                     "never skips a case for it, nor overwrites or deletes it, even with --force", path=path,
                     fix="write the outputs to another folder (--out), away from the scans and their sidecars")


def why_redo(report: dict, now: dict) -> str | None:
    """Why a case with this report must be segmented again under `now` (None: its outputs still hold)."""
    before = report.get("made_with")
    if not isinstance(before, dict):
        return "its report does not record the engine and options that made it"
    diffs = []
    for key, label in (("engine_manifest_sha256", "another engine"), ("graph", "another graph precision"),
                       ("backend", "another backend"), ("input", "the input file changed")):
        if before.get(key) != now.get(key):
            diffs.append(label)
    old, new = before.get("options") or {}, now["options"]
    diffs += [f"--{k.replace('_', '-')} {old.get(k)!r} -> {new[k]!r}" for k in new if old.get(k) != new[k]]
    diffs += [f"--{k} {old.get(k, d)!r} -> {new.get(k, d)!r}" for k, d in OPTIONAL_OUTPUT_OPTIONS.items()
              if k not in new and old.get(k, d) != d]
    return ", ".join(diffs) or None
