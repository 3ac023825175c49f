"""The JSON a benchmark writes, checked: required keys, their types, and what each row status implies.

`problems(result)` lists what is wrong (empty when the result is well-formed); `check(result)` raises
ValueError with that list. Used before a result is written, and by the tests.
"""

from __future__ import annotations

from typing import Any

NUM = (int, float)
NONE = type(None)
STATUSES = ("ok", "skipped", "error")
LATENCY_KEYS = ("min", "median", "p90", "p95", "p99", "max", "mean", "n")

WINDOWS_TOP: dict[str, Any] = {
    "schema": str, "benchmark": str, "date": str, "machine": str, "host": dict, "libraries": dict, "artifact": dict,
    "flops": (dict, NONE), "settings": dict, "baseline": str, "reference": dict, "probe": list, "rows": list,
    "notes": list,
}
WINDOWS_ROW: dict[str, Any] = {
    "config": str, "label": str, "backend": str, "device": str, "precision": str, "batch": int, "status": str,
    "reason": (str, NONE), "ran": (dict, NONE), "latency_ms": (dict, NONE), "windows_per_s": (*NUM, NONE),
    "tflops": (*NUM, NONE), "open_s": (*NUM, NONE), "load_s": (*NUM, NONE), "first_call_s": (*NUM, NONE),
    "peak_rss_gib": (*NUM, NONE), "peak_gpu_gib": (*NUM, NONE), "parity": (dict, NONE), "vs_baseline": (dict, NONE),
    "notes": list,
}
ARTIFACT_KEYS = {"folder": str, "kind": str, "window": list, "graphs": dict, "max_batch": int}
SETTINGS_KEYS = {"backends": list, "batches": list, "warmup": int, "runs": int, "input": str}
PARITY_KEYS = {"reference": (str, NONE), "rel_l2": NUM, "max_abs": NUM, "mask_flip": (*NUM, NONE)}
SCAN_ROW = {"scan": str, "source": str, "status": str, "reason": (str, NONE)}
SCAN_OK = {"voxels": int, "model_voxels": int, "seconds": dict, "total_seconds": NUM, "peak_rss_gib": NUM, "ran": dict}
ADAPT_ROW = {"mode": str, "adapter": str, "k": int}
ADAPT_OK = {"trainable_params": int, "seconds_per_step": NUM, "peak_rss_gib": NUM}


def _typed(value: Any, types: Any) -> bool:
    types = types if isinstance(types, tuple) else (types,)
    if isinstance(value, bool):  # bool is an int in Python, never a number here
        return bool in types
    return isinstance(value, types)


def _keys(obj: Any, spec: dict, where: str) -> list[str]:
    if not isinstance(obj, dict):
        return [f"{where}: expected an object, got {type(obj).__name__}"]
    out = []
    for key, types in spec.items():
        if key not in obj:
            out.append(f"{where}: missing {key!r}")
        elif not _typed(obj[key], types):
            out.append(f"{where}.{key}: {type(obj[key]).__name__} is not {types}")
    return out


def windows_problems(result: dict) -> list[str]:
    out = _keys(result, WINDOWS_TOP, "result")
    if out:
        return out
    out += _keys(result["artifact"], ARTIFACT_KEYS, "artifact")
    out += _keys(result["settings"], SETTINGS_KEYS, "settings")
    if result["flops"] is not None:
        out += _keys(result["flops"], {"per_window": int, "gflops_per_window": NUM}, "flops")
    for i, row in enumerate(result["rows"]):
        where = f"rows[{i}]"
        bad = _keys(row, WINDOWS_ROW, where)
        out += bad
        if bad:
            continue
        where = f"rows[{i}] ({row['config']} batch {row['batch']})"
        if row["status"] not in STATUSES:
            out.append(f"{where}: status {row['status']!r} is not one of {STATUSES}")
        elif row["status"] != "ok":
            if not row["reason"]:
                out.append(f"{where}: a {row['status']} row needs its reason")
        else:
            out += _keys(row["latency_ms"], {k: NUM for k in LATENCY_KEYS}, f"{where}.latency_ms")
            if row["ran"] is None:
                out.append(f"{where}: an ok row says what ran")
            for key in ("windows_per_s", "peak_rss_gib"):
                if not (_typed(row[key], NUM) and row[key] > 0):
                    out.append(f"{where}.{key}: must be a positive number, got {row[key]!r}")
            lat = row["latency_ms"] if isinstance(row["latency_ms"], dict) else {}
            order = [lat.get(k) for k in ("min", "median", "p90", "p95", "p99", "max")]
            if all(_typed(v, NUM) for v in order) and order != sorted(order):
                out.append(f"{where}.latency_ms: min <= median <= p90 <= p95 <= p99 <= max does not hold: {order}")
            if row["parity"] is not None:
                out += _keys(row["parity"], PARITY_KEYS, f"{where}.parity")
    return out


def scan_problems(result: dict) -> list[str]:
    out = _keys(result, {"schema": str, "benchmark": str, "machine": str, "host": dict, "engine": dict,
                         "settings": dict, "stages": list, "rows": list, "scaling": (dict, NONE)}, "result")
    for i, row in enumerate(result.get("rows") or []):
        out += _keys(row, SCAN_ROW, f"rows[{i}]")
        if row.get("status") == "ok":
            out += _keys(row, SCAN_OK, f"rows[{i}]")
        elif not row.get("reason"):
            out.append(f"rows[{i}]: a {row.get('status')} row needs its reason")
    return out


def adapt_problems(result: dict) -> list[str]:
    out = _keys(result, {"schema": str, "benchmark": str, "machine": str, "host": dict, "feature_size": int,
                         "crop": int, "device": str, "rows": list}, "result")
    for i, row in enumerate(result.get("rows") or []):
        out += _keys(row, ADAPT_ROW, f"rows[{i}]")
        if "error" not in row:
            out += _keys(row, ADAPT_OK, f"rows[{i}]")
    return out


PROBLEMS = {"trunk": windows_problems, "engine": windows_problems, "scan": scan_problems,
            "adapt_memory": adapt_problems}


def problems(result: dict) -> list[str]:
    kind = result.get("benchmark") if isinstance(result, dict) else None
    if kind not in PROBLEMS:
        return [f"result: unknown benchmark {kind!r}"]
    return PROBLEMS[kind](result)


def check(result: dict) -> dict:
    found = problems(result)
    if found:
        raise ValueError("benchmark result does not match its schema:\n  " + "\n  ".join(found))
    return result
