"""User-style kernels for the ``npfrcnn bench`` tests: plain NumPy, written from the systems'
documented behaviour, not from npfrcnn's code (so the gate is tested against an independent
implementation, as a user's would be).

Correct ones, in each convention:

* ``tf_nms``: ``tf.image.non_max_suppression(boxes_yxyx, scores, max_output_size,
  iou_threshold, score_threshold)``;
* ``tv_nms``: ``torchvision.ops.nms(boxes_xyxy, scores, iou_threshold)``;
* ``tv_roi_align``: ``torchvision.ops.roi_align(input_nchw, boxes, output_size, spatial_scale,
  sampling_ratio, aligned)``.

And the same with one planted bug each, the kind real kernels have:

* ``tf_nms_ge``, ``tv_nms_ge``: suppress at ``IoU >= threshold`` instead of ``>``;
* ``tf_nms_ties_high``: equal scores taken by higher index first;
* ``tv_roi_align_off_by_one``: a sample between the last row/column and the border is dropped
  (``y > H - 1`` taken as outside, instead of ``y > H``);
* ``tv_roi_align_xy_swapped``: RoIs read as ``(batch, y1, x1, y2, x2)``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

F32 = np.float32


# --------------------------------------------------------------------------------------------
# NMS, TF convention
# --------------------------------------------------------------------------------------------


def _tf(boxes: Any, scores: Any, max_output_size: int, iou_threshold: float,
        score_threshold: float, *, at_equal: bool, ties_high: bool) -> np.ndarray:
    b = np.asarray(boxes, F32)
    s = np.asarray(scores, F32)
    thr, st = F32(iou_threshold), F32(score_threshold)
    # TF takes any two diagonal corners: min/max first
    y1, y2 = np.minimum(b[:, 0], b[:, 2]), np.maximum(b[:, 0], b[:, 2])
    x1, x2 = np.minimum(b[:, 1], b[:, 3]), np.maximum(b[:, 1], b[:, 3])
    area = (y2 - y1) * (x2 - x1)
    cand = [i for i in range(b.shape[0]) if s[i] > st]
    sign = -1 if ties_high else 1
    order = sorted(cand, key=lambda i: (-float(s[i]), sign * i))
    keep: list[int] = []
    for i in order:
        if len(keep) >= max_output_size:
            break
        if keep:
            j = np.asarray(keep)
            ih = np.maximum(np.minimum(y2[i], y2[j]) - np.maximum(y1[i], y1[j]), F32(0))
            iw = np.maximum(np.minimum(x2[i], x2[j]) - np.maximum(x1[i], x1[j]), F32(0))
            inter = ih * iw
            with np.errstate(invalid="ignore", divide="ignore"):
                iou = inter / (area[i] + area[j] - inter)
            iou = np.where((area[i] <= 0) | (area[j] <= 0), F32(0), iou)
            hit = iou >= thr if at_equal else iou > thr
            if np.any(hit):
                continue
        keep.append(i)
    return np.asarray(keep, np.int64)


def tf_nms(boxes: Any, scores: Any, max_output_size: int, iou_threshold: float = 0.5,
           score_threshold: float = float("-inf")) -> np.ndarray:
    return _tf(boxes, scores, max_output_size, iou_threshold, score_threshold,
               at_equal=False, ties_high=False)


def tf_nms_ge(boxes: Any, scores: Any, max_output_size: int, iou_threshold: float = 0.5,
              score_threshold: float = float("-inf")) -> np.ndarray:
    return _tf(boxes, scores, max_output_size, iou_threshold, score_threshold,
               at_equal=True, ties_high=False)


def tf_nms_ties_high(boxes: Any, scores: Any, max_output_size: int, iou_threshold: float = 0.5,
                     score_threshold: float = float("-inf")) -> np.ndarray:
    return _tf(boxes, scores, max_output_size, iou_threshold, score_threshold,
               at_equal=False, ties_high=True)


# --------------------------------------------------------------------------------------------
# NMS, torchvision convention
# --------------------------------------------------------------------------------------------


def _tv(boxes: Any, scores: Any, iou_threshold: float, *, at_equal: bool) -> np.ndarray:
    b = np.asarray(boxes, F32)
    s = np.asarray(scores, F32)
    x1, y1, x2, y2 = b[:, 0], b[:, 1], b[:, 2], b[:, 3]  # used as given: no reordering
    area = (x2 - x1) * (y2 - y1)
    order = sorted(range(b.shape[0]), key=lambda i: -float(s[i]))  # stable: ties by index
    suppressed = np.zeros(b.shape[0], bool)
    keep = []
    for pos, i in enumerate(order):
        if suppressed[i]:
            continue
        keep.append(i)
        rest = np.asarray(order[pos + 1 :], np.int64)
        w = np.maximum(F32(0), np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]))
        h = np.maximum(F32(0), np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]))
        inter = w * h
        with np.errstate(invalid="ignore", divide="ignore"):
            iou = (inter / ((area[i] + area[rest]) - inter)).astype(np.float64)
        suppressed[rest] |= iou >= iou_threshold if at_equal else iou > iou_threshold
    return np.asarray(keep, np.int64)


def tv_nms(boxes: Any, scores: Any, iou_threshold: float) -> np.ndarray:
    return _tv(boxes, scores, iou_threshold, at_equal=False)


def tv_nms_ge(boxes: Any, scores: Any, iou_threshold: float) -> np.ndarray:
    return _tv(boxes, scores, iou_threshold, at_equal=True)


# --------------------------------------------------------------------------------------------
# RoIAlign, torchvision convention (NCHW)
# --------------------------------------------------------------------------------------------


def _sample(fmap: np.ndarray, y: F32, x: F32, last_inside: int) -> np.ndarray:
    """torchvision's bilinear sample of a ``[C, H, W]`` map at ``(y, x)``: 0 outside
    ``[-1, H] x [-1, W]``; ``last_inside`` is ``0`` for the correct border, ``1`` for the bug."""
    c, height, width = fmap.shape
    if y < -1.0 or y > height - last_inside or x < -1.0 or x > width - last_inside:
        return np.zeros(c, F32)
    y, x = max(y, F32(0)), max(x, F32(0))
    y_low, x_low = int(y), int(x)
    if y_low >= height - 1:
        y_low = y_high = height - 1
        y = F32(y_low)
    else:
        y_high = y_low + 1
    if x_low >= width - 1:
        x_low = x_high = width - 1
        x = F32(x_low)
    else:
        x_high = x_low + 1
    ly, lx = F32(y - y_low), F32(x - x_low)
    hy, hx = F32(1) - ly, F32(1) - lx
    w1, w2, w3, w4 = hy * hx, hy * lx, ly * hx, ly * lx
    return (w1 * fmap[:, y_low, x_low] + w2 * fmap[:, y_low, x_high]
            + w3 * fmap[:, y_high, x_low] + w4 * fmap[:, y_high, x_high])


def _roi_align(input: Any, boxes: Any, output_size: Any, spatial_scale: float,
               sampling_ratio: int, aligned: bool, *, last_inside: int = 0,
               swap_xy: bool = False) -> np.ndarray:
    x = np.asarray(input, F32)
    rois = np.asarray(boxes, F32)
    ph, pw = (output_size, output_size) if np.ndim(output_size) == 0 else output_size
    out = np.zeros((rois.shape[0], x.shape[1], ph, pw), F32)
    scale = F32(spatial_scale)
    offset = F32(0.5) if aligned else F32(0)
    for k in range(rois.shape[0]):
        fmap = x[int(rois[k, 0])]
        bx1, by1, bx2, by2 = rois[k, 1:]
        if swap_xy:
            bx1, by1, bx2, by2 = by1, bx1, by2, bx2
        start_w, start_h = bx1 * scale - offset, by1 * scale - offset
        roi_w, roi_h = bx2 * scale - offset - start_w, by2 * scale - offset - start_h
        if not aligned:
            roi_w, roi_h = max(roi_w, F32(1)), max(roi_h, F32(1))
        bin_h, bin_w = roi_h / F32(ph), roi_w / F32(pw)
        grid_h = sampling_ratio if sampling_ratio > 0 else int(np.ceil(roi_h / F32(ph)))
        grid_w = sampling_ratio if sampling_ratio > 0 else int(np.ceil(roi_w / F32(pw)))
        count = F32(max(grid_h * grid_w, 1))
        for i in range(ph):
            for j in range(pw):
                acc = np.zeros(x.shape[1], F32)
                for iy in range(grid_h):
                    yy = start_h + F32(i) * bin_h + (F32(iy) + F32(0.5)) * bin_h / F32(grid_h)
                    for ix in range(grid_w):
                        xx = start_w + F32(j) * bin_w + (F32(ix) + F32(0.5)) * bin_w / F32(
                            grid_w
                        )
                        acc = acc + _sample(fmap, yy, xx, last_inside)
                out[k, :, i, j] = acc / count
    return out


def tv_roi_align(input: Any, boxes: Any, output_size: Any, spatial_scale: float = 1.0,
                 sampling_ratio: int = -1, aligned: bool = False) -> np.ndarray:
    return _roi_align(input, boxes, output_size, spatial_scale, sampling_ratio, aligned)


def tv_roi_align_off_by_one(input: Any, boxes: Any, output_size: Any, spatial_scale: float = 1.0,
                            sampling_ratio: int = -1, aligned: bool = False) -> np.ndarray:
    return _roi_align(input, boxes, output_size, spatial_scale, sampling_ratio, aligned,
                      last_inside=1)


def tv_roi_align_xy_swapped(input: Any, boxes: Any, output_size: Any, spatial_scale: float = 1.0,
                            sampling_ratio: int = -1, aligned: bool = False) -> np.ndarray:
    return _roi_align(input, boxes, output_size, spatial_scale, sampling_ratio, aligned,
                      swap_xy=True)
