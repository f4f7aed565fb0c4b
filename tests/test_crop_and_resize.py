"""crop_and_resize and crop_and_pool: hand-worked cases, TensorFlow parity, kernel vs reference.

Every comparison here is bitwise (``assert_same`` with no tolerance): both backends transcribe
TF's float32 formula in TF's order, and max pooling only selects values.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import assert_same
from hypothesis import given
from hypothesis import strategies as st
from strategies import crop_cases

from npfrcnn.ops import crop_and_pool, crop_and_resize

BACKENDS = ("numpy", "cpu")
LOWEST = np.finfo(np.float32).min


def arange_image(h: int, w: int) -> np.ndarray:
    """``[1, h, w, 1]`` with ``image[0, y, x, 0] = w * y + x``."""
    return np.arange(h * w, dtype=np.float32).reshape(1, h, w, 1)


def tf_crop(tf, image, boxes, idx, crop, method="bilinear", ev=0.0) -> np.ndarray:
    return tf.image.crop_and_resize(
        image, boxes, idx, crop, method=method, extrapolation_value=ev
    ).numpy()


def tf_crop_and_pool(tf, image, boxes, idx, crop, ev=0.0) -> np.ndarray:
    crops = tf.image.crop_and_resize(image, boxes, idx, crop, extrapolation_value=ev)
    return tf.nn.max_pool2d(crops, 2, 2, "VALID").numpy()


# ---------------------------------------------------------------------------------------------
# Hand-worked cases (3x3 image with values 3y + x)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_hand_worked_bilinear(backend):
    image = arange_image(3, 3)
    idx = np.zeros(1, np.int32)

    def crop(box, size, ev=0.0):
        return crop_and_resize(image, [box], idx, size, extrapolation_value=ev, backend=backend)

    # [0, 0, 1, 1] is corner aligned: a 3x3 crop samples rows/cols 0, 1, 2 -> the image itself.
    assert_same(crop([0, 0, 1, 1], 3), image)
    # A 2x2 crop samples the four corners 0, 2, 6, 8.
    assert_same(crop([0, 0, 1, 1], 2)[0, ..., 0], np.float32([[0, 2], [6, 8]]))
    # Flipped box [1, 1, 0, 0]: in_y = 2 - y, in_x = 2 - x -> the image rotated by 180 degrees.
    assert_same(crop([1, 1, 0, 0], 3), image[:, ::-1, ::-1])
    # Crop size 1 samples the centre 0.5 * (y1 + y2) * (H - 1): box [0, 0, 1, 1] -> (1, 1) = 4;
    # box [0, 0, 0.5, 1] -> (0.5, 1): lerp between 1 and 4 = 2.5.
    assert_same(crop([0, 0, 1, 1], 1)[0, 0, 0], np.float32([4]))
    assert_same(crop([0, 0, 0.5, 1], 1)[0, 0, 0], np.float32([2.5]))
    # Box [-1, 0, 0, 1], 3x3: in_y = -2, -1, 0 -> two extrapolated rows, then image row 0.
    got = crop([-1, 0, 0, 1], 3, ev=-7.0)[0, ..., 0]
    assert_same(got, np.float32([[-7, -7, -7], [-7, -7, -7], [0, 1, 2]]))
    # Box [0, 0, 1, 1.5], crop (1, 4): in_x = 0, 1, 2, 3 -> the last column lies outside.
    got = crop([0, 0, 1, 1.5], (1, 4), ev=9.0)[0, 0, :, 0]
    assert_same(got, np.float32([3, 4, 5, 9]))
    # Zero-size box at (0.25, 0.75): every sample is (0.5, 1.5) = 1.5 + 3 * 0.5 = 3.
    assert_same(crop([0.25, 0.75, 0.25, 0.75], 2)[0, ..., 0], np.full((2, 2), 3, np.float32))


@pytest.mark.parametrize("backend", BACKENDS)
def test_hand_worked_nearest_rounds_halves_up(backend):
    # 6 rows, crop size 1, box rows [0, 1]: centre 0.5 * 1 * 5 = 2.5 -> roundf gives row 3
    # (round-half-even would give 2). Columns: centre 0.5 * (0 + 1) * (2 - 1) = 0.5 -> column 1.
    image = arange_image(6, 2)  # value 2y + x
    got = crop_and_resize(image, [[0, 0, 1, 1]], [0], 1, method="nearest", backend=backend)
    assert_same(got, np.float32([[[[2 * 3 + 1]]]]))


@pytest.mark.parametrize("backend", BACKENDS)
def test_hand_worked_batch_indices_pick_images(backend):
    images = np.stack([np.full((2, 2, 1), v, np.float32) for v in (1.0, 2.0, 3.0)])
    got = crop_and_resize(images, [[0, 0, 1, 1]] * 3, [2, 0, 1], 1, backend=backend)
    assert_same(got[:, 0, 0, 0], np.float32([3, 1, 2]))


@pytest.mark.parametrize("backend", BACKENDS)
def test_hand_worked_crop_and_pool(backend):
    image = arange_image(3, 3)
    # 2x2 crop of the corners 0, 2, 6, 8 -> max 8.
    assert_same(
        crop_and_pool(image, [[0, 0, 1, 1]], [0], 2, backend=backend), np.float32([[[[8]]]])
    )
    # Box [-1, -1, 0, 0], 2x2: samples (-2,-2), (-2,0), (0,-2) are outside, (0, 0) = 0.
    got = [
        crop_and_pool(image, [[-1, -1, 0, 0]], [0], 2, ev, backend=backend)[0, 0, 0, 0]
        for ev in (-5.0, 9.0, np.nan)
    ]
    assert_same(np.float32(got), np.float32([0, 9, 0]))  # NaN samples are skipped by the max
    # Entirely outside with a NaN extrapolation value: nothing is kept -> -FLT_MAX, as TF.
    got = crop_and_pool(image, [[2, 2, 3, 3]], [0], 2, np.nan, backend=backend)
    assert_same(got, np.full((1, 1, 1, 1), LOWEST, np.float32))


# ---------------------------------------------------------------------------------------------
# TensorFlow parity
# ---------------------------------------------------------------------------------------------


@given(case=crop_cases(), method=st.sampled_from(["bilinear", "nearest"]))
def test_crop_and_resize_matches_tf(tf, case, method):
    image, boxes, idx, crop, ev = case
    want = tf_crop(tf, image, boxes, idx, crop, method, ev)
    for backend in BACKENDS:
        got = crop_and_resize(image, boxes, idx, crop, method, ev, backend=backend)
        assert_same(got, want, err_msg=f"backend={backend}")


@given(case=crop_cases(min_crop=2, max_crop=7))
def test_crop_and_pool_matches_tf(tf, case):
    image, boxes, idx, crop, ev = case
    want = tf_crop_and_pool(tf, image, boxes, idx, crop, ev)
    for backend in BACKENDS:
        assert_same(crop_and_pool(image, boxes, idx, crop, ev, backend=backend), want)


@pytest.mark.parametrize("crop", [(14, 14), (15, 15), (14, 15), (2, 3)])
def test_crop_and_pool_matches_tf_rpn_like(tf, crop):
    """The workshop's use: RPN-sized RoIs on a deep map, 14x14 (and odd 15 -> 7) crops."""
    rng = np.random.default_rng(0)
    image = rng.standard_normal((2, 9, 13, 70), dtype=np.float32)
    centre = rng.uniform(-0.1, 1.1, (60, 2))
    half = rng.uniform(0.0, 0.6, (60, 2))
    boxes = np.concatenate([centre - half, centre + half], axis=1).astype(np.float32)
    idx = rng.integers(0, 2, 60).astype(np.int32)
    want = tf_crop_and_pool(tf, image, boxes, idx, crop)
    for backend in BACKENDS:
        assert_same(crop_and_pool(image, boxes, idx, crop, backend=backend), want)


