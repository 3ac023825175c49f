"""The few-shot protocol's bookkeeping: splits never overlap, seeds give the same draw, a method's
trainable parameters match its definition, finished runs are resumed and torn lines ignored."""

from __future__ import annotations

import dataclasses
import json

import pytest

from edgeseg.fewshot import (
    FewshotConfig,
    _WholeModel,
    draw_supports,
    plan_runs,
    read_runs,
    render_table,
    run_key,
    split_cases,
    summarise,
)
from edgeseg.runtime.errors import InputError

PRESENCE = {
    "liver": [f"t{i:04d}" for i in range(20)],
    "gallbladder": [f"t{i:04d}" for i in range(20) if i % 4 != 1],  # absent from some cases, as in phantoms
}


def test_queries_and_supports_never_overlap_and_queries_are_fixed_per_organ():
    config = FewshotConfig(organs=("liver", "gallbladder"), ks=(1, 5, 10), seeds=(0, 1, 2), n_cases=20)
    plan = plan_runs(config, PRESENCE)
    assert len(plan) == 2 * 3 * 3 * len(config.methods)
    queries = {}
    for item in plan:
        assert not set(item["supports"]) & set(item["queries"])
        assert len(item["supports"]) == item["k"] == len(set(item["supports"]))
        assert set(item["supports"]) <= set(PRESENCE[item["organ"]])  # every support holds the organ
        queries.setdefault(item["organ"], set()).add(tuple(item["queries"]))
    assert all(len(q) == 1 for q in queries.values())  # one query set per organ: every method, K, seed
    assert len({p["key"] for p in plan}) == len(plan)


def test_the_same_seed_gives_the_same_draw_and_other_seeds_other_draws():
    _, pool = split_cases(PRESENCE, "liver", 5)
    assert draw_supports(pool, 5, 0, 0) == draw_supports(pool, 5, 0, 0)
    draws = {tuple(draw_supports(pool, 5, s, 0)) for s in range(3)}
    assert len(draws) == 3
    with pytest.raises(InputError, match="K=16 supports"):
        draw_supports(pool, 16, 0, 0)


def test_an_organ_in_too_few_cases_is_refused_with_the_fix():
    with pytest.raises(InputError, match="only 2 phantom"):
        split_cases({"pancreas": ["a", "b"]}, "pancreas", 5)


def test_config_checks_methods_organs_and_case_count():
    with pytest.raises(InputError, match="unknown method"):
        FewshotConfig(methods=("lp", "magic")).check()
    with pytest.raises(InputError, match="unknown organ"):
        FewshotConfig(organs=("heart",)).check()
    with pytest.raises(InputError, match="cannot hold"):
        FewshotConfig(n_cases=12, n_query=5, ks=(10,)).check()


@pytest.mark.parametrize("method,expected", [
    ("lp", 12 + 1),
    ("spatial", 2 * 12 * 12 * 27 + 13),
    ("decoder-block", None),  # = MONAI's UnetrUpBlock(12 -> 12) + 13, computed below
    ("ft-last", None),
])
def test_adapter_parameter_counts_match_their_definitions(method, expected):
    from monai.networks.blocks import UnetrUpBlock

    from edgeseg.adapters import build_adapter, count_trainable
    from edgeseg.model.spec import TINY_TEST_SPEC, ModelSpec
    from edgeseg.model.swinunetr import build_swinunetr

    block = UnetrUpBlock(spatial_dims=3, in_channels=12, out_channels=12, kernel_size=3, upsample_kernel_size=2,
                         norm_name="instance", res_block=True)
    block_params = sum(p.numel() for p in block.parameters())
    want = expected if expected is not None else block_params + 13
    pretrained = build_swinunetr(ModelSpec(**TINY_TEST_SPEC, out_channels=2, class_names=("liver", "spleen")))
    adapter = build_adapter(method, feature_size=12, pretrained=pretrained, class_index=0)
    assert count_trainable(adapter) == want


