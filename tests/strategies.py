"""Hypothesis strategies shared by the test suite (one file, as DESIGN.md asks).

Floats are drawn with ``width=32`` so every value is exactly representable in float32.
"""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp


def f32(min_value: float = -1e4, max_value: float = 1e4) -> st.SearchStrategy[float]:
    return st.floats(min_value, max_value, width=32, allow_nan=False, allow_infinity=False)


@st.composite
def xyxy_boxes(
    draw: st.DrawFn,
    min_n: int = 0,
    max_n: int = 40,
    extent: float = 100.0,
    allow_flipped: bool = False,
    allow_empty: bool = True,
) -> np.ndarray:
    """float32 ``[N, 4]`` ``(x1, y1, x2, y2)`` boxes inside ``[-extent/4, extent]``.

    Coordinates are drawn on a coarse grid part of the time so that exact ties, shared edges and
    zero-size boxes are common.
    """
    n = draw(st.integers(min_n, max_n))
    grid = draw(st.booleans())
    if grid:
        coord = st.integers(-4, 40).map(lambda v: np.float32(v * extent / 40.0))
    else:
        coord = f32(-extent / 4, extent)
    rows = []
    for _ in range(n):
        x1, y1 = draw(coord), draw(coord)
        if allow_empty:
            w = draw(st.one_of(st.just(0.0), f32(0.0, extent / 2)))
            h = draw(st.one_of(st.just(0.0), f32(0.0, extent / 2)))
        else:
            w = draw(f32(extent / 100, extent / 2))
            h = draw(f32(extent / 100, extent / 2))
        x2, y2 = np.float32(x1 + w), np.float32(y1 + h)
        if allow_flipped and draw(st.booleans()):
            x1, x2 = x2, x1
        if allow_flipped and draw(st.booleans()):
            y1, y2 = y2, y1
        rows.append([x1, y1, x2, y2])
    return np.asarray(rows, dtype=np.float32).reshape(n, 4)


def scores_for(n: int, ties: bool = True) -> st.SearchStrategy[np.ndarray]:
    """float32 ``[n]`` scores; with ``ties`` drawn from a few values so equal scores are common."""
    elements = st.sampled_from([0.1, 0.25, 0.5, 0.75, 1.0]) if ties else f32(0.0, 1.0)
    return hnp.arrays(np.float32, (n,), elements=elements.map(np.float32))


# --- dense layers, anchors, boxes (tests/test_layers.py, test_anchors.py, test_boxes.py) ---


@st.composite
def conv_cases(draw: st.DrawFn, max_hw: int = 9, max_c: int = 4) -> dict:
    """A small conv2d configuration with integer-valued float32 ``x`` and ``kernel``.

    Values lie in [-3, 3], so every partial sum of a dot product is an exact float32 integer
    and the convolution is bitwise independent of summation order. Keys: ``x`` [N,H,W,Cin],
    ``kernel`` [kh,kw,Cin,Cout], ``strides``, ``dilations`` (pairs), ``padding`` (a string or
    explicit pairs). The (dilated) kernel always fits the padded input.
    """
    n = draw(st.integers(1, 2))
    cin = draw(st.integers(1, max_c))
    cout = draw(st.integers(1, max_c))
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    # TF's CPU Conv2D rejects strides > 1 together with dilations > 1.
    if sh == 1 and sw == 1:
        dh, dw = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    else:
        dh = dw = 1
    keh, kew = (kh - 1) * dh + 1, (kw - 1) * dw + 1
    padding = draw(
        st.one_of(
            st.sampled_from(["SAME", "VALID"]),
            st.tuples(
                st.tuples(st.integers(0, 3), st.integers(0, 3)),
                st.tuples(st.integers(0, 3), st.integers(0, 3)),
            ),
        )
    )
    h = draw(st.integers(keh, max(keh, max_hw)))
    w = draw(st.integers(kew, max(kew, max_hw)))
    ints = st.integers(-3, 3).map(np.float32)
    x = draw(hnp.arrays(np.float32, (n, h, w, cin), elements=ints))
    kernel = draw(hnp.arrays(np.float32, (kh, kw, cin, cout), elements=ints))
    return {
        "x": x,
        "kernel": kernel,
        "strides": (sh, sw),
        "dilations": (dh, dw),
        "padding": padding,
    }


