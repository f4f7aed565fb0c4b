"""Non-max suppression on the GPU: TF ``NonMaxSuppressionV3`` semantics, bitmask design.

Same function as ``npfrcnn.ops.nms(..., backend="numpy")``:

* candidates are boxes with ``score > score_threshold`` (strict; NaN scores never qualify);
* they are visited by descending score, equal scores by lower index (``-0.0 == +0.0``);
* IoU is float32 from min/max corners (any diagonal corner order), 0 when either area is
  ``<= 0``; a box is suppressed when its IoU with a selected box is ``> iou_threshold``
  (strict, so IoU exactly at the threshold is kept);
* selection stops after ``max_output_size`` boxes; indices come out in selection order;
* subnormals count as 0 (TF's CPU threads run with FTZ/DAZ, and the reference emulates it):
  inputs and thresholds are flushed, and so is every intermediate of the IoU, in the
  reference's places. Every float32 operation is a non-contracting ``_cuda`` helper, so the
  IoUs are bitwise the reference's.

Device pipeline (no host round trip until the final count):

1. ``_score_keys``: one uint64 key per box, ``(descending score rank) << 32 | index`` for
   candidates and ``2**64 - 1`` otherwise.
2. ``sort.sort_keys``: a bitonic sort of the keys, so position ``p`` holds the ``p``-th box to
   visit (ties by lower index come free: the index is the low word of the key), and the ``M``
   candidates come first.
3. ``_order_and_gather``: the candidates' original indices and their boxes as
   ``(ymin, xmin, ymax, xmax, area)`` rows, in visiting order, and ``M`` (the position where
   the keys turn to all ones).
4. ``_mask``: for every pair of 64-box blocks ``(rb, cb)`` with ``cb >= rb`` (upper triangle
   only), one 64-thread block loads block ``cb`` into shared memory and each thread writes the
   word ``mask[row, cb]`` whose bit ``b`` says that box ``row`` suppresses box ``64 cb + b``
   (only ``64 cb + b > row`` is ever set).
5. ``_select``: one block walks the 64-box blocks in order. It loads the block's diagonal words
   into shared memory; thread 0 visits the block's boxes not in the running ``removed`` word,
   lowest first (a visited box is selected, unless its class is full, and then clears the boxes
   its diagonal word suppresses); then all threads write the selected indices and OR the
   selected rows into the later ``removed`` words, coalesced. It stops
   as soon as ``max_output_size`` boxes are selected.

``batched_nms`` is the same pipeline with a class test in ``_mask`` (boxes of different classes
never suppress each other) and a per-class selection limit in ``_select``: greedy NMS per class,
merged in the global (score desc, index asc) order, which is exactly per-class NMS merged by
score with ties by lower index.
"""

from __future__ import annotations

import math
from typing import Any

import numba
import numpy as np
import numpy.typing as npt

from . import _cuda
from ._cuda import NMS_BLOCK, cuda, device_function, fadd, fdiv, fmul, fsub, ftz
from .sort import padded_length, sort_keys, sort_threads

__all__ = ["batched_nms", "batched_nms_kernel", "nms", "nms_kernel"]

_ALL_ONES = np.uint64(0xFFFFFFFFFFFFFFFF)


@cuda.jit
def _score_keys(scores, bits, n, score_threshold, keys):
    start = cuda.grid(1)
    stride = cuda.gridsize(1)
    sign = np.uint64(0x80000000)
    low = np.uint64(0xFFFFFFFF)
    for p in range(start, keys.shape[0], stride):
        key = _ALL_ONES
        if p < n:
            s = ftz(scores[p])  # DAZ: a subnormal score is 0
            if s > score_threshold:
                u = np.uint64(bits[p])
                if s == 0:  # -0.0 ties with +0.0
                    u = np.uint64(0)
                if u & sign:
                    asc = (~u) & low  # negative: larger magnitude sorts lower
                else:
                    asc = u | sign
                desc = low - asc
                key = (desc << np.uint64(32)) | np.uint64(p)
        keys[p] = key


