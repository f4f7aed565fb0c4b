"""RoIPool (max) on the GPU, NHWC: torchvision's ``roi_pool``.

Same function as ``npfrcnn.ops.roi_pool(..., backend="numpy")``. For RoI ``k`` with
``(batch, x1, y1, x2, y2)`` (batch index stored as a float, truncated):

    start_w = round(x1 * scale); end_w = round(x2 * scale)       (float32 product, roundf:
                                                                   halves away from zero)
    roi_w = max(end_w - start_w + 1, 1);  bin_w = float32(roi_w) / float32(pooled_w)
    wstart = floor(pw * bin_w) + start_w;  wend = ceil((pw + 1) * bin_w) + start_w
    both clamped into [0, W]                                       (h likewise)
    output = 0 for an empty bin, else the max over the bin starting from -FLT_MAX and taking a
             value only when strictly greater (NaN never taken)

A block takes one output bin ``(k, ph, pw)`` (and a chunk of channels) at a time and each thread
``CHANNELS_PER_THREAD`` channels of it (``_cuda.cell_launch``): the bin bounds are computed once
per thread; channels innermost, so consecutive threads' loads and stores are coalesced.
"""

from __future__ import annotations

import math
from typing import Any

import numba
import numpy as np
import numpy.typing as npt

from ._cuda import CHANNELS_PER_THREAD as CPT
from ._cuda import cuda, device_function, fdiv, fmul, fsub, split_cell
from .roi_align import roi_launch

__all__ = ["roi_pool"]

_LOWEST = np.float32(np.finfo(np.float32).min)


@device_function
def _roundf(v):
    """C's ``roundf`` (halves away from zero) of a float32, as an int."""
    a = abs(v)
    f = int(math.floor(a))
    if fsub(a, np.float32(f)) >= np.float32(0.5):
        f += 1
    return -f if v < np.float32(0.0) else f


@cuda.jit
def _roi_pool_kernel(features, rois, spatial_scale, out):
    k_total, pooled_h, pooled_w, depth = out.shape
    h = features.shape[1]
    w = features.shape[2]
    nt = cuda.blockDim.x
    span = nt * CPT
    chunks = (depth + span - 1) // span
    best = cuda.local.array(CPT, numba.float32)
    for t in range(cuda.blockIdx.x, k_total * pooled_h * pooled_w * chunks, cuda.gridDim.x):
        chunk, k, ph, pw = split_cell(t, chunks, pooled_h, pooled_w)
        c0 = chunk * span + cuda.threadIdx.x
        b = int(rois[k, 0])
        start_w = _roundf(fmul(rois[k, 1], spatial_scale))
        start_h = _roundf(fmul(rois[k, 2], spatial_scale))
        end_w = _roundf(fmul(rois[k, 3], spatial_scale))
        end_h = _roundf(fmul(rois[k, 4], spatial_scale))
        roi_w = max(end_w - start_w + 1, 1)
        roi_h = max(end_h - start_h + 1, 1)
        bin_h = fdiv(np.float32(roi_h), np.float32(pooled_h))
        bin_w = fdiv(np.float32(roi_w), np.float32(pooled_w))
        hstart = int(math.floor(fmul(np.float32(ph), bin_h)))
        wstart = int(math.floor(fmul(np.float32(pw), bin_w)))
        hend = int(math.ceil(fmul(np.float32(ph + 1), bin_h)))
        wend = int(math.ceil(fmul(np.float32(pw + 1), bin_w)))
        hstart = min(max(hstart + start_h, 0), h)
        hend = min(max(hend + start_h, 0), h)
        wstart = min(max(wstart + start_w, 0), w)
        wend = min(max(wend + start_w, 0), w)
        for j in range(CPT):
            best[j] = _LOWEST
        for yy in range(hstart, hend):
            for xx in range(wstart, wend):
                for j in range(CPT):
                    c = c0 + j * nt
                    if c < depth:
                        v = features[b, yy, xx, c]
                        if v > best[j]:
                            best[j] = v
        empty = hend <= hstart or wend <= wstart
        for j in range(CPT):
            c = c0 + j * nt
            if c < depth:
                out[k, ph, pw, c] = np.float32(0.0) if empty else best[j]


def roi_pool(
    features: npt.NDArray[np.float32] | Any,
    rois: npt.NDArray[np.float32] | Any,
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
    out: Any = None,
) -> Any:
    """torchvision ``roi_pool`` on NHWC features (inputs validated by ``npfrcnn.ops.roi_pool``).

    Args:
        features: float32 ``[B, H, W, C]``.
        rois: float32 ``[K, 5]`` ``(batch_index, x1, y1, x2, y2)``; batch index in ``[0, B)``.
        output_size: ``(pooled_h, pooled_w)`` or one int for both.
        spatial_scale: feature-map pixels per input pixel, rounded to float32.
        out: optional float32 C-contiguous device array of the result's shape to write into
            (it is returned, on the device); by default a new array.

    Returns:
        float32 ``[K, pooled_h, pooled_w, C]``: NumPy for NumPy input, a device array for
        device input.
    """
    on_device, d_feat, d_rois, out, blocks, threads = roi_launch(features, rois, output_size, out)
    if out.size:
        _roi_pool_kernel[blocks, threads](d_feat, d_rois, np.float32(spatial_scale), out)
    return out if on_device else out.copy_to_host()
