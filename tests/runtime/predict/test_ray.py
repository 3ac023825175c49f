"""`edgeseg predict --ray`: a cohort on a local Ray (2 CPUs), the tiny real engine, small phantoms.

One Ray for the whole session (each start costs seconds). The cohort must give the local run's masks byte
for byte, record a bad scan and go on, redo a case whose worker was killed mid-case (once), record a case
whose worker died twice as failed, resume on a rerun, and stop at once when a worker cannot see --out.
Workers are killed by `ray_faults` (installed in each Ray worker), never by a change to the product.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from edgeseg.runtime.engine import open_engine
from edgeseg.runtime.errors import InputError
from edgeseg.runtime.lock import LOCK_NAME
from edgeseg.runtime.predict import PredictOptions, predict_many
from edgeseg.runtime.predict import ray_loop
from edgeseg.runtime.predict.ray_loop import STATE, RayOptions, parse_actors, predict_cohort

REPO = Path(__file__).resolve().parents[3]
GOOD = ("a", "b", "c", "d")
ORGANS = ("liver", "spleen")
quiet = lambda msg: None  # noqa: E731


@pytest.fixture(scope="session")
def kill_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("ray-kill")


@pytest.fixture(scope="session")
def local_ray(kill_dir):
    """A local Ray on 2 CPUs whose workers import this tree and carry the test's fault hook."""
    ray = pytest.importorskip("ray", reason="pip install 'edgeseg[ray]' (CI installs it)")
    env = {"PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p),
           "EDGESEG_TEST_KILL_DIR": str(kill_dir)}
    if os.environ.get("EDGESEG_TREE"):  # a worktree run: workers import the same tree as this process
        env["EDGESEG_TREE"] = os.environ["EDGESEG_TREE"]
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="WARNING",
             runtime_env={"env_vars": env, "worker_process_setup_hook": "tests.runtime.predict.ray_faults.install"})
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def scans(tmp_path_factory) -> Path:
    """Four small phantoms (a..d: 2 windows of 64^3 each) and a scan that is not Hounsfield units (bad)."""
    from edgeseg.data.phantom import write_dataset

    root = tmp_path_factory.mktemp("ray-scans")
    write_dataset(root / "phantoms", len(GOOD), seed=3, spacing=5.0, z_range=(-60, 60))
    folder = root / "scans"
    folder.mkdir()
    for name, case in zip(GOOD, sorted(p for p in (root / "phantoms").iterdir() if p.is_dir())):
        (folder / f"{name}.nii.gz").write_bytes((case / "ct.nii.gz").read_bytes())
    img = nib.load(folder / "a.nii.gz")
    bad = np.random.default_rng(0).integers(0, 256, img.shape).astype(np.uint8)  # a photo's range: not HU
    nib.save(nib.Nifti1Image(bad, img.affine), folder / "bad.nii.gz")
    return folder


@pytest.fixture(scope="module")
def local(engine5, scans, tmp_path_factory) -> Path:
    """The local run (`predict_many`) over the good scans: the masks the cohort must reproduce.

    At the actors' thread count (1 CPU each): OpenVINO's CPU kernels split work by thread count, which moves
    float rounding (a few voxels of this random-weight engine, whose probabilities sit near 0.5, flip)."""
    out = tmp_path_factory.mktemp("ray-local") / "out"
    with open_engine(engine5, threads=RayOptions().actor_threads) as eng:
        predict_many(eng, [scans / f"{c}.nii.gz" for c in GOOD], out, PredictOptions(), log=quiet)
    return out


@pytest.fixture(scope="module")
def first(local_ray, engine5, scans, kill_dir, tmp_path_factory):
    """The cohort over the folder (4 good scans and the bad one) on 2 actors; b's worker is killed once, c's
    twice, each right after it wrote the case's first mask."""
    for token in ("b.1", "c.1", "c.2"):
        (kill_dir / token).touch()
    out = tmp_path_factory.mktemp("ray-cohort") / "out"
    seen = []
    entries, summary = predict_cohort(engine5, [scans], out, PredictOptions(), RayOptions(actors=(2, 2)),
                                      progress=lambda done, total: seen.append((done, total)), log=quiet)
    assert not list(kill_dir.iterdir())  # every token was used: three workers died
    return out, entries, summary, seen


