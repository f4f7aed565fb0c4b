"""npfrcnn.losses against TensorFlow (values and tf.GradientTape gradients), plus hand-worked
values and the normalisation edge cases.

The TF comparisons run in float64 on float32-representable inputs, so the two sides differ
only by float64 rounding: tolerance 1e-12 relative (plus 1e-15 absolute for exact zeros).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from npfrcnn.losses import (
    rcnn_box_loss,
    sigmoid_cross_entropy,
    smooth_l1,
    smooth_l1_loss,
    softmax_cross_entropy,
)
from tests.helpers import assert_same
from tests.strategies import f32

RTOL = 1e-12  # float64 on both sides; only summation order and libm differ
ATOL = 1e-15


@st.composite
def logits_and_labels(draw, max_rows: int = 12, max_classes: int = 6):
    n = draw(st.integers(0, max_rows))
    c = draw(st.integers(2, max_classes))
    logits = draw(hnp.arrays(np.float32, (n, c), elements=f32(-30.0, 30.0)))
    labels = draw(hnp.arrays(np.int64, (n,), elements=st.integers(-1, c - 1)))
    return logits, labels


@st.composite
def regression_pairs(draw, max_rows: int = 10, width: int = 4):
    n = draw(st.integers(0, max_rows))
    near = st.sampled_from([0.0, 1 / 9, -1 / 9, 1.0, -1.0, 0.05])
    elem = st.one_of(near, f32(-3.0, 3.0)).map(np.float32)
    pred = draw(hnp.arrays(np.float32, (n, width), elements=elem))
    target = draw(hnp.arrays(np.float32, (n, width), elements=elem))
    return pred, target


def _tape(tf, fn, x):
    xt = tf.constant(x, dtype=tf.float64)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        loss = fn(xt)
    return float(loss.numpy()), tape.gradient(loss, xt).numpy()


# ----------------------------------------------------------------------------- softmax CE


@given(data=logits_and_labels())
def test_softmax_cross_entropy_matches_tf(tf, data):
    logits, labels = data
    keep = labels >= 0
    loss, grad = softmax_cross_entropy(logits.astype(np.float64), labels)
    if not keep.any():
        assert loss == 0.0
        assert_same(grad, np.zeros(logits.shape))
        return

    def fn(x):
        ce = tf.nn.sparse_softmax_cross_entropy_with_logits(
            labels=tf.constant(labels[keep]), logits=tf.boolean_mask(x, keep)
        )
        return tf.reduce_mean(ce)

    tf_loss, tf_grad = _tape(tf, fn, logits)
    assert math.isclose(loss, tf_loss, rel_tol=RTOL, abs_tol=ATOL)
    assert_same(grad, tf_grad, rtol=RTOL, atol=ATOL)


def test_softmax_cross_entropy_float32_grad_dtype_and_hand_value():
    logits = np.array([[0.0, 0.0], [2.0, 0.0], [5.0, 1.0]], dtype=np.float32)
    labels = np.array([1, 0, -1])
    loss, grad = softmax_cross_entropy(logits, labels)
    # rows 0 and 1: log 2 and log(1 + e^-2); mean of the two
    assert math.isclose(loss, (math.log(2) + math.log1p(math.exp(-2))) / 2, rel_tol=1e-15)
    s = 1 / (1 + math.exp(-2))  # softmax(row 1)[0]
    expected = np.array([[0.25, -0.25], [(s - 1) / 2, (1 - s) / 2], [0, 0]], dtype=np.float32)
    assert_same(grad, expected, rtol=1e-7, atol=0)  # float64 result rounded to float32


# ----------------------------------------------------------------------------- sigmoid CE


@given(
    data=st.integers(0, 30).flatmap(
        lambda n: st.tuples(
            hnp.arrays(np.float32, (n,), elements=f32(-40.0, 40.0)),
            hnp.arrays(np.float32, (n,), elements=st.sampled_from([-1.0, 0.0, 1.0, 0.25])),
        )
    )
)
def test_sigmoid_cross_entropy_matches_tf(tf, data):
    logits, labels = data
    keep = labels >= 0
    loss, grad = sigmoid_cross_entropy(logits.astype(np.float64), labels)
    if not keep.any():
        assert loss == 0.0
        assert_same(grad, np.zeros(logits.shape))
        return

    def fn(x):
        ce = tf.nn.sigmoid_cross_entropy_with_logits(
            labels=tf.constant(labels[keep], dtype=tf.float64), logits=tf.boolean_mask(x, keep)
        )
        return tf.reduce_mean(ce)

    tf_loss, tf_grad = _tape(tf, fn, logits)
    assert math.isclose(loss, tf_loss, rel_tol=RTOL, abs_tol=ATOL)
    assert_same(grad, tf_grad, rtol=RTOL, atol=ATOL)


def test_sigmoid_cross_entropy_large_logits_stay_finite():
    loss, grad = sigmoid_cross_entropy(np.array([1000.0, -1000.0]), np.array([0.0, 1.0]))
    assert math.isclose(loss, 1000.0, rel_tol=1e-15)
    assert_same(grad, np.array([0.5, -0.5]))


# ----------------------------------------------------------------------------- smooth L1


def test_smooth_l1_hand_values():
    # sigma 3: switch at 1/9. 0.1 is quadratic: 0.5 * 9 * 0.01; 0.5 is linear: 0.5 - 0.5 / 9.
    value, deriv = smooth_l1(np.array([0.1, 0.5, -0.5, 0.0]), sigma=3.0)
    assert_same(value, np.array([0.045, 0.5 - 0.5 / 9, 0.5 - 0.5 / 9, 0.0]), rtol=1e-15)
    assert_same(deriv, np.array([0.9, 1.0, -1.0, 0.0]), rtol=1e-15)


@pytest.mark.parametrize("sigma", [1.0, 3.0])
@given(data=regression_pairs(), row_mask=st.lists(st.booleans(), min_size=10, max_size=10))
def test_smooth_l1_rows_matches_tf_huber(tf, sigma, data, row_mask):
    """Luminoth: sum over the 4 coordinates, mean over the selected rows.

    ``smooth_l1(d, sigma) = sigma**2 * huber(d, delta=1/sigma**2)``; Keras' Huber averages the
    last axis, so the row sum is ``4 *`` its per-row value.
    """
    pred, target = data
    mask = np.asarray(row_mask[: pred.shape[0]], dtype=bool)
    loss, grad = smooth_l1_loss(
        pred.astype(np.float64), target, sigma=sigma, mask=mask, reduction="rows"
    )
    if not mask.any():
        assert loss == 0.0
        assert_same(grad, np.zeros(pred.shape))
        return
    huber = tf.keras.losses.Huber(delta=1.0 / sigma**2, reduction="none", dtype="float64")
    t = tf.constant(target[mask], dtype=tf.float64)

    def fn(x):
        per_row = huber(t, tf.boolean_mask(x, mask)) * 4.0 * sigma**2
        return tf.reduce_mean(per_row)

    tf_loss, tf_grad = _tape(tf, fn, pred)
    assert math.isclose(loss, tf_loss, rel_tol=RTOL, abs_tol=ATOL)
    assert_same(grad, tf_grad, rtol=RTOL, atol=ATOL)


@given(data=regression_pairs())
def test_smooth_l1_elements_matches_wheat_huber_gtz(tf, data):
    """The wheat write-up's ``huberGTZ``: elements with a non-zero target, Huber(1), mean."""
    pred, target = data
    mask = target != 0
    loss, grad = smooth_l1_loss(
        pred.astype(np.float64), target, sigma=1.0, mask=mask, reduction="elements"
    )
    if not mask.any():
        assert loss == 0.0
        return
    huber = tf.keras.losses.Huber(delta=1.0, reduction="sum_over_batch_size", dtype="float64")
    t = tf.reshape(tf.constant(target[mask], dtype=tf.float64), (-1, 1))

    def fn(x):
        return huber(t, tf.reshape(tf.boolean_mask(x, mask), (-1, 1)))

    tf_loss, tf_grad = _tape(tf, fn, pred)
    assert math.isclose(loss, tf_loss, rel_tol=RTOL, abs_tol=ATOL)
    assert_same(grad, tf_grad, rtol=RTOL, atol=ATOL)


