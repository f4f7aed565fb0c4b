"""Elementwise and small dense layers, with TensorFlow's arithmetic order.

All take and return float32 (other real dtypes are converted), NHWC where spatial. The TF
layers are pure NumPy: each is a handful of vectorised ufunc calls. The two functions used
between the convolutions of the torchvision backbone, :func:`affine_epilogue_` and
:func:`max_pool_3x3_s2_p1`, also have a ``"cpu"`` backend: one parallel Numba pass computing
the same bits as their NumPy passes (``npfrcnn.kernels.cpu.conv``).

Parity with TF (CPU, oneDNN off), measured and asserted in ``tests/test_layers.py``:

* ``batch_norm``: the same operations in the same order as ``tf.nn.batch_normalization``; it is
  bitwise equal to TF whenever TF's ``rsqrt`` is correctly rounded. TF's ``rsqrt`` is Eigen's
  fast-math packet version (a hardware ``rsqrt`` estimate plus one Newton step), which is
  within a few ulp of ``1 / sqrt`` and depends on the CPU, so it cannot be reproduced portably;
  we use ``1 / sqrt`` in float32 (as Detectron2's FrozenBatchNorm does on CPU).
* ``max_pool2d``, ``relu``, ``relu6``: exact (max and clamp have no rounding).
* ``softmax``, ``mean``, ``dense``: equal up to the ulp-level differences of ``exp`` and of the
  summation order.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from npfrcnn._validate import as_float_array, check_backend
from npfrcnn.ops._backend import kernel_module
from npfrcnn.ops.conv import _pair, conv_output_size, resolve_padding

__all__ = [
    "batch_norm", "max_pool2d", "relu", "relu6", "dense", "softmax", "mean", "affine_epilogue_",
    "max_pool_3x3_s2_p1",
]

F32 = npt.NDArray[np.float32]


def _f32(name: str, x: npt.ArrayLike) -> F32:
    """``x`` as C-contiguous float32 of its own shape (a scalar stays 0-d)."""
    return as_float_array(name, x).reshape(np.shape(x))


def _channel_param(name: str, value: npt.ArrayLike, channels: int) -> F32:
    arr = _f32(name, value)
    if arr.ndim > 1 or (arr.ndim == 1 and arr.shape[0] != channels):
        raise ValueError(
            f"{name} must be a scalar or have shape [{channels}] (one value per channel of x), "
            f"got shape {arr.shape}"
        )
    return arr


def batch_norm(
    x: npt.ArrayLike,
    mean: npt.ArrayLike,
    variance: npt.ArrayLike,
    offset: npt.ArrayLike | None,
    scale: npt.ArrayLike | None,
    variance_epsilon: float = 1e-5,
) -> F32:
    """Inference batch normalization, as ``tf.nn.batch_normalization``.

    Computed in float32, in TF's order::

        inv = 1 / sqrt(variance + variance_epsilon);  inv = inv * scale
        y = x * inv + (offset - mean * inv)

    Args:
        x: ``[..., C]`` (NHWC or ``[N, C]``).
        mean, variance: ``[C]`` (or scalars): the moving statistics.
        offset: ``[C]`` beta, or ``None`` (then ``y = x * inv + (-mean * inv)``).
        scale: ``[C]`` gamma, or ``None`` (then ``inv`` is not scaled).
        variance_epsilon: added to the variance; must be ``>= 0`` and finite.

    Returns:
        float32 of ``x``'s shape. An empty ``x`` gives an empty result.
    """
    xa = _f32("x", x)
    if xa.ndim == 0:
        raise ValueError("x must have at least one axis (channels last); got a scalar")
    c = xa.shape[-1]
    m = _channel_param("mean", mean, c)
    v = _channel_param("variance", variance, c)
    eps = float(variance_epsilon)
    if not np.isfinite(eps) or eps < 0:
        raise ValueError(
            f"variance_epsilon must be a finite non-negative number, got {variance_epsilon!r}; "
            "the workshop and slim use 1e-5"
        )
    inv, shift = _batch_norm_affine(
        m, v, None if offset is None else _channel_param("offset", offset, c),
        None if scale is None else _channel_param("scale", scale, c), eps,
    )
    return np.asarray(xa * inv + shift, dtype=np.float32)


def _batch_norm_affine(
    mean: F32, variance: F32, offset: F32 | None, scale: F32 | None, eps: float
) -> tuple[F32, F32]:
    """``(inv, shift)`` of :func:`batch_norm` (TF's order), so ``y = x * inv + shift``."""
    inv = np.float32(1.0) / np.sqrt(variance + np.float32(eps))
    if scale is not None:
        inv = inv * scale
    shift = offset - mean * inv if offset is not None else -(mean * inv)
    return np.asarray(inv, np.float32), np.asarray(shift, np.float32)


def batch_norm_params(
    mean: npt.ArrayLike,
    variance: npt.ArrayLike,
    offset: npt.ArrayLike,
    scale: npt.ArrayLike,
    variance_epsilon: float,
) -> tuple[F32, F32]:
    """``(a, b)`` float32 ``[C]`` with :func:`batch_norm` ``= x * a + b`` (two roundings), for
    :func:`affine_epilogue_` ``kind="frozen_bn"``: the same bits as :func:`batch_norm`."""
    m = _f32("mean", mean).reshape(-1)
    c = m.shape[0]
    return _batch_norm_affine(
        m, _channel_param("variance", variance, c), _channel_param("offset", offset, c),
        _channel_param("scale", scale, c), float(variance_epsilon),
    )


def max_pool2d(
    x: npt.ArrayLike,
    ksize: int | Sequence[int],
    strides: int | Sequence[int],
    padding: str = "VALID",
) -> F32:
    """Max pooling over H and W, as ``tf.nn.max_pool2d``.

    Args:
        x: ``[N, H, W, C]``.
        ksize: an int or ``(kh, kw)``, positive.
        strides: an int or ``(sh, sw)``, positive.
        padding: ``"VALID"``, or ``"SAME"``: TF's rule (``total = max((ceil(H/s) - 1) * s + k - H,
            0)``, ``total // 2`` before and the rest after), the padding being ``-inf`` so it
            never wins.

    Returns:
        ``[N, Ho, Wo, C]`` float32; ``Ho = (H - kh) // sh + 1`` (VALID) or ``ceil(H / sh)``
        (SAME). NaN propagates (``np.maximum``). ``N = 0`` gives an empty array of that shape.
    """
    xa = as_float_array("x", x, ndim=4)
    kh, kw = _pair("ksize", ksize)
    sh, sw = _pair("strides", strides)
    if not isinstance(padding, str) or padding.upper() not in ("SAME", "VALID"):
        raise ValueError(f"padding must be 'SAME' or 'VALID', got {padding!r}")
    n, h, w, c = xa.shape
    (pt, pb), (pl, pr) = resolve_padding(padding, (h, w), (kh, kw), (sh, sw))
    ho = conv_output_size(h, kh, sh, pt + pb)
    wo = conv_output_size(w, kw, sw, pl + pr)
    if ho <= 0 or wo <= 0:
        raise ValueError(
            f"x of spatial size {h}x{w} is smaller than the {kh}x{kw} window; use a larger input "
            "or padding='SAME'"
        )
    if pt or pb or pl or pr:
        xp = np.full((n, h + pt + pb, w + pl + pr, c), -np.inf, dtype=np.float32)
        xp[:, pt : pt + h, pl : pl + w, :] = xa
    else:
        xp = xa
    out = np.empty((n, ho, wo, c), dtype=np.float32)
    first = True
    for i in range(kh):
        for j in range(kw):
            win = xp[:, i : i + (ho - 1) * sh + 1 : sh, j : j + (wo - 1) * sw + 1 : sw, :]
            if first:
                out[...] = win
                first = False
            else:
                np.maximum(out, win, out=out)
    return out


def relu(x: npt.ArrayLike) -> F32:
    """``max(x, 0)`` in float32, any shape (``tf.nn.relu``)."""
    xa = _f32("x", x)
    return np.maximum(xa, np.float32(0))


def relu6(x: npt.ArrayLike) -> F32:
    """``min(max(x, 0), 6)`` in float32, any shape (``tf.nn.relu6``)."""
    xa = _f32("x", x)
    return np.minimum(np.maximum(xa, np.float32(0)), np.float32(6))


def dense(x: npt.ArrayLike, kernel: npt.ArrayLike, bias: npt.ArrayLike | None = None) -> F32:
    """Fully connected layer ``x @ kernel + bias`` (``tf.layers.dense`` on a 2-D input).

    Args:
        x: ``[N, Cin]``.
        kernel: ``[Cin, Cout]`` (TF's (in, out) layout).
        bias: ``[Cout]`` or ``None``; added after the matmul, in float32.

    Returns:
        ``[N, Cout]`` float32 (BLAS ``sgemm``; equal to TF up to summation order).
    """
    xa = as_float_array("x", x, ndim=2)
    ka = as_float_array("kernel", kernel, ndim=2)
    if ka.shape[0] != xa.shape[1]:
        raise ValueError(
            f"kernel has {ka.shape[0]} input rows but x has {xa.shape[1]} features; pass a "
            f"kernel of shape [{xa.shape[1]}, Cout] (TF's (in, out) layout; transpose a "
            "PyTorch (out, in) weight)"
        )
    out = np.matmul(xa, ka)
    if bias is not None:
        ba = as_float_array("bias", bias, ndim=1)
        if ba.shape[0] != ka.shape[1]:
            raise ValueError(
                f"bias has {ba.shape[0]} values but the kernel has {ka.shape[1]} outputs; pass "
                f"a bias of shape [{ka.shape[1]}]"
            )
        out += ba
    return out


def _axis(name: str, axis: int, ndim: int) -> int:
    if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)):
        raise ValueError(f"{name} must be an int, got {axis!r}")
    if not -ndim <= axis < ndim:
        raise ValueError(f"{name}={axis} is out of range for an array of rank {ndim}")
    return int(axis) % ndim