@device_function
def _gather_one(boxes, i, sboxes, p):
    """Box ``i`` as row ``p`` of ``sboxes``: ``(ymin, xmin, ymax, xmax, area)``, DAZ."""
    a0 = ftz(boxes[i, 0])
    a1 = ftz(boxes[i, 1])
    a2 = ftz(boxes[i, 2])
    a3 = ftz(boxes[i, 3])
    ymin = min(a0, a2)
    xmin = min(a1, a3)
    ymax = max(a0, a2)
    xmax = max(a1, a3)
    sboxes[p, 0] = ymin
    sboxes[p, 1] = xmin
    sboxes[p, 2] = ymax
    sboxes[p, 3] = xmax
    sboxes[p, 4] = ftz(fmul(ftz(fsub(ymax, ymin)), ftz(fsub(xmax, xmin))))


@cuda.jit
def _order_and_gather(keys, boxes, order, sboxes, count):
    """After the sort the candidates' keys are a prefix (the rest are all ones): write their
    indices and boxes in visiting order, and their number (the prefix's end) to ``count``."""
    low = np.uint64(0xFFFFFFFF)
    start = cuda.grid(1)
    stride = cuda.gridsize(1)
    for p in range(start, order.shape[0], stride):
        key = keys[p]
        if key != _ALL_ONES:
            i = np.int64(key & low)
            order[p] = i
            _gather_one(boxes, i, sboxes, p)
            if p + 1 == keys.shape[0] or keys[p + 1] == _ALL_ONES:
                count[0] = p + 1
        elif p == 0:
            count[0] = 0


@cuda.jit
def _gather(order, boxes, count, sboxes):
    m = count[0]
    start = cuda.grid(1)
    stride = cuda.gridsize(1)
    for p in range(start, m, stride):
        _gather_one(boxes, order[p], sboxes, p)


@device_function
def _iou(a0, a1, a2, a3, area_a, b0, b1, b2, b3, area_b):
    zero = np.float32(0.0)
    if area_a <= zero or area_b <= zero:
        return zero
    ih = max(ftz(fsub(min(a2, b2), max(a0, b0))), zero)
    iw = max(ftz(fsub(min(a3, b3), max(a1, b1))), zero)
    inter = ftz(fmul(ih, iw))
    return ftz(fdiv(inter, ftz(fsub(ftz(fadd(area_a, area_b)), inter))))


@cuda.jit
def _mask(sboxes, classes, use_classes, count, nb, threshold, mask):
    col = cuda.shared.array((NMS_BLOCK, 5), dtype=numba.float32)
    colc = cuda.shared.array(NMS_BLOCK, dtype=numba.int32)
    m = count[0]
    tid = cuda.threadIdx.x
    nt = cuda.blockDim.x  # NMS_BLOCK on a GPU (one row per thread); fewer in simulator tests
    npairs = nb * (nb + 1) // 2
    one = np.uint64(1)
    for t in range(cuda.blockIdx.x, npairs, cuda.gridDim.x):
        # pairs enumerated column by column: t = cb (cb + 1) / 2 + rb, 0 <= rb <= cb
        cb = np.int64((math.sqrt(8.0 * t + 1.0) - 1.0) * 0.5)
        while cb * (cb + 1) // 2 > t:
            cb -= 1
        while (cb + 1) * (cb + 2) // 2 <= t:
            cb += 1
        rb = t - cb * (cb + 1) // 2
        if cb * NMS_BLOCK >= m:  # uniform over the block: skip pairs past the candidates
            continue
        ncol = min(NMS_BLOCK, m - cb * NMS_BLOCK)
        for q in range(tid, ncol, nt):
            j = cb * NMS_BLOCK + q
            for f in range(5):
                col[q, f] = sboxes[j, f]
            if use_classes:
                colc[q] = classes[j]
        cuda.syncthreads()
        for rr in range(tid, NMS_BLOCK, nt):
            row = rb * NMS_BLOCK + rr
            if row >= m:
                break
            r0 = sboxes[row, 0]
            r1 = sboxes[row, 1]
            r2 = sboxes[row, 2]
            r3 = sboxes[row, 3]
            ra = sboxes[row, 4]
            rc = classes[row] if use_classes else 0
            first = rr + 1 if rb == cb else 0
            bits = np.uint64(0)
            for q in range(first, ncol):
                if use_classes and colc[q] != rc:
                    continue
                v = _iou(r0, r1, r2, r3, ra, col[q, 0], col[q, 1], col[q, 2], col[q, 3], col[q, 4])
                if v > threshold:
                    bits |= one << np.uint64(q)
            mask[row, cb] = bits
        cuda.syncthreads()


