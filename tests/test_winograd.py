"""Winograd F(2x2, 3x3) on the ``cpu`` backend (``npfrcnn.kernels.cpu.winograd``), against the
exact (float64) convolution, within a derived float32 error bound.

Notation: ``eps = 2**-24`` (float32 unit roundoff), ``gamma_n = n eps / (1 - n eps)``,
``C = Cin`` and ``K = 9 C`` (the direct path's dot-product length). For one output channel
and one 2x2 output tile, with ``d_c`` the tile's 4x4 input patch of channel ``c`` (zeros
outside the image) and ``g_c`` the 3x3 kernel slice, the exact convolution is

    Y = A^T M A,   M = sum_c U_c . V_c,   U_c = G g_c G^T,   V_c = B^T d_c B

(``.`` elementwise; ``B^T``, ``G``, ``A^T`` of Lavin & Gray). Write ``|.|`` elementwise and

    W_c = |G| |g_c| |G^T|,   D_c = |B^T| |d_c| |B|,   S = |A^T| (sum_c W_c . D_c) |A|,

``S`` the Winograd magnitude of each output (computed below in float64). Bound each rounding:

1. ``V^ = fl(fl(B^T d) B)``: every entry of ``B^T d`` is one add of two taps, every entry of the
   column pass one add of two of those: ``|V^ - V| <= eps |B^T||d||B| + eps |fl(B^T d)||B|
   <= gamma_2 D``, and ``|V^| <= (1 + gamma_2) D``.
2. ``U^ = f32(G g G^T)``, the sum done in float64 (at most 4 float64 roundings, ``gamma64_4 <
   2**-50``) and rounded once: ``|U^ - U| <= e_U W`` with ``e_U = eps + 2**-50``;
   ``|U^| <= (1 + e_U) W``.
3. The GEMM sums ``C`` products in any order (BLAS blocking, FMA or not):
   ``|M^ - sum_c U^_c V^_c| <= gamma_C sum_c |U^_c||V^_c|``. With
   ``sum U^ V^ - U V = sum (U^ - U) V^ + U (V^ - V)``:
   ``|M^ - M| <= rho_M sum_c W_c . D_c``,
   ``rho_M = gamma_C (1 + e_U)(1 + gamma_2) + e_U (1 + gamma_2) + gamma_2``.
4. ``Y^ = fl(fl(A^T M^) A)``: every entry of either pass sums three terms (two roundings):
   ``|Y^ - A^T M^ A| <= (2 gamma_2 + gamma_2^2) |A^T||M^||A|``, and
   ``|M^| <= (1 + rho_M) sum_c W_c . D_c``.

Together:

    |Y^ - Y| <= [rho_M + (2 gamma_2 + gamma_2^2)(1 + rho_M)] S  =  (C + 7) eps S + O(eps^2)
             =  (K/9 + 7) eps S + O(eps^2).

In terms of the sums of ``|x|`` and ``|w|``: ``S = sum_c sum_{ij,kl} c_p(i,k) c_q(j,l)
|g_c[i,j]| |d_c[k,l]|`` for output ``(p, q)`` of the tile, with the 3x4 coefficients
``c_p(i, k) = sum_a |A^T[p,a]| |G[a,i]| |B^T[a,k]|``, all at most 2 (tested below), so

    |Y^ - Y| <= 4 (K/9 + 7) eps sum_c ||w[:, :, c, o]||_1 ||x_c over the 4x4 tile||_1 + O(eps^2).

The direct path (im2col + one sgemm of length ``K``) has ``|y^ - y| <= gamma_K sum |x||w|``:
Winograd's dot products are 9x shorter, but ``S`` also holds the products of taps and weights
that the transforms cancel exactly (``S`` is about 7x ``sum |x||w|`` for positive random data:
64 coefficient products against 9 terms). Neither bound counts underflow (no subnormals here).
The float64 reference's own error, ``gamma64_K sum |x||w|``, is added to both bounds. A bias
adds one more rounding, ``eps |Y^ + b|``.

Measured (random normal x and w, these tests' shapes): the largest Winograd error is about 2x
to 3x the direct path's largest error (see ``test_error_beside_the_direct_paths``), and both
stay one to two orders of magnitude below their bounds.

Non-finite input: an ``inf`` or NaN in a tile's 4x4 patch makes the whole 2x2 tile (and every
tile that reads that pixel) NaN or ``inf``, where the direct path keeps it to the outputs
whose 3x3 window holds it: a superset, tested below.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from npfrcnn import ops
from npfrcnn.kernels.cpu import winograd as wk
from npfrcnn.ops import conv as conv_mod
from tests.helpers import assert_same

EPS = 2.0**-24
EPS64 = 2.0**-53

BT = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], dtype=np.float64)
G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], dtype=np.float64)
AT = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], dtype=np.float64)


@pytest.fixture(autouse=True)
def _winograd_on(monkeypatch):
    """On, whatever ``NPFRCNN_CONV`` the suite runs under (``direct`` turns it off)."""
    monkeypatch.setattr(conv_mod, "WINOGRAD", True)


def gamma(n: int, u: float = EPS) -> float:
    return n * u / (1 - n * u)


def winograd_factor(cin: int) -> float:
    """``rho_M + (2 gamma_2 + gamma_2^2)(1 + rho_M)`` (module docstring): ``(C + 7) eps``."""
    g2 = gamma(2)
    e_u = EPS + 2.0**-50
    rho_m = gamma(cin) * (1 + e_u) * (1 + g2) + e_u * (1 + g2) + g2
    return rho_m + (2 * g2 + g2 * g2) * (1 + rho_m)


def pad64(x: np.ndarray, pads, extra=(0, 0)) -> np.ndarray:
    """float64 zero-padded copy; ``extra`` more zero rows/columns at the bottom/right."""
    (pt, pb), (pl, pr) = pads
    return np.pad(x.astype(np.float64), ((0, 0), (pt, pb + extra[0]), (pl, pr + extra[1]),
                                          (0, 0)))


def conv64(x: np.ndarray, k: np.ndarray, pads) -> np.ndarray:
    """The exact-enough direct 3x3 cross-correlation in float64, ``[N, Ho, Wo, Cout]``."""
    xp = pad64(x, pads)
    k64 = k.astype(np.float64)
    ho, wo = xp.shape[1] - 2, xp.shape[2] - 2
    out = np.zeros((x.shape[0], ho, wo, k.shape[3]))
    for i in range(3):
        for j in range(3):
            out += xp[:, i:i + ho, j:j + wo, :] @ k64[i, j]
    return out


def winograd_magnitude(x: np.ndarray, k: np.ndarray, pads) -> np.ndarray:
    """``S = |A^T| (sum_c |G||g_c||G^T| . |B^T||d_c||B|) |A|`` per output, float64."""
    n = x.shape[0]
    (pt, pb), (pl, pr) = pads
    ho, wo = x.shape[1] + pt + pb - 2, x.shape[2] + pl + pr - 2
    th, tw = -(-ho // 2), -(-wo // 2)
    xp = np.abs(pad64(x, pads, (2 * th + 2 - (ho + 2), 2 * tw + 2 - (wo + 2))))
    tiles = np.empty((n, th, tw, 4, 4, x.shape[3]))
    for i in range(4):
        for j in range(4):
            tiles[:, :, :, i, j] = xp[:, i:i + 2 * th:2, j:j + 2 * tw:2]
    d = np.einsum("ak,ntsklc,bl->ntsabc", np.abs(BT), tiles, np.abs(BT))
    w = np.einsum("ai,ijco,bj->abco", np.abs(G), np.abs(k.astype(np.float64)), np.abs(G))
    m = np.einsum("ntsabc,abco->ntsabo", d, w)
    y = np.einsum("pa,ntsabo,qb->ntpsqo", np.abs(AT), m, np.abs(AT))
    return y.reshape(n, 2 * th, 2 * tw, -1)[:, :ho, :wo]


def direct_magnitude(x: np.ndarray, k: np.ndarray, pads) -> np.ndarray:
    return conv64(np.abs(x), np.abs(k), pads)


def direct(x, k, b=None, pads=((1, 1), (1, 1))):
    """The cpu backend's direct path (im2col + sgemm), the switch off."""
    saved = conv_mod.WINOGRAD
    conv_mod.WINOGRAD = False
    try:
        return ops.conv2d(x, k, b, padding=pads, backend="cpu")
    finally:
        conv_mod.WINOGRAD = saved


