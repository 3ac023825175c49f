"""Reports: edgeseg recognises its own by content, and redoes a case whose report no longer holds."""

from __future__ import annotations

import json

import pytest

from edgeseg.runtime.errors import InputError
from edgeseg.runtime.predict import PredictOptions, predict_many
from tests.runtime.predict.oracle import OracleEngine

def test_a_users_json_named_like_a_report_is_never_skipped_on_nor_overwritten(scans, tmp_path):
    # A BIDS sidecar beside its scan: with --out there too, today's name-only check would skip the case
    engine = OracleEngine(scans)
    out = tmp_path / "out"
    out.mkdir()
    sidecar = out / f"{scans[0].name}_ct.json"
    sidecar.write_text('{"RepetitionTime": 2.0, "Manufacturer": "X"}')
    for force in (False, True):
        with pytest.raises(InputError, match="is not an edgeseg report") as e:
            predict_many(engine, [scans[0] / "ct.nii.gz"], out, PredictOptions(force=force))
        assert str(sidecar) in e.value.message and "--out" in e.value.fix
    assert json.loads(sidecar.read_text()) == {"RepetitionTime": 2.0, "Manufacturer": "X"} and engine.calls == 0
