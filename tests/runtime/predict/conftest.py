from __future__ import annotations

import pytest


@pytest.fixture
def scans(phantoms5):
    """Two labelled phantom case folders (each holds ct.nii.gz and segmentations/)."""
    support, _ = phantoms5
    return sorted(p for p in support.iterdir() if p.is_dir())[:2]
