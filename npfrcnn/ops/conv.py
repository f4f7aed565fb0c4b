"""2-D convolution, NHWC x HWIO, as ``tf.nn.conv2d`` (+ ``tf.nn.bias_add``).

The hot path of the whole network. It is an im2col + one GEMM per chunk of output rows, with
the GEMM done by the BLAS numpy is linked against:

* a 1x1 convolution is a plain matmul of the (subsampled) input, ``[N*H*W, Cin] @ [Cin, Cout]``;
* any other kernel gathers its patches ``[rows*Wo, kh*kw*Cin]`` (the HWIO kernel reshaped to
  ``[kh*kw*Cin, Cout]`` has the same ``(i, j, c)`` order) and multiplies. Output rows are
  streamed in chunks so the patch buffer stays below :data:`IM2COL_BUDGET_BYTES`: a ResNet conv1
  on a 1000x600 image never builds a 176 MB buffer.

Numerics: every output is a float32 dot product of length ``kh*kw*Cin`` accumulated by the BLAS
``sgemm``; TensorFlow's CPU kernel computes the same products but sums them in another order, so
results agree to summation-order rounding (bounded by ``2 * K * eps32 * sum(|x| |w|)``), and are
bitwise equal whenever every partial sum is exact (e.g. small integers). The bias is added after
the convolution, in float32, as ``tf.nn.bias_add`` does.

Winograd (``"cpu"`` only, on by default): a 3x3 convolution with stride 1, dilation 1 and at
least :data:`WINOGRAD_MIN_CHANNELS` input and output channels (any batch, size and padding) is
computed as Winograd F(2x2, 3x3) (``npfrcnn.kernels.cpu.winograd``): every 2x2 output tile from
its 4x4 input tile as ``A^T [(G g G^T) . (B^T d B)] A``, i.e. 16 GEMMs ``[T, Cin] @ [Cin,
Cout]`` on transformed tiles, 16 multiplies per tile and channel pair instead of 36 (2.25x
fewer). The tiles are streamed in chunks of tile rows whose transformed input ``V`` and products
``M`` stay within :data:`WINOGRAD_BUDGET_BYTES` (cache-sized: measured fastest). These are the
ResNet bottlenecks' stride-1 3x3 convs, the FPN output convs and the RPN conv: on 2 cores they
run at the sgemm ceiling directly, so only fewer multiplies make them faster (timings in
benchmarks/RESULTS.md). Its results are **not** the direct path's bits: each output carries a
different float32 rounding error, within ``(Cin + 7) eps S`` with ``S`` the Winograd magnitude
(about 7x ``sum |x| |w|``), against the direct path's ``9 Cin eps sum |x| |w|``; the derivation
and the measured errors (the same order as the direct path's) are in ``tests/test_winograd.py``.
An ``inf`` or NaN in the input spreads to the whole 2x2 tiles that read it. Set
``NPFRCNN_CONV=direct`` in the environment (read at import) or ``WINOGRAD = False`` here for the
direct path everywhere, e.g. to have ``"cpu"`` give ``"numpy"``'s bits.

Backends: ``"numpy"`` is the reference, im2col + GEMM for every convolution. ``"cpu"`` runs the
same GEMMs on the same patch matrices for every convolution that does not take the Winograd
path (all of them with ``NPFRCNN_CONV=direct``), so there they give the same bits. ``"numpy"``
builds the patches with NumPy copies (a zero-padded copy of the input,
then a strided view copied into the buffer); ``"cpu"`` gathers them with a parallel Numba kernel
straight from the unpadded input, gathers a strided 1x1 convolution's input in parallel, and
adds the bias in parallel (``npfrcnn.kernels.cpu.conv``). A Numba GEMM would be both slower than
the BLAS and no closer to TF's summation order. ``"cuda"`` is not provided by this front door.

"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from numpy.lib.stride_tricks import as_strided

from npfrcnn._validate import as_float_array, check_backend, check_positive_int
from npfrcnn.ops._backend import kernel_module

__all__ = [
    "conv2d", "conv_output_size", "same_padding", "IM2COL_BUDGET_BYTES", "WINOGRAD",
    "WINOGRAD_BUDGET_BYTES", "WINOGRAD_MIN_CHANNELS", "uses_winograd",
]

#: Largest im2col (patch) buffer one :func:`conv2d` call allocates, in bytes.
IM2COL_BUDGET_BYTES = 64 * 2**20


def _winograd_from_env() -> bool:
    """``NPFRCNN_CONV``: unset, ``""``, ``"auto"`` or ``"winograd"`` -> on; ``"direct"`` -> off."""
    value = os.environ.get("NPFRCNN_CONV", "").strip().lower()
    if value in ("", "auto", "winograd"):
        return True
    if value == "direct":
        return False
    raise ValueError(
        f"NPFRCNN_CONV={os.environ['NPFRCNN_CONV']!r} is not a convolution mode; set "
        "NPFRCNN_CONV=direct (im2col + GEMM everywhere: the cpu backend bitwise equal to the "
        "numpy one) or unset it (the default: Winograd F(2x2, 3x3) for 3x3 stride-1 "
        "convolutions on the cpu backend)"
    )


#: Whether the ``cpu`` backend runs 3x3 stride-1 convolutions as Winograd F(2x2, 3x3) (module
#: docstring). On by default; read from ``NPFRCNN_CONV`` at import (``direct`` turns it off);
#: assign ``npfrcnn.ops.conv.WINOGRAD = False`` to turn it off in a running process.
WINOGRAD = _winograd_from_env()

#: The fewest input and output channels for which Winograd is used (below, the transforms
#: cost more than the multiplies they save; measured in benchmarks/RESULTS.md).
WINOGRAD_MIN_CHANNELS = 16

#: Largest pair of Winograd buffers (transformed input tiles ``V`` + products ``M``) one
#: :func:`conv2d` call allocates, in bytes. Larger chunks mean taller GEMMs, which the BLAS runs
#: faster: measured on 2 cores (AMD EPYC), a 3x3 512 -> 512 conv over 256 RoIs of 7x7 took
#: 550 ms at 4 MiB (the direct path: 515 to 610 ms), 390 ms at 32 MiB and 340 ms at 128 MiB;
#: the 200x336 FPN level 430 ms at 32 MiB against 780 to 860 ms direct. 32 MiB: half the
#: direct path's :data:`IM2COL_BUDGET_BYTES`, so the peak memory does not grow.
WINOGRAD_BUDGET_BYTES = 32 * 2**20

Padding = str | Sequence[Sequence[int]]


def _pair(name: str, value: Any) -> tuple[int, int]:
    """A positive int or a pair ``(h, w)`` of positive ints (strides, dilations, ksize)."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        v = _positive(name, value)
        return v, v
    try:
        items = list(value)
    except TypeError:
        raise ValueError(
            f"{name} must be a positive int or a pair (height, width), got {value!r}; "
            f"pass e.g. {name}=2 or {name}=(2, 2)"
        ) from None
    if len(items) != 2:
        raise ValueError(
            f"{name} must be a positive int or a pair (height, width), got {value!r}; "
            f"pass e.g. {name}=(2, 2)"
        )
    return _positive(name, items[0]), _positive(name, items[1])


