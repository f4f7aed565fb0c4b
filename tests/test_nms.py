"""NMS family (npfrcnn.ops.nms) against TensorFlow's CPU kernels, hand-worked cases, invariants.

Indices must be identical to TF's, ties included; soft-NMS scores are compared bitwise (both
sides use float32 arithmetic in the same order and libm's ``expf``).
"""

from __future__ import annotations

import importlib

import numpy as np
import pytest
from helpers import assert_same
from hypothesis import given
from hypothesis import strategies as st
from strategies import (
    integer_box_pairs,
    iou_thresholds,
    nms_cases,
    rpn_like_boxes,
    scores_for,
    xyxy_boxes,
)

from npfrcnn.ops import batched_nms, nms, soft_nms

BACKENDS = ["numpy", "cpu"]
F32 = np.float32


def tf_nms(tf, boxes, scores, max_output_size, iou_threshold, score_threshold=float("-inf")):
    out = tf.image.non_max_suppression(
        boxes, scores, max_output_size, iou_threshold=F32(iou_threshold),
        score_threshold=F32(score_threshold),
    )
    return out.numpy().astype(np.int64)


def tf_soft_nms(tf, boxes, scores, max_output_size, iou_threshold, score_threshold, sigma):
    idx, out = tf.image.non_max_suppression_with_scores(
        boxes, scores, max_output_size, iou_threshold=F32(iou_threshold),
        score_threshold=F32(score_threshold), soft_nms_sigma=F32(sigma),
    )
    return idx.numpy().astype(np.int64), out.numpy()


def float32_iou(a, b):
    """TF's IOU for two boxes, written out in float32 (used only to build threshold cases)."""
    a, b = np.asarray(a, F32), np.asarray(b, F32)
    ya, xa = np.sort(a[[0, 2]]), np.sort(a[[1, 3]])
    yb, xb = np.sort(b[[0, 2]]), np.sort(b[[1, 3]])
    area_a = (ya[1] - ya[0]) * (xa[1] - xa[0])
    area_b = (yb[1] - yb[0]) * (xb[1] - xb[0])
    if area_a <= 0 or area_b <= 0:
        return F32(0.0)
    ih = max(min(ya[1], yb[1]) - max(ya[0], yb[0]), F32(0.0))
    iw = max(min(xa[1], xb[1]) - max(xa[0], xb[0]), F32(0.0))
    inter = F32(ih * iw)
    return F32(inter / F32(F32(area_a + area_b) - inter))


# ---------------------------------------------------------------------------------------------
# Hand-worked cases
# ---------------------------------------------------------------------------------------------

# (y1, x1, y2, x2). IoU(A, B) = 90 / 110 = 0.818; IoU(A, C) = 50 / 150 = 0.333;
# IoU(B, C) = 60 / 140 = 0.43; D overlaps nothing.
GOLDEN_BOXES = np.array(
    [[0, 0, 10, 10], [0, 1, 10, 11], [0, 5, 10, 15], [20, 20, 30, 30]], dtype=np.float32
)
GOLDEN_SCORES = np.array([0.9, 0.8, 0.7, 0.95], dtype=np.float32)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    ("iou_threshold", "max_output_size", "score_threshold", "expected"),
    [
        (0.5, None, float("-inf"), [3, 0, 2]),  # B suppressed by A (0.818 > 0.5); C kept
        (0.3, None, float("-inf"), [3, 0]),  # C suppressed too (0.333 > 0.3)
        (0.9, None, float("-inf"), [3, 0, 1, 2]),  # nothing overlaps more than 0.9
        (0.5, 2, float("-inf"), [3, 0]),  # stops after two
        (0.5, None, 0.9, [3]),  # 0.9 is not > 0.9 (float32 on both sides)
        (0.5, None, 0.75, [3, 0]),  # C (0.7) is no candidate
        (0.5, 0, float("-inf"), []),
    ],
)
def test_golden(backend, iou_threshold, max_output_size, score_threshold, expected):
    got = nms(GOLDEN_BOXES, GOLDEN_SCORES, iou_threshold, max_output_size, score_threshold,
              backend=backend)
    assert_same(got, np.asarray(expected, dtype=np.int64))