def _masks(out: Path, case: str) -> dict[str, bytes]:
    """The case's mask files, byte for byte (nibabel's gzip stream carries no time stamp)."""
    return {n: (out / n).read_bytes() for n in [f"{case}_{o}.nii.gz" for o in ORGANS] + [f"{case}_labels.nii.gz"]}


def test_the_cohort_gives_the_local_runs_masks_and_reports(first, local):
    out, entries, summary, seen = first
    by_case = {e["case"]: e for e in entries}
    assert [e["case"] for e in entries] == ["a", "b", "bad", "c", "d"]  # input order, as the local run
    for case in ("a", "b", "d"):
        assert _masks(out, case) == _masks(local, case), case
        report, there = json.loads((out / f"{case}.json").read_text()), json.loads((local / f"{case}.json").read_text())
        assert report == by_case[case]
        assert report["made_with"] == there["made_with"] and report["volume_ml"] == there["volume_ml"]
    assert seen[-1] == (5, 5) and [d for d, _ in seen] == [1, 2, 3, 4, 5]


def test_a_bad_scan_is_recorded_and_the_cohort_goes_on(first):
    out, entries, summary, _ = first
    bad = next(e for e in entries if e["case"] == "bad")
    assert bad["failed"] and bad["error"]["error"] == "InputError" and "Hounsfield" in bad["error"]["problem"]
    assert bad["error"]["fix"] and bad["input"].endswith("bad.nii.gz")
    assert not [p.name for p in out.iterdir() if p.name.startswith("bad")]  # nothing of it is left


def test_a_killed_worker_leaves_nothing_complete_and_its_case_is_redone_once(first, local):
    out, entries, summary, _ = first
    rows = {r["case"]: r for r in summary["rows"]}
    assert rows["b"]["status"] == "done" and rows["b"]["attempts"] == 2  # killed once, redone on a new worker
    assert rows["a"]["attempts"] == 1
    # c's worker died on both attempts: recorded as failed, its marker left (incomplete), no report, so a
    # rerun redoes it; one mask was complete when it died, but no report says the case is
    c = rows["c"]
    assert c["status"] == "failed" and c["attempts"] == 2 and "died on each of its 2 attempts" in c["error"]["problem"]
    assert (out / "c.partial").exists() and not (out / "c.json").exists()
    assert not [p.name for p in out.iterdir() if p.name.startswith(".") and ".tmp" in p.name]
    assert not (out / LOCK_NAME).exists() and not (out / STATE).exists()  # the lock and the cohort's state are gone


def test_the_summary_has_a_row_per_case(first, local):
    out, entries, summary, _ = first
    assert summary["kind"] == "edgeseg-cohort-summary" and (summary["done"], summary["failed"]) == (3, 2)
    assert summary["ray"]["actors"] == [2, 2] and summary["ray"]["cluster"]["cpus"] == 2
    assert json.loads((out / "cohort.json").read_text()) == summary
    with open(out / "cohort.csv", newline="") as fh:
        rows = {r["case"]: r for r in csv.DictReader(fh)}
    assert list(rows) == ["a", "b", "bad", "c", "d"]
    a = json.loads((local / "a.json").read_text())
    assert rows["a"]["status"] == "done" and rows["a"]["backend"] == a["ran"]["backend"] and rows["a"]["node"]
    for organ, ml in a["volume_ml"].items():
        assert float(rows["a"][f"{organ}_ml"]) == pytest.approx(ml, abs=1e-3)
    assert float(rows["a"]["inference_s"]) > 0 and float(rows["a"]["total_s"]) >= float(rows["a"]["inference_s"])
    assert rows["bad"]["status"] == "failed" and "Hounsfield" in rows["bad"]["error"]


