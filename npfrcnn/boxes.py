"""Box conventions: the one place where npfrcnn says what a box is.

Layout
    Boxes are ``[N, 4]`` arrays ``(x1, y1, x2, y2)`` in absolute input-image pixels, origin at
    the top-left corner, float32 unless stated. Deltas are ``[N, 4]`` ``(dx, dy, dw, dh)``.
    ``tf.image``-style ops (``crop_and_resize``, ``nms``) keep TensorFlow's own layouts; see their
    docstrings.

Width convention
    ``plus_one=False`` (workshop, Detectron2, TF OD API): ``w = x2 - x1``.
    ``plus_one=True`` (Luminoth, py-faster-rcnn): ``w = x2 - x1 + 1``, i.e. ``x2`` is the last
    pixel *inside* the box. Profiles choose it; code never adds an ad-hoc ``+1``.

Box coder (spec 1.3, 2.4, 3.3, 4.4, 5.5)
    ``encode`` / ``decode`` work on centres and sizes::

        w  = x2 - x1 (+1);        cx = x1 + 0.5 * w
        dx = (gcx - cx) / w;      dw = log(gw / w)          (then divided by the variances)
        cx' = dx * w + cx;        w' = exp(dw) * w          (deltas first multiplied by variances)
        x1' = cx' - 0.5 * w';     x2' = cx' + 0.5 * w' (- 1 when ``decode_minus_one``)

    ``variances`` multiply deltas at decode and divide them at encode (workshop
    ``[0.1, 0.1, 0.2, 0.2]``, Luminoth ``[0.1, 0.2]`` = ``[0.1, 0.1, 0.2, 0.2]``).
    ``scale_factors`` are their reciprocals (TF OD API / Detectron2 ``[10, 10, 5, 5]``): deltas
    are divided by them at decode and multiplied at encode (never via a rounded ``1 / s``, so
    float32 results match those systems bit for bit); pass one or the other. Both are given in
    ``(x, y, w, h)`` order here: TF OD API's ``(ty, tx, th, tw)`` layout is a converter's
    business, not the coder's.

All functions are pure NumPy, keep the input float dtype (float32 in, float32 out) and accept
empty inputs.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from npfrcnn._validate import as_float_array

__all__ = [
    "area",
    "iou",
    "encode",
    "decode",
    "clip",
    "filter_nonpositive",
    "filter_min_size",
    "to_yxyx",
    "to_xyxy",
]

FloatArray = npt.NDArray[np.floating]


def _as_boxes(name: str, boxes: npt.ArrayLike) -> FloatArray:
    arr = np.asarray(boxes)
    dtype = arr.dtype if arr.dtype in (np.float32, np.float64) else np.float32
    return as_float_array(name, arr, ndim=2, last=4, dtype=dtype)


def _offset(plus_one: bool, dtype: np.dtype) -> np.floating:
    return dtype.type(1.0 if plus_one else 0.0)


def area(boxes: npt.ArrayLike, *, plus_one: bool = False) -> FloatArray:
    """Areas of ``boxes``.

    Args:
        boxes: ``[N, 4]`` ``(x1, y1, x2, y2)``.
        plus_one: use ``(x2 - x1 + 1) * (y2 - y1 + 1)``.

    Returns:
        ``[N]`` ``(x2 - x1) * (y2 - y1)`` in the boxes' float dtype. Not clamped: a flipped box
        (``x2 < x1`` xor ``y2 < y1``) has a negative area.
    """
    b = _as_boxes("boxes", boxes)
    one = _offset(plus_one, b.dtype)
    return (b[:, 2] - b[:, 0] + one) * (b[:, 3] - b[:, 1] + one)


def iou(boxes1: npt.ArrayLike, boxes2: npt.ArrayLike, *, plus_one: bool = False) -> FloatArray:
    """Pairwise intersection over union.

    Args:
        boxes1: ``[N, 4]`` ``(x1, y1, x2, y2)``.
        boxes2: ``[M, 4]``.
        plus_one: inclusive pixel widths (``x2 - x1 + 1``), as py-faster-rcnn's
            ``bbox_overlaps``.

    Returns:
        ``[N, M]`` IoU in the common float dtype. Intersections are clamped at 0; a pair whose
        union is not positive (two empty boxes) has IoU 0.
    """
    a = _as_boxes("boxes1", boxes1)
    b = _as_boxes("boxes2", boxes2)
    dtype = np.result_type(a.dtype, b.dtype)
    a = a.astype(dtype, copy=False)
    b = b.astype(dtype, copy=False)
    one = _offset(plus_one, dtype)
    area_a = (a[:, 2] - a[:, 0] + one) * (a[:, 3] - a[:, 1] + one)  # [N]
    area_b = (b[:, 2] - b[:, 0] + one) * (b[:, 3] - b[:, 1] + one)  # [M]
    lt = np.maximum(a[:, None, :2], b[None, :, :2])  # [N,M,2]
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])  # [N,M,2]
    wh = np.maximum(rb - lt + one, dtype.type(0))  # [N,M,2]
    inter = wh[..., 0] * wh[..., 1]  # [N,M]
    union = area_a[:, None] + area_b[None, :] - inter  # [N,M]
    out = np.zeros_like(inter)
    np.divide(inter, union, out=out, where=union > 0)
    return out


def _coder_weights(
    variances: Sequence[float] | None, scale_factors: Sequence[float] | None, dtype: np.dtype
) -> tuple[FloatArray, bool] | None:
    """The 4 coder weights and whether they are variances (``True``) or scale factors.

    They are kept as given, never inverted: variances multiply at decode and divide at encode,
    scale factors divide at decode (TF OD API ``ty /= 10``, Detectron2 ``dx / wx``) and multiply
    at encode, so each system's float32 rounding is reproduced exactly.
    """
    if variances is not None and scale_factors is not None:
        raise ValueError("pass either variances or scale_factors, not both")
    if variances is None and scale_factors is None:
        return None
    name = "variances" if variances is not None else "scale_factors"
    raw = np.asarray(variances if variances is not None else scale_factors, dtype=np.float64)
    if raw.shape == (2,):
        raw = np.array([raw[0], raw[0], raw[1], raw[1]])
    if raw.shape != (4,):
        raise ValueError(
            f"{name} must have 2 values (xy, wh) or 4 values (x, y, w, h), got {raw.tolist()}"
        )
    if not (np.isfinite(raw).all() and (raw > 0).all()):
        raise ValueError(f"{name} must be positive and finite, got {raw.tolist()}")
    return raw.astype(dtype), variances is not None


def _width_centre(b: FloatArray, one: np.floating) -> tuple[FloatArray, ...]:
    w = b[:, 2] - b[:, 0] + one
    h = b[:, 3] - b[:, 1] + one
    half = b.dtype.type(0.5)
    return w, h, b[:, 0] + half * w, b[:, 1] + half * h


def encode(
    boxes: npt.ArrayLike,
    anchors: npt.ArrayLike,
    *,
    variances: Sequence[float] | None = None,
    scale_factors: Sequence[float] | None = None,
    plus_one: bool = False,
) -> FloatArray:
    """Regression targets that take ``anchors`` to ``boxes``.

    Args:
        boxes: ``[N, 4]`` target (ground-truth) boxes.
        anchors: ``[N, 4]`` reference boxes (anchors or proposals), row-aligned with ``boxes``.
        variances: 2 or 4 positive values; the deltas are divided by them.
        scale_factors: 2 or 4 positive values; the deltas are multiplied by them.
        plus_one: inclusive widths ``x2 - x1 + 1``.

    Returns:
        ``[N, 4]`` ``(dx, dy, dw, dh)``. Degenerate (non-positive width) boxes give non-finite
        deltas, as ``log(0)`` does: filter them first.
    """
    g = _as_boxes("boxes", boxes)
    a = _as_boxes("anchors", anchors)
    if g.shape != a.shape:
        raise ValueError(
            f"boxes and anchors must have the same shape, got {g.shape} and {a.shape}; "
            "pair each box with its anchor (e.g. anchors[matches])"
        )
    dtype = np.result_type(g.dtype, a.dtype)
    g = g.astype(dtype, copy=False)
    a = a.astype(dtype, copy=False)
    one = _offset(plus_one, dtype)
    aw, ah, acx, acy = _width_centre(a, one)
    gw, gh, gcx, gcy = _width_centre(g, one)
    with np.errstate(divide="ignore", invalid="ignore"):
        deltas = np.stack(
            [(gcx - acx) / aw, (gcy - acy) / ah, np.log(gw / aw), np.log(gh / ah)], axis=1
        ).astype(dtype, copy=False)
    weights = _coder_weights(variances, scale_factors, dtype)
    if weights is not None:
        w, are_variances = weights
        deltas = deltas / w if are_variances else deltas * w
    return deltas


def decode(
    anchors: npt.ArrayLike,
    deltas: npt.ArrayLike,
    *,
    variances: Sequence[float] | None = None,
    scale_factors: Sequence[float] | None = None,
    plus_one: bool = False,
    decode_minus_one: bool | None = None,
    clamp: float | None = None,
    exp: str = "numpy",
) -> FloatArray:
    """Apply ``deltas`` to ``anchors``.

    The arithmetic order is the workshop's (``faster.py::decode`` after
    ``bbox_pred * TARGET_VARIANCES``), which is what float32 parity with TF needs::

        d = deltas * variances (or / scale_factors);  w = x2 - x1 (+1);  cx = x1 + 0.5 * w
        cx' = dx * w + cx;  w' = exp(dw) * w;  x1' = cx' - 0.5 * w';  x2' = cx' + 0.5 * w' (- 1)

    Args:
        anchors: ``[N, 4]`` reference boxes.
        deltas: ``[N, 4]`` ``(dx, dy, dw, dh)``.
        variances / scale_factors: see :func:`encode`; the deltas are multiplied by the
            variances (divided by the scale factors) before decoding.
        plus_one: inclusive widths ``x2 - x1 + 1``.
        decode_minus_one: subtract 1 from ``x2`` and ``y2`` of the result (Luminoth). Defaults
            to ``plus_one``; py-faster-rcnn (and the wheat repo) use ``plus_one=True`` with
            ``decode_minus_one=False``.
        clamp: if given, ``dw`` and ``dh`` are clamped to at most this value before ``exp``
            (Detectron2 ``log(1000 / 16)``, TF OD API 80). ``None``: no clamp (workshop).
        exp: ``"numpy"`` (``np.exp`` in the input dtype, the TF-parity choice) or
            ``"float64"`` (``exp`` of the value in float64, rounded once: correctly rounded in
            all but rare cases; npfrcnn's stand-in for torch's MKL ``exp``, which no portable
            code reproduces, torchvision-spec 5.3).

    Returns:
        ``[N, 4]`` boxes ``(x1, y1, x2, y2)`` in the common float dtype. No clipping.
    """
    a = _as_boxes("anchors", anchors)
    d = _as_boxes("deltas", deltas)
    if a.shape != d.shape:
        raise ValueError(
            f"anchors and deltas must have the same shape, got {a.shape} and {d.shape}; "
            "select the deltas of one class first (e.g. deltas[:, 4 * c:4 * c + 4])"
        )
    dtype = np.result_type(a.dtype, d.dtype)
    a = a.astype(dtype, copy=False)
    d = d.astype(dtype, copy=False)
    weights = _coder_weights(variances, scale_factors, dtype)
    if weights is not None:
        cw, are_variances = weights
        d = d * cw if are_variances else d / cw
    one = _offset(plus_one, dtype)
    w, h, cx, cy = _width_centre(a, one)
    dx, dy, dw, dh = d[:, 0], d[:, 1], d[:, 2], d[:, 3]
    if clamp is not None:
        dw = np.minimum(dw, dtype.type(clamp))
        dh = np.minimum(dh, dtype.type(clamp))
    ncx = dx * w + cx
    ncy = dy * h + cy
    if exp not in ("numpy", "float64"):
        raise ValueError(f"exp must be 'numpy' or 'float64', got {exp!r}")
    with np.errstate(over="ignore"):
        if exp == "float64":
            nw = np.exp(dw.astype(np.float64)).astype(dtype) * w
            nh = np.exp(dh.astype(np.float64)).astype(dtype) * h
        else:
            nw = np.exp(dw) * w
            nh = np.exp(dh) * h
    half = dtype.type(0.5)
    minus = _offset(plus_one if decode_minus_one is None else decode_minus_one, dtype)
    return np.stack(
        [ncx - half * nw, ncy - half * nh, ncx + half * nw - minus, ncy + half * nh - minus],
        axis=1,
    )


def clip(
    boxes: npt.ArrayLike, image_shape: Sequence[int], *, inclusive: bool = True
) -> FloatArray:
    """Clip boxes to the image.

    Args:
        boxes: ``[N, 4]`` ``(x1, y1, x2, y2)``.
        image_shape: ``(height, width)`` of the input image.
        inclusive: ``True`` clips x to ``[0, W - 1]`` and y to ``[0, H - 1]`` (workshop,
            Luminoth, py-faster-rcnn); ``False`` clips to ``[0, W]`` and ``[0, H]``
            (Detectron2, TF OD API).

    Returns:
        ``[N, 4]``, computed as ``max(min(x, W - 1), 0)`` (the workshop's order).
    """
    b = _as_boxes("boxes", boxes)
    if len(image_shape) < 2:
        raise ValueError(f"image_shape must be (height, width), got {image_shape!r}")
    height, width = float(image_shape[0]), float(image_shape[1])
    if not (height > 0 and width > 0):
        raise ValueError(f"image_shape must be positive, got {image_shape!r}")
    sub = 1.0 if inclusive else 0.0
    hi = np.array([width - sub, height - sub, width - sub, height - sub], dtype=b.dtype)
    return np.maximum(np.minimum(b, hi), b.dtype.type(0))


def filter_nonpositive(boxes: npt.ArrayLike) -> npt.NDArray[np.int64]:
    """Indices of boxes with positive area, ``max(x2 - x1, 0) * max(y2 - y1, 0) > 0``.

    This is the workshop's ``filter_proposals`` rule: boxes whose clamped area is ``<= 0`` are
    removed. Returns ``[K]`` int64 indices in increasing order.
    """
    b = _as_boxes("boxes", boxes)
    zero = b.dtype.type(0)
    a = np.maximum(b[:, 2] - b[:, 0], zero) * np.maximum(b[:, 3] - b[:, 1], zero)
    return np.flatnonzero(a > 0).astype(np.int64)


def filter_min_size(
    boxes: npt.ArrayLike, min_size: float, *, plus_one: bool = False
) -> npt.NDArray[np.int64]:
    """Indices of boxes at least ``min_size`` wide and high.

    Keeps ``w >= min_size and h >= min_size`` with ``w = x2 - x1 (+1)`` (py-faster-rcnn's
    ``_filter_boxes``; Detectron2's ``nonempty`` uses ``> threshold`` instead, which for
    ``min_size=0`` is :func:`filter_nonpositive` on non-flipped boxes). Returns ``[K]`` int64
    indices in increasing order.
    """
    b = _as_boxes("boxes", boxes)
    if not np.isfinite(min_size) or min_size < 0:
        raise ValueError(f"min_size must be a finite non-negative number, got {min_size!r}")
    one = _offset(plus_one, b.dtype)
    w = b[:, 2] - b[:, 0] + one
    h = b[:, 3] - b[:, 1] + one
    m = b.dtype.type(min_size)
    return np.flatnonzero((w >= m) & (h >= m)).astype(np.int64)


def to_yxyx(boxes: npt.ArrayLike) -> FloatArray:
    """``(x1, y1, x2, y2)`` -> ``(y1, x1, y2, x2)`` (the workshop's ``change_order``)."""
    b = _as_boxes("boxes", boxes)
    return np.ascontiguousarray(b[:, [1, 0, 3, 2]])


def to_xyxy(boxes: npt.ArrayLike) -> FloatArray:
    """``(y1, x1, y2, x2)`` -> ``(x1, y1, x2, y2)``; the same swap as :func:`to_yxyx`."""
    return to_yxyx(boxes)