def softmax(x: npt.ArrayLike, axis: int = -1) -> F32:
    """Softmax along ``axis``: ``e = exp(x - max(x)); e / sum(e)`` in float32 (``tf.nn.softmax``).

    Subtracting the maximum first keeps ``exp`` from overflowing; a row whose largest logit
    dominates gives exactly 1.0 there, as TF does. Any shape; empty input gives empty output.
    """
    xa = _f32("x", x)
    if xa.ndim == 0:
        raise ValueError("x must have at least one axis; got a scalar")
    ax = _axis("axis", axis, xa.ndim)
    if xa.size == 0:
        return xa.copy()
    e = np.exp(xa - np.max(xa, axis=ax, keepdims=True))
    e /= np.sum(e, axis=ax, keepdims=True)
    return e


def mean(x: npt.ArrayLike, axis: int | Sequence[int] = (1, 2)) -> F32:
    """Mean over ``axis`` (default the spatial axes of NHWC), as ``tf.reduce_mean``.

    Float32 sum divided by the count. ``[N, H, W, C]`` -> ``[N, C]`` with the default axes.
    Reducing over an empty axis is rejected (TF would return NaN); an empty batch gives an
    empty result.
    """
    xa = _f32("x", x)
    axes = (axis,) if isinstance(axis, (int, np.integer)) else tuple(axis)
    norm = tuple(sorted({_axis("axis", a, xa.ndim) for a in axes}))
    if len(norm) != len(axes):
        raise ValueError(f"axis must not repeat an axis, got {axis!r}")
    if any(xa.shape[a] == 0 for a in norm):
        raise ValueError(
            f"cannot average over an empty axis: x has shape {xa.shape} and axis={axis!r}"
        )
    return np.asarray(np.mean(xa, axis=norm, dtype=np.float32), dtype=np.float32)



