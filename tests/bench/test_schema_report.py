"""The result document from fake measurements: its JSON schema, ratios, and the Markdown / rich / PNG renderings."""

from __future__ import annotations

import json

import pytest

from edgeseg.bench import report, schema
from edgeseg.bench.configs import plan, select_configs
from edgeseg.bench.windows import build_result, empty_row, fill_row
from edgeseg.runtime.artifacts.trunk import TrunkManifest
from edgeseg.runtime.availability import BackendStatus
from edgeseg.runtime.preprocess import PreprocessSpec

PROBES = ("torch-cpu", "torch-cuda", "ort-cpu", "ort-cuda", "ort-tensorrt", "openvino", "tensorrt")
FLOPS = {"per_window": 636_000_000_000, "gflops_per_window": 636.0, "by_op": {"Conv": 636_000_000_000},
         "counted_from": "trunk.fp32.onnx", "ops": "Conv"}


def statuses():
    usable = {"torch-cpu", "ort-cpu"}
    return {n: BackendStatus(n, n in usable, "ok" if n in usable else f"{n} not here", "" if n in usable else "hint")
            for n in PROBES}


def fake_worker(config: str, batch: int, seconds: float, rss: float) -> dict:
    """What a worker returns for a run whose batches took `seconds` each (slightly spread)."""
    from edgeseg.bench.stats import summarize

    times = [seconds * f for f in (1.0, 0.9, 1.2, 1.05)]
    return {"status": "ok", "ran": {"backend": config, "precision": "fp32", "device": "CPU"}, "times_s": times,
            "latency_ms": summarize(times, per=batch), "open_s": 1.5, "load_s": 0.5, "first_call_s": seconds * 2,
            "peak_rss_gib": rss, "parity": {"reference": "torch-cpu-fp32", "rel_l2": 2e-4, "max_abs": 1e-3,
                                           "mask_flip": 1e-4}, "notes": []}


@pytest.fixture
def result(tmp_path):
    manifest = TrunkManifest.from_record({
        "graphs": {"fp32": {"file": "trunk.fp32.onnx"}}, "export_spec": {"max_batch": 4}, "engines": {},
        "checkpoint": {"path": str(tmp_path / "ckpt.safetensors")}, "cut": "decoder1",
        "preprocess": PreprocessSpec(window=(64, 64, 64)).to_dict(), "io": {"input": "image", "outputs": ["features"]},
        "model_spec": {"in_channels": 1}})
    (tmp_path / "ckpt.safetensors").write_bytes(b"x")
    configs = select_configs("torch-cpu-fp32,ort-cpu,ort-cuda-fp32")
    planned = plan("trunk", manifest, configs, statuses(), [1, 4])
    measured = {("torch-cpu-fp32", 1): fake_worker("torch-cpu", 1, 8.0, 2.0),
                ("torch-cpu-fp32", 4): fake_worker("torch-cpu", 4, 30.0, 4.0),
                ("ort-cpu-fp32", 1): fake_worker("ort-cpu", 1, 4.0, 3.0),
                ("ort-cpu-fp32", 4): {"status": "error", "reason": "the worker was killed by signal 9 (SIGKILL: out of memory?)"}}
    rows = []
    for p in planned:
        row = empty_row(p)
        if (p.config.name, p.batch) in measured:
            row = fill_row(row, measured[(p.config.name, p.batch)], FLOPS["per_window"])
        rows.append(row)
    artifact = {"folder": str(tmp_path), "kind": "trunk", "cut": "decoder1", "window": [96, 96, 96], "feature_size": 48,
                "in_channels": 1, "organs": None, "graphs": {"fp32": "trunk.fp32.onnx"}, "engines": [], "max_batch": 4,
                "manifest_sha256": "0" * 64}
    return build_result("trunk", artifact, FLOPS, rows, statuses=statuses(), configs=configs, batches=[1, 4], warmup=1,
                        runs=4, threads=2, timeout=None, input_desc="fake windows",
                        reference={"config": "torch-cpu-fp32", "runs": {}}, notes=[])


def test_result_matches_its_schema_and_survives_json(result):
    assert schema.problems(result) == []
    back = json.loads(json.dumps(result))
    assert schema.problems(back) == []
    assert back["schema"] == "edgeseg.bench.windows/1" and back["baseline"] == "torch-cpu-fp32"
    statuses_seen = {(r["config"], r["batch"]): r["status"] for r in back["rows"]}
    assert statuses_seen == {("torch-cpu-fp32", 1): "ok", ("torch-cpu-fp32", 4): "ok", ("ort-cpu-fp32", 1): "ok",
                             ("ort-cpu-fp32", 4): "error", ("ort-cpu-fp16", 1): "skipped", ("ort-cpu-fp16", 4): "skipped",
                             ("ort-cuda-fp32", 1): "skipped", ("ort-cuda-fp32", 4): "skipped",
                             ("ort-cpu-int8", 1): "skipped", ("ort-cpu-int8", 4): "skipped"}
    assert {p["name"] for p in back["probe"]} == set(PROBES)