def _positive(name: str, value: Any) -> int:
    try:
        return check_positive_int(name, value)
    except ValueError as err:
        raise ValueError(f"{err}; pass a positive integer such as 1 or 2") from None


def same_padding(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """TensorFlow's ``"SAME"`` padding ``(before, after)`` along one axis.

    ``total = max((ceil(size / stride) - 1) * stride + k_eff - size, 0)`` with
    ``k_eff = (kernel - 1) * dilation + 1``; ``before = total // 2`` and ``after`` takes the
    rest, so odd totals pad more after, as TF does.
    """
    k_eff = (kernel - 1) * dilation + 1
    out = -(-size // stride)
    total = max((out - 1) * stride + k_eff - size, 0)
    return total // 2, total - total // 2


def _explicit_padding(padding: Any) -> tuple[tuple[int, int], tuple[int, int]]:
    fix = "pass 'SAME', 'VALID' or ((top, bottom), (left, right)) of non-negative ints"
    try:
        rows = [list(p) for p in padding]
    except TypeError:
        raise ValueError(
            f"padding must be a string or a pair of pairs, got {padding!r}; {fix}"
        ) from None
    if len(rows) != 2 or any(len(r) != 2 for r in rows):
        raise ValueError(
            f"padding must be ((top, bottom), (left, right)), got {padding!r}; {fix}"
        )
    out = []
    for r in rows:
        for v in r:
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
                raise ValueError(
                    f"padding values must be non-negative ints, got {padding!r}; {fix}"
                )
        out.append((int(r[0]), int(r[1])))
    return out[0], out[1]


def resolve_padding(
    padding: Padding,
    in_hw: tuple[int, int],
    ksize: tuple[int, int],
    strides: tuple[int, int],
    dilations: tuple[int, int] = (1, 1),
) -> tuple[tuple[int, int], tuple[int, int]]:
    """``((top, bottom), (left, right))`` for ``"SAME"``, ``"VALID"`` or explicit padding."""
    if isinstance(padding, str):
        mode = padding.upper()
        if mode == "VALID":
            return (0, 0), (0, 0)
        if mode == "SAME":
            return (
                same_padding(in_hw[0], ksize[0], strides[0], dilations[0]),
                same_padding(in_hw[1], ksize[1], strides[1], dilations[1]),
            )
        raise ValueError(
            f"padding must be 'SAME', 'VALID' or ((top, bottom), (left, right)), got {padding!r}"
        )
    return _explicit_padding(padding)


def conv_output_size(size: int, kernel: int, stride: int, pad: int, dilation: int = 1) -> int:
    """Output length along one axis, ``(size + pad - k_eff) // stride + 1``; ``pad``: both sides."""
    k_eff = (kernel - 1) * dilation + 1
    return (size + pad - k_eff) // stride + 1


def conv2d(
    x: npt.ArrayLike,
    kernel: npt.ArrayLike,
    bias: npt.ArrayLike | None = None,
    strides: int | Sequence[int] = 1,
    padding: Padding = "VALID",
    dilations: int | Sequence[int] = 1,
    backend: str = "cpu",
) -> npt.NDArray[np.float32]:
    """2-D cross-correlation, as ``tf.nn.conv2d`` followed by ``tf.nn.bias_add``.

    Args:
        x: ``[N, H, W, Cin]`` float32 (other real dtypes are converted).
        kernel: ``[kh, kw, Cin, Cout]`` (HWIO, TF's layout).
        bias: ``[Cout]`` or ``None``; added after the convolution.
        strides: an int or ``(sh, sw)``, positive.
        padding: ``"SAME"`` (TF's rule: ``total = max((ceil(H/s) - 1) * s + k_eff - H, 0)``,
            ``total // 2`` before, the rest after), ``"VALID"``, or explicit zero padding
            ``((top, bottom), (left, right))``.
        dilations: an int or ``(dh, dw)``, positive; ``k_eff = (k - 1) * d + 1``.
        backend: ``"numpy"`` or ``"cpu"``; both run the BLAS GEMMs described in the module
            docstring, ``"cpu"`` with its copies done on every core and 3x3 stride-1
            convolutions as Winograd F(2x2, 3x3) (other bits, within the bound in the module
            docstring) unless ``NPFRCNN_CONV=direct``.

    Returns:
        ``[N, Ho, Wo, Cout]`` float32 with ``Ho = (H + pad_h - k_eff_h) // sh + 1``
        (``ceil(H / sh)`` for ``"SAME"``). ``N = 0`` gives an empty array of that shape.

    Raises:
        ValueError: wrong rank, ``Cin`` mismatch, bad bias shape, non-positive stride or
            dilation, bad padding, or an input smaller than the (dilated) kernel.
    """
    check_backend(backend, ("numpy", "cpu"))
    xa = as_float_array("x", x, ndim=4)
    ka = as_float_array("kernel", kernel, ndim=4)
    n, h, w, cin = xa.shape
    kh, kw, kcin, cout = ka.shape
    if kcin != cin:
        raise ValueError(
            f"kernel has {kcin} input channels (axis 2 of HWIO shape {ka.shape}) but x has {cin} "
            f"(axis 3 of NHWC shape {xa.shape}); pass an HWIO kernel [kh, kw, {cin}, Cout]"
        )
    if min(kh, kw, cout) == 0:
        raise ValueError(f"kernel must have non-zero kh, kw and Cout, got shape {ka.shape}")
    ba = None
    if bias is not None:
        ba = as_float_array("bias", bias, ndim=1)
        if ba.shape[0] != cout:
            raise ValueError(
                f"bias has {ba.shape[0]} values but the kernel has {cout} output channels; "
                f"pass a bias of shape [{cout}]"
            )
    sh, sw = _pair("strides", strides)
    dh, dw = _pair("dilations", dilations)
    (pt, pb), (pl, pr) = resolve_padding(padding, (h, w), (kh, kw), (sh, sw), (dh, dw))
    ho = conv_output_size(h, kh, sh, pt + pb, dh)
    wo = conv_output_size(w, kw, sw, pl + pr, dw)
    if ho <= 0 or wo <= 0:
        raise ValueError(
            f"x of spatial size {h}x{w} (padded {h + pt + pb}x{w + pl + pr}) is smaller than the "
            f"dilated kernel {(kh - 1) * dh + 1}x{(kw - 1) * dw + 1}; use a larger input or "
            "padding='SAME'"
        )

    out = np.empty((n, ho, wo, cout), dtype=np.float32)
    if n > 0 and backend == "cpu" and uses_winograd(ka.shape, (sh, sw), (dh, dw)):
        _conv_winograd(xa, ka, ba, out, (pt, pl))
    elif n > 0:
        pads = ((pt, pb), (pl, pr))
        _conv_blas(xa, ka, out, (sh, sw), (dh, dw), pads, backend)
        if ba is not None and backend == "cpu":  # + bias, in parallel: the same float32 adds
            cpu = kernel_module("cpu", "conv")
            empty = np.empty((0, 0), dtype=np.float32)
            cpu.epilogue(out.reshape(-1, cout), cpu.EPI_BIAS, ba, ba, empty, False, False)
        elif ba is not None:
            out += ba
    return out


def uses_winograd(
    kernel_shape: tuple[int, ...], strides: tuple[int, int], dilations: tuple[int, int]
) -> bool:
    """Whether ``backend="cpu"`` computes this convolution as Winograd F(2x2, 3x3).

    When :data:`WINOGRAD` is on, for a ``3x3`` kernel, stride 1, dilation 1 and at least
    :data:`WINOGRAD_MIN_CHANNELS` input and output channels (any batch, size and padding).
    """
    kh, kw, cin, cout = kernel_shape
    return (
        WINOGRAD
        and kh == 3 and kw == 3
        and tuple(strides) == (1, 1) and tuple(dilations) == (1, 1)
        and min(cin, cout) >= WINOGRAD_MIN_CHANNELS
    )


def _conv_winograd(
    x: npt.NDArray[np.float32],
    kernel: npt.NDArray[np.float32],
    bias: npt.NDArray[np.float32] | None,
    out: npt.NDArray[np.float32],
    pads: tuple[int, int],
) -> None:
    """Fill ``out`` [N, Ho, Wo, Cout] by Winograd F(2x2, 3x3), bias included; inputs validated.

    The output is cut into 2x2 tiles, ``ceil(Ho/2) * ceil(Wo/2)`` per image
    (``npfrcnn.kernels.cpu.winograd``), and streamed in chunks of tile rows (across images
    when they are small) so that ``V [16, T, Cin]`` and ``M [16, T, Cout]`` together stay
    within :data:`WINOGRAD_BUDGET_BYTES`; each chunk is an input transform, 16 BLAS GEMMs
    ``V[k] @ U[k]`` and an output transform that crops the last half tiles and adds the bias.
    """
    wk = kernel_module("cpu", "winograd")
    n, ho, wo, cout = out.shape
    cin = x.shape[3]
    pt, pl = pads
    th, tw = -(-ho // 2), -(-wo // 2)
    u = np.empty((16, cin, cout), dtype=np.float32)
    wk.kernel_transform(kernel, u)  # U = G g G^T, [16, Cin, Cout]
    row_bytes = 16 * tw * (cin + cout) * 4
    rows = min(max(1, WINOGRAD_BUDGET_BYTES // row_bytes), n * th)
    vbuf = np.empty(16 * rows * tw * cin, dtype=np.float32)
    mbuf = np.empty(16 * rows * tw * cout, dtype=np.float32)
    has_bias = bias is not None
    b = bias if bias is not None else np.empty(0, dtype=np.float32)
    for g0 in range(0, n * th, rows):
        g1 = min(g0 + rows, n * th)
        t = (g1 - g0) * tw
        v = vbuf[: 16 * t * cin].reshape(16, t, cin)
        m = mbuf[: 16 * t * cout].reshape(16, t, cout)
        wk.input_transform(x, g0, g1, th, tw, pt, pl, v)
        np.matmul(v, u, out=m)  # 16 GEMMs [T, Cin] @ [Cin, Cout]
        wk.output_transform(m, g0, g1, th, tw, b, has_bias, out)


def _conv_blas(
    x: npt.NDArray[np.float32],
    kernel: npt.NDArray[np.float32],
    out: npt.NDArray[np.float32],
    strides: tuple[int, int],
    dilations: tuple[int, int],
    pads: tuple[tuple[int, int], tuple[int, int]],
    backend: str = "numpy",
) -> None:
    """Fill ``out`` [N, Ho, Wo, Cout] with the convolution; inputs already validated.

    Both backends run the same GEMMs on the same patch matrices, in the same chunks (the BLAS
    may sum differently for a different number of GEMM rows), so they give the same bits. They
    differ in how a patch matrix is built: ``"numpy"`` copies a strided view of a zero-padded
    copy of ``x``; ``"cpu"`` gathers it in parallel straight from ``x``
    (``npfrcnn.kernels.cpu.conv``), and multiplies an unpadded stride-1 1x1 input in place.
    """
    n, ho, wo, cout = out.shape
    kh, kw, cin, _ = kernel.shape
    sh, sw = strides
    dh, dw = dilations
    (pt, pb), (pl, pr) = pads
    padded = bool(pt or pb or pl or pr)
    k = kh * kw * cin
    kmat = kernel.reshape(k, cout)  # [kh*kw*Cin, Cout], (i, j, c) order
    cpu = kernel_module("cpu", "conv") if backend == "cpu" else None
    xp = x
    if cpu is None and padded:
        xp = np.zeros((n, x.shape[1] + pt + pb, x.shape[2] + pl + pr, cin), dtype=np.float32)
        xp[:, pt : pt + x.shape[1], pl : pl + x.shape[2], :] = x

    if kh == 1 and kw == 1:
        # One GEMM over every output pixel: [N*Ho*Wo, Cin] @ [Cin, Cout].
        if cpu is None:
            src = xp[:, : (ho - 1) * sh + 1 : sh, : (wo - 1) * sw + 1 : sw, :]  # a view
        elif not padded and sh == 1 and sw == 1:
            src = x
        else:
            src = np.empty((n, ho, wo, cin), dtype=np.float32)
            if padded:
                cpu.im2col(x, 0, n, 0, ho, wo, 1, 1, sh, sw, dh, dw, pt, pl,
                           src.reshape(n * ho * wo, cin))
            else:
                cpu.gather_strided(x, sh, sw, src)
        np.matmul(src.reshape(n * ho * wo, cin), kmat, out=out.reshape(n * ho * wo, cout))
        return

    if cpu is not None:
        def fill(cols: npt.NDArray[np.float32], i0: int, i1: int, r0: int, r1: int) -> None:
            cpu.im2col(x, i0, i1, r0, r1, wo, kh, kw, sh, sw, dh, dw, pt, pl, cols)
    else:
        s0, s1, s2, s3 = xp.strides
        if dw == 1:
            # (kw, Cin) of one patch row are contiguous in xp: copy them as one run (faster
            # for the small Cin of conv1).
            inner: tuple[int, ...] = (kh, kw * cin)
            inner_strides: tuple[int, ...] = (s1 * dh, s3)
        else:
            inner, inner_strides = (kh, kw, cin), (s1 * dh, s2 * dw, s3)
        patches = as_strided(
            xp,
            shape=(n, ho, wo, *inner),
            strides=(s0, s1 * sh, s2 * sw, *inner_strides),
            writeable=False,
        )  # [N,Ho,Wo,kh,kw*Cin] or [N,Ho,Wo,kh,kw,Cin], a view

        def fill(cols: npt.NDArray[np.float32], i0: int, i1: int, r0: int, r1: int) -> None:
            np.copyto(cols.reshape(i1 - i0, r1 - r0, wo, *inner), patches[i0:i1, r0:r1])

    row_bytes = wo * k * 4
    rows = max(1, IM2COL_BUDGET_BYTES // row_bytes)
    if rows >= ho:
        # Whole images per chunk.
        imgs = max(1, rows // ho)
        buf = np.empty((min(imgs, n) * ho * wo, k), dtype=np.float32)
        for i0 in range(0, n, imgs):
            i1 = min(i0 + imgs, n)
            m = (i1 - i0) * ho * wo
            cols = buf[:m]
            fill(cols, i0, i1, 0, ho)
            np.matmul(cols, kmat, out=out[i0:i1].reshape(m, cout))
        return
    # Chunks of output rows within one image.
    buf = np.empty((rows * wo, k), dtype=np.float32)
    for i in range(n):
        for r0 in range(0, ho, rows):
            r1 = min(r0 + rows, ho)
            m = (r1 - r0) * wo
            cols = buf[:m]
            fill(cols, i, i + 1, r0, r1)
            np.matmul(cols, kmat, out=out[i, r0:r1].reshape(m, cout))
