"""RoIAlign on the GPU, NHWC: torchvision's ``roi_align`` (spec 5.4), aligned or not.

Same function as ``npfrcnn.ops.roi_align(..., backend="numpy")``. For RoI ``k`` with
``(batch, x1, y1, x2, y2)`` (the batch index stored as a float, truncated), all in float32:

    offset = 0.5 if aligned else 0;  start = x1 * scale - offset;  end = x2 * scale - offset
    roi_w = end - start  (at least 1 when not aligned);  bin_w = roi_w / pooled_w
    grid_w = sampling_ratio if > 0 else ceil(roi_w / pooled_w);  count = max(grid_h * grid_w, 1)
    x = start + pw * bin_w + (ix + 0.5) * bin_w / grid_w          (y likewise)
    sample: 0 if y < -1 or y > H or x < -1 or x > W; else clamp at 0, y_low = (int)y, and at the
            last row y_high = y_low = H - 1, y = y_low; value
            hy*hx*v1 + hy*lx*v2 + ly*hx*v3 + ly*lx*v4 summed left to right
    output = (sum of the samples, in iy-major order) / count

Every float32 operation goes through the non-contracting helpers of ``_cuda``, so the result is
bitwise the reference's (torchvision's own CUDA build contracts to FMAs and differs in the last
bits). A block takes one output bin ``(k, ph, pw)`` (and a chunk of channels) at a time and each
thread ``CHANNELS_PER_THREAD`` channels of it (``_cuda.cell_launch``): the RoI geometry and each
sample's taps and weights are computed once per thread and reused for its channels; the taps of
consecutive threads are consecutive channels (coalesced reads and writes).
"""

from __future__ import annotations

import math
from typing import Any

import numba
import numpy as np
import numpy.typing as npt

from . import _cuda
from ._cuda import CHANNELS_PER_THREAD as CPT
from ._cuda import cuda, device_function, fadd, fdiv, fmul, fsub, split_cell

__all__ = ["roi_align"]


@device_function
def _weights(y, x, h, w):
    """torchvision's ``bilinear_interpolate`` geometry of the float32 sample ``(y, x)``:
    ``(valid, y_low, y_high, x_low, x_high, w1, w2, w3, w4)``; an invalid sample counts 0."""
    zero = np.float32(0.0)
    one = np.float32(1.0)
    if y < np.float32(-1.0) or y > np.float32(h) or x < np.float32(-1.0) or x > np.float32(w):
        return False, 0, 0, 0, 0, zero, zero, zero, zero
    if y <= zero:
        y = zero
    if x <= zero:
        x = zero
    y_low = int(y)
    x_low = int(x)
    if y_low >= h - 1:
        y_low = h - 1
        y_high = h - 1
        y = np.float32(y_low)
    else:
        y_high = y_low + 1
    if x_low >= w - 1:
        x_low = w - 1
        x_high = w - 1
        x = np.float32(x_low)
    else:
        x_high = x_low + 1
    ly = fsub(y, np.float32(y_low))
    lx = fsub(x, np.float32(x_low))
    hy = fsub(one, ly)
    hx = fsub(one, lx)
    return (
        True,
        y_low,
        y_high,
        x_low,
        x_high,
        fmul(hy, hx),
        fmul(hy, lx),
        fmul(ly, hx),
        fmul(ly, lx),
    )


