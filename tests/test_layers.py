"""conv2d and the small layers (npfrcnn.ops.conv, npfrcnn.ops.layers) against TensorFlow.

Tolerances, and why:

* Integer-valued inputs in [-3, 3] make every partial sum of a dot product an exact float32
  integer, so conv2d / dense must be **bitwise** equal to TF whatever the summation order:
  these tests check indexing, padding, strides, dilations and chunking exactly.
* Random float inputs: BLAS and TF's Eigen kernel sum the ``K = kh*kw*Cin`` products in
  different orders. Each result is within ``gamma_K * sum|x||w|`` of the exact value
  (``gamma_K ~ K * eps32``, Higham's bound for recursive or blocked summation), so two of them
  differ by at most ``2 * K * eps32 * (|x| conv |w|)``, elementwise; that is the tolerance.
* batch_norm: the same ops in the same order as ``tf.nn.batch_normalization``; bitwise where
  TF's ``rsqrt`` (Eigen fast-math: hardware estimate + one Newton step) is correctly rounded,
  otherwise within the ulps that ``rsqrt`` differs by (measured <= 3, allowed 4).
* softmax: Eigen's polynomial ``exp`` and NumPy's SIMD ``exp`` differ by a few ulp (measured
  <= 3) and the sums are ordered differently: rtol 1e-6 (~8 ulp of float32).
* mean: summation order only: ``2 * n * eps32 * mean(|x|)``.
* max_pool2d, relu, relu6: no rounding at all, bitwise.
"""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from hypothesis import given

from npfrcnn.ops import batch_norm, conv2d, dense, max_pool2d, mean, relu, relu6, softmax
from npfrcnn.ops import conv as conv_module
from tests.helpers import assert_same
from tests.strategies import conv_cases, pool_cases

EPS32 = float(np.finfo(np.float32).eps)


def _tf_conv(tf, x, kernel, strides, padding, dilations=1):
    """tf.nn.conv2d, translating our explicit ((t, b), (l, r)) padding to TF's NHWC list."""
    if not isinstance(padding, str):
        (top, bottom), (left, right) = padding
        padding = [[0, 0], [top, bottom], [left, right], [0, 0]]
    return tf.nn.conv2d(x, kernel, strides=strides, padding=padding, dilations=dilations).numpy()


def _ints(rng, shape):
    return rng.integers(-3, 4, shape).astype(np.float32)


# ----------------------------------------------------------------------------- conv2d golden


def test_conv2d_hand_worked_valid():
    x = np.arange(1, 10, dtype=np.float32).reshape(1, 3, 3, 1)  # [[1,2,3],[4,5,6],[7,8,9]]
    k = np.ones((2, 2, 1, 1), dtype=np.float32)
    expected = np.array([[12, 16], [24, 28]], dtype=np.float32).reshape(1, 2, 2, 1)
    assert_same(conv2d(x, k), expected)
    # bias is added per output channel
    assert_same(conv2d(x, k, bias=np.array([0.5], np.float32)), expected + np.float32(0.5))


def test_conv2d_hand_worked_same_stride2_pads_more_after():
    # H = W = 4, k = 3, s = 2: total pad = (2 - 1) * 2 + 3 - 4 = 1 -> 0 before, 1 after.
    x = np.arange(1, 17, dtype=np.float32).reshape(1, 4, 4, 1)
    k = np.ones((3, 3, 1, 1), dtype=np.float32)
    # windows: rows 0-2 / cols 0-2; rows 0-2 / cols 2-3 (+pad); rows 2-3 / cols 0-2; rows 2-3 / 2-3
    expected = np.array(
        [
            [1 + 2 + 3 + 5 + 6 + 7 + 9 + 10 + 11, 3 + 4 + 7 + 8 + 11 + 12],
            [9 + 10 + 11 + 13 + 14 + 15, 11 + 12 + 15 + 16],
        ],
        dtype=np.float32,
    ).reshape(1, 2, 2, 1)
    assert_same(conv2d(x, k, strides=2, padding="SAME"), expected)


