"""torch's CPU index order for ``torch.topk`` and the unstable ``torch.sort`` (spec 10.3, App. B).

Front doors for

* ``torch_topk(values, k)``: ``torch.topk(values, k)`` (``largest=True, sorted=True``) on a 1-D
  float32 CPU tensor;
* ``torch_sort_desc(values)``: the indices of ``torch.sort(values, descending=True)`` with
  ``stable=False`` (the default) on a 1-D float32 CPU tensor.

Neither order is "descending, ties by lower index": torch hands ``(value, index)`` pairs to
libstdc++'s ``std::partial_sort``, ``std::nth_element`` and ``std::sort`` (GCC 13), which move
equal values around like any others, so the order of equal values is a by-product of those
algorithms. To get the same indices we run the same algorithms with the same comparator on the
same starting array. Everything here was checked against torch 2.14.1 (see the tests):

* the pairs start as ``(values[i], i)`` in index order;
* ``comp(a, b)`` is "a goes first": ``(isnan(a.value) and not isnan(b.value)) or a.value >
  b.value``. NaN goes before every number, NaNs are equal to each other, ``-0.0 == 0.0``, and
  ``+inf`` is an ordinary number just below NaN. Indices are never compared;
* topk (``ATen/native/TopKImpl.h: topk_impl_loop``): if ``k * 64 <= n``,
  ``partial_sort(first, first + k, last)``; otherwise ``nth_element(first, first + k - 1,
  last)`` and then ``sort(first, first + k - 1)``: the k-th pair stays where nth_element left
  it. ``k == 0`` returns at once;
* sort (``ATen/native/cpu/SortingKernel.cpp: sort_kernel``): ``sort(first, last)``.

The libstdc++ algorithms, as this module's reference (``backend="numpy"``) writes them out
(``backend="cpu"`` is the same in Numba, ``npfrcnn.kernels.cpu.torch_sort``):

* ``sort`` is introsort: while a range holds more than 16 pairs, split it at a pivot (the
  median of its 2nd, middle and last pairs, swapped to the front; then an unguarded Hoare
  partition of the rest around it) and recurse on the right part, loop on the left; after
  ``2 * floor(log2 n)`` splits in depth a range is heap-sorted instead. Finally an insertion
  sort runs over everything (guarded over the first 16 pairs, unguarded after). A range of 16
  or fewer pairs therefore comes out stable (ties by lower index); a longer one does not;
* ``partial_sort(first, middle, last)`` is heap select: a max-heap (in ``comp``'s sense: the
  pair that goes *last* at the root) of the first ``k`` pairs; each later pair that goes before
  the root replaces it (the root moves to that pair's slot); then a heap sort of the heap;
* ``nth_element(first, nth, last)`` is introselect: the same partition as ``sort``, keeping
  only the part that holds ``nth``, until 3 or fewer pairs remain (then an insertion sort);
  after ``2 * floor(log2 n)`` partitions, a heap select of ``nth + 1`` pairs and a swap of
  the root with ``nth``.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from npfrcnn._validate import _describe, as_float_array, check_backend, check_positive_int
from npfrcnn.ops._backend import kernel as backend_kernel

__all__ = ["torch_sort_desc", "torch_topk"]

IndexArray = npt.NDArray[np.int64]
Pair = tuple[float, int]  # (value, index), as in torch's std::vector<std::pair<acc_t, int64_t>>

_SORT_THRESHOLD = 16  # libstdc++ _S_threshold: introsort leaves ranges this short unsorted
_PARTIAL_SORT_RATIO = 64  # topk uses partial_sort when k * 64 <= n


# --------------------------------------------------------------------------------------------
# Reference (backend="numpy"): libstdc++'s algorithms on a list of (value, index) pairs.
# Ranges are half-open [first, last) positions into the list, like C++ iterators.
# --------------------------------------------------------------------------------------------


def _goes_first(a: Pair, b: Pair) -> bool:
    """torch's comparator for descending order: ``a`` strictly before ``b`` (NaN largest)."""
    return (math.isnan(a[0]) and not math.isnan(b[0])) or a[0] > b[0]


def _depth_limit(n: int) -> int:
    """``2 * std::__lg(n)``: twice the floor of log2 of the range length (``n >= 1``)."""
    return 2 * (n.bit_length() - 1)


# ---- heaps: a[first + h]'s children are a[first + 2h + 1] and a[first + 2h + 2] ----------


def _sift_up(a: list[Pair], first: int, hole: int, top: int, value: Pair) -> None:
    """``std::__push_heap``: move ``value`` up from ``hole`` while its parent goes first."""
    parent = (hole - 1) // 2
    while hole > top and _goes_first(a[first + parent], value):
        a[first + hole] = a[first + parent]
        hole = parent
        parent = (hole - 1) // 2
    a[first + hole] = value


