"""Numba CPU kernels for non-maximum suppression (hard, soft and class-batched).

All three compute TensorFlow's ``NonMaxSuppressionV3``/``V5`` CPU kernel
(``tensorflow/core/kernels/image/non_max_suppression_op.cc``) bit for bit: float32 IoU with the
same operation order, suppression when ``IoU > iou_threshold`` (float32 comparison), candidates
taken by descending score with equal scores broken by the lower index.

TF runs its CPU kernels with denormals flushed to zero (FTZ and DAZ set in its threads).
The caller flushes the inputs (boxes, ordering scores, thresholds), except for
:func:`nms_unflushed`, which flushes the boxes and scores itself; these kernels flush every
intermediate that can come out subnormal, so that tiny boxes behave as in TF (an area that
underflows is 0, and such a box never suppresses).

Inputs are assumed validated by ``npfrcnn.ops.nms``: ``boxes`` C-contiguous float32 ``[N, 4]``,
finite, subnormals already flushed; ``order`` int64 candidate indices sorted by
``(-score, index)`` and filtered by the score threshold; thresholds float32 scalars.

Hard NMS speed-ups, none of which changes the result:

* corners (min/max of each diagonal pair) and areas are computed once per box, with TF's
  float32 formulas, instead of once per pair;
* a box whose area is ``<= 0`` has IoU 0 with everything, so it never suppresses and is never
  suppressed: it is selected when reached and not stored among the suppressors;
* candidates are compared only against the selected boxes, in blocks whose IoUs are computed
  without an early exit (so that LLVM vectorizes the block); the first block holding an IoU
  above the threshold ends the candidate. TF walks the selected boxes backwards and stops at
  the first hit; the decision (suppressed or not) is the same;
* with areas known positive the union is at least the larger area, a normal number, so it needs
  no flushing; and ``flush(iou) > thr`` equals ``iou > thr_eff`` where ``thr_eff`` is ``thr``,
  or the largest subnormal when ``thr == 0``.

Two compilation details make the block loop vectorize: ``error_model="numpy"`` (Python's model
adds a zero-division branch to every ``/``; no divisor here can be zero: areas are checked
positive first) and unsigned loop indices (signed ones get a negative-index wraparound that
LLVM turns into gathers). Neither changes a value: there is no fastmath, so every operation is
a correctly rounded float32 IEEE operation in TF's order.
"""

from __future__ import annotations

import numpy as np
from numba import njit, uint64

_ZERO = np.float32(0.0)
_TINY = np.float32(np.finfo(np.float32).tiny)  # smallest normal float32, 2**-126
_MAX_SUBNORMAL = np.float32(np.nextafter(_TINY, _ZERO))
_BLOCK = 64  # selected boxes compared per vectorized block


@njit(cache=True, error_model="numpy")
def _ftz(x):  # pragma: no cover - compiled
    """Flush a subnormal float32 to zero, as x86 FTZ does to a result (NaN stays NaN)."""
    return _ZERO if abs(x) < _TINY else x


@njit(cache=True, error_model="numpy")
def _corners(boxes, order):  # pragma: no cover - compiled
    """Min/max corners and TF's float32 area of ``boxes[order]``, in ``order``'s order."""
    m = order.shape[0]
    y1 = np.empty(m, np.float32)
    x1 = np.empty(m, np.float32)
    y2 = np.empty(m, np.float32)
    x2 = np.empty(m, np.float32)
    area = np.empty(m, np.float32)
    for k in range(m):
        i = order[k]
        y1[k] = min(boxes[i, 0], boxes[i, 2])
        x1[k] = min(boxes[i, 1], boxes[i, 3])
        y2[k] = max(boxes[i, 0], boxes[i, 2])
        x2[k] = max(boxes[i, 1], boxes[i, 3])
        area[k] = _ftz(_ftz(y2[k] - y1[k]) * _ftz(x2[k] - x1[k]))
    return y1, x1, y2, x2, area


@njit(cache=True, error_model="numpy")
def _iou_at(y1, x1, y2, x2, area, a, b):  # pragma: no cover - compiled
    """TF's float32 IoU of entries ``a`` and ``b`` of the corner arrays, subnormals flushed."""
    if area[a] <= _ZERO or area[b] <= _ZERO:
        return _ZERO
    ih = max(_ftz(min(y2[a], y2[b]) - max(y1[a], y1[b])), _ZERO)
    iw = max(_ftz(min(x2[a], x2[b]) - max(x1[a], x1[b])), _ZERO)
    inter = _ftz(ih * iw)
    return _ftz(inter / _ftz(_ftz(area[a] + area[b]) - inter))


