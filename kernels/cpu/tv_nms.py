"""Numba CPU kernels for torchvision's NMS (``nms_kernel_impl``) and its two batched branches.

What they compute is stated, with its sources, in ``npfrcnn.ops.tv_nms``; in short:

* candidates by descending score, a **stable** order (equal scores by lower index, NaN scores
  first, NaNs by lower index, ``-0.0 == 0.0``);
* float32 ``area = (x2 - x1) * (y2 - y1)`` per box; per pair ``w = max(0, min(x2) - max(x1))``
  (C++ ``std::max``/``std::min``, which return their *first* argument when a comparison with
  NaN fails: ``std::max(a, b) = a < b ? b : a``, ``std::min(a, b) = b < a ? b : a``),
  ``inter = w * h``, ``iou = inter / ((area_i + area_j) - inter)``, all float32;
* ``j`` is suppressed when ``float64(iou) > iou_threshold`` (a float64 scalar).

torchvision skips already suppressed ``j`` in its inner loop; ``nms_kernel`` computes the IoU
for every later candidate and ORs the flag in, which suppresses exactly the same boxes and lets
LLVM vectorize the loop (``error_model="numpy"``: no zero-division branch, a zero union gives
inf or NaN exactly as in C++). There is no fastmath, so every operation is an IEEE float32
operation in torchvision's order.

Inputs are assumed validated by ``npfrcnn.ops.tv_nms``: ``boxes`` C-contiguous float32
``[N, 4]`` ``(x1, y1, x2, y2)``, ``scores`` float32 ``[N]``, ``groups`` int64 ``[N]`` in
``0 .. n_groups - 1``, ``classes`` int64 ``[N]``, ``iou_threshold`` a float64 scalar.
"""

from __future__ import annotations

import numpy as np
from numba import njit

_ZERO = np.float32(0.0)
_ONE = np.float32(1.0)


@njit(cache=True)
def _stable_order_desc(scores):  # pragma: no cover - compiled
    """``scores.sort(stable=True, descending=True).indices``: NaN first, ties by lower index."""
    n = scores.shape[0]
    order = np.empty(n, np.int64)
    n_nan = 0
    for i in range(n):
        if np.isnan(scores[i]):
            order[n_nan] = i
            n_nan += 1
    rest = np.empty(n - n_nan, np.int64)
    m = 0
    for i in range(n):
        if not np.isnan(scores[i]):
            rest[m] = i
            m += 1
    key = np.empty(m, np.float32)
    for t in range(m):
        key[t] = -scores[rest[t]]  # ascending -score is descending score; -0.0 == 0.0
    by_key = np.argsort(key, kind="mergesort")  # stable
    for t in range(m):
        order[n_nan + t] = rest[by_key[t]]
    return order


@njit(cache=True, error_model="numpy")
def nms_kernel(boxes, scores, iou_threshold):  # pragma: no cover - compiled
    """int64 kept indices of ``torchvision.ops.nms(boxes, scores, iou_threshold)``, in selection
    order (descending score, stable), for ``N >= 0`` boxes."""
    n = boxes.shape[0]
    order = _stable_order_desc(scores)
    # Corners and areas gathered in candidate order, so the inner loop reads contiguously.
    x1 = np.empty(n, np.float32)
    y1 = np.empty(n, np.float32)
    x2 = np.empty(n, np.float32)
    y2 = np.empty(n, np.float32)
    area = np.empty(n, np.float32)
    for p in range(n):
        i = order[p]
        x1[p] = boxes[i, 0]
        y1[p] = boxes[i, 1]
        x2[p] = boxes[i, 2]
        y2[p] = boxes[i, 3]
        area[p] = (boxes[i, 2] - boxes[i, 0]) * (boxes[i, 3] - boxes[i, 1])
    suppressed = np.zeros(n, np.uint8)
    keep = np.empty(n, np.int64)
    n_keep = 0
    for p in range(n):
        if suppressed[p]:
            continue
        keep[n_keep] = order[p]
        n_keep += 1
        ix1 = x1[p]
        iy1 = y1[p]
        ix2 = x2[p]
        iy2 = y2[p]
        iarea = area[p]
        for q in range(p + 1, n):
            xx1 = x1[q] if ix1 < x1[q] else ix1  # std::max(ix1, x1[j])
            yy1 = y1[q] if iy1 < y1[q] else iy1
            xx2 = x2[q] if x2[q] < ix2 else ix2  # std::min(ix2, x2[j])
            yy2 = y2[q] if y2[q] < iy2 else iy2
            dw = xx2 - xx1
            dh = yy2 - yy1
            w = dw if _ZERO < dw else _ZERO  # std::max(0, dw): 0 when dw is NaN
            h = dh if _ZERO < dh else _ZERO
            inter = w * h
            iou = inter / (iarea + area[q] - inter)
            suppressed[q] |= np.float64(iou) > iou_threshold
    return keep[:n_keep].copy()


@njit(cache=True, error_model="numpy")
def vanilla_keep_kernel(boxes, scores, groups, n_groups, iou_threshold):  # pragma: no cover
    """``_batched_nms_vanilla`` up to its final sort: for each group, :func:`nms_kernel` on the
    group's boxes in ascending index order; returns the kept indices, ascending (``where``)."""
    n = boxes.shape[0]
    by_group = np.argsort(groups, kind="mergesort")  # stable: ascending index within a group
    start = np.zeros(n_groups + 1, np.int64)
    for i in range(n):
        start[groups[i] + 1] += 1
    for g in range(n_groups):
        start[g + 1] += start[g]
    mask = np.zeros(n, np.bool_)
    for g in range(n_groups):
        members = by_group[start[g] : start[g + 1]]
        m = members.shape[0]
        sub_boxes = np.empty((m, 4), np.float32)
        sub_scores = np.empty(m, np.float32)
        for t in range(m):
            sub_boxes[t] = boxes[members[t]]
            sub_scores[t] = scores[members[t]]
        kept = nms_kernel(sub_boxes, sub_scores, iou_threshold)
        for t in range(kept.shape[0]):
            mask[members[kept[t]]] = True
    return np.flatnonzero(mask).astype(np.int64)


@njit(cache=True, error_model="numpy")
def coordinate_trick_kernel(boxes, scores, classes, iou_threshold):  # pragma: no cover
    """``_batched_nms_coordinate_trick`` for ``N >= 1`` boxes: every box shifted by
    ``float32(class) * (max + 1)``, ``max`` being the largest coordinate (NaN if any is NaN,
    as ``torch.max``), all in float32; then :func:`nms_kernel` on the shifted boxes."""
    n = boxes.shape[0]
    top = boxes[0, 0]
    for i in range(n):
        for c in range(4):
            v = boxes[i, c]
            if np.isnan(v):
                top = v
            elif v > top:  # never true once top is NaN
                top = v
    step = top + _ONE
    shifted = np.empty((n, 4), np.float32)
    for i in range(n):
        offset = np.float32(classes[i]) * step
        for c in range(4):
            shifted[i, c] = boxes[i, c] + offset
    return nms_kernel(shifted, scores, iou_threshold)