def _sift_down(a: list[Pair], first: int, hole: int, length: int, value: Pair) -> None:
    """``std::__adjust_heap``: walk the hole down to a leaf along the child that goes last
    (the right child unless the left one goes strictly later), then sift ``value`` up."""
    top = hole
    child = hole
    while child < (length - 1) // 2:
        child = 2 * (child + 1)  # right child
        if _goes_first(a[first + child], a[first + child - 1]):
            child -= 1  # the left child goes later
        a[first + hole] = a[first + child]
        hole = child
    if length % 2 == 0 and child == (length - 2) // 2:  # a last parent with only a left child
        child = 2 * (child + 1)
        a[first + hole] = a[first + child - 1]
        hole = child - 1
    _sift_up(a, first, hole, top, value)


def _make_heap(a: list[Pair], first: int, last: int) -> None:
    length = last - first
    if length < 2:
        return
    for parent in range((length - 2) // 2, -1, -1):
        _sift_down(a, first, parent, length, a[first + parent])


def _pop_heap(a: list[Pair], first: int, last: int, result: int) -> None:
    """``std::__pop_heap``: the root moves to ``result``; ``result``'s pair enters the heap
    ``[first, last)``."""
    value = a[result]
    a[result] = a[first]
    _sift_down(a, first, 0, last - first, value)


def _heap_select(a: list[Pair], first: int, middle: int, last: int) -> None:
    """``std::__heap_select``: afterwards ``[first, middle)`` is a heap holding pairs that go
    first among all of ``[first, last)`` (the earlier of equals being whichever was seen)."""
    _make_heap(a, first, middle)
    for i in range(middle, last):
        if _goes_first(a[i], a[first]):
            _pop_heap(a, first, middle, i)


def _sort_heap(a: list[Pair], first: int, last: int) -> None:
    while last - first > 1:
        last -= 1
        _pop_heap(a, first, last, last)


def _partial_sort(a: list[Pair], first: int, middle: int, last: int) -> None:
    """``std::partial_sort``: ``[first, middle)`` holds the first pairs of the range, sorted."""
    _heap_select(a, first, middle, last)
    _sort_heap(a, first, middle)


# ---- insertion sorts ------------------------------------------------------------------------


def _unguarded_linear_insert(a: list[Pair], last: int) -> None:
    """Move ``a[last]`` left past every pair it goes before; assumes one that stops it."""
    value = a[last]
    prev = last - 1
    while _goes_first(value, a[prev]):
        a[last] = a[prev]
        last = prev
        prev -= 1
    a[last] = value


def _insertion_sort(a: list[Pair], first: int, last: int) -> None:
    """``std::__insertion_sort``: a pair that goes before ``a[first]`` is moved straight to
    the front; any other is inserted unguarded."""
    for i in range(first + 1, last):
        if _goes_first(a[i], a[first]):
            value = a[i]
            a[first + 1 : i + 1] = a[first:i]
            a[first] = value
        else:
            _unguarded_linear_insert(a, i)


def _final_insertion_sort(a: list[Pair], first: int, last: int) -> None:
    if last - first > _SORT_THRESHOLD:
        _insertion_sort(a, first, first + _SORT_THRESHOLD)
        for i in range(first + _SORT_THRESHOLD, last):
            _unguarded_linear_insert(a, i)
    else:
        _insertion_sort(a, first, last)


# ---- partition ------------------------------------------------------------------------------


def _move_median_to_first(a: list[Pair], result: int, x: int, y: int, z: int) -> None:
    """``std::__move_median_to_first``: swap the median of ``a[x], a[y], a[z]`` (in the
    comparator's sense, decided in libstdc++'s order of comparisons) into ``a[result]``."""
    if _goes_first(a[x], a[y]):
        if _goes_first(a[y], a[z]):
            m = y
        elif _goes_first(a[x], a[z]):
            m = z
        else:
            m = x
    elif _goes_first(a[x], a[z]):
        m = x
    elif _goes_first(a[y], a[z]):
        m = z
    else:
        m = y
    a[result], a[m] = a[m], a[result]


def _partition_around_first(a: list[Pair], first: int, last: int) -> int:
    """``std::__unguarded_partition_pivot``: median-of-three pivot to ``a[first]``, then
    Hoare's unguarded partition of ``[first + 1, last)``; returns the cut."""
    _move_median_to_first(a, first, first + 1, first + (last - first) // 2, last - 1)
    pivot = a[first]  # stays at ``first`` throughout: the partition starts at first + 1
    lo, hi = first + 1, last
    while True:
        while _goes_first(a[lo], pivot):
            lo += 1
        hi -= 1
        while _goes_first(pivot, a[hi]):
            hi -= 1
        if not lo < hi:
            return lo
        a[lo], a[hi] = a[hi], a[lo]
        lo += 1


# ---- the three algorithms -----------------------------------------------------------------


def _introsort_loop(a: list[Pair], first: int, last: int, depth: int) -> None:
    while last - first > _SORT_THRESHOLD:
        if depth == 0:
            _partial_sort(a, first, last, last)  # heap sort
            return
        depth -= 1
        cut = _partition_around_first(a, first, last)
        _introsort_loop(a, cut, last, depth)
        last = cut


def _std_sort(a: list[Pair], first: int, last: int) -> None:
    """``std::sort``: introsort, then one insertion sort over the whole range."""
    if last - first > 1:
        _introsort_loop(a, first, last, _depth_limit(last - first))
        _final_insertion_sort(a, first, last)


def _nth_element(a: list[Pair], first: int, nth: int, last: int) -> None:
    """``std::nth_element``: ``a[nth]`` is the pair a full sort would put there; those before
    it go first or tie with it, those after it go last or tie with it."""
    if first == last or nth == last:
        return
    depth = _depth_limit(last - first)
    while last - first > 3:
        if depth == 0:
            _heap_select(a, first, nth + 1, last)
            a[first], a[nth] = a[nth], a[first]
            return
        depth -= 1
        cut = _partition_around_first(a, first, last)
        if cut <= nth:
            first = cut
        else:
            last = cut
    _insertion_sort(a, first, last)


def _pairs(values: npt.NDArray[np.float32]) -> list[Pair]:
    return [(v, i) for i, v in enumerate(values.tolist())]  # float32 -> float is exact


def _reference_topk(values: npt.NDArray[np.float32], k: int) -> IndexArray:
    a = _pairs(values)
    n = len(a)
    if k > 0:
        if k * _PARTIAL_SORT_RATIO <= n:
            _partial_sort(a, 0, k, n)
        else:
            _nth_element(a, 0, k - 1, n)
            _std_sort(a, 0, k - 1)
    return np.asarray([i for _, i in a[:k]], dtype=np.int64)


def _reference_sort_desc(values: npt.NDArray[np.float32]) -> IndexArray:
    a = _pairs(values)
    _std_sort(a, 0, len(a))
    return np.asarray([i for _, i in a], dtype=np.int64)


# --------------------------------------------------------------------------------------------
# Front doors
# --------------------------------------------------------------------------------------------


def _as_values(values: npt.ArrayLike) -> npt.NDArray[np.float32]:
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(
            f"values must be 1-D, got {_describe(arr)}; pass one row at a time "
            f"(e.g. values.reshape(-1) or values[i])"
        )
    return as_float_array("values", arr, ndim=1)


def torch_topk(
    values: npt.ArrayLike, k: int, backend: str = "cpu"
) -> tuple[npt.NDArray[np.float32], IndexArray]:
    """``torch.topk(values, k)`` (largest, sorted) on a 1-D float32 CPU tensor, ties included.

    Args:
        values: ``[n]`` values, converted to float32 (the order is that of the float32 tensor:
            float64 values that round to the same float32 tie). NaN and +-inf are allowed:
            NaN counts as larger than everything (torch's rule), NaNs tie with each other,
            and ``-0.0`` ties with ``0.0``.
        k: ``0 <= k <= n``.
        backend: ``"cpu"`` (Numba) or ``"numpy"`` (the readable reference); same result.

    Returns:
        ``(top_values, indices)``: float32 ``[k]`` ``values[indices]`` (bits unchanged) in
        descending order, NaN first, and int64 ``[k]`` the indices in torch's order. Equal
        values are **not** in index order in general (see the module docstring); ``k == 0``
        or ``n == 0`` gives empty arrays.
    """
    check_backend(backend, ("numpy", "cpu"))
    v = _as_values(values)
    n = v.shape[0]
    kk = check_positive_int("k", k, allow_zero=True)
    if kk > n:
        raise ValueError(
            f"k must be at most the number of values ({n}), got {k}; pass min(k, {n}) to "
            f"keep every value (torch.topk raises here too)"
        )
    if kk == 0:
        idx = np.zeros(0, np.int64)
    elif backend == "numpy":
        idx = _reference_topk(v, kk)
    else:
        idx = np.asarray(backend_kernel(backend, "torch_sort", "topk_kernel")(v, kk), np.int64)
    return v[idx], idx


def torch_sort_desc(values: npt.ArrayLike, backend: str = "cpu") -> IndexArray:
    """The indices of ``torch.sort(values, descending=True)`` (``stable=False``), 1-D float32 CPU.

    Args:
        values: ``[n]`` values, converted to float32; NaN and +-inf allowed, with the rules of
            :func:`torch_topk` (NaN first, NaNs tie, ``-0.0 == 0.0``).
        backend: ``"cpu"`` (Numba) or ``"numpy"`` (the readable reference); same result.

    Returns:
        int64 ``[n]``: a permutation putting ``values`` in descending order, NaN first, equal
        values in libstdc++ introsort's order: index order when ``n <= 16``, not in general
        above. For the order with ties by lower index use a stable sort instead
        (``torch.sort(..., stable=True)``); empty input gives an empty array.
    """
    check_backend(backend, ("numpy", "cpu"))
    v = _as_values(values)
    if v.shape[0] == 0:
        return np.zeros(0, np.int64)
    if backend == "numpy":
        return _reference_sort_desc(v)
    return np.asarray(backend_kernel(backend, "torch_sort", "sort_desc_kernel")(v), np.int64)
