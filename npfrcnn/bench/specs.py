"""What each benchmarked op computes, how it is called, and how results are compared.

An op's inputs are held once, in one neutral form (``Inputs``, a dict of NumPy arrays and
parameters), and each *argument convention* turns them into the positional arguments of a call
and turns the call's result back into one comparable form:

======================  ========================================================================
op                      neutral inputs (keys)
======================  ========================================================================
``nms``                 ``boxes`` float32 ``[N, 4]`` ``(x1, y1, x2, y2)`` pixels, ``scores``
                        ``[N]``, ``iou_threshold``, ``max_output_size`` (``None``: ``N``),
                        ``score_threshold``
``soft-nms``            as ``nms``, and ``sigma``
``batched-nms``         as ``nms``, and ``classes`` int64 ``[N]`` (``max_output_size`` is per
                        class)
``crop-and-resize``     ``image`` float32 ``[B, H, W, C]``, ``boxes`` float32 ``[N, 4]``
                        normalized ``(y1, x1, y2, x2)``, ``box_indices`` int32 ``[N]``,
                        ``crop_size`` ``(h, w)``, ``method``, ``extrapolation_value``
``crop-and-pool``       as ``crop-and-resize`` (bilinear), then a 2x2 stride-2 VALID max pool
``roi-align``           ``features`` float32 NHWC ``[B, H, W, C]``, ``rois`` float32 ``[K, 5]``
                        ``(batch, x1, y1, x2, y2)`` pixels, ``output_size`` ``(h, w)``,
                        ``spatial_scale``, ``sampling_ratio``, ``aligned``
``roi-pool``            as ``roi-align`` without ``sampling_ratio`` and ``aligned``
======================  ========================================================================

The conventions (what a ``--impl`` function is called with, :data:`SIGNATURES`):

* ``tf``: TensorFlow's signatures and layouts (``tf.image.non_max_suppression(boxes_yxyx,
  scores, max_output_size, iou_threshold, score_threshold)`` and so on);
* ``torchvision``: torchvision's (``torchvision.ops.nms(boxes_xyxy, scores, iou_threshold)``,
  ``roi_align(input_nchw, boxes, output_size, spatial_scale, sampling_ratio, aligned)``);
* ``torchvision-nhwc``: torchvision's RoI ops on NHWC features (npfrcnn's own layout; its
  ``roi_align`` / ``roi_pool`` are called so).

The *semantics* an implementation is checked against is ``tf`` or ``torchvision``: the
reference is npfrcnn's readable NumPy transcription of that system's CPU kernel
(``backend="numpy"``, checked against the real system by npfrcnn's tests); on the large timing
workloads the Numba kernels stand in for it (``backend="cpu"``, held bitwise to the NumPy
reference by the same tests), because the reference loops take minutes there.

Results are compared exactly: the same shape, the same dtype and the same values, bit for bit
(NaN equal to NaN). :func:`compare` says where the first difference is.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from npfrcnn import ops

__all__ = [
    "OPS",
    "SEMANTICS",
    "SIGNATURES",
    "Convention",
    "Inputs",
    "OpSpec",
    "compare",
    "get",
    "reference",
    "size_of",
]

#: The neutral inputs of one call of an op (see the module docstring for the keys).
Inputs = dict[str, Any]

SEMANTICS = ("tf", "torchvision")


@dataclass(frozen=True)
class Convention:
    """How one argument convention calls an op and what its result looks like.

    ``args`` turns neutral inputs into the positional arguments (NumPy arrays and Python
    scalars; arrays are converted to the implementation's array kind afterwards). ``result``
    turns the NumPy form of what the call returned into the neutral result: int64 indices;
    ``(indices, scores)`` for soft-NMS; float32 NHWC arrays for the crop and RoI ops.
    """

    signature: str
    args: Callable[[Inputs], tuple[Any, ...]]
    result: Callable[[Any, Inputs], Any]


@dataclass(frozen=True)
class OpSpec:
    """One benchmarked op: its semantics (the first is the default), conventions and unit."""

    name: str
    semantics: tuple[str, ...]
    unit: str  # what the size counts: "boxes" or "RoIs"
    conventions: Mapping[str, Convention]
    summary: str


def _yxyx(xyxy: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(xyxy[:, [1, 0, 3, 2]], dtype=np.float32)


def _limit(inputs: Inputs) -> int:
    m = inputs.get("max_output_size")
    return int(inputs["boxes"].shape[0]) if m is None else int(m)


def _as_indices(x: Any, inputs: Inputs) -> Any:
    a = np.asarray(x)
    return a.astype(np.int64) if a.dtype.kind in "iu" else a


def _as_index_score_pair(x: Any, inputs: Inputs) -> Any:
    if not isinstance(x, tuple) or len(x) != 2:
        return x  # compare() reports what came back instead of a pair
    return _as_indices(x[0], inputs), np.asarray(x[1])


def _as_array(x: Any, inputs: Inputs) -> Any:
    return np.asarray(x)


def _from_nchw(x: Any, inputs: Inputs) -> Any:
    a = np.asarray(x)
    return np.ascontiguousarray(a.transpose(0, 2, 3, 1)) if a.ndim == 4 else a


def _nchw(features: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(features.transpose(0, 3, 1, 2))


_NMS = {
    "tf": Convention(
        "fn(boxes_yxyx [N,4] float32, scores [N] float32, max_output_size: int, "
        "iou_threshold: float, score_threshold: float) -> indices [K]  "
        "(tf.image.non_max_suppression)",
        lambda i: (
            _yxyx(i["boxes"]), i["scores"], _limit(i), float(i["iou_threshold"]),
            float(i["score_threshold"]),
        ),
        _as_indices,
    ),
    "torchvision": Convention(
        "fn(boxes_xyxy [N,4] float32, scores [N] float32, iou_threshold: float) -> indices [K]"
        "  (torchvision.ops.nms)",
        lambda i: (i["boxes"], i["scores"], float(i["iou_threshold"])),
        _as_indices,
    ),
}

_SOFT_NMS = {
    "tf": Convention(
        "fn(boxes_yxyx, scores, max_output_size, iou_threshold, score_threshold, "
        "soft_nms_sigma) -> (indices [K], scores [K] float32)  "
        "(tf.image.non_max_suppression_with_scores)",
        lambda i: (
            _yxyx(i["boxes"]), i["scores"], _limit(i), float(i["iou_threshold"]),
            float(i["score_threshold"]), float(i["sigma"]),
        ),
        _as_index_score_pair,
    ),
}

_BATCHED = {
    "tf": Convention(
        "fn(boxes_yxyx, scores, classes [N] int64, max_output_size_per_class, iou_threshold, "
        "score_threshold) -> indices [K], by descending score, ties by lower index  "
        "(tf.image.non_max_suppression per class)",
        lambda i: (
            _yxyx(i["boxes"]), i["scores"], i["classes"], _limit(i),
            float(i["iou_threshold"]), float(i["score_threshold"]),
        ),
        _as_indices,
    ),
    "torchvision": Convention(
        "fn(boxes_xyxy, scores, idxs [N] int64, iou_threshold) -> indices [K]  "
        "(torchvision.ops.batched_nms)",
        lambda i: (i["boxes"], i["scores"], i["classes"], float(i["iou_threshold"])),
        _as_indices,
    ),
}

_CROP = {
    "tf": Convention(
        "fn(image [B,H,W,C] float32, boxes [N,4] normalized (y1,x1,y2,x2), box_indices [N] "
        "int32, crop_size (h, w), method: str, extrapolation_value: float) -> [N,h,w,C]  "
        "(tf.image.crop_and_resize)",
        lambda i: (
            i["image"], i["boxes"], i["box_indices"], tuple(i["crop_size"]), i["method"],
            float(i["extrapolation_value"]),
        ),
        _as_array,
    ),
}

_CROP_POOL = {
    "tf": Convention(
        "fn(image, boxes, box_indices, crop_size (h, w), extrapolation_value) -> "
        "[N,h//2,w//2,C]  (tf.nn.max_pool2d(tf.image.crop_and_resize(...), 2, 2, 'VALID'))",
        lambda i: (
            i["image"], i["boxes"], i["box_indices"], tuple(i["crop_size"]),
            float(i["extrapolation_value"]),
        ),
        _as_array,
    ),
}

_ROI_ALIGN = {
    "torchvision": Convention(
        "fn(input [B,C,H,W] float32, boxes [K,5] (batch, x1, y1, x2, y2), output_size (h, w), "
        "spatial_scale: float, sampling_ratio: int, aligned: bool) -> [K,C,h,w]  "
        "(torchvision.ops.roi_align)",
        lambda i: (
            _nchw(i["features"]), i["rois"], tuple(i["output_size"]),
            float(i["spatial_scale"]), int(i["sampling_ratio"]), bool(i["aligned"]),
        ),
        _from_nchw,
    ),
    "torchvision-nhwc": Convention(
        "fn(features [B,H,W,C], rois [K,5], output_size, spatial_scale, sampling_ratio, "
        "aligned) -> [K,h,w,C]  (npfrcnn.ops.roi_align)",
        lambda i: (
            i["features"], i["rois"], tuple(i["output_size"]), float(i["spatial_scale"]),
            int(i["sampling_ratio"]), bool(i["aligned"]),
        ),
        _as_array,
    ),
}

_ROI_POOL = {
    "torchvision": Convention(
        "fn(input [B,C,H,W] float32, boxes [K,5], output_size (h, w), spatial_scale: float) "
        "-> [K,C,h,w]  (torchvision.ops.roi_pool)",
        lambda i: (
            _nchw(i["features"]), i["rois"], tuple(i["output_size"]), float(i["spatial_scale"])
        ),
        _from_nchw,
    ),
    "torchvision-nhwc": Convention(
        "fn(features [B,H,W,C], rois [K,5], output_size, spatial_scale) -> [K,h,w,C]  "
        "(npfrcnn.ops.roi_pool)",
        lambda i: (
            i["features"], i["rois"], tuple(i["output_size"]), float(i["spatial_scale"])
        ),
        _as_array,
    ),
}

OPS: dict[str, OpSpec] = {
    "nms": OpSpec("nms", ("tf", "torchvision"), "boxes", _NMS, "hard non-maximum suppression"),
    "soft-nms": OpSpec("soft-nms", ("tf",), "boxes", _SOFT_NMS, "soft-NMS (Gaussian decay)"),
    "batched-nms": OpSpec(
        "batched-nms", ("tf", "torchvision"), "boxes", _BATCHED, "NMS within each class"
    ),
    "crop-and-resize": OpSpec(
        "crop-and-resize", ("tf",), "RoIs", _CROP, "tf.image.crop_and_resize"
    ),
    "crop-and-pool": OpSpec(
        "crop-and-pool", ("tf",), "RoIs", _CROP_POOL,
        "crop_and_resize then 2x2 max pool (the workshop's / Luminoth's RoI pooling)",
    ),
    "roi-align": OpSpec("roi-align", ("torchvision",), "RoIs", _ROI_ALIGN, "RoIAlign"),
    "roi-pool": OpSpec("roi-pool", ("torchvision",), "RoIs", _ROI_POOL, "RoI max pooling"),
}

#: ``{op: {convention: signature}}``, for ``--help`` and the docs.
SIGNATURES = {name: {c: v.signature for c, v in s.conventions.items()} for name, s in OPS.items()}


def get(op: str) -> OpSpec:
    try:
        return OPS[op]
    except KeyError:
        raise ValueError(f"unknown op {op!r}; choose one of {', '.join(OPS)}") from None


def size_of(op: str, inputs: Inputs) -> int:
    """The size a record is filed under: the number of boxes or RoIs."""
    key = "rois" if op in ("roi-align", "roi-pool") else "boxes"
    return int(inputs[key].shape[0])


def reference(op: str, semantics: str, inputs: Inputs, backend: str = "numpy") -> Any:
    """The neutral result of ``op`` under ``semantics``: npfrcnn's reference (``backend="numpy"``)
    or its Numba kernels (``"cpu"``, bitwise equal to it and fast enough for large inputs)."""
    i = inputs
    if op == "nms" and semantics == "tf":
        return ops.nms(
            _yxyx(i["boxes"]), i["scores"], i["iou_threshold"], i.get("max_output_size"),
            i["score_threshold"], backend=backend,
        )
    if op == "nms" and semantics == "torchvision":
        return ops.torchvision_nms(i["boxes"], i["scores"], i["iou_threshold"], backend=backend)
    if op == "soft-nms" and semantics == "tf":
        return ops.soft_nms(
            _yxyx(i["boxes"]), i["scores"], i.get("max_output_size"), i["iou_threshold"],
            i["score_threshold"], i["sigma"], backend=backend,
        )
    if op == "batched-nms" and semantics == "tf":
        return ops.batched_nms(
            _yxyx(i["boxes"]), i["scores"], i["classes"], i["iou_threshold"],
            i.get("max_output_size"), i["score_threshold"], backend=backend,
        )
    if op == "batched-nms" and semantics == "torchvision":
        return ops.torchvision_batched_nms(
            i["boxes"], i["scores"], i["classes"], i["iou_threshold"], backend=backend
        )
    if op == "crop-and-resize" and semantics == "tf":
        return ops.crop_and_resize(
            i["image"], i["boxes"], i["box_indices"], tuple(i["crop_size"]), i["method"],
            i["extrapolation_value"], backend=backend,
        )
    if op == "crop-and-pool" and semantics == "tf":
        return ops.crop_and_pool(
            i["image"], i["boxes"], i["box_indices"], tuple(i["crop_size"]),
            i["extrapolation_value"], backend=backend,
        )
    if op == "roi-align" and semantics == "torchvision":
        return ops.roi_align(
            i["features"], i["rois"], tuple(i["output_size"]), i["spatial_scale"],
            i["sampling_ratio"], i["aligned"], backend=backend,
        )
    if op == "roi-pool" and semantics == "torchvision":
        return ops.roi_pool(
            i["features"], i["rois"], tuple(i["output_size"]), i["spatial_scale"],
            backend=backend,
        )
    raise ValueError(f"{op} has no {semantics!r} semantics; it has {', '.join(get(op).semantics)}")


# --------------------------------------------------------------------------------------------
# Exact comparison
# --------------------------------------------------------------------------------------------


def _fmt_value(v: Any) -> str:
    if isinstance(v, (float, np.floating)):
        f = float(v)
        if math.isfinite(f) and np.dtype(type(v)) == np.float32:
            bits = np.asarray(v, dtype=np.float32).view(np.uint32)
            return f"{f:.9g} (0x{int(bits):08x})"
        return f"{f:.9g}"
    return str(v)


def _head(a: np.ndarray, at: int, width: int = 4) -> str:
    lo = max(at - width, 0)
    part = ", ".join(str(x) for x in a[lo : at + width + 1].tolist())
    return ("[..., " if lo else "[") + part + (", ...]" if at + width + 1 < a.size else "]")


def _compare_arrays(expected: np.ndarray, got: Any, what: str) -> str | None:
    if not isinstance(got, np.ndarray):
        return f"{what}: expected an array, got {type(got).__name__}"
    if got.dtype != expected.dtype:
        return f"{what}: expected dtype {expected.dtype}, got {got.dtype}"
    if expected.ndim == 1 and got.ndim == 1 and expected.dtype.kind in "iu":
        n = min(expected.size, got.size)
        diff = np.flatnonzero(expected[:n] != got[:n])
        if diff.size == 0 and expected.size == got.size:
            return None
        at = int(diff[0]) if diff.size else n
        e = expected[at] if at < expected.size else "(end)"
        g = got[at] if at < got.size else "(end)"
        return (
            f"{what}: {expected.size} expected, {got.size} returned; first difference at "
            f"position {at}: expected {e}, got {g}; expected {_head(expected, at)}, got "
            f"{_head(got, at)}"
        )
    if got.shape != expected.shape:
        return f"{what}: expected shape {tuple(expected.shape)}, got {tuple(got.shape)}"
    same = (expected == got) | (np.isnan(expected) & np.isnan(got)) if (
        expected.dtype.kind == "f"
    ) else (expected == got)
    if bool(np.all(same)):
        return None
    bad = np.argwhere(~same)
    where = tuple(int(x) for x in bad[0])
    e, g = expected[where], got[where]
    with np.errstate(invalid="ignore", over="ignore"):
        gap = np.abs(expected.astype(np.float64) - got.astype(np.float64))[~same]
    worst = float(np.nanmax(gap)) if np.isfinite(gap).any() else float("nan")
    return (
        f"{what}: {bad.shape[0]} of {expected.size} values differ; first at {list(where)}: "
        f"expected {_fmt_value(e)}, got {_fmt_value(g)}; max |difference| {worst:.3g}"
    )


def compare(expected: Any, got: Any) -> str | None:
    """``None`` when ``got`` is exactly ``expected``; else where and how it first differs."""
    if isinstance(expected, tuple):
        if not isinstance(got, tuple) or len(got) != len(expected):
            return f"expected a tuple of {len(expected)} arrays, got {type(got).__name__}"
        for name, e, g in zip(("indices", "scores"), expected, got, strict=True):
            msg = _compare_arrays(np.asarray(e), g, name)
            if msg:
                return msg
        return None
    what = "indices" if np.asarray(expected).dtype.kind in "iu" else "values"
    return _compare_arrays(np.asarray(expected), got, what)
