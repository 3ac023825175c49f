"""The FSEFT poster's findings and edgeseg's few-shot goals, checked against a protocol summary.

`edgeseg fewshot` measures DSC per method, K and organ (`edgeseg.fewshot.summarise`); this module reads
that table and says, per setting (A: organs of the pretraining on another scanner; B: structures never
labelled), whether each claim holds here, with the numbers. The poster's "Adapter" is edgeseg's
``decoder-block`` (a randomly initialised SwinUNETR decoder block, 209.6K parameters at full size). A
claim compares the mean DSC over the setting's organs; a cell missing from a partial protocol leaves
the claim "not measured" rather than guessing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Claim:
    text: str
    methods: tuple[str, ...]  # each is compared with `against`
    against: str
    k: int
    poster: str  # what the poster measured (avg DSC over its 9 TotalSegmentator organs)


CLAIMS: tuple[Claim, ...] = (
    Claim("the adapters beat FT-Last at K = 1", ("lp", "spatial", "decoder-block"), "ft-last", 1,
          "linear probe 0.657, adapter 0.654, FT-Last 0.488"),
    Claim("a convolutional adapter beats the linear probe at K = 10", ("spatial", "decoder-block"), "lp", 10,
          "with all ~40 training scans, adapter 0.781, linear probe 0.771; at K = 1 a tie, 0.654 vs 0.657"),
    Claim("the size prior helps at K = 1", ("decoder-block+ti",), "decoder-block", 1,
          "adapter + TI 0.663, adapter 0.654"),
    Claim("the decoder block beats the pretrained head at K = 5", ("decoder-block",), "generalization", 5,
          "generalization (no adaptation) 0.701, adapter at K = 5 0.748"),
)
# edgeseg's goals for the decoder block at K = 5 (issue 13): (setting, minimum mean DSC)
GOALS: tuple[tuple[str, float], ...] = (("A", 0.85), ("B", 0.70))


def _mean(summary: dict, method: str, k: int, organs: list[str]) -> tuple[float, int] | None:
    """Mean DSC of `method` at `k` over `organs` and the fewest seeds behind it; None if a cell is missing
    (or the setting has no organ)."""
    cell = summary["table"].get(method, {}).get(str(k))
    if not organs or cell is None or any(o not in cell["organs"] for o in organs):
        return None
    return (round(float(np.mean([cell["organs"][o]["mean"] for o in organs])), 4),
            min(cell["organs"][o]["n_seeds"] for o in organs))


def setting_organs(summary: dict) -> dict[str, list[str]]:
    return {"A": list(summary["base_organs"]), "B": list(summary["novel_organs"])}


def check_claims(summary: dict) -> list[dict]:
    """One entry per claim and setting: the means compared, on which organs, and for which methods it holds."""
    out = []
    for claim in CLAIMS:
        for setting, organs in setting_organs(summary).items():
            if claim.against == "generalization" and setting == "B":
                continue  # the head has no channel for a never-labelled structure
            entry = {"claim": claim.text, "setting": setting, "k": claim.k, "organs": organs, "poster": claim.poster}
            base = _mean(summary, claim.against, claim.k, organs)
            means = {m: _mean(summary, m, claim.k, organs) for m in claim.methods}
            if base is None or any(v is None for v in means.values()):
                out.append({**entry, "status": "not measured"})
                continue
            entry["against"] = {claim.against: base[0]}
            entry["dsc"] = {m: v[0] for m, v in means.items()}
            entry["n_seeds"] = min([base[1]] + [v[1] for v in means.values()])
            entry["holds_for"] = [m for m, v in means.items() if v[0] > base[0]]
            entry["status"] = ("holds" if len(entry["holds_for"]) == len(means)
                               else "partly holds" if entry["holds_for"] else "does not hold")
            out.append(entry)
    return out


def check_goals(summary: dict) -> list[dict]:
    """The decoder block at K = 5 against edgeseg's goals, per setting."""
    out = []
    organs = setting_organs(summary)
    for setting, target in GOALS:
        got = _mean(summary, "decoder-block", 5, organs[setting])
        entry = {"goal": f"decoder block at K = 5, mean DSC >= {target:.2f}", "setting": setting,
                 "organs": organs[setting], "target": target}
        if got is None:
            out.append({**entry, "status": "not measured"})
        else:
            out.append({**entry, "dsc": got[0], "n_seeds": got[1], "status": "met" if got[0] >= target else "not met"})
    return out


def render_claims(claims: list[dict], goals: list[dict]) -> list[str]:
    """Markdown lines for table.md."""
    lines = ["", "The poster's findings here (mean DSC over the setting's organs):"]
    for c in claims:
        head = f"- {c['claim']}, setting {c['setting']}: "
        if c["status"] == "not measured":
            lines.append(head + "not measured yet")
            continue
        dsc = ", ".join(f"{m} {v:.3f}" for m, v in c["dsc"].items())
        (against, base), = c["against"].items()
        lines.append(head + f"**{c['status']}** ({dsc} vs {against} {base:.3f}; {c['n_seeds']} seed(s); "
                     f"poster: {c['poster']})")
    lines += ["", "Goals:"]
    for g in goals:
        head = f"- {g['goal']}, setting {g['setting']}: "
        lines.append(head + ("not measured yet" if g["status"] == "not measured"
                             else f"**{g['status']}** ({g['dsc']:.3f}; {g['n_seeds']} seed(s))"))
    return lines
