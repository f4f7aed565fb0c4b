"""``tf.image.crop_and_resize`` and the fused crop + 2x2/2 VALID max pool on the GPU.

Same function, bitwise, as ``npfrcnn.ops.crop_and_resize(..., backend="numpy")`` (TF's CPU
kernel): per axis ``scale = (hi - lo) * (size - 1) / (crop - 1)`` and
``coord = lo * (size - 1) + i * scale`` in float32 (``crop == 1``: the centre
``0.5 * (lo + hi) * (size - 1)`` in double, rounded once); a coordinate outside
``[0, size - 1]`` (or NaN) gives ``extrapolation_value``; bilinear taps at ``floor``/``ceil``
with ``top + (bottom - top) * lerp``; nearest at ``roundf`` (halves up). Flipped boxes
(``y1 > y2``) just give a negative scale, i.e. a flipped crop. Every float32 operation goes
through the non-contracting helpers of ``_cuda`` so the GPU rounds exactly as NumPy does.

Layout: NHWC with channels innermost. A block takes one output cell ``(k, y, x)`` (and a chunk
of channels) at a time and each thread ``CHANNELS_PER_THREAD`` channels of it
(``_cuda.cell_launch``): a thread computes the cell's sample coordinates and bilinear taps once
and reuses them for its channels, and consecutive threads read consecutive channels of the same
taps and write consecutive outputs (coalesced). ``crop_and_pool`` computes each pooled cell from
its four bilinear samples (TF's max rule: start at -FLT_MAX, keep a strictly greater value,
row-major), never materialising the crops.

Host drivers take NumPy arrays (copied in, result copied out) or device arrays (no copies; the
result stays on the device).
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

__all__ = ["crop_and_pool", "crop_and_resize"]

_LOWEST = np.float32(np.finfo(np.float32).min)


@device_function
def _coord(lo, hi, i, size, crop):
    """TF's ``in_y`` / ``in_x`` for output row/column ``i`` (float32)."""
    span = np.float32(size - 1)
    if crop > 1:
        scale = fdiv(fmul(fsub(hi, lo), span), np.float32(crop - 1))
        return fadd(fmul(lo, span), fmul(np.float32(i), scale))
    return np.float32(0.5 * np.float64(fadd(lo, hi)) * np.float64(size - 1))


@device_function
def _round_half_away(c):
    """C's ``roundf`` for ``c >= 0``: ``c - floor(c)`` is exact in float32."""
    f = int(math.floor(c))
    if fsub(c, np.float32(f)) >= np.float32(0.5):
        return f + 1
    return f


@device_function
def _taps(c_y, c_x):
    """Bilinear taps of an in-range float32 sample ``(c_y, c_x)``: rows, columns and lerps."""
    top = int(math.floor(c_y))
    bottom = int(math.ceil(c_y))
    left = int(math.floor(c_x))
    right = int(math.ceil(c_x))
    return top, bottom, left, right, fsub(c_y, np.float32(top)), fsub(c_x, np.float32(left))


@device_function
def _lerp2(image, b, top, bottom, left, right, ylerp, xlerp, c):
    """The bilinear value of channel ``c`` from its taps, in TF's order."""
    tl = image[b, top, left, c]
    tr = image[b, top, right, c]
    bl = image[b, bottom, left, c]
    br = image[b, bottom, right, c]
    upper = fadd(tl, fmul(fsub(tr, tl), xlerp))
    lower = fadd(bl, fmul(fsub(br, bl), xlerp))
    return fadd(upper, fmul(fsub(lower, upper), ylerp))


@device_function
def _inside(v, size):
    return v >= np.float32(0.0) and v <= np.float32(size - 1)  # False for NaN


@cuda.jit
def _crop_kernel(image, boxes, box_indices, nearest, extrapolation_value, out):
    n, crop_h, crop_w, depth = out.shape
    h = image.shape[1]
    w = image.shape[2]
    nt = cuda.blockDim.x
    span = nt * CPT
    chunks = (depth + span - 1) // span
    for t in range(cuda.blockIdx.x, n * crop_h * crop_w * chunks, cuda.gridDim.x):
        chunk, k, y, x = split_cell(t, chunks, crop_h, crop_w)
        c0 = chunk * span + cuda.threadIdx.x
        cy = _coord(boxes[k, 0], boxes[k, 2], y, h, crop_h)
        cx = _coord(boxes[k, 1], boxes[k, 3], x, w, crop_w)
        b = box_indices[k]
        if not (_inside(cy, h) and _inside(cx, w)):
            for j in range(CPT):
                c = c0 + j * nt
                if c < depth:
                    out[k, y, x, c] = extrapolation_value
        elif nearest:
            ry = _round_half_away(cy)
            rx = _round_half_away(cx)
            for j in range(CPT):
                c = c0 + j * nt
                if c < depth:
                    out[k, y, x, c] = image[b, ry, rx, c]
        else:
            top, bottom, left, right, ylerp, xlerp = _taps(cy, cx)
            for j in range(CPT):
                c = c0 + j * nt
                if c < depth:
                    out[k, y, x, c] = _lerp2(image, b, top, bottom, left, right, ylerp, xlerp, c)