@njit(cache=True, error_model="numpy")
def nms_kernel(boxes, order, iou_threshold, max_output_size):  # pragma: no cover - compiled
    """Hard NMS over the candidates ``order``; returns the selected box indices (int64).

    ``iou_threshold`` is a float32 scalar (subnormal flushed); ``max_output_size`` an int >= 0.
    """
    m = order.shape[0]
    keep = np.empty(min(m, max_output_size), np.int64)
    n_keep = 0
    if keep.shape[0] == 0:
        return keep
    y1, x1, y2, x2, area = _corners(boxes, order)
    # Suppressors: selected boxes with a positive area, padded to a whole block with
    # zero-size boxes of area 1 (IoU 0 with anything).
    cap = keep.shape[0] + _BLOCK
    sy1 = np.zeros(cap, np.float32)
    sx1 = np.zeros(cap, np.float32)
    sy2 = np.zeros(cap, np.float32)
    sx2 = np.zeros(cap, np.float32)
    sar = np.ones(cap, np.float32)
    n_sup = 0
    thr = iou_threshold if iou_threshold > _ZERO else _MAX_SUBNORMAL
    for k in range(m):
        ay1 = y1[k]
        ax1 = x1[k]
        ay2 = y2[k]
        ax2 = x2[k]
        aa = area[k]
        suppressed = False
        if aa > _ZERO:
            # Newest suppressors first, as TF does: overlapping boxes tend to be recent.
            top = n_sup
            while top > 0 and not suppressed:
                lo = max(top - _BLOCK, 0)
                hits = 0
                for j in range(uint64(lo), uint64(top)):  # unsigned: no wraparound, no gathers
                    dh = min(ay2, sy2[j]) - max(ay1, sy1[j])
                    dw = min(ax2, sx2[j]) - max(ax1, sx1[j])
                    ih = dh if dh >= _TINY else _ZERO  # max(dh, 0), flushed
                    iw = dw if dw >= _TINY else _ZERO
                    p = ih * iw
                    inter = p if p >= _TINY else _ZERO
                    hits += inter / (aa + sar[j] - inter) > thr
                suppressed = hits > 0
                top = lo
        if suppressed:
            continue
        keep[n_keep] = order[k]
        n_keep += 1
        if aa > _ZERO:
            sy1[n_sup] = ay1
            sx1[n_sup] = ax1
            sy2[n_sup] = ay2
            sx2[n_sup] = ax2
            sar[n_sup] = aa
            n_sup += 1
        if n_keep == keep.shape[0]:
            break
    return keep[:n_keep]


@njit(cache=True, error_model="numpy")
def nms_unflushed(  # pragma: no cover - compiled
    boxes, scores, score_threshold, iou_threshold, max_output_size
):
    """:func:`nms_kernel` on validated but unflushed inputs, the front door's NumPy steps done
    here in one compiled call (fewer passes and temporaries on small inputs):

    * subnormal box coordinates and scores flushed to zero (into new arrays: the caller's stay
      as they are);
    * the candidates: ``score > score_threshold``, sorted by descending score with ``-0.0``
      and ``+0.0`` equal (``-(score + 0)``, as TF's ``std::greater``), equal scores by the lower
      index (a stable merge sort).

    ``score_threshold`` and ``iou_threshold`` are float32 scalars, already flushed.
    """
    n = boxes.shape[0]
    fb = np.empty((n, 4), np.float32)
    for i in range(n):
        for j in range(4):
            fb[i, j] = _ftz(boxes[i, j])
    idx = np.empty(n, np.int64)
    m = 0
    for i in range(n):
        if _ftz(scores[i]) > score_threshold:
            idx[m] = i
            m += 1
    key = np.empty(m, np.float32)
    for j in range(m):
        key[j] = -(_ftz(scores[idx[j]]) + _ZERO)
    order = idx[:m][np.argsort(key, kind="mergesort")]
    return nms_kernel(fb, order, iou_threshold, max_output_size)


@njit(cache=True, error_model="numpy")
def batched_nms_kernel(boxes, order, classes, iou_threshold, max_per_class):  # pragma: no cover
    """Hard NMS run independently per class, in one pass over ``order``.

    ``classes`` is int64 ``[N]`` with values in ``[0, C)`` (densified by the caller). A
    candidate is compared only with the selected boxes of its own class (newest first), and a
    class stops at ``max_per_class`` selections; the result, in ``order``'s order, is the
    union of the per-class NMS results sorted by ``(-score, index)``.
    """
    m = order.shape[0]
    keep = np.empty(m, np.int64)
    n_keep = 0
    if m == 0 or max_per_class == 0:
        return keep[:0]
    n_cls = 0
    for k in range(m):
        n_cls = max(n_cls, classes[order[k]] + 1)
    y1, x1, y2, x2, area = _corners(boxes, order)
    # Per class: how many are selected, and a linked list (newest first) of its suppressors.
    count = np.zeros(n_cls, np.int64)
    head = np.full(n_cls, -1, np.int64)
    nxt = np.empty(m, np.int64)
    for k in range(m):
        c = classes[order[k]]
        if count[c] >= max_per_class:
            continue
        suppressed = False
        if area[k] > _ZERO:
            j = head[c]
            while j >= 0:
                if _iou_at(y1, x1, y2, x2, area, k, j) > iou_threshold:
                    suppressed = True
                    break
                j = nxt[j]
        if suppressed:
            continue
        keep[n_keep] = order[k]
        n_keep += 1
        count[c] += 1
        if area[k] > _ZERO:
            nxt[k] = head[c]
            head[c] = k
    return keep[:n_keep]