def check_within_bounds(x, k, pads, bias=None):
    """Winograd (cpu) and direct errors against float64, each within its bound; returns
    ``(max Winograd error, max direct error)``."""
    assert conv_mod.uses_winograd(k.shape, (1, 1), (1, 1))
    got = ops.conv2d(x, k, bias, padding=pads, backend="cpu")
    dir_ = direct(x, k, bias, pads)
    exact = conv64(x, k, pads)
    dmag = direct_magnitude(x, k, pads)
    ref_err = gamma(9 * x.shape[3], EPS64) * dmag  # the float64 reference's own error
    bound_w = winograd_factor(x.shape[3]) * winograd_magnitude(x, k, pads) + ref_err
    bound_d = gamma(9 * x.shape[3]) * dmag + ref_err
    if bias is not None:
        exact = exact + bias.astype(np.float64)
        bound_w = bound_w + EPS * np.abs(got.astype(np.float64))
        bound_d = bound_d + EPS * np.abs(dir_.astype(np.float64))
    assert got.shape == exact.shape and got.dtype == np.float32
    err_w = np.abs(got.astype(np.float64) - exact)
    err_d = np.abs(dir_.astype(np.float64) - exact)
    assert np.all(err_w <= bound_w), float(np.max(err_w / bound_w))
    assert np.all(err_d <= bound_d), float(np.max(err_d / bound_d))
    return float(err_w.max()), float(err_d.max())


