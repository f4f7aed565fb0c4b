"""top_k (npfrcnn.ops.topk) against tf.nn.top_k, hand-worked cases and the error contract."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import assert_same
from hypothesis import given
from strategies import topk_cases

from npfrcnn.ops import top_k


def tf_top_k(tf, values, k):
    out = tf.nn.top_k(values, k)
    return out.values.numpy(), out.indices.numpy().astype(np.int64)


def test_golden_ties_lower_index_first():
    values, indices = top_k(np.array([3.0, 1.0, 3.0, 2.0, 3.0], np.float32), 4)
    assert_same(values, np.array([3.0, 3.0, 3.0, 2.0], np.float32))
    assert_same(indices, np.array([0, 2, 4, 3], np.int64))


@given(case=topk_cases())
def test_matches_tf(tf, case):
    values, k = case
    got_values, got_indices = top_k(values, k)
    want_values, want_indices = tf_top_k(tf, values, k)
    assert_same(got_indices, want_indices)
    assert_same(got_values, want_values)  # bitwise: the same entries, -0.0 included


@pytest.mark.parametrize("dtype", [np.float64, np.float16, np.int32, np.int64])
def test_other_dtypes_match_tf(tf, dtype):
    values = np.array([[2, 7, 7, -1, 0, 7, 2], [5, 5, 5, 5, 5, 5, 5]], dtype=dtype)
    got_values, got_indices = top_k(values, 5)
    want_values, want_indices = tf_top_k(tf, values, 5)
    assert_same(got_indices, want_indices)
    assert_same(got_values, want_values)


def test_signed_zeros_tie(tf):
    values = np.array([0.0, -0.0, 0.0, -0.0, -1.0], np.float32)
    got_values, got_indices = top_k(values, 4)
    assert_same(got_indices, np.array([0, 1, 2, 3], np.int64))
    assert_same(got_indices, tf_top_k(tf, values, 4)[1])
    assert_same(got_values.view(np.int32), values[:4].view(np.int32))  # signs kept


def test_empty():
    v, i = top_k(np.zeros(0, np.float32), 0)
    assert_same(v, np.zeros(0, np.float32))
    assert_same(i, np.zeros(0, np.int64))
    v, i = top_k(np.zeros((0, 5), np.float32), 2)
    assert_same(v, np.zeros((0, 2), np.float32))
    assert_same(i, np.zeros((0, 2), np.int64))
    v, i = top_k(np.ones((3, 5), np.float32), 0)
    assert_same(i, np.zeros((3, 0), np.int64))


def test_k_larger_than_n_is_an_error_as_in_tf(tf):
    values = np.array([1.0, 2.0], np.float32)
    with pytest.raises(tf.errors.InvalidArgumentError):
        tf.nn.top_k(values, 3)
    with pytest.raises(ValueError, match=r"k must be at most .* \(2\), got 3; pass min\(k, 2\)"):
        top_k(values, 3)


@pytest.mark.parametrize(
    ("values", "k", "match"),
    [
        (np.array([1.0, np.nan], np.float32), 1, "values contains NaN"),
        (np.float32(1.0), 1, "values must be at least 1-D"),
        (np.array(["a", "b"]), 1, "values must be a real numeric array"),
        (np.array([1.0, 2.0]), -1, "k must be a non-negative integer"),
        (np.array([1.0, 2.0]), 1.0, "k must be an integer"),
    ],
)
def test_validation(values, k, match):
    with pytest.raises(ValueError, match=match):
        top_k(values, k)


@pytest.mark.parametrize(
    "values",
    [
        np.array([0.0, 5e-324, -0.0, 1e-310, -1e-310, 1.0], np.float64),  # subnormals tie with 0
        np.array([0.0, 6e-8, -0.0, 1e-6, -6e-8, 1.0], np.float16),  # float16 ones do not
    ],
)
def test_subnormals_match_tf(tf, values):
    got_values, got_indices = top_k(values, values.shape[0])
    want_values, want_indices = tf_top_k(tf, values, values.shape[0])
    assert_same(got_indices, want_indices)
    assert_same(got_values, want_values)