@cuda.jit
def _roi_align_kernel(features, rois, spatial_scale, sampling_ratio, aligned, out):
    k_total, pooled_h, pooled_w, depth = out.shape
    h = features.shape[1]
    w = features.shape[2]
    offset = np.float32(0.5) if aligned else np.float32(0.0)
    one = np.float32(1.0)
    zero = np.float32(0.0)
    nt = cuda.blockDim.x
    span = nt * CPT
    chunks = (depth + span - 1) // span
    acc = cuda.local.array(CPT, numba.float32)
    for t in range(cuda.blockIdx.x, k_total * pooled_h * pooled_w * chunks, cuda.gridDim.x):
        chunk, k, ph, pw = split_cell(t, chunks, pooled_h, pooled_w)
        c0 = chunk * span + cuda.threadIdx.x
        b = int(rois[k, 0])
        start_w = fsub(fmul(rois[k, 1], spatial_scale), offset)
        start_h = fsub(fmul(rois[k, 2], spatial_scale), offset)
        end_w = fsub(fmul(rois[k, 3], spatial_scale), offset)
        end_h = fsub(fmul(rois[k, 4], spatial_scale), offset)
        roi_w = fsub(end_w, start_w)
        roi_h = fsub(end_h, start_h)
        if not aligned:
            roi_w = max(roi_w, one)
            roi_h = max(roi_h, one)
        bin_h = fdiv(roi_h, np.float32(pooled_h))
        bin_w = fdiv(roi_w, np.float32(pooled_w))
        if sampling_ratio > 0:
            grid_h = sampling_ratio
            grid_w = sampling_ratio
        else:
            grid_h = int(math.ceil(fdiv(roi_h, np.float32(pooled_h))))
            grid_w = int(math.ceil(fdiv(roi_w, np.float32(pooled_w))))
        count = np.float32(max(grid_h * grid_w, 1))
        base_h = fadd(start_h, fmul(np.float32(ph), bin_h))
        base_w = fadd(start_w, fmul(np.float32(pw), bin_w))
        for j in range(CPT):
            acc[j] = zero
        for iy in range(grid_h):
            y = fadd(
                base_h, fdiv(fmul(fadd(np.float32(iy), np.float32(0.5)), bin_h), np.float32(grid_h))
            )
            for ix in range(grid_w):
                x = fadd(
                    base_w,
                    fdiv(fmul(fadd(np.float32(ix), np.float32(0.5)), bin_w), np.float32(grid_w)),
                )
                valid, y_low, y_high, x_low, x_high, w1, w2, w3, w4 = _weights(y, x, h, w)
                for j in range(CPT):
                    c = c0 + j * nt
                    if c < depth:
                        if valid:
                            s = fmul(w1, features[b, y_low, x_low, c])
                            s = fadd(s, fmul(w2, features[b, y_low, x_high, c]))
                            s = fadd(s, fmul(w3, features[b, y_high, x_low, c]))
                            s = fadd(s, fmul(w4, features[b, y_high, x_high, c]))
                        else:
                            s = zero
                        acc[j] = fadd(acc[j], s)
        for j in range(CPT):
            c = c0 + j * nt
            if c < depth:
                out[k, ph, pw, c] = fdiv(acc[j], count)


def roi_launch(
    features: Any, rois: Any, output_size: int | tuple[int, int], out: Any
) -> tuple[bool, Any, Any, Any, int, int]:
    """The RoI drivers' set-up: ``(result stays on the device, features and rois on the device,
    the result array [K, pooled_h, pooled_w, C], blocks, threads)``."""
    ph, pw = (output_size, output_size) if isinstance(output_size, int) else output_size
    on_device = _cuda.is_device_array(features) or out is not None
    d_feat = _cuda.as_device(features, np.float32)
    d_rois = _cuda.as_device(rois, np.float32)
    out = _cuda.output(out, (int(d_rois.shape[0]), int(ph), int(pw), int(d_feat.shape[3])))
    blocks, threads = _cuda.cell_launch(int(out.shape[0]) * ph * pw, int(out.shape[3]))
    return on_device, d_feat, d_rois, out, blocks, threads


def roi_align(
    features: npt.NDArray[np.float32] | Any,
    rois: npt.NDArray[np.float32] | Any,
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
    out: Any = None,
) -> Any:
    """torchvision ``roi_align`` on NHWC features (inputs validated by ``npfrcnn.ops.roi_align``).

    Args:
        features: float32 ``[B, H, W, C]``.
        rois: float32 ``[K, 5]`` ``(batch_index, x1, y1, x2, y2)`` in input pixels; the batch
            index in ``[0, B)``.
        output_size: ``(pooled_h, pooled_w)`` or one int for both.
        spatial_scale: feature-map pixels per input pixel (e.g. 1/16), rounded to float32.
        sampling_ratio: samples per bin side; ``<= 0`` means ``ceil(roi size / pooled size)``.
        aligned: shift the RoI by -0.5 pixel (Detectron2) and allow RoIs smaller than 1.
        out: optional float32 C-contiguous device array of the result's shape to write into
            (it is returned, on the device); by default a new array.

    Returns:
        float32 ``[K, pooled_h, pooled_w, C]``: NumPy for NumPy input, a device array for
        device input.
    """
    on_device, d_feat, d_rois, out, blocks, threads = roi_launch(features, rois, output_size, out)
    if out.size:
        _roi_align_kernel[blocks, threads](
            d_feat, d_rois, np.float32(spatial_scale), int(sampling_ratio), bool(aligned), out
        )
    return out if on_device else out.copy_to_host()