@cuda.jit
def _select(
    mask, count, order, classes, use_classes, class_limit, class_count, limit, removed, out, nout
):
    diag = cuda.shared.array(NMS_BLOCK, dtype=numba.uint64)
    kept = cuda.shared.array(NMS_BLOCK, dtype=numba.int64)
    state = cuda.shared.array(2, dtype=numba.int64)  # [kept in this block, selected so far]
    tid = cuda.threadIdx.x
    nt = cuda.blockDim.x
    m = count[0]
    nbm = (m + NMS_BLOCK - 1) // NMS_BLOCK
    one = np.uint64(1)
    for w in range(tid, nbm, nt):
        removed[w] = np.uint64(0)
    if tid == 0:
        state[1] = 0
    cuda.syncthreads()
    for cb in range(nbm):
        base = cb * NMS_BLOCK
        nrow = min(NMS_BLOCK, m - base)
        for q in range(tid, nrow, nt):
            diag[q] = mask[base + q, cb]
        cuda.syncthreads()
        if tid == 0:
            # Visit only the block's boxes not yet removed, lowest first: each step takes the
            # lowest bit of ``todo``; a selected box clears the boxes it suppresses (its
            # diagonal word only has bits above its own). As many steps as boxes left standing,
            # not 64.
            todo = ~removed[cb]
            if nrow < NMS_BLOCK:
                todo &= (one << np.uint64(nrow)) - one
            total = state[1]
            k = 0
            while todo != 0 and total < limit:
                low = todo & (~todo + one)
                q = cuda.popc(low - one)
                todo ^= low
                if use_classes:
                    c = classes[base + q]
                    if class_count[c] >= class_limit:
                        continue
                    class_count[c] += 1
                kept[k] = base + q
                k += 1
                total += 1
                todo &= ~diag[q]
            state[0] = k
        cuda.syncthreads()
        k = state[0]
        first = state[1]
        for q in range(tid, k, nt):
            out[first + q] = order[kept[q]]
        for w in range(cb + 1 + tid, nbm, nt):
            acc = removed[w]
            for q in range(k):
                acc |= mask[kept[q], w]
            removed[w] = acc
        cuda.syncthreads()
        if tid == 0:
            state[1] = first + k
        cuda.syncthreads()
        if state[1] >= limit:
            break
    if tid == 0:
        nout[0] = state[1]


@cuda.jit
def _take(src, order, count, dst):
    m = count[0]
    start = cuda.grid(1)
    stride = cuda.gridsize(1)
    for p in range(start, m, stride):
        dst[p] = src[order[p]]


def _flushed(v: float) -> np.float32:
    """A threshold as the float32 the kernels compare with, subnormals flushed (DAZ)."""
    f = np.float32(v)
    return np.float32(0.0) if abs(f) < _cuda.TINY else f


def _device_order(
    d_boxes: Any, d_scores: Any, score_threshold: float, tpb: int
) -> tuple[Any, Any, Any]:
    """Candidates in visiting order, sorted on the device, and their boxes:
    ``(order [N] int64, count [1] int32, sboxes [N, 5] float32)``, the first ``count`` valid."""
    n = int(d_scores.shape[0])
    st = sort_threads(tpb)
    p = padded_length(n, st)
    keys = _cuda.scratch("nms.keys", p, np.uint64)
    _score_keys[_cuda.blocks_for(p, tpb), tpb](
        d_scores, d_scores.view(np.uint32), n, _flushed(score_threshold), keys
    )
    sort_keys(keys, st)
    order = _cuda.scratch("nms.order", n, np.int64)
    sboxes = _cuda.scratch("nms.sboxes", (n, 5), np.float32)
    count = _cuda.scratch("nms.count", 1, np.int32)
    _order_and_gather[_cuda.blocks_for(n, tpb), tpb](keys, d_boxes, order, sboxes, count)
    return order, count, sboxes


