"""The command line: fast help, honest `info`, exit codes that tell bad input (2) from bugs (1)."""

from __future__ import annotations

import json
import subprocess
import sys

from typer.testing import CliRunner

from edgeseg.cli import app

runner = CliRunner()


def test_help_imports_no_heavy_module():
    # `edgeseg --help` must answer at once: the heavy modules are imported inside the commands.
    code = (
        "import sys; from typer.testing import CliRunner; from edgeseg.cli import app;"
        "r = CliRunner().invoke(app, ['--help']); assert r.exit_code == 0, r.output;"
        "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'monai', 'onnxruntime', 'onnx', 'scipy', 'nibabel', 'pydicom', 'highdicom', 'ray'});"
        "print(heavy)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_info_json_lists_every_backend_with_a_reason():
    result = runner.invoke(app, ["info", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    backends = {b["name"]: b for b in report["backends"]}
    assert set(backends) == {"torch-cpu", "torch-cuda", "ort-cpu", "ort-cuda", "ort-tensorrt", "openvino", "tensorrt"}
    assert backends["ort-cpu"]["usable"] is True
    for b in backends.values():
        assert b["detail"]
        if not b["usable"]:
            assert b["install_hint"], b
    assert report["libraries"]["numpy"]
    optional = {lib["name"]: lib for lib in report["optional"]}
    from edgeseg.runtime.availability import module_version

    triton = optional["tritonclient"]  # its version, or why not and how to get it
    assert triton["version"] == module_version("tritonclient")
    if triton["version"]:
        assert triton["detail"] == "installed"
    else:
        assert "pip install 'edgeseg[triton]'" in triton["detail"]
    ray = optional["ray"]  # Ray Data for `edgeseg predict --ray`: its version, or why not
    assert ray["version"] == module_version("ray") and "--ray" in ray["for"]
    if ray["version"] and module_version("pyarrow") and module_version("pandas"):
        assert ray["detail"] == "installed"
    else:
        assert "pip install 'edgeseg[ray]'" in ray["detail"]


def test_bad_option_value_is_exit_code_2_with_json_error(tmp_path):
    result = runner.invoke(app, ["phantom", "--out", str(tmp_path), "--n", "1", "--spacing", "abc", "--json"])
    assert result.exit_code == 2
    err = json.loads(result.output)
    assert err["error"] == "InputError" and "--spacing" in err["problem"] and err["fix"]


def test_a_bad_choice_is_exit_2_and_with_json_one_json_error_on_stdout(tmp_path):
    """Typer checks the enum choices (--backend, --precision) before a command runs: under --json that refusal is
    one JSON object on stdout as every other error, and the choices are named."""
    args = [sys.executable, "-m", "edgeseg", "predict", "--engine", str(tmp_path), "--out", str(tmp_path / "o"),
            "--backend", "tensorrrt", str(tmp_path / "ct.nii.gz")]
    proc = subprocess.run([*args, "--json"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    err = json.loads(proc.stdout)
    assert err["error"] == "InputError" and "'tensorrrt' is not one of" in err["problem"] and "--help" in err["fix"]
    plain = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert plain.returncode == 2 and plain.stdout == "" and "tensorrrt" in plain.stderr
    assert not (tmp_path / "o").exists()