@given(
    data=st.integers(1, 4).flatmap(
        lambda k: st.tuples(
            regression_pairs(width=4 * k),
            st.lists(st.integers(-1, k), min_size=10, max_size=10),
            st.just(k),
        )
    )
)
def test_rcnn_box_loss_matches_luminoth_one_hot_mask(tf, data):
    (pred, target_wide), labels_list, k = data
    n = pred.shape[0]
    labels = np.asarray(labels_list[:n], dtype=np.int64)
    targets = target_wide[:, :4]
    loss, grad = rcnn_box_loss(pred.astype(np.float64), labels, targets, sigma=1.0)
    fg = labels > 0
    if not fg.any():
        assert loss == 0.0
        assert_same(grad, np.zeros(pred.shape))
        return
    huber = tf.keras.losses.Huber(delta=1.0, reduction="none", dtype="float64")
    one_hot = tf.one_hot(labels[fg] - 1, depth=k, dtype=tf.float64)
    flat_mask = tf.cast(tf.reshape(one_hot, [-1]), tf.bool)
    t = tf.constant(targets[fg], dtype=tf.float64)

    def fn(x):  # rcnn.py::loss: reshape to [-1, 4], keep the one-hot class rows
        picked = tf.boolean_mask(tf.reshape(tf.boolean_mask(x, fg), [-1, 4]), flat_mask)
        return tf.reduce_mean(huber(t, picked) * 4.0)

    tf_loss, tf_grad = _tape(tf, fn, pred)
    assert math.isclose(loss, tf_loss, rel_tol=RTOL, abs_tol=ATOL)
    assert_same(grad, tf_grad, rtol=RTOL, atol=ATOL)


