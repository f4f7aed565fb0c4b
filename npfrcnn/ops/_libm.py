"""C's ``expf`` from the platform libm (glibc's on Linux), loaded once through ctypes.

TF's soft-NMS weight and torch's scalar tails (``std::exp(float)``) call it; NumPy's float32
``exp`` is a different function. ``LIBM_EXPF`` is ``None`` where no libm loads.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable

__all__ = ["LIBM_EXPF"]


def _load() -> Callable[[float], float] | None:
    name = ctypes.util.find_library("m")
    if name is None:
        return None
    try:
        fn = ctypes.CDLL(name).expf
    except (OSError, AttributeError):
        return None
    fn.restype = ctypes.c_float
    fn.argtypes = [ctypes.c_float]
    return fn


LIBM_EXPF = _load()