def _rand(rng, shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


# ------------------------------------------------------------------------- the algorithm


def test_transform_matrices_compute_the_2x2_correlation():
    """``A^T [(G g G^T) . (B^T d B)] A`` is the 2x2 valid correlation of ``d`` with ``g``
    (float64), and the kernel module uses these matrices."""
    rng = np.random.default_rng(0)
    d, g = rng.standard_normal((4, 4)), rng.standard_normal((3, 3))
    y = AT @ ((G @ g @ G.T) * (BT @ d @ BT.T)) @ AT.T
    want = np.array([[np.sum(d[p:p + 3, q:q + 3] * g) for q in range(2)] for p in range(2)])
    np.testing.assert_allclose(y, want, rtol=1e-12, atol=1e-12)
    assert_same(wk.BT, BT)
    assert_same(wk.G, G)
    assert_same(wk.AT, AT)


def test_the_coefficients_of_the_sum_bound_are_at_most_two():
    """``c_p(i, k) = sum_a |A^T[p,a]| |G[a,i]| |B^T[a,k]| <= 2``: the ``4 (K/9 + 7)`` form."""
    c = np.einsum("pa,ai,ak->pik", np.abs(AT), np.abs(G), np.abs(BT))
    assert c.max() == 2.0
    # S <= 4 sum_c ||g_c||_1 ||d_c||_1 on random data, per output
    rng = np.random.default_rng(1)
    x, k = _rand(rng, (1, 6, 6, 3)), _rand(rng, (3, 3, 3, 2))
    s = winograd_magnitude(x, k, ((0, 0), (0, 0)))  # 4x4 outputs, tiles at (0,0),(0,2),(2,*)
    wsum = np.abs(k.astype(np.float64)).sum(axis=(0, 1))  # [Cin, Cout]
    for r in range(2):
        for q in range(2):
            dsum = np.abs(x[0, 2 * r:2 * r + 4, 2 * q:2 * q + 4].astype(np.float64)).sum((0, 1))
            coarse = 4 * dsum @ wsum  # [Cout]
            assert np.all(s[0, 2 * r:2 * r + 2, 2 * q:2 * q + 2] <= coarse)


def test_kernel_transform_is_g_g_gt_rounded_once():
    rng = np.random.default_rng(2)
    k = _rand(rng, (3, 3, 5, 7))
    u = np.full((16, 5, 7), np.nan, dtype=np.float32)
    wk.kernel_transform(k, u)
    want = np.einsum("ai,ijco,bj->abco", G, k.astype(np.float64), G).reshape(16, 5, 7)
    assert_same(u, want.astype(np.float32))


# ----------------------------------------------------------------------- the bound, by shape


@pytest.mark.parametrize(
    "shape, cout, pads",
    [
        ((1, 8, 10, 16), 16, ((1, 1), (1, 1))),  # even sizes, SAME-like padding
        ((2, 7, 9, 24), 20, ((1, 1), (1, 1))),  # batch 2, odd H and W: cropped half tiles
        ((1, 9, 6, 17), 33, ((0, 0), (0, 0))),  # VALID: odd Ho = 7
        ((2, 6, 7, 16), 16, ((0, 2), (2, 1))),  # asymmetric padding
        ((1, 3, 3, 32), 16, ((1, 1), (1, 1))),  # a single tile row and column
        ((1, 1, 5, 16), 18, ((1, 1), (1, 1))),  # one input row
        ((1, 12, 14, 256), 64, ((1, 1), (1, 1))),  # large Cin (an FPN/RPN conv)
        ((3, 7, 7, 96), 40, ((1, 1), (1, 1))),  # RoI-head-like 7x7 maps
    ],
)
def test_winograd_within_its_bound(shape, cout, pads):
    rng = np.random.default_rng(sum(shape) + cout)
    x, k = _rand(rng, shape), _rand(rng, (3, 3, shape[3], cout), 0.1)
    check_within_bounds(x, k, pads)


def test_bias_is_added_after_the_transform():
    rng = np.random.default_rng(3)
    x, k, b = _rand(rng, (2, 9, 8, 16)), _rand(rng, (3, 3, 16, 24)), _rand(rng, (24,))
    check_within_bounds(x, k, ((1, 1), (1, 1)), b)
    # one float32 add after the convolution, as the direct path
    no_bias = ops.conv2d(x, k, padding=((1, 1), (1, 1)))
    assert_same(ops.conv2d(x, k, b, padding=((1, 1), (1, 1))), no_bias + b)


def test_error_beside_the_direct_paths():
    """Winograd's largest error against float64 is a small multiple of the direct path's
    (both within their bounds); measured 2x to 3x here, reported, not a tolerance."""
    rng = np.random.default_rng(4)
    ratios = []
    for shape, cout in [((1, 24, 30, 256), 64), ((2, 13, 11, 64), 64), ((1, 20, 20, 16), 16)]:
        x, k = _rand(rng, shape), _rand(rng, (3, 3, shape[3], cout), 0.05)
        err_w, err_d = check_within_bounds(x, k, ((1, 1), (1, 1)))
        ratios.append(err_w / err_d)
    print("max Winograd error / max direct error:", [f"{r:.2f}" for r in ratios])


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 2), h=st.integers(1, 11), w=st.integers(1, 11),
    cin=st.integers(16, 40), cout=st.integers(16, 24), pads=st.tuples(*[st.integers(0, 2)] * 4),
    scale=st.sampled_from([1e-3, 1.0, 1e3]), seed=st.integers(0, 2**16),
)
def test_property_within_the_bound(n, h, w, cin, cout, pads, scale, seed):
    pt, pb, pl, pr = pads
    if h + pt + pb < 3 or w + pl + pr < 3:
        return  # smaller than the kernel: refused (tested in test_layers)
    rng = np.random.default_rng(seed)
    x, k = _rand(rng, (n, h, w, cin), scale), _rand(rng, (3, 3, cin, cout))
    check_within_bounds(x, k, ((pt, pb), (pl, pr)))


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 3), h=st.integers(1, 10), w=st.integers(1, 10), cin=st.integers(16, 24),
    cout=st.integers(16, 20), pads=st.tuples(*[st.integers(0, 2)] * 4), bias=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_property_exact_on_small_integers(n, h, w, cin, cout, pads, bias, seed):
    """Integers in [-3, 3]: every V is an integer, every U a multiple of 1/4, every sum
    below 2**24 quarters, so Winograd is exact and equals the reference bit for bit."""
    pt, pb, pl, pr = pads
    if h + pt + pb < 3 or w + pl + pr < 3:
        return
    rng = np.random.default_rng(seed)
    x = rng.integers(-3, 4, (n, h, w, cin)).astype(np.float32)
    k = rng.integers(-3, 4, (3, 3, cin, cout)).astype(np.float32)
    b = rng.integers(-3, 4, cout).astype(np.float32) if bias else None
    args = (x, k, b, 1, ((pt, pb), (pl, pr)))
    assert_same(ops.conv2d(*args, backend="cpu"), ops.conv2d(*args, backend="numpy"))