def test_whole_model_methods_train_every_parameter_with_a_one_organ_head():
    import torch

    from edgeseg.model.spec import TINY_TEST_SPEC, ModelSpec
    from edgeseg.model.swinunetr import build_swinunetr, count_params

    spec = ModelSpec(**TINY_TEST_SPEC, out_channels=2, class_names=("liver", "spleen"))
    pretrained = build_swinunetr(spec)
    ft = _WholeModel.build(spec, pretrained, class_index=1)
    scratch = _WholeModel.build(spec)
    head = 12 + 1  # the 1x1x1 conv 12 -> 1
    assert count_params(ft) == count_params(scratch) == count_params(pretrained) - 2 * head + head
    assert torch.equal(ft.out.conv.conv.weight, pretrained.out.conv.conv.weight[1:2])  # the organ's own row
    assert torch.equal(ft.encoder1.layer.conv1.conv.weight, pretrained.encoder1.layer.conv1.conv.weight)
    assert ft.encoder1.layer.conv1.conv.weight is not pretrained.encoder1.layer.conv1.conv.weight  # a copy


def test_finished_runs_resume_and_a_torn_line_is_ignored(tmp_path):
    settings = FewshotConfig().run_settings(12)
    path = tmp_path / "runs.jsonl"
    good = {"key": run_key("liver", 1, 0, "lp"), "dsc": 0.9, "settings": settings}
    other = {"key": run_key("liver", 5, 0, "lp"), "dsc": 0.8, "settings": {**settings, "model_steps": 1}}
    path.write_text(json.dumps(good) + "\n" + json.dumps(other) + "\n" + '{"key": "liver|K=10|se')
    done = read_runs(path, settings)
    assert list(done) == [good["key"]]  # the run under other settings is redone, the torn line dropped


def test_summary_and_table_average_over_seeds():
    config = FewshotConfig(organs=("liver", "gallbladder"), ks=(1,), seeds=(0, 1), methods=("lp", "generalization"))
    from edgeseg.model.spec import ModelSpec

    spec = ModelSpec(feature_size=12, out_channels=1, class_names=("liver",))
    records = [
        {"method": "lp", "k": 1, "organ": "liver", "seed": 0, "dsc": 0.8, "trainable_params": 13, "seconds": 2.0},
        {"method": "lp", "k": 1, "organ": "liver", "seed": 1, "dsc": 0.6, "trainable_params": 13, "seconds": 4.0},
        {"method": "lp", "k": 1, "organ": "gallbladder", "seed": 0, "dsc": 0.2, "trainable_params": 13, "seconds": 2.0},
        {"method": "lp", "k": 1, "organ": "gallbladder", "seed": 1, "dsc": 0.4, "trainable_params": 13, "seconds": 2.0},
        {"method": "generalization", "k": 1, "organ": "liver", "seed": 0, "dsc": 0.7, "trainable_params": 0, "seconds": 1},
        {"method": "generalization", "k": 1, "organ": "gallbladder", "seed": 0, "skipped": "novel"},
    ]
    s = summarise(config, records, spec, {"path": "x", "sha256": "y"})
    cell = s["table"]["lp"]["1"]
    assert cell["organs"]["liver"] == {"mean": 0.7, "std": 0.1, "n_seeds": 2}
    assert cell["average"] == pytest.approx((0.7 + 0.3) / 2)
    assert s["table"]["generalization"]["1"]["organs"] == {"liver": {"mean": 0.7, "std": 0.0, "n_seeds": 1}}
    assert s["base_organs"] == ["liver"] and s["novel_organs"] == ["gallbladder"]
    table = render_table(s)
    assert "| lp | 1 | 13 |" in table and "gallbladder *" in table and "0.700 ± 0.100" in table