def test_conv2d_hand_worked_dilation_and_channels():
    # 1x1x3 output of a 2-tap dilated kernel over 2 input channels -> 2 output channels.
    x = np.zeros((1, 1, 5, 2), dtype=np.float32)
    x[0, 0, :, 0] = [1, 2, 3, 4, 5]
    x[0, 0, :, 1] = [10, 20, 30, 40, 50]
    k = np.zeros((1, 2, 2, 2), dtype=np.float32)
    k[0, 0, 0, 0], k[0, 1, 0, 0] = 1, 1  # out0 = x0[i] + x0[i + 2]
    k[0, 1, 1, 1] = -1  # out1 = -x1[i + 2]
    out = conv2d(x, k, dilations=(1, 2))
    expected = np.array([[[[4, -30], [6, -40], [8, -50]]]], dtype=np.float32)
    assert_same(out, expected)


# ----------------------------------------------------------------------------- conv2d vs TF

CONV_CASES = [
    # x shape, kernel shape, strides, padding, dilations
    ((2, 9, 11, 3), (3, 3, 3, 4), 1, "SAME", 1),
    ((2, 9, 11, 3), (3, 3, 3, 4), 2, "SAME", 1),
    ((1, 10, 12, 5), (7, 7, 5, 6), 2, "VALID", 1),
    ((1, 11, 12, 5), (7, 7, 5, 6), 2, ((3, 3), (3, 3)), 1),  # ResNet conv1 (conv2d_same)
    ((1, 10, 9, 4), (3, 3, 4, 5), 2, ((1, 1), (1, 1)), 1),  # conv2d_same 3x3/2
    ((1, 10, 12, 5), (3, 3, 5, 6), 1, "SAME", 2),
    ((1, 10, 12, 5), (3, 2, 5, 6), 1, "VALID", (2, 3)),
    ((2, 8, 9, 5), (1, 1, 5, 6), 2, "SAME", 1),  # strided 1x1 shortcut
    ((2, 8, 9, 5), (1, 1, 5, 6), 1, "VALID", 1),
    ((2, 8, 9, 5), (2, 3, 5, 6), (2, 3), "SAME", 1),  # even kernel: asymmetric SAME
    ((1, 6, 7, 2), (1, 1, 2, 3), 1, ((1, 2), (0, 1)), 1),  # padded 1x1
]


@pytest.mark.parametrize("xs,ks,strides,padding,dilations", CONV_CASES)
def test_conv2d_bitwise_on_exact_integers(tf, xs, ks, strides, padding, dilations):
    rng = np.random.default_rng(1)
    x, k = _ints(rng, xs), _ints(rng, ks)
    bias = _ints(rng, ks[3:])
    expected = _tf_conv(tf, x, k, strides, padding, dilations)
    expected = tf.nn.bias_add(expected, bias).numpy()
    for backend in ("numpy", "cpu"):
        out = conv2d(x, k, bias, strides=strides, padding=padding, dilations=dilations,
                     backend=backend)
        assert_same(out, expected, err_msg=backend)


@given(conv_cases())
def test_conv2d_property_bitwise_vs_tf(tf, case):
    expected = _tf_conv(tf, case["x"], case["kernel"], case["strides"], case["padding"],
                        case["dilations"])
    out = conv2d(case["x"], case["kernel"], strides=case["strides"], padding=case["padding"],
                 dilations=case["dilations"])
    assert_same(out, expected)


@pytest.mark.parametrize("xs,ks,strides,padding,dilations", CONV_CASES[:6])
def test_conv2d_random_floats_within_summation_bound(tf, xs, ks, strides, padding, dilations):
    rng = np.random.default_rng(2)
    x = rng.standard_normal(xs).astype(np.float32)
    k = rng.standard_normal(ks).astype(np.float32)
    expected = _tf_conv(tf, x, k, strides, padding, dilations)
    # |x| conv |w| in float64 by TF: the scale of the rounding error of each output.
    scale = _tf_conv(tf, np.abs(x).astype(np.float64), np.abs(k).astype(np.float64), strides,
                     padding, dilations)
    kdim = ks[0] * ks[1] * ks[2]
    bound = 2 * kdim * EPS32 * scale
    out = conv2d(x, k, strides=strides, padding=padding, dilations=dilations)
    assert out.shape == expected.shape and out.dtype == np.float32
    assert np.all(np.abs(out.astype(np.float64) - expected) <= bound)


