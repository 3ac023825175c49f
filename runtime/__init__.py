"""edgeseg.runtime: what a deployment box needs, without torch.

Preprocessing (NIfTI -> RAS, spec spacing, HU window) and the way back to the scan's own grid.
"""
