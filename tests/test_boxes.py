"""Box conventions (npfrcnn.boxes): hand-worked golden cases, invariants and errors.

Expected values are worked out by hand from the sources' formulas (spec 1.3, 2.4, 3.3, 4.4,
5.5). Comparisons are bitwise where the arithmetic is exact in float32 (small integers, halves,
powers of two); otherwise the tolerance is stated where it is used.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given

from npfrcnn.boxes import (
    area,
    clip,
    decode,
    encode,
    filter_min_size,
    filter_nonpositive,
    iou,
    to_xyxy,
    to_yxyx,
)
from tests.helpers import assert_same
from tests.strategies import encodable_box_pairs, xyxy_boxes

EPS32 = float(np.finfo(np.float32).eps)
F = np.float32


def f32(rows):
    return np.asarray(rows, dtype=np.float32).reshape(-1, 4)


# ----------------------------------------------------------------------------- area, iou


def test_area_golden():
    b = f32([[0, 0, 10, 5], [2, 3, 2, 9], [10, 0, 0, 5], [1.5, 1, 2, 3]])
    assert_same(area(b), np.array([50, 0, -50, 1], np.float32))
    assert_same(area(b, plus_one=True), np.array([66, 7, -54, 4.5], np.float32))
    assert_same(area(b.astype(np.float64)), np.array([50, 0, -50, 1], np.float64))
    assert_same(area(np.zeros((0, 4), np.float32)), np.zeros(0, np.float32))
    assert_same(area([[0, 0, 2, 2]]), np.array([4], np.float32))  # ints -> float32


def test_iou_golden():
    a = f32([[0, 0, 10, 10]])
    b = f32([[5, 5, 15, 15], [10, 0, 20, 10], [0, 0, 10, 10], [20, 20, 30, 30], [2, 2, 4, 4]])
    # overlap 5x5 = 25, union 100 + 100 - 25 = 175; touching edge -> 0; same -> 1;
    # disjoint -> 0; contained 2x2 -> 4 / 100.
    expected = np.array([[25 / 175, 0, 1, 0, 4 / 100]], dtype=np.float32)
    assert_same(iou(a, b), expected)
    # plus_one (py-faster-rcnn bbox_overlaps): areas 11*11 = 121, 3*3 = 9;
    # overlap 6*6 = 36; touching edge shares a 1-pixel column: 1*11 = 11.
    expected = np.array(
        [[F(36) / F(121 + 121 - 36), F(11) / F(121 + 121 - 11), 1, 0, F(9) / F(121)]],
        dtype=np.float32,
    )
    assert_same(iou(a, b, plus_one=True), expected)


def test_iou_shapes_symmetry_and_empty():
    a = f32([[0, 0, 10, 10], [1, 1, 2, 2], [3, 3, 3, 3]])
    b = f32([[5, 5, 15, 15], [3, 3, 3, 3]])
    out = iou(a, b)
    assert out.shape == (3, 2) and out.dtype == np.float32
    assert_same(iou(b, a), out.T)
    # two empty boxes: union 0 -> IoU 0 (not NaN)
    assert out[2, 1] == 0
    empty = np.zeros((0, 4), np.float32)
    assert_same(iou(empty, b), np.zeros((0, 2), np.float32))
    assert_same(iou(a, empty), np.zeros((3, 0), np.float32))
    assert iou(a.astype(np.float64), b).dtype == np.float64


@given(xyxy_boxes(max_n=12), xyxy_boxes(max_n=12))
def test_iou_property_bounds_and_symmetry(a, b):
    out = iou(a, b)
    assert out.shape == (len(a), len(b)) and out.dtype == np.float32
    assert np.all((out >= 0) & (out <= 1))
    assert_same(iou(b, a), out.T)


# ----------------------------------------------------------------------------- encode/decode


def test_encode_workshop_by_hand():
    anchors = f32([[0, 0, 10, 20]])  # w 10, h 20, centre (5, 10)
    boxes = f32([[2, 4, 22, 14]])  # w 20, h 10, centre (12, 9)
    # dx = (12 - 5) / 10, dy = (9 - 10) / 20, dw = log(20 / 10), dh = log(10 / 20)
    expected = np.array([[0.7, -0.05, math.log(2), math.log(0.5)]], np.float32)
    out = encode(boxes, anchors)
    # each delta is one float32 division (or log) of exact values: within 1 ulp (rtol 2 eps)
    assert out.shape == (1, 4) and out.dtype == np.float32
    np.testing.assert_allclose(out, expected, rtol=2 * EPS32)
    # variances divide: [0.1, 0.1, 0.2, 0.2] -> [7, -0.5, log2 / 0.2, log0.5 / 0.2]
    out = encode(boxes, anchors, variances=[0.1, 0.1, 0.2, 0.2])
    expected = np.array([[7, -0.5, math.log(2) / 0.2, math.log(0.5) / 0.2]], np.float32)
    np.testing.assert_allclose(out, expected, rtol=4 * EPS32)  # two roundings each


def test_decode_workshop_by_hand_exact():
    anchors = f32([[0, 0, 10, 20], [4, 4, 8, 8]])
    # row 0: cx' = 0.5 * 10 + 5 = 10, cy' = 0.25 * 20 + 10 = 15, w' = h' unchanged
    # row 1: w = h = 4, centre 6; dw = log 2 is not exact, so use dx = -1 and dw = 0
    deltas = f32([[0.5, 0.25, 0, 0], [-1, 0, 0, 0]])
    expected = f32([[5, 5, 15, 25], [0, 4, 4, 8]])
    assert_same(decode(anchors, deltas), expected)
    # the workshop's R-CNN call: deltas * [0.1, 0.1, 0.2, 0.2] before decoding
    assert_same(decode(anchors, deltas * F(10), variances=[0.1, 0.1, 0.2, 0.2]), expected)


def test_decode_scales_width_with_exp():
    anchors = f32([[0, 0, 10, 20]])
    out = decode(anchors, f32([[0, 0, math.log(2), math.log(0.5)]]))
    # centre (5, 10), w' = 20, h' = 10 -> [-5, 5, 15, 15]; exp(float32(log 2)) is within
    # 1 ulp of 2, so the corners are within ~2 ulp of 15 (atol 4e-6).
    np.testing.assert_allclose(out, [[-5, 5, 15, 15]], rtol=0, atol=4e-6)


def test_decode_luminoth_minus_one_and_py_faster_rcnn():
    anchors = f32([[0, 0, 9, 19]])  # plus_one: w 10, h 20, centre (5, 10)
    zero = f32([[0, 0, 0, 0]])
    # Luminoth: x2 = cx' + w'/2 - 1 -> zero deltas give the anchor back
    assert_same(decode(anchors, zero, plus_one=True), anchors)
    assert_same(decode(anchors, f32([[0.5, 0, 0, 0]]), plus_one=True), f32([[5, 0, 14, 19]]))
    # py-faster-rcnn / wheat: +1 widths but no -1 on decode -> [0, 0, 10, 20]
    assert_same(decode(anchors, zero, plus_one=True, decode_minus_one=False),
                f32([[0, 0, 10, 20]]))
    # Luminoth encode: w = x2 - x1 + 1
    boxes = f32([[0, 0, 19, 9]])  # w 20, h 10, centre (10, 5)
    out = encode(boxes, anchors, plus_one=True)
    np.testing.assert_allclose(out, [[0.5, -0.25, math.log(2), math.log(0.5)]], rtol=2 * EPS32)


def test_variances_and_scale_factors():
    anchors = f32([[0, 0, 10, 20]])
    # TF OD API / Detectron2 scale factors [10, 10, 5, 5]: dx = 10 / 10 = 1, dy = 5 / 10 = 0.5
    # -> centre (5 + 10, 10 + 10) = (15, 20), size unchanged -> [10, 10, 20, 30]
    out = decode(anchors, f32([[10, 5, 0, 0]]), scale_factors=[10, 10, 5, 5])
    assert_same(out, f32([[10, 10, 20, 30]]))
    # two-value form (Luminoth [0.1, 0.2]) is [0.1, 0.1, 0.2, 0.2]
    rng = np.random.default_rng(0)
    d = rng.standard_normal((50, 4)).astype(np.float32)
    a = np.abs(rng.standard_normal((50, 4))).astype(np.float32).cumsum(axis=1)
    assert_same(decode(a, d, variances=[0.1, 0.2]), decode(a, d, variances=[0.1, 0.1, 0.2, 0.2]))
    # variances v and scale factors 1 / v describe the same coder: equal up to the rounding of
    # 1/v (one float32 ulp per multiplication, a few ulp of the box coordinates overall)
    v = decode(a, d, variances=[0.1, 0.1, 0.2, 0.2])
    s = decode(a, d, scale_factors=[10, 10, 5, 5])
    scale = np.abs(a).max(axis=1, keepdims=True) * np.exp(np.abs(d).max() * 0.2)
    assert np.all(np.abs(v - s) <= 8 * EPS32 * scale)
    e = encode(v, a, variances=[0.1, 0.2])
    np.testing.assert_allclose(encode(v, a, scale_factors=[10, 5]), e, rtol=4 * EPS32,
                               atol=1e-6)


def test_decode_scale_factors_divide_like_tf_od_api_and_detectron2():
    anchors = f32([[0, 0, 1000, 1000]])
    deltas = f32([[0.31, 0.33, 0.31, 0.33]])  # 0.31f * 0.1f != 0.31f / 10f in float32
    w = F(1000)
    c = F(0) + F(0.5) * w
    d = deltas[0] / np.array([10, 10, 5, 5], np.float32)
    cx, cy = d[0] * w + c, d[1] * w + c
    pw, ph = np.exp(d[2]) * w, np.exp(d[3]) * w
    expected = np.array([[cx - F(0.5) * pw, cy - F(0.5) * ph, cx + F(0.5) * pw,
                          cy + F(0.5) * ph]], np.float32)
    assert_same(decode(anchors, deltas, scale_factors=[10, 10, 5, 5]), expected)


def test_decode_clamp():
    anchors = f32([[0, 0, 16, 16]])
    clamp = math.log(1000 / 16)  # Detectron2's _DEFAULT_SCALE_CLAMP
    out = decode(anchors, f32([[0, 0, 10, 10]]), clamp=clamp)
    # dw clamped to log(62.5): w' = 62.5 * 16 = 1000 around centre 8 -> [-492, 508];
    # exp of the float32 log is within a few ulp of 62.5: rtol 4 eps on 1000 -> atol 5e-4
    np.testing.assert_allclose(out, [[-492, -492, 508, 508]], rtol=0, atol=5e-4)
    # below the clamp nothing changes
    small = f32([[0.1, -0.2, 0.3, -0.4]])
    assert_same(decode(anchors, small, clamp=clamp), decode(anchors, small))
    # without a clamp, exp(100) overflows float32 to inf (the workshop has no clamp)
    big = decode(anchors, f32([[0, 0, 100, 0]]))
    assert np.isinf(big[0, 2]) and big[0, 2] > 0 and np.isinf(big[0, 0]) and big[0, 0] < 0


def _roundtrip_bound(boxes, anchors, variances_scale=1.0):
    b = boxes.astype(np.float64)
    a = anchors.astype(np.float64)
    bw, bh = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
    aw, ah = a[:, 2] - a[:, 0], a[:, 3] - a[:, 1]
    dw = np.abs(np.log(bw / aw)) + np.abs(np.log(bh / ah))
    mag = np.maximum(np.abs(b).max(axis=1), np.abs(a).max(axis=1))
    # first-order float32 error: ~10 roundings on coordinates of size mag, and exp/log
    # relative errors (eps * (1 + |dw|)) on the widths; a factor 2 of safety: 32 eps.
    return 32 * EPS32 * (mag + np.maximum(bw, bh) * (1 + dw))[:, None]


@given(encodable_box_pairs())
def test_encode_decode_roundtrip(pair):
    boxes, anchors = pair
    for kw in ({}, {"variances": [0.1, 0.1, 0.2, 0.2]}, {"scale_factors": [10, 10, 5, 5]}):
        out = decode(anchors, encode(boxes, anchors, **kw), **kw)
        assert out.shape == boxes.shape and out.dtype == np.float32
        err = np.abs(out.astype(np.float64) - boxes)
        assert np.all(err <= _roundtrip_bound(boxes, anchors)), kw


@given(encodable_box_pairs())
def test_encode_decode_roundtrip_plus_one(pair):
    boxes, anchors = pair
    out = decode(anchors, encode(boxes, anchors, plus_one=True), plus_one=True)
    assert np.all(np.abs(out.astype(np.float64) - boxes) <= _roundtrip_bound(boxes, anchors))


def test_encode_decode_roundtrip_float64_tight():
    rng = np.random.default_rng(1)
    a = rng.uniform(0, 500, (100, 2))
    anchors = np.column_stack([a, a + rng.uniform(1, 300, (100, 2))])
    b = rng.uniform(0, 500, (100, 2))
    boxes = np.column_stack([b, b + rng.uniform(1, 300, (100, 2))])
    out = decode(anchors, encode(boxes, anchors))
    assert out.dtype == np.float64
    np.testing.assert_allclose(out, boxes, rtol=0, atol=1e-10)  # float64: ~1e-13 * 1000


def test_encode_decode_empty():
    e = np.zeros((0, 4), np.float32)
    assert_same(encode(e, e), e)
    assert_same(decode(e, e, variances=[0.1, 0.2], clamp=4.0), e)


# ----------------------------------------------------------------------------- clip, filters


def test_clip_golden():
    b = f32([[-5, -5, 700, 500], [10, 20, 30, 40], [650, 490, 660, 495]])
    # image (height 480, width 640)
    assert_same(clip(b, (480, 640)), f32([[0, 0, 639, 479], [10, 20, 30, 40],
                                          [639, 479, 639, 479]]))
    assert_same(clip(b, (480, 640), inclusive=False),
                f32([[0, 0, 640, 480], [10, 20, 30, 40], [640, 480, 640, 480]]))
    assert_same(clip(b, (480, 640, 3)), clip(b, (480, 640)))  # an image shape works too
    assert_same(clip(np.zeros((0, 4), np.float32), (4, 4)), np.zeros((0, 4), np.float32))


def test_filter_nonpositive_golden():
    b = f32([
        [0, 0, 1, 1],  # area 1: kept
        [0, 0, 0, 5],  # zero width
        [5, 5, 4, 6],  # flipped x: clamped width 0
        [5, 5, 4, 4],  # flipped both: (-1) * (-1) would be positive, clamped is 0
        [0, 0, 2, 3],  # kept
        [0, 0, 1e-3, 1e-3],  # tiny but positive: kept
    ])
    assert_same(filter_nonpositive(b), np.array([0, 4, 5], np.int64))
    assert_same(filter_nonpositive(np.zeros((0, 4))), np.zeros(0, np.int64))


def test_filter_min_size_golden():
    b = f32([[0, 0, 9, 9], [0, 0, 10, 10], [0, 0, 10, 3], [0, 0, 9.5, 20]])
    # widths/heights: (9, 9), (10, 10), (10, 3), (9.5, 20); keep w >= 10 and h >= 10
    assert_same(filter_min_size(b, 10), np.array([1], np.int64))
    # plus_one: (10, 10), (11, 11), (11, 4), (10.5, 21)
    assert_same(filter_min_size(b, 10, plus_one=True), np.array([0, 1, 3], np.int64))
    assert_same(filter_min_size(b, 0), np.array([0, 1, 2, 3], np.int64))
    assert_same(filter_min_size(np.zeros((0, 4)), 1), np.zeros(0, np.int64))


def test_to_yxyx_roundtrip():
    b = f32([[1, 2, 3, 4]])
    assert_same(to_yxyx(b), f32([[2, 1, 4, 3]]))
    assert_same(to_xyxy(to_yxyx(b)), b)


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: area(np.zeros((3, 3))), "last axis"),
        (lambda: area(np.zeros(4)), "2 dimensions"),
        (lambda: iou(np.zeros((2, 4)), np.zeros((2, 5))), "boxes2"),
        (lambda: encode(np.zeros((2, 4)), np.zeros((3, 4))), "same shape"),
        (lambda: decode(np.zeros((2, 4)), np.zeros((2, 8))), "deltas"),
        (lambda: decode(np.zeros((2, 4)), np.zeros((3, 4))), "same shape"),
        (lambda: decode(np.zeros((1, 4)), np.zeros((1, 4)), variances=[1, 1],
                        scale_factors=[1, 1]), "either variances or scale_factors"),
        (lambda: decode(np.zeros((1, 4)), np.zeros((1, 4)), variances=[1, 1, 1]), "2 values"),
        (lambda: encode(np.zeros((1, 4)), np.ones((1, 4)), scale_factors=[1, 0]), "positive"),
        (lambda: clip(np.zeros((1, 4)), (5,)), "image_shape"),
        (lambda: clip(np.zeros((1, 4)), (0, 5)), "positive"),
        (lambda: filter_min_size(np.zeros((1, 4)), -1), "min_size"),
        (lambda: filter_nonpositive(np.zeros((1, 4), dtype=complex)), "real numeric"),
    ],
)
def test_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()
