"""roi_pool: hand-worked cases, invariants, kernel vs reference.

torchvision is not installed here, so the expected values come from hand-worked cases and
invariants; the Numba kernel is compared bitwise with the NumPy reference (a max only selects).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from helpers import assert_same
from hypothesis import given
from hypothesis import strategies as st
from strategies import inside_roi_cases, roi_cases

from npfrcnn.ops import roi_pool

BACKENDS = ("numpy", "cpu")
LOWEST = np.finfo(np.float32).min


def arange_map() -> np.ndarray:
    """``[1, 5, 5, 1]`` with ``f[0, y, x, 0] = 5 * y + x`` (so a bin's max is its last pixel)."""
    return np.arange(25, dtype=np.float32).reshape(1, 5, 5, 1)


def pool(rois, size, features=None, **kw):
    """The result of every backend, checked equal, for the hand-worked cases."""
    fmap = arange_map() if features is None else features
    got = [roi_pool(fmap, rois, size, backend=b, **kw) for b in BACKENDS]
    assert_same(got[1], got[0])
    return got[0][..., 0]


# ---------------------------------------------------------------------------------------------
# Hand-worked cases
# ---------------------------------------------------------------------------------------------


def test_hand_worked_bins():
    # RoI [0, 4] x [0, 4] is 5 pixels wide (inclusive corners); 2 bins of 2.5: rows/cols
    # [floor(0), ceil(2.5)) = [0, 3) and [floor(2.5), ceil(5)) = [2, 5) (they overlap at 2).
    # Maxima at (2, 2), (2, 4), (4, 2), (4, 4): 12, 14, 22, 24.
    want = np.float32([[[12, 14], [22, 24]]])
    assert_same(pool([[0, 0, 0, 4, 4]], 2), want)
    assert_same(pool([[0, 0, 0, 8, 8]], 2, spatial_scale=0.5), want)
    # RoI x [1, 2], y [1, 3], one bin: rows 1..3, cols 1..2 -> f(3, 2) = 17.
    assert_same(pool([[0, 1, 1, 2, 3]], 1), np.float32([[[17]]]))


def test_hand_worked_rounding_is_half_away_from_zero():
    # round(0.5) = 1, round(1.5) = 2, round(2.5) = 3 (round-half-even would give 0, 2, 2):
    # rows 1..3, cols 1..2 -> 17 (half-even would give rows 0..2, cols 0..2 -> 12).
    assert_same(pool([[0, 0.5, 0.5, 1.5, 2.5]], 1), np.float32([[[17]]]))
    # Just below a half rounds down: round(2.4999998) = 2 -> rows/cols 0..2 -> 12.
    below = float(np.nextafter(np.float32(2.5), np.float32(0)))
    assert_same(pool([[0, 0, 0, below, below]], 1), np.float32([[[12]]]))


def test_hand_worked_clamping_and_empty_bins():
    # RoI [3, 7] x [3, 7], 5 wide, 2 bins of 2.5: [3, 6) -> clamped [3, 5); [5, 8) -> [5, 5),
    # empty -> 0. Only bin (0, 0) holds pixels: max f(4, 4) = 24.
    assert_same(pool([[0, 3, 3, 7, 7]], 2), np.float32([[[24, 0], [0, 0]]]))
    # Entirely outside: every bin is empty -> 0.
    assert_same(pool([[0, 6, 6, 9, 9]], 2), np.zeros((1, 2, 2), np.float32))
    # Entirely left of the map (negative corners): also 0.
    assert_same(pool([[0, -9, -9, -3, -3]], 1), np.zeros((1, 1, 1), np.float32))


def test_hand_worked_malformed_rois_are_one_pixel():
    # Reversed RoI (x2 < x1): width max(1 - 3 + 1, 1) = 1 from its start (3, 3) -> f(3, 3) = 18.
    assert_same(pool([[0, 3, 3, 1, 1]], 1), np.float32([[[18]]]))
    # A 1-pixel RoI over 2x2 bins of 0.5: each bin [floor(p/2), ceil((p+1)/2)) = [0, 1) -> f(1, 1).
    assert_same(pool([[0, 1, 1, 1, 1]], 2), np.full((1, 2, 2), 6, np.float32))


def test_hand_worked_max_rule_skips_nan_and_starts_at_lowest():
    fmap = np.full((1, 2, 2, 1), np.nan, np.float32)
    fmap[0, 1, 0, 0] = 3.0
    assert_same(pool([[0, 0, 0, 1, 1]], 1, fmap), np.float32([[[3]]]))  # NaN is never greater
    fmap = np.full((1, 2, 2, 1), -np.inf, np.float32)
    # torchvision starts from -FLT_MAX: -inf is never greater, so an all -inf bin gives it.
    assert_same(pool([[0, 0, 0, 1, 1]], 1, fmap), np.float32([[[LOWEST]]]))


def test_hand_worked_batch_index_and_channels():
    fmap = np.concatenate([arange_map(), arange_map() + 100], axis=0)  # [2, 5, 5, 1]
    fmap = np.concatenate([fmap, -fmap], axis=3)  # [2, 5, 5, 2]
    rois = [[1, 0, 0, 4, 4], [0, 0, 0, 4, 4]]
    bins = np.float32([[12, 14], [22, 24]])
    # Channel 1 is -f: its max over bin [0, 3) x [0, 3) is -f(0, 0), etc.
    neg = -np.float32([[0, 2], [10, 12]])
    want = np.stack([np.stack([bins + 100, neg - 100], -1), np.stack([bins, neg], -1)])
    for backend in BACKENDS:
        assert_same(roi_pool(fmap, rois, 2, backend=backend), want)


# ---------------------------------------------------------------------------------------------
# Kernel vs reference, invariants
# ---------------------------------------------------------------------------------------------


@given(case=roi_cases())
def test_kernel_matches_reference(case):
    features, rois, size, scale = case
    want = roi_pool(features, rois, size, scale, backend="numpy")
    assert_same(roi_pool(features, rois, size, scale, backend="cpu"), want)


@given(case=inside_roi_cases(), value=st.sampled_from([3.7, -12.25, 0.0, 1e3]))
def test_constant_map_gives_the_constant(case, value):
    shape, rois, size, scale = case
    features = np.full(shape, value, np.float32)
    want = np.full((rois.shape[0], *size, shape[3]), value, np.float32)
    for backend in BACKENDS:
        assert_same(roi_pool(features, rois, size, scale, backend=backend), want)


def c_round(v: float) -> int:
    """C's ``round`` (halves away from zero); ``abs(v) + 0.5`` is exact in double for float32."""
    return int(math.copysign(math.floor(abs(v) + 0.5), v))


@given(case=roi_cases())
def test_one_bin_is_the_max_over_the_rounded_rectangle(case):
    """With one bin, RoIPool is the max over rows ``round(y1 s) .. round(y1 s) + h - 1``
    (``h = max(round(y2 s) - round(y1 s) + 1, 1)``), likewise columns, clipped to the map; 0
    when nothing is left."""
    features, rois, _, scale = case
    _, height, width, depth = features.shape
    want = np.zeros((rois.shape[0], 1, 1, depth), np.float32)
    for k, (b, *corners) in enumerate(rois):
        x1, y1, x2, y2 = (c_round(float(np.float32(c) * np.float32(scale))) for c in corners)
        h, w = max(y2 - y1 + 1, 1), max(x2 - x1 + 1, 1)
        rows = slice(min(max(y1, 0), height), min(max(y1 + h, 0), height))
        cols = slice(min(max(x1, 0), width), min(max(x1 + w, 0), width))
        region = features[int(b), rows, cols]  # [h', w', C]
        if region.size:
            want[k, 0, 0] = region.max(axis=(0, 1))
    for backend in BACKENDS:
        assert_same(roi_pool(features, rois, 1, scale, backend=backend), want)


@given(case=roi_cases(), t=st.sampled_from([0.25, 2.0]))
def test_spatial_scale_is_a_coordinate_scaling(case, t):
    """``roi_pool(f, r, s) == roi_pool(f, r / t, s * t)`` for t = 2^k: both products
    ``r * s`` and ``(r / t) * (s * t)`` are the same real number, rounded once to float32."""
    features, rois, size, scale = case
    moved = rois.copy()
    moved[:, 1:] /= np.float32(t)
    for backend in BACKENDS:
        got = roi_pool(features, moved, size, scale * t, backend=backend)
        assert_same(got, roi_pool(features, rois, size, scale, backend=backend))


@given(case=roi_cases())
def test_channels_are_independent(case):
    features, rois, size, scale = case
    features = np.concatenate([features, features[..., ::-1] * 3 - 1], axis=3)
    perm = np.random.default_rng(0).permutation(features.shape[3])
    for backend in BACKENDS:
        full = roi_pool(features, rois, size, scale, backend=backend)
        permuted = roi_pool(features[..., perm], rois, size, scale, backend=backend)
        assert_same(permuted, full[..., perm])
        assert_same(roi_pool(features[..., :1], rois, size, scale, backend=backend), full[..., :1])


def test_fast_rcnn_like_workload_kernel_matches_reference():
    rng = np.random.default_rng(0)
    features = rng.standard_normal((2, 12, 17, 40), dtype=np.float32)
    xy = rng.uniform(-20, 290, (50, 2))
    wh = rng.uniform(0, 120, (50, 2))
    rois = np.concatenate([rng.integers(0, 2, (50, 1)), xy, xy + wh], axis=1).astype(np.float32)
    want = roi_pool(features, rois, 7, 1 / 16, backend="numpy")
    assert_same(roi_pool(features, rois, 7, 1 / 16, backend="cpu"), want)


# ---------------------------------------------------------------------------------------------
# Empty input and bad input
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_rois(backend):
    got = roi_pool(np.zeros((2, 4, 5, 3)), np.zeros((0, 5)), (2, 7), backend=backend)
    assert_same(got, np.zeros((0, 2, 7, 3), np.float32))


GOOD = dict(
    features=np.zeros((2, 4, 4, 1), np.float32),
    rois=np.float32([[1, 0, 0, 2, 2]]),
    output_size=(2, 2),
)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (dict(features=np.zeros((4, 4, 1))), "features must have 4 dimensions"),
        (dict(features=np.zeros((1, 0, 4, 1))), "positive height and width"),
        (dict(features=np.full((1, 4, 4, 1), "a")), "features must be a real numeric"),
        (dict(rois=np.float32([[0, 0, 2, 2]])), "rois must have 5 values"),
        (dict(rois=np.float32([[0, 0, np.nan, 2, 2]])), "non-finite"),
        (dict(rois=np.float32([[2, 0, 0, 2, 2]])), r"batch indices in \[0, 2\)"),
        (dict(rois=np.float32([[1.25, 0, 0, 2, 2]])), "whole-number batch indices"),
        (dict(rois=np.float32([[0, -3e7, 0, 2, 2]])), r"within \+-2\*\*24"),
        (dict(output_size=0), "output_size must be a positive integer"),
        (dict(spatial_scale=float("inf")), "spatial_scale must be a finite positive"),
        (dict(backend="gpu"), "backend must be one of"),
    ],
)
def test_bad_input_raises(change, match):
    with pytest.raises(ValueError, match=match):
        roi_pool(**{**GOOD, **change})


def test_cuda_backend_dispatch():
    """backend="cuda" runs npfrcnn.kernels.cuda (the simulator in CI: tiny input), else says why."""
    cuda = pytest.importorskip("numba.cuda")
    rng = np.random.default_rng(3)
    features = rng.standard_normal((2, 4, 5, 2), dtype=np.float32)
    rois = np.float32([[1, 0.5, 1, 6, 7], [0, -2, 3, 4, 2]])
    if not cuda.is_available():
        with pytest.raises(ValueError, match="backend='cuda'"):
            roi_pool(features, rois, 2, backend="cuda")
        return
    want = roi_pool(features, rois, 2, 0.5, backend="numpy")
    assert_same(roi_pool(features, rois, 2, 0.5, backend="cuda"), want)
