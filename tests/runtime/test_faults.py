"""Faults and limits (docs/faults.md): killed runs, full disks, Ctrl-C, two runs, memory budgets, 4D scans,
and the command line's exit codes and JSON errors. Every test checks what is left on disk."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from edgeseg.runtime.atomic import atomic_path, write_text_atomic
from edgeseg.runtime.errors import InputError, ResourceError
from edgeseg.runtime.lock import LOCK_NAME, output_lock
from edgeseg.runtime.nifti import load_scan, save_like
from edgeseg.runtime.predict import GIB, PredictOptions, estimate_memory, predict_many
from edgeseg.runtime.preprocess import PreprocessSpec
from edgeseg.runtime.sliding_window import _importance
from typer.testing import CliRunner

from tests.runtime.standin_engine import make_engine, write_ct

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}
DONE = ["a.json", "a_labels.nii.gz", "a_liver.nii.gz", "a_spleen.nii.gz"]


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


@pytest.fixture
def scan(tmp_path) -> Path:
    return write_ct(tmp_path / "a.nii.gz")


def _disk_full_on_save(monkeypatch, nth: int):
    """nib.save writes half a file, then fails as a full disk does, on its `nth` call."""
    real, calls = nib.save, []

    def save(img, name):
        calls.append(name)
        if len(calls) == nth:
            Path(name).write_bytes(b"\x1f\x8b" + b"\0" * 100)
            raise OSError(errno.ENOSPC, "No space left on device", str(name))
        real(img, name)

    monkeypatch.setattr(nib, "save", save)
    return calls


# --- atomic writes ---------------------------------------------------------------------------------


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "report.json"
    target.write_text("the user's report")
    with pytest.raises(RuntimeError, match="crash"):
        with atomic_path(target, force=True) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash mid-write")
    assert target.read_text() == "the user's report" and listing(tmp_path) == ["report.json"]
    with pytest.raises(InputError, match="already exists; refusing to overwrite") as e:
        write_text_atomic(target, "new")
    assert "--force" in e.value.fix and target.read_text() == "the user's report"


def test_disk_full_while_writing_is_a_clean_error_and_leaves_nothing(tmp_path, monkeypatch, real_ct):
    scan = load_scan(real_ct)
    _disk_full_on_save(monkeypatch, 1)
    target = tmp_path / "mask.nii.gz"
    with pytest.raises(ResourceError) as e:
        save_like(np.zeros(scan.shape, np.uint8), scan, target)
    err = e.value
    assert err.path == str(target) and "no space left on the device" in err.problem and "free some disk space" in err.fix
    assert err.exit_code == 2 and listing(tmp_path) == []


def test_a_killed_run_leaves_nothing_that_looks_complete_and_resumes(scan, tmp_path):
    out = tmp_path / "out"
    code = (
        "import os, signal, sys, nibabel as nib\n"
        "from tests.runtime.standin_engine import make_engine\n"
        "from edgeseg.runtime.predict import PredictOptions, predict_many\n"
        "real, n = nib.save, []\n"
        "def save(img, name):\n"
        "    n.append(name)\n"
        "    real(img, name)\n"
        "    if len(n) == 2:  # the second mask: its temporary is written, then cut short, then the power goes\n"
        "        os.truncate(name, 200)\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "nib.save = save\n"
        "predict_many(make_engine(('liver', 'spleen')), [sys.argv[1]], sys.argv[2], PredictOptions())\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(scan), str(out)], cwd=REPO, env=ENV, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    left = listing(out)
    temporaries = [n for n in left if ".tmp" in n]
    assert len(temporaries) == 1 and temporaries[0].startswith(".a_spleen.nii.gz.")  # hidden, and named as one
    assert "a.partial" in left and "a.json" not in left and "a_spleen.nii.gz" not in left  # no report: not done
    reports = predict_many(make_engine(("liver", "spleen")), [scan], out, PredictOptions())  # no --force needed
    assert "volume_ml" in reports[0] and listing(out) == DONE
    for name in DONE[1:]:
        assert nib.load(str(out / name)).shape == (12, 10, 8)


# --- predict: disk full, Ctrl-C, two runs, user files ----------------------------------------------------


def test_disk_full_mid_case_removes_the_case_and_the_rerun_needs_no_force(scan, tmp_path, monkeypatch):
    out = tmp_path / "out"
    calls = _disk_full_on_save(monkeypatch, 2)  # the liver mask is written, the spleen mask hits a full disk
    with pytest.raises(ResourceError) as e:
        predict_many(make_engine(("liver", "spleen")), [scan], out, PredictOptions())
    assert e.value.path == str(out / "a_spleen.nii.gz") and "no space left" in e.value.problem
    assert len(calls) == 2 and listing(out) == []  # the finished liver mask went too: no half case
    monkeypatch.undo()
    predict_many(make_engine(("liver", "spleen")), [scan], out, PredictOptions())
    assert listing(out) == DONE


def test_ctrl_c_mid_case_removes_the_case_and_keeps_finished_ones(tmp_path, monkeypatch):
    a, b = write_ct(tmp_path / "a.nii.gz"), write_ct(tmp_path / "b.nii.gz", seed=1)
    out = tmp_path / "out"
    real, calls = nib.save, []

    def save(img, name):
        calls.append(name)
        if len(calls) == 5:  # case a wrote 3 masks; case b's second mask is interrupted
            raise KeyboardInterrupt
        real(img, name)

    monkeypatch.setattr(nib, "save", save)
    with pytest.raises(KeyboardInterrupt):
        predict_many(make_engine(("liver", "spleen")), [a, b], out, PredictOptions())
    assert listing(out) == DONE  # case a is complete; nothing of case b, no temporary, no lock
    monkeypatch.undo()
    reports = predict_many(make_engine(("liver", "spleen")), [a, b], out, PredictOptions())
    assert reports[0]["skipped"] and "volume_ml" in reports[1]


def test_a_redo_with_force_that_fails_keeps_the_users_files_it_did_not_reach(scan, tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "a_spleen.nii.gz").write_bytes(b"the user's spleen")
    _disk_full_on_save(monkeypatch, 1)
    with pytest.raises(ResourceError):
        predict_many(make_engine(("liver", "spleen")), [scan], out, PredictOptions(force=True))
    assert listing(out) == ["a_spleen.nii.gz"] and (out / "a_spleen.nii.gz").read_bytes() == b"the user's spleen"


def test_a_second_run_into_the_same_folder_is_refused_before_any_work(scan, tmp_path):
    out = tmp_path / "out"
    engine = make_engine()
    with output_lock(out, "edgeseg predict"):
        with pytest.raises(InputError) as e:
            predict_many(engine, [scan], out, PredictOptions())
        assert listing(out) == [LOCK_NAME]
    assert f"PID {os.getpid()}" in e.value.problem and e.value.path == str(out)
    assert engine.backend.calls == 0


# --- scans: 4D, singleton axes, oblique --------------------------------------------------------------


def test_a_4d_series_is_segmented_with_volume_and_refused_without(tmp_path):
    series = write_ct(tmp_path / "series.nii.gz", n_volumes=3)
    out = tmp_path / "out"
    with pytest.raises(InputError, match="4D series of 3 volumes") as e:
        predict_many(make_engine(), [series], out, PredictOptions())
    assert "--volume INDEX (0 to 2)" in e.value.fix and listing(out) == []
    (r,) = predict_many(make_engine(), [series], out, PredictOptions(volume=2))
    mask = nib.load(str(out / "series_liver.nii.gz"))
    src = nib.load(str(series))
    assert mask.shape == src.shape[:3] and np.array_equal(mask.affine, src.affine) and r["volume"] == 2
    with pytest.raises(InputError, match="--volume -1"):
        PredictOptions(volume=-1)


@pytest.mark.parametrize("shape,spacing", [((1, 10, 8), (5.0, 5.0, 5.0)), ((12, 10, 1), (0.8, 0.8, 7.0)),
                                           ((200, 3, 2), (0.5, 5.0, 5.0))])
def test_singleton_and_thin_axes_go_through(tmp_path, shape, spacing):
    path = write_ct(tmp_path / "thin.nii.gz", shape, spacing)
    predict_many(make_engine(), [path], tmp_path / "out", PredictOptions())
    mask = nib.load(str(tmp_path / "out" / "thin_liver.nii.gz"))
    assert mask.shape == shape and np.array_equal(mask.affine, nib.load(str(path)).affine)


def test_oblique_lps_scan_comes_back_on_its_own_grid(tmp_path):
    c, s = np.cos(0.3), np.sin(0.3)
    affine = np.array([[-c, s, 0, 40.0], [-s, -c, 0, 30.0], [0, 0, 4.0, -50.0], [0, 0, 0, 1]])  # LPS, rotated
    affine[:3, :3] = affine[:3, :3] @ np.diag([2.0, 2.0, 1.0])
    data = np.full((20, 16, 10), 300, np.int16)
    img = nib.Nifti1Image(data, affine)
    img.header.set_qform(affine, code=1)
    img.header.set_sform(affine, code=1)
    path = tmp_path / "oblique.nii.gz"
    nib.save(img, str(path))
    (r,) = predict_many(make_engine(), [path], tmp_path / "out", PredictOptions(hu_check=False))  # a uniform test block, not a CT
    mask = nib.load(str(tmp_path / "out" / "oblique_liver.nii.gz"))
    assert mask.shape == data.shape and np.array_equal(mask.affine, nib.load(str(path)).affine)
    assert np.asarray(mask.dataobj).all()  # every voxel is bright: the organ is the whole scan, in its own space
    assert r["volume_ml"]["liver"] == pytest.approx(data.size * 2 * 2 * 4 / 1000)


# --- memory budget ---------------------------------------------------------------------------------


def test_a_scan_over_the_memory_budget_is_refused_with_the_number_needed(tmp_path, monkeypatch):
    import edgeseg.runtime.predict.plan as predict_mod  # where the memory check reads the host

    monkeypatch.setattr(predict_mod, "current_rss_gib", lambda: 0.5)  # the engine and libraries, loaded
    # 16 x 16 x 16 voxels of 40 mm: a small file, but a 401^3 model grid at 1.5 mm (0.24 GiB per float map).
    path = write_ct(tmp_path / "huge.nii.gz", (16, 16, 16), (40.0, 40.0, 40.0))
    engine = make_engine(("liver", "spleen"), PreprocessSpec(window=(64, 64, 64)))
    out = tmp_path / "out"
    with pytest.raises(ResourceError) as e:
        predict_many(engine, [path], out, PredictOptions(max_memory_gib=1.0))
    err = e.value
    est = estimate_memory((16, 16, 16), (401, 401, 401), 2, (64, 64, 64), input_itemsize=2)
    need = np.ceil((0.5 * GIB + est["peak"]) / GIB * 10) / 10
    assert err.path == str(path) and f"needs about {need:.1f} GiB" in err.problem and "401x401x401" in err.problem
    assert "--max-memory 1" in err.problem and f"--max-memory {need:.1f}" in err.fix and "crop" in err.fix
    assert err.exit_code == 2 and listing(out) == [] and engine.backend.calls == 0  # refused before any work
    # Without --max-memory the budget is what the process can take now, and the message says which limit
    monkeypatch.setattr(predict_mod, "available_memory", lambda: (int(0.25 * GIB), "the cgroup's memory.max"))
    with pytest.raises(ResourceError, match=r"0\.2 GiB this process can still take now \(the cgroup's memory.max; "
                                            r"no --max-memory given\)"):
        predict_many(engine, [path], out, PredictOptions())


@pytest.mark.parametrize("shape,spacing,organs", [((64, 56, 40), (1.5, 1.5, 1.5), ("liver",)),
                                                  ((48, 48, 20), (0.8, 0.8, 3.0), ("liver", "spleen"))])
def test_the_memory_estimate_bounds_what_a_case_allocates(tmp_path, shape, spacing, organs):
    path = write_ct(tmp_path / "m.nii.gz", shape, spacing)
    engine = make_engine(organs, PreprocessSpec(window=(64, 64, 64)))
    opts = PredictOptions(save_prob=True, lcc=True, preview=True)
    _importance.cache_clear()  # as in a fresh process: the first case also makes the Gaussian map
    tracemalloc.start()  # numpy reports its buffers to tracemalloc: the peak of every array the case made
    try:
        (r,) = predict_many(engine, [path], tmp_path / "out", opts)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    est = estimate_memory(shape, r["model_grid"], len(organs), (64, 64, 64), input_itemsize=2, save_prob=True)
    assert peak <= est["peak"] <= 1.5 * peak, (peak, est)
    assert r["memory"]["estimated_peak_gib"] == round(est["peak"] / GIB, 3)


# --- models and artifacts ----------------------------------------------------------------------------


def test_an_engine_whose_graph_takes_another_window_is_refused_before_any_scan(scan, tmp_path):
    engine = make_engine(graph_window=(96, 96, 96))  # manifest says 64^3, the graph takes 96^3
    with pytest.raises(InputError) as e:
        predict_many(engine, [scan], tmp_path / "out", PredictOptions())
    err = e.value
    assert err.path == "standin-engine" and "(64, 64, 64)" in err.problem and "('N', 1, 96, 96, 96)" in err.problem
    assert "fuse the engine again" in err.fix and not (tmp_path / "out").exists()


# --- the command line: exit codes, JSON, Ctrl-C ------------------------------------------------------


def _cli(monkeypatch, args, engine):
    import edgeseg.runtime.engine as engine_mod

    from edgeseg.cli import app

    monkeypatch.setattr(engine_mod, "open_engine", lambda *a, **k: engine)
    return CliRunner().invoke(app, ["predict", *map(str, args), "--engine", "standin-engine", "--json"])


def test_cli_bad_input_exits_2_with_a_json_error_naming_file_problem_fix(tmp_path, monkeypatch):
    missing = tmp_path / "nope.nii.gz"
    result = _cli(monkeypatch, [missing, "--out", tmp_path / "out"], make_engine())
    assert result.exit_code == 2
    err = json.loads(result.stdout)
    assert err == {"error": "InputError", "path": str(missing), "problem": "input scan not found",
                   "fix": err["fix"], "exit_code": 2} and "check the path" in err["fix"]


def test_cli_internal_error_exits_1_with_json_and_leaves_nothing(scan, tmp_path, monkeypatch):
    engine = make_engine(fail=ZeroDivisionError("division by zero"))
    result = _cli(monkeypatch, [scan, "--out", tmp_path / "out"], engine)
    assert result.exit_code == 1
    err = json.loads(result.stdout)
    assert err["error"] == "InternalError" and "ZeroDivisionError: division by zero" in err["problem"]
    assert "bug in edgeseg" in err["fix"] and "Traceback" in err["traceback"] and err["exit_code"] == 1
    assert listing(tmp_path / "out") == []


def test_cli_ctrl_c_exits_130_with_json_and_leaves_nothing(scan, tmp_path, monkeypatch):
    result = _cli(monkeypatch, [scan, "--out", tmp_path / "out"], make_engine(fail=KeyboardInterrupt()))
    assert result.exit_code == 130
    err = json.loads(result.stdout)
    assert err["error"] == "Interrupted" and "run the same command again" in err["fix"]
    assert listing(tmp_path / "out") == []


def test_cli_memory_refusal_and_volume_option(tmp_path, monkeypatch):
    series = write_ct(tmp_path / "series.nii.gz", n_volumes=2)
    result = _cli(monkeypatch, [series, "--out", tmp_path / "out", "--volume", 1, "--max-memory", 0.001], make_engine())
    assert result.exit_code == 2
    err = json.loads(result.stdout)
    assert err["error"] == "ResourceError" and err["path"] == str(series) and "--max-memory" in err["fix"]
    result = _cli(monkeypatch, [series, "--out", tmp_path / "out", "--volume", 1], make_engine())
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)[0]["volume"] == 1 and (tmp_path / "out" / "series_liver.nii.gz").exists()


def test_sigint_stops_a_real_run_promptly_and_cleanly(scan, tmp_path):
    started, out = tmp_path / "started", tmp_path / "out"
    code = (
        "import signal, sys, time\n"
        # a shell's background job starts with SIGINT ignored, and Python then installs no
        # KeyboardInterrupt handler: give the child the handler an interactive run has
        "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
        "from pathlib import Path\n"
        "import edgeseg.runtime.engine as engine_mod\n"
        "from tests.runtime.standin_engine import StandInBackend, make_engine\n"
        "started = Path(sys.argv[1])\n"
        "def slow(self, batch):\n"
        "    started.touch()\n"
        "    time.sleep(60)  # a long window: Ctrl-C must not wait for it\n"
        "StandInBackend._predict = slow\n"
        "engine_mod.open_engine = lambda *a, **k: make_engine()\n"
        "from edgeseg.cli import main\n"
        "sys.argv = ['edgeseg', 'predict', sys.argv[2], '--engine', 'x', '--out', sys.argv[3]]\n"
        "main()\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(started), str(scan), str(out)], cwd=REPO, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not started.exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.05)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=30)
        stopped = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr
    assert stopped < 5.0 and "interrupted (Ctrl-C)" in stderr and "Traceback" not in stderr
    assert listing(out) == []


# --- limits beyond MemAvailable (issue 14, class 10) ---------------------------------------------------
def test_a_cgroup_limit_is_the_budget_when_it_is_tighter_than_the_machine(tmp_path, monkeypatch):
    import edgeseg.runtime.host as host

    cg = tmp_path / "cg"
    cg.mkdir()
    (cg / "memory.max").write_text(str(3 * 2**30) + "\n")
    (cg / "memory.current").write_text(str(2 * 2**30) + "\n")
    monkeypatch.setattr(host, "_own_cgroup_dirs", lambda: [str(cg)])
    avail, source = host.available_memory()
    assert avail == 2**30 and source == "the cgroup's memory.max"
    (cg / "memory.max").write_text("max\n")  # no limit: the machine's MemAvailable again
    assert host.available_memory()[1] == "MemAvailable"


def test_rlimit_as_counts_as_a_memory_limit():
    import subprocess
    import sys

    code = (
        "import resource, sys, json\n"
        "from edgeseg.runtime.host import memory_limits\n"
        "print(json.dumps(memory_limits()))\n"
    )
    done = subprocess.run(["bash", "-c", f"ulimit -v 4000000 && {sys.executable} -c '{code}'"], capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr
    sources = [s for _, s in json.loads(done.stdout)]
    assert "RLIMIT_AS (ulimit -v)" in sources


def test_out_of_memory_anywhere_is_a_resource_error_and_absurd_budgets_or_windows_are_refused():
    from edgeseg.runtime.errors import internal_errors
    from edgeseg.runtime.preprocess import PreprocessSpec

    with pytest.raises(ResourceError, match="ran out of memory") as e:
        with internal_errors():
            raise MemoryError("Unable to allocate 512. GiB")
    assert e.value.exit_code == 2 and "--max-memory" in e.value.fix
    with pytest.raises(InputError, match="must be a positive number of GiB, at most"):
        PredictOptions(max_memory_gib=1e308)
    with pytest.raises(InputError, match="multiple of 32 from 64 to 512"):
        PreprocessSpec(window=(1024, 1024, 1024))


# --- limits and messages (issue 14, class 12) -----------------------------------------------------------
def test_sigterm_stops_a_run_like_ctrl_c_with_exit_143(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    a, b = write_ct(tmp_path / "a.nii.gz"), write_ct(tmp_path / "b.nii.gz", seed=1)
    out = tmp_path / "out"
    code = (
        "import sys\n"
        "from tests.runtime.standin_engine import make_engine\n"
        "import edgeseg.runtime.engine as em\n"
        "em.open_engine = lambda *a, **k: make_engine(('liver', 'spleen'), delay=4.0)\n"
        f"sys.argv = ['edgeseg', 'predict', {str(a)!r}, {str(b)!r}, '--engine', 'x', '--out', {str(out)!r}]\n"
        "from edgeseg.cli import main\n"
        "main()\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not (out / "a.json").exists() and time.time() < deadline:
        time.sleep(0.1)
    time.sleep(0.5)  # case b is inside its (slow) inference now
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "terminated" in err and listing(out) == DONE  # case a whole, nothing of case b, no lock


def test_a_threads_count_below_1_and_an_absurd_overlap_are_refused(tmp_path, monkeypatch):
    scan = write_ct(tmp_path / "a.nii.gz")
    result = _cli(monkeypatch, [scan, "--out", tmp_path / "out", "--threads", 0], make_engine())
    assert result.exit_code == 2 and "--threads" in result.output
    with pytest.raises(InputError, match="--overlap 0.9 runs about 125x the windows of --overlap 0.5"):
        PredictOptions(overlap=0.9)


def test_predict_checks_its_inputs_before_it_loads_the_engine(tmp_path, monkeypatch):
    import edgeseg.runtime.engine as engine_mod
    from edgeseg.cli import app

    loaded = []
    monkeypatch.setattr(engine_mod, "open_engine", lambda *a, **k: loaded.append(1) or make_engine())
    result = CliRunner().invoke(app, ["predict", str(tmp_path / "nope.nii.gz"), "--engine", "e", "--out",
                                      str(tmp_path / "out"), "--json"])
    assert result.exit_code == 2 and json.loads(result.stdout)["problem"] == "input scan not found" and not loaded


def test_library_warnings_stay_off_the_users_terminal_unless_debugging(tmp_path):
    import os
    import subprocess
    import sys

    code = ("import warnings, edgeseg.cli as c\n"
            "c.app = lambda: warnings.warn('a library deprecation nobody asked for')\n"
            "c.main()\n")
    env = {k: v for k, v in os.environ.items() if k != "EDGESEG_DEBUG"}
    quiet = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    loud = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**env, "EDGESEG_DEBUG": "1"})
    assert "deprecation" not in quiet.stderr and "deprecation" in loud.stderr
