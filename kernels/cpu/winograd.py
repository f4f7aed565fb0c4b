"""Winograd F(2x2, 3x3) transforms for stride-1, dilation-1 3x3 convolutions (NHWC x HWIO).

F(2x2, 3x3) (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", 2016) computes
each 2x2 tile of output pixels from the 4x4 input tile ``d`` that covers it, per channel pair,
as ``Y = A^T [(G g G^T) . (B^T d B)] A``, with ``.`` the elementwise product and

    B^T = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]
    G   = [[1, 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]]
    A^T = [[1, 1, 1, 0], [0, 1, -1, -1]]

Summed over the input channels, the 16 elementwise products become 16 GEMMs
``M[k] = V[k] @ U[k]`` (``[T, Cin] @ [Cin, Cout]``, ``T`` tiles): 16 multiplies per 2x2 output
tile and channel pair instead of 36. The GEMMs are the caller's (the BLAS); this module has
the three transforms:

* :func:`kernel_transform`: ``U [16, Cin, Cout] = G g G^T`` per ``(ci, co)``, entry
  ``4 * a + b`` for row ``a`` (kernel height) and column ``b`` (kernel width); computed in
  float64 and rounded to float32 once (parallel; it runs once per call, ``O(Cin * Cout)``, a
  few milliseconds for 512 x 512 channels, so nothing is cached between calls);
* :func:`input_transform`: ``V [16, T, Cin] = B^T d B`` for the tiles of a range of tile rows,
  gathered straight from the unpadded input: a tap outside the image is ``+0.0`` (what explicit
  zero padding holds, and what the tiles past the last output row or column read), and no
  padded copy is built;
* :func:`output_transform`: ``A^T M A`` of ``M [16, T, Cout]`` into the NHWC output rows of the
  same tile rows, cropping the half tiles past an odd output height or width, then ``+ bias``
  (one float32 add, as the direct path's bias pass).

Tiles: the output ``[N, Ho, Wo]`` is covered by ``th = ceil(Ho / 2)`` by ``tw = ceil(Wo / 2)``
tiles per image. Global tile row ``g`` is tile row ``g % th`` of image ``g // th``; a chunk of
global tile rows ``g0:g1`` holds ``T = (g1 - g0) * tw`` tiles, tile ``(g, tc)`` at index
``(g - g0) * tw + tc``. Tile ``(r, tc)`` covers output rows ``2r, 2r + 1`` and columns
``2tc, 2tc + 1`` and reads input rows ``2r - pt .. 2r - pt + 3`` and columns
``2tc - pl .. 2tc - pl + 3``.

Every step is float32 in a fixed order (no ``fastmath``, so LLVM neither reassociates nor
contracts into FMAs): the row pass then the column pass, each entry one add or subtract for
``B`` and two for ``A`` (left to right). The rounding error this adds to the direct
convolution's is bounded in ``tests/test_winograd.py``.

Inputs are validated by the caller (``npfrcnn.ops.conv``): float32, C-contiguous, shapes
consistent, ``0 <= g0 < g1 <= N * th``. Nothing is allocated inside the parallel loops.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

#: ``B^T``, ``G``, ``A^T`` of F(2x2, 3x3), float64 (exact). The transforms below write their
#: entries out by hand; tests/test_winograd.py checks each transform against these matrices.
BT = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], dtype=np.float64)
G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], dtype=np.float64)
AT = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], dtype=np.float64)


@njit(parallel=True, cache=True)
def kernel_transform(g, u):  # pragma: no cover - compiled
    """``u [16, Cin, Cout] = G g G^T`` per ``(ci, co)`` from an HWIO ``g [3, 3, Cin, Cout]``.

    ``u[4a + b, ci, co] = f32(sum_j (sum_i G[a, i] g[i, j]) G[b, j])``: both passes in float64
    (the row pass first, each sum left to right; every product by 0, +-0.5 or 1 is exact), the
    result rounded to float32 once. Parallel over ``ci``; the inner loop runs along ``co``.
    """
    cin, cout = g.shape[2], g.shape[3]
    h = 0.5
    for ci in prange(cin):
        for co in range(cout):
            g00 = np.float64(g[0, 0, ci, co])
            g01 = np.float64(g[0, 1, ci, co])
            g02 = np.float64(g[0, 2, ci, co])
            g10 = np.float64(g[1, 0, ci, co])
            g11 = np.float64(g[1, 1, ci, co])
            g12 = np.float64(g[1, 2, ci, co])
            g20 = np.float64(g[2, 0, ci, co])
            g21 = np.float64(g[2, 1, ci, co])
            g22 = np.float64(g[2, 2, ci, co])
            # the row pass, G g: rows a = 0..3, columns j = 0..2
            p0, p1, p2 = g00, g01, g02
            q0 = (h * g00 + h * g10) + h * g20
            q1 = (h * g01 + h * g11) + h * g21
            q2 = (h * g02 + h * g12) + h * g22
            r0 = (h * g00 - h * g10) + h * g20
            r1 = (h * g01 - h * g11) + h * g21
            r2 = (h * g02 - h * g12) + h * g22
            s0, s1, s2 = g20, g21, g22
            # the column pass, (G g) G^T: columns b = 0..3
            u[0, ci, co] = np.float32(p0)
            u[1, ci, co] = np.float32((h * p0 + h * p1) + h * p2)
            u[2, ci, co] = np.float32((h * p0 - h * p1) + h * p2)
            u[3, ci, co] = np.float32(p2)
            u[4, ci, co] = np.float32(q0)
            u[5, ci, co] = np.float32((h * q0 + h * q1) + h * q2)
            u[6, ci, co] = np.float32((h * q0 - h * q1) + h * q2)
            u[7, ci, co] = np.float32(q2)
            u[8, ci, co] = np.float32(r0)
            u[9, ci, co] = np.float32((h * r0 + h * r1) + h * r2)
            u[10, ci, co] = np.float32((h * r0 - h * r1) + h * r2)
            u[11, ci, co] = np.float32(r2)
            u[12, ci, co] = np.float32(s0)
            u[13, ci, co] = np.float32((h * s0 + h * s1) + h * s2)
            u[14, ci, co] = np.float32((h * s0 - h * s1) + h * s2)
            u[15, ci, co] = np.float32(s2)


#: Row ``a`` of ``B^T`` has two non-zeros: ``(B^T d)[a] = d[I0[a]] + S[a] * d[I1[a]]``.
_I0 = np.array([0, 1, 2, 1], dtype=np.int64)
_I1 = np.array([2, 2, 1, 3], dtype=np.int64)
_S = np.array([-1.0, 1.0, -1.0, -1.0], dtype=np.float32)


@njit(parallel=True, cache=True)
def input_transform(x, g0, g1, th, tw, pt, pl, v):  # pragma: no cover - compiled
    """``v[:, t] = B^T d B`` for the tiles ``t`` of global tile rows ``g0:g1`` (module doc).

    ``x [N, H, W, C]``; ``v [16, >= (g1 - g0) * tw, C]``. Entry ``4a + b`` is the row pass
    then the column pass, ``(d[i0, j0] + sa d[i1, j0]) + sb (d[i0, j1] + sa d[i1, j1])`` with
    ``(i0, i1, sa)`` row ``a`` of ``B^T`` and ``(j0, j1, sb)`` row ``b`` (``s * d`` with
    ``s = +-1`` is exact, and ``p + (-q)`` is ``p - q``). A tap outside the image reads a
    clamped in-image pixel and replaces it by ``+0.0`` (a select, so an ``inf`` or NaN in the
    image never leaks into the padding).

    One entry at a time, over all channels: four loads and one store stream per inner loop,
    which LLVM vectorizes (sixteen store streams of unknown stride it does not).
    """
    h, w, c = x.shape[1], x.shape[2], x.shape[3]
    zero = np.float32(0.0)
    for t in prange((g1 - g0) * tw):
        g = g0 + t // tw
        img = g // th
        y0 = 2 * (g % th) - pt
        x0 = 2 * (t % tw) - pl
        for k in range(16):
            a = k // 4
            b = k % 4
            ra, rb = y0 + _I0[a], y0 + _I1[a]  # input rows of (B^T d)[a]
            ca, cb = x0 + _I0[b], x0 + _I1[b]  # input columns of column b
            sa, sb = _S[a], _S[b]
            in_ra, in_rb = 0 <= ra < h, 0 <= rb < h
            in_ca, in_cb = 0 <= ca < w, 0 <= cb < w
            m00, m01 = in_ra and in_ca, in_ra and in_cb
            m10, m11 = in_rb and in_ca, in_rb and in_cb
            ra, rb = min(max(ra, 0), h - 1), min(max(rb, 0), h - 1)
            ca, cb = min(max(ca, 0), w - 1), min(max(cb, 0), w - 1)
            dst = v[k, t]
            for ch in range(c):
                d00 = x[img, ra, ca, ch] if m00 else zero
                d01 = x[img, ra, cb, ch] if m01 else zero
                d10 = x[img, rb, ca, ch] if m10 else zero
                d11 = x[img, rb, cb, ch] if m11 else zero
                dst[ch] = (d00 + sa * d10) + sb * (d01 + sa * d11)


@njit(parallel=True, cache=True)
def output_transform(m, g0, g1, th, tw, bias, has_bias, out):  # pragma: no cover - compiled
    """``out`` rows of global tile rows ``g0:g1`` from ``m [16, >= (g1 - g0) * tw, Cout]``.

    ``Y = A^T M A`` per tile and channel (rows first; ``(m0 + m1) + m2`` and
    ``(m1 - m2) - m3``), then ``Y + bias`` when ``has_bias``; the pixels past ``Ho - 1`` or
    ``Wo - 1`` of the last tile row or column are not written. ``out [N, Ho, Wo, Cout]``.
    """
    ho, wo, c = out.shape[1], out.shape[2], out.shape[3]
    for t in prange((g1 - g0) * tw):
        g = g0 + t // tw
        img = g // th
        y0 = 2 * (g % th)
        x0 = 2 * (t % tw)
        full_h = y0 + 1 < ho
        full_w = x0 + 1 < wo
        # The row and column past an odd Ho or Wo: computed, then written over the kept pixel
        # (written first) so no out-of-range write happens; only kept values survive.
        y1 = y0 + 1 if full_h else y0
        x1 = x0 + 1 if full_w else x0
        o00, o01, o10, o11 = out[img, y0, x0], out[img, y0, x1], out[img, y1, x0], out[img, y1, x1]
        for ch in range(c):
            s00 = (m[0, t, ch] + m[4, t, ch]) + m[8, t, ch]
            s01 = (m[1, t, ch] + m[5, t, ch]) + m[9, t, ch]
            s02 = (m[2, t, ch] + m[6, t, ch]) + m[10, t, ch]
            s03 = (m[3, t, ch] + m[7, t, ch]) + m[11, t, ch]
            s10 = (m[4, t, ch] - m[8, t, ch]) - m[12, t, ch]
            s11 = (m[5, t, ch] - m[9, t, ch]) - m[13, t, ch]
            s12 = (m[6, t, ch] - m[10, t, ch]) - m[14, t, ch]
            s13 = (m[7, t, ch] - m[11, t, ch]) - m[15, t, ch]
            y00 = (s00 + s01) + s02
            y01 = (s01 - s02) - s03
            y10 = (s10 + s11) + s12
            y11 = (s11 - s12) - s13
            if has_bias:
                b = bias[ch]
                y00 = y00 + b
                y01 = y01 + b
                y10 = y10 + b
                y11 = y11 + b
            # Dropped pixels are stored first and overwritten by the kept ones at the same
            # address (the clamped index points at a kept pixel).
            o11[ch] = y11
            o10[ch] = y10
            o01[ch] = y01
            o00[ch] = y00