# ---------------------------------------------------------------- chunks, memory, threads


@pytest.mark.parametrize("budget", [1, 20_000, 150_000])
def test_chunks_of_tile_rows(monkeypatch, budget):
    """A tiny budget: one tile row per chunk; a larger one: chunks across images."""
    monkeypatch.setattr(conv_mod, "WINOGRAD_BUDGET_BYTES", budget)
    rng = np.random.default_rng(5)
    x = rng.integers(-3, 4, (3, 9, 11, 16)).astype(np.float32)
    k = rng.integers(-3, 4, (3, 3, 16, 16)).astype(np.float32)
    for pads in (((1, 1), (1, 1)), ((0, 0), (0, 0)), ((2, 0), (0, 1))):
        assert_same(ops.conv2d(x, k, padding=pads), ops.conv2d(x, k, padding=pads,
                                                               backend="numpy"))
    xf, kf = _rand(rng, (3, 9, 11, 16)), _rand(rng, (3, 3, 16, 16))
    check_within_bounds(xf, kf, ((1, 1), (1, 1)))


def test_memory_stays_within_the_budget(monkeypatch):
    """No padded copy of the input and no full V or M: the output, U and the two chunk
    buffers (within the budget) only."""
    monkeypatch.setattr(conv_mod, "WINOGRAD_BUDGET_BYTES", 4 * 2**20)  # V + M < 1/5 of x
    x = np.ones((1, 200, 256, 64), dtype=np.float32)
    k = np.ones((3, 3, 64, 64), dtype=np.float32) / 64
    ops.conv2d(x[:, :8], k, padding=((1, 1), (1, 1)))  # compiled before measuring
    out_bytes = x.size * 4
    u_bytes = 16 * 64 * 64 * 4  # U
    tracemalloc.start()
    try:
        out = ops.conv2d(x, k, padding=((1, 1), (1, 1)))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert out.shape == x.shape
    assert peak <= out_bytes + u_bytes + conv_mod.WINOGRAD_BUDGET_BYTES + 2**20
    # the padded copy alone would be 202 * 258 * 64 * 4 bytes = 13 MB
    assert peak < out_bytes + 202 * 258 * 64 * 4