@given(data=regression_pairs())
def test_float32_inputs_match_tf_float32(tf, data):
    """float32 in, float32 gradient out; against TF float32 (a few float32 ulp apart)."""
    pred, target = data
    loss, grad = smooth_l1_loss(pred, target, sigma=3.0)
    assert grad.dtype == np.float32
    if pred.shape[0] == 0:
        return
    huber = tf.keras.losses.Huber(delta=1.0 / 9.0, reduction="none")
    t = tf.constant(target)
    xt = tf.constant(pred)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        tf_loss = tf.reduce_mean(huber(t, xt) * 4.0 * 9.0)
    tf_grad = tape.gradient(tf_loss, xt).numpy()
    # float32 TF against a float64 computation rounded once: a few float32 ulp (2**-23 ~ 1.2e-7)
    # of the result, plus the rounding of 1/9 in float32 for values near 0.
    assert math.isclose(loss, float(tf_loss.numpy()), rel_tol=1e-5, abs_tol=1e-6)
    assert_same(grad, tf_grad, rtol=1e-5, atol=1e-6)


def test_bad_input_messages():
    with pytest.raises(ValueError, match="labels must be < C"):
        softmax_cross_entropy(np.zeros((2, 2)), np.array([0, 2]))
    with pytest.raises(ValueError, match="mask must be"):
        smooth_l1_loss(np.zeros((2, 4)), np.zeros((2, 4)), mask=np.ones(3, dtype=bool))
    with pytest.raises(ValueError, match="reduction"):
        smooth_l1_loss(np.zeros((2, 4)), np.zeros((2, 4)), reduction="sum")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="sigma"):
        smooth_l1(np.zeros(3), sigma=0.0)
    with pytest.raises(ValueError, match="bbox_pred"):
        rcnn_box_loss(np.zeros((2, 6)), np.zeros(2, np.int64), np.zeros((2, 4)))
    with pytest.raises(ValueError, match="logits"):
        sigmoid_cross_entropy(np.array([np.nan]), np.array([1.0]))