@njit(cache=True, error_model="numpy")
def _heap_less(hs, hi, a, b):  # pragma: no cover - compiled
    """TF's queue order: entry ``a`` ranks below ``b`` (lower score, or equal and larger index)."""
    return (hs[a] == hs[b] and hi[a] > hi[b]) or hs[a] < hs[b]


@njit(cache=True, error_model="numpy")
def _heap_swap(hs, hi, hk, hb, a, b):  # pragma: no cover - compiled
    hs[a], hs[b] = hs[b], hs[a]
    hi[a], hi[b] = hi[b], hi[a]
    hk[a], hk[b] = hk[b], hk[a]
    hb[a], hb[b] = hb[b], hb[a]


@njit(cache=True, error_model="numpy")
def _heap_push(hs, hi, hk, hb, size, score, index, k, begin):  # pragma: no cover - compiled
    """Add an entry to the max-heap of ``size`` entries; returns the new size."""
    t = size
    hs[t] = score
    hi[t] = index
    hk[t] = k
    hb[t] = begin
    while t > 0:
        parent = (t - 1) // 2
        if not _heap_less(hs, hi, parent, t):
            break
        _heap_swap(hs, hi, hk, hb, parent, t)
        t = parent
    return size + 1


@njit(cache=True, error_model="numpy")
def _heap_pop(hs, hi, hk, hb, size):  # pragma: no cover - compiled
    """Move the top entry to slot ``size - 1`` and restore the heap; returns the new size."""
    size -= 1
    _heap_swap(hs, hi, hk, hb, 0, size)
    t = 0
    while True:
        best = 2 * t + 1
        if best >= size:
            break
        if best + 1 < size and _heap_less(hs, hi, best, best + 1):
            best += 1
        if not _heap_less(hs, hi, t, best):
            break
        _heap_swap(hs, hi, hk, hb, t, best)
        t = best
    return size


@njit(cache=True, error_model="numpy")
def soft_nms_kernel(
    boxes, scores, order, iou_threshold, score_threshold, sigma, max_output_size
):  # pragma: no cover - compiled
    """TF's ``DoNonMaxSuppressionOp`` with ``soft_nms_sigma = sigma`` (float32 scalars).

    ``scores`` are the (flushed) scores and ``order`` the candidates (score above
    ``score_threshold``) sorted by ``(-score, index)``. Each popped candidate meets the
    selected boxes it has not met yet, newest first; its score is multiplied by
    ``exp(scale * iou * iou)`` (``scale = -0.5 / sigma``, or 0 when ``sigma == 0``). Hard
    suppression (``iou > iou_threshold``) applies only when ``sigma == 0``: TF's kernel ignores
    ``iou_threshold`` in soft mode. An undecayed candidate is selected; a decayed one whose
    score is still above ``score_threshold`` goes back into the queue. Returns (indices int64,
    scores float32). ``np.exp`` on a float32 compiles to a call of libm's ``expf``, as in TF.
    """
    m = order.shape[0]
    cap = min(m, max_output_size)
    sel = np.empty(cap, np.int64)
    sel_scores = np.empty(cap, np.float32)
    n_sel = 0
    if cap == 0:
        return sel, sel_scores
    y1, x1, y2, x2, area = _corners(boxes, order)
    # Max-heap entries: score, box index (ties), position k in `order`, suppress_begin.
    # `order` is sorted in TF's queue order, which makes it a valid heap as it stands.
    hs = np.empty(m, np.float32)
    hi = np.empty(m, np.int64)
    hk = np.empty(m, np.int64)
    hb = np.zeros(m, np.int64)
    for k in range(m):
        hs[k] = scores[order[k]]
        hi[k] = order[k]
        hk[k] = k
    size = m
    sel_k = np.empty(cap, np.int64)  # position in `order` of each selected box
    is_soft = sigma > _ZERO
    scale = _ftz(np.float32(-0.5) / sigma) if is_soft else _ZERO
    while n_sel < cap and size > 0:
        size = _heap_pop(hs, hi, hk, hb, size)
        score = hs[size]
        original = score
        k = hk[size]
        hard = False
        for j in range(n_sel - 1, hb[size] - 1, -1):
            iou = _iou_at(y1, x1, y2, x2, area, k, sel_k[j])
            weight = _ftz(np.exp(_ftz(_ftz(scale * iou) * iou)))
            if not is_soft and iou > iou_threshold:
                weight = _ZERO
            score = _ftz(score * weight)
            if not is_soft and iou > iou_threshold:
                hard = True
                break
            if score <= score_threshold:
                break
        if hard:
            continue
        if score == original:
            sel[n_sel] = hi[size]
            sel_scores[n_sel] = score
            sel_k[n_sel] = k
            n_sel += 1
        elif score > score_threshold:
            size = _heap_push(hs, hi, hk, hb, size, score, hi[size], k, n_sel)
    return sel[:n_sel], sel_scores[:n_sel]