@st.composite
def pool_cases(draw: st.DrawFn, max_hw: int = 10) -> dict:
    """A max_pool2d configuration: float32 ``x`` [N,H,W,C] (finite, often negative, with ties),
    ``ksize`` and ``strides`` pairs and ``padding`` ("SAME"/"VALID"); the window fits x."""
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    h = draw(st.integers(kh, max(kh, max_hw)))
    w = draw(st.integers(kw, max(kw, max_hw)))
    shape = (draw(st.integers(1, 2)), h, w, draw(st.integers(1, 3)))
    # No subnormals: TF runs its CPU kernels with denormals flushed to zero, which npfrcnn
    # does not emulate (real images and weights never produce them).
    normal = st.floats(-100.0, 100.0, width=32, allow_nan=False, allow_subnormal=False)
    elements = st.one_of(st.sampled_from([-5.0, -1.0, 0.0, 2.0]), normal)
    x = draw(hnp.arrays(np.float32, shape, elements=elements.map(np.float32)))
    return {
        "x": x,
        "ksize": (kh, kw),
        "strides": (draw(st.integers(1, 3)), draw(st.integers(1, 3))),
        "padding": draw(st.sampled_from(["SAME", "VALID"])),
    }


@st.composite
def encodable_box_pairs(
    draw: st.DrawFn, max_n: int = 20, extent: float = 1000.0
) -> tuple[np.ndarray, np.ndarray]:
    """Row-aligned float32 ``(boxes, anchors)`` ``[N, 4]``, both with width and height of at
    least ``extent / 1000`` (so encode gives finite deltas) and at most ``extent / 2``."""
    n = draw(st.integers(0, max_n))

    def one() -> list[float]:
        x1, y1 = draw(f32(-extent / 4, extent)), draw(f32(-extent / 4, extent))
        w, h = draw(f32(extent / 1000, extent / 2)), draw(f32(extent / 1000, extent / 2))
        return [x1, y1, float(np.float32(x1 + w)), float(np.float32(y1 + h))]

    boxes = np.asarray([one() for _ in range(n)], dtype=np.float32).reshape(n, 4)
    anchors = np.asarray([one() for _ in range(n)], dtype=np.float32).reshape(n, 4)
    return boxes, anchors


# ----------------------------------------------------------------------------------------------
# Training targets, losses and detection metrics (npfrcnn.targets / losses / evaluate)
# ----------------------------------------------------------------------------------------------


@st.composite
def target_scenes(draw: st.DrawFn, max_anchors: int = 60, max_gt: int = 6) -> dict:
    """An image shape, float32 anchors ``[A, 4]`` and ground truth ``[G, 4]`` with 0-based classes.

    Coordinates sit on an integer grid most of the time, so equal IoUs (ties for the best-anchor
    rule), boxes crossing the border and IoUs exactly at a threshold are common.
    """
    height = draw(st.integers(8, 64))
    width = draw(st.integers(8, 64))

    def box(min_size: float) -> list[float]:
        if draw(st.booleans()):
            x1 = float(draw(st.integers(-8, width)))
            y1 = float(draw(st.integers(-8, height)))
            w = float(draw(st.integers(int(min_size), 40)))
            h = float(draw(st.integers(int(min_size), 40)))
        else:
            x1, y1 = draw(f32(-8.0, float(width))), draw(f32(-8.0, float(height)))
            w, h = draw(f32(min_size, 40.0)), draw(f32(min_size, 40.0))
        return [x1, y1, float(np.float32(x1 + w)), float(np.float32(y1 + h))]

    n_a = draw(st.integers(0, max_anchors))
    n_g = draw(st.integers(0, max_gt))
    anchors = np.asarray([box(1.0) for _ in range(n_a)], dtype=np.float32).reshape(n_a, 4)
    if n_a and draw(st.booleans()):  # repeat some anchors: exact IoU ties
        reps = draw(st.lists(st.integers(0, n_a - 1), max_size=5))
        anchors = np.concatenate([anchors, anchors[reps]], axis=0) if reps else anchors
    gt = np.asarray([box(1.0) for _ in range(n_g)], dtype=np.float32).reshape(n_g, 4)
    classes = np.asarray([draw(st.integers(0, 3)) for _ in range(n_g)], dtype=np.int64)
    return {
        "image_shape": (height, width),
        "anchors": anchors,
        "gt_boxes": gt,
        "gt_classes": classes,
        "seed": draw(st.integers(0, 2**16)),
    }


