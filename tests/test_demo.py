"""`edgeseg demo`: what it refuses before any stage runs (the whole demo is the README's main command, run by hand)."""

from __future__ import annotations

import pytest

from edgeseg.demo import run_demo
from edgeseg.runtime.errors import InputError


def test_the_torch_backend_is_refused_before_anything_is_written(tmp_path):
    """The predict stage runs the fused engine, which has no torch form: refuse at once, not after adapting."""
    out = tmp_path / "demo"
    with pytest.raises(InputError, match="no torch form") as e:
        run_demo(out, backend="torch")
    assert "--backend auto" in e.value.fix and not out.exists()


def test_unknown_or_repeated_organs_are_refused_before_anything_is_written(tmp_path):
    out = tmp_path / "demo"
    for organs in (("kidney_left", "kidney_left"), ("heart",), ()):
        with pytest.raises(InputError, match="each must be a phantom organ"):
            run_demo(out, organs=organs)
    assert not out.exists()