def test_same_bits_across_numba_thread_counts():
    import numba

    rng = np.random.default_rng(6)
    x, k = _rand(rng, (2, 21, 19, 32)), _rand(rng, (3, 3, 32, 24))
    before = numba.get_num_threads()
    try:
        results = []
        for threads in sorted({1, before}):
            numba.set_num_threads(threads)
            results.append(ops.conv2d(x, k, padding=((1, 1), (1, 1))))
    finally:
        numba.set_num_threads(before)
    for r in results[1:]:
        assert_same(r, results[0])


# ------------------------------------------------------------------- the rule and the switch


@pytest.mark.parametrize(
    "kshape, strides, dilations, used",
    [
        ((3, 3, 16, 16), (1, 1), (1, 1), True),
        ((3, 3, 256, 256), (1, 1), (1, 1), True),
        ((3, 3, 15, 64), (1, 1), (1, 1), False),  # Cin below the threshold
        ((3, 3, 64, 15), (1, 1), (1, 1), False),  # Cout below the threshold (the RPN's cls)
        ((3, 3, 64, 64), (2, 2), (1, 1), False),  # strided
        ((3, 3, 64, 64), (1, 2), (1, 1), False),
        ((3, 3, 64, 64), (1, 1), (2, 2), False),  # dilated
        ((1, 1, 64, 64), (1, 1), (1, 1), False),
        ((3, 2, 64, 64), (1, 1), (1, 1), False),
        ((5, 5, 64, 64), (1, 1), (1, 1), False),
    ],
)
def test_when_winograd_is_used(kshape, strides, dilations, used):
    assert conv_mod.uses_winograd(kshape, strides, dilations) is used


