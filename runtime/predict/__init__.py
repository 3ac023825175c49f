"""Segment new scans NIfTI to NIfTI with a fused engine (trunk + adapters, one pass per scan).

Per scan: read, preprocess (the same code as caching), sliding window with Gaussian blending,
threshold, optional largest-connected-component clean-up, back to the scan's own grid, write
`<case>_<organ>.nii.gz` (uint8, the input's shape and header geometry), optionally the probability
maps, a multi-label map when the engine has several organs, a preview PNG, and `<case>.json`: what
ran, time per stage, windows, organ volumes in mL, peak memory. The report is written last and a
`<case>.partial` marker first, so a crashed run resumes: a case with a report is skipped, a case
with a marker is redone, and outputs that neither edgeseg run made are not overwritten without --force.

Three parts, one module each:

* `plan`: the inputs, their stable case names, which cases run (`choose_cases`), and one frozen
  `CasePlan` per case (`plan_case`): output names, the refusals that need no voxel, and the memory
  estimate from the header, made once.
* `case`: `run_case(engine, plan, opts)` runs one planned case: read, preprocess, infer,
  post-process (`postprocess`), write, report (`report`); `predict_scan` plans and runs one scan.
* `loop`: `predict_many`, the loop over a run's cases: the output lock, read-ahead, log, progress.
* `ray_loop`: `predict_cohort`, the same loop on Ray Data (`edgeseg predict --ray`): actors that each
  hold an engine choose, plan and run one scan at a time with the functions above; a bad scan is
  recorded and the cohort goes on; a case whose worker died is retried once.
* `summary`: `cohort.csv` and `cohort.json`, one row per case, from what a loop returns.

Faults: the output folder is locked for the run (`edgeseg.runtime.lock`: a second run into it is
refused); a case that fails or is interrupted (Ctrl-C, disk full) removes the outputs it had
written and its marker, so nothing of it is left; a run killed outright leaves its marker (and
maybe a hidden temporary), and the next run redoes the case and removes the temporaries. Before
any voxel is read, the memory the case needs is estimated from its header (`estimate_memory`) and
a scan beyond the budget (`max_memory_gib`, else the memory available now) is refused with the
number needed. A 4D series is segmented one volume at a time (`volume`). See docs/faults.md.
"""

from edgeseg.runtime.predict.case import load_and_prepare, predict_scan, run_case
from edgeseg.runtime.predict.loop import predict_many
from edgeseg.runtime.predict.options import PredictOptions
from edgeseg.runtime.predict.plan import (GIB, CasePlan, case_names, check_memory, check_out_folder, choose_cases,
                                          collect_inputs, estimate_memory, plan_case)
from edgeseg.runtime.predict.postprocess import largest_component
from edgeseg.runtime.predict.report import REPORT_KIND, read_report

__all__ = [
    "GIB", "REPORT_KIND", "CasePlan", "PredictOptions", "case_names", "check_memory", "check_out_folder",
    "choose_cases", "collect_inputs", "estimate_memory", "largest_component", "load_and_prepare", "plan_case",
    "predict_many", "predict_scan", "read_report", "run_case",
]