@pytest.mark.parametrize("budget", [1, 3000, 20000])
def test_conv2d_chunking_is_exact(tf, monkeypatch, budget):
    """Tiny budgets force row chunks (1 row, a few rows) and multi-image chunks."""
    rng = np.random.default_rng(3)
    x, k = _ints(rng, (3, 9, 10, 4)), _ints(rng, (3, 3, 4, 5))
    monkeypatch.setattr(conv_module, "IM2COL_BUDGET_BYTES", budget)
    for padding in ("SAME", "VALID"):
        for strides in (1, 2):
            assert_same(conv2d(x, k, strides=strides, padding=padding),
                        _tf_conv(tf, x, k, strides, padding))


def test_conv2d_resnet_conv1_memory_stays_bounded():
    """conv1 of ResNet on a 1000x600 image: the im2col buffer stays within the budget.

    Without chunking the patch matrix alone would be 300*500*147*4 = 88 MB.
    """
    x = np.zeros((1, 600, 1000, 3), dtype=np.float32)
    k = np.zeros((7, 7, 3, 64), dtype=np.float32)
    out_bytes = 300 * 500 * 64 * 4
    padded_bytes = 606 * 1006 * 3 * 4
    tracemalloc.start()
    try:
        out = conv2d(x, k, strides=2, padding=((3, 3), (3, 3)))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert out.shape == (1, 300, 500, 64)
    slack = 4 * 2**20
    assert peak <= out_bytes + padded_bytes + conv_module.IM2COL_BUDGET_BYTES + slack


def test_conv2d_empty_batch():
    out = conv2d(np.zeros((0, 9, 8, 3), np.float32), np.zeros((3, 3, 3, 5), np.float32),
                 strides=2, padding="SAME")
    assert_same(out, np.zeros((0, 5, 4, 5), np.float32))


def test_conv2d_converts_dtype():
    x = np.arange(6, dtype=np.int64).reshape(1, 1, 6, 1)
    k = np.ones((1, 2, 1, 1), dtype=np.float64)
    assert_same(conv2d(x, k), np.array([1, 3, 5, 7, 9], np.float32).reshape(1, 1, 5, 1))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"x": np.zeros((4, 4, 3), np.float32)}, "x must have 4 dimensions"),
        ({"kernel": np.zeros((3, 3, 3), np.float32)}, "kernel must have 4 dimensions"),
        ({"kernel": np.zeros((3, 3, 2, 4), np.float32)}, "input channels"),
        ({"bias": np.zeros(5, np.float32)}, "bias has 5 values"),
        ({"padding": "same-ish"}, "padding must be"),
        ({"padding": ((1, 1),)}, "padding must be"),
        ({"padding": ((1, -1), (0, 0))}, "non-negative"),
        ({"strides": 0}, "strides must be a positive integer"),
        ({"strides": (1, 2, 3)}, "strides must be"),
        ({"dilations": -1}, "dilations must be a positive integer"),
        ({"backend": "cuda"}, "backend must be one of"),
        ({"x": np.zeros((1, 2, 2, 3), np.float32)}, "smaller than the dilated kernel"),
        ({"x": np.zeros((1, 4, 4, 3), dtype=complex)}, "real numeric array"),
    ],
)
def test_conv2d_validation(kwargs, match):
    args = {
        "x": np.zeros((1, 4, 4, 3), np.float32),
        "kernel": np.zeros((3, 3, 3, 4), np.float32),
        "bias": None,
    }
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        conv2d(**args)


# ----------------------------------------------------------------------------- batch_norm


def test_batch_norm_hand_worked():
    # var + eps = 4 and 0.25 -> 1/sqrt = 0.5 and 2 (exact); times scale [2, 1] -> inv = [1, 2]
    # y = x * inv + (offset - mean * inv) = x * [1, 2] + ([1, -1] - [3, 4]) = x * [1, 2] - [2, 5]
    x = np.array([[1, 2], [0, -1]], np.float32)
    out = batch_norm(x, mean=[3, 2], variance=[4, 0.25], offset=[1, -1], scale=[2, 1],
                     variance_epsilon=0.0)
    assert_same(out, np.array([[-1, -1], [-2, -7]], np.float32))
    # no scale, no offset: inv = [0.5, 2]; y = x * inv - mean * inv
    out = batch_norm(x, mean=[3, 2], variance=[4, 0.25], offset=None, scale=None,
                     variance_epsilon=0.0)
    assert_same(out, np.array([[-1, 0], [-1.5, -6]], np.float32))