@pytest.mark.slow
@pytest.mark.parametrize("n", [300, 2000])
def test_crop_and_pool_matches_tf_workshop_size(tf, n):
    """The workshop's real shapes: n RoIs on a 38x63x1024 map, 14x14 -> 7x7 (cpu backend)."""
    rng = np.random.default_rng(4)
    image = rng.standard_normal((1, 38, 63, 1024), dtype=np.float32)
    centre = rng.uniform(0.0, 1.0, (n, 2))
    half = rng.uniform(0.01, 0.5, (n, 2))
    boxes = np.concatenate([centre - half, centre + half], axis=1).astype(np.float32)
    idx = np.zeros(n, np.int32)
    want = tf_crop_and_pool(tf, image, boxes, idx, (14, 14))
    assert_same(crop_and_pool(image, boxes, idx, (14, 14)), want)


@pytest.mark.parametrize("dtype", [np.uint8, np.int32, np.float64, np.float16])
def test_other_image_dtypes_match_tf(tf, dtype):
    """TF casts each tap to float; converting the image to float32 first is the same."""
    rng = np.random.default_rng(1)
    image = (rng.uniform(0, 200, (2, 5, 6, 3)) * 1.37).astype(dtype)
    boxes = rng.uniform(-0.3, 1.3, (12, 4)).astype(np.float32)
    idx = rng.integers(0, 2, 12).astype(np.int32)
    for method in ("bilinear", "nearest"):
        want = tf_crop(tf, image, boxes, idx, (4, 3), method, 0.5)
        for backend in BACKENDS:
            assert_same(crop_and_resize(image, boxes, idx, (4, 3), method, 0.5, backend), want)


