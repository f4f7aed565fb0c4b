"""Non-maximum suppression: TensorFlow's CPU kernel, exactly (spec 6.2).

Front doors for ``nms`` (``tf.image.non_max_suppression``, op ``NonMaxSuppressionV3``),
``soft_nms`` (``tf.image.non_max_suppression_with_scores``, ``NonMaxSuppressionV5``) and
``batched_nms`` (``nms`` run per class). They validate, handle empty input and dispatch:

* ``backend="numpy"``: the reference below, a plain loop transcribed from TF's
  ``DoNonMaxSuppressionOp`` (``tensorflow/core/kernels/image/non_max_suppression_op.cc``);
* ``backend="cpu"``: the Numba kernels in ``npfrcnn.kernels.cpu.nms``;
* ``backend="cuda"``: ``npfrcnn.kernels.cuda.nms`` (``nms`` and ``batched_nms``, score sort
  included, on the GPU; soft-NMS has no CUDA kernel and says so). Host arrays are copied in and
  the indices copied out. GPU arrays (CuPy, CUDA torch tensors, numba device arrays: anything
  with ``__cuda_array_interface__``; float32 C-contiguous boxes and scores, integer classes)
  are used in place and the indices come back as a GPU array (numba's). Their shapes and
  dtypes are checked; their values are not, since that would copy them to the host.

What TF computes, and therefore what every backend computes:

* IoU in float32, order agnostic: each box's corners are ``min``/``max`` of its two diagonal
  corners, ``area = (ymax - ymin) * (xmax - xmin)``; if either area is ``<= 0`` the IoU is 0,
  else ``inter = max(min(ymax) - max(ymin), 0) * max(min(xmax) - max(xmin), 0)`` and
  ``IoU = inter / (area_i + area_j - inter)``, each operation rounded to float32.
* Thresholds are rounded to float32 (TF feeds them as float32 tensors) and compared in float32:
  a box is suppressed when ``IoU > iou_threshold`` (strict: IoU equal to it is kept);
  candidates are boxes with ``score > score_threshold`` (strict; a NaN score never is one).
* Candidates are visited by descending score, equal scores by lower index (TF >= 2.1, PR
  #32568; ``-0.0`` and ``0.0`` are equal scores). Each is compared with the boxes already
  selected; the output lists the selected indices in selection order.
* TF's CPU threads run with subnormals flushed to zero (FTZ/DAZ). So do we, by emulation:
  subnormal inputs (coordinates, scores, thresholds) count as 0 and every subnormal
  intermediate is flushed. A score of ``1e-45`` is therefore equal to ``0`` (a tie, lower index
  first, and not above ``score_threshold=0``), and a box whose area underflows has area 0.
  This only matters for values below ``1.2e-38``.
"""

from __future__ import annotations

import heapq
import math
from typing import Any

import numpy as np
import numpy.typing as npt

from npfrcnn._validate import (
    INT64_MAX,
    _describe,
    as_boxes,
    as_scores,
    check_backend,
    check_device_array,
    check_int_range,
    check_unit_interval,
    device_inputs,
)
from npfrcnn.ops._backend import kernel as backend_kernel
from npfrcnn.ops._libm import LIBM_EXPF

__all__ = ["batched_nms", "nms", "soft_nms"]

IndexArray = npt.NDArray[np.int64]
F32 = np.float32
_TINY = np.finfo(np.float32).tiny  # smallest normal float32; below it TF's CPU sees zero


# --------------------------------------------------------------------------------------------
# Reference (backend="numpy")
# --------------------------------------------------------------------------------------------


_EXPF = LIBM_EXPF


def _expf(x: np.float32) -> np.float32:
    """float32 ``exp`` as libm's ``expf`` computes it (TF's soft-NMS weight).

    NumPy's own float32 ``exp`` is not libm's and differs in the last bit for many arguments;
    without a loadable libm we fall back to the correctly rounded value, which differs from
    glibc's ``expf`` in the last bit for roughly 1 argument in 2,000.
    """
    if _EXPF is not None:
        return F32(_EXPF(float(x)))
    return F32(math.exp(float(x)))


