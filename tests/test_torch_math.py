"""npfrcnn.ops.torch_math: torch's float32 CPU numerics, bit for bit, and the VML stand-ins.

Two kinds of test:

* without torch: ``fma32`` against an exact rational oracle (``fractions.Fraction`` rounded to
  float32 by integer arithmetic) on random and on constructed double-rounding cases; SLEEF's
  documented range rules and its < 1 ulp error bound; which elements of ``torch_sigmoid`` take
  libm's ``expf``; softmax invariants.
* with torch (skipped where torch is not installed): ``torch.sigmoid`` and ``torch.softmax``
  compared bitwise under the thread counts and ATen CPU capabilities named in each test
  (``ATEN_CPU_CAPABILITY`` is read at import, so other capabilities run in a subprocess), and
  the measured mismatch rates of the stand-ins for ``torch.exp``, ``torch.sqrt`` and
  ``torch.log2`` (MKL VML), asserted as upper bounds and printed (``pytest -s``).

Caution for torch comparisons in one process: a Numba ``parallel=True`` kernel (threading layer
``omp``) resets the OpenMP thread count, which is ``torch.get_num_threads()``. Every torch call
here sets its thread count right before it runs (``_torch_threads``).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from fractions import Fraction

import numpy as np
import pytest
from helpers import assert_same

from npfrcnn.ops.torch_math import (
    exp_f64,
    fma32,
    libm_expf,
    sleef_expf_u10,
    torch_log2,
    torch_sigmoid,
    torch_softmax,
    torch_sqrt,
)

try:
    import torch
except ImportError:  # the oracle tests below skip; the rest still run
    torch = None

needs_torch = pytest.mark.skipif(torch is None, reason="torch is not installed (the oracle)")
f32, f64 = np.float32, np.float64


def _torch_threads(n: int) -> None:
    assert torch is not None
    torch.set_num_threads(n)
    assert torch.get_num_threads() == n


def _lanes_here() -> int:
    assert torch is not None
    cap = torch.backends.cpu.get_cpu_capability()
    if cap not in ("AVX512", "AVX2"):
        pytest.skip(f"torch runs with ATen CPU capability {cap}; these tests need AVX2/AVX512")
    return 16 if cap == "AVX512" else 8


def _bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=f32).view(np.uint32)


def _mismatches(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.count_nonzero(_bits(a) != _bits(b)))


# ---------------------------------------------------------------------------------------------
# An exact oracle: a rational rounded to float32 (nearest, ties to even), by integer arithmetic
# ---------------------------------------------------------------------------------------------


def round_f32(v: Fraction) -> np.float32:
    if v == 0:
        return f32(0.0)
    sign = -1 if v < 0 else 1
    a = abs(v)
    e = a.numerator.bit_length() - a.denominator.bit_length()  # 2**e <= a < 2**(e+2)
    while Fraction(2) ** e > a:
        e -= 1
    while Fraction(2) ** (e + 1) <= a:
        e += 1
    q = max(e - 23, -149)  # quantum: 24 significant bits, or the subnormal spacing
    scaled = a / Fraction(2) ** q
    m, rem = divmod(scaled.numerator, scaled.denominator)
    if 2 * rem > scaled.denominator or (2 * rem == scaled.denominator and m % 2 == 1):
        m += 1
    value = math.ldexp(m, q)  # exact in float64 (m < 2**25)
    return f32(sign * value) if value < 2.0**128 else f32(sign * np.inf)


def exact_fma(a: np.float32, b: np.float32, c: np.float32) -> np.float32:
    return round_f32(Fraction(float(a)) * Fraction(float(b)) + Fraction(float(c)))


# ---------------------------------------------------------------------------------------------
# fma32 (no torch)
# ---------------------------------------------------------------------------------------------


def test_fma32_hand_worked_double_rounding():
    # a = b = 1 + 2**-12: a*b = 1 + 2**-11 + 2**-24, exactly halfway between two float32s.
    a = f32(1 + 2.0**-12)
    below, above = f32(1 + 2.0**-11), f32(1 + 2.0**-11 + 2.0**-23)
    # c = 0: a true tie, to even -> below; f32(f64) agrees here.
    assert_same(fma32(a, a, f32(0.0)), below)
    # c = 2**-60 tips the exact value above the midpoint: fma rounds up. The float64 sum
    # 1 + 2**-11 + 2**-24 + 2**-60 rounds to the midpoint first, then to even (below): the
    # double rounding that fma32 must avoid.
    tip = f32(2.0**-60)
    assert f32(f64(a) * f64(a) + f64(tip)) == below
    assert_same(fma32(a, a, tip), above)
    assert_same(fma32(a, a, -tip), below)
    # The same tie from the other side: a*b - 2**-60 lands just below the midpoint.
    assert_same(fma32(-a, a, tip), -below)
    assert_same(fma32(-a, a, -tip), -above)


def test_fma32_gives_the_exact_product_error():
    # The classic use: e = fma(a, b, -f32(a*b)) is the exact rounding error of the product.
    rng = np.random.default_rng(0)
    a = rng.standard_normal(1000).astype(f32)
    b = rng.standard_normal(1000).astype(f32)
    p = a * b
    e = fma32(a, b, -p)
    assert np.all(f64(p) + f64(e) == f64(a) * f64(b))


def test_fma32_matches_an_exact_oracle():
    rng = np.random.default_rng(1)
    n = 3000
    a = (rng.standard_normal(n) * 2.0 ** rng.integers(-20, 20, n)).astype(f32)
    b = (rng.standard_normal(n) * 2.0 ** rng.integers(-20, 20, n)).astype(f32)
    # c close to -a*b (cancellation) for a third, near a midpoint of a*b for a third.
    p = f64(a) * f64(b)
    c = rng.standard_normal(n).astype(f32)
    c[: n // 3] = (-p[: n // 3]).astype(f32)
    mid = n // 3, 2 * n // 3
    c[mid[0] : mid[1]] = (p[mid[0] : mid[1]] * 2.0**-30).astype(f32)
    got = fma32(a, b, c)
    want = np.array([exact_fma(a[i], b[i], c[i]) for i in range(n)], dtype=f32)
    assert_same(got, want)


def test_fma32_constructed_midpoints_match_the_oracle():
    # a*b exactly on a float32 midpoint (low 24 of its 48 bits = 100..0), c a tiny nudge either
    # way or zero: the cases where f32(f64(a*b + c)) is wrong.
    rng = np.random.default_rng(2)
    hits = 0
    for _ in range(400):
        a = f32(1 + rng.integers(1, 2**11) * 2.0**-12)
        b = f32(1 + rng.integers(1, 2**11) * 2.0**-12)
        for c in (f32(0.0), f32(2.0**-70), f32(-(2.0**-70))):
            want = exact_fma(a, b, c)
            assert fma32(a, b, c) == want
            hits += f32(f64(a) * f64(b) + f64(c)) != want
    assert hits > 0  # the set really contains double-rounding cases


def test_fma32_special_values_and_broadcasting():
    big, tiny = f32(3e38), f32(1e-30)
    assert_same(fma32(big, f32(2.0), f32(0.0)), f32(np.inf))  # overflow
    assert_same(fma32(big, f32(2.0), -f32(np.inf)), -f32(np.inf))
    assert np.isnan(fma32(f32(np.inf), f32(0.0), f32(1.0)))
    assert np.isnan(fma32(f32(np.inf), f32(1.0), -f32(np.inf)))
    assert np.isnan(fma32(f32(np.nan), f32(1.0), f32(1.0)))
    assert_same(fma32(tiny, tiny, f32(0.0)), round_f32(Fraction(1e-30) ** 2))  # 0 (underflow)
    sub = f32(2.0**-140)
    assert_same(fma32(sub, f32(0.75), f32(0.0)), round_f32(Fraction(2) ** -140 * Fraction(3, 4)))
    got = fma32(np.ones((2, 1), f32), np.arange(3, dtype=f32), f32(1.0))
    assert_same(got, np.array([[1, 2, 3], [1, 2, 3]], f32))


# ---------------------------------------------------------------------------------------------
# SLEEF expf_u10, libm expf, sigmoid, softmax (no torch)
# ---------------------------------------------------------------------------------------------


def _ulps_from_exact(got: np.ndarray, x: np.ndarray) -> np.ndarray:
    """|got - exp(x)| in float32 ulps of the result (exp in float64, accurate to ~1e-16)."""
    exact = np.exp(x.astype(f64))
    return np.abs(got.astype(f64) - exact) / np.spacing(exact.astype(f32)).astype(f64)


def test_sleef_expf_range_rules():
    x = np.array([0, -0.0, -104, -104.01, -1e30, 100, 100.01, 1e30, np.inf, -np.inf], f32)
    got = sleef_expf_u10(x)
    assert got[0] == 1 and got[1] == 1
    assert got[2] >= 0 and got[2] < f32(1e-44)  # -104 itself is computed: subnormal or 0
    assert np.all(got[3:5] == 0) and got[9] == 0
    assert np.isinf(got[5]) and np.all(np.isinf(got[6:9]))  # exp(100) overflows float32 anyway
    assert np.isnan(sleef_expf_u10(f32(np.nan)))
    assert sleef_expf_u10(np.zeros((2, 3), f32)).shape == (2, 3)


def test_sleef_expf_is_within_one_ulp():
    # SLEEF documents expf_u10's error as below 1.0 ulp; its misses are 1 ulp, never 2.
    rng = np.random.default_rng(3)
    x = rng.uniform(-87, 88, 200_000).astype(f32)
    ulps = _ulps_from_exact(sleef_expf_u10(x), x)
    assert ulps.max() < 1.0


def test_libm_expf_is_within_one_ulp_and_nearly_correctly_rounded():
    rng = np.random.default_rng(4)
    x = rng.uniform(-20, 20, 5000).astype(f32)
    got = libm_expf(x)
    assert _ulps_from_exact(got, x).max() < 1.0
    assert np.mean(got != exp_f64(x)) < 0.01  # glibc: about 0.07 % (spec 10.2)


@pytest.mark.parametrize("lanes", [16, 8])
def test_sigmoid_takes_libm_for_the_scalar_tail(lanes):
    # Elements before n - n % (2 lanes) use SLEEF, the rest libm: built element by element.
    rng = np.random.default_rng(5)
    x = (rng.standard_normal(5 * lanes + 7) * 6).astype(f32)
    n = x.size
    split = n - n % (2 * lanes)
    e = np.concatenate([sleef_expf_u10(-x[:split]), libm_expf(-x[split:])])
    want = f32(1) / (f32(1) + e)
    assert_same(torch_sigmoid(x, lanes), want)
    assert_same(torch_sigmoid(x.reshape(1, -1), lanes), want.reshape(1, -1))  # flat order
    assert_same(torch_sigmoid(np.zeros(0, f32), lanes), np.zeros(0, f32))


def test_sigmoid_saturates():
    x = np.array([-200, -104.5, -90, 0, 17, 30, 104.5, 200, np.inf, -np.inf] * 4, f32)
    got = torch_sigmoid(x)
    assert got[0] == 0 and got[7] == 1 and got[3] == f32(0.5)
    assert got[8] == 1 and got[9] == 0


def test_sigmoid_thread_chunks():
    # Above 32,768 elements each thread's chunk has its own scalar tail. 40,001 elements with
    # 2 threads are two chunks, [0, 20001) and [20001, 40001): 20,001 % 32 = 1, so element
    # 20,000 takes libm, and 20,000 % 32 = 0, so chunk 1 has no tail. With 1 thread only the
    # last element (40,001 % 32 = 1) does. x is chosen where SLEEF and libm differ.
    v = f32(0.5210105180740356)
    sleef = f32(1) / (f32(1) + sleef_expf_u10(-v))
    libm = f32(1) / (f32(1) + libm_expf(-v))
    assert sleef != libm
    x = np.full(40_001, v, f32)
    one, two = torch_sigmoid(x, num_threads=1), torch_sigmoid(x, num_threads=2)
    assert one[20_000] == sleef and two[20_000] == libm
    assert one[40_000] == libm and two[40_000] == sleef
    assert np.count_nonzero(one == libm) == 1 and np.count_nonzero(two == libm) == 1
    assert_same(torch_sigmoid(x, num_threads=8), two)  # ceil(40001 / 32768) = 2 chunks at most


def test_softmax_small_rows_sum_in_order():
    # K < lanes: the sum is ((e0 + e1) + e2) in order, not a zero-padded butterfly
    # ((e0 + e2) + e1 for K = 3), as torch measures (tests below).
    rng = np.random.default_rng(6)
    x = rng.standard_normal((500, 3)).astype(f32) * 4
    e = sleef_expf_u10(x - x.max(1, keepdims=True))
    total = (e[:, 0] + e[:, 1]) + e[:, 2]
    assert_same(torch_softmax(x), e * (f32(1) / total)[:, None])


def test_softmax_invariants():
    rng = np.random.default_rng(7)
    for k in (1, 2, 5, 16, 21, 91):
        x = (rng.standard_normal((50, k)) * 5).astype(f32)
        for lanes in (8, 16):
            p = torch_softmax(x, lanes)
            assert p.shape == x.shape and p.dtype == f32
            assert np.all(p >= 0) and np.all(p <= 1)
            # k roundings of e, k-1 of the sum, one of 1/S, one of the product: ~ (k + 3) eps.
            np.testing.assert_allclose(p.astype(f64).sum(1), 1.0, rtol=0, atol=(k + 3) * 2e-7)
    assert_same(torch_softmax(np.array([[3.0]], f32)), np.array([[1.0]], f32))
    assert_same(torch_softmax(np.array([[0.0, 0.0]], f32)), np.array([[0.5, 0.5]], f32))
    assert torch_softmax(np.zeros((0, 4), f32)).shape == (0, 4)
    with pytest.raises(ValueError, match="at least one column"):
        torch_softmax(np.zeros((2, 0), f32))
    with pytest.raises(ValueError, match="lanes"):
        torch_softmax(np.zeros((2, 2), f32), lanes=4)
    with pytest.raises(ValueError, match="2 dimensions"):
        torch_softmax(np.zeros(3, f32))


def test_stand_ins_are_correctly_rounded_functions():
    x = np.array([0.25, 1, 2, 4, 9, 1e6, 0], f32)
    assert_same(torch_sqrt(x), np.sqrt(x))
    assert_same(torch_log2(np.array([0.25, 1, 2, 1024], f32)), np.array([-2, 0, 1, 10], f32))
    assert torch_log2(f32(0)) == -np.inf and np.isnan(torch_log2(f32(-1)))
    assert_same(exp_f64(np.array([0, 1], f32)), np.array([1, np.e], f32))


# ---------------------------------------------------------------------------------------------
# Against torch (same process: the capability torch chose at import, normally AVX512 here)
# ---------------------------------------------------------------------------------------------

SIGMOID_SIZES = [*range(0, 101), 4999, 5000, 5003, 32768, 32769, 40_001, 100_003]


@needs_torch
@pytest.mark.parametrize("threads", [1, 2])
def test_sigmoid_matches_torch(threads):
    lanes = _lanes_here()
    rng = np.random.default_rng(8)
    for n in SIGMOID_SIZES:
        x = (rng.standard_normal(n) * 8).astype(f32)
        _torch_threads(threads)
        want = torch.sigmoid(torch.from_numpy(x)).numpy()
        got = torch_sigmoid(x, lanes, num_threads=threads)
        assert _mismatches(got, want) == 0, f"n={n}"


@needs_torch
def test_sigmoid_matches_torch_when_saturated():
    lanes = _lanes_here()
    x = np.concatenate(
        [np.linspace(-120, 120, 4001), [np.inf, -np.inf, 0, -0.0, 88.7, -88.7, 103.9, -104.1]]
    ).astype(f32)
    _torch_threads(2)
    want = torch.sigmoid(torch.from_numpy(x)).numpy()
    assert _mismatches(torch_sigmoid(x, lanes, num_threads=2), want) == 0


SOFTMAX_K = [1, 2, 3, 4, 7, 8, 9, 15, 16, 17, 21, 31, 32, 33, 91, 1000]


@needs_torch
def test_softmax_matches_torch():
    lanes = _lanes_here()
    rng = np.random.default_rng(9)
    for k in SOFTMAX_K:
        x = (rng.standard_normal((200, k)) * 4).astype(f32)
        x[0] = 0.0  # a row of ties
        x[1, 0] = 60.0  # a saturated row: exactly 1 and exact zeros
        _torch_threads(2)
        want = torch.softmax(torch.from_numpy(x), dim=-1).numpy()
        assert _mismatches(torch_softmax(x, lanes), want) == 0, f"K={k}"


@needs_torch
def test_wrong_lane_count_is_detected():
    # The test above is sensitive to the lane count: the other one gives many mismatches.
    lanes = _lanes_here()
    rng = np.random.default_rng(10)
    x = (rng.standard_normal((500, 91)) * 4).astype(f32)
    _torch_threads(2)
    want = torch.softmax(torch.from_numpy(x), dim=-1).numpy()
    assert _mismatches(torch_softmax(x, 24 - lanes), want) > 1000


# ---------------------------------------------------------------------------------------------
# Other ATen CPU capabilities (a subprocess each: the capability is fixed at torch's import)
# ---------------------------------------------------------------------------------------------

_ORACLE = r"""
import json, sys
import numpy as np, torch
torch.set_num_threads(2)
src, dst = sys.argv[1], sys.argv[2]
data = np.load(src)
out = {"capability": np.array(torch.backends.cpu.get_cpu_capability())}
for name in data.files:
    x = torch.from_numpy(data[name])
    out[name] = (torch.sigmoid(x) if name.startswith("sig") else torch.softmax(x, -1)).numpy()