def test_non_finite_image_values_match_tf(tf):
    """inf taps give inf or NaN (inf - inf) exactly where TF's formula does; the pool skips NaN."""
    image = np.arange(2 * 4 * 5 * 2, dtype=np.float32).reshape(2, 4, 5, 2)
    image[0, 1, 2, 0] = np.inf
    image[0, 2, 3, 1] = -np.inf
    image[1, 0, 0, :] = np.nan
    boxes = np.float32([[0, 0, 1, 1], [0.1, 0.2, 0.9, 0.8], [-0.2, -0.1, 0.6, 0.7], [1, 1, 0, 0]])
    idx = np.int32([0, 0, 1, 1])
    want = tf_crop(tf, image, boxes, idx, (5, 6))
    want_pool = tf_crop_and_pool(tf, image, boxes, idx, (5, 6))
    for backend in BACKENDS:
        assert_same(crop_and_resize(image, boxes, idx, (5, 6), backend=backend), want)
        assert_same(crop_and_pool(image, boxes, idx, (5, 6), backend=backend), want_pool)


def test_extreme_box_coordinates_match_tf(tf):
    """Huge (but finite, non-overflowing) coordinates are simply outside: extrapolated."""
    image = arange_image(4, 4)
    boxes = np.float32([[-1e30, 0, 1e30, 1], [0, 1e20, 1, 1e20 + 1], [3e5, -2e5, 0.5, 0.5]])
    idx = np.zeros(3, np.int32)
    for crop in [(3, 2), (1, 1)]:
        want = tf_crop(tf, image, boxes, idx, crop, ev=-3.0)
        for backend in BACKENDS:
            assert_same(crop_and_resize(image, boxes, idx, crop, "bilinear", -3.0, backend), want)


# ---------------------------------------------------------------------------------------------
# Kernel vs reference (no TF needed), larger depths
# ---------------------------------------------------------------------------------------------


@given(case=crop_cases(), depth=st.sampled_from([1, 8, 33]))
def test_kernel_matches_reference(case, depth):
    image, boxes, idx, crop, ev = case
    image = np.repeat(image, depth, axis=3)
    image = image * np.arange(1, image.shape[3] + 1, dtype=np.float32)  # distinct channels
    for method in ("bilinear", "nearest"):
        want = crop_and_resize(image, boxes, idx, crop, method, ev, backend="numpy")
        assert_same(crop_and_resize(image, boxes, idx, crop, method, ev, backend="cpu"), want)
    if min(crop) >= 2:
        want = crop_and_pool(image, boxes, idx, crop, ev, backend="numpy")
        assert_same(crop_and_pool(image, boxes, idx, crop, ev, backend="cpu"), want)


def test_crop_and_pool_equals_crop_then_pool_reference():
    """The fused op is the definition: crops, then a 2x2 max with TF's rule (in NumPy here)."""
    rng = np.random.default_rng(2)
    image = rng.standard_normal((1, 6, 7, 5), dtype=np.float32)
    boxes = rng.uniform(-0.5, 1.5, (20, 4)).astype(np.float32)
    idx = np.zeros(20, np.int32)
    crops = crop_and_resize(image, boxes, idx, (7, 9), "bilinear", -0.5, backend="numpy")
    windows = [crops[:, dy:6:2, dx:8:2] for dy in (0, 1) for dx in (0, 1)]
    want = np.maximum.reduce(windows)  # no NaN here, so np.maximum is TF's max
    for backend in BACKENDS:
        assert_same(crop_and_pool(image, boxes, idx, (7, 9), -0.5, backend=backend), want)


# ---------------------------------------------------------------------------------------------
# Empty input and bad input
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_boxes(backend):
    image = np.zeros((2, 4, 5, 3), np.float32)
    got = crop_and_resize(image, np.zeros((0, 4)), np.zeros(0, np.int32), (2, 3), backend=backend)
    assert_same(got, np.zeros((0, 2, 3, 3), np.float32))
    got = crop_and_pool(image, np.zeros((0, 4)), np.zeros(0, np.int64), (15, 14), backend=backend)
    assert_same(got, np.zeros((0, 7, 7, 3), np.float32))


def test_zero_depth():
    image = np.zeros((1, 4, 5, 0), np.float32)
    for backend in BACKENDS:
        got = crop_and_resize(image, [[0, 0, 1, 1]], [0], 2, backend=backend)
        assert_same(got, np.zeros((1, 2, 2, 0), np.float32))


