"""``top_k``: ``tf.nn.top_k`` with ``sorted=True``, including its tie rule.

Used to keep the best-scoring RPN proposals before NMS (``keep_top_n``, spec 1.8) and the best
final detections (spec 1.3).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from npfrcnn._validate import check_positive_int

__all__ = ["top_k"]


def top_k(values: npt.ArrayLike, k: int) -> tuple[npt.NDArray[Any], npt.NDArray[np.int64]]:
    """The ``k`` largest entries along the last axis, as ``tf.nn.top_k(values, k)``.

    Args:
        values: ``[..., n]`` real numbers (at least 1-D). Floating dtypes are kept; integer and
            bool inputs too. Must not contain NaN: TF's output is then not even sorted (it puts
            NaN among the other values depending on position), so there is nothing to match.
            ``+inf`` and ``-inf`` are ordinary values.
        k: ``0 <= k <= n``. Unlike slicing, ``k > n`` is an error, as in TF.

    Returns:
        ``(top_values, indices)``: ``[..., k]`` values (``values``' dtype) sorted in descending
        order, and int64 ``[..., k]`` their indices along the last axis. Equal values appear
        lower index first (TF's documented rule); ``-0.0`` and ``0.0`` are equal, and so are
        float32/float64 subnormals and zero (TF's CPU runs with denormals-are-zero); the
        values themselves are returned unchanged. ``k == 0`` or an empty batch gives empty
        arrays of those shapes.
    """
    arr = np.asarray(values)
    if arr.dtype.kind not in "fiub":
        raise ValueError(
            f"values must be a real numeric array, got dtype {arr.dtype}; "
            f"pass e.g. np.asarray(values, dtype=np.float32)"
        )
    if arr.ndim == 0:
        raise ValueError("values must be at least 1-D, got a scalar; pass np.atleast_1d(values)")
    kk = check_positive_int("k", k, allow_zero=True)
    n = arr.shape[-1]
    if kk > n:
        raise ValueError(
            f"k must be at most the length of the last axis ({n}), got {k}; "
            f"pass min(k, {n}) to keep every entry"
        )
    if arr.dtype.kind == "f" and np.isnan(arr).any():
        raise ValueError(
            "values contains NaN, for which tf.nn.top_k has no defined order; "
            "replace NaN first (e.g. np.nan_to_num(values, nan=-np.inf))"
        )
    key = arr
    if arr.dtype in (np.float32, np.float64):
        # TF's CPU threads compare with subnormals as zero (DAZ); float16 is compared after an
        # exact conversion to float32, so its subnormals stay distinct.
        key = np.where(np.abs(arr) < np.finfo(arr.dtype).tiny, arr.dtype.type(0), arr)
    # Descending with ties by lower index: a stable ascending sort of the reversed axis lists
    # equal values by decreasing original index; reversing that list gives the TF order.
    rev = np.argsort(key[..., ::-1], axis=-1, kind="stable")[..., ::-1]  # [..., n]
    indices = (n - 1 - rev[..., :kk]).astype(np.int64)  # [..., k]
    return np.take_along_axis(arr, indices, axis=-1), indices
