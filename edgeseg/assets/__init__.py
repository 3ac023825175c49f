"""Data shipped with edgeseg: a small real abdominal CT (see README.md here for provenance and licence) and
the embedded default model, a small SwinUNETR pretrained on phantoms (model/MODEL_CARD.md).

Used at run time (parity checks of every export run on a real CT window, the demo) and by the tests.
"""

from pathlib import Path

ASSETS = Path(__file__).parent
EXAMPLE_CT = ASSETS / "example_ct_sm.nii.gz"
EXAMPLE_CT_BODY = ASSETS / "example_ct_sm_body.nii.gz"
DEFAULT_MODEL = ASSETS / "model" / "phantom-swinunetr.safetensors"
DEFAULT_MODEL_CARD = ASSETS / "model" / "MODEL_CARD.md"