@cuda.jit
def _crop_pool_kernel(image, boxes, box_indices, crop_h, crop_w, extrapolation_value, out):
    n, out_h, out_w, depth = out.shape
    h = image.shape[1]
    w = image.shape[2]
    nt = cuda.blockDim.x
    span = nt * CPT
    chunks = (depth + span - 1) // span
    best = cuda.local.array(CPT, numba.float32)
    for t in range(cuda.blockIdx.x, n * out_h * out_w * chunks, cuda.gridDim.x):
        chunk, k, y, x = split_cell(t, chunks, out_h, out_w)
        c0 = chunk * span + cuda.threadIdx.x
        b = box_indices[k]
        for j in range(CPT):
            best[j] = _LOWEST
        for dy in range(2):
            cy = _coord(boxes[k, 0], boxes[k, 2], 2 * y + dy, h, crop_h)
            for dx in range(2):
                cx = _coord(boxes[k, 1], boxes[k, 3], 2 * x + dx, w, crop_w)
                if _inside(cy, h) and _inside(cx, w):
                    top, bottom, left, right, ylerp, xlerp = _taps(cy, cx)
                    for j in range(CPT):
                        c = c0 + j * nt
                        if c < depth:
                            v = _lerp2(image, b, top, bottom, left, right, ylerp, xlerp, c)
                            if v > best[j]:  # strictly greater: NaN skipped, first equal kept
                                best[j] = v
                else:
                    for j in range(CPT):
                        if extrapolation_value > best[j]:
                            best[j] = extrapolation_value
        for j in range(CPT):
            c = c0 + j * nt
            if c < depth:
                out[k, y, x, c] = best[j]


def _inputs(image: Any, boxes: Any, box_indices: Any) -> tuple[bool, Any, Any, Any]:
    on_device = _cuda.is_device_array(image)
    return (
        on_device,
        _cuda.as_device(image, np.float32),
        _cuda.as_device(boxes, np.float32),
        _cuda.as_device(box_indices, np.int32),
    )


def crop_and_resize(
    image: npt.NDArray[np.float32] | Any,
    boxes: npt.NDArray[np.float32] | Any,
    box_indices: npt.NDArray[np.int32] | Any,
    crop_h: int,
    crop_w: int,
    nearest: bool,
    extrapolation_value: float,
    out: Any = None,
) -> Any:
    """``tf.image.crop_and_resize`` (inputs validated by ``npfrcnn.ops.crop_and_resize``).

    Args:
        image: float32 ``[B, H, W, D]``, ``H, W >= 1``.
        boxes: float32 ``[N, 4]`` normalized ``(y1, x1, y2, x2)``, finite.
        box_indices: int32 ``[N]`` in ``[0, B)``.
        crop_h, crop_w: positive crop size.
        nearest: nearest-neighbour instead of bilinear sampling.
        extrapolation_value: value of samples outside the image (rounded to float32).
        out: optional float32 C-contiguous device array of the result's shape to write into
            (it is returned, on the device); by default a new array.

    Returns:
        float32 ``[N, crop_h, crop_w, D]``: NumPy for NumPy input, a device array for device
        input.
    """
    on_device, d_img, d_boxes, d_idx = _inputs(image, boxes, box_indices)
    n = int(d_boxes.shape[0])
    on_device = on_device or out is not None
    out = _cuda.output(out, (n, crop_h, crop_w, int(d_img.shape[3])))
    if out.size:
        blocks, threads = _cuda.cell_launch(n * crop_h * crop_w, int(d_img.shape[3]))
        _crop_kernel[blocks, threads](
            d_img, d_boxes, d_idx, bool(nearest), np.float32(extrapolation_value), out
        )
    return out if on_device else out.copy_to_host()


def crop_and_pool(
    image: npt.NDArray[np.float32] | Any,
    boxes: npt.NDArray[np.float32] | Any,
    box_indices: npt.NDArray[np.int32] | Any,
    crop_h: int,
    crop_w: int,
    extrapolation_value: float,
    out: Any = None,
) -> Any:
    """Bilinear ``crop_and_resize`` then ``max_pool`` 2x2 stride 2 VALID, fused.

    Args:
        image, boxes, box_indices, extrapolation_value: as :func:`crop_and_resize`.
        crop_h, crop_w: crop size, each ``>= 2``; odd sizes drop the last row/column.
        out: optional float32 C-contiguous device array of the result's shape to write into
            (it is returned, on the device); by default a new array.

    Returns:
        float32 ``[N, crop_h // 2, crop_w // 2, D]``, on the device for device input.
    """
    on_device, d_img, d_boxes, d_idx = _inputs(image, boxes, box_indices)
    n = int(d_boxes.shape[0])
    on_device = on_device or out is not None
    out = _cuda.output(out, (n, crop_h // 2, crop_w // 2, int(d_img.shape[3])))
    if out.size:
        blocks, threads = _cuda.cell_launch(n * (crop_h // 2) * (crop_w // 2), int(d_img.shape[3]))
        _crop_pool_kernel[blocks, threads](
            d_img, d_boxes, d_idx, crop_h, crop_w, np.float32(extrapolation_value), out
        )
    return out if on_device else out.copy_to_host()
