"""torch's float32 CPU arithmetic, reproduced in NumPy (torchvision-spec 10.1, 10.2, 10.4).

torch computes its elementwise float32 maths on the CPU with three different libraries, and
the results differ in the last bit, which is enough to reorder tied scores or move a box by one
ulp. What each function here reproduces, and how exactly:

* :func:`fma32`: a float32 fused multiply-add (one rounding). ATen's AVX2/AVX-512 kernel builds
  contract ``a * b + c`` into FMA instructions, and SLEEF is written with FMAs. Exact.
* :func:`sleef_expf_u10`: SLEEF's ``expf_u10`` (FMA build), the ``exp`` of torch's
  ``Vectorized<float>`` on AVX2 and AVX-512. Exact.
* :func:`torch_sigmoid` and :func:`torch_softmax`: ``torch.sigmoid`` and
  ``torch.softmax(dim=-1)`` as ATen's vectorised CPU kernels compute them, including which
  elements take libm's ``expf`` and the order of the softmax sum. Exact for the stated lane
  count (16 on AVX-512, 8 on AVX2; see ``torch.backends.cpu.get_cpu_capability()``).
* :func:`exp_f64`, :func:`torch_sqrt`, :func:`torch_log2`: stand-ins for ``torch.exp``,
  ``torch.sqrt`` and ``torch.log2``, which call Intel MKL's VML. VML's results depend on the
  CPU (and on ``MKL_ENABLE_INSTRUCTIONS``), so they cannot be reproduced portably; each
  docstring gives the mismatch rate measured against torch 2.14.1 on an AMD EPYC (AVX-512).

Every function takes array-likes, converts them to float32 and returns float32 arrays. None of
them reads or changes the floating-point environment: they assume round-to-nearest-even and no
flush-to-zero, which is torch's default (``torch.set_flush_denormal(False)``).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from npfrcnn._validate import as_float_array, check_positive_int
from npfrcnn.ops._libm import LIBM_EXPF

__all__ = [
    "exp_f64",
    "fma32",
    "libm_expf",
    "sleef_expf_u10",
    "torch_log2",
    "torch_sigmoid",
    "torch_softmax",
    "torch_sqrt",
]

F32 = npt.NDArray[np.float32]
f32, f64 = np.float32, np.float64

# ATen's Vectorized<float> width per CPU capability: lanes of one vector register.
LANES = {"avx512": 16, "avx2": 8}
# at::internal::GRAIN_SIZE: elementwise kernels on more elements than this are split between
# threads, and each thread's chunk has its own scalar tail.
GRAIN_SIZE = 32768


def _as_f32(name: str, x: npt.ArrayLike) -> F32:
    """``x`` as a C-contiguous float32 array of its own shape (a scalar stays 0-d)."""
    return as_float_array(name, x).reshape(np.shape(x))


def _check_lanes(lanes: int) -> int:
    if isinstance(lanes, bool) or lanes not in (8, 16):
        raise ValueError(
            f"lanes must be 16 (ATen CPU capability AVX512) or 8 (AVX2), got {lanes!r}; "
            "read it from torch.backends.cpu.get_cpu_capability() where the reference was made"
        )
    return int(lanes)


# --------------------------------------------------------------------------------------------
# Fused multiply-add
# --------------------------------------------------------------------------------------------


def fma32(a: npt.ArrayLike, b: npt.ArrayLike, c: npt.ArrayLike) -> F32:
    """float32 ``a * b + c`` rounded once (IEEE fusedMultiplyAdd), elementwise with broadcasting.

    Method: the product of two float32 numbers is exact in float64 (48 significant bits), so
    only the float64 sum ``s = p + c`` rounds. Rounding ``s`` to float32 a second time can then
    land on the wrong side of a float32 midpoint, so ``s`` is first made *round-to-odd*: when
    the float64 sum is inexact (its TwoSum error ``e`` is non-zero) and its last significand bit
    is even, it is replaced by its float64 neighbour on the side of ``e``. A round-to-odd value
    with at least two more bits than the target rounds correctly (Boldo and Melquiond, 2008),
    and float64 has 29 more than float32. Overflow, underflow to subnormals, infinities and
    NaNs follow IEEE: a float64 ``s`` beyond float32's range becomes ``inf`` when converted.

    Args:
        a, b, c: real array-likes (converted to float32), broadcast together.

    Returns:
        float32 array of the broadcast shape (0-d for scalar inputs).
    """
    a64 = _as_f32("a", a).astype(f64)
    b64 = _as_f32("b", b).astype(f64)
    c64 = _as_f32("c", c).astype(f64)
    with np.errstate(invalid="ignore", over="ignore"):
        p = a64 * b64  # exact
        s = p + c64
        # TwoSum (Knuth): s + err == p + c exactly, whenever s is finite.
        bv = s - p
        err = (p - (s - bv)) + (c64 - bv)
    bits = np.asarray(s).view(np.uint64)
    fix = np.isfinite(err) & (err != 0) & ((bits & np.uint64(1)) == 0)
    if np.any(fix):
        s = np.where(fix, np.nextafter(s, np.where(err > 0, np.inf, -np.inf)), s)
    with np.errstate(over="ignore"):
        return np.asarray(s).astype(f32)


# --------------------------------------------------------------------------------------------
# exp: SLEEF (torch's vectorised kernels) and libm (their scalar tails)
# --------------------------------------------------------------------------------------------

# SLEEF's single-precision constants (sleef/src/libm/misc.h): 1/ln 2, and ln 2 split into a
# head with trailing zero bits (so q * L2U is exact) and a tail.
_R_LN2F = f32(1.442695040888963407359924681001892137426645954152985934135449406931)
_L2UF = f32(0.693145751953125)
_L2LF = f32(1.428606765330187045e-06)
# The minimax polynomial of xexpf (sleef/src/libm/sleefsimdsp.c), highest degree first.
_EXPF_POLY = tuple(
    f32(v)
    for v in (
        0.000198527617612853646278381,
        0.00139304355252534151077271,
        0.00833336077630519866943359,
        0.0416664853692054748535156,
        0.166666671633720397949219,
        0.5,
    )
)


def _pow2f(q: npt.NDArray[np.int32]) -> F32:
    """float32 ``2**q`` from its exponent bits, as SLEEF's ``vpow2i`` (``-126 <= q <= 127``)."""
    return ((q.astype(np.int32) + np.int32(127)) << np.int32(23)).view(f32)