def test_defaults_are_the_papers_two_settings_with_the_adapt_defaults_and_no_whole_model_methods():
    from edgeseg.fewshot import DEFAULT_METHODS, SETTING_A, SETTING_B
    from edgeseg.train.adapt import AdaptConfig
    from edgeseg.train.pretrain import BASE_ORGANS, NOVEL_ORGANS

    config = FewshotConfig()
    assert config.organs == SETTING_A + SETTING_B and config.methods == DEFAULT_METHODS
    assert set(SETTING_A) <= set(BASE_ORGANS) and set(SETTING_B) <= set(NOVEL_ORGANS) and len(SETTING_A) >= 4
    assert "scratch" not in config.methods and "ft" not in config.methods and len(SETTING_B) >= 2
    settings = config.run_settings(12)
    assert settings["adapt_defaults"]["decoder-block"] == AdaptConfig(adapter="decoder-block").resolved(12).to_dict()
    assert settings["adapt_defaults"]["decoder-block"]["crop"] == 48  # the stand-in's width
    assert config.data_seed != 0  # never the pretraining's patients


def test_support_entries_are_the_regions_edgeseg_cache_stores(tmp_path):
    import numpy as np

    from edgeseg.data.phantom import ORGANS
    from edgeseg.features import CacheConfig, CacheEntry
    from edgeseg.fewshot import NEGATIVES_PER_CASE, CaseFeatures, support_entries

    folder = tmp_path / "t0003"
    folder.mkdir()
    labels = np.zeros((40, 40, 40), np.uint8)
    labels[10:20, 12:18, 14:22] = ORGANS.index("liver") + 1
    image = np.zeros((40, 40, 40), np.float16)
    image[2:38, 2:38, 2:38] = 0.5  # the body
    np.save(folder / "labels.npy", labels)
    np.save(folder / "image.npy", image)
    enc0 = np.random.default_rng(0).random((3, 40, 40, 40)).astype(np.float16)
    np.save(folder / "enc0.npy", enc0)
    np.save(folder / "dec0.npy", enc0[:, ::2, ::2, ::2].copy())
    case = CaseFeatures("t0003", folder, 0.027)
    regions = support_entries(case, "liver", ("enc0", "dec0"), (16, 16, 16), (3.0, 3.0, 3.0), seed=0)
    pos, negs = regions[0], regions[1:]
    assert all(isinstance(r, CacheEntry) for r in regions) and NEGATIVES_PER_CASE == CacheConfig().negatives_per_case
    assert pos.organ_ml == (labels > 0).sum() * 0.027 and [n.name for n in negs] == ["negative-0", "negative-1"]
    assert pos.role == "positive" and len(negs) == NEGATIVES_PER_CASE and all(n.role == "negative" for n in negs)
    assert pos.label.sum() == (labels > 0).sum()  # the whole organ, with its 20 mm margin (clipped)
    assert pos.features[0].shape[1:] == pos.label.shape
    assert tuple(2 * n for n in pos.features[1].shape[1:]) == pos.label.shape  # dec0 at half resolution
    for n in negs:
        assert n.label.sum() == 0 and n.label.shape == (16, 16, 16)


def _tiny_model():
    import torch

    from edgeseg.model.spec import TINY_TEST_SPEC, ModelSpec
    from edgeseg.model.swinunetr import build_swinunetr
    from edgeseg.runtime.preprocess import PreprocessSpec

    spec = ModelSpec(**TINY_TEST_SPEC, out_channels=1, class_names=("liver",),
                     preprocess=PreprocessSpec(spacing=(8.0, 8.0, 8.0), window=(64, 64, 64)))
    torch.manual_seed(0)
    return build_swinunetr(spec), spec