def _bn_vectors(
    weight: npt.ArrayLike,
    bias: npt.ArrayLike,
    running_mean: npt.ArrayLike,
    running_var: npt.ArrayLike,
    channels: int | None = None,
) -> tuple[F32, F32, F32, F32]:
    """The four per-channel vectors of a torch norm layer, float32 ``[C]`` (checked against
    ``channels`` when given)."""
    named = (("weight", weight), ("bias", bias), ("running_mean", running_mean),
             ("running_var", running_var))
    if channels is None:
        w, b, rm, rv = (_f32(n, v).reshape(-1) for n, v in named)
    else:
        w, b, rm, rv = (_channel_param(n, v, channels) for n, v in named)
    return w, b, rm, rv


def frozen_batch_norm_params(
    weight: npt.ArrayLike,
    bias: npt.ArrayLike,
    running_mean: npt.ArrayLike,
    running_var: npt.ArrayLike,
    eps: float = 1e-5,
) -> tuple[F32, F32]:
    """``(scale, shift)`` of torchvision's ``FrozenBatchNorm2d`` (see :func:`frozen_batch_norm`)."""
    w, b, rm, rv = _bn_vectors(weight, bias, running_mean, running_var)
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = w * (np.float32(1.0) / np.sqrt(rv + np.float32(eps)))
        shift = b - rm * scale
    return scale.astype(np.float32), shift.astype(np.float32)


