"""benchmarks/gpu_check.py --smoke: every step of the GPU check on the CPU at tiny sizes, as on the GPU machine
(each step in its own process, the JSON after each); CUDA-only rows skipped with their reason. And the budget
guard, and benchmarks/gpu_env.py's refusals (what the bare GPU machine lacks is named, a stale wheel refused)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
STEPS = ("peaks", "reference", "trunk", "adapt", "scan", "compile")


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"{name}_bench", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_the_smoke_runs_every_step_and_each_row_has_a_result_or_a_reason(tmp_path, capsys):
    check = _load("gpu_check")
    out, work = tmp_path / "out", tmp_path / "work"
    assert check.main(["--out", str(out), "--work", str(work), "--smoke", "--budget", "1500"]) == 0
    text = (out / "gpu_check.json").read_text()
    r = json.loads(text)
    assert r["schema"] == "edgeseg.gpu_check/1" and r["smoke"] is True and r["cuda_visible"] in (True, False)
    assert r["host"]["cores"] >= 1 and r["machine"] and r["libraries"]["torch"]
    assert list(r["steps"]) == list(STEPS)
    for name, step in r["steps"].items():
        assert step["status"] in ("ok", "skipped"), (name, step)
        assert step["status"] == "ok" or step["reason"], name
        for row in step.get("rows", []):
            assert row["status"] in ("ok", "skipped"), (name, row)
            assert row["status"] == "ok" or row["reason"], (name, row)

    peaks = r["steps"]["peaks"]
    assert peaks["peaks"]["tflops"]["fp32"] > 0 and peaks["peaks"]["bandwidth_gbs"] > 0
    assert "no CUDA" in peaks["gpu"]["skipped"]
    ref = r["steps"]["reference"]
    from edgeseg.bench.flops import count_module_flops
    from edgeseg.model.spec import TINY_TEST_SPEC, ModelSpec
    from edgeseg.model.swinunetr import build_swinunetr, split
    from edgeseg.runtime.preprocess import PreprocessSpec

    trunk, _ = split(build_swinunetr(ModelSpec(**TINY_TEST_SPEC, out_channels=1, class_names=("organ",),
                                               preprocess=PreprocessSpec(window=(64,) * 3))), "decoder1")
    assert ref["flops_per_window"] == count_module_flops(trunk, (1, 1, 64, 64, 64)) > 0
    assert ref["output_shape"] == [1, 12, 64, 64, 64] and ref["cpu_fp32_seconds"] > 0

    rows = {row["config"]: row for row in r["steps"]["trunk"]["rows"]}
    fp32, bf16 = rows["torch-cuda-fp32"], rows["torch-cuda-bf16"]
    assert fp32["status"] == bf16["status"] == "ok" and fp32["device"] == "cpu"
    assert fp32["rel_l2"] < 1e-5 and fp32["mask_flip"] < 1e-4  # the same fp32 computation as the reference
    assert 1e-4 < bf16["rel_l2"] < 0.05 and bf16["mask_flip"] < 0.05  # bf16 differs, a little
    for row in (fp32, bf16):
        assert row["device_ms_per_window"] > 0 and row["predict_ms_per_window"] > 0 and row["tflops"] > 0
        assert row["ran"]["backend"] == "torch-cpu" and "not measured" in row["peak_gpu_memory"]
    assert fp32["of_peak"] > 0 and fp32["of_fp16_peak"] is None  # no fp16 peak on a CPU
    assert "CUDA graphs" in rows["torch-cuda-fp16-graphs"]["reason"]
    assert "CUDA only" in rows["torch-cuda-fp16"]["reason"]
    (compiled,) = r["steps"]["compile"]["rows"]
    assert compiled["status"] == "skipped" and "torch.compile" in compiled["reason"]

    adapt = r["steps"]["adapt"]
    assert {(row["adapter"], row["side"]) for row in adapt["rows"]} == {("lp", "device"), ("lp", "cpu")}
    assert all(row["seconds_per_step"] > 0 and row["trainable_params"] == 13 for row in adapt["rows"])
    assert adapt["cpu_over_device_seconds_per_step"]["lp"] > 0

    scan = {row["name"]: row for row in r["steps"]["scan"]["rows"]}
    cli = scan.pop("edgeseg predict (CLI)")
    assert cli["ran"]["device"] and cli["total_seconds"] > 0
    assert set(scan) == {"torch-cpu fp32 sw-batch 1"}
    assert scan["torch-cpu fp32 sw-batch 1"]["mask_flip_vs_cli"] < 1e-3  # the torch form is the fused graph
    for row in scan.values():
        assert row["ran"]["backend"] == "torch-cpu" and set(row["volume_ml"]) == {"liver", "kidney_left"}
        assert row["seconds"]["inference"] > 0
    assert cli["volume_ml"]["liver"] > 100  # zero-shot heads: the shipped model finds the liver of the real CT
    engine = r["steps"]["scan"]["engine"]
    assert engine["organs"] == ["liver", "kidney_left"] and engine["feature_size"] == 12

    from safetensors.numpy import load_file

    from edgeseg.assets import DEFAULT_MODEL
    from edgeseg.model.checkpoint import file_spec

    head = load_file(str(DEFAULT_MODEL))
    liver = file_spec(DEFAULT_MODEL).class_names.index("liver")
    probe = load_file(str(work / "engine-liver" / "adapter.safetensors"))  # the liver head: its pretrained row
    assert np.array_equal(probe["conv.weight"][0], head["out.conv.conv.weight"][liver])
    assert np.array_equal(probe["conv.bias"], head["out.conv.conv.bias"][liver:liver + 1])

    assert str(tmp_path) not in text and "/tmp/" not in text and "/work/" not in text  # repository-relative only
    printed = capsys.readouterr().out
    assert "torch-cuda-bf16" in printed and "wrote" in printed


def test_a_spent_budget_skips_every_step_with_the_reason_and_an_existing_result_is_kept(tmp_path, capsys):
    check = _load("gpu_check")
    out = tmp_path / "out"
    assert check.main(["--out", str(out), "--work", str(tmp_path / "w"), "--smoke", "--budget", "5",
                       "--steps", "peaks,trunk"]) == 0
    r = json.loads((out / "gpu_check.json").read_text())
    assert [s["status"] for s in r["steps"].values()] == ["skipped"] * len(STEPS)
    assert "budget was spent" in r["steps"]["peaks"]["reason"]
    assert "not selected" in r["steps"]["adapt"]["reason"]
    before = (out / "gpu_check.json").read_text()
    assert check.main(["--out", str(out), "--smoke", "--budget", "5"]) == 2  # refused without --force
    assert "already holds gpu_check.json" in capsys.readouterr().err
    assert (out / "gpu_check.json").read_text() == before
    # a rerun of some steps (--force) keeps the other steps' earlier results, marked so
    assert check.main(["--out", str(out), "--work", str(tmp_path / "w"), "--smoke", "--budget", "5", "--force",
                       "--steps", "adapt"]) == 0
    again = json.loads((out / "gpu_check.json").read_text())
    assert again["steps"]["peaks"]["from_earlier_run"] == r["date"] and "from_earlier_run" not in again["steps"]["adapt"]


def _env(*args, **kw):
    return subprocess.run([sys.executable, str(BENCH / "gpu_env.py"), *args], capture_output=True, text=True, **kw)


def test_gpu_env_names_what_is_missing_and_refuses_a_stale_edgeseg_wheel(tmp_path):
    env = _load("gpu_env")
    names = [r.name for r in env.requirements()]
    assert {"numpy", "nibabel", "onnxruntime", "typer", "torch", "monai", "einops", "safetensors"} <= set(names)
    from packaging.requirements import Requirement

    assert env.unmet([Requirement("numpy>=1.0")]) == []
    assert env.unmet([Requirement("numpy>=999")])[0].startswith("numpy (needs >=999, has ")
    assert env.unmet([Requirement("no-such-package-edgeseg")]) == [
        "no-such-package-edgeseg (needs any version, has nothing)"]

    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "edgeseg-0.1.0-py3-none-any.whl").write_bytes(b"")
    (wheels / env.STAMP).write_text("0" * 64 + "\n")
    res = _env("install", "--wheels", str(wheels), "--target", str(tmp_path / "site"))
    assert res.returncode != 0 and "was not built from this tree" in res.stderr and "gpu_wheels.sh" in res.stderr
    assert not (tmp_path / "site").exists()
    res = _env("install", "--wheels", str(tmp_path / "none"), "--target", str(tmp_path / "site"))
    assert res.returncode != 0 and "no edgeseg wheel" in res.stderr

    import torch

    if not torch.cuda.is_available():  # this machine: everything is there but a GPU, and the check says so
        res = _env("check")
        assert res.returncode == 2 and "a CUDA GPU for torch" in res.stderr and "fix:" in res.stderr


def test_paths_inside_messages_are_made_portable(tmp_path):
    check = _load("gpu_check")
    work = tmp_path / "work"
    text = (f'File "{work}/engine/x.py", line 3; File "/opt/v/lib/python3.12/site-packages/torch/nn.py", line 9; '
            f"see https://pip.pypa.io/warnings/venv; fp32/fp16 at 1/2; {check.ROOT}/benchmarks/gpu_check.py")
    got = check._portable_text({"a": [text]}, work)["a"][0]
    assert got == ('File "WORK/engine/x.py", line 3; File "site-packages/torch/nn.py", line 9; '
                   "see https://pip.pypa.io/warnings/venv; fp32/fp16 at 1/2; benchmarks/gpu_check.py")
