"""A stand-in engine whose answer is known: it returns the phantom's own labels on the model grid."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeseg.runtime.preprocess import preprocess
from tests.conftest import PRE5


class OracleEngine:
    """Answers with the reference labels of the scan it is given (looked up by its shape)."""

    def __init__(self, cases: list[Path], organs=("liver", "spleen")):
        self.organs = organs
        self.preprocess = PRE5
        self.folder = Path("oracle")
        self.ran = {"backend": "oracle", "precision": "fp32", "device": "none"}
        self.calls = 0
        self.answers = {}
        for case in cases:
            labels = [preprocess(case / "ct.nii.gz", PRE5, label=case / "segmentations" / f"{o}.nii.gz").label
                      for o in organs]
            self.answers[labels[0].shape] = np.stack(labels).astype(np.float32)

    def check_window(self) -> None:
        """No graph, so no window to hold against a manifest (`Engine.check_window` is tested in test_faults)."""

    def probabilities(self, volume, *, overlap, batch_size, stats=None, **_):
        self.calls += 1
        if stats is not None:
            stats.update(windows=1, run=1, batches=1)
        return self.answers[volume.shape[1:]]
