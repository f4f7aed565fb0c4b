"""Numba kernels for ``crop_and_resize`` and the fused ``crop_and_pool``.

The arithmetic is TensorFlow's CPU kernel (``tensorflow/core/kernels/image/crop_and_resize_op.cc``)
step for step, in float32, so the results are bitwise equal to ``tf.image.crop_and_resize``:

    height_scale = (y2 - y1) * (H - 1) / (crop_h - 1)        (0 when crop_h == 1)
    in_y = y1 * (H - 1) + y * height_scale                   (crop_h > 1)
    in_y = float(0.5 * double(y1 + y2) * (H - 1))            (crop_h == 1: a double expression)
    rows with in_y outside [0, H - 1] are extrapolation_value; columns likewise
    top = TL + (TR - TL) * x_lerp; bottom = BL + (BR - BL) * x_lerp
    out = top + (bottom - top) * y_lerp                      (nearest: roundf, half away from 0)

Numba promotes ``float32 op int`` and ``float32 op 0.5`` to float64, so every integer and
literal below is converted with ``np.float32`` on purpose; no fastmath (no FMA contraction).

Inputs are validated by ``npfrcnn.ops.crop_and_resize``: ``image`` float32 C-contiguous
``[B, H, W, D]``, ``boxes`` float32 ``[N, 4]`` finite, ``box_indices`` int32 ``[N]`` in
``[0, B)``, crop sizes positive (``>= 2`` for ``crop_and_pool``) with the result and the
sampling tables (``N * (crop_h + crop_w) * 25`` bytes) within the machine's memory, ``out``
float32 C-contiguous of the result's shape. Nothing is allocated inside the parallel loops.
The caller allocates ``out`` with NumPy: NumPy backs large arrays with
transparent huge pages, which halves the first-touch cost of writing a 400 MB result.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

# tf.nn.max_pool starts every window from the lowest float and keeps a value only when it is
# strictly greater, so NaNs are skipped and an all-NaN (or all -inf) window gives -FLT_MAX.
_LOWEST = np.float32(np.finfo(np.float32).min)


@njit(cache=True)
def _axis_samples(lo, hi, size, crop, valid, first, second, lerp, coord):  # pragma: no cover
    """Source coordinate and its floor/ceil/lerp for each of ``crop`` output positions, written
    to the tables ``valid, first, second, lerp, coord`` (``[crop]`` each).

    ``valid[i]`` is False where the coordinate is outside ``[0, size - 1]`` (TF extrapolates
    there; its taps and lerp are then 0); a NaN coordinate, which TF only reaches through float
    overflow of ``(hi - lo) * (size - 1)`` and then indexes with an undefined ``(int)NaN``, is
    treated as outside too.
    """
    span = np.float32(size - 1)
    if crop > 1:
        scale = (hi - lo) * span / np.float32(crop - 1)
    else:
        scale = np.float32(0.0)
    for i in range(crop):
        if crop > 1:
            c = lo * span + np.float32(i) * scale
        else:
            # C++: 0.5 * (y1 + y2) * (H - 1) is a double expression, converted to float once.
            c = np.float32(0.5 * np.float64(lo + hi) * np.float64(size - 1))
        coord[i] = c
        if c >= np.float32(0.0) and c <= span:
            valid[i] = True
            f = np.floor(c)
            first[i] = np.int64(f)
            second[i] = np.int64(np.ceil(c))
            lerp[i] = c - f
        else:
            valid[i] = False
            first[i] = 0
            second[i] = 0
            lerp[i] = np.float32(0.0)


@njit(cache=True)
def _tables(n, crop):  # pragma: no cover - compiled
    """Per-box sampling tables for one axis, ``[n, crop]`` each (valid, first, second, lerp,
    coord), allocated before the parallel loop: there a failed allocation raises MemoryError
    (inside a ``prange`` body Numba loses it and returns ``out`` partly written)."""
    return (
        np.empty((n, crop), np.bool_),
        np.empty((n, crop), np.int64),
        np.empty((n, crop), np.int64),
        np.empty((n, crop), np.float32),
        np.empty((n, crop), np.float32),
    )


@njit(cache=True)
def _round_half_away(c):  # pragma: no cover - compiled
    """C's ``roundf`` for ``c >= 0``: halves go up; ``c - floor(c)`` is exact in float32."""
    f = np.floor(c)
    if c - f >= np.float32(0.5):
        f += np.float32(1.0)
    return np.int64(f)


@njit(cache=True)
def _bilinear(img, t, bt, lf, rt, xl, yl, d):  # pragma: no cover - compiled
    """TF's lerp of the four taps ``img[t|bt, lf|rt, d]``, in TF's float32 order."""
    top_left = img[t, lf, d]
    bottom_left = img[bt, lf, d]
    upper = top_left + (img[t, rt, d] - top_left) * xl
    lower = bottom_left + (img[bt, rt, d] - bottom_left) * xl
    return upper + (lower - upper) * yl


@njit(cache=True)
def _keep_max(v, m):  # pragma: no cover - compiled
    """TF's max-pool step: take ``v`` only if strictly greater (NaN never is)."""
    return v if v > m else m