def test_a_killed_feature_store_leaves_only_whole_cases_and_resumes_to_the_same_files(tmp_path, monkeypatch):
    import edgeseg.features.cases as cases_mod
    from edgeseg.fewshot import prepare_cases

    model, spec = _tiny_model()
    config = FewshotConfig(n_cases=2, gen_max_voxels=300_000, threads=1)
    clean = prepare_cases(tmp_path / "clean", config, model, spec)
    commit, commits = cases_mod.commit_case, []

    def killed_after_first(partial, final):
        if commits:
            raise KeyboardInterrupt("killed")
        commits.append(final.name)
        commit(partial, final)

    monkeypatch.setattr(cases_mod, "commit_case", killed_after_first)
    out = tmp_path / "killed"
    with pytest.raises(KeyboardInterrupt):
        prepare_cases(out, config, model, spec)
    assert sorted(p.name for p in (out / "features").iterdir()) == ["t0000"]  # no partial case left behind
    (out / "features" / ".t0001.partial").mkdir()  # what a SIGKILL would leave
    monkeypatch.setattr(cases_mod, "commit_case", commit)
    said: list[str] = []
    assert prepare_cases(out, config, model, spec, log=said.append) == clean
    assert any("removing the unfinished case .t0001.partial" in m for m in said)
    for cid in clean:
        names = sorted(p.name for p in (tmp_path / "clean" / "features" / cid).iterdir())
        assert names == sorted(p.name for p in (out / "features" / cid).iterdir())
        for name in names:
            assert (out / "features" / cid / name).read_bytes() == (tmp_path / "clean" / "features" / cid / name).read_bytes()


def test_one_small_protocol_end_to_end_writes_results_with_relative_paths(tmp_path, monkeypatch):
    import torch

    import edgeseg.train.adapt as adapt_mod
    from edgeseg.fewshot import run_protocol
    from edgeseg.model.checkpoint import save_checkpoint
    from edgeseg.model.spec import TINY_TEST_SPEC, ModelSpec
    from edgeseg.model.swinunetr import build_swinunetr
    from edgeseg.runtime.preprocess import PreprocessSpec

    for kind in ("lp", "decoder-block"):  # a short budget: this checks the bookkeeping, not the Dice
        monkeypatch.setitem(adapt_mod.RECIPE, kind, {**adapt_mod.RECIPE[kind], "steps": 4})
    spec = ModelSpec(**TINY_TEST_SPEC, out_channels=1, class_names=("liver",),
                     preprocess=PreprocessSpec(spacing=(8.0, 8.0, 8.0), window=(64, 64, 64)))
    torch.manual_seed(0)
    ckpt = save_checkpoint(build_swinunetr(spec), spec, tmp_path / "m.safetensors")
    monkeypatch.chdir(tmp_path)
    config = FewshotConfig(organs=("liver", "inferior_vena_cava"), ks=(1,), seeds=(0,), n_cases=3, n_query=1,
                           methods=("generalization", "lp", "decoder-block"), gen_max_voxels=300_000, threads=1)
    summary = run_protocol(ckpt, tmp_path / "fs", config)
    assert summary["base_organs"] == ["liver"] and summary["novel_organs"] == ["inferior_vena_cava"]
    assert summary["checkpoint"]["path"] == "m.safetensors"  # relative, never this machine's absolute path
    assert set(summary["table"]) == {"generalization", "lp", "decoder-block"}
    recs = {(r["organ"], r["method"]): r for r in summary["records"]}
    assert recs[("liver", "lp")]["steps_run"] == 4 and recs[("inferior_vena_cava", "generalization")].get("skipped")
    assert "/" not in json.dumps(summary["checkpoint"]) and (tmp_path / "fs" / "table.md").exists()
    assert summary["complete"] and summary["runs_planned"] == summary["runs"] == 6

    # --report: a wider plan summarised from the runs finished so far, running nothing, and saying so
    lines = (tmp_path / "fs" / "runs.jsonl").read_text()
    wider = dataclasses.replace(config, ks=(1, 2))
    partial = run_protocol(ckpt, tmp_path / "fs", wider, report_only=True)
    assert (tmp_path / "fs" / "runs.jsonl").read_text() == lines  # nothing ran
    assert not partial["complete"] and (partial["runs"], partial["runs_planned"]) == (6, 12)
    assert set(partial["table"]["lp"]) == {"1"}
    assert "Partial: 6 of the 12 planned runs" in (tmp_path / "fs" / "table.md").read_text()
    with pytest.raises(InputError, match="no run has finished there yet"):
        run_protocol(ckpt, tmp_path / "empty", config, report_only=True)
