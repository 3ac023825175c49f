"""The few-shot protocol's bookkeeping: splits never overlap, seeds give the same draw, a method's
trainable parameters match its definition, finished runs are resumed and torn lines ignored."""

from __future__ import annotations

import json

import pytest

from edgeseg.fewshot import (
    METHODS,
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
    assert len(plan) == 2 * 3 * 3 * len(METHODS)
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
    settings = FewshotConfig().run_settings()
    path = tmp_path / "runs.jsonl"
    good = {"key": run_key("liver", 1, 0, "lp"), "dsc": 0.9, "settings": settings}
    other = {"key": run_key("liver", 5, 0, "lp"), "dsc": 0.8, "settings": {**settings, "steps": 1}}
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
