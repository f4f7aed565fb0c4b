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
in ``[0, N)``, ``out`` float32 C-contiguous ``[K, pooled_h, pooled_w, C]``.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange


@njit(cache=True)
def _axis_weights(start, bin_size, pooled, grid, size):  # pragma: no cover - compiled
    """Sample coordinates along one axis and their bilinear data, ``[pooled, grid]`` each.

    Returns ``(inside, low, high, lerp_low, lerp_high)``: ``inside`` is the axis' half of
    torchvision's ``-1 <= y <= H`` test; ``low``/``high`` are the two taps and
    ``lerp_high = y - low``, ``lerp_low = 1 - lerp_high`` their weights (after clamping).
    """
    inside = np.zeros((pooled, grid), dtype=np.bool_)
    low = np.zeros((pooled, grid), dtype=np.int64)
    high = np.zeros((pooled, grid), dtype=np.int64)
    w_low = np.zeros((pooled, grid), dtype=np.float32)
    w_high = np.zeros((pooled, grid), dtype=np.float32)
    g = np.float32(grid)
    for p in range(pooled):
        for i in range(grid):
            y = start + np.float32(p) * bin_size + (np.float32(i) + np.float32(0.5)) * bin_size / g
            if not (y >= np.float32(-1.0) and y <= np.float32(size)):
                continue
            inside[p, i] = True
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
            low[p, i] = lo
            high[p, i] = hi
            w_high[p, i] = ly
            w_low[p, i] = np.float32(1.0 - np.float64(ly))
    return inside, low, high, w_low, w_high


@njit(parallel=True, cache=True)
def roi_align(
    features, rois, batch, spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned, out
):
    """RoIAlign (the average of bilinear samples per bin) into ``out`` ``[K, ph, pw, C]``."""
    k_rois = rois.shape[0]
    height, width, channels = features.shape[1], features.shape[2], features.shape[3]
    scale = np.float32(spatial_scale)
    offset = np.float32(0.5) if aligned else np.float32(0.0)
    for k in prange(k_rois):
        fmap = features[batch[k]]  # [H, W, C]
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
            sampling_ratio
            if sampling_ratio > 0
            else np.int64(np.ceil(roi_h / np.float32(pooled_h)))
        )
        grid_w = (
            sampling_ratio
            if sampling_ratio > 0
            else np.int64(np.ceil(roi_w / np.float32(pooled_w)))
        )
        count = np.float32(max(grid_h * grid_w, 1))
        # A negative grid (aligned, reversed RoI) samples nothing: the bins are 0 / count = 0.
        gh, gw = max(grid_h, 0), max(grid_w, 0)
        in_y, y_lo, y_hi, wy_lo, wy_hi = _axis_weights(start_h, bin_h, pooled_h, gh, height)
        in_x, x_lo, x_hi, wx_lo, wx_hi = _axis_weights(start_w, bin_w, pooled_w, gw, width)
        for ph in range(pooled_h):
            for pw in range(pooled_w):
                o = out[k, ph, pw]  # [C]
                o[:] = np.float32(0.0)
                for iy in range(gh):
                    for ix in range(gw):
                        if in_y[ph, iy] and in_x[pw, ix]:
                            yl, yh, xl, xh = y_lo[ph, iy], y_hi[ph, iy], x_lo[pw, ix], x_hi[pw, ix]
                            hy, ly, hx, lx = (
                                wy_lo[ph, iy],
                                wy_hi[ph, iy],
                                wx_lo[pw, ix],
                                wx_hi[pw, ix],
                            )
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
