"""Anchors (npfrcnn.anchors): hand-worked reference anchors of every style, the grid order, and
the feature-map sizes / anchor counts of the six workshop images (spec 1.7, data README).

Expected values are written out from the sources' formulas in this file, never taken from
npfrcnn's output. Comparisons are bitwise unless a tolerance is stated with its reason.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from npfrcnn.anchors import (
    ANCHOR_STYLES,
    detectron2_reference_anchors,
    feature_map_size,
    grid_anchors,
    reference_anchors,
    sort_anchors,
)
from tests.helpers import assert_same

SQRT2 = math.sqrt(2.0)

# The workshop's 15 anchors (spec 1.3/1.8): base 256, ratios h/w [0.5, 1, 2] (major),
# scales [0.125, 0.25, 0.5, 1, 2] (minor); w = 256 * s / sqrt(r), h = 256 * s * sqrt(r),
# corners +-w/2, +-h/2. With r = 0.5: w/2 = 128 * s * sqrt(2), h/2 = 128 * s / sqrt(2).
_SCALES = (0.125, 0.25, 0.5, 1.0, 2.0)
_HALVES = (
    [(128 * s * SQRT2, 128 * s / SQRT2) for s in _SCALES]  # ratio 0.5: wide
    + [(128 * s, 128 * s) for s in _SCALES]  # ratio 1: square
    + [(128 * s / SQRT2, 128 * s * SQRT2) for s in _SCALES]  # ratio 2: tall
)
WORKSHOP_ANCHORS = np.array([[-hw, -hh, hw, hh] for hw, hh in _HALVES], dtype=np.float32)

# The same, as printed to 6 significant digits in most write-ups (a readability check).
WORKSHOP_PRINTED = np.array(
    [
        [-22.6274, -11.3137, 22.6274, 11.3137],
        [-45.2548, -22.6274, 45.2548, 22.6274],
        [-90.5097, -45.2548, 90.5097, 45.2548],
        [-181.019, -90.5097, 181.019, 90.5097],
        [-362.039, -181.019, 362.039, 181.019],
        [-16, -16, 16, 16],
        [-32, -32, 32, 32],
        [-64, -64, 64, 64],
        [-128, -128, 128, 128],
        [-256, -256, 256, 256],
        [-11.3137, -22.6274, 11.3137, 22.6274],
        [-22.6274, -45.2548, 22.6274, 45.2548],
        [-45.2548, -90.5097, 45.2548, 90.5097],
        [-90.5097, -181.019, 90.5097, 181.019],
        [-181.019, -362.039, 181.019, 362.039],
    ]
)

# data/README.md (external data): (W, H), VALID map (H_f, W_f), anchors, SAME map.
WORKSHOP_IMAGES = {
    "bicycles.jpg": ((960, 638), (40, 60), 36_000, (40, 60)),
    "cats.jpg": ((970, 642), (40, 61), 36_600, (41, 61)),
    "horse.jpg": ((736, 919), (58, 46), 40_020, (58, 46)),
    "kids.jpg": ((960, 608), (38, 60), 34_200, (38, 60)),
    "kittens.png": ((1200, 900), (56, 75), 63_000, (57, 75)),
    "woman.jpg": ((731, 508), (32, 46), 22_080, (32, 46)),
}


# ----------------------------------------------------------------------------- workshop


def test_workshop_reference_anchors_by_hand():
    ref = reference_anchors()
    # The float64 formula rounded once to float32 on both sides: bitwise.
    assert_same(ref, WORKSHOP_ANCHORS)
    # Printed digits: 6 significant figures -> atol 1e-3 at magnitude 362.
    np.testing.assert_allclose(ref, WORKSHOP_PRINTED, rtol=0, atol=1e-3)
    assert_same(reference_anchors(256, [0.5, 1, 2], [0.125, 0.25, 0.5, 1, 2], style="workshop"),
                WORKSHOP_ANCHORS)


def test_workshop_float64_dtype():
    ref = reference_anchors(dtype=np.float64)
    assert ref.dtype == np.float64
    expected = np.array([[-hw, -hh, hw, hh] for hw, hh in _HALVES])
    # float64: the two formula orders (s / sqrt(r) * 256 / 2 vs 128 * s * sqrt(2)) may differ
    # in the last bit, so allow 2 ulp at 362 (~1.2e-13).
    np.testing.assert_allclose(ref, expected, rtol=0, atol=1.2e-13)


def test_workshop_sort_makes_order_independent_of_input_order():
    # The workshop sorts by round(h/w, 1), then area: any input order of ratios and scales
    # gives the same 15 anchors in the same order.
    ref = reference_anchors(256, [2, 0.5, 1], [2, 1, 0.125, 0.5, 0.25])
    assert_same(ref, WORKSHOP_ANCHORS)


def test_sort_anchors_hand_worked():
    anchors = np.array(
        [
            [0, 0, 4, 4],  # ratio 1.0, area 16
            [0, 0, 2, 4],  # ratio 2.0, area 8
            [0, 0, 2, 2],  # ratio 1.0, area 4
            [0, 0, 4, 2],  # ratio 0.5, area 8
            [1, 1, 3, 3],  # ratio 1.0, area 4 (tie with row 2: stable order)
        ],
        dtype=np.float32,
    )
    assert_same(sort_anchors(anchors), anchors[[3, 2, 4, 0, 1]])
    # round(h / w, 1): 1.04 and 0.96 both count as ratio 1.0, sorted by area only
    close = np.array([[0, 0, 10, 10.4], [0, 0, 10, 9.6]], dtype=np.float64)
    assert_same(sort_anchors(close), close[[1, 0]])
    with pytest.raises(ValueError, match=r"\[A, 4\]"):
        sort_anchors(np.zeros((3, 5)))


# ----------------------------------------------------------------------------- luminoth


def test_luminoth_reference_anchors_by_hand():
    ref = reference_anchors(style="luminoth")
    # corners +-(w - 1)/2: half sizes shrink by 0.5
    # (spec 0.1: Luminoth = workshop + [.5, .5, -.5, -.5])
    expected = np.array([[-hw + 0.5, -hh + 0.5, hw - 0.5, hh - 0.5] for hw, hh in _HALVES],
                        dtype=np.float32)
    assert_same(ref, expected)
    assert_same(ref[5], np.array([-15.5, -15.5, 15.5, 15.5], np.float32))
    # native order, no sort: descending ratios stay descending
    rev = reference_anchors(256, [2, 1, 0.5], [1], style="luminoth")
    assert_same(rev[:, 2], np.array([128 / SQRT2 - 0.5, 127.5, 128 * SQRT2 - 0.5], np.float32))


def test_luminoth_rejects_anchors_narrower_than_two_pixels():
    # w = 2 -> x2 - x1 = w - 1 = 1: accepted; w = 1 -> 0: rejected, as Luminoth does.
    assert_same(reference_anchors(2, [1], [1], style="luminoth"),
                np.array([[-0.5, -0.5, 0.5, 0.5]], np.float32))
    with pytest.raises(ValueError, match="too small"):
        reference_anchors(1, [1], [1], style="luminoth")
    # ratio 2 at base 2: w = 2 / sqrt(2) = 1.41 -> int(0.41) = 0
    with pytest.raises(ValueError, match="too small"):
        reference_anchors(2, [2], [1], style="luminoth")


# ----------------------------------------------------------------------------- TF OD API


def test_tf_od_api_reference_anchors_by_hand():
    # Spec 4.2: aspect ratio = w / h, computed in float32 as TF:
    # h = scale / sqrt(ar) * 256, w = scale * sqrt(ar) * 256; ar-major, scale-minor;
    # corners centre -+ 0.5 * size with centre 0.
    f = np.float32
    rows = []
    for ar in (0.5, 1.0, 2.0):
        for s in (0.25, 0.5, 1.0, 2.0):
            root = np.sqrt(f(ar))
            h = f(s) / root * f(256)
            w = f(s) * root * f(256)
            rows.append([-(f(0.5) * w), -(f(0.5) * h), f(0.5) * w, f(0.5) * h])
    expected = np.array(rows, dtype=np.float32)
    ref = reference_anchors(256, (0.5, 1.0, 2.0), (0.25, 0.5, 1.0, 2.0), style="tf-od-api")
    assert_same(ref, expected)
    # ar = 0.5 is TALL here (w / h), the opposite of the workshop's ratio 0.5
    assert ref[0, 3] > ref[0, 2]
    np.testing.assert_allclose(ref[0], [-128 * 0.25 / SQRT2, -128 * 0.25 * SQRT2,
                                        128 * 0.25 / SQRT2, 128 * 0.25 * SQRT2], rtol=2e-7)


def test_tf_od_api_matches_tf_ops(tf):
    # The same arithmetic as grid_anchor_generator.tile_anchors, run by TensorFlow.
    scales = tf.constant([0.25, 0.5, 1.0, 2.0], tf.float32)
    ars = tf.constant([0.5, 1.0, 2.0], tf.float32)
    s_grid, ar_grid = tf.meshgrid(scales, ars)
    s_flat, ar_flat = tf.reshape(s_grid, [-1]), tf.reshape(ar_grid, [-1])
    root = tf.sqrt(ar_flat)
    heights = s_flat / root * 256.0
    widths = s_flat * root * 256.0
    expected = tf.stack([-0.5 * widths, -0.5 * heights, 0.5 * widths, 0.5 * heights], 1).numpy()
    ref = reference_anchors(256, (0.5, 1.0, 2.0), (0.25, 0.5, 1.0, 2.0), style="tf-od-api")
    assert_same(ref, expected)


def test_tf_od_api_base_size_pair():
    ref = reference_anchors((100, 200), [1.0], [1.0], style="tf-od-api")
    assert_same(ref, np.array([[-100, -50, 100, 50]], np.float32))


# ----------------------------------------------------------------------------- detectron2


def test_detectron2_reference_anchors_by_hand():
    # Spec 5.6: size-major; w = sqrt(size^2 / ar), h = ar * w, corners +-w/2, +-h/2.
    # size 32, ar 0.5: w = sqrt(2048) = 45.254..., h = 22.627...; ar 1: 32 x 32;
    # ar 2: w = sqrt(512) = 22.627..., h = 45.254...; size 64 doubles all of them.
    a, b = math.sqrt(2048) / 2, 0.5 * math.sqrt(2048) / 2
    c, d = math.sqrt(512) / 2, 2 * math.sqrt(512) / 2
    expected = np.array(
        [
            [-a, -b, a, b],
            [-16, -16, 16, 16],
            [-c, -d, c, d],
            [-2 * a, -2 * b, 2 * a, 2 * b],
            [-32, -32, 32, 32],
            [-2 * c, -2 * d, 2 * c, 2 * d],
        ],
        dtype=np.float32,
    )
    assert_same(detectron2_reference_anchors((32, 64), (0.5, 1.0, 2.0)), expected)
    np.testing.assert_allclose(expected[0], [-22.6274, -11.3137, 22.6274, 11.3137], atol=1e-4)


def test_detectron2_style_via_reference_anchors():
    # sizes = base * scales; the default C4 anchors are the workshop's shapes, size-major.
    ref = reference_anchors(256, (0.5, 1, 2), _SCALES, style="detectron2")
    assert_same(ref, detectron2_reference_anchors((32, 64, 128, 256, 512), (0.5, 1.0, 2.0)))
    # Same 15 boxes as the workshop's (ratio-major there): a permutation. Float32 rounding of
    # two different formulas: at most 1 ulp at 362 (3.1e-5).
    perm = [r * 5 + s for s in range(5) for r in range(3)]
    np.testing.assert_allclose(ref, WORKSHOP_ANCHORS[perm], rtol=0, atol=3.1e-5)
    with pytest.raises(ValueError, match="detectron2_reference_anchors"):
        reference_anchors((256, 256), style="detectron2")


# ----------------------------------------------------------------------------- py-faster-rcnn


def test_py_faster_rcnn_golden_base32():
    # Spec 3.3: wheat repo, generate_anchors(32, 32, [0.5, 1, 2], [2, 4, 6]).
    expected = np.array(
        [
            [-29, -6, 60, 37], [-74, -28, 105, 59], [-119, -50, 150, 81],
            [-16, -16, 47, 47], [-48, -48, 79, 79], [-80, -80, 111, 111],
            [-7, -30, 38, 61], [-30, -76, 61, 107], [-53, -122, 84, 153],
        ],
        dtype=np.float32,
    )
    assert_same(reference_anchors(32, [0.5, 1, 2], [2, 4, 6], style="py-faster-rcnn"), expected)


def test_py_faster_rcnn_classic_base16():
    # py-faster-rcnn's own default (base 16, ratios [0.5, 1, 2], scales [8, 16, 32]):
    # ratio 0.5: ws = round(sqrt(256 / 0.5)) = round(22.63) = 23, hs = round(11.5) = 12
    # (half to even); centre 7.5; scale 8 -> 184 x 96 -> [7.5 - 91.5, 7.5 - 47.5, ...].
    ref = reference_anchors(16, [0.5, 1, 2], [8, 16, 32], style="py-faster-rcnn")
    assert_same(ref[0], np.array([-84, -40, 99, 55], np.float32))
    assert_same(ref[4], np.array([-120, -120, 135, 135], np.float32))  # ratio 1, scale 16
    # ratio 2: ws = round(sqrt(128)) = 11, hs = 22; scale 32 -> 352 x 704
    assert_same(ref[8], np.array([7.5 - 175.5, 7.5 - 351.5, 7.5 + 175.5, 7.5 + 351.5],
                                 np.float32))


def test_py_faster_rcnn_base_pair_is_height_width():
    # base (h 16, w 32): size 512, ratio 1 -> ws = hs = round(sqrt(512)) = 23;
    # centre ((32 - 1) / 2, (16 - 1) / 2) = (15.5, 7.5); corners ctr -+ 0.5 * (23 - 1) = 11
    ref = reference_anchors((16, 32), [1], [1], style="py-faster-rcnn")
    assert_same(ref, np.array([[4.5, -3.5, 26.5, 18.5]], np.float32))


# ----------------------------------------------------------------------------- grid


def test_grid_order_is_y_x_anchor():
    ref = np.array([[-1, -2, 1, 2], [-10, -20, 10, 20], [0, 0, 3, 5]], dtype=np.float32)
    h, w, stride = 2, 3, 16
    out = grid_anchors(h, w, stride, ref)
    assert out.shape == (h * w * 3, 4) and out.dtype == np.float32
    for y in range(h):
        for x in range(w):
            for a in range(3):
                shift = np.array([16 * x, 16 * y, 16 * x, 16 * y], np.float32)
                assert_same(out[(y * w + x) * 3 + a], ref[a] + shift)


def test_grid_offset_and_stride_pairs():
    ref = np.array([[-1, -1, 1, 1]], dtype=np.float32)
    # offset 8 pixels at stride 16: centres at 8 + 16k (Detectron2 OFFSET 0.5 * stride)
    out = grid_anchors(1, 2, 16, ref, offset=8)
    assert_same(out, np.array([[7, 7, 9, 9], [23, 7, 25, 9]], np.float32))
    # stride (y, x) = (8, 16), offset (y, x) = (0, 4) pixels
    out = grid_anchors(2, 2, (8, 16), ref, offset=(0.0, 4.0))
    expected = np.array(
        [[3, -1, 5, 1], [19, -1, 21, 1], [3, 7, 5, 9], [19, 7, 21, 9]], np.float32
    )
    assert_same(out, expected)


def test_grid_rounds_once_from_float64():
    # A float64 reference (the workshop's NumPy pipeline) is shifted in float64 and rounded
    # once; a float32 reference gives the float32 sum (TF / PyTorch pipelines).
    ref64 = reference_anchors(dtype=np.float64)
    out = grid_anchors(40, 61, 16, ref64)
    y, x, a = 39, 60, 3
    row = out[(y * 61 + x) * 15 + a]
    assert_same(row, (ref64[a] + np.array([960.0, 624.0, 960.0, 624.0])).astype(np.float32))
    ref32 = reference_anchors()
    row32 = grid_anchors(40, 61, 16, ref32)[(y * 61 + x) * 15 + a]
    assert_same(row32, ref32[a] + np.array([960, 624, 960, 624], np.float32))


def test_grid_empty_and_validation():
    ref = reference_anchors()
    assert_same(grid_anchors(0, 5, 16, ref), np.zeros((0, 4), np.float32))
    with pytest.raises(ValueError, match="feature_height must be a non-negative integer"):
        grid_anchors(-1, 5, 16, ref)
    with pytest.raises(ValueError, match="feature_width must be an integer"):
        grid_anchors(2, 2.5, 16, ref)
    with pytest.raises(ValueError, match="stride must be positive"):
        grid_anchors(2, 2, 0, ref)
    with pytest.raises(ValueError, match="offset must be finite"):
        grid_anchors(2, 2, 16, ref, offset=float("nan"))
    with pytest.raises(ValueError, match=r"reference must be a float \[A, 4\]"):
        grid_anchors(2, 2, 16, ref[:, :3])
    with pytest.raises(ValueError, match="non-finite"):
        grid_anchors(2, 2, 16, np.full((1, 4), np.inf))


# ----------------------------------------------------------------------------- map sizes


@pytest.mark.parametrize("name", sorted(WORKSHOP_IMAGES))
def test_feature_map_sizes_and_anchor_counts(name):
    (w, h), valid, count, same = WORKSHOP_IMAGES[name]
    assert feature_map_size(h, w) == valid
    assert feature_map_size(h, w, pool1_padding="VALID") == valid
    assert feature_map_size(h, w, pool1_padding="SAME") == same
    anchors = grid_anchors(*valid, 16, reference_anchors())
    assert anchors.shape == (count, 4)


def test_feature_map_sizes_of_the_real_images(shared_dir):
    from PIL import Image

    folder = shared_dir / "data" / "workshop-images"
    for name, ((w, h), valid, count, same) in WORKSHOP_IMAGES.items():
        with Image.open(folder / name) as im:
            assert im.size == (w, h), name
            iw, ih = im.size
        assert feature_map_size(ih, iw) == valid, name
        assert feature_map_size(ih, iw, "SAME") == same, name
        assert valid[0] * valid[1] * 15 == count, name


def test_feature_map_size_matches_the_layers(tf):
    """The size formula against TF running the same padding/stride stack on a tiny image."""
    for h, w in [(33, 33), (34, 35), (37, 64), (5, 6)]:
        x = tf.zeros((1, h, w, 1))
        x = tf.pad(x, [[0, 0], [3, 3], [3, 3], [0, 0]])
        x = tf.nn.conv2d(x, tf.zeros((7, 7, 1, 1)), 2, "VALID")
        for pool in ("VALID", "SAME"):
            y = tf.nn.max_pool2d(x, 3, 2, pool)
            for _ in range(2):
                y = tf.pad(y, [[0, 0], [1, 1], [1, 1], [0, 0]])
                y = tf.nn.conv2d(y, tf.zeros((3, 3, 1, 1)), 2, "VALID")
            assert feature_map_size(h, w, pool) == tuple(y.shape[1:3]), (h, w, pool)


def test_feature_map_size_validation():
    with pytest.raises(ValueError, match="pool1_padding"):
        feature_map_size(600, 800, "FULL")
    with pytest.raises(ValueError, match="image_height must be a positive integer"):
        feature_map_size(0, 800)
    with pytest.raises(ValueError, match="too small"):
        feature_map_size(4, 800)
    assert feature_map_size(5, 5) == (1, 1)
    assert feature_map_size(1, 1, "SAME") == (1, 1)


# ----------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"style": "yolo"}, "style must be one of"),
        ({"ratios": []}, "ratios must be a non-empty"),
        ({"ratios": [0.5, -1]}, "ratios must be positive"),
        ({"scales": [0.0]}, "scales must be positive"),
        ({"scales": [[1, 2]]}, "scales must be a non-empty 1-D"),
        ({"base_size": 0}, "base_size must be positive"),
        ({"base_size": (1, 2, 3)}, "base_size must be a number or a pair"),
        ({"dtype": np.int32}, "dtype must be float32 or float64"),
    ],
)
def test_reference_anchors_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        reference_anchors(**kwargs)


def test_every_style_is_centred_where_documented():
    for style in ANCHOR_STYLES:
        ref = reference_anchors(32, [0.5, 1, 2], [1, 2], style=style)
        assert ref.shape == (6, 4) and ref.dtype == np.float32, style
        centre = (ref[:, :2] + ref[:, 2:]) / 2
        expect = 15.5 if style == "py-faster-rcnn" else 0.0
        assert_same(centre, np.full((6, 2), expect, np.float32), err_msg=style)
    with pytest.raises(ValueError, match="sizes must be positive"):
        detectron2_reference_anchors([32, 0])
