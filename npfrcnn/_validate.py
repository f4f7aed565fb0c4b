"""Input checks for the public boundary.

Every public entry point validates here and raises ``ValueError`` naming the argument, what was
wrong and how to fix it. Kernels never validate: they assume what these helpers guarantee
(C-contiguous arrays of the stated dtype and shape).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

BACKENDS = ("numpy", "cpu", "cuda")

#: The range of the kernels' integer type (Numba's int64, torch's ``int64_t``).
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
#: :func:`memory_limit_bytes` where the machine's physical memory cannot be read.
FALLBACK_MEMORY_BYTES = 2**40


def _describe(x: Any) -> str:
    if isinstance(x, np.ndarray):
        return f"an array of shape {x.shape} and dtype {x.dtype}"
    return f"a {type(x).__name__}"


def as_float_array(
    name: str,
    x: npt.ArrayLike,
    *,
    ndim: int | None = None,
    last: int | None = None,
    dtype: npt.DTypeLike = np.float32,
    finite: bool = False,
) -> npt.NDArray[Any]:
    """Return ``x`` as a C-contiguous float array of ``dtype``, checking rank and last axis.

    Integer and bool inputs are converted; complex, object and string inputs are rejected.
    """
    arr = np.asarray(x)
    if arr.dtype.kind not in "fiub":
        raise ValueError(
            f"{name} must be a real numeric array, got {_describe(arr)}; "
            f"pass a float32 array (e.g. np.asarray({name}, dtype=np.float32))"
        )
    if ndim is not None and arr.ndim != ndim:
        raise ValueError(
            f"{name} must have {ndim} dimensions, got shape {arr.shape}; "
            f"reshape it to {_shape_hint(ndim, last)}"
        )
    if last is not None and (arr.ndim == 0 or arr.shape[-1] != last):
        raise ValueError(
            f"{name} must have {last} values on its last axis, got shape {arr.shape}; "
            f"reshape it to {_shape_hint(arr.ndim, last)}"
        )
    arr = np.asarray(arr, dtype=dtype, order="C")  # keeps 0-d arrays 0-d
    if finite and arr.size and not np.isfinite(arr).all():
        bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
        raise ValueError(
            f"{name} contains {bad} non-finite value(s) (NaN or inf); "
            f"remove or replace them (e.g. with np.nan_to_num) before calling"
        )
    return arr


def _shape_hint(ndim: int | None, last: int | None) -> str:
    if ndim is None:
        return f"[..., {last}]" if last is not None else "the documented shape"
    dims = ["N", "M", "K", "L", "P", "Q"][: max(ndim - 1, 0)]
    tail = str(last) if last is not None else "C"
    return "[" + ", ".join([*dims, tail]) + "]" if ndim > 0 else "a scalar"


def as_boxes(name: str, boxes: npt.ArrayLike, *, finite: bool = True) -> npt.NDArray[np.float32]:
    """``boxes`` as float32 ``[N, 4]``, finite unless ``finite=False``."""
    return as_float_array(name, boxes, ndim=2, last=4, finite=finite)


def as_scores(
    name: str, scores: npt.ArrayLike, n: int, boxes_name: str = "boxes"
) -> npt.NDArray[np.float32]:
    """``scores`` as float32 ``[N]`` matching ``n`` boxes."""
    arr = as_float_array(name, scores, ndim=1)
    if arr.shape[0] != n:
        raise ValueError(
            f"{name} has {arr.shape[0]} entries but {boxes_name} has {n} rows; "
            f"pass one score per box"
        )
    return arr


def check_unit_interval(name: str, value: float) -> float:
    """A threshold that must lie in [0, 1]."""
    v = float(value)
    if not (0.0 <= v <= 1.0):
        raise ValueError(f"{name} must be in [0, 1], got {value!r}; pass a value such as 0.5")
    return v


def check_int(name: str, value: Any) -> int:
    """``value`` as a Python int: Python and NumPy integers are accepted; bool, float and
    anything else are a ``ValueError`` naming ``name``."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    return int(value)


