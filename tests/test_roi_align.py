"""roi_align: hand-worked cases, invariants, kernel vs reference.

torchvision is not installed here (no CPU build on this machine), so the expected values come
from hand-worked cases on a linear map and from invariants; the Numba kernel is compared bitwise
with the NumPy reference, both transcribed from torchvision's CPU kernel in the same order.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import assert_same
from hypothesis import given
from hypothesis import strategies as st
from strategies import inside_roi_cases, roi_cases

from npfrcnn.ops import roi_align

BACKENDS = ("numpy", "cpu")
RATIOS = st.sampled_from([-1, 0, 1, 2, 3])


def linear_map() -> np.ndarray:
    """``[1, 5, 5, 1]`` with ``f[0, y, x, 0] = 5 * y + x``.

    Bilinear interpolation of a linear map is exact, so a bin's value is the map at the mean of
    its sample points (values below are sums of quarter-integers: exact in float32).
    """
    return np.arange(25, dtype=np.float32).reshape(1, 5, 5, 1)


def align(rois, size, **kw):
    """The result of every backend, checked equal, for the hand-worked cases."""
    got = [roi_align(linear_map(), rois, size, backend=b, **kw) for b in BACKENDS]
    assert_same(got[1], got[0])
    return got[0][..., 0]


# ---------------------------------------------------------------------------------------------
# Hand-worked cases
# ---------------------------------------------------------------------------------------------


def test_hand_worked_two_by_two_bins():
    # RoI [0, 4] x [0, 4], 2x2 bins of side 2, 2x2 samples per bin at 0.5, 1.5 | 2.5, 3.5.
    # Bin (0, 0): samples (0.5,0.5)=3, (0.5,1.5)=4, (1.5,0.5)=8, (1.5,1.5)=9 -> 24 / 4 = 6.
    # The others are the map at the bin centres (1, 3), (3, 1), (3, 3): 8, 16, 18.
    want = np.float32([[[6, 8], [16, 18]]])
    assert_same(align([[0, 0, 0, 4, 4]], 2, sampling_ratio=2), want)
    # spatial_scale 0.5 on a RoI twice as large is the same RoI on the map.
    assert_same(align([[0, 0, 0, 8, 8]], 2, spatial_scale=0.5, sampling_ratio=2), want)
    # aligned=True shifts by -0.5: RoI [0.5, 4.5] becomes [0, 4], the same bins again.
    assert_same(align([[0, 0.5, 0.5, 4.5, 4.5]], 2, sampling_ratio=2, aligned=True), want)


def test_hand_worked_clamping_at_the_last_row():
    # RoI [3, 5] x [3, 5], 1 bin, samples at 3.5 and 4.5 per axis; 4.5 >= H - 1 clamps to 4.
    # Samples (3.5,3.5)=21, (3.5,4)=21.5, (4,3.5)=23.5, (4,4)=24 -> 90 / 4 = 22.5.
    assert_same(align([[0, 3, 3, 5, 5]], 1, sampling_ratio=2), np.float32([[[22.5]]]))


def test_hand_worked_clamping_below_zero():
    # RoI x [1.5, 2.5], y [-1, 0]: samples y = -0.75, -0.25 (inside [-1, H], clamped to 0),
    # x = 1.75, 2.25 -> values 1.75, 2.25 -> mean 2.
    assert_same(align([[0, 1.5, -1, 2.5, 0]], 1, sampling_ratio=2), np.float32([[[2]]]))


def test_hand_worked_adaptive_grid():
    # RoI [0, 5] x [0, 5], one bin: adaptive grid ceil(5 / 1) = 5 samples per axis at
    # 0.5, 1.5, 2.5, 3.5, 4.5 (-> clamped to 4): per axis mean 12 / 5, so the bin is
    # sum 360 / count 25 = 14.4 (rounded once, in the division). A 2x2 grid (1.25, 3.75)
    # gives 5 * 2.5 + 2.5 = 15: the grid size matters here.
    assert_same(align([[0, 0, 0, 5, 5]], 1), np.float32([[[360]]]) / np.float32(25))
    assert_same(align([[0, 0, 0, 5, 5]], 1, sampling_ratio=0), np.float32([[[360]]]) / 25)
    assert_same(align([[0, 0, 0, 5, 5]], 1, sampling_ratio=2), np.float32([[[15]]]))


def test_hand_worked_small_and_reversed_rois():
    # Unaligned, a point RoI at (2, 2) is widened to 1x1: one sample at (2.5, 2.5) = 15.
    assert_same(align([[0, 2, 2, 2, 2]], 1, sampling_ratio=1), np.float32([[[15]]]))
    # Unaligned, reversed: also widened to 1x1 from its start (3, 3): (3.5, 3.5) = 21.
    assert_same(align([[0, 3, 3, 1, 1]], 1, sampling_ratio=1), np.float32([[[21]]]))
    # Aligned, reversed: negative size, adaptive grid ceil(-1) = -1 per axis: no samples, and
    # count = max((-1) * (-1), 1) = 1 -> 0.
    assert_same(align([[0, 3, 3, 1, 1]], 2, aligned=True), np.zeros((1, 2, 2), np.float32))
    # Aligned, empty (zero size): grid ceil(0) = 0, count max(0, 1) = 1 -> 0.
    assert_same(align([[0, 2, 2, 2, 2]], 1, aligned=True), np.zeros((1, 1, 1), np.float32))


def test_hand_worked_outside_samples_weigh_pixel_zero():
    # RoI [5.5, 7] x [5.5, 7]: samples at 5.875 and 6.625 lie past W = 5, so they count as zero
    # weights on pixel (0, 0): 0 here ...
    assert_same(align([[0, 5.5, 5.5, 7, 7]], 1, sampling_ratio=2), np.float32([[[0]]]))
    # ... and NaN when that pixel is inf (0 * inf), as in torchvision's kernel.
    fmap = linear_map()
    fmap[0, 0, 0, 0] = np.inf
    for backend in BACKENDS:
        got = roi_align(fmap, [[0, 5.5, 5.5, 7, 7]], 1, sampling_ratio=2, backend=backend)
        assert np.isnan(got).all()


def test_hand_worked_batch_index_and_channels():
    fmap = np.concatenate([linear_map(), linear_map() + 100], axis=0)  # [2, 5, 5, 1]
    fmap = np.concatenate([fmap, -fmap], axis=3)  # [2, 5, 5, 2]
    rois = [[1, 0, 0, 4, 4], [0, 0, 0, 4, 4]]
    bins = np.float32([[6, 8], [16, 18]])
    want = np.stack([np.stack([bins + 100, -(bins + 100)], -1), np.stack([bins, -bins], -1)])
    for backend in BACKENDS:
        assert_same(roi_align(fmap, rois, 2, sampling_ratio=2, backend=backend), want)


# ---------------------------------------------------------------------------------------------
# Kernel vs reference, invariants
# ---------------------------------------------------------------------------------------------


@given(case=roi_cases(), ratio=RATIOS, aligned=st.booleans())
def test_kernel_matches_reference(case, ratio, aligned):
    features, rois, size, scale = case
    kw = dict(spatial_scale=scale, sampling_ratio=ratio, aligned=aligned)
    want = roi_align(features, rois, size, backend="numpy", **kw)
    assert_same(roi_align(features, rois, size, backend="cpu", **kw), want)


@given(case=inside_roi_cases(), ratio=RATIOS, aligned=st.booleans())
@pytest.mark.parametrize("value", [3.7, -12.25, 1e3])
def test_constant_map_gives_the_constant(case, ratio, aligned, value):
    shape, rois, size, scale = case
    features = np.full(shape, value, np.float32)
    # Each bin sums at most 7 * 7 samples (RoIs are <= 7 px, adaptive grid <= 7 per axis), each
    # a 4-term weighted sum whose weights add up to 1 only up to rounding: float32 error below
    # (49 + 4) * 2**-24 relative, so 2**-18 (~3.8e-6) bounds it.
    want = np.full((rois.shape[0], *size, shape[3]), value, np.float32)
    for backend in BACKENDS:
        got = roi_align(features, rois, size, scale, ratio, aligned, backend=backend)
        assert_same(got, want, rtol=2.0**-18)


@given(case=roi_cases(), ratio=RATIOS, aligned=st.booleans(), t=st.sampled_from([0.25, 2.0]))
def test_spatial_scale_is_a_coordinate_scaling(case, ratio, aligned, t):
    """``roi_align(f, r, s) == roi_align(f, r / t, s * t)`` bitwise for t = 2^k: both products
    ``r * s`` and ``(r / t) * (s * t)`` are the same real number, rounded once to float32."""
    features, rois, size, scale = case
    moved = rois.copy()
    moved[:, 1:] /= np.float32(t)
    for backend in BACKENDS:
        got = roi_align(features, moved, size, scale * t, ratio, aligned, backend=backend)
        want = roi_align(features, rois, size, scale, ratio, aligned, backend=backend)
        assert_same(got, want)


@given(case=roi_cases(), ratio=RATIOS)
def test_aligned_is_a_half_pixel_shift(case, ratio):
    """aligned=True equals aligned=False on RoIs moved by -0.5 map pixel, when no RoI needs the
    unaligned widening (size >= 1 map pixel). Corners on a 1/4 grid keep it exact."""
    features, rois, size, _ = case
    scale = 0.5
    rois = rois.copy()
    rois[:, 1:] = np.round(rois[:, 1:] * 4) / 4
    rois[:, 3] = np.maximum(rois[:, 3], rois[:, 1] + 1 / scale)  # x2 >= x1 + 1 map pixel
    rois[:, 4] = np.maximum(rois[:, 4], rois[:, 2] + 1 / scale)
    shifted = rois.copy()
    shifted[:, 1:] -= np.float32(0.5 / scale)
    for backend in BACKENDS:
        got = roi_align(features, rois, size, scale, ratio, aligned=True, backend=backend)
        want = roi_align(features, shifted, size, scale, ratio, aligned=False, backend=backend)
        assert_same(got, want)


@given(case=roi_cases(), ratio=RATIOS, aligned=st.booleans())
def test_channels_are_independent(case, ratio, aligned):
    features, rois, size, scale = case
    features = np.concatenate([features, features[..., ::-1] * 3 - 1], axis=3)
    perm = np.random.default_rng(0).permutation(features.shape[3])
    for backend in BACKENDS:
        full = roi_align(features, rois, size, scale, ratio, aligned, backend=backend)
        assert_same(
            roi_align(features[..., perm], rois, size, scale, ratio, aligned, backend=backend),
            full[..., perm],
        )
        one = roi_align(features[..., :1], rois, size, scale, ratio, aligned, backend=backend)
        assert_same(one, full[..., :1])


def test_detectron2_like_workload_kernel_matches_reference():
    """RPN-like RoIs, 14x14 bins, adaptive grid, aligned (Detectron2's R101-C4 pooler)."""
    rng = np.random.default_rng(0)
    features = rng.standard_normal((2, 12, 17, 40), dtype=np.float32)
    xy = rng.uniform(-20, 290, (50, 2))
    wh = rng.uniform(0, 120, (50, 2))
    rois = np.concatenate([rng.integers(0, 2, (50, 1)), xy, xy + wh], axis=1).astype(np.float32)
    for aligned in (True, False):
        want = roi_align(features, rois, 14, 1 / 16, 0, aligned, backend="numpy")
        assert_same(roi_align(features, rois, 14, 1 / 16, 0, aligned, backend="cpu"), want)


# ---------------------------------------------------------------------------------------------
# Empty input and bad input
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_rois(backend):
    got = roi_align(np.zeros((2, 4, 5, 3)), np.zeros((0, 5)), (2, 7), backend=backend)
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
        (dict(features=np.zeros((1, 4, 0, 1))), "positive height and width"),
        (dict(features=np.zeros((1, 4, 4, 1), np.complex64)), "features must be a real numeric"),
        (dict(rois=np.float32([[0, 0, 2, 2]])), "rois must have 5 values"),
        (dict(rois=np.float32([0, 0, 0, 2, 2])), "rois must have 2 dimensions"),
        (dict(rois=np.float32([[0, 0, np.nan, 2, 2]])), "non-finite"),
        (dict(rois=np.float32([[0, 0, 0, np.inf, 2]])), "non-finite"),
        (dict(rois=np.float32([[2, 0, 0, 2, 2]])), r"batch indices in \[0, 2\)"),
        (dict(rois=np.float32([[-1, 0, 0, 2, 2]])), r"batch indices in \[0, 2\)"),
        (dict(rois=np.float32([[0.5, 0, 0, 2, 2]])), "whole-number batch indices"),
        (dict(rois=np.float32([[0, 0, 0, 3e7, 2]])), r"within \+-2\*\*24"),
        (dict(output_size=(0, 2)), "output_size must be a positive integer"),
        (dict(output_size=(2, 2, 2)), "output_size must be a pair"),
        (dict(spatial_scale=0.0), "spatial_scale must be a finite positive"),
        (dict(spatial_scale=-0.5), "spatial_scale must be a finite positive"),
        (dict(spatial_scale=float("nan")), "spatial_scale must be a finite positive"),
        (dict(spatial_scale="x"), "spatial_scale must be a number"),
        (dict(sampling_ratio=1.5), "sampling_ratio must be an integer"),
        (dict(backend="tpu"), "backend must be one of"),
    ],
)
def test_bad_input_raises(change, match):
    with pytest.raises(ValueError, match=match):
        roi_align(**{**GOOD, **change})


def test_cuda_backend_dispatch():
    """backend="cuda" runs npfrcnn.kernels.cuda (the simulator in CI: tiny input), else says why."""
    cuda = pytest.importorskip("numba.cuda")
    rng = np.random.default_rng(3)
    features = rng.standard_normal((2, 4, 5, 2), dtype=np.float32)
    rois = np.float32([[1, 0.5, 1, 6, 7], [0, -2, 3, 4, 2]])
    if not cuda.is_available():
        with pytest.raises(ValueError, match="backend='cuda'"):
            roi_align(features, rois, 2, backend="cuda")
        return
    for aligned in (False, True):
        want = roi_align(features, rois, 2, 0.5, 2, aligned, backend="numpy")
        assert_same(roi_align(features, rois, 2, 0.5, 2, aligned, backend="cuda"), want)
