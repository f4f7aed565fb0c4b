"""Numba CPU kernels for torch's ``topk`` and unstable ``sort`` index order (libstdc++, GCC 13).

The same algorithms as the reference in ``npfrcnn.ops.torch_sort`` (read its docstring first),
on two parallel arrays instead of a list of pairs: ``val`` (float32 values) and ``idx`` (int64
indices), always moved together, so that ``(val[p], idx[p])`` is the pair at position ``p``.
Only values are compared, with torch's comparator (NaN before everything, NaNs equal).

Introsort's recursion (sort the right part, loop on the left) becomes an explicit stack of
``(first, last, depth)`` ranges. The ranges are disjoint and each is processed from its own
contents and depth alone, so the order in which they are taken does not change the result.
Depths on the stack strictly decrease from bottom to top, so it never holds more than
``2 * 63 + 1`` ranges.

Inputs are assumed validated by ``npfrcnn.ops.torch_sort``: ``values`` C-contiguous float32
``[n]``, ``1 <= k <= n`` for ``topk_kernel``, ``n >= 1`` for ``sort_desc_kernel``.
"""

from __future__ import annotations

import numpy as np
from numba import njit

_THRESHOLD = 16  # libstdc++ _S_threshold
_RATIO = 64  # topk: partial_sort when k * 64 <= n
_STACK = 130  # > 2 * 63 + 1 pending introsort ranges


@njit(cache=True)
def _first(a, b):  # pragma: no cover - compiled
    """torch's descending comparator: value ``a`` goes strictly before value ``b``."""
    return (np.isnan(a) and not np.isnan(b)) or a > b


@njit(cache=True)
def _swap(val, idx, p, q):  # pragma: no cover - compiled
    val[p], val[q] = val[q], val[p]
    idx[p], idx[q] = idx[q], idx[p]


@njit(cache=True)
def _depth_limit(n):  # pragma: no cover - compiled
    """``2 * floor(log2(n))`` for ``n >= 1``."""
    lg = 0
    while n > 1:
        n >>= 1
        lg += 1
    return 2 * lg


@njit(cache=True)
def _sift_up(val, idx, first, hole, top, v, i):  # pragma: no cover - compiled
    """``std::__push_heap``: place the pair ``(v, i)`` at ``hole`` or above."""
    parent = (hole - 1) // 2
    while hole > top and _first(val[first + parent], v):
        val[first + hole] = val[first + parent]
        idx[first + hole] = idx[first + parent]
        hole = parent
        parent = (hole - 1) // 2
    val[first + hole] = v
    idx[first + hole] = i


@njit(cache=True)
def _sift_down(val, idx, first, hole, length, v, i):  # pragma: no cover - compiled
    """``std::__adjust_heap``: hole to a leaf along the child that goes last, then sift up."""
    top = hole
    child = hole
    while child < (length - 1) // 2:
        child = 2 * (child + 1)
        if _first(val[first + child], val[first + child - 1]):
            child -= 1
        val[first + hole] = val[first + child]
        idx[first + hole] = idx[first + child]
        hole = child
    if length % 2 == 0 and child == (length - 2) // 2:
        child = 2 * (child + 1)
        val[first + hole] = val[first + child - 1]
        idx[first + hole] = idx[first + child - 1]
        hole = child - 1
    _sift_up(val, idx, first, hole, top, v, i)