def test_switch_off_gives_the_direct_path_bitwise(monkeypatch):
    rng = np.random.default_rng(7)
    x, k, b = _rand(rng, (2, 13, 10, 32)), _rand(rng, (3, 3, 32, 16)), _rand(rng, (16,))
    args = (x, k, b, 1, ((1, 1), (1, 1)))
    wino = ops.conv2d(*args)
    monkeypatch.setattr(conv_mod, "WINOGRAD", False)
    assert not conv_mod.uses_winograd(k.shape, (1, 1), (1, 1))
    got = ops.conv2d(*args)
    assert_same(got, ops.conv2d(*args, backend="numpy"))
    assert not np.array_equal(got, wino)  # the two paths really differ on random floats


def _in_fresh_python(code: str, value: str | None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("NPFRCNN_CONV", None)
    if value is not None:
        env["NPFRCNN_CONV"] = value
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=300)


def test_environment_variable_is_read_at_import():
    code = (
        "import numpy as np\n"
        "from npfrcnn import ops\n"
        "from npfrcnn.ops import conv\n"
        "rng = np.random.default_rng(0)\n"
        "x = rng.standard_normal((1, 6, 7, 16)).astype(np.float32)\n"
        "k = rng.standard_normal((3, 3, 16, 16)).astype(np.float32)\n"
        "same = np.array_equal(ops.conv2d(x, k, padding='SAME'),\n"
        "                      ops.conv2d(x, k, padding='SAME', backend='numpy'))\n"
        "print(conv.WINOGRAD, same)\n"
    )
    for value, want in [(None, "True False"), ("", "True False"), ("auto", "True False"),
                        ("winograd", "True False"), ("WinoGrad", "True False"),
                        ("direct", "False True"), ("DIRECT", "False True")]:
        proc = _in_fresh_python(code, value)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert proc.stdout.split() == want.split(), (value, proc.stdout)
    proc = _in_fresh_python("import npfrcnn.ops", "fast")
    assert proc.returncode != 0
    assert "NPFRCNN_CONV='fast' is not a convolution mode; set NPFRCNN_CONV=direct" in proc.stderr


# ------------------------------------------------------------------------ non-finite input


def test_non_finite_input_stays_non_finite():
    """An inf or NaN reaches at least every output the direct path gives non-finite (the
    whole tiles that read it); outputs of tiles that do not read it are within the bound."""
    rng = np.random.default_rng(8)
    x, k = _rand(rng, (1, 12, 12, 16)), _rand(rng, (3, 3, 16, 16))
    x[0, 5, 6, 3] = np.inf
    x[0, 10, 1, 7] = np.nan
    with np.errstate(invalid="ignore"):
        got = ops.conv2d(x, k, padding=((1, 1), (1, 1)))
        ref = ops.conv2d(x, k, padding=((1, 1), (1, 1)), backend="numpy")
    assert np.all(~np.isfinite(got[~np.isfinite(ref)]))
    # tiles (2x2 outputs) whose 4x4 patch holds neither pixel are finite
    bad = np.zeros((6, 6), bool)
    for r, c in [(5, 6), (10, 1)]:
        for tr in range(6):
            for tc in range(6):
                if 2 * tr - 1 <= r <= 2 * tr + 2 and 2 * tc - 1 <= c <= 2 * tc + 2:
                    bad[tr, tc] = True
    finite = ~np.kron(bad, np.ones((2, 2), bool))
    assert np.all(np.isfinite(got[0][finite]))
    assert not np.all(np.isfinite(got[0][~finite]))