def _bn_inputs(rng, c=512):
    x = rng.standard_normal((2, 5, 7, c)).astype(np.float32) * 4
    m = rng.standard_normal(c).astype(np.float32)
    v = (rng.random(c) * 3 + 1e-3).astype(np.float32)
    b = rng.standard_normal(c).astype(np.float32)
    g = rng.standard_normal(c).astype(np.float32)
    return x, m, v, b, g


def test_batch_norm_bitwise_where_tf_rsqrt_is_correctly_rounded(tf):
    """Same ops in the same order as tf.nn.batch_normalization: bitwise on those channels."""
    rng = np.random.default_rng(4)
    x, m, v, b, g = _bn_inputs(rng)
    eps = np.float32(1e-5)
    tf_rsqrt = tf.math.rsqrt(tf.constant(v) + eps).numpy()
    exact = tf_rsqrt == np.float32(1) / np.sqrt(v + eps)
    assert exact.sum() > 50, "expected many channels where TF's rsqrt is correctly rounded"
    x, m, v, b, g = x[..., exact], m[exact], v[exact], b[exact], g[exact]
    expected = tf.nn.batch_normalization(x, m, v, b, g, 1e-5).numpy()
    assert_same(batch_norm(x, m, v, b, g, 1e-5), expected)
    expected = tf.nn.batch_normalization(x, m, v, None, None, 1e-5).numpy()
    assert_same(batch_norm(x, m, v, None, None, 1e-5), expected)


def test_batch_norm_close_to_tf_everywhere(tf):
    rng = np.random.default_rng(5)
    x, m, v, b, g = _bn_inputs(rng)
    expected = tf.nn.batch_normalization(x, m, v, b, g, 1e-5).numpy()
    out = batch_norm(x, m, v, b, g, 1e-5)
    inv = np.abs(g / np.sqrt(v.astype(np.float64) + 1e-5))
    # rsqrt differs by <= 4 ulp (relative 4 * eps) plus 4 float32 roundings.
    bound = 8 * EPS32 * (np.abs(x) * inv + np.abs(m) * inv + np.abs(b))
    assert out.shape == expected.shape and out.dtype == np.float32
    assert np.all(np.abs(out.astype(np.float64) - expected) <= bound)


def test_batch_norm_empty_and_validation():
    assert_same(batch_norm(np.zeros((0, 3, 3, 2)), [0, 0], [1, 1], [0, 0], [1, 1]),
                np.zeros((0, 3, 3, 2), np.float32))
    x = np.zeros((1, 2, 2, 3), np.float32)
    ok = {"mean": np.zeros(3), "variance": np.ones(3), "offset": np.zeros(3), "scale": np.ones(3)}
    for name in ok:
        bad = dict(ok, **{name: np.zeros(4)})
        with pytest.raises(ValueError, match=f"{name} must be a scalar or have shape \\[3\\]"):
            batch_norm(x, **bad)
    with pytest.raises(ValueError, match="variance_epsilon"):
        batch_norm(x, **ok, variance_epsilon=-1e-5)
    with pytest.raises(ValueError, match="at least one axis"):
        batch_norm(np.float32(1), 0, 1, 0, 1)


# ----------------------------------------------------------------------------- max_pool2d


def test_max_pool2d_same_pads_with_minus_inf_after():
    # All values negative: zero padding would leak 0s into the right/bottom windows.
    x = -np.arange(1, 17, dtype=np.float32).reshape(1, 4, 4, 1)
    # 3x3/2 SAME on 4: total pad 1 -> 0 before, 1 after. Windows rows/cols {0-2, 2-3}.
    expected = np.array([[-1, -3], [-9, -11]], np.float32).reshape(1, 2, 2, 1)
    assert_same(max_pool2d(x, 3, 2, "SAME"), expected)
    # VALID: only the window at (0, 0) fits.
    assert_same(max_pool2d(x, 3, 2, "VALID"), np.array([-1], np.float32).reshape(1, 1, 1, 1))


