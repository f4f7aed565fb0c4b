"""Comparison helpers: shape and dtype are checked before values, always."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt


def assert_same(
    actual: npt.ArrayLike,
    expected: npt.ArrayLike,
    *,
    rtol: float = 0.0,
    atol: float = 0.0,
    dtype: npt.DTypeLike | None = None,
    err_msg: str = "",
) -> None:
    """Assert shape, then dtype (``expected``'s, or ``dtype`` if given), then values.

    With ``rtol = atol = 0`` the values must be bitwise equal (NaNs in the same places).
    """
    a = np.asarray(actual)
    e = np.asarray(expected)
    assert a.shape == e.shape, f"shape {a.shape} != expected {e.shape}. {err_msg}"
    want = np.dtype(dtype) if dtype is not None else e.dtype
    assert a.dtype == want, f"dtype {a.dtype} != expected {want}. {err_msg}"
    if rtol == 0.0 and atol == 0.0:
        np.testing.assert_array_equal(a, e, err_msg=err_msg)
    else:
        np.testing.assert_allclose(a, e, rtol=rtol, atol=atol, err_msg=err_msg)