@njit(parallel=True, cache=True)
def crop_and_resize(image, boxes, box_indices, crop_h, crop_w, nearest, extrapolation_value, out):
    """``tf.image.crop_and_resize`` into ``out``, float32 ``[N, crop_h, crop_w, D]``."""
    n = boxes.shape[0]
    height, width, depth = image.shape[1], image.shape[2], image.shape[3]
    ev = np.float32(extrapolation_value)
    tvy, ttop, tbottom, tylerp, tcy = _tables(n, crop_h)
    tvx, tleft, tright, txlerp, tcx = _tables(n, crop_w)
    for i in prange(n):
        img = image[box_indices[i]]  # [H, W, D]
        y1, x1, y2, x2 = boxes[i, 0], boxes[i, 1], boxes[i, 2], boxes[i, 3]
        vy, top, bottom, ylerp, cy = tvy[i], ttop[i], tbottom[i], tylerp[i], tcy[i]
        vx, left, right, xlerp, cx = tvx[i], tleft[i], tright[i], txlerp[i], tcx[i]
        _axis_samples(y1, y2, height, crop_h, vy, top, bottom, ylerp, cy)
        _axis_samples(x1, x2, width, crop_w, vx, left, right, xlerp, cx)
        for y in range(crop_h):
            for x in range(crop_w):
                o = out[i, y, x]  # [D]
                if not (vy[y] and vx[x]):
                    o[:] = ev
                elif nearest:
                    o[:] = img[_round_half_away(cy[y]), _round_half_away(cx[x])]
                else:
                    t, bt, lf, rt = top[y], bottom[y], left[x], right[x]
                    xl, yl = xlerp[x], ylerp[y]
                    for d in range(depth):
                        o[d] = _bilinear(img, t, bt, lf, rt, xl, yl, d)
    return out


@njit(parallel=True, cache=True)
def crop_and_pool(image, boxes, box_indices, crop_h, crop_w, extrapolation_value, out):
    """Bilinear ``crop_and_resize`` then a 2x2 stride-2 VALID max pool, fused, into ``out``.

    Output cell ``(oy, ox)`` takes crop rows ``2*oy, 2*oy+1`` and columns ``2*ox, 2*ox+1``,
    visited row-major as ``tf.nn.max_pool`` visits them, and keeps the maximum with TF's rule
    (start from -FLT_MAX, replace only when strictly greater). The crops are never materialised.
    ``out`` is float32 ``[N, crop_h // 2, crop_w // 2, D]``.
    """
    n = boxes.shape[0]
    height, width, depth = image.shape[1], image.shape[2], image.shape[3]
    ev = np.float32(extrapolation_value)
    lowest = _LOWEST
    tvy, ttop, tbottom, tylerp, tcy = _tables(n, crop_h)
    tvx, tleft, tright, txlerp, tcx = _tables(n, crop_w)
    for i in prange(n):
        img = image[box_indices[i]]  # [H, W, D]
        y1, x1, y2, x2 = boxes[i, 0], boxes[i, 1], boxes[i, 2], boxes[i, 3]
        vy, top, bottom, ylerp = tvy[i], ttop[i], tbottom[i], tylerp[i]
        vx, left, right, xlerp = tvx[i], tleft[i], tright[i], txlerp[i]
        _axis_samples(y1, y2, height, crop_h, vy, top, bottom, ylerp, tcy[i])
        _axis_samples(x1, x2, width, crop_w, vx, left, right, xlerp, tcx[i])
        for oy in range(crop_h // 2):
            ya, yb = 2 * oy, 2 * oy + 1
            for ox in range(crop_w // 2):
                xa, xb = 2 * ox, 2 * ox + 1
                o = out[i, oy, ox]  # [D]
                if vy[ya] and vy[yb] and vx[xa] and vx[xb]:
                    # Common case, all four samples inside: one pass, the max kept in registers.
                    ta, ba, tb, bb = top[ya], bottom[ya], top[yb], bottom[yb]
                    la, ra, lb, rb = left[xa], right[xa], left[xb], right[xb]
                    xla, xlb, yla, ylb = xlerp[xa], xlerp[xb], ylerp[ya], ylerp[yb]
                    for d in range(depth):
                        m = _keep_max(_bilinear(img, ta, ba, la, ra, xla, yla, d), lowest)
                        m = _keep_max(_bilinear(img, ta, ba, lb, rb, xlb, yla, d), m)
                        m = _keep_max(_bilinear(img, tb, bb, la, ra, xla, ylb, d), m)
                        o[d] = _keep_max(_bilinear(img, tb, bb, lb, rb, xlb, ylb, d), m)
                    continue
                # Some samples extrapolated: visit them one at a time, in the same order.
                o[:] = lowest
                for y in (ya, yb):
                    for x in (xa, xb):
                        if not (vy[y] and vx[x]):
                            for d in range(depth):
                                o[d] = _keep_max(ev, o[d])
                            continue
                        t, bt, lf, rt = top[y], bottom[y], left[x], right[x]
                        xl, yl = xlerp[x], ylerp[y]
                        for d in range(depth):
                            o[d] = _keep_max(_bilinear(img, t, bt, lf, rt, xl, yl, d), o[d])
    return out
