"""No writer follows a symbolic link at a name it creates, truncates, renames over or deletes.

Anyone who can write into a shared output folder could plant `OUT/<name> -> ~/victim`; each writer
must refuse (exit 2, naming the link) and leave the victim as it was."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from edgeseg.runtime.atomic import remove_stale_temporaries, temporaries_of, unlink_own, write_text_atomic
from edgeseg.runtime.errors import InputError
from edgeseg.runtime.lock import LOCK_NAME, output_lock
from tests.helpers import ARTIFACT_WRITERS, run_writer_on_bogus_inputs

PRECIOUS = "the user's own file\n"


@pytest.fixture
def victim(tmp_path) -> Path:
    p = tmp_path / "elsewhere" / "victim.txt"
    p.parent.mkdir()
    p.write_text(PRECIOUS)
    return p


def _plant(link: Path, target: Path) -> Path:
    link.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(target, link)
    return link


def _untouched(victim: Path) -> bool:
    return victim.read_text() == PRECIOUS


def test_the_lock_is_never_opened_through_a_link(tmp_path, victim):
    link = _plant(tmp_path / "out" / LOCK_NAME, victim)
    with pytest.raises(InputError, match="symbolic link") as e:
        with output_lock(tmp_path / "out", "edgeseg predict"):
            pass
    assert str(link) in str(e.value) and _untouched(victim) and link.is_symlink()


@pytest.mark.parametrize("dangling", [False, True])
def test_atomic_writes_refuse_a_link_at_the_target_even_with_force(tmp_path, victim, dangling):
    target = tmp_path / "elsewhere" / "absent.txt" if dangling else victim
    link = _plant(tmp_path / "out" / "report.json", target)
    with pytest.raises(InputError, match="symbolic link"):
        write_text_atomic(link, "{}", force=True)
    assert _untouched(victim) and link.is_symlink() and not temporaries_of(link)
    assert not (tmp_path / "elsewhere" / "absent.txt").exists()


def test_unlink_own_refuses_a_link_and_stale_temporaries_spare_links(tmp_path, victim):
    link = _plant(tmp_path / "out" / "case.json", victim)
    with pytest.raises(InputError, match="never deletes through a link"):
        unlink_own(link)
    assert link.is_symlink()
    mine = tmp_path / "out" / "m.nii.gz"
    trap = _plant(tmp_path / "out" / ".m.nii.gz.abc123.tmp.nii.gz", victim)  # named like our temporary
    real = tmp_path / "out" / ".m.nii.gz.def456.tmp.nii.gz"
    real.write_text("left by a killed run")
    assert remove_stale_temporaries([mine]) == [real] and trap.is_symlink() and _untouched(victim)


@pytest.mark.parametrize("writer", ARTIFACT_WRITERS)
def test_every_artifact_writer_refuses_a_link_at_its_lock(tmp_path, victim, writer):
    out = tmp_path / "out"
    _plant(out / LOCK_NAME, victim)
    with pytest.raises(InputError, match="symbolic link"):  # refused at the lock, before reading any input
        run_writer_on_bogus_inputs(writer, tmp_path, out)
    assert _untouched(victim)


def test_the_adapt_command_exits_2_naming_the_link(tmp_path, victim):
    from typer.testing import CliRunner

    from edgeseg.cli import app

    out = tmp_path / "adapter"
    link = _plant(out / LOCK_NAME, victim)
    result = CliRunner().invoke(app, ["adapt", "--cache", str(tmp_path / "no-cache"), "--adapter", "lp",
                                      "--out", str(out), "--json"])
    assert result.exit_code == 2, result.output
    err = json.loads(result.output)
    assert err["path"] == str(link) and "symbolic link" in err["problem"] and _untouched(victim)


@pytest.mark.parametrize("name", ["in_ct.partial", "in_ct.json", "in_ct_liver.nii.gz"])
def test_predict_refuses_a_link_at_any_name_of_the_case(tmp_path, victim, name):
    from edgeseg.runtime.predict import PredictOptions, predict_many
    from tests.runtime.standin_engine import make_engine, write_ct

    (tmp_path / "in").mkdir()
    scan = write_ct(tmp_path / "in" / "ct.nii.gz")
    out = tmp_path / "out"
    link = _plant(out / name, victim)
    with pytest.raises(InputError, match="symbolic link") as e:
        predict_many(make_engine(), [scan], out, PredictOptions(force=True))
    assert str(link) in str(e.value) and _untouched(victim) and link.is_symlink()


def test_pretrain_refuses_a_link_at_its_state_before_any_work(tmp_path, victim):
    from edgeseg.train.pretrain import STATE_NAME, PretrainConfig, pretrain

    _plant(tmp_path / "out" / STATE_NAME, victim)
    with pytest.raises(InputError, match="symbolic link"):
        pretrain(tmp_path / "out", PretrainConfig(steps=1), force=True)
    assert _untouched(victim)


def test_fewshot_refuses_a_link_at_its_run_log_before_any_work(tmp_path, victim, checkpoint5):
    from edgeseg.fewshot import RUNS_NAME, FewshotConfig, run_protocol

    _plant(tmp_path / "out" / RUNS_NAME, victim)
    with pytest.raises(InputError, match="symbolic link"):
        run_protocol(checkpoint5, tmp_path / "out", FewshotConfig())
    assert _untouched(victim) and not (tmp_path / "out" / "features").exists()


def test_bench_jobs_and_results_refuse_links(tmp_path, victim):
    from edgeseg.bench.runner import run_job

    _plant(tmp_path / "work" / "x.job.json", victim)
    with pytest.raises(InputError, match="symbolic link"):
        run_job({"kind": "noop"}, tmp_path / "work", "x")
    assert _untouched(victim)