def test_rows_carry_throughput_tflops_and_ratios(result):
    rows = {(r["config"], r["batch"]): r for r in result["rows"]}
    ort = rows[("ort-cpu-fp32", 1)]
    assert ort["latency_ms"]["median"] == pytest.approx(4000 * (1.0 + 1.05) / 2)
    assert ort["windows_per_s"] == pytest.approx(1000 / ort["latency_ms"]["median"], rel=1e-3)
    assert ort["tflops"] == pytest.approx(636e9 * ort["windows_per_s"] / 1e12, rel=1e-3)
    torch1 = rows[("torch-cpu-fp32", 1)]
    assert ort["vs_baseline"]["speedup"] == pytest.approx(torch1["latency_ms"]["median"] / ort["latency_ms"]["median"],
                                                          rel=1e-3)
    assert ort["vs_baseline"]["peak_rss"] == pytest.approx(1.5)
    assert rows[("torch-cpu-fp32", 4)]["vs_baseline"] == {"config": "torch-cpu-fp32", "batch": 4, "speedup": 1.0,
                                                           "peak_rss": 1.0}
    assert rows[("ort-cpu-fp32", 4)]["vs_baseline"] is None and rows[("ort-cpu-fp32", 4)]["latency_ms"] is None
    assert rows[("ort-cuda-fp32", 1)]["reason"] == "ort-cuda not here (to enable: hint)"


@pytest.mark.parametrize("breakage, message", [
    (lambda r: r.pop("rows"), "missing 'rows'"),
    (lambda r: r["rows"][0].update(latency_ms=None), "latency_ms"),
    (lambda r: r["rows"][0]["latency_ms"].update(p99=0.0), "does not hold"),
    (lambda r: r["rows"][0].update(windows_per_s=0), "positive"),
    (lambda r: r["rows"][-1].update(reason=None), "needs its reason"),
    (lambda r: r["rows"][0].update(status="fine"), "is not one of"),
    (lambda r: r["rows"][0].update(batch=True), "batch"),
    (lambda r: r["artifact"].pop("window"), "missing 'window'"),
])
def test_schema_catches_a_broken_result(result, breakage, message):
    breakage(result)
    found = schema.problems(result)
    assert found and any(message in p for p in found), found
    with pytest.raises(ValueError):
        schema.check(result)


def test_markdown_has_the_ratio_column_and_the_skip_reasons(result):
    md = report.to_markdown(result)
    header = next(line for line in md.splitlines() if line.startswith("| config"))
    assert "vs torch-cpu-fp32" in header and "p90" in header and "TFLOP/s" in header
    ort_line = next(line for line in md.splitlines() if line.startswith("| ort-cpu-fp32 | 1 |"))
    ort = next(r for r in result["rows"] if r["config"] == "ort-cpu-fp32" and r["batch"] == 1)
    assert f"{ort['vs_baseline']['speedup']:.2f}x / 1.50x" in ort_line
    skipped = next(line for line in md.splitlines() if line.startswith("| ort-cuda-fp32 |"))
    assert "| 1,4 | skipped |" in skipped and "ort-cuda not here (to enable: hint)" in skipped
    assert "636.0 GFLOPs per window" in md
    assert "SIGKILL" in md


def test_rich_table_and_files(result, tmp_path):
    from rich.console import Console

    con = Console(width=220, record=True)
    con.print(report.to_rich(result))
    text = con.export_text()
    assert "not run here" in text and "ort-cuda not here" in text and "vs torch-cpu-fp32" in text
    written = report.write_outputs(result, tmp_path / "out", "bench_x")
    assert json.loads((tmp_path / "out" / "bench_x.json").read_text())["rows"] == json.loads(json.dumps(result["rows"]))
    from edgeseg.runtime.manifest import portable_paths

    assert (tmp_path / "out" / "bench_x.md").read_text() == report.to_markdown(portable_paths(result))  # no absolute path
    assert str(tmp_path) not in (tmp_path / "out" / "bench_x.md").read_text()
    png = tmp_path / "out" / "bench_x.png"
    if "png" in written:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    else:
        assert "matplotlib" in written["png_note"] and not png.exists()
    assert report.default_stem(result) == "bench_trunk_fs48_decoder1"


def test_emit_writes_json_to_a_path_and_stdout(result, tmp_path, capsys):
    from rich.console import Console

    with open(tmp_path / "console.txt", "w") as fh:
        con = Console(file=fh, width=200)
        report.emit(result, con, json_path=tmp_path / "r.json")
        assert schema.problems(json.loads((tmp_path / "r.json").read_text())) == []
        report.emit(result, con, json_path="-")
    assert json.loads(capsys.readouterr().out)["benchmark"] == "trunk"
    assert "not run here" in (tmp_path / "console.txt").read_text()
