"""Few-shot adapters over cached trunk features (linear probe, spatial adapter, decoder block, FT-Last)."""

from edgeseg.adapters.modules import (
    ADAPTERS,
    CUT_OF,
    LR,
    DecoderBlockAdapter,
    LinearProbe,
    SpatialAdapter,
    build_adapter,
    count_trainable,
    resolve_kind,
)

__all__ = [
    "ADAPTERS",
    "CUT_OF",
    "LR",
    "DecoderBlockAdapter",
    "LinearProbe",
    "SpatialAdapter",
    "build_adapter",
    "count_trainable",
    "resolve_kind",
]
