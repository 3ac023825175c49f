"""The whole-field-of-view cases that the case and anatomy tests both look at, made once per session."""

from __future__ import annotations

import pytest

from edgeseg.data.phantom import PhantomCase, generate_case
from tests.data.phantom.common import COARSE, SEEDS, WHOLE


@pytest.fixture(scope="session")
def cases() -> dict[int, PhantomCase]:
    return {s: generate_case(s, spacing=COARSE, z_range=WHOLE) for s in SEEDS}
