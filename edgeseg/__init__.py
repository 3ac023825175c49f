"""edgeseg: few-shot CT organ segmentation at the clinical edge.

Keep this module import-light: `edgeseg.runtime` is a subpackage and must import on a
deployment box without torch.
"""

__version__ = "0.1.0"