def test_max_pool2d_odd_size_same_pads_before():
    # H = W = 5, 3x3/2 SAME: out 3, total pad (3-1)*2 + 3 - 5 = 2 -> 1 before, 1 after.
    x = np.arange(25, dtype=np.float32).reshape(1, 5, 5, 1)
    expected = np.array([[6, 8, 9], [16, 18, 19], [21, 23, 24]], np.float32).reshape(1, 3, 3, 1)
    assert_same(max_pool2d(x, 3, 2, "SAME"), expected)


@pytest.mark.parametrize("padding", ["SAME", "VALID"])
@pytest.mark.parametrize("hw", [(149, 250), (150, 251), (14, 14)])
def test_max_pool2d_resnet_pool1_vs_tf(tf, padding, hw):
    rng = np.random.default_rng(6)
    x = rng.standard_normal((1, *hw, 8)).astype(np.float32)
    assert_same(max_pool2d(x, 3, 2, padding), tf.nn.max_pool2d(x, 3, 2, padding).numpy())
    assert_same(max_pool2d(x, 2, 2, padding), tf.nn.max_pool2d(x, 2, 2, padding).numpy())


@given(pool_cases())
def test_max_pool2d_property_vs_tf(tf, case):
    expected = tf.nn.max_pool2d(case["x"], case["ksize"], case["strides"], case["padding"])
    assert_same(max_pool2d(case["x"], case["ksize"], case["strides"], case["padding"]),
                expected.numpy())


def test_max_pool2d_empty_and_validation():
    assert_same(max_pool2d(np.zeros((0, 5, 6, 2)), 3, 2, "SAME"),
                np.zeros((0, 3, 3, 2), np.float32))
    x = np.zeros((1, 4, 4, 2), np.float32)
    with pytest.raises(ValueError, match="padding must be 'SAME' or 'VALID'"):
        max_pool2d(x, 2, 2, "FULL")
    with pytest.raises(ValueError, match="ksize must be a positive integer"):
        max_pool2d(x, 0, 2)
    with pytest.raises(ValueError, match="strides must be"):
        max_pool2d(x, 2, (1, 1, 1))
    with pytest.raises(ValueError, match="smaller than the 5x5 window"):
        max_pool2d(x, 5, 1, "VALID")
    with pytest.raises(ValueError, match="x must have 4 dimensions"):
        max_pool2d(np.zeros((4, 4, 2)), 2, 2)


# ----------------------------------------------------------------------------- activations


def test_relu_relu6_golden_and_vs_tf(tf):
    x = np.array([-7.0, -0.5, 0.0, 0.25, 5.999, 6.0, 6.5, 1e30, -np.inf, np.inf], np.float32)
    assert_same(relu(x), np.array([0, 0, 0, 0.25, 5.999, 6, 6.5, 1e30, 0, np.inf], np.float32))
    assert_same(relu6(x), np.array([0, 0, 0, 0.25, 5.999, 6, 6, 6, 0, 6], np.float32))
    rng = np.random.default_rng(7)
    y = (rng.standard_normal((3, 5, 7, 4)) * 8).astype(np.float32)
    assert_same(relu(y), tf.nn.relu(y).numpy())
    assert_same(relu6(y), tf.nn.relu6(y).numpy())
    assert_same(relu(np.zeros((0, 3))), np.zeros((0, 3), np.float32))


def test_softmax_golden():
    out = softmax(np.array([[0.0, np.log(3.0)], [1000.0, 0.0], [-1000.0, -1000.0]]))
    # exp(0) : exp(ln 3) = 1 : 3; the dominant logit saturates to exactly 1; equal logits 0.5
    expected = np.array([[0.25, 0.75], [1.0, 0.0], [0.5, 0.5]], np.float32)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[0], expected[0], rtol=1e-6)  # ln 3 rounded to float32
    assert_same(out[1:], expected[1:])