def _ftz(x: Any) -> Any:
    """Flush subnormal float32 values to zero (TF's CPU threads run with FTZ and DAZ)."""
    if np.ndim(x) == 0:
        v = F32(x)
        return F32(0.0) if abs(v) < _TINY else v  # NaN stays NaN
    return np.where(np.abs(x) < _TINY, F32(0.0), x).astype(np.float32)


def _corner_table(boxes: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """``[N, 5]`` float32 ``(ymin, xmin, ymax, xmax, area)`` of boxes in any corner order.

    TF's ``IOU`` takes min/max of each diagonal pair, then ``(ymax - ymin) * (xmax - xmin)``.
    """
    ymin = np.minimum(boxes[:, 0], boxes[:, 2])  # [N]
    xmin = np.minimum(boxes[:, 1], boxes[:, 3])
    ymax = np.maximum(boxes[:, 0], boxes[:, 2])
    xmax = np.maximum(boxes[:, 1], boxes[:, 3])
    area = _ftz(_ftz(ymax - ymin) * _ftz(xmax - xmin))
    return np.stack([ymin, xmin, ymax, xmax, area], axis=1)  # [N,5]


def _iou_one_to_many(
    table: npt.NDArray[np.float32], i: int, others: list[int]
) -> npt.NDArray[np.float32]:
    """TF's float32 ``IOU(boxes, i, j)`` for every ``j`` in ``others``: elementwise float32
    operations in TF's order, each result flushed as under FTZ, so every value is TF's."""
    a = table[i]  # [5]
    b = table[others]  # [M,5]
    ih = np.maximum(_ftz(np.minimum(a[2], b[:, 2]) - np.maximum(a[0], b[:, 0])), F32(0.0))  # [M]
    iw = np.maximum(_ftz(np.minimum(a[3], b[:, 3]) - np.maximum(a[1], b[:, 1])), F32(0.0))
    inter = _ftz(ih * iw)
    iou = _ftz(inter / _ftz(_ftz(a[4] + b[:, 4]) - inter))  # 0/0 only where an area is <= 0
    return np.atleast_1d(np.where((a[4] <= 0) | (b[:, 4] <= 0), F32(0.0), iou).astype(np.float32))


def _reference(
    boxes: npt.NDArray[np.float32],
    scores: npt.NDArray[np.float32],
    max_output_size: int,
    iou_threshold: np.float32,
    score_threshold: np.float32,
    sigma: np.float32,
) -> tuple[IndexArray, npt.NDArray[np.float32]]:
    """TF's ``DoNonMaxSuppressionOp``, step by step (float32 scalars throughout).

    TF's ``std::priority_queue`` pops the largest score, equal scores by lower index; Python's
    ``heapq`` is a min-heap, so entries are keyed ``(-score, index)``. Each entry carries
    ``suppress_begin``: how many selected boxes it has already been compared with. The IoUs
    with the selected boxes are computed together, then consumed newest first as TF does.
    """
    with np.errstate(all="ignore"):  # huge boxes overflow to inf exactly as in TF; no warnings
        return _reference_loop(
            boxes, scores, max_output_size, iou_threshold, score_threshold, sigma
        )


def _reference_loop(
    boxes: npt.NDArray[np.float32],
    scores: npt.NDArray[np.float32],
    max_output_size: int,
    iou_threshold: np.float32,
    score_threshold: np.float32,
    sigma: np.float32,
) -> tuple[IndexArray, npt.NDArray[np.float32]]:
    table = _corner_table(boxes)
    queue = [(-s, i, 0) for i, s in enumerate(scores.tolist()) if F32(s) > score_threshold]
    heapq.heapify(queue)
    is_soft = bool(sigma > 0)
    scale = _ftz(F32(-0.5) / sigma) if is_soft else F32(0.0)
    selected: list[int] = []
    selected_scores: list[np.float32] = []
    while len(selected) < max_output_size and queue:
        neg_score, index, begin = heapq.heappop(queue)
        score = original = F32(-neg_score)
        ious = _iou_one_to_many(table, index, selected[begin:])
        if not is_soft:
            # Hard NMS: the weight is exp(0) == 1, so the score never changes, and any IoU
            # above the threshold suppresses (TF stops at the first one, newest first).
            if np.any(ious > iou_threshold):
                continue
        else:
            for iou in ious[::-1]:  # newest selected box first
                weight = _ftz(_expf(_ftz(_ftz(scale * iou) * iou)))
                score = _ftz(score * weight)
                if score <= score_threshold:
                    break
        if score == original:  # never decayed: select it
            selected.append(index)
            selected_scores.append(score)
        elif score > score_threshold:  # decayed but alive: back into the queue
            heapq.heappush(queue, (-float(score), index, len(selected)))
    return np.asarray(selected, np.int64), np.asarray(selected_scores, np.float32)


# --------------------------------------------------------------------------------------------
# Validation and dispatch
# --------------------------------------------------------------------------------------------


def _prepare(
    boxes: npt.ArrayLike,
    scores: npt.ArrayLike,
    iou_threshold: float,
    max_output_size: int | None,
    score_threshold: float,
    max_name: str = "max_output_size",
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32], np.float32, int, np.float32]:
    """Validated float32 inputs with subnormals flushed to zero (TF's kernels see them so)."""
    b = as_boxes("boxes", boxes)
    s = as_scores("scores", scores, b.shape[0])
    thr, limit, st = _scalars(
        b.shape[0], iou_threshold, max_output_size, score_threshold, max_name
    )
    return _ftz(b), _ftz(s), thr, limit, st


