"""The deployment runtime must import and work on a box without torch (or MONAI)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import run_without_torch


def test_blocker_really_blocks_torch():
    # Guard against a test that cannot fail: the same harness must refuse `import torch`.
    proc = run_without_torch("import torch")
    assert proc.returncode != 0 and "blocked" in proc.stderr


def test_runtime_imports_and_runs_without_torch(real_ct):
    runtime_dir = Path(__file__).resolve().parents[2] / "runtime"
    modules = sorted(".".join(p.relative_to(runtime_dir).with_suffix("").parts).removesuffix(".__init__")
                     for p in runtime_dir.rglob("*.py") if p != runtime_dir / "__init__.py")  # subpackages too
    assert {"preprocess", "nifti", "availability", "predict", "predict.case", "backends.ort"} <= set(modules)
    proc = run_without_torch(
        f"""
        import importlib, sys
        for m in {modules!r}:
            importlib.import_module("edgeseg.runtime." + m)
        import edgeseg.model.spec, edgeseg.info
        from edgeseg.runtime.preprocess import preprocess, PreprocessSpec, mask_to_input_grid
        p = preprocess({str(real_ct)!r}, PreprocessSpec())
        back = mask_to_input_grid(p.image > 0.5, p.transform)
        from edgeseg.runtime.availability import probe_backends
        status = {{b.name: b for b in probe_backends()}}
        assert not status["torch-cpu"].usable and "not installed" in status["torch-cpu"].detail
        assert "torch" not in sys.modules
        print("OK", back.shape)
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert "OK (122, 101, 30)" in proc.stdout


@pytest.mark.parametrize("module", ["edgeseg.data.phantom", "edgeseg.data.datasets"])
def test_data_modules_are_torch_free(module):
    proc = run_without_torch(f"import {module}")
    assert proc.returncode == 0, proc.stderr
