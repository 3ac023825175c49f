"""Cached trunk features: what adaptation trains on, so that training never runs the trunk.

    regions  which regions of a labelled support are stored (organ box + margin, negative windows)
    plan     which cases a cache holds and with which settings (``cache.json``, checked on resume)
    cases    a case folder is written whole or not at all (resumable writes)
    writer   `edgeseg cache`: `build_cache(trunk, data, organ, out, CacheConfig(...))`, its manifest
    reader   `open_cache` -> `FeatureCache` of memory-mapped `CacheEntry` regions and `QueryEntry` scans

The few-shot protocol (`edgeseg.fewshot`) stores its whole cases through `cases` and hands training
`CacheEntry` regions chosen by `regions`, as the cache does.
"""

from edgeseg.features.reader import CacheEntry, FeatureCache, QueryEntry, open_cache, release_pages
from edgeseg.features.writer import CacheConfig, build_cache

__all__ = ["CacheConfig", "CacheEntry", "FeatureCache", "QueryEntry", "build_cache", "open_cache", "release_pages"]
