"""``tf.image.crop_and_resize`` and the fused crop + 2x2/2 VALID max pool on the GPU.

Same function, bitwise, as ``npfrcnn.ops.crop_and_resize(..., backend="numpy")`` (TF's CPU
kernel): per axis ``scale = (hi - lo) * (size - 1) / (crop - 1)`` and
``coord = lo * (size - 1) + i * scale`` in float32 (``crop == 1``: the centre
``0.5 * (lo + hi) * (size - 1)`` in double, rounded once); a coordinate outside
``[0, size - 1]`` (or NaN) gives ``extrapolation_value``; bilinear taps at ``floor``/``ceil``
with ``top + (bottom - top) * lerp``; nearest at ``roundf`` (halves up). Flipped boxes
(``y1 > y2``) just give a negative scale, i.e. a flipped crop. Every float32 operation goes
through the non-contracting helpers of ``_cuda`` so the GPU rounds exactly as NumPy does.

Layout: NHWC with channels innermost. One thread per output element in a grid-stride loop over
the flat output, so consecutive threads read consecutive channels of the same taps and write
consecutive outputs (coalesced). ``crop_and_pool`` computes each pooled cell from its four
bilinear samples (TF's max rule: start at -FLT_MAX, keep a strictly greater value, row-major),
never materialising the crops.

Host drivers take NumPy arrays (copied in, result copied out) or device arrays (no copies; the
result stays on the device).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt

from . import _cuda
from ._cuda import cuda, device_function, fadd, fdiv, fmul, fsub

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
def _bilinear(image, b, cy, cx, c, h, w):
    """The bilinear sample at in-range float32 ``(cy, cx)`` of channel ``c``, TF's order."""
    top = int(math.floor(cy))
    bottom = int(math.ceil(cy))
    left = int(math.floor(cx))
    right = int(math.ceil(cx))
    ylerp = fsub(cy, np.float32(top))
    xlerp = fsub(cx, np.float32(left))
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
    total = n * crop_h * crop_w * depth
    start = cuda.grid(1)
    stride = cuda.gridsize(1)
    for e in range(start, total, stride):
        c = e % depth
        r = e // depth
        x = r % crop_w
        r //= crop_w
        y = r % crop_h
        k = r // crop_h
        cy = _coord(boxes[k, 0], boxes[k, 2], y, h, crop_h)
        cx = _coord(boxes[k, 1], boxes[k, 3], x, w, crop_w)
        if not (_inside(cy, h) and _inside(cx, w)):
            out[k, y, x, c] = extrapolation_value
            continue
        b = box_indices[k]
        if nearest:
            out[k, y, x, c] = image[b, _round_half_away(cy), _round_half_away(cx), c]
        else:
            out[k, y, x, c] = _bilinear(image, b, cy, cx, c, h, w)


@cuda.jit
def _crop_pool_kernel(image, boxes, box_indices, crop_h, crop_w, extrapolation_value, out):
    n, out_h, out_w, depth = out.shape
    h = image.shape[1]
    w = image.shape[2]
    total = n * out_h * out_w * depth
    start = cuda.grid(1)
    stride = cuda.gridsize(1)
    for e in range(start, total, stride):
        c = e % depth
        r = e // depth
        x = r % out_w
        r //= out_w
        y = r % out_h
        k = r // out_h
        b = box_indices[k]
        best = _LOWEST
        for dy in range(2):
            cy = _coord(boxes[k, 0], boxes[k, 2], 2 * y + dy, h, crop_h)
            for dx in range(2):
                cx = _coord(boxes[k, 1], boxes[k, 3], 2 * x + dx, w, crop_w)
                if _inside(cy, h) and _inside(cx, w):
                    v = _bilinear(image, b, cy, cx, c, h, w)
                else:
                    v = extrapolation_value
                if v > best:  # strictly greater: NaN skipped, first of equal values kept
                    best = v
        out[k, y, x, c] = best


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
    total = out.size
    if total:
        tpb = _cuda.threads_per_block()
        _crop_kernel[_cuda.blocks_for(total, tpb), tpb](
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
    total = out.size
    if total:
        tpb = _cuda.threads_per_block()
        _crop_pool_kernel[_cuda.blocks_for(total, tpb), tpb](
            d_img, d_boxes, d_idx, crop_h, crop_w, np.float32(extrapolation_value), out
        )
    return out if on_device else out.copy_to_host()