def sleef_expf_u10(x: npt.ArrayLike) -> F32:
    """SLEEF ``expf_u10`` (its FMA build), the ``Vectorized<float>::exp`` of torch's AVX2 and
    AVX-512 kernels; exact, elementwise.

    The algorithm (SLEEF ``xexpf``), all in float32, ``fma`` rounding once::

        q = rint(x * (1/ln2))                      # x * R_LN2 rounded, then to nearest even
        s = fma(q, -L2U, x);  s = fma(q, -L2L, s)  # x - q ln2 in two steps
        u = c0;  u = fma(u, s, c_k) for c1..c5     # degree-5 minimax polynomial, c5 = 0.5
        u = 1 + fma(s * s, u, s)
        u = (u * 2**(q >> 1)) * 2**(q - (q >> 1)) # ldexp in two steps (no overflow in 2**q)
        x < -104 -> 0;   x > 100 -> inf;   NaN -> NaN

    Its error is below 1 ulp, so it differs from the correctly rounded ``exp`` (and from libm's
    ``expf``) in the last bit for some inputs.

    Args:
        x: real array-like (converted to float32), any shape.

    Returns:
        float32 array of the shape of ``x``.
    """
    d = _as_f32("x", x)
    with np.errstate(invalid="ignore", over="ignore"):
        # Arguments outside [-104, 100] are replaced at the end; clip first so that q stays an
        # int32 with 2**(q/2) a normal float (NaN clips to NaN and stays NaN below).
        dc = np.clip(d, f32(-104.0), f32(100.0))
        qf = np.rint(dc * _R_LN2F)  # float32 product, round half to even
        q = np.nan_to_num(qf).astype(np.int32)
        s = fma32(qf, -_L2UF, dc)
        s = fma32(qf, -_L2LF, s)
        u = np.full(d.shape, _EXPF_POLY[0], dtype=f32)
        for coef in _EXPF_POLY[1:]:
            u = fma32(u, s, coef)
        u = f32(1.0) + fma32(s * s, u, s)
        half = q >> 1  # arithmetic shift, as SLEEF
        u = (u * _pow2f(half)) * _pow2f(q - half)
        u = np.where(d < f32(-104.0), f32(0.0), u)
        u = np.where(d > f32(100.0), f32(np.inf), u)
    return np.asarray(u, dtype=f32)


_LIBM_EXPF = LIBM_EXPF


def libm_expf(x: npt.ArrayLike) -> F32:
    """float32 ``exp`` as the platform libm's ``expf`` computes it (what ``std::exp(float)`` in
    torch's scalar loops calls), elementwise, one C call per element (meant for short arrays).

    glibc's ``expf`` (2.28 and later) is correctly rounded except in rare cases (about 0.07 %
    of arguments, torchvision-spec 10.2). Where no libm can be loaded through ctypes, the
    correctly rounded value ``f32(exp(f64(x)))`` is returned instead.
    """
    d = _as_f32("x", x)
    out = np.empty_like(d)
    flat_in, flat_out = d.reshape(-1), out.reshape(-1)
    fn = _LIBM_EXPF
    for i in range(flat_in.size):
        v = float(flat_in[i])
        if fn is not None:
            flat_out[i] = fn(v)
        else:
            flat_out[i] = exp_f64(v)  # correctly rounded: glibc's answer almost always
    return out


