"""Numba kernel for RoIAlign, torchvision's CPU semantics on NHWC feature maps.

Transcribed from ``torchvision/csrc/ops/cpu/roi_align_kernel.cpp`` (forward) and
``roi_align_common.h`` (``pre_calc_for_bilinear_interpolate``), in float32 and in the same order:

    offset = aligned ? 0.5 : 0;  start = x1 * scale - offset;  roi_w = end - start
    roi_w = max(roi_w, 1) unless aligned;   bin_w = roi_w / pooled_w
    grid_w = sampling_ratio > 0 ? sampling_ratio : ceil(roi_w / pooled_w)
    count = max(grid_h * grid_w, 1)
    y = start_h + ph * bin_h + (iy + .5f) * bin_h / grid_h        (x likewise)
    a sample outside [-1, H] x [-1, W] has weights 0 at position (0, 0); otherwise clamp to
    >= 0, y_low = (int)y, at the last row y_high = y_low = H - 1 and y = y_low;
    ly = y - y_low, hy = 1. - ly (a double expression rounded to float)
    out = (sum over samples, in order, of ((w1*v1 + w2*v2) + w3*v3) + w4*v4) / count

Inputs are validated by ``npfrcnn.ops.roi_align``: ``features`` float32 C-contiguous
``[N, H, W, C]`` with ``H, W >= 1``, ``rois`` float32 ``[K, 5]`` finite, ``batch`` int64 ``[K]``
in ``[0, N)``, ``out`` float32 C-contiguous ``[K, pooled_h, pooled_w, C]``, and the sample
count and table size bounded (``ROI_ALIGN_MAX_SAMPLES``, the machine's memory).

Nothing is allocated inside the parallel loop: the per-RoI sample tables of all RoIs are
allocated first, in serial code, where a failed allocation raises ``MemoryError``. (Inside a
``prange`` body Numba loses such an error and the function returns ``out`` partly written.)
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange


@njit(cache=True)
def _geometry(
    rois, k, scale, offset, aligned, pooled_h, pooled_w, sampling_ratio
):  # pragma: no cover - compiled
    """RoI ``k``'s ``(start_h, start_w, bin_h, bin_w, grid_h, grid_w)`` (torchvision's)."""
    start_w = rois[k, 1] * scale - offset
    start_h = rois[k, 2] * scale - offset
    end_w = rois[k, 3] * scale - offset
    end_h = rois[k, 4] * scale - offset
    roi_w = end_w - start_w
    roi_h = end_h - start_h
    if not aligned:  # torchvision forces malformed RoIs to 1x1
        roi_w = max(roi_w, np.float32(1.0))
        roi_h = max(roi_h, np.float32(1.0))
    bin_h = roi_h / np.float32(pooled_h)
    bin_w = roi_w / np.float32(pooled_w)
    grid_h = (
        sampling_ratio if sampling_ratio > 0 else np.int64(np.ceil(roi_h / np.float32(pooled_h)))
    )
    grid_w = (
        sampling_ratio if sampling_ratio > 0 else np.int64(np.ceil(roi_w / np.float32(pooled_w)))
    )
    return start_h, start_w, bin_h, bin_w, grid_h, grid_w


@njit(cache=True)
def _axis_weights(
    start, bin_size, pooled, grid, size, inside, low, high, w_low, w_high
):  # pragma: no cover - compiled
    """Sample coordinates along one axis and their bilinear data, written to the tables
    (``[pooled * grid]`` each, entry ``p * grid + i``).

    ``inside`` is the axis' half of torchvision's ``-1 <= y <= H`` test; ``low``/``high`` are
    the two taps and ``w_high = y - low``, ``w_low = 1 - w_high`` their weights (after
    clamping); an outside sample gets taps 0 and weights 0.
    """
    g = np.float32(grid)
    for p in range(pooled):
        for i in range(grid):
            t = p * grid + i
            y = start + np.float32(p) * bin_size + (np.float32(i) + np.float32(0.5)) * bin_size / g
            if not (y >= np.float32(-1.0) and y <= np.float32(size)):
                inside[t] = False
                low[t] = 0
                high[t] = 0
                w_low[t] = np.float32(0.0)
                w_high[t] = np.float32(0.0)
                continue
            inside[t] = True
            if y <= np.float32(0.0):
                y = np.float32(0.0)
            lo = np.int64(y)
            if lo >= size - 1:
                lo = size - 1
                hi = lo
                y = np.float32(lo)
            else:
                hi = lo + 1
            ly = y - np.float32(lo)
            low[t] = lo
            high[t] = hi
            w_high[t] = ly
            w_low[t] = np.float32(1.0 - np.float64(ly))


@njit(parallel=True, cache=True)
def roi_align(
    features, rois, batch, spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned, out
):
    """RoIAlign (the average of bilinear samples per bin) into ``out`` ``[K, ph, pw, C]``."""
    k_rois = rois.shape[0]
    height, width, channels = features.shape[1], features.shape[2], features.shape[3]
    scale = np.float32(spatial_scale)
    offset = np.float32(0.5) if aligned else np.float32(0.0)
    # Where each RoI's tables start: RoI k owns entries [at_y[k], at_y[k + 1]).
    at_y = np.zeros(k_rois + 1, np.int64)
    at_x = np.zeros(k_rois + 1, np.int64)
    for k in range(k_rois):
        _, _, _, _, grid_h, grid_w = _geometry(
            rois, k, scale, offset, aligned, pooled_h, pooled_w, sampling_ratio
        )
        at_y[k + 1] = at_y[k] + pooled_h * max(grid_h, 0)
        at_x[k + 1] = at_x[k] + pooled_w * max(grid_w, 0)
    in_y = np.empty(at_y[k_rois], np.bool_)
    y_lo = np.empty(at_y[k_rois], np.int64)
    y_hi = np.empty(at_y[k_rois], np.int64)
    wy_lo = np.empty(at_y[k_rois], np.float32)
    wy_hi = np.empty(at_y[k_rois], np.float32)
    in_x = np.empty(at_x[k_rois], np.bool_)
    x_lo = np.empty(at_x[k_rois], np.int64)
    x_hi = np.empty(at_x[k_rois], np.int64)
    wx_lo = np.empty(at_x[k_rois], np.float32)
    wx_hi = np.empty(at_x[k_rois], np.float32)
    for k in prange(k_rois):
        fmap = features[batch[k]]  # [H, W, C]
        start_h, start_w, bin_h, bin_w, grid_h, grid_w = _geometry(
            rois, k, scale, offset, aligned, pooled_h, pooled_w, sampling_ratio
        )
        count = np.float32(max(grid_h * grid_w, 1))
        # A negative grid (aligned, reversed RoI) samples nothing: the bins are 0 / count = 0.
        gh, gw = max(grid_h, 0), max(grid_w, 0)
        y0, y1, x0, x1 = at_y[k], at_y[k + 1], at_x[k], at_x[k + 1]
        _axis_weights(
            start_h, bin_h, pooled_h, gh, height,
            in_y[y0:y1], y_lo[y0:y1], y_hi[y0:y1], wy_lo[y0:y1], wy_hi[y0:y1],
        )
        _axis_weights(
            start_w, bin_w, pooled_w, gw, width,
            in_x[x0:x1], x_lo[x0:x1], x_hi[x0:x1], wx_lo[x0:x1], wx_hi[x0:x1],
        )
        for ph in range(pooled_h):
            for pw in range(pooled_w):
                o = out[k, ph, pw]  # [C]
                o[:] = np.float32(0.0)
                for iy in range(gh):
                    ty = y0 + ph * gh + iy
                    for ix in range(gw):
                        tx = x0 + pw * gw + ix
                        if in_y[ty] and in_x[tx]:
                            yl, yh, xl, xh = y_lo[ty], y_hi[ty], x_lo[tx], x_hi[tx]
                            hy, ly, hx, lx = wy_lo[ty], wy_hi[ty], wx_lo[tx], wx_hi[tx]
                            w1, w2, w3, w4 = hy * hx, hy * lx, ly * hx, ly * lx
                        else:  # torchvision: zero weights at position 0 (0 * inf is still NaN)
                            yl, yh, xl, xh = 0, 0, 0, 0
                            w1 = w2 = w3 = w4 = np.float32(0.0)
                        v1, v2, v3, v4 = fmap[yl, xl], fmap[yl, xh], fmap[yh, xl], fmap[yh, xh]
                        for c in range(channels):
                            o[c] += w1 * v1[c] + w2 * v2[c] + w3 * v3[c] + w4 * v4[c]
                for c in range(channels):
                    o[c] = o[c] / count
    return out
