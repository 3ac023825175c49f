"""What `runtime.host` reads and sets about the machine a job runs on."""

from __future__ import annotations

import platform

import pytest

from edgeseg.runtime.host import keep_heap_small


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's (elsewhere it is a no-op)")
def test_keep_heap_small_sets_glibcs_thresholds_through_mallopt():
    assert keep_heap_small() is True  # mallopt accepted both thresholds: large freed blocks go back to the system

