"""Benchmark results as a rich table, Markdown, JSON and a PNG plot.

One table layout per benchmark (`windows_table`, `scan_table`, `adapt_table`: headers and string
cells), rendered by `to_rich` and `to_markdown`; `write_outputs` writes <stem>.json, <stem>.md and
<stem>.png into a folder. matplotlib is imported only to draw, and a missing matplotlib costs the PNG
only (with a note saying so).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from edgeseg.runtime.atomic import atomic_path, write_text_atomic


def _num(v: Any, fmt: str = ".2f", empty: str = "") -> str:
    if v is None:
        return empty
    return format(v, fmt)


def _sci(v: Any) -> str:
    return "" if v is None else ("0" if v == 0 else f"{v:.1e}")


def _x(v: Any) -> str:
    return "" if v is None else f"{v:.2f}x"


def _pct(v: Any) -> str:
    return "" if v is None else ("0" if v == 0 else f"{100 * v:.3f}%")


# --- trunk / engine -------------------------------------------------------------------------------
def windows_table(result: dict) -> tuple[list[str], list[list[str]]]:
    """One row per configuration and batch that ran; one per configuration skipped (its batches together)."""
    base = result.get("baseline", "baseline")
    headers = ["config", "batch", "ran", "ms/window", "p90", "p99", "windows/s", "TFLOP/s", "load s",
               "RSS GiB", "GPU GiB", "rel L2", "flips", f"vs {base}", "floor ms", "of floor", "note"]
    rows: list[list[str]] = []
    not_run: dict[tuple[str, str, str], list[str]] = {}  # (config, status, reason) -> its table row
    for r in result["rows"]:
        if r["status"] != "ok":
            key = (r["config"], r["status"], r.get("reason") or "")
            if key in not_run:
                not_run[key][1] += f",{r['batch']}"
            else:
                not_run[key] = [r["config"], str(r["batch"]), r["status"]] + [""] * 13 + [r.get("reason") or ""]
                rows.append(not_run[key])
            continue
        lat, par, vs = r.get("latency_ms") or {}, r.get("parity") or {}, r.get("vs_baseline") or {}
        ran = r.get("ran") or {}
        notes = list(r.get("notes") or [])
        if par.get("self"):
            notes.insert(0, "reference")
        ratios = "" if not vs else f"{_x(vs.get('speedup')) or '-'} / {_x(vs.get('peak_rss')) or '-'}"
        load = r.get("open_s") if r.get("open_s") is not None else r.get("load_s")
        rows.append([
            r["config"], str(r["batch"]), f"{ran.get('precision', '')}".strip(),
            _num(lat.get("median"), ".1f"), _num(lat.get("p90"), ".1f"), _num(lat.get("p99"), ".1f"),
            _num(r.get("windows_per_s"), ".3f"), _num(r.get("tflops"), ".3f"), _num(load, ".2f"),
            _num(r.get("peak_rss_gib"), ".2f"), _num(r.get("peak_gpu_gib"), ".2f"),
            _sci(par.get("rel_l2")), _pct(par.get("mask_flip")), ratios,
            _num(None if not r.get("floor") else 1000 * r["floor"]["floor_s"], ".0f"),
            "" if r.get("fraction_of_floor") is None else f"{100 * r['fraction_of_floor']:.0f}%", "; ".join(notes),
        ])
    return headers, rows


def windows_title(result: dict) -> list[str]:
    a, f, s = result["artifact"], result.get("flops"), result["settings"]
    host = result.get("host") or {}
    gpu = ", ".join(g.get("name", "?") for g in host.get("gpus") or []) or "no GPU"
    lines = [f"{result['benchmark']} {a['folder']}: cut {a.get('cut')}, feature_size {a.get('feature_size')}, "
             f"window {'x'.join(map(str, a['window']))}"
             + (f", {f['gflops_per_window']:.1f} GFLOPs per window (counted from {f['counted_from']})" if f else ""),
             f"machine {result['machine']}: {host.get('cpu')}, {host.get('cores')} cores, {host.get('memory_gib')} GiB, "
             f"{gpu}; threads {s.get('threads') or 'default'}; warmup {s['warmup']}, runs {s['runs']}",
             f"input: {s['input']}; parity against {result['reference'].get('config') or 'nothing (no reference ran)'}",
             *_peaks_line(result),
             "ms/window (median, p90, p99): batch latency / batch; load s: opening the artifact (manifest and file "
             "hashes checked, graph or engine loaded; torch: the module rebuilt from its checkpoint); RSS / GPU: the "
             f"worker process's peaks; flips: mask flips; vs {result.get('baseline')}: speed-up / peak-RSS ratio to it "
             "at the same batch"]
    return lines


def _peaks_line(result: dict) -> list[str]:
    peaks = result.get("peaks") or {}
    if not peaks:
        return []
    parts = [f"{dev}: " + ", ".join(f"{k} {v:g} TFLOP/s" for k, v in (p.get("tflops") or {}).items())
             + f", copy {p.get('bandwidth_gbs')} GB/s" for dev, p in peaks.items()]
    return ["measured peaks (torch matmul, tensor copy; same threads): " + "; ".join(parts)
            + ". floor ms: the larger of FLOPs / peak and bytes (weights, input, outputs) / bandwidth; "
              "of floor: floor / measured median"]


# --- scan -----------------------------------------------------------------------------------------
def scan_table(result: dict) -> tuple[list[str], list[list[str]]]:
    stages = result.get("stages") or []
    headers = ["scan", "shape", "Mvoxels", "model grid", "windows", *[f"{s} s" for s in stages], "total s", "load s",
               "peak RSS GiB", "peak GPU GiB", "ran / note"]
    rows = []
    for r in result["rows"]:
        if r["status"] != "ok":
            rows.append([r["scan"]] + [""] * (len(headers) - 2) + [f"{r['status']}: {r.get('reason')}"])
            continue
        sec = r.get("seconds") or {}
        w = r.get("windows") or {}
        win = w.get("run")
        if win is not None and w.get("blank"):
            win = f"{win} + {w['blank']} air"  # run on their own + served by the one blank run
        ran = r.get("ran") or {}
        rows.append([r["scan"], "x".join(map(str, r["shape"])), f"{r['voxels'] / 1e6:.1f}",
                     "x".join(map(str, r["model_grid"])), "" if win is None else str(win),
                     *[_num(sec.get(s), ".2f") for s in stages], _num(r.get("total_seconds"), ".2f"),
                     _num(r.get("load_s"), ".2f"), _num(r.get("peak_rss_gib"), ".2f"), _num(r.get("peak_gpu_gib"), ".2f"),
                     f"{ran.get('backend', '')} {ran.get('precision', '')}".strip()])
    return headers, rows


def scan_title(result: dict) -> list[str]:
    e, host, s = result["engine"], result.get("host") or {}, result["settings"]
    lines = [f"scan benchmark, engine {e['folder']} (organs {', '.join(e.get('organs') or [])}, "
             f"feature_size {e.get('feature_size')})",
             f"machine {result['machine']}: {host.get('cpu')}, {host.get('cores')} cores, {host.get('memory_gib')} GiB; "
             f"backend {s['backend']}, threads {s.get('threads') or 'default'}"]
    sc = result.get("scaling")
    if sc:
        rss = "" if sc["rss_gib_per_mvoxel"] is None else f", peak RSS {sc['rss_gib_per_mvoxel']:.4f} GiB per Mvoxel"
        lines.append(f"scaling over {sc['n_scans']} scans: {sc['seconds_per_mvoxel']:.3f} s per Mvoxel{rss}")
    return lines


# --- adapt ----------------------------------------------------------------------------------------
def adapt_table(result: dict) -> tuple[list[str], list[list[str]]]:
    headers = ["mode", "adapter", "K", "trainable", "s / step", "peak RSS GiB", "peak GPU GiB", "note"]
    rows = []
    for r in result["rows"]:
        if "error" in r:
            rows.append([r["mode"], r["adapter"], str(r["k"]), "", "", "", "", f"error: {r['error']}"])
        else:
            rows.append([r["mode"], r["adapter"], str(r["k"]), f"{r['trainable_params']:,}",
                         _num(r["seconds_per_step"], ".3f"), _num(r["peak_rss_gib"], ".2f"),
                         _num(r.get("peak_gpu_gib"), ".2f"), ""])
    return headers, rows


def adapt_title(result: dict) -> list[str]:
    host = result.get("host") or {}
    return [f"adaptation cost, feature_size {result['feature_size']}, {result['crop']}^3 crops, device {result['device']}, "
            f"threads {result.get('threads')}",
            f"machine {result['machine']}: {host.get('cpu')}, {host.get('cores')} cores, {host.get('memory_gib')} GiB"]


TABLES: dict[str, tuple[Callable, Callable]] = {
    "trunk": (windows_table, windows_title), "engine": (windows_table, windows_title),
    "scan": (scan_table, scan_title), "adapt_memory": (adapt_table, adapt_title),
}


def table(result: dict) -> tuple[list[str], list[str], list[list[str]]]:
    """(title lines, headers, rows) for any benchmark result."""
    make, title = TABLES[result["benchmark"]]
    headers, rows = make(result)
    return title(result), headers, rows


def to_markdown(result: dict) -> str:
    title, headers, rows = table(result)

    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    lines = [f"# {result['benchmark']} benchmark ({result.get('date', '')})", ""]
    lines += [f"{t}  " for t in title] + [""]
    lines.append("| " + " | ".join(headers) + " |")
    lines.append("| " + " | ".join("---" for _ in headers) + " |")
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    notes = result.get("notes") or []
    if notes:
        lines += ["", *[f"- {n}" for n in notes]]
    return "\n".join(lines) + "\n"


def to_rich(result: dict):
    """The table for a terminal: rows that ran, then what did not run here and why (its own small table)."""
    from rich.console import Group
    from rich.markup import escape
    from rich.table import Table

    title, headers, rows = table(result)
    status_col = headers.index("ran") if "ran" in headers else None
    ran_rows = [r for r in rows if status_col is None or r[status_col] not in ("skipped", "error")]
    not_run = [r for r in rows if status_col is not None and r[status_col] in ("skipped", "error")]
    t = Table(title=escape("\n".join(title)), title_justify="left")
    keep = [i for i in range(len(headers)) if i < 3 or any(r[i] for r in ran_rows)]  # no empty columns
    for i in keep:
        t.add_column(escape(headers[i]), no_wrap=headers[i] != "note", overflow="fold")
    for row in ran_rows:
        t.add_row(*[escape(row[i]) for i in keep])
    if not not_run:
        return t
    skipped = Table(title="not run here", title_justify="left")
    for h in ("config", "batch", "status", "why"):
        skipped.add_column(h, no_wrap=h == "config", overflow="fold")
    for row in not_run:
        skipped.add_row(escape(row[0]), escape(row[1]), escape(row[status_col]), escape(row[-1]),
                        style="dim" if row[status_col] == "skipped" else "red")
    return Group(t, skipped)


# --- plots ----------------------------------------------------------------------------------------
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_windows(result: dict, path: Path) -> None:
    plt = _plt()
    ok = [r for r in result["rows"] if r["status"] == "ok" and r.get("windows_per_s")]
    labels = [f"{r['config']} b{r['batch']}" for r in ok]
    fig, axes = plt.subplots(1, 2, figsize=(13, 0.45 * max(len(ok), 4) + 1.5))
    ax = axes[0]
    ax.barh(labels, [r["windows_per_s"] for r in ok], color="tab:blue")
    for i, r in enumerate(ok):
        extra = [f"{r['tflops']:.3g} TFLOP/s" if r.get("tflops") else "",
                 _x((r.get("vs_baseline") or {}).get("speedup"))]
        ax.text(r["windows_per_s"], i, "  " + "  ".join(e for e in extra if e), va="center", fontsize=8)
    ax.set_xlim(0, 1.4 * max([r["windows_per_s"] for r in ok], default=1))
    ax.set_xlabel("windows per second (median)")
    ax.invert_yaxis()
    ax = axes[1]
    ax.barh(labels, [r.get("peak_rss_gib") or 0 for r in ok], color="tab:orange", label="peak host RSS")
    if any(r.get("peak_gpu_gib") for r in ok):
        ax.barh(labels, [r.get("peak_gpu_gib") or 0 for r in ok], color="tab:green", alpha=0.6, label="peak GPU")
    ax.set_xlabel("GiB")
    ax.invert_yaxis()
    ax.legend(loc="lower right", fontsize=8)
    a = result["artifact"]
    fig.suptitle(f"{result['benchmark']} fs{a.get('feature_size')} {a.get('cut')} "
                 f"{'x'.join(map(str, a['window']))} on {result['machine']}", fontsize=10)
    fig.tight_layout()
    with atomic_path(path, force=True) as tmp:  # never through a link at the plot's name
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def plot_scan(result: dict, path: Path) -> None:
    """Phantoms as the scaling curve (stages stacked), the real CT and given scans as single points."""
    plt = _plt()
    ok = [r for r in result["rows"] if r["status"] == "ok"]
    curve = sorted((r for r in ok if r.get("source") == "phantom"), key=lambda r: r["voxels"])
    points = [r for r in ok if r.get("source") != "phantom"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    ax = axes[0]
    if curve:
        xs = [r["voxels"] / 1e6 for r in curve]
        stages = result.get("stages") or []
        ax.stackplot(xs, *[[(r.get("seconds") or {}).get(st, 0.0) for r in curve] for st in stages], labels=stages,
                     alpha=0.8)
        ax.plot(xs, [r["total_seconds"] for r in curve], "k.-", lw=1)
    for r in points:
        ax.plot(r["voxels"] / 1e6, r["total_seconds"], "kD")
        ax.annotate(r["scan"], (r["voxels"] / 1e6, r["total_seconds"]), fontsize=7, xytext=(4, 4),
                    textcoords="offset points")
    ax.set_xlabel("input voxels (millions)")
    ax.set_ylabel("seconds per scan (stages stacked)")
    ax.set_ylim(0, 1.15 * max([r["total_seconds"] for r in ok], default=1))
    ax.legend(fontsize=8, loc="upper left")
    ax = axes[1]
    if curve:
        xs = [r["voxels"] / 1e6 for r in curve]
        ax.plot(xs, [r["peak_rss_gib"] for r in curve], "o-", color="tab:orange", label="peak host RSS (phantoms)")
        if any(r.get("peak_gpu_gib") for r in curve):
            ax.plot(xs, [r.get("peak_gpu_gib") or 0 for r in curve], "s-", color="tab:green", label="peak GPU (phantoms)")
    for r in points:
        ax.plot(r["voxels"] / 1e6, r["peak_rss_gib"], "D", color="tab:orange")
        ax.annotate(r["scan"], (r["voxels"] / 1e6, r["peak_rss_gib"]), fontsize=7, xytext=(4, 4),
                    textcoords="offset points")
    ax.set_xlabel("input voxels (millions)")
    ax.set_ylabel("GiB")
    ax.set_ylim(0, 1.15 * max([max(r["peak_rss_gib"], r.get("peak_gpu_gib") or 0) for r in ok], default=1))
    ax.legend(fontsize=8, loc="upper left")
    fig.suptitle(f"end to end per scan on {result['machine']} (backend {result['settings']['backend']})", fontsize=10)
    fig.tight_layout()
    with atomic_path(path, force=True) as tmp:  # never through a link at the plot's name
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def plot_adapt(result: dict, path: Path) -> None:
    plt = _plt()
    ok = [r for r in result["rows"] if "error" not in r]
    labels = [f"{r['mode']} {r['adapter']} K={r['k']}" for r in ok]
    fig, axes = plt.subplots(1, 2, figsize=(12, 0.4 * max(len(ok), 4) + 1.5))
    axes[0].barh(labels, [r["seconds_per_step"] for r in ok], color="tab:blue")
    axes[0].set_xlabel("seconds per step (median)")
    axes[1].barh(labels, [r["peak_rss_gib"] for r in ok], color="tab:orange", label="peak host RSS")
    if any(r.get("peak_gpu_gib") for r in ok):
        axes[1].barh(labels, [r.get("peak_gpu_gib") or 0 for r in ok], color="tab:green", alpha=0.6, label="peak GPU")
    axes[1].set_xlabel("GiB")
    axes[1].legend(fontsize=8)
    for ax in axes:
        ax.invert_yaxis()
    fig.suptitle(f"adaptation, feature_size {result['feature_size']}, device {result['device']}, {result['machine']}",
                 fontsize=10)
    fig.tight_layout()
    with atomic_path(path, force=True) as tmp:  # never through a link at the plot's name
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


PLOTS = {"trunk": plot_windows, "engine": plot_windows, "scan": plot_scan, "adapt_memory": plot_adapt}


def write_outputs(result: dict, out: str | Path, stem: str) -> dict[str, str]:
    """<stem>.json, <stem>.md and <stem>.png in `out`; returns what was written (and "png_note" when no PNG)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    from edgeseg.runtime.manifest import portable_paths

    result = portable_paths(result)  # a results file never records this machine's absolute paths
    written = {"json": str(write_text_atomic(out / f"{stem}.json", json.dumps(result, indent=2, default=str) + "\n",
                                             force=True)),
               "markdown": str(write_text_atomic(out / f"{stem}.md", to_markdown(result), force=True))}
    try:
        png = out / f"{stem}.png"
        PLOTS[result["benchmark"]](result, png)
        written["png"] = str(png)
    except ImportError as e:
        written["png_note"] = f"no PNG: matplotlib is not installed ({e}); pip install matplotlib"
    return written