@pytest.mark.parametrize("backend", BACKENDS)
def test_golden_matches_tf(tf, backend):
    for thr in (0.3, 0.5, 0.9):
        assert_same(nms(GOLDEN_BOXES, GOLDEN_SCORES, thr, backend=backend),
                    tf_nms(tf, GOLDEN_BOXES, GOLDEN_SCORES, 4, thr))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    ("pair", "iou"),
    [
        # Areas 2 and 2, intersection 1, union 3: IoU is float32(1/3).
        ([[0, 0, 1, 2], [0, 1, 1, 3]], F32(1) / F32(3)),
        # Areas 2 and 1, the smaller inside: IoU is 0.5 exactly.
        ([[0, 0, 1, 2], [0, 0, 1, 1]], F32(0.5)),
        # Areas 10 and 7, the smaller inside: IoU is float32(0.7), the RPN's threshold.
        ([[0, 0, 1, 10], [0, 0, 1, 7]], F32(0.7)),
        # Flipped corners give the same IoU.
        ([[1, 10, 0, 0], [0, 7, 1, 0]], F32(0.7)),
    ],
)
def test_iou_exactly_at_threshold_is_kept(tf, backend, pair, iou):
    boxes = np.asarray(pair, dtype=np.float32)
    scores = np.array([0.9, 0.8], dtype=np.float32)
    below = np.nextafter(iou, F32(0.0))
    above = np.nextafter(iou, F32(1.0))
    # Strictly greater suppresses: at the threshold and above it both boxes stay.
    for thr, expected in ((iou, [0, 1]), (above, [0, 1]), (below, [0])):
        got = nms(boxes, scores, float(thr), backend=backend)
        assert_same(got, np.asarray(expected, dtype=np.int64), err_msg=f"threshold {thr!r}")
        assert_same(got, tf_nms(tf, boxes, scores, 2, thr), err_msg=f"threshold {thr!r}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_ties_go_to_lower_index(tf, backend):
    # Three identical boxes with equal scores: the lowest index wins; -0.0 equals 0.0.
    boxes = np.array([[0, 0, 4, 4]] * 3 + [[10, 10, 14, 14]] * 2, dtype=np.float32)
    tied = ([0.5, 0.5, 0.5, 0.2, 0.2], [0.2, 0.5, 0.5, 0.5, 0.5], [0.0, -0.0, 0.0, -0.0, 0.0])
    for scores in tied:
        s = np.asarray(scores, dtype=np.float32)
        assert_same(nms(boxes, s, 0.5, backend=backend), tf_nms(tf, boxes, s, 5, 0.5))
    s = np.array([0.5, 0.5, 0.5, 0.2, 0.2], dtype=np.float32)
    assert_same(nms(boxes, s, 0.5, backend=backend), np.array([0, 3], dtype=np.int64))


@pytest.mark.parametrize("backend", BACKENDS)
def test_zero_area_boxes_never_suppress(tf, backend):
    # A zero-area box has IoU 0 with everything (TF's rule), even with an identical box.
    boxes = np.array([[0, 0, 0, 5], [0, 0, 0, 5], [1, 1, 1, 1], [0, 0, 5, 5]], dtype=np.float32)
    scores = np.array([0.9, 0.8, 0.7, 0.6], dtype=np.float32)
    assert_same(nms(boxes, scores, 0.0, backend=backend), np.arange(4, dtype=np.int64))
    assert_same(nms(boxes, scores, 0.0, backend=backend), tf_nms(tf, boxes, scores, 4, 0.0))


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_and_inf_scores(tf, backend):
    # NaN is never > score_threshold, so never a candidate; +inf is an ordinary top score.
    boxes = np.array([[0, 0, 4, 4], [0, 0, 4, 5], [10, 10, 14, 14], [20, 0, 24, 4]], np.float32)
    scores = np.array([np.nan, 0.5, np.inf, -np.inf], dtype=np.float32)
    got = nms(boxes, scores, 0.5, backend=backend)
    assert_same(got, tf_nms(tf, boxes, scores, 4, 0.5))
    assert_same(got, np.array([2, 1], dtype=np.int64))


@pytest.mark.parametrize("backend", BACKENDS)
def test_subnormals_are_flushed_as_in_tf(tf, backend):
    # TF's CPU kernels run with FTZ/DAZ: a 1e-45 score ties with 0 (lower index first) and is
    # not above score_threshold 0; boxes whose area underflows have area 0 and never suppress.
    far = np.array([[0, 0, 10, 10], [20, 20, 30, 30]], np.float32)
    tiny = np.array([0.0, 1e-45], np.float32)
    assert_same(nms(far, tiny, 0.5, backend=backend), np.array([0, 1], np.int64))
    assert_same(nms(far, tiny, 0.5, backend=backend), tf_nms(tf, far, tiny, 2, 0.5))
    assert_same(nms(far, tiny, 0.5, score_threshold=0.0, backend=backend),
                tf_nms(tf, far, tiny, 2, 0.5, 0.0))
    t = F32(1e-20)  # area 1e-40 is subnormal: flushed to 0
    same = np.array([[0, 0, t, t], [0, 0, t, t]], np.float32)
    scores = np.array([0.9, 0.8], np.float32)
    assert_same(nms(same, scores, 0.5, backend=backend), np.array([0, 1], np.int64))
    assert_same(nms(same, scores, 0.5, backend=backend), tf_nms(tf, same, scores, 2, 0.5))
    u = F32(2e-19)  # area 2e-38 is normal: the boxes are identical and the second goes
    normal = np.array([[0, 0, u, F32(1e-19)]] * 2, np.float32)
    assert_same(nms(normal, scores, 0.5, backend=backend), tf_nms(tf, normal, scores, 2, 0.5))
    # Soft-NMS returns the first selection's score untouched, later ones flushed.
    for s in ([1e-45], [0.0, 1e-45]):
        s32 = np.asarray(s, np.float32)
        got = soft_nms(far[: s32.shape[0]], s32, sigma=0.5, backend=backend)
        want = tf_soft_nms(tf, far[: s32.shape[0]], s32, s32.shape[0], 0.5, float("-inf"), 0.5)
        assert_same(got[0], want[0])
        assert_same(got[1].view(np.int32), want[1].view(np.int32))


# ---------------------------------------------------------------------------------------------
# Property-based parity with TF
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@given(
    case=nms_cases(),
    iou_threshold=iou_thresholds(),
    limit=st.one_of(st.none(), st.integers(0, 45)),
    score_threshold=st.sampled_from([float("-inf"), 0.0, 0.1, 0.25, 0.5, 0.9]),
)
def test_nms_matches_tf(tf, backend, case, iou_threshold, limit, score_threshold):
    boxes, scores = case
    n = boxes.shape[0]
    got = nms(boxes, scores, iou_threshold, limit, score_threshold, backend=backend)
    want = tf_nms(tf, boxes, scores, n if limit is None else limit, iou_threshold,
                  score_threshold)
    assert_same(got, want)


@pytest.mark.parametrize("backend", BACKENDS)
@given(pair=integer_box_pairs(), tied=st.booleans(), swap=st.booleans())
def test_threshold_boundary_matches_tf(tf, backend, pair, tied, swap):
    boxes = pair[::-1].copy() if swap else pair
    if swap:
        boxes = boxes[:, [2, 3, 0, 1]].copy()  # flipped corners as well
    scores = np.array([0.5, 0.5] if tied else [0.4, 0.6], dtype=np.float32)
    iou = float32_iou(boxes[0], boxes[1])
    for thr in (iou, np.nextafter(iou, F32(0.0)), np.nextafter(iou, F32(1.0))):
        if not 0.0 <= thr <= 1.0:
            continue
        got = nms(boxes, scores, float(thr), backend=backend)
        assert_same(got, tf_nms(tf, boxes, scores, 2, thr), err_msg=f"threshold {thr!r}")
    # IoU equal to the threshold never suppresses (TF's strict comparison).
    assert nms(boxes, scores, float(iou), backend=backend).shape == (2,)


@pytest.mark.parametrize(("n", "seed", "iou_threshold", "limit"), [
    (2000, 0, 0.7, None), (3000, 1, 0.5, 300), (5000, 2, 0.7, 1000),
])
def test_cpu_kernel_matches_reference_and_tf_rpn_like(tf, n, seed, iou_threshold, limit):
    boxes, scores = rpn_like_boxes(n, seed)
    scores = np.round(scores, 3)  # many exact score ties
    cpu = nms(boxes, scores, iou_threshold, limit, backend="cpu")
    ref = nms(boxes, scores, iou_threshold, limit, backend="numpy")
    assert_same(cpu, ref)
    assert_same(cpu, tf_nms(tf, boxes, scores, n if limit is None else limit, iou_threshold))


def test_cpu_kernel_matches_tf_at_rpn_scale(tf):
    # The workshop's RPN setting: 12,000 proposals, keep 2,000, IoU 0.7 (spec 1.8).
    boxes, scores = rpn_like_boxes(12000, 3)
    scores = np.round(scores, 2)  # many ties
    assert_same(nms(boxes, scores, 0.7, 2000), tf_nms(tf, boxes, scores, 2000, 0.7))


# ---------------------------------------------------------------------------------------------
# Soft-NMS
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@given(
    case=nms_cases(max_n=30),
    sigma=st.sampled_from([0.0, 0.1, 0.5, 1.0, 3.0]),
    iou_threshold=iou_thresholds(),
    limit=st.one_of(st.none(), st.integers(0, 35)),
    score_threshold=st.sampled_from([float("-inf"), 0.0, 0.05, 0.2, 0.5]),
)
def test_soft_nms_matches_tf(tf, backend, case, sigma, iou_threshold, limit, score_threshold):
    boxes, scores = case
    n = boxes.shape[0]
    idx, out = soft_nms(boxes, scores, limit, iou_threshold, score_threshold, sigma,
                        backend=backend)
    want_idx, want_out = tf_soft_nms(tf, boxes, scores, n if limit is None else limit,
                                     iou_threshold, score_threshold, sigma)
    assert_same(idx, want_idx)
    assert_same(out, want_out)  # bitwise: same float32 order of operations and expf


@pytest.mark.parametrize("sigma", [0.1, 0.5, 1.0])
def test_soft_nms_rpn_like_matches_tf(tf, sigma):
    boxes, scores = rpn_like_boxes(400, 4)
    for backend in BACKENDS:
        idx, out = soft_nms(boxes, scores, 150, 0.5, 0.05, sigma, backend=backend)
        want_idx, want_out = tf_soft_nms(tf, boxes, scores, 150, 0.5, 0.05, sigma)
        assert_same(idx, want_idx, err_msg=backend)
        assert_same(out, want_out, err_msg=backend)


def test_soft_nms_golden():
    # Two boxes with IoU 0.5 (see test_iou_exactly_at_threshold_is_kept), sigma 0.5:
    # the second decays by exp(-0.5 / 0.5 * 0.25) = exp(-0.25) and is re-queued, then selected.
    boxes = np.array([[0, 0, 1, 2], [0, 0, 1, 1]], dtype=np.float32)
    scores = np.array([0.9, 0.8], dtype=np.float32)
    for backend in BACKENDS:
        idx, out = soft_nms(boxes, scores, sigma=0.5, backend=backend)
        assert_same(idx, np.array([0, 1], dtype=np.int64))
        np.testing.assert_allclose(  # 1e-7: float32 rounding of the product and of exp
            out, np.array([0.9, 0.8 * np.exp(-0.25)], dtype=np.float32), rtol=1e-7, atol=0
        )


@pytest.mark.parametrize("backend", BACKENDS)
@given(case=nms_cases(), iou_threshold=iou_thresholds())
def test_soft_nms_with_sigma_zero_is_nms(backend, case, iou_threshold):
    boxes, scores = case
    idx, out = soft_nms(boxes, scores, None, iou_threshold, backend=backend)
    assert_same(idx, nms(boxes, scores, iou_threshold, backend=backend))
    # The scores are the original ones; TF multiplies each later selection by exp(0) = 1
    # with subnormals flushed (FTZ), so only a subnormal score changes, to 0, unless first.
    want = np.where(np.abs(scores) < np.finfo(np.float32).tiny, F32(0.0), scores)[idx]
    if idx.shape[0]:
        want[0] = scores[idx[0]]
    assert_same(out, want)


# ---------------------------------------------------------------------------------------------
# Class-batched NMS
# ---------------------------------------------------------------------------------------------


def per_class_expected(run, scores, classes):
    """Union of per-class results (``run(members) -> kept positions``), sorted by (-score, idx)."""
    parts = [np.zeros(0, np.int64)]
    for c in np.unique(classes):
        members = np.flatnonzero(classes == c)
        parts.append(members[run(members)])
    out = np.concatenate(parts)
    # Subnormal scores rank as 0, as everywhere in TF's NMS (DAZ).
    key = np.where(np.abs(scores) < np.finfo(np.float32).tiny, 0.0, scores.astype(np.float64))
    return out[np.lexsort((out, -key[out]))]


@pytest.mark.parametrize("backend", BACKENDS)
@given(
    case=nms_cases(),
    data=st.data(),
    iou_threshold=iou_thresholds(),
    limit=st.one_of(st.none(), st.integers(0, 6)),
    score_threshold=st.sampled_from([float("-inf"), 0.25]),
)
def test_batched_nms_is_per_class_nms(tf, backend, case, data, iou_threshold, limit,
                                      score_threshold):
    boxes, scores = case
    n = boxes.shape[0]
    classes = data.draw(st.lists(st.sampled_from([-3, 0, 2, 7]), min_size=n, max_size=n))
    classes = np.asarray(classes, dtype=np.int64)
    got = batched_nms(boxes, scores, classes, iou_threshold, limit, score_threshold,
                      backend=backend)

    def ours(m):
        return nms(boxes[m], scores[m], iou_threshold, limit, score_threshold, backend=backend)

    def theirs(m):
        k = m.shape[0] if limit is None else limit
        return tf_nms(tf, boxes[m], scores[m], k, iou_threshold, score_threshold)

    assert_same(got, per_class_expected(ours, scores, classes))
    assert_same(got, per_class_expected(theirs, scores, classes))


def test_batched_nms_rpn_like_cpu_matches_reference():
    boxes, scores = rpn_like_boxes(3000, 5)
    classes = np.random.default_rng(5).integers(0, 80, 3000)
    cpu = batched_nms(boxes, scores, classes, 0.5, 100, 0.05)
    assert_same(cpu, batched_nms(boxes, scores, classes, 0.5, 100, 0.05, backend="numpy"))


def test_batched_nms_golden():
    # Identical boxes in different classes do not suppress each other; in one class they do.
    boxes = np.array([[0, 0, 4, 4]] * 4, dtype=np.float32)
    scores = np.array([0.6, 0.9, 0.6, 0.8], dtype=np.float32)
    classes = np.array([1, 0, 0, 1])
    for backend in BACKENDS:
        got = batched_nms(boxes, scores, classes, 0.5, backend=backend)
        assert_same(got, np.array([1, 3], dtype=np.int64))
        got = batched_nms(boxes, scores, np.array([5, 6, 7, 8]), 0.5, backend=backend)
        assert_same(got, np.array([1, 3, 0, 2], dtype=np.int64))  # score, then index


# ---------------------------------------------------------------------------------------------
# Empty input and validation
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_inputs(tf, backend):
    boxes, scores = np.zeros((0, 4), np.float32), np.zeros(0, np.float32)
    assert_same(nms(boxes, scores, 0.5, backend=backend), np.zeros(0, np.int64))
    assert_same(nms(boxes, scores, 0.5, 10, backend=backend), tf_nms(tf, boxes, scores, 10, 0.5),
                dtype=np.int64)
    idx, out = soft_nms(boxes, scores, 5, sigma=0.5, backend=backend)
    assert_same(idx, np.zeros(0, np.int64))
    assert_same(out, np.zeros(0, np.float32))
    assert_same(batched_nms(boxes, scores, np.zeros(0, np.int64), 0.5, backend=backend),
                np.zeros(0, np.int64))
    # Nothing above the score threshold, or no room in the output.
    b1, s1 = np.array([[0, 0, 1, 1]], np.float32), np.array([0.2], np.float32)
    assert_same(nms(b1, s1, 0.5, score_threshold=0.5, backend=backend), np.zeros(0, np.int64))
    assert_same(nms(b1, s1, 0.5, max_output_size=0, backend=backend), np.zeros(0, np.int64))
    idx, out = soft_nms(b1, s1, 0, backend=backend)
    assert_same(out, np.zeros(0, np.float32))


BOXES = np.array([[0, 0, 1, 1], [0, 0, 2, 2]], dtype=np.float32)
SCORES = np.array([0.5, 0.6], dtype=np.float32)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"boxes": np.zeros((2, 3), np.float32)}, "boxes must have 4 values"),
        ({"boxes": np.zeros(8, np.float32)}, "boxes must have 2 dimensions"),
        ({"boxes": np.array([["a"] * 4] * 2)}, "boxes must be a real numeric array"),
        ({"boxes": np.array([[0, 0, np.nan, 1], [0, 0, 1, 1]], np.float32)}, "non-finite"),
        ({"boxes": np.array([[0, 0, np.inf, 1], [0, 0, 1, 1]], np.float32)}, "non-finite"),
        ({"scores": np.zeros(3, np.float32)}, "scores has 3 entries but boxes has 2 rows"),
        ({"scores": np.zeros((2, 1), np.float32)}, "scores must have 1 dimensions"),
        ({"iou_threshold": -0.1}, r"iou_threshold must be in \[0, 1\]"),
        ({"iou_threshold": 1.5}, r"iou_threshold must be in \[0, 1\]"),
        ({"iou_threshold": float("nan")}, r"iou_threshold must be in \[0, 1\]"),
        ({"max_output_size": -1},
         r"max_output_size(_per_class)? must be an integer in \[0, 9223372036854775807\]"),
        ({"max_output_size": 2.5}, "max_output_size(_per_class)? must be an integer"),
        ({"score_threshold": float("nan")}, "score_threshold must be a number"),
        ({"backend": "tpu"}, "backend must be one of"),
    ],
)
@pytest.mark.parametrize("op", ["nms", "soft_nms", "batched_nms"])
def test_validation(op, kwargs, match):
    args = {"boxes": BOXES, "scores": SCORES, "iou_threshold": 0.5, "max_output_size": None,
            "score_threshold": float("-inf"), "backend": "cpu"}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        if op == "nms":
            nms(**args)
        elif op == "soft_nms":
            soft_nms(**args)
        else:
            limit = args.pop("max_output_size")
            with_classes = {**args, "classes": np.zeros(BOXES.shape[0], np.int64)}
            batched_nms(**with_classes, max_output_size_per_class=limit)


