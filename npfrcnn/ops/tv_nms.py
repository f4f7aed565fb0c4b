"""Non-maximum suppression as torchvision computes it on the CPU (spec 5.5 and 6).

Front doors for

* ``torchvision_nms``: ``torchvision.ops.nms`` (C++ ``nms_kernel_impl``,
  ``torchvision/csrc/ops/cpu/nms_kernel.cpp``);
* ``torchvision_batched_nms``: ``torchvision.ops.batched_nms`` with both of its branches
  (``torchvision/ops/boxes.py``: ``_batched_nms_vanilla``, ``_batched_nms_coordinate_trick``).

They validate, handle empty input and dispatch: ``backend="numpy"`` runs the reference below,
``backend="cpu"`` the Numba kernels in ``npfrcnn.kernels.cpu.tv_nms``. Both give the same
indices, and the same as torchvision 0.29.1 (checked in the tests).

What torchvision's NMS computes, and therefore what every backend computes:

* boxes are ``(x1, y1, x2, y2)``; nothing is reordered: a box with ``x2 < x1`` has a negative
  width and area, unlike TF's NMS (``npfrcnn.ops.nms``);
* candidates are taken by descending score, by a **stable** sort (equal scores by lower index;
  NaN scores count as the largest and come first, by lower index; ``-0.0 == 0.0``);
* float32 throughout, in this order: ``area = (x2 - x1) * (y2 - y1)`` per box; per pair
  ``w = max(0, min(x2_i, x2_j) - max(x1_i, x1_j))`` and the same for ``h``, ``inter = w * h``,
  ``iou = inter / ((area_i + area_j) - inter)``. ``max``/``min`` are C++'s ``std::max``/
  ``std::min``, which keep their first argument when a comparison with NaN fails (so a NaN
  width becomes 0);
* a later candidate is suppressed when ``float64(iou) > iou_threshold``, the threshold being
  the float64 value of the Python float (strict: an IoU equal to it is kept). A NaN IoU
  suppresses nothing;
* the result lists the kept indices in selection order (descending score, stable).

NaN and infinite coordinates and scores are accepted and give what torchvision gives (the
arithmetic above, IEEE float32, with the ``std::max`` rule); torchvision does not reject them.

``torchvision_batched_nms`` runs NMS per class (``idxs``). torchvision picks one of two
algorithms by size, and they can keep different boxes:

* ``"vanilla"`` (more than 1000 boxes on the CPU: ``boxes.numel() > 4000``): for each class,
  NMS on that class's boxes in ascending index order; the kept boxes of all classes, in
  ascending index order, are then sorted by descending score with torch's **unstable** sort
  (``torch.sort``, ``stable=False``: libstdc++ introsort, see ``npfrcnn.ops.torch_sort``), so
  equal scores across (or within) classes come out in introsort's order, not index order;
* ``"coordinate_trick"`` (1000 boxes or fewer): ``m = max`` over all coordinates (NaN if any
  is NaN), each box shifted by ``float32(idx) * (m + 1)``, all float32, then one NMS over all
  boxes. The result is in NMS selection order (stable). The shift rounds the coordinates, so
  IoUs (and sometimes the kept set) differ from the vanilla branch's.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from npfrcnn._validate import _describe, as_boxes, as_scores, check_backend, check_unit_interval
from npfrcnn.ops._backend import kernel as backend_kernel
from npfrcnn.ops.torch_sort import torch_sort_desc

__all__ = ["torchvision_batched_nms", "torchvision_nms"]

IndexArray = npt.NDArray[np.int64]
F32 = np.float32
BRANCHES = ("auto", "vanilla", "coordinate_trick")
VANILLA_ABOVE = 1000  # CPU: the vanilla branch runs for more than this many boxes (4000 values)
_BACKENDS = ("numpy", "cpu")


# --------------------------------------------------------------------------------------------
# Reference (backend="numpy")
# --------------------------------------------------------------------------------------------


def _cpp_max(a: npt.ArrayLike, b: npt.ArrayLike) -> npt.NDArray[np.float32]:
    """``std::max(a, b)``, elementwise: ``a < b ? b : a`` (``a`` when either is NaN)."""
    return np.where(np.less(a, b), b, a).astype(np.float32)


def _cpp_min(a: npt.ArrayLike, b: npt.ArrayLike) -> npt.NDArray[np.float32]:
    """``std::min(a, b)``, elementwise: ``b < a ? b : a`` (``a`` when either is NaN)."""
    return np.where(np.less(b, a), b, a).astype(np.float32)


def _stable_order_desc(scores: npt.NDArray[np.float32]) -> list[int]:
    """``scores.sort(stable=True, descending=True).indices``: NaN first, ties by lower index.

    Python's ``sorted`` is stable; the key puts NaN first and then larger scores first
    (``-0.0`` and ``0.0`` compare equal, as in C++)."""
    values = scores.tolist()
    return sorted(
        range(len(values)),
        key=lambda i: (0, 0.0) if math.isnan(values[i]) else (1, -values[i]),
    )


def _reference_nms(
    boxes: npt.NDArray[np.float32], scores: npt.NDArray[np.float32], iou_threshold: float
) -> IndexArray:
    """``nms_kernel_impl``, one selected box at a time.

    For each kept box the IoUs with all later candidates are computed together (float32,
    torchvision's order of operations). torchvision skips the candidates already suppressed;
    computing them too and OR-ing the flags suppresses the same boxes.
    """
    with np.errstate(all="ignore"):  # inf - inf, 0 / 0: the IEEE results are torchvision's
        x1, y1, x2, y2 = (boxes[:, c] for c in range(4))  # [N] each
        area = (x2 - x1) * (y2 - y1)  # [N] float32
        order = np.asarray(_stable_order_desc(scores), dtype=np.int64)
        suppressed = np.zeros(boxes.shape[0], dtype=bool)
        keep: list[int] = []
        threshold = np.float64(iou_threshold)
        for pos, i in enumerate(order.tolist()):
            if suppressed[i]:
                continue
            keep.append(i)
            rest = order[pos + 1 :]  # [M] later candidates
            w = _cpp_max(F32(0), _cpp_min(x2[i], x2[rest]) - _cpp_max(x1[i], x1[rest]))  # [M]
            h = _cpp_max(F32(0), _cpp_min(y2[i], y2[rest]) - _cpp_max(y1[i], y1[rest]))
            inter = w * h
            iou = inter / ((area[i] + area[rest]) - inter)  # [M] float32
            suppressed[rest] |= iou.astype(np.float64) > threshold  # float64 comparison
    return np.asarray(keep, dtype=np.int64)


def _reference_vanilla(
    boxes: npt.NDArray[np.float32],
    scores: npt.NDArray[np.float32],
    idxs: npt.NDArray[np.int64],
    iou_threshold: float,
) -> IndexArray:
    """``_batched_nms_vanilla``: per-class NMS, a mask, ``where``, then the unstable sort."""
    mask = np.zeros(boxes.shape[0], dtype=bool)
    for c in np.unique(idxs):  # ascending, as torch.unique
        members = np.flatnonzero(idxs == c)  # [M] ascending
        kept = _reference_nms(boxes[members], scores[members], iou_threshold)
        mask[members[kept]] = True
    keep = np.flatnonzero(mask).astype(np.int64)  # [K] ascending
    return keep[torch_sort_desc(scores[keep], backend="numpy")]


def _reference_coordinate_trick(
    boxes: npt.NDArray[np.float32],
    scores: npt.NDArray[np.float32],
    idxs: npt.NDArray[np.int64],
    iou_threshold: float,
) -> IndexArray:
    """``_batched_nms_coordinate_trick`` for ``N >= 1``: float32 shift, then one NMS."""
    with np.errstate(all="ignore"):
        top = boxes.max()  # float32; NaN if any coordinate is NaN (torch.max too)
        offsets = idxs.astype(np.float32) * (top + F32(1))  # [N] float32
        shifted = (boxes + offsets[:, None]).astype(np.float32)  # [N, 4]
    return _reference_nms(shifted, scores, iou_threshold)


# --------------------------------------------------------------------------------------------
# Front doors
# --------------------------------------------------------------------------------------------


def _prepare(
    boxes: npt.ArrayLike, scores: npt.ArrayLike, iou_threshold: float, backend: str
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32], float]:
    check_backend(backend, _BACKENDS)
    b = as_boxes("boxes", boxes, finite=False)
    s = as_scores("scores", scores, b.shape[0])
    thr = check_unit_interval("iou_threshold", iou_threshold)
    return b, s, thr


def torchvision_nms(
    boxes_xyxy: npt.ArrayLike, scores: npt.ArrayLike, iou_threshold: float, backend: str = "cpu"
) -> IndexArray:
    """``torchvision.ops.nms(boxes, scores, iou_threshold)`` on the CPU, exactly.

    Args:
        boxes_xyxy: ``[N, 4]`` ``(x1, y1, x2, y2)``, converted to float32. Corners are used
            as given (``x2 < x1`` is a negative width). NaN and inf are allowed (module
            docstring).
        scores: ``[N]``, converted to float32. Any values; NaN counts as the largest score.
        iou_threshold: in ``[0, 1]``, compared in float64: a box is suppressed when its
            float32 IoU with a kept, higher-ranked box is **strictly** greater.
        backend: ``"cpu"`` (Numba) or ``"numpy"`` (the reference); same result.

    Returns:
        int64 ``[K]`` kept indices in selection order: descending score, equal scores by
        lower index (stable), NaN scores first. ``N == 0`` gives an empty array.
    """
    b, s, thr = _prepare(boxes_xyxy, scores, iou_threshold, backend)
    if b.shape[0] == 0:
        return np.zeros(0, np.int64)
    if backend == "numpy":
        return _reference_nms(b, s, thr)
    return np.asarray(backend_kernel(backend, "tv_nms", "nms_kernel")(b, s, thr), np.int64)


def torchvision_batched_nms(
    boxes: npt.ArrayLike,
    scores: npt.ArrayLike,
    idxs: npt.ArrayLike,
    iou_threshold: float,
    backend: str = "cpu",
    branch: str = "auto",
) -> IndexArray:
    """``torchvision.ops.batched_nms(boxes, scores, idxs, iou_threshold)`` on the CPU, exactly.

    Args:
        boxes, scores, iou_threshold, backend: as in :func:`torchvision_nms`.
        idxs: ``[N]`` integer class of each box (any integer values); boxes of different
            classes never suppress each other.
        branch: ``"auto"`` (torchvision's choice on the CPU: ``"vanilla"`` for more than 1000
            boxes, else ``"coordinate_trick"``), or one of those two names to force it, as
            ``torchvision.ops.boxes._batched_nms_vanilla`` / ``_batched_nms_coordinate_trick``.

    Returns:
        int64 ``[K]`` kept indices. ``"coordinate_trick"``: NMS selection order over the
        shifted boxes (descending score, ties by lower index). ``"vanilla"``: descending
        score, ties in torch's unstable-sort order (index order only for ``K <= 16``). The two
        branches can keep different boxes (module docstring). ``N == 0`` gives an empty array.
    """
    b, s, thr = _prepare(boxes, scores, iou_threshold, backend)
    if branch not in BRANCHES:
        raise ValueError(
            f"branch must be one of {', '.join(repr(x) for x in BRANCHES)}, got {branch!r}; "
            f"use 'auto' for torchvision's own choice"
        )
    c = np.asarray(idxs)
    if c.ndim != 1 or c.dtype.kind not in "iub":
        raise ValueError(
            f"idxs must be a 1-D integer array, got {_describe(c)}; "
            f"pass np.asarray(idxs, dtype=np.int64)"
        )
    if c.shape[0] != b.shape[0]:
        raise ValueError(
            f"idxs has {c.shape[0]} entries but boxes has {b.shape[0]} rows; "
            f"pass one class index per box"
        )
    if c.dtype.kind == "u" and c.size and int(c.max()) > np.iinfo(np.int64).max:
        raise ValueError("idxs must fit in int64 (torch's index type); pass smaller class ids")
    c = np.ascontiguousarray(c, dtype=np.int64)
    n = b.shape[0]
    if n == 0:
        return np.zeros(0, np.int64)
    if branch == "auto":
        branch = "vanilla" if n > VANILLA_ABOVE else "coordinate_trick"
    if branch == "coordinate_trick":
        if backend == "numpy":
            return _reference_coordinate_trick(b, s, c, thr)
        kernel = backend_kernel(backend, "tv_nms", "coordinate_trick_kernel")
        return np.asarray(kernel(b, s, c, thr), np.int64)
    if backend == "numpy":
        return _reference_vanilla(b, s, c, thr)
    _, groups = np.unique(c, return_inverse=True)  # class ids -> 0..G-1, ascending
    groups = np.ascontiguousarray(groups.reshape(-1), dtype=np.int64)
    kernel = backend_kernel(backend, "tv_nms", "vanilla_keep_kernel")
    keep = np.asarray(kernel(b, s, groups, int(groups.max()) + 1, thr), np.int64)  # ascending
    return keep[torch_sort_desc(s[keep], backend=backend)]