def _host_order(d_boxes: Any, order: npt.NDArray[np.int64]) -> tuple[Any, Any, Any]:
    """``_device_order`` for candidates already sorted on the host."""
    tpb = _cuda.threads_per_block()
    m = int(order.shape[0])
    d_order = _cuda.to_device(order, np.int64)
    count = _cuda.to_device(np.array([m], dtype=np.int32), np.int32)
    sboxes = _cuda.scratch("nms.sboxes", (m, 5), np.float32)
    _gather[_cuda.blocks_for(m, tpb), tpb](d_order, d_boxes, count, sboxes)
    return d_order, count, sboxes


def _suppress(
    sboxes: Any,
    order: Any,
    count: Any,
    dense_classes: npt.NDArray[np.int64] | None,
    iou_threshold: float,
    limit: int,
    class_limit: int,
    on_device: bool,
) -> tuple[Any, int]:
    """Mask and selection over the candidates ``order[:count]`` (boxes ``sboxes``):
    ``(indices [N], K)``."""
    tpb = _cuda.threads_per_block()
    n = int(order.shape[0])
    use_classes = dense_classes is not None
    if dense_classes is not None:
        d_classes = _cuda.scratch("nms.classes", n, np.int32)
        src = _cuda.to_device(dense_classes, np.int32)
        _take[_cuda.blocks_for(n, tpb), tpb](src, order, count, d_classes)
        num_classes = int(dense_classes.max()) + 1 if dense_classes.size else 1
        class_count = _cuda.to_device(np.zeros(num_classes, dtype=np.int64), np.int64)
    else:
        d_classes = _cuda.scratch("nms.classes", 1, np.int32)
        class_count = _cuda.scratch("nms.class_count", 1, np.int64)
    nb = (n + NMS_BLOCK - 1) // NMS_BLOCK
    mask = _cuda.scratch("nms.mask", (n, nb), np.uint64)
    npairs = nb * (nb + 1) // 2
    _mask[max(1, min(npairs, _cuda.MAX_BLOCKS)), min(NMS_BLOCK, tpb)](
        sboxes, d_classes, use_classes, count, nb, _flushed(iou_threshold), mask
    )
    removed = _cuda.scratch("nms.removed", nb, np.uint64)
    # the result: fresh when it is handed back on the device, a work array when copied out
    out = _cuda.device_array(n, np.int64) if on_device else _cuda.scratch("nms.out", n, np.int64)
    nout = _cuda.scratch("nms.nout", 1, np.int64)
    _select[1, tpb](
        mask,
        count,
        order,
        d_classes,
        use_classes,
        class_limit,
        class_count,
        limit,
        removed,
        out,
        nout,
    )
    return out, int(nout.copy_to_host()[0])


def _finish(out: Any, k: int, on_device: bool) -> Any:
    return out[:k] if on_device else out[:k].copy_to_host()


def _empty(on_device: bool) -> Any:
    empty = np.zeros(0, dtype=np.int64)
    return _cuda.to_device(empty, np.int64) if on_device else empty


def nms(
    boxes: Any,
    scores: Any,
    iou_threshold: float,
    max_output_size: int | None = None,
    score_threshold: float = float("-inf"),
) -> Any:
    """TF ``NonMaxSuppressionV3`` on the GPU, score sort included (no validation here).

    Args:
        boxes: ``[N, 4]`` float32, any diagonal corner order; a NumPy array (copied in) or a
            C-contiguous float32 device array (used in place, no copy).
        scores: ``[N]`` float32, host or device like ``boxes``.
        iou_threshold: suppress when the float32 IoU is ``>`` ``float32(iou_threshold)``.
        max_output_size: at most this many indices (``>= 0``); ``None`` for no limit.
        score_threshold: only boxes with score ``>`` ``float32(score_threshold)`` are candidates.

    Returns:
        ``[K]`` int64 indices into ``boxes`` in selection order (descending score, equal scores
        by lower index): a NumPy array for NumPy input, a device array for device input.
        ``N == 0`` or ``max_output_size == 0`` gives an empty result.
    """
    on_device = _cuda.is_device_array(boxes)
    n = int(scores.shape[0])
    limit = n if max_output_size is None else int(max_output_size)
    if n == 0 or limit <= 0:
        return _empty(on_device)
    d_boxes = _cuda.as_device(boxes, np.float32)
    d_scores = _cuda.as_device(scores, np.float32)
    order, count, sboxes = _device_order(
        d_boxes, d_scores, score_threshold, _cuda.threads_per_block()
    )
    out, k = _suppress(sboxes, order, count, None, iou_threshold, limit, 0, on_device)
    return _finish(out, k, on_device)


