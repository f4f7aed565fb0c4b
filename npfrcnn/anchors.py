"""Reference anchors, the anchor grid, and the backbone's feature-map size.

An anchor set is built in two steps:

1. :func:`reference_anchors` (or :func:`detectron2_reference_anchors`): the ``A`` anchors of
   one feature-map cell, ``[A, 4]`` ``(x1, y1, x2, y2)``, each system's formula and order;
2. :func:`grid_anchors`: those anchors shifted to every cell, flat order ``(y, x, a)``.

Styles (``reference_anchors(style=...)``; sources in ``reference/pipeline-spec.md``):

``"workshop"`` (spec 1.3, ``workshop/faster.py::generate_anchors_reference``)
    ``np.meshgrid(scales, ratios)`` (ratio-major, scale-minor), ratio = h / w,
    ``h = scale * sqrt(ratio) * base``, ``w = scale / sqrt(ratio) * base``, corners ``±w/2``,
    ``±h/2`` around 0, then :func:`sort_anchors` (a no-op for the default ratios and scales).
``"luminoth"`` (spec 2.2, ``luminoth/utils/anchors.py``)
    The same sizes and native (unsorted) order, corners ``±(w - 1)/2``; raises when a
    truncated ``x2 - x1`` or ``y2 - y1`` is 0, as Luminoth does.
``"tf-od-api"`` (spec 4.2, ``object_detection/anchor_generators/grid_anchor_generator.py``)
    Aspect ratio = **w / h**: ``h = scale / sqrt(ar) * base_h``, ``w = scale * sqrt(ar) *
    base_w``, computed in float32 as TF does; ``ops.meshgrid(scales, aspect_ratios)`` order
    (aspect-ratio-major, scale-minor); corners ``centre ± 0.5 * size``.
``"detectron2"`` (spec 5.6, ``detectron2/modeling/anchor_generator.py``)
    Sizes ``base * scale``; see :func:`detectron2_reference_anchors`, which takes the sizes
    directly (Detectron2's own parameters).
``"py-faster-rcnn"`` (spec 3.3, the wheat repo's ``utils.py::generate_anchors``)
    Base window ``[0, 0, bw - 1, bh - 1]``; ``_ratio_enum`` (``ws = round(sqrt(bw*bh / r))``,
    ``hs = round(ws * r)``, ratio = h / w, NumPy's round-half-to-even), then ``_scale_enum``
    (``ws * scale``), corners ``ctr ± 0.5 * (ws - 1)``, ratio-major. **Not centred at 0**: the
    centre is ``((bw - 1) / 2, (bh - 1) / 2)``, as in the source, so a grid with offset 0 puts
    the centres at ``(stride - 1) / 2 + k * stride``.

Arithmetic is float64 (NumPy, as the sources) except ``"tf-od-api"`` (float32, as TF); the
result is cast to ``dtype`` at the end.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from npfrcnn._validate import check_positive_int

__all__ = [
    "ANCHOR_STYLES",
    "reference_anchors",
    "detectron2_reference_anchors",
    "sort_anchors",
    "grid_anchors",
    "feature_map_size",
]

ANCHOR_STYLES = ("workshop", "luminoth", "tf-od-api", "detectron2", "py-faster-rcnn")

FloatArray = npt.NDArray[np.floating]


def _positive_values(name: str, values: Any) -> npt.NDArray[np.float64]:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D sequence of numbers, got {values!r}")
    if not (np.isfinite(arr).all() and (arr > 0).all()):
        raise ValueError(f"{name} must be positive and finite, got {arr.tolist()}")
    return arr


def _base_hw(base_size: Any) -> tuple[float, float]:
    if np.ndim(base_size) == 0:
        hw = (float(base_size), float(base_size))
    else:
        items = list(base_size)
        if len(items) != 2:
            raise ValueError(
                f"base_size must be a number or a pair (height, width), got {base_size!r}"
            )
        hw = (float(items[0]), float(items[1]))
    if not all(math.isfinite(v) and v > 0 for v in hw):
        raise ValueError(f"base_size must be positive and finite, got {base_size!r}")
    return hw


def _out_dtype(dtype: npt.DTypeLike) -> np.dtype[Any]:
    dt = np.dtype(dtype)
    if dt not in (np.float32, np.float64):
        raise ValueError(f"dtype must be float32 or float64, got {dt}")
    return dt


def sort_anchors(anchors: npt.ArrayLike) -> FloatArray:
    """The workshop's ``sort_anchors``: stable sort by ``round(h / w, 1)``, then by area.

    ``w = x2 - x1``, ``h = y2 - y1`` (no +1). Returns the rows of ``anchors`` (``[A, 4]``,
    dtype kept) in the new order; equal keys keep their input order (``np.lexsort`` is stable).
    """
    a = np.asarray(anchors)
    if a.ndim != 2 or a.shape[1] != 4:
        raise ValueError(f"anchors must have shape [A, 4], got {a.shape}")
    widths = a[:, 2] - a[:, 0]
    heights = a[:, 3] - a[:, 1]
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = np.round(heights / widths, 1)
    areas = widths * heights
    return a[np.lexsort((areas, ratios)), :]


def reference_anchors(
    base_size: float | Sequence[float] = 256,
    ratios: Sequence[float] = (0.5, 1, 2),
    scales: Sequence[float] = (0.125, 0.25, 0.5, 1, 2),
    *,
    style: str = "workshop",
    dtype: npt.DTypeLike = np.float32,
) -> FloatArray:
    """The anchors of one cell, ``[len(ratios) * len(scales), 4]`` ``(x1, y1, x2, y2)``.

    Args:
        base_size: side of the base anchor in pixels, or ``(height, width)``
            (TF OD API's ``base_anchor_size``; py-faster-rcnn's base window). A pair is not
            accepted for ``"detectron2"``.
        ratios: aspect ratios, positive; **h / w** for every style except ``"tf-od-api"``
            (**w / h**). The defaults are the workshop's.
        scales: positive multipliers of ``base_size`` (the side, not the area). The defaults
            are the workshop's ``[0.125, 0.25, 0.5, 1, 2]``.
        style: one of :data:`ANCHOR_STYLES`; formulas and orders in the module docstring.
        dtype: float32 (default) or float64. A float64 reference fed to :func:`grid_anchors`
            reproduces a float64 NumPy pipeline (the workshop's) exactly; a float32 one a
            float32 pipeline (Luminoth's TF graph, TF OD API, Detectron2).

    Returns:
        ``[A, 4]``; centred at 0 except ``"py-faster-rcnn"`` (see the module docstring).

    Raises:
        ValueError: unknown style; non-positive or non-finite sizes; Luminoth's
            "base_size too small" case.
    """
    if style not in ANCHOR_STYLES:
        raise ValueError(
            f"style must be one of {', '.join(repr(s) for s in ANCHOR_STYLES)}, got {style!r}"
        )
    dt = _out_dtype(dtype)
    r = _positive_values("ratios", ratios)
    s = _positive_values("scales", scales)
    if style == "detectron2":
        if np.ndim(base_size) != 0:
            raise ValueError(
                "style='detectron2' takes a scalar base_size (sizes = base_size * scales); "
                "or call detectron2_reference_anchors(sizes, aspect_ratios)"
            )
        base = _base_hw(base_size)[0]
        return detectron2_reference_anchors([base * v for v in s], r, dtype=dt)
    base_h, base_w = _base_hw(base_size)
    if style == "py-faster-rcnn":
        return _py_faster_rcnn(base_h, base_w, r, s).astype(dt)
    if style == "tf-od-api":
        return _tf_od_api(base_h, base_w, r, s).astype(dt)

    scales_grid, ratios_grid = np.meshgrid(s, r)  # [R,S] each: ratio-major, scale-minor
    sc = scales_grid.reshape(-1)
    rt = ratios_grid.reshape(-1)
    sqrt_r = np.sqrt(rt)
    heights = sc * sqrt_r * base_h
    widths = sc / sqrt_r * base_w
    if style == "workshop":
        anchors = np.column_stack([-widths / 2, -heights / 2, widths / 2, heights / 2])
        return sort_anchors(anchors).astype(dt)
    # luminoth
    anchors = np.column_stack(
        [-(widths - 1) / 2, -(heights - 1) / 2, (widths - 1) / 2, (heights - 1) / 2]
    )
    real_w = (anchors[:, 2] - anchors[:, 0]).astype(np.int64)
    real_h = (anchors[:, 3] - anchors[:, 1]).astype(np.int64)
    if (real_w == 0).any() or (real_h == 0).any():
        raise ValueError(
            f"base_size {base_size!r} is too small for these ratios and scales: an anchor would "
            "be less than 2 pixels wide or high (Luminoth rejects it); use a larger base_size "
            "or larger scales"
        )
    return anchors.astype(dt)


def _tf_od_api(
    base_h: float, base_w: float, ratios: npt.NDArray[np.float64], scales: npt.NDArray[np.float64]
) -> npt.NDArray[np.float32]:
    f = np.float32
    scales_grid, ratios_grid = np.meshgrid(scales.astype(f), ratios.astype(f))  # [R,S]
    sc = scales_grid.reshape(-1)
    ratio_sqrts = np.sqrt(ratios_grid.reshape(-1))
    heights = sc / ratio_sqrts * f(base_h)
    widths = sc * ratio_sqrts * f(base_w)
    half = f(0.5)
    # centre 0: [0 - 0.5*h, 0 - 0.5*w, 0 + 0.5*h, 0 + 0.5*w] in (y, x) -> (x1, y1, x2, y2)
    return np.column_stack([-(half * widths), -(half * heights), half * widths, half * heights])


def _py_faster_rcnn(
    base_h: float, base_w: float, ratios: npt.NDArray[np.float64], scales: npt.NDArray[np.float64]
) -> npt.NDArray[np.float64]:
    # base window [0, 0, bw - 1, bh - 1]: w = bw, h = bh, centre ((bw - 1)/2, (bh - 1)/2)
    w, h = base_w, base_h
    cx, cy = 0.5 * (w - 1), 0.5 * (h - 1)
    ws = np.round(np.sqrt(w * h / ratios))  # [R], half to even as np.round
    hs = np.round(ws * ratios)  # [R]
    all_w = (ws[:, None] * scales[None, :]).reshape(-1)  # [R*S], ratio-major
    all_h = (hs[:, None] * scales[None, :]).reshape(-1)
    half_w, half_h = 0.5 * (all_w - 1), 0.5 * (all_h - 1)
    return np.column_stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h])


def detectron2_reference_anchors(
    sizes: npt.ArrayLike = (32, 64, 128, 256, 512),
    aspect_ratios: npt.ArrayLike = (0.5, 1.0, 2.0),
    *,
    dtype: npt.DTypeLike = np.float32,
) -> FloatArray:
    """Detectron2's cell anchors (``DefaultAnchorGenerator.generate_cell_anchors``).

    Size-major: for each size, for each aspect ratio (**h / w**)::

        w = sqrt(size**2 / ar);  h = ar * w;  anchor = [-w/2, -h/2, w/2, h/2]

    in float64, then cast to ``dtype`` (Detectron2 builds them with Python floats and
    ``torch.tensor``, i.e. float32). Defaults are ``ANCHOR_GENERATOR.SIZES`` and
    ``ASPECT_RATIOS`` of ``Base-RCNN-C4``. Returns ``[len(sizes) * len(aspect_ratios), 4]``.
    """
    dt = _out_dtype(dtype)
    sz = _positive_values("sizes", sizes)
    ar = _positive_values("aspect_ratios", aspect_ratios)
    rows = []
    for size in sz.tolist():
        area = size**2.0
        for a in ar.tolist():
            w = math.sqrt(area / a)
            h = a * w
            rows.append([-w / 2.0, -h / 2.0, w / 2.0, h / 2.0])
    return np.asarray(rows, dtype=np.float64).astype(dt)


def _stride_pair(name: str, value: Any, *, positive: bool) -> tuple[float, float]:
    if np.ndim(value) == 0:
        pair = (float(value), float(value))
    else:
        items = list(value)
        if len(items) != 2:
            raise ValueError(f"{name} must be a number or a pair (y, x), got {value!r}")
        pair = (float(items[0]), float(items[1]))
    ok = all(math.isfinite(v) and (v > 0 if positive else True) for v in pair)
    if not ok:
        kind = "positive and finite" if positive else "finite"
        raise ValueError(f"{name} must be {kind}, got {value!r}")
    return pair


def grid_anchors(
    feature_height: int,
    feature_width: int,
    stride: float | Sequence[float],
    reference: npt.ArrayLike,
    offset: float | Sequence[float] = 0.0,
) -> npt.NDArray[np.float32]:
    """All anchors of a feature map: ``reference`` shifted to every cell.

    Flat order ``(y, x, a)``: row ``(y * W + x) * A + a`` is ::

        reference[a] + [sx, sy, sx, sy],   sx = x * stride_x + offset_x
                                           sy = y * stride_y + offset_y

    computed in float64 and rounded once to float32 (exactly the float32 sum when
    ``reference`` is float32).

    Args:
        feature_height, feature_width: the feature map's size (non-negative ints; 0 gives an
            empty result).
        stride: pixels per cell, a positive number or ``(stride_y, stride_x)`` (16 for the
            ResNet C4 backbones).
        reference: ``[A, 4]`` ``(x1, y1, x2, y2)`` cell anchors (:func:`reference_anchors`).
        offset: centre shift **in pixels**, a number or ``(y, x)`` (TF OD API's
            ``anchor_offset``): 0 for the workshop, Luminoth, the TF OD API defaults and
            Detectron2's ``OFFSET: 0.0``. Detectron2's ``OFFSET`` is a fraction of the stride:
            pass ``OFFSET * stride`` (8 for 0.5 at stride 16).

    Returns:
        ``[H * W * A, 4]`` float32.
    """
    fh = check_positive_int("feature_height", feature_height, allow_zero=True)
    fw = check_positive_int("feature_width", feature_width, allow_zero=True)
    sy, sx = _stride_pair("stride", stride, positive=True)
    oy, ox = _stride_pair("offset", offset, positive=False)
    ref = np.asarray(reference)
    if ref.ndim != 2 or ref.shape[1] != 4 or ref.dtype.kind != "f":
        raise ValueError(
            f"reference must be a float [A, 4] array of (x1, y1, x2, y2), got {ref.dtype} "
            f"array of shape {ref.shape}; build it with reference_anchors()"
        )
    if not np.isfinite(ref).all():
        raise ValueError("reference contains non-finite values; build it with reference_anchors()")
    ref64 = ref.astype(np.float64)
    shift_x = np.arange(fw, dtype=np.float64) * sx + ox  # [W]
    shift_y = np.arange(fh, dtype=np.float64) * sy + oy  # [H]
    shifts = np.empty((fh, fw, 4), dtype=np.float64)  # [H,W,4]
    shifts[:, :, 0] = shift_x[None, :]
    shifts[:, :, 1] = shift_y[:, None]
    shifts[:, :, 2] = shift_x[None, :]
    shifts[:, :, 3] = shift_y[:, None]
    anchors = shifts[:, :, None, :] + ref64[None, None, :, :]  # [H,W,A,4]
    return anchors.reshape(-1, 4).astype(np.float32)


def feature_map_size(
    image_height: int, image_width: int, pool1_padding: str = "VALID"
) -> tuple[int, int]:
    """``(height, width)`` of the block3 map of the ResNet C4 backbone at output stride 16.

    Follows the layers (spec 1.4, 1.7): conv1 7x7/2 with explicit padding 3 on each side;
    pool1 3x3/2 ``"VALID"`` (workshop) or ``"SAME"`` (slim: Luminoth, TF OD API; Detectron2's
    ``padding=1`` pool gives the same sizes); then two stride-2 3x3 convs with explicit
    padding 1 on each side (``conv2d_same``; the subsampling shortcut gives the same size).
    Each step is ``(n + pad - k) // s + 1``.

    Returns:
        ``(H_f, W_f)``, both ``>= 1``.

    Raises:
        ValueError: non-positive sizes, an unknown ``pool1_padding``, or an image too small for
            the VALID pool (fewer than 5 pixels on a side).
    """
    h = check_positive_int("image_height", image_height)
    w = check_positive_int("image_width", image_width)
    mode = pool1_padding.upper() if isinstance(pool1_padding, str) else pool1_padding
    if mode not in ("VALID", "SAME"):
        raise ValueError(f"pool1_padding must be 'VALID' or 'SAME', got {pool1_padding!r}")

    def one(n: int) -> int:
        n = (n + 6 - 7) // 2 + 1  # conv1
        if mode == "VALID":
            n = (n - 3) // 2 + 1  # pool1
        else:
            n = -(-n // 2)
        if n < 1:
            raise ValueError(
                f"image of size {h}x{w} is too small for the backbone (pool1 VALID needs at "
                "least 5 pixels on each side)"
            )
        n = (n + 2 - 3) // 2 + 1  # block1 unit_3
        return (n + 2 - 3) // 2 + 1  # block2 unit_4

    return one(h), one(w)