def _scalars(
    n: int,
    iou_threshold: float,
    max_output_size: int | None,
    score_threshold: float,
    max_name: str = "max_output_size",
) -> tuple[np.float32, int, np.float32]:
    """The validated thresholds (float32, subnormals flushed) and output limit for ``n`` boxes."""
    thr = F32(check_unit_interval("iou_threshold", iou_threshold))
    if max_output_size is None:
        limit = n
    else:
        # The kernels count in int64; more than n outputs cannot happen, so the limit is
        # clamped to n (which changes no result) once it is known to be a valid int64.
        limit = min(
            n,
            check_int_range(
                max_name, max_output_size, 0, INT64_MAX, fix="pass None for no limit"
            ),
        )
    try:
        st = float(score_threshold)
    except (TypeError, ValueError):
        st = math.nan
    if math.isnan(st):
        raise ValueError(
            f"score_threshold must be a number, got {score_threshold!r}; "
            f"pass float('-inf') to keep every score"
        )
    return _ftz(thr), limit, _ftz(F32(st))


def _candidates(scores: npt.NDArray[np.float32], score_threshold: np.float32) -> IndexArray:
    """Indices with ``score > score_threshold``, sorted by descending score, ties lower index."""
    idx = np.flatnonzero(scores > score_threshold)
    key = -(scores[idx] + F32(0.0))  # + 0 turns -0.0 into 0.0: TF treats them as equal
    return idx[np.argsort(key, kind="stable")].astype(np.int64)


