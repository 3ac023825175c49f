"""Shared by the feature-cache tests: the phantoms and tiny trunk of tests/conftest.py, the settings that
keep a cache cheap, and one clean cache built once.

Cheap on purpose (2 CPU cores): phantoms at 5 mm with a long z range (so windows clear of the liver
exist below it), a trunk whose preprocessing spacing is 5 mm (no resampling), a 64^3 window and
`context=0` (one trunk window per cached region).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from edgeseg.features import CacheConfig, build_cache

CHEAP = CacheConfig(k=2, seed=0, backend="ort", threads=2, context=0)


def config(**changes) -> CacheConfig:
    """The cheap settings with `changes`."""
    return dataclasses.replace(CHEAP, **changes)


def arrays(folder):
    return {str(p.relative_to(folder)): np.load(p) for p in sorted(folder.rglob("*.npy"))}


@pytest.fixture(scope="session")
def data(phantoms5):
    return phantoms5


@pytest.fixture(scope="session")
def trunk_dir(trunk5):
    return trunk5


@pytest.fixture(scope="session")
def clean(trunk_dir, data, tmp_path_factory):
    """(folder, manifest, log messages, progress calls) of a cache of 2 liver supports and 1 query."""
    support, query = data
    out = tmp_path_factory.mktemp("cache") / "liver"
    messages: list[str] = []
    progress: list[tuple[int, int]] = []
    manifest = build_cache(trunk_dir, support, "liver", out, config(query=(query,)), log=messages.append,
                           progress=lambda d, n: progress.append((d, n)))
    return out, manifest, messages, progress