@st.composite
def coco_datasets(draw: st.DrawFn, max_images: int = 6, max_classes: int = 5) -> tuple[dict, list]:
    """A COCO-format ground-truth dict and a result list (``bbox`` xywh, ``score``).

    Images without ground truth or detections, crowd regions, detections near ground truth
    (so matches happen at every IoU threshold), tied scores, boxes in every area range,
    categories without ground truth, and image ids out of order are all drawn.
    """
    n_img = draw(st.integers(1, max_images))
    ids = draw(st.lists(st.integers(1, 1000), min_size=n_img, max_size=n_img, unique=True))
    n_cat = draw(st.integers(1, max_classes))
    cats = [{"id": c} for c in range(1, n_cat + 1)]
    size = st.sampled_from([4.0, 20.0, 31.0, 32.0, 50.0, 96.0, 150.0])
    anns: list[dict] = []
    results: list[dict] = []
    for iid in ids:
        gts = []
        for _ in range(draw(st.integers(0, 6))):
            x, y = draw(f32(0.0, 300.0)), draw(f32(0.0, 300.0))
            w = draw(st.one_of(size, f32(1.0, 200.0)))
            h = draw(st.one_of(size, f32(1.0, 200.0)))
            c = draw(st.integers(1, n_cat))
            if gts and draw(st.integers(0, 2)) == 0:  # overlap the previous gt, same class
                x, y, w, h, c = gts[-1]
                x += draw(st.sampled_from([0.0, 2.0, -3.0]))
                w *= draw(st.sampled_from([1.0, 1.5, 3.0]))
                h *= draw(st.sampled_from([1.0, 0.8, 3.0]))
            crowd = int(draw(st.integers(0, 9)) == 0)
            area = float(w * h) if draw(st.booleans()) else draw(f32(1.0, 40000.0))
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": iid,
                    "category_id": c,
                    "bbox": [x, y, w, h],
                    "area": area,
                    "iscrowd": crowd,
                }
            )
            gts.append((x, y, w, h, c))
        for _ in range(draw(st.integers(0, 8))):
            if gts and draw(st.booleans()):
                x, y, w, h, c = gts[draw(st.integers(0, len(gts) - 1))]
                x += draw(st.sampled_from([0.0, 1.0, 3.0, 8.0, -5.0]))
                y += draw(st.sampled_from([0.0, 2.0, -4.0]))
                w *= draw(st.sampled_from([1.0, 0.9, 1.25, 0.5]))
                if draw(st.integers(0, 4)) == 0:
                    c = draw(st.integers(1, n_cat))
            else:
                x, y = draw(f32(0.0, 300.0)), draw(f32(0.0, 300.0))
                w, h = draw(f32(1.0, 200.0)), draw(f32(1.0, 200.0))
                c = draw(st.integers(1, n_cat))
            score = draw(st.one_of(st.sampled_from([0.25, 0.5, 0.9]), f32(0.0, 1.0)))
            results.append(
                {"image_id": iid, "category_id": c, "bbox": [x, y, w, h], "score": score}
            )
    images = [{"id": i} for i in ids]
    return {"images": images, "annotations": anns, "categories": cats}, results


# --- NMS and top_k (tests/test_nms.py, tests/test_topk.py) -----------------------------------


