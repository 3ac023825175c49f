"""Few-shot adapters over cached trunk features (linear probe, spatial adapter, decoder block, FT-Last)."""

from edgeseg.adapters.modules import *  # noqa: F403  (the public names are listed once, in modules.__all__)
from edgeseg.adapters.modules import __all__  # noqa: F401
