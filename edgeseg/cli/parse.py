"""Option values the commands parse themselves: comma-separated lists and voxel spacings."""

from __future__ import annotations

from typing import Optional


def parse_spacing(text: Optional[str]) -> Optional[tuple[float, float, float]]:
    from edgeseg.runtime.errors import InputError

    if text is None:
        return None
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) == 1:
        values = values * 3
    if len(values) != 3 or min(values) <= 0:
        raise InputError(f"--spacing {text!r} is not one or three positive numbers", fix="e.g. --spacing 3 or --spacing 0.8,0.8,3")
    return tuple(values)  # type: ignore[return-value]


def int_list(text: str, name: str) -> tuple[int, ...]:
    from edgeseg.runtime.errors import InputError

    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        values = ()
    if not values:
        raise InputError(f"{name} {text!r} is not a comma-separated list of integers", fix=f"e.g. {name} 1,5,10")
    return values


def names(text: str) -> tuple[str, ...]:
    """'a, b,,c' -> ('a', 'b', 'c')."""
    return tuple(t.strip() for t in text.split(",") if t.strip())