@njit(cache=True)
def _make_heap(val, idx, first, last):  # pragma: no cover - compiled
    length = last - first
    if length < 2:
        return
    for parent in range((length - 2) // 2, -1, -1):
        _sift_down(val, idx, first, parent, length, val[first + parent], idx[first + parent])


@njit(cache=True)
def _pop_heap(val, idx, first, last, result):  # pragma: no cover - compiled
    """The root moves to ``result``; ``result``'s pair enters the heap ``[first, last)``."""
    v = val[result]
    i = idx[result]
    val[result] = val[first]
    idx[result] = idx[first]
    _sift_down(val, idx, first, 0, last - first, v, i)


@njit(cache=True)
def _heap_select(val, idx, first, middle, last):  # pragma: no cover - compiled
    _make_heap(val, idx, first, middle)
    for p in range(middle, last):
        if _first(val[p], val[first]):
            _pop_heap(val, idx, first, middle, p)


@njit(cache=True)
def _partial_sort(val, idx, first, middle, last):  # pragma: no cover - compiled
    """``std::partial_sort``: heap select, then heap sort of ``[first, middle)``."""
    _heap_select(val, idx, first, middle, last)
    while middle - first > 1:
        middle -= 1
        _pop_heap(val, idx, first, middle, middle)


@njit(cache=True)
def _unguarded_linear_insert(val, idx, last):  # pragma: no cover - compiled
    v = val[last]
    i = idx[last]
    prev = last - 1
    while _first(v, val[prev]):
        val[last] = val[prev]
        idx[last] = idx[prev]
        last = prev
        prev -= 1
    val[last] = v
    idx[last] = i


@njit(cache=True)
def _insertion_sort(val, idx, first, last):  # pragma: no cover - compiled
    for p in range(first + 1, last):
        if _first(val[p], val[first]):
            v = val[p]
            i = idx[p]
            for q in range(p, first, -1):  # std::move_backward(first, p, p + 1)
                val[q] = val[q - 1]
                idx[q] = idx[q - 1]
            val[first] = v
            idx[first] = i
        else:
            _unguarded_linear_insert(val, idx, p)


@njit(cache=True)
def _final_insertion_sort(val, idx, first, last):  # pragma: no cover - compiled
    if last - first > _THRESHOLD:
        _insertion_sort(val, idx, first, first + _THRESHOLD)
        for p in range(first + _THRESHOLD, last):
            _unguarded_linear_insert(val, idx, p)
    else:
        _insertion_sort(val, idx, first, last)


@njit(cache=True)
def _move_median_to_first(val, idx, result, x, y, z):  # pragma: no cover - compiled
    if _first(val[x], val[y]):
        if _first(val[y], val[z]):
            m = y
        elif _first(val[x], val[z]):
            m = z
        else:
            m = x
    elif _first(val[x], val[z]):
        m = x
    elif _first(val[y], val[z]):
        m = z
    else:
        m = y
    _swap(val, idx, result, m)


@njit(cache=True)
def _partition_around_first(val, idx, first, last):  # pragma: no cover - compiled
    """``std::__unguarded_partition_pivot``; returns the cut."""
    _move_median_to_first(val, idx, first, first + 1, first + (last - first) // 2, last - 1)
    pivot = val[first]  # the pivot pair never moves: the partition starts at first + 1
    lo = first + 1
    hi = last
    while True:
        while _first(val[lo], pivot):
            lo += 1
        hi -= 1
        while _first(pivot, val[hi]):
            hi -= 1
        if not lo < hi:
            return lo
        _swap(val, idx, lo, hi)
        lo += 1


@njit(cache=True)
def _std_sort(val, idx, first, last):  # pragma: no cover - compiled
    """``std::sort`` of ``[first, last)``: introsort with an explicit stack, then insertion."""
    if last - first <= 1:
        return
    s_first = np.empty(_STACK, np.int64)
    s_last = np.empty(_STACK, np.int64)
    s_depth = np.empty(_STACK, np.int64)
    s_first[0] = first
    s_last[0] = last
    s_depth[0] = _depth_limit(last - first)
    top = 1
    while top > 0:
        top -= 1
        f = s_first[top]
        lst = s_last[top]
        depth = s_depth[top]
        while lst - f > _THRESHOLD:
            if depth == 0:
                _partial_sort(val, idx, f, lst, lst)
                break
            depth -= 1
            cut = _partition_around_first(val, idx, f, lst)
            s_first[top] = cut  # the right part, sorted on its own later
            s_last[top] = lst
            s_depth[top] = depth
            top += 1
            lst = cut
    _final_insertion_sort(val, idx, first, last)


@njit(cache=True)
def _nth_element(val, idx, first, nth, last):  # pragma: no cover - compiled
    if first == last or nth == last:
        return
    depth = _depth_limit(last - first)
    while last - first > 3:
        if depth == 0:
            _heap_select(val, idx, first, nth + 1, last)
            _swap(val, idx, first, nth)
            return
        depth -= 1
        cut = _partition_around_first(val, idx, first, last)
        if cut <= nth:
            first = cut
        else:
            last = cut
    _insertion_sort(val, idx, first, last)


@njit(cache=True)
def topk_kernel(values, k):  # pragma: no cover - compiled
    """int64 ``[k]`` indices of ``torch.topk(values, k)`` (largest, sorted), ``1 <= k <= n``."""
    n = values.shape[0]
    val = values.copy()
    idx = np.arange(n).astype(np.int64)
    if k * _RATIO <= n:
        _partial_sort(val, idx, 0, k, n)
    else:
        _nth_element(val, idx, 0, k - 1, n)
        _std_sort(val, idx, 0, k - 1)
    return idx[:k].copy()


@njit(cache=True)
def sort_desc_kernel(values):  # pragma: no cover - compiled
    """int64 ``[n]`` indices of ``torch.sort(values, descending=True)``, ``stable=False``."""
    n = values.shape[0]
    val = values.copy()
    idx = np.arange(n).astype(np.int64)
    _std_sort(val, idx, 0, n)
    return idx