def torch_batch_norm_params(
    weight: npt.ArrayLike,
    bias: npt.ArrayLike,
    running_mean: npt.ArrayLike,
    running_var: npt.ArrayLike,
    eps: float = 1e-5,
) -> tuple[F32, F32]:
    """``(alpha, beta)`` of ``nn.BatchNorm2d`` in eval (see :func:`torch_batch_norm`).

    ``beta = fma(-running_mean, alpha, bias)`` with a single rounding (exact).
    """
    from npfrcnn.ops.torch_math import fma32

    w, b, rm, rv = _bn_vectors(weight, bias, running_mean, running_var)
    with np.errstate(divide="ignore", invalid="ignore"):
        alpha = (np.float32(1.0) / np.sqrt(rv + np.float32(eps))) * w
        beta = np.asarray(fma32(-rm, alpha, b), dtype=np.float32)
    return alpha.astype(np.float32), beta


def apply_fma_affine(x: F32, alpha: F32, beta: F32) -> F32:
    """``fma(x, alpha, beta)`` per element, channels last, rounded to float32.

    Computed in float64 (the product of two float32 values is exact there) and rounded to
    float32: equal to the fused result except when the float64 sum is inexact *and* lands
    exactly on a float32 rounding midpoint (a double rounding), about one element in 2**29,
    far below the convolutions' own summation-order error.
    """
    out = x.astype(np.float64)
    out *= alpha.astype(np.float64)
    out += beta.astype(np.float64)
    return out.astype(np.float32)


def frozen_batch_norm(
    x: npt.ArrayLike,
    weight: npt.ArrayLike,
    bias: npt.ArrayLike,
    running_mean: npt.ArrayLike,
    running_var: npt.ArrayLike,
    eps: float = 1e-5,
) -> F32:
    """torchvision's ``FrozenBatchNorm2d`` on channels-last input, in its order of operations.

    ``torchvision/ops/misc.py: FrozenBatchNorm2d.forward`` (torchvision-spec 3.2), every step a
    separate float32 rounding (no FMA)::

        scale = weight * (1 / sqrt(running_var + eps));  shift = bias - running_mean * scale
        y = x * scale + shift

    Args:
        x: ``[..., C]`` (NHWC).
        weight, bias, running_mean, running_var: ``[C]``.
        eps: ``>= 0`` (0.0 for torchvision's COCO_V1 ``fasterrcnn_resnet50_fpn``).
    """
    xa = _f32("x", x)
    vectors = _bn_vectors(weight, bias, running_mean, running_var, xa.shape[-1] if xa.ndim else 0)
    scale, shift = frozen_batch_norm_params(*vectors, eps=eps)
    out = xa * scale
    out += shift
    return np.asarray(out, dtype=np.float32)


def torch_batch_norm(
    x: npt.ArrayLike,
    weight: npt.ArrayLike,
    bias: npt.ArrayLike,
    running_mean: npt.ArrayLike,
    running_var: npt.ArrayLike,
    eps: float = 1e-5,
) -> F32:
    """``torch.nn.BatchNorm2d`` in eval mode on torch's CPU, on channels-last input.

    torch's batch-norm inference kernel (torchvision-spec 3.3) computes::

        alpha = (1 / sqrt(running_var + eps)) * weight;  beta = fma(-running_mean, alpha, bias)
        y = fma(x, alpha, beta)

    (:func:`apply_fma_affine` says how the per-element fma is rounded.)
    """
    xa = _f32("x", x)
    vectors = _bn_vectors(weight, bias, running_mean, running_var, xa.shape[-1] if xa.ndim else 0)
    alpha, beta = torch_batch_norm_params(*vectors, eps=eps)
    return apply_fma_affine(xa, alpha, beta)


#: ``kind`` values of :func:`affine_epilogue_`.
EPILOGUE_KINDS = ("none", "frozen_bn", "fma64", "bias")