# --------------------------------------------------------------------------------------------
# sigmoid and softmax: ATen's vectorised CPU kernels
# --------------------------------------------------------------------------------------------


def _thread_chunks(n: int, num_threads: int) -> list[tuple[int, int]]:
    """The ranges ``at::parallel_for(0, n, GRAIN_SIZE, f)`` hands to its threads (OpenMP
    build): ``min(num_threads, ceil(n / GRAIN_SIZE))`` chunks of ``ceil(n / chunks)``."""
    if n <= GRAIN_SIZE or num_threads == 1:
        return [(0, n)]
    chunks = min(num_threads, -(-n // GRAIN_SIZE))
    size = -(-n // chunks)
    return [(b, min(n, b + size)) for b in range(0, n, size)]


def torch_sigmoid(x: npt.ArrayLike, lanes: int = 16, *, num_threads: int = 1) -> F32:
    """``torch.sigmoid`` of a contiguous float32 tensor on the CPU, bit for bit.

    ATen's kernel (``cpu_kernel_vec``) walks the flattened tensor in steps of two vectors
    (``2 * lanes`` elements): those elements get ``1 / (1 + E(-x))`` with ``E`` =
    :func:`sleef_expf_u10`; the last ``n % (2 * lanes)`` elements run the scalar loop, where
    ``E`` is libm's ``expf`` (:func:`libm_expf`). The addition and the division are float32
    operations (the division is not a reciprocal estimate).

    Args:
        x: real array-like (converted to float32), any shape; treated as its C-order
            flattening, which is what torch does for a contiguous tensor.
        lanes: float32 lanes of ATen's ``Vectorized<float>``: 16 when
            ``torch.backends.cpu.get_cpu_capability()`` is ``"AVX512"`` (the default on
            AVX-512 machines), 8 for ``"AVX2"`` (e.g. ``ATEN_CPU_CAPABILITY=avx2``).
        num_threads: ``torch.get_num_threads()`` of the reference. It only matters above
            32,768 elements, where ATen splits the tensor into ``min(num_threads,
            ceil(n / 32768))`` equal chunks (OpenMP build), each with its own scalar tail.

    Returns:
        float32 array of the shape of ``x``; empty input gives an empty array.
    """
    lanes = _check_lanes(lanes)
    threads = check_positive_int("num_threads", num_threads)
    xa = _as_f32("x", x)
    flat = xa.reshape(-1)
    neg = -flat
    e = sleef_expf_u10(neg)
    step = 2 * lanes
    for begin, end in _thread_chunks(flat.size, threads):
        tail = end - (end - begin) % step
        if tail < end:
            e[tail:end] = libm_expf(neg[tail:end])
    with np.errstate(over="ignore"):
        out = f32(1.0) / (f32(1.0) + e)
    return np.asarray(out, dtype=f32).reshape(xa.shape)


def _lane_sum(e: F32, lanes: int) -> F32:
    """``vec::reduce_all(+)`` over the last axis of ``e`` ``[N, K]`` -> ``[N]``, in ATen's order.

    * ``K < lanes``: the elements are added one after the other, ``((e0 + e1) + e2) + ...``
      (``vec_reduce_all`` with a size, which shifts each lane into lane 0 in turn).
    * otherwise: lane ``j`` of an accumulator vector starts at ``e[j]`` and adds ``e[j + lanes]``,
      ``e[j + 2 lanes]``, ... in order; a partial last vector updates only its first lanes.
      The lanes are then folded by a butterfly, ``v += v[lane ^ h]`` for ``h = lanes / 2, ...,
      1``, and lane 0 is the sum.
    """
    n, k = e.shape
    if k < lanes:
        total = e[:, 0].copy()
        for j in range(1, k):
            total = total + e[:, j]
        return total
    acc = e[:, :lanes].copy()  # [N, lanes]
    full = k - k % lanes
    for d in range(lanes, full, lanes):
        acc = acc + e[:, d : d + lanes]
    rest = k - full
    if rest and full >= lanes:
        acc[:, :rest] = acc[:, :rest] + e[:, full:]
    h = lanes // 2
    while h >= 1:
        acc = acc + acc[:, np.arange(lanes) ^ h]
        h //= 2
    return acc[:, 0].copy()


def torch_softmax(x: npt.ArrayLike, lanes: int = 16) -> F32:
    """``torch.softmax(x, dim=-1)`` of a contiguous float32 ``[N, K]`` tensor on the CPU, bit for
    bit (ATen's ``_vec_softmax_lastdim``).

    Per row, in float32::

        m = max(x)                                   # exact
        e = sleef_expf_u10(x - m)                    # vector exp for every element, tail too
        S = lane-ordered sum of e (see _lane_sum)    # 16 lanes on AVX-512, 8 on AVX2
        out = e * (1 / S)                            # one division, then a multiply

    Args:
        x: real array-like ``[N, K]`` (converted to float32), ``K >= 1``.
        lanes: 16 for ATen CPU capability AVX512, 8 for AVX2 (as :func:`torch_sigmoid`).

    Returns:
        float32 ``[N, K]``; ``N == 0`` gives an empty ``[0, K]`` array. A row holding NaN, or
        ``+inf``, gives NaN, as torch does.
    """
    lanes = _check_lanes(lanes)
    xa = as_float_array("x", x, ndim=2)
    if xa.shape[1] == 0:
        raise ValueError(
            f"x must have at least one column (classes), got shape {xa.shape}; "
            "pass logits of shape [N, K] with K >= 1"
        )
    if xa.shape[0] == 0:
        return xa.copy()
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        m = np.max(xa, axis=1, keepdims=True)  # [N, 1]
        e = sleef_expf_u10(xa - m)  # [N, K]
        inv = f32(1.0) / _lane_sum(e, lanes)  # [N]
        out = e * inv[:, None]
    return np.asarray(out, dtype=f32)


# --------------------------------------------------------------------------------------------
# Stand-ins for MKL VML (torch.exp, torch.sqrt, torch.log2)
# --------------------------------------------------------------------------------------------


def exp_f64(x: npt.ArrayLike) -> F32:
    """Portable stand-in for ``torch.exp`` on float32: ``f32(exp(f64(x)))``, which is the
    correctly rounded float32 ``exp`` except in vanishingly rare double-rounding cases.

    ``torch.exp`` on the CPU is Intel MKL VML (high-accuracy mode), which is not correctly
    rounded and whose results depend on the CPU and on ``MKL_ENABLE_INSTRUCTIONS``; it cannot
    be reproduced portably (torchvision-spec 5.3, 10.2). Measured against torch 2.14.1 on an
    AMD EPYC (AVX-512, ``tests/test_torch_math.py::test_exp_f64_mismatch_rate``): 1.0 % of
    RPN-like deltas (N(0, 0.3)) and of U(-20, 20) differ, always by 1 ulp. For comparison,
    ``np.exp`` on float32 differs from ``torch.exp`` in 39 % (up to 2 ulp), SLEEF in 9 %.
    """
    with np.errstate(over="ignore"):
        return np.asarray(np.exp(_as_f32("x", x).astype(f64)).astype(f32))


def torch_sqrt(x: npt.ArrayLike) -> F32:
    """Stand-in for ``torch.sqrt`` on float32 (torchvision's ``LevelMapper``): the correctly
    rounded float32 square root (``np.sqrt`` on float32, an IEEE operation; ``f32(sqrt(f64))``
    is the same function).

    torch calls MKL VML's ``vsSqrt``. On the AMD EPYC (AVX-512) these tests ran on it is **not**
    correctly rounded: it differs from this function by 1 ulp, in both directions, for 17 % of
    box areas and of all positive floats (errors up to 0.75 ulp), the same under every
    ``ATEN_CPU_CAPABILITY`` and ``MKL_ENABLE_INSTRUCTIONS`` tried
    (``tests/test_torch_math.py::test_sqrt_stand_in_mismatch_rate``). torchvision-spec 7.2
    reports 0.56 % on the CPU it was measured on. No portable formula reproduces VML; the
    difference only moves a RoI's FPN level when ``4 + log2(sqrt(area) / 224)`` lies within
    about 1e-7 of an integer. Negative inputs give NaN.
    """
    with np.errstate(invalid="ignore"):
        return np.asarray(np.sqrt(_as_f32("x", x)))


def torch_log2(x: npt.ArrayLike) -> F32:
    """Stand-in for ``torch.log2`` on float32 (torchvision's ``LevelMapper`` and
    ``_infer_scale``): ``f32(log2(f64(x)))``, the correctly rounded float32 ``log2`` except in
    vanishingly rare double-rounding cases.

    torch calls MKL VML's ``vsLog2``. Measured against torch 2.14.1 on an AMD EPYC (AVX-512,
    ``tests/test_torch_math.py::test_log2_stand_in_mismatch_rate``): 0.11 % of LevelMapper
    arguments (``sqrt(area) / 224``) and 0.006 % of all positive floats differ, by 1 ulp;
    ``np.log2`` on float32 is worse (16 % and 0.5 %, up to 2 ulp). Powers of two give exact
    integers in both. ``0`` gives ``-inf``, negative inputs NaN.
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.asarray(np.log2(_as_f32("x", x).astype(f64)).astype(f32))