def rpn_like_boxes(
    n: int, seed: int, height: int = 600, width: int = 1000
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` RPN-like float32 boxes ``(y1, x1, y2, x2)`` and scores in ``[0, 1)`` (numpy RNG).

    Boxes are the workshop's 15 anchors (base 256, ratios 0.5/1/2, scales 1/8..2) on a
    16-pixel grid, jittered like decoded proposals (centre moved ~10% of the size, size scaled
    by ``exp(N(0, 0.2))``): many heavily overlapping clusters, as before the RPN's NMS.
    """
    rng = np.random.default_rng(seed)
    ratios = np.array([0.5, 1.0, 2.0])
    scales = np.array([0.125, 0.25, 0.5, 1.0, 2.0]) * 256.0
    hs = (scales[None, :] * np.sqrt(ratios[:, None])).ravel()  # [15]
    ws = (scales[None, :] / np.sqrt(ratios[:, None])).ravel()
    cy, cx = np.meshgrid(np.arange(0, height, 16), np.arange(0, width, 16), indexing="ij")
    n_anchor = cy.size * hs.size
    pick = rng.choice(n_anchor, size=n, replace=n > n_anchor)
    cell, a = pick // hs.size, pick % hs.size
    ctr_y = cy.ravel()[cell] + rng.normal(0.0, 0.1, n) * hs[a]
    ctr_x = cx.ravel()[cell] + rng.normal(0.0, 0.1, n) * ws[a]
    h = hs[a] * np.exp(rng.normal(0.0, 0.2, n))
    w = ws[a] * np.exp(rng.normal(0.0, 0.2, n))
    boxes = np.stack([ctr_y - h / 2, ctr_x - w / 2, ctr_y + h / 2, ctr_x + w / 2], axis=1)
    return boxes.astype(np.float32), rng.uniform(0.0, 1.0, n).astype(np.float32)


@st.composite
def nms_cases(draw: st.DrawFn, max_n: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """Boxes for NMS (flipped corners, zero-size boxes, integer grids) with tied scores often."""
    boxes = draw(xyxy_boxes(max_n=max_n, allow_flipped=True))
    scores = draw(scores_for(boxes.shape[0], ties=draw(st.booleans())))
    return boxes, scores


def iou_thresholds() -> st.SearchStrategy[float]:
    """IoU thresholds in ``[0, 1]``: the ends, the usual values, and any float32 between."""
    return st.one_of(st.sampled_from([0.0, 0.3, 0.5, 0.7, 1.0]), f32(0.0, 1.0))


@st.composite
def integer_box_pairs(draw: st.DrawFn) -> np.ndarray:
    """Two boxes, usually overlapping, with small integer corners (``[2, 4]`` float32): their
    float32 IoU is a ratio of small integers, used as an NMS threshold that is hit exactly."""
    y1, x1 = draw(st.integers(0, 6)), draw(st.integers(0, 6))
    h, w = draw(st.integers(1, 8)), draw(st.integers(1, 8))
    dy, dx = draw(st.integers(-h + 1, h - 1)), draw(st.integers(-w + 1, w - 1))
    h2, w2 = draw(st.integers(1, 8)), draw(st.integers(1, 8))
    a = [y1, x1, y1 + h, x1 + w]
    b = [y1 + dy, x1 + dx, y1 + dy + h2, x1 + dx + w2]
    return np.asarray([a, b], dtype=np.float32)


@st.composite
def topk_cases(draw: st.DrawFn, max_n: int = 30) -> tuple[np.ndarray, int]:
    """``([..., n] values, k)`` for top_k: float32, 1-D or 2-D; ties, +-inf, +-0 and
    subnormals common."""
    shape = draw(st.one_of(st.tuples(st.integers(0, max_n)),
                           st.tuples(st.integers(0, 4), st.integers(0, max_n))))
    few = st.sampled_from([0.0, -0.0, 1e-45, -1e-40, 0.5, 1.0, -1.0, np.inf, -np.inf])
    elements = st.one_of(few, f32(-10.0, 10.0)) if draw(st.booleans()) else few
    values = draw(hnp.arrays(np.float32, shape, elements=elements.map(np.float32)))
    return values, draw(st.integers(0, shape[-1]))


# ---------------------------------------------------------------------------------------------
# RoI ops: crop_and_resize / crop_and_pool (TF's normalized (y1, x1, y2, x2) boxes), roi_align
# and roi_pool (torchvision's (batch_index, x1, y1, x2, y2) RoIs on NHWC maps).
# ---------------------------------------------------------------------------------------------


@st.composite
def feature_maps(
    draw: st.DrawFn, max_batch: int = 3, max_side: int = 8, max_depth: int = 4
) -> np.ndarray:
    """float32 ``[B, H, W, D]`` maps; small integers half the time (exact lerps, equal taps)."""
    shape = (
        draw(st.integers(1, max_batch)),
        draw(st.integers(1, max_side)),
        draw(st.integers(1, max_side)),
        draw(st.integers(1, max_depth)),
    )
    if draw(st.booleans()):
        elements = st.integers(-8, 8).map(np.float32)
    else:
        elements = f32(-100.0, 100.0)
    return draw(hnp.arrays(np.float32, shape, elements=elements))


def normalized_coords() -> st.SearchStrategy[float]:
    """Normalized coordinates: the corners, simple fractions, out-of-range values, any float32."""
    return st.one_of(
        st.sampled_from([-1.0, -0.5, -0.25, 0.0, 0.25, 1 / 3, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0]),
        f32(-1.5, 2.5),
    )


@st.composite
def normalized_boxes(draw: st.DrawFn, min_n: int = 0, max_n: int = 12) -> np.ndarray:
    """float32 ``[N, 4]`` ``(y1, x1, y2, x2)``: flipped, zero-size and out-of-range boxes."""
    n = draw(st.integers(min_n, max_n))
    rows = []
    for _ in range(n):
        y1, x1 = draw(normalized_coords()), draw(normalized_coords())
        y2 = y1 if draw(st.integers(0, 5)) == 0 else draw(normalized_coords())  # zero height
        x2 = x1 if draw(st.integers(0, 5)) == 0 else draw(normalized_coords())
        rows.append([y1, x1, y2, x2])
    return np.asarray(rows, dtype=np.float32).reshape(n, 4)


def extrapolation_values() -> st.SearchStrategy[float]:
    return st.one_of(st.sampled_from([0.0, -1.0, 0.5, 7.25, -0.0]), f32(-1e3, 1e3))


@st.composite
def crop_cases(
    draw: st.DrawFn, min_crop: int = 1, max_crop: int = 6
) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[int, int], float]:
    """``(image, boxes, box_indices, crop_size, extrapolation_value)`` for crop_and_resize."""
    image = draw(feature_maps())
    boxes = draw(normalized_boxes())
    idx = draw(hnp.arrays(np.int32, (boxes.shape[0],), elements=st.integers(0, image.shape[0] - 1)))
    crop = (draw(st.integers(min_crop, max_crop)), draw(st.integers(min_crop, max_crop)))
    return image, boxes, idx, crop, draw(extrapolation_values())


@st.composite
def roi_cases(
    draw: st.DrawFn, max_k: int = 8
) -> tuple[np.ndarray, np.ndarray, tuple[int, int], float]:
    """``(features, rois, output_size, spatial_scale)`` for roi_align / roi_pool.

    RoIs ``[K, 5]`` ``(batch_index, x1, y1, x2, y2)`` in input pixels, reaching past the map on
    every side, reversed or empty at times; coordinates on a quarter-pixel grid half the time
    (so rounding ties and exact sample points are common).
    """
    features = draw(feature_maps(max_batch=2, max_side=7, max_depth=3))
    scale = draw(st.sampled_from([1.0, 0.5, 0.25, 0.0625, 1 / 3]))
    _, h, w, _ = features.shape
    k = draw(st.integers(0, max_k))
    rows = []
    for _ in range(k):
        if draw(st.booleans()):
            coord_x = st.integers(-8, 4 * w + 8).map(lambda v: v / 4 / scale)
            coord_y = st.integers(-8, 4 * h + 8).map(lambda v: v / 4 / scale)
        else:
            coord_x = f32(-2 / scale, (w + 2) / scale)
            coord_y = f32(-2 / scale, (h + 2) / scale)
        x1, y1, x2, y2 = draw(coord_x), draw(coord_y), draw(coord_x), draw(coord_y)
        if draw(st.integers(0, 3)) > 0:  # mostly well-formed, sometimes reversed
            x1, x2 = min(x1, x2), max(x1, x2)
            y1, y2 = min(y1, y2), max(y1, y2)
        rows.append([draw(st.integers(0, features.shape[0] - 1)), x1, y1, x2, y2])
    rois = np.asarray(rows, dtype=np.float32).reshape(k, 5)
    size = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    return features, rois, size, scale


@st.composite
def inside_roi_cases(
    draw: st.DrawFn,
) -> tuple[tuple[int, int, int, int], np.ndarray, tuple[int, int], float]:
    """``(feature_shape, rois, output_size, spatial_scale)`` with every RoI inside the map.

    Corners on a quarter-pixel grid of the feature map, ``0 <= x1 < x2 <= W - 1`` (likewise y),
    a power-of-two scale (so ``coordinate * scale`` is exact): every RoIAlign sample falls in
    ``[-1, H] x [-1, W]`` and every RoIPool bin is non-empty.
    """
    shape = (
        draw(st.integers(1, 2)),
        draw(st.integers(2, 8)),
        draw(st.integers(2, 8)),
        draw(st.integers(1, 3)),
    )
    scale = draw(st.sampled_from([1.0, 0.5, 0.25, 0.0625]))
    _, h, w, _ = shape
    rows = []
    for _ in range(draw(st.integers(1, 6))):
        x1 = draw(st.integers(0, 4 * (w - 1) - 1))
        y1 = draw(st.integers(0, 4 * (h - 1) - 1))
        x2 = draw(st.integers(x1 + 1, 4 * (w - 1)))
        y2 = draw(st.integers(y1 + 1, 4 * (h - 1)))
        b = draw(st.integers(0, shape[0] - 1))
        rows.append([b, x1 / 4 / scale, y1 / 4 / scale, x2 / 4 / scale, y2 / 4 / scale])
    size = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    return shape, np.asarray(rows, dtype=np.float32), size, scale
