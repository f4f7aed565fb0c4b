"""Numba kernels for torch's bilinear resize (``F.interpolate(mode="bilinear",
align_corners=False)``) and its nearest resize, on NHWC float32 images.

The per-axis source indices and weights are computed once by the caller
(``npfrcnn.ops.resize``, which also holds the NumPy reference these kernels are checked
against, bit for bit); the kernels only combine the four taps, in one of torch's four orders
(``FORMULA_*`` below). A fused multiply-add rounds once: it is LLVM's ``llvm.fma.f32``, an FMA
instruction on x86-64 with FMA (or libm's correctly rounded ``fmaf`` elsewhere), never a
contraction chosen by the compiler (no ``fastmath``).

Inputs are validated by ``npfrcnn.ops.resize``: ``x`` float32 C-contiguous ``[N, H, W, C]``;
``ih0, ih1`` int64 ``[out_h]`` and ``iw0, iw1`` int64 ``[out_w]`` in range; ``lh0, lh1``
float32 ``[out_h]``, ``lw0, lw1`` float32 ``[out_w]``; ``out`` float32 C-contiguous
``[N, out_h, out_w, C]``.
"""

from __future__ import annotations

from numba import njit, prange, types
from numba.extending import intrinsic

# The orders of operations (see npfrcnn.ops.resize for which torch path uses which).
FORMULA_FMA_CHANNELS_FIRST = 0
FORMULA_FMA_CHANNELS_LAST = 1
FORMULA_PLAIN = 2
FORMULA_PLAIN_CHANNELS_LAST = 3
# Channels-last formulas: the first C - C % 8 channels take torch's vector loop (8 lanes), whose
# association differs from its scalar loop's.
CHANNELS_LAST_LANES = 8


@intrinsic
def fma32(typingctx, a, b, c):  # pragma: no cover - compiled
    """float32 ``a * b + c`` with one rounding (``llvm.fma.f32``)."""
    sig = types.float32(types.float32, types.float32, types.float32)

    def codegen(context, builder, signature, args):
        return builder.fma(*args)

    return sig, codegen


@njit(parallel=True, cache=True)
def resize_bilinear(x, ih0, ih1, lh0, lh1, iw0, iw1, lw0, lw1, formula, out):  # pragma: no cover
    """Bilinear resize of ``x`` into ``out``, one (image, output row) per parallel step."""
    n_img, _, _, channels = x.shape
    out_h, out_w = out.shape[1], out.shape[2]
    vec = channels - channels % CHANNELS_LAST_LANES
    for job in prange(n_img * out_h):
        n = job // out_h
        oh = job % out_h
        h0, h1 = ih0[oh], ih1[oh]
        a0, a1 = lh0[oh], lh1[oh]
        for ow in range(out_w):
            w0, w1 = iw0[ow], iw1[ow]
            b0, b1 = lw0[ow], lw1[ow]
            p00, p01 = x[n, h0, w0], x[n, h0, w1]  # [C]
            p10, p11 = x[n, h1, w0], x[n, h1, w1]
            o = out[n, oh, ow]
            if formula == FORMULA_FMA_CHANNELS_FIRST:
                for c in range(channels):
                    t0 = fma32(p00[c], b0, p01[c] * b1)
                    t1 = fma32(p10[c], b0, p11[c] * b1)
                    o[c] = fma32(t0, a0, t1 * a1)
            elif formula == FORMULA_FMA_CHANNELS_LAST:
                w00, w01, w10, w11 = a0 * b0, a0 * b1, a1 * b0, a1 * b1
                for c in range(vec):  # torch's vector loop
                    acc = fma32(p11[c], w11, p10[c] * w10)
                    acc = fma32(p01[c], w01, acc)
                    o[c] = fma32(p00[c], w00, acc)
                for c in range(vec, channels):  # its scalar loop
                    acc = fma32(p00[c], w00, p01[c] * w01)
                    acc = fma32(p10[c], w10, acc)
                    o[c] = fma32(p11[c], w11, acc)
            elif formula == FORMULA_PLAIN:
                for c in range(channels):
                    t0 = p00[c] * b0 + p01[c] * b1
                    t1 = p10[c] * b0 + p11[c] * b1
                    o[c] = t0 * a0 + t1 * a1
            else:
                w00, w01, w10, w11 = a0 * b0, a0 * b1, a1 * b0, a1 * b1
                for c in range(vec):
                    o[c] = p00[c] * w00 + (p01[c] * w01 + (p10[c] * w10 + p11[c] * w11))
                for c in range(vec, channels):
                    o[c] = ((p00[c] * w00 + p01[c] * w01) + p10[c] * w10) + p11[c] * w11
    return out


@njit(parallel=True, cache=True)
def resize_nearest(x, ih, iw, out):  # pragma: no cover - compiled
    """Nearest resize: ``out[n, i, j] = x[n, ih[i], iw[j]]`` (an exact copy of each pixel)."""
    n_img = x.shape[0]
    out_h, out_w = out.shape[1], out.shape[2]
    for job in prange(n_img * out_h):
        n = job // out_h
        oh = job % out_h
        row = x[n, ih[oh]]
        for ow in range(out_w):
            out[n, oh, ow, :] = row[iw[ow]]
    return out