def _check_sigma(sigma: float) -> np.float32:
    try:
        v = float(sigma)
    except (TypeError, ValueError):
        v = math.nan
    if not v >= 0.0:
        raise ValueError(
            f"sigma must be >= 0, got {sigma!r}; pass 0.0 for hard NMS or e.g. 0.5 for soft NMS"
        )
    return _ftz(F32(v))


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def nms(
    boxes: npt.ArrayLike,
    scores: npt.ArrayLike,
    iou_threshold: float,
    max_output_size: int | None = None,
    score_threshold: float = float("-inf"),
    backend: str = "cpu",
) -> IndexArray:
    """Hard non-maximum suppression, exactly as ``tf.image.non_max_suppression`` (CPU).

    Args:
        boxes: ``[N, 4]`` boxes as any two diagonal corners; TF's layout is
            ``(y1, x1, y2, x2)``, but the result does not depend on the order. Converted to
            float32. Must be finite (TF does not check; NaN/inf give meaningless IoUs there).
        scores: ``[N]`` scores, converted to float32. NaN scores are never selected
            (``NaN > t`` is false, as in TF); ``+inf`` is allowed; subnormal scores rank as 0
            (TF's flush-to-zero, see the module docstring).
        iou_threshold: in ``[0, 1]``, rounded to float32. A box is suppressed by a selected one
            when their float32 IoU is strictly greater; IoU equal to it is kept. Boxes of area
            ``<= 0`` have IoU 0 with everything, so they are never suppressed nor suppress.
        max_output_size: at most this many indices, an integer in ``[0, 2**63 - 1]`` (the
            kernels' int64); ``None`` means ``N``.
        score_threshold: only boxes with ``score > score_threshold`` (strict, float32) are
            candidates.
        backend: ``"cpu"`` (Numba), ``"numpy"`` (reference) or ``"cuda"``.

    Returns:
        int64 ``[K]`` indices into ``boxes``, ``K <= max_output_size``, in selection order:
        descending score, equal scores by lower index. Empty input gives an empty int64 array.
    """
    check_backend(backend)
    if device_inputs("nms", backend, boxes=boxes, scores=scores):
        n = check_device_array("boxes", boxes, np.float32, (None, 4))[0]
        check_device_array("scores", scores, np.float32, (n,))
        thr, limit, st = _scalars(n, iou_threshold, max_output_size, score_threshold)
        cuda_nms = backend_kernel(backend, "nms", "nms")
        return cuda_nms(boxes, scores, float(thr), limit, float(st))
    if backend == "cpu":  # flushing and the candidates' sort compiled with the NMS itself
        b = as_boxes("boxes", boxes)
        s = as_scores("scores", scores, b.shape[0])
        thr, limit, st = _scalars(b.shape[0], iou_threshold, max_output_size, score_threshold)
        if b.shape[0] == 0 or limit == 0:
            return np.zeros(0, np.int64)
        kernel = backend_kernel(backend, "nms", "nms_unflushed")
        return np.asarray(kernel(b, s, st, thr, limit), dtype=np.int64)
    b, s, thr, limit, st = _prepare(boxes, scores, iou_threshold, max_output_size, score_threshold)
    if b.shape[0] == 0 or limit == 0:
        return np.zeros(0, np.int64)
    if backend == "numpy":
        return _reference(b, s, limit, thr, st, F32(0.0))[0]
    # cuda: the whole pipeline, score sort included, runs on the device
    cuda_nms = backend_kernel(backend, "nms", "nms")
    return np.asarray(cuda_nms(b, s, thr, limit, st), dtype=np.int64)


def soft_nms(
    boxes: npt.ArrayLike,
    scores: npt.ArrayLike,
    max_output_size: int | None = None,
    iou_threshold: float = 0.5,
    score_threshold: float = float("-inf"),
    sigma: float = 0.0,
    backend: str = "cpu",
) -> tuple[IndexArray, npt.NDArray[np.float32]]:
    """Soft-NMS, exactly as ``tf.image.non_max_suppression_with_scores`` (CPU, V5).

    Candidates (``score > score_threshold``) are popped by descending current score (ties:
    lower index). A popped candidate is compared with the selected boxes it has not met yet,
    newest first, and its score multiplied by ``exp(scale * iou**2)``, ``scale = -0.5 /
    sigma`` (all float32; ``exp`` is libm's ``expf`` as in TF). If no factor changed its score
    it is selected with that score; otherwise, if the score is still ``> score_threshold``, it
    goes back into the queue, and else it is dropped.

    Args:
        boxes, scores, max_output_size, score_threshold: as in :func:`nms`.
        iou_threshold: in ``[0, 1]``; used only when ``sigma == 0``. TF's kernel applies hard
            suppression only in that case, and ignores this threshold when ``sigma > 0``.
        sigma: ``>= 0``. ``0`` gives hard NMS (the same indices as :func:`nms`, with the
            original scores).
        backend: ``"cpu"``, ``"numpy"`` or ``"cuda"``.

    Returns:
        ``(indices, scores)``: int64 ``[K]`` in selection order and their float32 ``[K]``
        scores at selection (decayed for soft-NMS). Not necessarily sorted by the *original*
        score. Empty input gives empty int64 and float32 arrays.
    """
    check_backend(backend)
    if device_inputs("soft_nms", backend, boxes=boxes, scores=scores):
        raise ValueError(
            "soft_nms has no CUDA kernel: copy boxes and scores to the host and use "
            "backend='cpu'"
        )
    b, s, thr, limit, st = _prepare(boxes, scores, iou_threshold, max_output_size, score_threshold)
    sig = _check_sigma(sigma)
    if b.shape[0] == 0 or limit == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    if backend == "numpy":
        idx, out = _reference(b, s, limit, thr, st, sig)
    else:
        kernel = backend_kernel(backend, "nms", "soft_nms_kernel")
        idx, out = kernel(b, s, _candidates(s, st), thr, st, sig, limit)
        idx, out = np.asarray(idx, np.int64), np.asarray(out, np.float32)
    if idx.shape[0]:
        # The first selection is never multiplied, and TF copies its score unchanged: a
        # subnormal input score comes back as it was, not flushed.
        out[0] = np.asarray(scores, dtype=np.float32)[idx[0]]
    return idx, out