def check_int_range(name: str, value: Any, lo: int, hi: int, *, fix: str = "") -> int:
    """An integer in ``[lo, hi]`` (both inclusive), as a Python int.

    Raises:
        ValueError: naming ``name``, the allowed range and, if given, the ``fix``.
    """
    v = check_int(name, value)
    if not lo <= v <= hi:
        tail = f"; {fix}" if fix else ""
        raise ValueError(f"{name} must be an integer in [{lo}, {hi}], got {value!r}{tail}")
    return v


def check_positive_int(
    name: str, value: Any, *, allow_zero: bool = False, hi: int | None = None
) -> int:
    """A positive integer (``allow_zero``: non-negative), at most ``hi`` when given."""
    v = check_int(name, value)
    if v < 0 or (v == 0 and not allow_zero):
        lo = "non-negative" if allow_zero else "positive"
        raise ValueError(f"{name} must be a {lo} integer, got {value!r}")
    if hi is not None and v > hi:
        raise ValueError(
            f"{name} must be an integer in [{0 if allow_zero else 1}, {hi}], got {value!r}"
        )
    return v


def check_size_pair(
    name: str, value: int | Sequence[int], hi: int = INT64_MAX
) -> tuple[int, int]:
    """An (height, width) pair of positive ints, each at most ``hi`` (default: the kernels'
    int64); a single int means a square."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
        v = check_positive_int(name, value, hi=hi)
        return v, v
    try:
        items = list(value)  # type: ignore[arg-type]
    except TypeError:
        raise ValueError(
            f"{name} must be an int or a pair (height, width), got {value!r}"
        ) from None
    if len(items) != 2:
        raise ValueError(f"{name} must be a pair (height, width), got {value!r}")
    return check_positive_int(name, items[0], hi=hi), check_positive_int(name, items[1], hi=hi)


# --------------------------------------------------------------------------------------------
# Allocation sizes: refused before anything is allocated
# --------------------------------------------------------------------------------------------


def memory_limit_bytes() -> int:
    """This machine's physical memory in bytes (``FALLBACK_MEMORY_BYTES`` where unknown).

    A front door refuses a result (with the kernels' scratch) larger than this: such an
    allocation either fails or, under memory overcommit, succeeds and gets the process killed
    once the kernel writes it.
    """
    try:
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):  # not POSIX, or not reported
        return FALLBACK_MEMORY_BYTES
    if pages <= 0 or size <= 0:
        return FALLBACK_MEMORY_BYTES
    return int(pages) * int(size)


def format_bytes(n: int) -> str:
    """``n`` bytes for a message: ``"7.3 TiB"``, ``"512 B"``."""
    v = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if v < 1024 or unit == "PiB":
            return f"{int(v)} {unit}" if unit == "B" else f"{v:.3g} {unit}"
        v /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


def check_nbytes(what: str, nbytes: int, fix: str) -> int:
    """Refuse an allocation of ``nbytes`` (a Python int, so it cannot overflow) that exceeds
    :func:`memory_limit_bytes`; ``what`` names it, ``fix`` says what to change.

    Raises:
        ValueError: ``"<what> would need 7.28 TiB, more than this machine's 23.4 GiB of
            memory; <fix>"``.
    """
    limit = memory_limit_bytes()
    if nbytes > limit:
        raise ValueError(
            f"{what} would need {format_bytes(nbytes)}, more than this machine's "
            f"{format_bytes(limit)} of memory; {fix}"
        )
    return nbytes


def describe_result(shape: Sequence[int], dtype: str = "float32") -> str:
    """``"a [2, 7, 7, 256] float32 result"`` for messages about :func:`nbytes_of` sizes."""
    text = f"a [{', '.join(str(int(d)) for d in shape)}] {dtype} result"
    return text + (" (an empty axis counted as 1)" if 0 in shape else "")


def nbytes_of(shape: Sequence[int], itemsize: int) -> int:
    """Bytes of an array of ``shape``, with every axis counted as at least 1.

    An axis of 0 makes the array empty, but NumPy still refuses shapes whose other axes
    overflow, and the size is a property of the arguments (a crop size of 10**6 x 10**6 is
    absurd whether or not there are boxes), so the front doors check this bound.
    """
    n = int(itemsize)
    for d in shape:
        n *= max(int(d), 1)
    return n


def check_backend(backend: str, allowed: Sequence[str] = BACKENDS) -> str:
    if backend not in allowed:
        raise ValueError(
            f"backend must be one of {', '.join(repr(b) for b in allowed)}, got {backend!r}"
        )
    return backend


# --------------------------------------------------------------------------------------------
# GPU arrays (backend="cuda"): checked from their metadata only
# --------------------------------------------------------------------------------------------


def is_device_array(x: Any) -> bool:
    """A GPU array: anything exposing ``__cuda_array_interface__`` (CuPy arrays, CUDA torch
    tensors, numba device arrays) or a numba simulator array. Checked without importing CUDA."""
    return hasattr(x, "__cuda_array_interface__") or bool(getattr(x, "__cuda_ndarray__", False))


def device_inputs(op: str, backend: str, **arrays: Any) -> bool:
    """True when the op's arrays are all GPU arrays (and ``backend`` is ``"cuda"``), False when
    none is; a mix, or GPU arrays with another backend, is a ``ValueError`` naming the fix."""
    on_gpu = [name for name, x in arrays.items() if is_device_array(x)]
    if not on_gpu:
        return False
    on_host = [name for name in arrays if name not in on_gpu]
    if on_host:
        raise ValueError(
            f"{op}: {', '.join(on_gpu)} on the GPU but {', '.join(on_host)} on the host; pass "
            "all of them as GPU arrays (results stay on the GPU) or all as host arrays"
        )
    if backend != "cuda":
        raise ValueError(
            f"{op}: {', '.join(on_gpu)} are GPU arrays; pass backend='cuda' (no copies, the "
            f"result stays on the GPU), or copy them to the host for backend={backend!r}"
        )
    return True


def check_device_array(
    name: str, x: Any, dtype: npt.DTypeLike | None, shape: Sequence[int | None]
) -> tuple[int, ...]:
    """Check a GPU array's dtype (``None``: any integer dtype), C-contiguity and shape
    (``None``: any size) from its metadata, without reading its values; returns its shape.

    Values (finiteness, index ranges) are not checked: that would copy them to the host. The
    kernels then compute whatever the arithmetic gives for them.
    """
    iface = getattr(x, "__cuda_array_interface__", None)
    if iface is not None:
        got_shape = tuple(int(v) for v in iface["shape"])
        got_dtype = np.dtype(iface["typestr"])
        strides = iface.get("strides")
        contiguous = strides is None or tuple(strides) == _c_strides(got_shape, got_dtype)
    else:  # numba's simulator array
        got_shape = tuple(int(v) for v in x.shape)
        got_dtype = np.dtype(x.dtype)
        contiguous = bool(x.is_c_contiguous())
    pattern = "[" + ", ".join("N" if v is None else str(v) for v in shape) + "]"
    if dtype is None:
        want = got_dtype if got_dtype.kind in "iu" else np.dtype(np.int64)
    else:
        want = np.dtype(dtype)
    if got_dtype != want or len(got_shape) != len(shape) or not contiguous or any(
        v is not None and v != g for v, g in zip(shape, got_shape, strict=False)
    ):
        kind = "integer" if dtype is None else str(want)
        raise ValueError(
            f"{name} must be a C-contiguous {kind} GPU array of shape {pattern}, got "
            f"{'a C-contiguous' if contiguous else 'a non-contiguous'} {got_dtype} array of "
            f"shape {got_shape}; convert it on the GPU first (e.g. "
            f"cupy.ascontiguousarray({name}, dtype=cupy.{want}))"
        )
    return got_shape


def _c_strides(shape: tuple[int, ...], dtype: np.dtype[Any]) -> tuple[int, ...]:
    strides, step = [], dtype.itemsize
    for size in reversed(shape):
        strides.append(step)
        step *= max(size, 1)
    return tuple(reversed(strides))
