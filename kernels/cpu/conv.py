"""Numba kernels around the convolution GEMMs: patch gathering, strided gathers, the fused
epilogue (norm, residual add, ReLU) and the ResNet stem's max-pool.

They do the memory-bound passes the BLAS GEMM does not, on every core and in one pass each,
and compute exactly what the NumPy reference path (``npfrcnn.ops.conv`` with
``backend="numpy"``, ``npfrcnn.modeling.backbone``) computes, bit for bit:

* :func:`im2col` writes the same patch matrix as the reference's zero-padded copy followed by
  the strided-view copy, reading the unpadded input (out-of-image taps are written as ``+0.0``,
  which is what the zero padding holds);
* :func:`gather_strided` is ``x[:, ::sh, ::sw]`` made contiguous (a 1x1 strided convolution's
  input);
* :func:`epilogue` applies, per element and in this order, the reference's separate passes:
  ``y = y * a + b`` as two float32 roundings (``FrozenBatchNorm2d``), or
  ``f32(f64(y) * f64(a) + f64(b))`` (BN in eval, as ``apply_fma_affine``), or ``y + b`` (a
  bias); then ``y + r`` (a residual, float32); then ``max(y, 0)`` with NaN kept and ``-0.0``
  made ``+0.0`` (as ``np.maximum(y, 0)``). No ``fastmath``, so LLVM contracts nothing into
  an FMA;
* :func:`max_pool_3x3_s2_p1` is ``MaxPool2d(3, 2, padding=1)``: the padding never wins (it is
  ``-inf``), a NaN in the window gives NaN, and ties take the later tap, as the reference's
  ``np.maximum`` passes over the nine taps do.

Inputs are validated by the callers (``npfrcnn.ops.conv``, ``npfrcnn.ops.layers``): float32,
C-contiguous, shapes consistent, indices in range.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

EPI_NONE = 0
EPI_FROZEN_BN = 1  # y * a + b, two float32 roundings
EPI_FMA64 = 2  # f32(f64(y) * f64(a) + f64(b))
EPI_BIAS = 3  # y + b


@njit(parallel=True, cache=True)
def im2col(x, i0, i1, r0, r1, wo, kh, kw, sh, sw, dh, dw, pt, pl, buf):  # pragma: no cover
    """Patches of output rows ``r0:r1`` of images ``i0:i1`` into ``buf``, one row per output
    pixel in (image, row, column) order.

    Column ``(i * kw + jj) * C + c`` holds ``x[img, r*sh - pt + i*dh, j*sw - pl + jj*dw, c]``,
    ``+0.0`` outside the image. Copies are slice assignments (contiguous runs of ``C``, or of
    ``kw * C`` when ``dw == 1``), which LLVM turns into vector copies.
    """
    h, w, c = x.shape[1], x.shape[2], x.shape[3]
    per_img = (r1 - r0) * wo
    for job in prange((i1 - i0) * per_img):
        img = i0 + job // per_img
        r = r0 + (job % per_img) // wo
        j = job % wo
        row = buf[job]
        x0 = j * sw - pl
        for i in range(kh):
            y = r * sh - pt + i * dh
            base = i * kw * c
            if y < 0 or y >= h:
                row[base:base + kw * c] = 0.0
                continue
            if dw == 1:
                lo = min(max(0, -x0), kw)
                hi = max(min(kw, w - x0), lo)
                if lo > 0:
                    row[base:base + lo * c] = 0.0
                if hi < kw:
                    row[base + hi * c:base + kw * c] = 0.0
                if hi > lo:
                    row[base + lo * c:base + hi * c] = x[img, y, x0 + lo:x0 + hi].ravel()
            else:
                for jj in range(kw):
                    xx = x0 + jj * dw
                    col = base + jj * c
                    if xx < 0 or xx >= w:
                        row[col:col + c] = 0.0
                    else:
                        row[col:col + c] = x[img, y, xx]


@njit(parallel=True, cache=True)
def gather_strided(x, sh, sw, out):  # pragma: no cover
    """``out[n, r, j] = x[n, r * sh, j * sw]``, one output row per parallel step."""
    n_img, ho, wo = out.shape[0], out.shape[1], out.shape[2]
    for job in prange(n_img * ho):
        n = job // ho
        r = job % ho
        for j in range(wo):
            out[n, r, j, :] = x[n, r * sh, j * sw, :]


@njit(parallel=True, cache=True)
def epilogue(y, mode, a, b, residual, has_residual, relu):  # pragma: no cover
    """In place on ``y [M, C]``: the affine/bias ``mode``, then ``+ residual [M, C]``, then ReLU.

    Rows are split into blocks across threads; ``a``/``b`` are ``[C]`` (unused for
    ``EPI_NONE``, ``a`` unused for ``EPI_BIAS``).
    """
    m, c = y.shape
    zero = np.float32(0.0)
    block = 64
    n_blocks = (m + block - 1) // block
    for blk in prange(n_blocks):
        i0 = blk * block
        i1 = min(i0 + block, m)
        for i in range(i0, i1):
            row = y[i]
            for ch in range(c):
                v = row[ch]
                if mode == EPI_FROZEN_BN:
                    v = v * a[ch]
                    v = v + b[ch]
                elif mode == EPI_FMA64:
                    v = np.float32(np.float64(v) * np.float64(a[ch]) + np.float64(b[ch]))
                elif mode == EPI_BIAS:
                    v = v + b[ch]
                if has_residual:
                    v = v + residual[i, ch]
                # np.maximum(v, 0): NaN stays, -0.0 becomes +0.0 (numpy returns the 0 operand
                # when the two compare equal).
                if relu and not (v > zero) and v == v:
                    v = zero
                row[ch] = v


@njit(parallel=True, cache=True)
def max_pool_3x3_s2_p1(x, out):  # pragma: no cover
    """``MaxPool2d(kernel_size=3, stride=2, padding=1)`` of ``x [N, H, W, C]`` into ``out``."""
    n_img, h, w, c = x.shape
    ho, wo = out.shape[1], out.shape[2]
    for job in prange(n_img * ho):
        n = job // ho
        r = job % ho
        for j in range(wo):
            dst = out[n, r, j]
            for ch in range(c):
                dst[ch] = -np.inf
            for i in range(3):
                yy = 2 * r - 1 + i
                if yy < 0 or yy >= h:
                    continue
                for jj in range(3):
                    xx = 2 * j - 1 + jj
                    if xx < 0 or xx >= w:
                        continue
                    src = x[n, yy, xx]
                    for ch in range(c):
                        v = src[ch]
                        # np.maximum(acc, v)'s rule: a NaN on either side wins, else the
                        # larger, and v on a tie (so +0.0 after -0.0 gives +0.0).
                        if v >= dst[ch] or v != v:
                            dst[ch] = v
