"""Numba kernel for RoI max pooling, torchvision's CPU semantics on NHWC feature maps.

Transcribed from ``torchvision/csrc/ops/cpu/roi_pool_kernel.cpp`` (forward, without argmax):

    start_w = round(x1 * scale)            (C ``round``: halves away from zero), likewise the rest
    roi_w = max(end_w - start_w + 1, 1);   bin_w = float(roi_w) / float(pooled_w)
    wstart = floor(pw * bin_w) + start_w;  wend = ceil((pw + 1) * bin_w) + start_w
    both clamped to [0, W] (rows likewise); an empty bin is 0
    otherwise max over the bin from -FLT_MAX, keeping a value only if strictly greater,
    rows then columns (NaN is never kept; the first of equal values is)

Inputs are validated by ``npfrcnn.ops.roi_pool``: ``features`` float32 C-contiguous
``[N, H, W, C]``, ``rois`` float32 ``[K, 5]`` finite with ``|coordinate * scale| <= 2**24``,
``batch`` int64 ``[K]`` in ``[0, N)``, ``out`` float32 C-contiguous ``[K, pooled_h, pooled_w, C]``.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

_LOWEST = np.float32(np.finfo(np.float32).min)


@njit(cache=True)
def _round_half_away(v):  # pragma: no cover - compiled
    """C's ``round`` of a float32: ``v - trunc(v)`` is exact, halves go away from zero."""
    t = np.trunc(v)
    if abs(v - t) >= np.float32(0.5):
        t += np.float32(1.0) if v > 0 else np.float32(-1.0)
    return np.int64(t)


@njit(parallel=True, cache=True)
def roi_pool(features, rois, batch, spatial_scale, pooled_h, pooled_w, out):
    """RoI max pooling into ``out`` ``[K, pooled_h, pooled_w, C]``."""
    k_rois = rois.shape[0]
    height, width, channels = features.shape[1], features.shape[2], features.shape[3]
    scale = np.float32(spatial_scale)
    lowest = _LOWEST
    for k in prange(k_rois):
        fmap = features[batch[k]]  # [H, W, C]
        start_w = _round_half_away(rois[k, 1] * scale)
        start_h = _round_half_away(rois[k, 2] * scale)
        end_w = _round_half_away(rois[k, 3] * scale)
        end_h = _round_half_away(rois[k, 4] * scale)
        roi_w = max(end_w - start_w + 1, 1)  # torchvision forces malformed RoIs to 1x1
        roi_h = max(end_h - start_h + 1, 1)
        bin_h = np.float32(roi_h) / np.float32(pooled_h)
        bin_w = np.float32(roi_w) / np.float32(pooled_w)
        for ph in range(pooled_h):
            h0 = np.int64(np.floor(np.float32(ph) * bin_h)) + start_h
            h1 = np.int64(np.ceil(np.float32(ph + 1) * bin_h)) + start_h
            h0, h1 = min(max(h0, 0), height), min(max(h1, 0), height)
            for pw in range(pooled_w):
                w0 = np.int64(np.floor(np.float32(pw) * bin_w)) + start_w
                w1 = np.int64(np.ceil(np.float32(pw + 1) * bin_w)) + start_w
                w0, w1 = min(max(w0, 0), width), min(max(w1, 0), width)
                o = out[k, ph, pw]  # [C]
                if h1 <= h0 or w1 <= w0:
                    o[:] = np.float32(0.0)  # an empty bin is 0
                    continue
                o[:] = lowest
                for h in range(h0, h1):
                    for w in range(w0, w1):
                        v = fmap[h, w]  # [C]
                        for c in range(channels):
                            m = o[c]
                            o[c] = v[c] if v[c] > m else m
    return out
