"""One writer per output folder: a second run is refused by name, a dead run never blocks, nothing is left."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from edgeseg.runtime.errors import InputError, ResourceError
from tests.helpers import ARTIFACT_WRITERS, run_writer_on_bogus_inputs
from edgeseg.runtime.lock import LOCK_NAME, locks_output, output_lock, read_holder

REPO = Path(__file__).resolve().parents[2]

HOLDER = """
import sys, time
from edgeseg.runtime.lock import output_lock
with output_lock(sys.argv[1], "edgeseg predict"):
    print("locked", flush=True)
    time.sleep(60)
"""


def test_a_second_run_on_the_folder_is_refused_naming_the_holder(tmp_path):
    out = tmp_path / "out"
    with output_lock(out, "edgeseg predict"):
        holder = read_holder(out)
        assert holder["pid"] == os.getpid() and holder["command"] == "edgeseg predict"
        with pytest.raises(InputError) as e:
            with output_lock(out, "edgeseg cache"):
                pass
        err = e.value
        assert err.path == str(out) and err.exit_code == 2
        assert f"edgeseg predict (PID {os.getpid()}" in err.problem and "two runs must not write into one folder" in err.problem
        assert "wait for that run to finish" in err.fix and "--out" in err.fix
        assert (out / LOCK_NAME).exists()  # the refused run did not take or remove the holder's lock
    assert not out.exists()  # made by the lock, nothing written: removed again
    with output_lock(out):
        (out / "result.txt").write_text("kept")
    assert sorted(p.name for p in out.iterdir()) == ["result.txt"]  # the lock file goes, the results stay


def test_a_lock_in_another_process_refuses_and_a_killed_holder_does_not_block(tmp_path):
    out = tmp_path / "shared"
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], stdout=subprocess.PIPE, text=True, cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(InputError, match=rf"in use by edgeseg predict \(PID {proc.pid}\b"):
            with output_lock(out):
                pass
    finally:
        proc.send_signal(signal.SIGKILL)  # as the OOM killer or a power cut would: no clean-up runs
        proc.wait(timeout=30)
    assert (out / LOCK_NAME).exists()  # a stale lock file stays behind ...
    with output_lock(out, "edgeseg predict"):  # ... and does not block: the kernel dropped the dead run's lock
        assert read_holder(out)["pid"] == os.getpid()
    assert not (out / LOCK_NAME).exists()


def test_an_existing_folder_is_kept_and_a_file_is_refused(tmp_path):
    with output_lock(tmp_path):
        pass
    assert tmp_path.is_dir() and list(tmp_path.iterdir()) == []
    f = tmp_path / "a_file"
    f.write_text("x")
    with pytest.raises(InputError, match="is a file, not a folder"):
        with output_lock(f):
            pass
    assert f.read_text() == "x"


def test_disk_full_inside_the_lock_is_a_clean_error_naming_the_folder(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ResourceError) as e:
        with output_lock(out):
            raise OSError(errno.ENOSPC, "No space left on device")
    assert e.value.path == str(out) and "no space left" in e.value.problem and "free some disk space" in e.value.fix
    assert e.value.exit_code == 2 and not out.exists()


def test_an_unwritable_parent_is_an_input_error(tmp_path, monkeypatch):
    def refuse(self, *a, **k):  # as mkdir answers under a folder the user may not write to
        raise PermissionError(errno.EACCES, "Permission denied", str(self))

    monkeypatch.setattr(Path, "mkdir", refuse)
    with pytest.raises(InputError, match="permission denied") as e:
        with output_lock(tmp_path / "ro" / "out"):
            pass
    assert e.value.path == str(tmp_path / "ro" / "out") and "choose a folder you can write to" in e.value.fix


def test_locks_output_takes_the_lock_before_any_work(tmp_path):
    calls = []

    @locks_output("edgeseg test")
    def writer(source, out, *, force=False):
        calls.append((source, out, force))
        assert read_holder(out)["command"] == "edgeseg test"
        return "done"

    assert writer("a", tmp_path / "o", force=True) == "done" and calls == [("a", tmp_path / "o", True)]
    with output_lock(tmp_path / "o"):
        with pytest.raises(InputError, match="in use by"):
            writer("b", out=tmp_path / "o")
    assert len(calls) == 1


@pytest.mark.parametrize("writer", ARTIFACT_WRITERS)
def test_every_artifact_writer_refuses_a_locked_folder(tmp_path, writer):
    # Bogus inputs on purpose: the lock is the first thing each writer checks, before reading any input.
    out = tmp_path / "out"
    with output_lock(out, "edgeseg predict"):
        with pytest.raises(InputError, match="in use by edgeseg predict"):
            run_writer_on_bogus_inputs(writer, tmp_path, out)


def test_adapt_command_refuses_a_locked_folder(tmp_path):
    import json

    from typer.testing import CliRunner

    from edgeseg.cli import app

    out = tmp_path / "adapter"
    with output_lock(out, "edgeseg adapt"):
        result = CliRunner().invoke(app, ["adapt", "--cache", str(tmp_path / "no-cache"), "--adapter", "lp",
                                          "--out", str(out), "--json"])
    assert result.exit_code == 2, result.output
    err = json.loads(result.output)
    assert err["path"] == str(out) and "in use by edgeseg adapt" in err["problem"]


def test_a_stale_lock_file_does_not_make_a_cache_folder_look_used(tmp_path):
    from edgeseg.features.writer import _check_out

    out = tmp_path / "cache"
    out.mkdir()
    (out / LOCK_NAME).write_text('{"pid": 1}')  # left by a run that was killed
    assert _check_out(out, "hash", "trunk", {"cases": []}, force=False) is False
    (out / "notes.txt").write_text("a user's file")
    with pytest.raises(InputError, match=r"holds files that no edgeseg manifest there lists \(notes.txt\)"):
        _check_out(out, "hash", "trunk", {"cases": []}, force=False)