np.savez(dst, **out)
"""


def _torch_in_subprocess(tmp_path, capability: str, arrays: dict[str, np.ndarray]):
    src, dst = tmp_path / "in.npz", tmp_path / "out.npz"
    np.savez(src, **arrays)
    env = {**os.environ, "ATEN_CPU_CAPABILITY": capability}
    r = subprocess.run(
        [sys.executable, "-c", _ORACLE, str(src), str(dst)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    return dict(np.load(dst))


@needs_torch
def test_avx2_capability_uses_eight_lanes(tmp_path):
    rng = np.random.default_rng(11)
    arrays = {f"sig{n}": (rng.standard_normal(n) * 8).astype(f32) for n in range(0, 70)}
    arrays["sig5000"] = (rng.standard_normal(5000) * 8).astype(f32)
    for k in SOFTMAX_K:
        arrays[f"soft{k}"] = (rng.standard_normal((100, k)) * 4).astype(f32)
    out = _torch_in_subprocess(tmp_path, "avx2", arrays)
    cap = str(out.pop("capability"))
    if cap != "AVX2":
        pytest.skip(f"torch did not honour ATEN_CPU_CAPABILITY=avx2 (runs {cap})")
    for name, want in out.items():
        x = arrays[name]
        got = torch_sigmoid(x, 8) if name.startswith("sig") else torch_softmax(x, 8)
        assert _mismatches(got, want) == 0, name


# ---------------------------------------------------------------------------------------------
# The VML stand-ins: measured mismatch rates (CPU dependent, so asserted as upper bounds)
# ---------------------------------------------------------------------------------------------


def _rate(name: str, got: np.ndarray, want: np.ndarray) -> float:
    bad = _bits(got) != _bits(want)
    ulps = np.abs(_bits(got).view(np.int32).astype(np.int64) - _bits(want).view(np.int32))
    rate = float(bad.mean())
    worst = int(ulps[bad].max()) if bad.any() else 0
    print(f"\n{name}: {bad.sum()} of {bad.size} differ ({100 * rate:.3f} %), max {worst} ulp")
    assert worst <= 1, f"{name}: a stand-in {worst} ulp away from torch"
    return rate


def _record(rates: dict[str, float]) -> None:
    print(json.dumps({"cpu_capability": torch.backends.cpu.get_cpu_capability(), **rates}))


@needs_torch
def test_exp_f64_mismatch_rate():
    # Measured with torch 2.14.1 on an AMD EPYC (AVX-512): 1.0 % on N(0, 0.3) (RPN deltas),
    # 1.0 % on U(-20, 20), 1.1 % on U(-87, 88), each differing by 1 ulp. For comparison NumPy's
    # float32 exp differs from torch.exp in 39 % (up to 2 ulp), SLEEF in 9 %, glibc expf in 1 %.
    rng = np.random.default_rng(12)
    deltas = (rng.standard_normal(400_000) * 0.3).astype(f32)
    wide = rng.uniform(-20, 20, 400_000).astype(f32)
    _torch_threads(2)
    rates = {
        "exp_f64 N(0,0.3)": _rate(
            "exp_f64", exp_f64(deltas), torch.exp(torch.from_numpy(deltas)).numpy()
        ),
        "exp_f64 U(-20,20)": _rate(
            "exp_f64", exp_f64(wide), torch.exp(torch.from_numpy(wide)).numpy()
        ),
    }
    _record(rates)
    assert max(rates.values()) < 0.05


@needs_torch
def test_sqrt_stand_in_mismatch_rate():
    # Measured with torch 2.14.1 on an AMD EPYC (AVX-512): torch.sqrt differs from the correctly
    # rounded sqrt by 1 ulp (both ways) in 17 % of box areas (products of two U(1, 800)
    # sides), 17 % of all positive floats, independent of ATEN_CPU_CAPABILITY and
    # MKL_ENABLE_INSTRUCTIONS. Its error reaches 0.75 ulp. The spec's 0.56 % was measured on
    # another CPU. f32(sqrt(f64)) is the same function as np.sqrt(f32) (sqrt never double-rounds).
    rng = np.random.default_rng(13)
    sides = rng.uniform(1, 800, (2, 400_000)).astype(f32)
    areas = sides[0] * sides[1]
    _torch_threads(2)
    want = torch.sqrt(torch.from_numpy(areas)).numpy()
    assert_same(np.sqrt(areas.astype(f64)).astype(f32), torch_sqrt(areas))
    rate = _rate("torch_sqrt (areas)", torch_sqrt(areas), want)
    _record({"sqrt areas": rate})
    assert rate < 0.25


@needs_torch
def test_log2_stand_in_mismatch_rate():
    # Measured with torch 2.14.1 on an AMD EPYC (AVX-512), on s / 224 for the box areas above
    # (LevelMapper's argument): f32(log2(f64)) differs from torch.log2 in 0.11 % (1 ulp);
    # np.log2 on float32 in 16 % (up to 2 ulp). Over all positive floats: 0.006 % and 0.5 %.
    rng = np.random.default_rng(14)
    sides = rng.uniform(1, 800, (2, 400_000)).astype(f32)
    s = np.sqrt(sides[0] * sides[1]) / f32(224)
    _torch_threads(2)
    want = torch.log2(torch.from_numpy(s)).numpy()
    rate = _rate("torch_log2 (s / 224)", torch_log2(s), want)
    rate_np = float(np.mean(_bits(np.log2(s)) != _bits(want)))
    print(f"np.log2(float32): {100 * rate_np:.3f} %")
    _record({"log2 s/224": rate, "np.log2 f32": rate_np})
    assert rate < 0.01 and rate < rate_np