def batched_nms(
    boxes: npt.ArrayLike,
    scores: npt.ArrayLike,
    classes: npt.ArrayLike,
    iou_threshold: float,
    max_output_size_per_class: int | None = None,
    score_threshold: float = float("-inf"),
    backend: str = "cpu",
) -> IndexArray:
    """:func:`nms` run independently for each class; boxes of different classes never interact.

    Args:
        boxes, scores, iou_threshold, score_threshold: as in :func:`nms`.
        classes: ``[N]`` integer class of each box (any integer values).
        max_output_size_per_class: at most this many boxes per class, an integer in
            ``[0, 2**63 - 1]``; ``None``: no limit.
        backend: ``"cpu"``, ``"numpy"`` or ``"cuda"``.

    Returns:
        int64 ``[K]`` indices into ``boxes``: the union of the per-class :func:`nms` results,
        ordered by descending score, equal scores by lower index (so within one class the
        order is that class's selection order). Empty input gives an empty int64 array.
    """
    check_backend(backend)
    if device_inputs("batched_nms", backend, boxes=boxes, scores=scores, classes=classes):
        n = check_device_array("boxes", boxes, np.float32, (None, 4))[0]
        check_device_array("scores", scores, np.float32, (n,))
        check_device_array("classes", classes, None, (n,))  # any integer dtype
        thr, limit, st = _scalars(
            n, iou_threshold, max_output_size_per_class, score_threshold,
            "max_output_size_per_class",
        )
        cuda_batched = backend_kernel(backend, "nms", "batched_nms")
        return cuda_batched(
            boxes, scores, classes, float(thr), limit, float(st)
        )
    b, s, thr, limit, st = _prepare(
        boxes, scores, iou_threshold, max_output_size_per_class, score_threshold,
        "max_output_size_per_class",
    )
    c = np.asarray(classes)
    if c.ndim != 1 or c.dtype.kind not in "iub":
        raise ValueError(
            f"classes must be a 1-D integer array, got {_describe(c)}; "
            f"pass np.asarray(classes, dtype=np.int64)"
        )
    if c.shape[0] != b.shape[0]:
        raise ValueError(
            f"classes has {c.shape[0]} entries but boxes has {b.shape[0]} rows; "
            f"pass one class per box"
        )
    if b.shape[0] == 0 or limit == 0:
        return np.zeros(0, np.int64)
    _, dense = np.unique(c, return_inverse=True)  # class ids -> 0..C-1
    dense = dense.reshape(-1).astype(np.int64)
    if backend == "numpy":
        parts = [np.zeros(0, np.int64)]
        for k in range(int(dense.max()) + 1):
            members = np.flatnonzero(dense == k)
            keep = _reference(b[members], s[members], limit, thr, st, F32(0.0))[0]
            parts.append(members[keep])
        out = np.concatenate(parts)
        key = -(s[out] + F32(0.0))
        return out[np.lexsort((out, key))].astype(np.int64)
    if backend == "cuda":
        cuda_batched = backend_kernel(backend, "nms", "batched_nms")
        return np.asarray(cuda_batched(b, s, dense, thr, limit, st), dtype=np.int64)
    kernel = backend_kernel(backend, "nms", "batched_nms_kernel")
    return np.asarray(kernel(b, _candidates(s, st), dense, thr, limit), dtype=np.int64)