def batched_nms(
    boxes: Any,
    scores: Any,
    classes: Any,
    iou_threshold: float,
    max_output_size_per_class: int | None = None,
    score_threshold: float = float("-inf"),
) -> Any:
    """``nms`` within each class, merged by descending score, equal scores by lower index.

    Args:
        boxes, scores, iou_threshold, score_threshold: as :func:`nms`.
        classes: ``[N]`` integer class of each box, any integer values, host or device (copied
            to the host once to number the classes ``0..C-1``).
        max_output_size_per_class: at most this many indices per class; ``None``: no limit.

    Returns:
        ``[K]`` int64 indices in merged order, on the device for device input.
    """
    on_device = _cuda.is_device_array(boxes)
    n = int(scores.shape[0])
    per_class = n if max_output_size_per_class is None else int(max_output_size_per_class)
    if n == 0 or per_class <= 0:
        return _empty(on_device)
    _, dense = np.unique(_cuda.to_host(classes).reshape(-1), return_inverse=True)
    d_boxes = _cuda.as_device(boxes, np.float32)
    d_scores = _cuda.as_device(scores, np.float32)
    order, count, sboxes = _device_order(
        d_boxes, d_scores, score_threshold, _cuda.threads_per_block()
    )
    out, k = _suppress(
        sboxes,
        order,
        count,
        dense.reshape(-1).astype(np.int64),
        iou_threshold,
        n,
        per_class,
        on_device,
    )
    return _finish(out, k, on_device)


def nms_kernel(
    boxes: npt.NDArray[np.float32],
    order: npt.NDArray[np.int64],
    iou_threshold: float,
    max_output_size: int,
) -> npt.NDArray[np.int64]:
    """Same contract as ``npfrcnn.kernels.cpu.nms.nms_kernel``: NMS over host-sorted candidates.

    ``order`` lists the candidate indices already in visiting order (descending score, ties by
    lower index); the GPU computes the mask and the selection. Returns int64 ``[K]`` on the host.
    """
    m = int(order.shape[0])
    if m == 0 or max_output_size <= 0:
        return np.zeros(0, dtype=np.int64)
    d_order, count, sboxes = _host_order(_cuda.as_device(boxes, np.float32), order)
    out, k = _suppress(sboxes, d_order, count, None, iou_threshold, int(max_output_size), 0, False)
    return _finish(out, k, False)


def batched_nms_kernel(
    boxes: npt.NDArray[np.float32],
    order: npt.NDArray[np.int64],
    classes: npt.NDArray[np.int64],
    iou_threshold: float,
    max_per_class: int,
) -> npt.NDArray[np.int64]:
    """Same contract as ``npfrcnn.kernels.cpu.nms.batched_nms_kernel`` (dense class ids
    ``0..C-1``, host-sorted candidates); returns int64 ``[K]`` in merged order on the host."""
    m = int(order.shape[0])
    if m == 0 or max_per_class <= 0:
        return np.zeros(0, dtype=np.int64)
    d_order, count, sboxes = _host_order(_cuda.as_device(boxes, np.float32), order)
    out, k = _suppress(
        sboxes,
        d_order,
        count,
        np.asarray(classes, np.int64),
        iou_threshold,
        m,
        int(max_per_class),
        False,
    )
    return _finish(out, k, False)