@pytest.mark.parametrize("shape,axis", [((2000, 2), -1), ((300, 81), 1), ((4, 6, 5), 0)])
def test_softmax_vs_tf(tf, shape, axis):
    rng = np.random.default_rng(8)
    x = (rng.standard_normal(shape) * 6).astype(np.float32)
    expected = tf.nn.softmax(x, axis=axis).numpy()
    out = softmax(x, axis=axis)
    assert out.shape == expected.shape and out.dtype == np.float32
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-37)
    # invariant: each slice sums to 1 within float32 rounding of a short sum
    np.testing.assert_allclose(out.sum(axis=axis, dtype=np.float64), 1.0, rtol=shape[axis] * EPS32)


def test_softmax_empty_and_validation():
    assert_same(softmax(np.zeros((0, 2))), np.zeros((0, 2), np.float32))
    with pytest.raises(ValueError, match="axis=2 is out of range"):
        softmax(np.zeros((3, 2)), axis=2)
    with pytest.raises(ValueError, match="at least one axis"):
        softmax(np.float32(0))


# ----------------------------------------------------------------------------- dense, mean


def test_dense_golden_and_bitwise_on_integers(tf):
    x = np.array([[1, 2, 3]], np.float32)
    k = np.array([[1, 0], [0, 1], [1, -1]], np.float32)
    assert_same(dense(x, k, [10, 20]), np.array([[14, 19]], np.float32))
    rng = np.random.default_rng(9)
    x, k, b = _ints(rng, (37, 2048)), _ints(rng, (2048, 81)), _ints(rng, (81,))
    expected = tf.nn.bias_add(tf.matmul(x, k), b).numpy()
    assert_same(dense(x, k, b), expected)


def test_dense_floats_within_summation_bound(tf):
    rng = np.random.default_rng(10)
    x = rng.standard_normal((20, 2048)).astype(np.float32)
    k = rng.standard_normal((2048, 320)).astype(np.float32)
    expected = tf.matmul(x, k).numpy()
    bound = 2 * 2048 * EPS32 * (np.abs(x).astype(np.float64) @ np.abs(k))
    out = dense(x, k)
    assert out.shape == expected.shape and out.dtype == np.float32
    assert np.all(np.abs(out.astype(np.float64) - expected) <= bound)


def test_dense_empty_and_validation():
    assert_same(dense(np.zeros((0, 4)), np.zeros((4, 3))), np.zeros((0, 3), np.float32))
    with pytest.raises(ValueError, match="kernel has 3 input rows but x has 4 features"):
        dense(np.zeros((2, 4)), np.zeros((3, 4)))
    with pytest.raises(ValueError, match="bias has 2 values"):
        dense(np.zeros((2, 4)), np.zeros((4, 3)), np.zeros(2))
    with pytest.raises(ValueError, match="x must have 2 dimensions"):
        dense(np.zeros((2, 1, 4)), np.zeros((4, 3)))


def test_mean_golden_and_vs_tf(tf):
    x = np.array([1, 2, 3, 4], np.float32).reshape(1, 2, 2, 1)
    assert_same(mean(x), np.array([[2.5]], np.float32))
    rng = np.random.default_rng(11)
    y = rng.standard_normal((30, 7, 7, 2048)).astype(np.float32)
    expected = tf.reduce_mean(y, axis=[1, 2]).numpy()
    out = mean(y)
    bound = 2 * 49 * EPS32 * np.abs(y).astype(np.float64).mean(axis=(1, 2))
    assert out.shape == expected.shape and out.dtype == np.float32
    assert np.all(np.abs(out.astype(np.float64) - expected) <= bound)


def test_mean_empty_and_validation():
    assert_same(mean(np.zeros((0, 7, 7, 3))), np.zeros((0, 3), np.float32))
    with pytest.raises(ValueError, match="empty axis"):
        mean(np.zeros((2, 0, 7, 3)))
    with pytest.raises(ValueError, match="out of range"):
        mean(np.zeros((2, 7, 7)), axis=(1, 3))
    with pytest.raises(ValueError, match="must not repeat"):
        mean(np.zeros((2, 7, 7, 3)), axis=(1, 1))
