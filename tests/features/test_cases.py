"""A case folder is written whole or not at all: committed by one rename, removed on any failure."""

from __future__ import annotations

import json

import numpy as np
import pytest
from edgeseg.runtime.errors import InputError

from edgeseg.features.cases import case_complete, own_cases, remove_leftovers, save_npy, write_durable, writing_case


def test_a_case_appears_only_when_complete_and_a_failure_leaves_nothing(tmp_path):
    final = tmp_path / "s0001"
    with pytest.raises(KeyboardInterrupt):
        with writing_case(final) as partial:
            assert partial == tmp_path / ".s0001.partial" and partial.is_dir()
            save_npy(partial / "a.npy", np.zeros(3))
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []
    with writing_case(final) as partial:
        size = save_npy(partial / "r" / "a.npy", np.arange(4, dtype=np.float16))
        write_durable(partial / "meta.json", json.dumps({"files": {"r/a.npy": size}}))
        assert not final.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["s0001"] and case_complete(final)
    np.testing.assert_array_equal(np.load(final / "r" / "a.npy"), np.arange(4))
    (final / "r" / "a.npy").write_bytes(b"torn")
    assert not case_complete(final)  # a file not at its recorded size


def test_leftovers_of_a_killed_run_are_removed_and_strangers_are_refused(tmp_path):
    (tmp_path / ".s0002.partial").mkdir()
    (tmp_path / ".s0002.partial" / "a.npy").write_bytes(b"half")
    (tmp_path / "s0001" / "positive").mkdir(parents=True)
    (tmp_path / "s0001" / "positive" / "label.npy").write_bytes(b"x")
    said: list[str] = []
    remove_leftovers(tmp_path, said.append)
    assert not (tmp_path / ".s0002.partial").exists() and "removing the unfinished case .s0002.partial" in said[0]
    assert own_cases(tmp_path) == [tmp_path / "s0001"]
    (tmp_path / "s0001" / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match=r"does not write \(s0001/notes.txt\)"):
        own_cases(tmp_path)