def affine_epilogue_(
    y: F32,
    kind: str,
    a: F32 | None = None,
    b: F32 | None = None,
    residual: F32 | None = None,
    relu: bool = False,
    backend: str = "cpu",
) -> F32:
    """A convolution's epilogue, **in place** on ``y [..., C]`` (a fresh conv output); returns y.

    In this order, each a float32 rounding as the reference's separate passes make it:

    1. ``kind``: ``"frozen_bn"`` ``y = y * a`` then ``y = y + b`` (torchvision's
       ``FrozenBatchNorm2d`` with ``a, b`` from :func:`frozen_batch_norm_params`); ``"fma64"``
       ``y = f32(f64(y) * f64(a) + f64(b))`` (:func:`apply_fma_affine`, BN in eval);
       ``"bias"`` ``y = y + b``; ``"none"`` nothing;
    2. ``y = y + residual`` when a residual (of ``y``'s shape) is given;
    3. ``y = np.maximum(y, 0)`` when ``relu``.

    ``backend="numpy"`` runs those NumPy passes; ``"cpu"`` does them in one parallel Numba pass
    (``npfrcnn.kernels.cpu.conv.epilogue``) with the same bits. ``y`` must be C-contiguous
    float32; ``a`` and ``b`` float32 ``[C]``.
    """
    check_backend(backend, ("numpy", "cpu"))
    if kind not in EPILOGUE_KINDS:
        raise ValueError(f"kind must be one of {EPILOGUE_KINDS}, got {kind!r}")
    if y.dtype != np.float32 or not y.flags.c_contiguous or y.ndim < 1:
        raise ValueError("y must be a C-contiguous float32 array with channels last")
    c = y.shape[-1]
    unused = np.zeros(c, dtype=np.float32)
    checked = []
    for name, v, needed in (
        ("a", a, kind in ("frozen_bn", "fma64")), ("b", b, kind != "none")
    ):
        if needed and (v is None or v.shape != (c,) or v.dtype != np.float32):
            raise ValueError(f"{name} must be float32 of shape [{c}] for kind={kind!r}")
        checked.append(unused if v is None else v)
    pa, pb = checked
    if residual is not None and (
        residual.shape != y.shape or residual.dtype != np.float32
        or not residual.flags.c_contiguous
    ):
        raise ValueError(
            f"residual must be C-contiguous float32 of y's shape {y.shape}, got "
            f"{residual.dtype} {residual.shape}"
        )
    if backend == "numpy":
        if kind == "frozen_bn":
            y *= pa
            y += pb
        elif kind == "fma64":
            y[...] = apply_fma_affine(y, pa, pb)
        elif kind == "bias":
            y += pb
        if residual is not None:
            y += residual
        if relu:
            np.maximum(y, np.float32(0.0), out=y)
        return y
    cpu = kernel_module("cpu", "conv")
    mode = {"none": cpu.EPI_NONE, "frozen_bn": cpu.EPI_FROZEN_BN, "fma64": cpu.EPI_FMA64,
            "bias": cpu.EPI_BIAS}[kind]
    y2 = y.reshape(-1, c)
    r2 = residual.reshape(-1, c) if residual is not None else np.empty((0, 0), np.float32)
    cpu.epilogue(y2, mode, pa, pb, r2, residual is not None, bool(relu))
    return y


def max_pool_3x3_s2_p1(x: F32, backend: str = "cpu") -> F32:
    """``MaxPool2d(kernel_size=3, stride=2, padding=1)`` (the padding never wins) on NHWC float32.

    ``backend="numpy"`` pads with ``-inf`` and runs :func:`max_pool2d`; ``"cpu"`` reads the
    unpadded input in one parallel Numba pass, with the same bits (NaN wins, ties take the later
    tap, as ``np.maximum`` does). Output ``[N, (H - 1) // 2 + 1, (W - 1) // 2 + 1, C]``.
    """
    check_backend(backend, ("numpy", "cpu"))
    xa = as_float_array("x", x, ndim=4)
    n, h, w, c = xa.shape
    if backend == "numpy" or min(xa.shape) == 0:
        padded = np.full((n, h + 2, w + 2, c), -np.inf, dtype=np.float32)
        padded[:, 1:-1, 1:-1] = xa
        return max_pool2d(padded, 3, 2, padding="VALID")
    out = np.empty((n, (h - 1) // 2 + 1, (w - 1) // 2 + 1, c), dtype=np.float32)
    kernel_module("cpu", "conv").max_pool_3x3_s2_p1(xa, out)
    return out