def default_stem(result: dict) -> str:
    """The file stem results are written under: bench_trunk_fs48_decoder1, bench_scan_fs48, adapt_memory, ..."""
    kind = result["benchmark"]
    if kind in ("trunk", "engine"):
        a = result["artifact"]
        return f"bench_{kind}_fs{a.get('feature_size')}_{a.get('cut')}"
    if kind == "scan":
        return f"bench_scan_fs{result['engine'].get('feature_size')}"
    fs = result.get("feature_size")
    return "adapt_memory" + ("" if fs == 48 else f"_fs{fs}") + ("" if result.get("device", "cpu") == "cpu" else
                                                              f"_{result['device']}")


def emit(result: dict, console, *, out: str | Path | None = None, json_path: str | Path | None = None,
         stem: str | None = None) -> dict:
    """Print the table (and notes), write <stem>.json/.md/.png into `out`, the JSON to `json_path` ("-": stdout).

    A result that does not match its schema is still written (a long run is never thrown away), with
    the problems listed in it and printed.
    """
    from rich.markup import escape

    from edgeseg.bench.schema import problems

    found = problems(result)
    if found:
        result["schema_problems"] = found
        console.print("[yellow]warning:[/] the result does not match its schema: " + escape("; ".join(found)))
    if not console.is_terminal:  # a log file or a pipe: keep the wide table readable rather than folded to 80 columns
        console.width = max(console.width, 200)
    console.print(to_rich(result))
    for note in result.get("notes") or []:
        console.print(f"note: {escape(note)}", highlight=False)
    written: dict[str, str] = {}
    if out is not None:
        written = write_outputs(result, out, stem or default_stem(result))
        for key, value in written.items():
            console.print(f"{key}: {escape(value)}", highlight=False)
    if json_path is not None:
        text = json.dumps(result, indent=2, default=str)
        if str(json_path) == "-":
            print(text)
        else:
            written["json_path"] = str(write_text_atomic(Path(json_path), text + "\n", force=True))
            console.print(f"json: {escape(str(json_path))}", highlight=False)
    return written
