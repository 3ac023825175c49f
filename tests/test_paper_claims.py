"""The poster's findings and the goals, read off a protocol summary (edgeseg.paper_claims)."""

from __future__ import annotations

import pytest

from edgeseg.fewshot import FewshotConfig, render_table, summarise
from edgeseg.paper_claims import check_claims, check_goals


def _summary(dsc: dict[tuple[str, int, str], list[float]]):
    """A summary of records with these DSC per (method, K, organ), one record per seed."""
    from edgeseg.model.spec import ModelSpec

    organs = ("liver", "pancreas", "inferior_vena_cava")
    methods = tuple(dict.fromkeys(m for m, _, _ in dsc))
    config = FewshotConfig(organs=organs, ks=(1, 5, 10), seeds=(0, 1), methods=methods)
    spec = ModelSpec(feature_size=12, out_channels=2, class_names=("liver", "pancreas"))
    records = [{"method": m, "k": k, "organ": o, "seed": i, "dsc": v, "trainable_params": 1, "seconds": 1.0}
               for (m, k, o), values in dsc.items() for i, v in enumerate(values)]
    s = summarise(config, records, spec, {"path": "m", "sha256": "x"})
    return s


def _by(claims, text, setting):
    (c,) = [c for c in claims if c["claim"].startswith(text) and c["setting"] == setting]
    return c


def test_a_claim_compares_setting_means_and_says_for_which_methods_it_holds():
    dsc = {}
    for o, base in (("liver", 0.9), ("pancreas", 0.6), ("inferior_vena_cava", 0.3)):
        dsc[("ft-last", 1, o)] = [base, base]
        dsc[("lp", 1, o)] = [base + 0.05, base + 0.03]  # beats FT-Last
        dsc[("spatial", 1, o)] = [base - 0.1, base - 0.1]  # does not
        dsc[("decoder-block", 1, o)] = [base + 0.01, base + 0.01]
        dsc[("decoder-block+ti", 1, o)] = [base, base]  # worse than the decoder block without the prior
    claims = check_claims(_summary(dsc))
    adapters_a = _by(claims, "the adapters beat FT-Last", "A")
    assert adapters_a["organs"] == ["liver", "pancreas"] and adapters_a["n_seeds"] == 2
    assert adapters_a["against"] == {"ft-last": pytest.approx(0.75)}
    assert adapters_a["dsc"]["lp"] == pytest.approx(0.79) and adapters_a["dsc"]["spatial"] == pytest.approx(0.65)
    assert adapters_a["holds_for"] == ["lp", "decoder-block"] and adapters_a["status"] == "partly holds"
    assert _by(claims, "the adapters beat FT-Last", "B")["organs"] == ["inferior_vena_cava"]
    prior = _by(claims, "the size prior helps", "A")
    assert prior["status"] == "does not hold" and prior["holds_for"] == []
    # K = 10 and K = 5 were not run: those claims are not measured, never guessed
    assert _by(claims, "a convolutional adapter beats the linear probe", "A")["status"] == "not measured"
    # the pretrained head has no channel for a never-labelled structure: no setting-B comparison with it
    assert [c["setting"] for c in claims if "pretrained head" in c["claim"]] == ["A"]


def test_goals_are_the_decoder_block_at_k5_per_setting():
    dsc = {("decoder-block", 5, "liver"): [0.95, 0.93], ("decoder-block", 5, "pancreas"): [0.75, 0.77],
           ("decoder-block", 5, "inferior_vena_cava"): [0.72, 0.70]}
    goals = {g["setting"]: g for g in check_goals(_summary(dsc))}
    assert goals["A"]["dsc"] == pytest.approx(0.85) and goals["A"]["status"] == "met"
    assert goals["B"]["dsc"] == pytest.approx(0.71) and goals["B"]["status"] == "met"
    dsc[("decoder-block", 5, "pancreas")] = [0.70, 0.70]
    goals = {g["setting"]: g for g in check_goals(_summary(dsc))}
    assert goals["A"]["status"] == "not met"
    assert check_goals(_summary({("lp", 1, "liver"): [0.9]}))[0]["status"] == "not measured"


def test_the_table_states_the_findings_with_their_numbers():
    dsc = {("ft-last", 1, o): [0.5] for o in ("liver", "pancreas", "inferior_vena_cava")}
    dsc.update({(m, 1, o): [0.6] for m in ("lp", "spatial", "decoder-block")
                for o in ("liver", "pancreas", "inferior_vena_cava")})
    s = _summary(dsc)
    s["claims"], s["goals"] = check_claims(s), check_goals(s)
    table = render_table(s)
    assert ("- the adapters beat FT-Last at K = 1, setting A: **holds** (lp 0.600, spatial 0.600, decoder-block "
            "0.600 vs ft-last 0.500; 1 seed(s); poster: linear probe 0.657") in table
    assert "- the size prior helps at K = 1, setting B: not measured yet" in table
    assert "- decoder block at K = 5, mean DSC >= 0.85, setting A: not measured yet" in table
