"""Hypothesis strategies shared by the test suite (one file, as DESIGN.md asks).

Floats are drawn with ``width=32`` so every value is exactly representable in float32.
"""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp


def f32(min_value: float = -1e4, max_value: float = 1e4) -> st.SearchStrategy[float]:
    return st.floats(min_value, max_value, width=32, allow_nan=False, allow_infinity=False)


@st.composite
def xyxy_boxes(
    draw: st.DrawFn,
    min_n: int = 0,
    max_n: int = 40,
    extent: float = 100.0,
    allow_flipped: bool = False,
    allow_empty: bool = True,
) -> np.ndarray:
    """float32 ``[N, 4]`` ``(x1, y1, x2, y2)`` boxes inside ``[-extent/4, extent]``.

    Coordinates are drawn on a coarse grid part of the time so that exact ties, shared edges and
    zero-size boxes are common.
    """
    n = draw(st.integers(min_n, max_n))
    grid = draw(st.booleans())
    if grid:
        coord = st.integers(-4, 40).map(lambda v: np.float32(v * extent / 40.0))
    else:
        coord = f32(-extent / 4, extent)
    rows = []
    for _ in range(n):
        x1, y1 = draw(coord), draw(coord)
        if allow_empty:
            w = draw(st.one_of(st.just(0.0), f32(0.0, extent / 2)))
            h = draw(st.one_of(st.just(0.0), f32(0.0, extent / 2)))
        else:
            w = draw(f32(extent / 100, extent / 2))
            h = draw(f32(extent / 100, extent / 2))
        x2, y2 = np.float32(x1 + w), np.float32(y1 + h)
        if allow_flipped and draw(st.booleans()):
            x1, x2 = x2, x1
        if allow_flipped and draw(st.booleans()):
            y1, y2 = y2, y1
        rows.append([x1, y1, x2, y2])
    return np.asarray(rows, dtype=np.float32).reshape(n, 4)


def scores_for(n: int, ties: bool = True) -> st.SearchStrategy[np.ndarray]:
    """float32 ``[n]`` scores; with ``ties`` drawn from a few values so equal scores are common."""
    elements = st.sampled_from([0.1, 0.25, 0.5, 0.75, 1.0]) if ties else f32(0.0, 1.0)
    return hnp.arrays(np.float32, (n,), elements=elements.map(np.float32))