GOOD = dict(
    image=np.zeros((2, 4, 4, 1), np.float32),
    boxes=np.float32([[0, 0, 1, 1]]),
    box_indices=np.int32([1]),
    crop_size=(2, 2),
)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (dict(image=np.zeros((4, 4, 1), np.float32)), "image must have 4 dimensions"),
        (dict(image=np.zeros((1, 0, 4, 1), np.float32)), "positive height and width"),
        (dict(image=np.zeros((1, 4, 4, 1), np.complex64)), "image must be a real numeric"),
        (dict(image=np.full((1, 4, 4, 1), "a")), "image must be a real numeric"),
        (dict(boxes=np.float32([0, 0, 1, 1])), "boxes must have 2 dimensions"),
        (dict(boxes=np.float32([[0, 0, 1]])), "boxes must have 4 values"),
        (dict(boxes=np.float32([[0, np.nan, 1, 1]])), "non-finite"),
        (dict(boxes=np.float32([[0, 0, np.inf, 1]])), "non-finite"),
        (dict(box_indices=np.int32([2])), r"box_indices must lie in \[0, 2\)"),
        (dict(box_indices=np.int32([-1])), r"box_indices must lie in \[0, 2\)"),
        (dict(box_indices=np.float32([0])), "box_indices must be an integer array"),
        (dict(box_indices=np.int32([0, 0])), "box_indices must have shape"),
        (dict(crop_size=(0, 2)), "crop_size must be a positive integer"),
        (dict(crop_size=(2, -1)), "crop_size must be a positive integer"),
        (dict(crop_size=(2, 2, 2)), "crop_size must be a pair"),
        (dict(crop_size=2.5), "crop_size must be an int or a pair"),
    ],
)
@pytest.mark.parametrize("op", [crop_and_resize, crop_and_pool])
def test_bad_input_raises(op, change, match):
    with pytest.raises(ValueError, match=match):
        op(**{**GOOD, **change})


def test_bad_method_backend_and_pool_size_raise():
    with pytest.raises(ValueError, match="method must be 'bilinear' or 'nearest'"):
        crop_and_resize(**GOOD, method="bicubic")
    with pytest.raises(ValueError, match="backend must be one of"):
        crop_and_resize(**GOOD, backend="gpu")
    with pytest.raises(ValueError, match="at least 2 on each axis"):
        crop_and_pool(**{**GOOD, "crop_size": (1, 4)})
    with pytest.raises(ValueError, match="extrapolation_value must be a real number"):
        crop_and_resize(**GOOD, extrapolation_value="zero")  # type: ignore[arg-type]


def test_cuda_backend_dispatch():
    """backend="cuda" runs npfrcnn.kernels.cuda (the simulator in CI: tiny input), else says why."""
    cuda = pytest.importorskip("numba.cuda")
    rng = np.random.default_rng(3)
    image = rng.standard_normal((2, 3, 4, 2), dtype=np.float32)
    boxes = np.float32([[0.1, -0.2, 0.9, 0.7], [1.0, 1.0, 0.0, 0.2]])
    idx = np.int32([1, 0])
    if not cuda.is_available():
        with pytest.raises(ValueError, match="backend='cuda'"):
            crop_and_pool(image, boxes, idx, 2, backend="cuda")
        return
    for method in ("bilinear", "nearest"):
        want = crop_and_resize(image, boxes, idx, (2, 3), method, 0.5, backend="numpy")
        assert_same(crop_and_resize(image, boxes, idx, (2, 3), method, 0.5, backend="cuda"), want)
    want = crop_and_pool(image, boxes, idx, (2, 3), 0.5, backend="numpy")
    assert_same(crop_and_pool(image, boxes, idx, (2, 3), 0.5, backend="cuda"), want)


@pytest.mark.parametrize("backend", BACKENDS)
def test_subnormal_inputs_count_as_zero_as_on_tfs_cpu(backend):
    """TF's CPU threads run with denormals-are-zero (cases found by Hypothesis against TF):
    a subnormal box coordinate is 0, and a subnormal pixel is 0 in the bilinear lerp; nearest
    copies the pixel unchanged."""
    tiny = np.float32(1e-45)
    image = np.zeros((1, 2, 8, 3), np.float32)
    image[0, 0, 0, 2] = 1.0
    # x = -1e-45 read as 0: the sample lands on column 0 (value 1); taken as -1e-45 it would be
    # just outside the image and extrapolated (0).
    box = np.array([[0, -tiny, 0, -tiny]], np.float32)
    got = crop_and_resize(image, box, [0], 1, backend=backend)
    assert got.ravel().tolist() == [0.0, 0.0, 1.0]
    pixel = np.full((1, 1, 1, 1), tiny, np.float32)
    corner = np.array([[0, 0, 0, 0]], np.float32)
    assert crop_and_resize(pixel, corner, [0], 2, backend=backend).ravel().tolist() == [0.0] * 4
    assert crop_and_pool(pixel, corner, [0], 2, backend=backend).ravel().tolist() == [0.0]
    near = crop_and_resize(pixel, corner, [0], 2, "nearest", backend=backend)
    assert near.ravel().tolist() == [float(tiny)] * 4