def test_a_rerun_skips_finished_cases_and_redoes_the_rest(first, local, engine5, scans):
    out = first[0]
    before = {c: (out / f"{c}.json").stat().st_mtime_ns for c in ("a", "b", "d")}
    entries, summary = predict_cohort(engine5, [scans], out, PredictOptions(), RayOptions(actors=(1, 2)), log=quiet)
    status = {r["case"]: r["status"] for r in summary["rows"]}
    assert status == {"a": "skipped", "b": "skipped", "c": "done", "bad": "failed", "d": "skipped"}
    assert {c: (out / f"{c}.json").stat().st_mtime_ns for c in ("a", "b", "d")} == before  # untouched
    assert _masks(out, "c") == _masks(local, "c") and not (out / "c.partial").exists()
    rows = {r["case"]: r for r in summary["rows"]}
    assert rows["a"]["volume_ml"] == first[2]["rows"][0]["volume_ml"]  # a skipped case's row comes from its report
    assert rows["c"]["attempts"] == 1  # each run counts its own attempts


def test_a_worker_that_cannot_see_the_output_folder_stops_the_cohort_at_start(local_ray, engine5, scans, tmp_path,
                                                                                monkeypatch):
    # the driver's token is written where no worker looks, as on a --out local to the driver's machine
    monkeypatch.setattr(ray_loop, "_write_state", lambda out: "token-on-the-drivers-disk-only")
    out = tmp_path / "out"
    with pytest.raises(InputError) as e:
        predict_cohort(engine5, [scans / "a.nii.gz"], out, PredictOptions(), RayOptions(actors=(1, 1), visibility_wait_s=1),
                       log=quiet)
    assert "does not see the output folder" in e.value.problem and "Ray node" in e.value.problem
    assert "filesystem every Ray node mounts" in e.value.fix
    assert not out.exists()  # nothing written, the lock released


def test_actor_counts_and_resources_are_checked():
    assert parse_actors("3") == (3, 3) and parse_actors("1-8") == (1, 8) and parse_actors(None) is None
    for bad in ("0", "4-2", "x", "1-2-3", "-1"):
        with pytest.raises(InputError, match="--actors"):
            parse_actors(bad)
    with pytest.raises(InputError, match="--gpus-per-actor"):
        RayOptions(gpus_per_actor=-1)
    with pytest.raises(InputError, match="--cpus-per-actor"):
        RayOptions(cpus_per_actor=0)
    assert RayOptions(cpus_per_actor=0.5).actor_threads == 1 and RayOptions(cpus_per_actor=4).actor_threads == 4


def test_without_ray_the_error_says_how_to_get_it(monkeypatch, tmp_path):
    import sys

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    with pytest.raises(InputError) as e:
        predict_cohort(tmp_path, [tmp_path], tmp_path / "out", PredictOptions())
    assert "pip install 'edgeseg[ray]'" in e.value.fix


def test_the_command_line_runs_the_cohort_and_says_what_it_did(local_ray, engine5, scans, local, tmp_path):
    from typer.testing import CliRunner

    from edgeseg.cli import app

    out = tmp_path / "out"
    args = ["predict", str(scans / "a.nii.gz"), "--engine", str(engine5), "--out", str(out), "--ray", "auto",
            "--actors", "1", "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    entries = json.loads(result.stdout)
    assert [e["case"] for e in entries] == ["a"] and _masks(out, "a") == _masks(local, "a")
    assert "cohort: 1 done, 0 skipped, 0 failed" in result.stderr and (out / "cohort.csv").exists()
    # a failed case: exit 2, the entries (with the error) still the one JSON document on stdout
    result = CliRunner().invoke(app, [*args[:1], str(scans / "bad.nii.gz"), *args[2:]])
    assert result.exit_code == 2
    assert json.loads(result.stdout)[0]["error"]["error"] == "InputError"


def test_the_command_line_refuses_actor_options_without_ray(engine5, scans, tmp_path):
    from typer.testing import CliRunner

    from edgeseg.cli import app

    result = CliRunner().invoke(app, ["predict", str(scans / "a.nii.gz"), "--engine", str(engine5), "--out",
                                      str(tmp_path / "out"), "--actors", "2", "--json"])
    assert result.exit_code == 2 and "--ray" in json.loads(result.stdout)["fix"]
    result = CliRunner().invoke(app, ["predict", str(scans / "a.nii.gz"), "--engine", str(engine5), "--out",
                                      str(tmp_path / "out"), "--ray", "auto", "--actors", "0-1", "--json"])
    assert result.exit_code == 2 and "--actors" in json.loads(result.stdout)["problem"]
    assert not (tmp_path / "out").exists()