@pytest.mark.parametrize("sigma", [-0.5, float("nan"), "big"])
def test_soft_nms_rejects_bad_sigma(sigma):
    with pytest.raises(ValueError, match="sigma must be >= 0"):
        soft_nms(BOXES, SCORES, sigma=sigma)


@pytest.mark.parametrize(
    ("classes", "match"),
    [
        (np.zeros(3, np.int64), "classes has 3 entries but boxes has 2 rows"),
        (np.zeros((2, 1), np.int64), "classes must be a 1-D integer array"),
        (np.array([0.0, 1.0]), "classes must be a 1-D integer array"),
    ],
)
def test_batched_nms_rejects_bad_classes(classes, match):
    with pytest.raises(ValueError, match=match):
        batched_nms(BOXES, SCORES, classes, 0.5)


def test_batched_nms_names_its_limit():
    with pytest.raises(ValueError, match=r"max_output_size_per_class must be an integer in \[0, "):
        batched_nms(BOXES, SCORES, np.zeros(2, np.int64), 0.5, -3)


def test_cuda_backend_without_a_kernel_says_so():
    # The front door looks up npfrcnn.kernels.cuda.nms.<kernel> on first use; a missing one is a
    # ValueError naming the fix, not an ImportError or AttributeError.
    try:
        module = importlib.import_module("npfrcnn.kernels.cuda.nms")
    except ImportError:
        module = None
    if module is not None and hasattr(module, "soft_nms_kernel"):
        pytest.skip("a CUDA soft-NMS kernel exists; its own tests cover backend='cuda'")
    if module is not None and not module._cuda.cuda.is_available():
        pytest.skip("neither a GPU nor the simulator: the device check answers first")
    with pytest.raises(ValueError, match="backend='cuda' has no kernel for nms"):
        soft_nms(BOXES, SCORES, sigma=0.5, backend="cuda")


@given(boxes=xyxy_boxes(min_n=1, max_n=5), data=st.data())
def test_any_float_dtype_is_converted_to_float32(boxes, data):
    scores = data.draw(scores_for(boxes.shape[0]))
    got = nms(boxes.astype(np.float64), scores.astype(np.float64), 0.5)
    assert_same(got, nms(boxes, scores, 0.5))
