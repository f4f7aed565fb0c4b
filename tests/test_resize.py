"""npfrcnn.ops.resize: torch's bilinear and nearest resizes, bit for bit, and torchvision's
output size.

* Without torch: hand-worked weights and values, invariants (a constant image stays constant
  within a derived bound, and exactly for 0 and powers of two in the generic formulas; equal
  sizes copy; an axis of equal size is resized row by row), the Numba kernel against the NumPy
  reference bitwise (across Numba thread counts), torchvision's sizes on hand-worked cases, the
  dispatch rule, errors, and the speed of an 800 x 1333 resize.
* With torch (skipped without it): ``F.interpolate`` bitwise for each formula under the
  condition that selects it (thread count, output size, ``channels_last``, and
  ``ATEN_CPU_CAPABILITY`` in a subprocess), and ``torchvision_resize_size`` against
  ``GeneralizedRCNNTransform`` itself (on ``meta`` tensors, so no pixels are computed).

Every torch call sets its thread count right before it runs: a Numba ``parallel=True`` kernel
(threading layer ``omp``) resets the OpenMP thread count that ``torch.get_num_threads()``
reports.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numba
import numpy as np
import pytest
from helpers import assert_same

from npfrcnn.ops.resize import (
    BILINEAR_FORMULAS,
    _linear_axis,
    resize_bilinear,
    resize_nearest,
    torch_bilinear_formula,
    torchvision_resize_size,
)

try:
    import torch
    import torch.nn.functional as F
except ImportError:  # the oracle tests below skip; the rest still run
    torch = None

needs_torch = pytest.mark.skipif(torch is None, reason="torch is not installed (the oracle)")
f32 = np.float32
FORMULAS = tuple(BILINEAR_FORMULAS)
BACKENDS = ("numpy", "cpu")

# (in_h, in_w, out_h, out_w): up and down, equal on one axis or both, odd, 1-pixel axes, the
# 161 x 161 -> 799 trap, and outputs on both sides of torch's out_h + out_w <= 128 switch.
SIZES = [
    (1, 1, 1, 1), (1, 1, 5, 7), (5, 7, 1, 1), (1, 7, 3, 9), (7, 1, 9, 3), (2, 2, 1, 1),
    (3, 3, 3, 3), (10, 10, 10, 20), (10, 20, 10, 10), (13, 17, 29, 31), (29, 31, 13, 17),
    (31, 33, 33, 31), (50, 70, 64, 64), (64, 64, 64, 65), (40, 50, 100, 120),
    (100, 80, 60, 70), (100, 150, 200, 300), (200, 300, 100, 150), (97, 5, 300, 5),
    (5, 97, 5, 300), (161, 161, 799, 799), (480, 640, 800, 1066), (427, 640, 800, 1199),
    (640, 427, 1199, 800), (1000, 1500, 800, 1200),
]  # fmt: skip
LARGE = 200_000  # outputs above this many values skip the (slow) NumPy reference vs torch


def _bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=f32).view(np.uint32)


def _same_bits(got: np.ndarray, want: np.ndarray, msg: str = "") -> None:
    assert got.shape == want.shape and got.dtype == want.dtype == f32, msg
    bad = int(np.count_nonzero(_bits(got) != _bits(want)))
    assert bad == 0, f"{bad} of {got.size} values differ {msg}"


def _image(rng: np.random.Generator, n: int, h: int, w: int, c: int) -> np.ndarray:
    return rng.standard_normal((n, h, w, c)).astype(f32)


# ---------------------------------------------------------------------------------------------
# Hand-worked cases (no torch)
# ---------------------------------------------------------------------------------------------


def test_hand_worked_axis_weights():
    # 2 -> 4: s = 0.5, src = 0.5 * (i + 0.5) - 0.5 = -0.25, 0.25, 0.75, 1.25 (all exact);
    # -0.25 clamps to 0; 1.25 has i0 = min(1, 1) = 1, i1 = 1 (last pixel), l1 = 0.25.
    for fused in (True, False):
        i0, i1, l0, l1 = _linear_axis(2, 4, fused)
        assert i0.tolist() == [0, 0, 0, 1] and i1.tolist() == [1, 1, 1, 1]
        assert l1.tolist() == [0.0, 0.25, 0.75, 0.25] and l0.tolist() == [1.0, 0.75, 0.25, 0.75]
    # Equal sizes: the pixel itself twice, weights (1, 0).
    i0, i1, l0, l1 = _linear_axis(3, 3, True)
    assert i0.tolist() == i1.tolist() == [0, 1, 2]
    assert l0.tolist() == [1, 1, 1] and l1.tolist() == [0, 0, 0]


def test_hand_worked_source_coordinate_fma():
    # 3 -> 7, output 1: s = f32(3/7) = 0.4285714328..., src = s * 1.5 - 0.5 with l1 = src
    # (i0 = 0). Fused: the exact 0.1428571492... (s * 1.5 is exact in float64) rounds once, to
    # 0.14285715. Plain: s * 1.5 first rounds to 0.64285713, minus 0.5 gives 0.14285713.
    s = f32(3) / f32(7)
    fused = f32(np.float64(s) * 1.5 - 0.5)
    plain = f32(s * f32(1.5)) - f32(0.5)
    assert fused == f32(0.14285715) and plain == f32(0.14285713)
    assert _linear_axis(3, 7, True)[3][1] == fused
    assert _linear_axis(3, 7, False)[3][1] == plain


def test_hand_worked_values():
    # A 1 x 2 row [0, 1] to width 4 (height 1 -> 1 is a copy): [0, 0.25, 0.75, 1], exact.
    x = np.array([0.0, 1.0], f32).reshape(1, 1, 2, 1)
    for formula in FORMULAS:
        for backend in BACKENDS:
            got = resize_bilinear(x, 1, 4, formula, backend)
            assert_same(got, np.array([0, 0.25, 0.75, 1], f32).reshape(1, 1, 4, 1))
    # 2 x 2 -> 1 x 1: src = 2 * 0.5 - 0.5 = 0.5 on both axes: the mean of the 4 pixels.
    x = np.array([[1.0, 2.0], [3.0, 6.0]], f32).reshape(1, 2, 2, 1)
    for formula in FORMULAS:
        assert_same(resize_bilinear(x, 1, 1, formula), np.full((1, 1, 1, 1), 3.0, f32))


def test_hand_worked_nearest():
    x = np.arange(5, dtype=f32).reshape(1, 1, 5, 1)
    # 5 -> 3: s = f32(5/3) = 1.6666666; i * s = 0, 1.67, 3.33 -> 0, 1, 3.
    assert resize_nearest(x, 1, 3)[0, 0, :, 0].tolist() == [0, 1, 3]
    # 3 -> 5 (of the first 3): s = f32(0.6): 0, 0.6, 1.2, 1.8, 2.4 -> 0, 0, 1, 1, 2.
    assert resize_nearest(x[:, :, :3], 1, 5)[0, 0, :, 0].tolist() == [0, 0, 1, 1, 2]
    # 2x: i // 2.
    assert resize_nearest(x, 1, 10)[0, 0, :, 0].tolist() == [v // 2 for v in range(10)]


# ---------------------------------------------------------------------------------------------
# Invariants (no torch)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("formula", FORMULAS)
def test_constant_image_stays_constant(formula):
    # Zero stays zero exactly. With 0 <= l1 <= 1 and l0 = f32(1 - l1), l0 + l1 is within
    # 2**-25 of 1, which rounds to 1; so in the generic formulas (one lerp per axis) a constant
    # power of two stays exact. Any other constant v: each lerp weight's complement is off by
    # <= eps/2, and there are at most 4 products and 3 sums of non-negative terms, each rounding
    # by <= eps/2 relative: to first order |out - v| < 5 ulp(v) (measured: 2).
    rng = np.random.default_rng(0)
    for h, w, oh, ow in [(13, 17, 29, 31), (29, 31, 13, 17), (7, 9, 100, 3), (48, 64, 80, 106)]:
        assert_same(
            resize_bilinear(np.zeros((1, h, w, 3), f32), oh, ow, formula),
            np.zeros((1, oh, ow, 3), f32),
        )
        for v in [1.0, 2.0**-10, 256.0, *rng.uniform(-300, 300, 8)]:
            v32 = f32(v)
            got = resize_bilinear(np.full((1, h, w, 3), v32, f32), oh, ow, formula)
            err = np.abs(got.astype(np.float64) - np.float64(v32)) / np.spacing(v32)
            assert err.max() < 5, (v, formula)
            if formula in ("fma_channels_first", "plain") and np.log2(abs(v)) % 1 == 0:
                assert np.all(got == v32), (v, formula)


@pytest.mark.parametrize("formula", FORMULAS)
def test_equal_sizes_copy(formula):
    # Weights (1, 0) on the same pixel: x * 1 + x * 0 is x for every finite x, -0.0 included
    # (-0 + -0 = -0); an infinite pixel gives inf + NaN = NaN, as torch does.
    rng = np.random.default_rng(1)
    x = _image(rng, 2, 9, 11, 5)
    x[0, 1, 2] = -0.0
    for backend in BACKENDS:
        assert_same(resize_bilinear(x, 9, 11, formula, backend), x)
        assert_same(resize_nearest(x, 9, 11, backend), x)
    x[1, 3, 4, 0] = np.inf
    got = resize_bilinear(x, 9, 11, formula)
    assert np.isnan(got[1, 3, 4, 0]) and np.count_nonzero(np.isnan(got)) == 1


@pytest.mark.parametrize("formula", FORMULAS)
def test_an_equal_axis_is_resized_line_by_line(formula):
    rng = np.random.default_rng(2)
    x = _image(rng, 1, 6, 13, 3)
    rows = resize_bilinear(x, 6, 29, formula)
    for i in range(6):
        assert_same(rows[:, i : i + 1], resize_bilinear(x[:, i : i + 1], 1, 29, formula))
    cols = resize_bilinear(x, 17, 13, formula)
    for j in range(13):
        assert_same(cols[:, :, j : j + 1], resize_bilinear(x[:, :, j : j + 1], 17, 1, formula))


@pytest.mark.parametrize("formula", FORMULAS)
def test_kernel_matches_reference(formula):
    rng = np.random.default_rng(3)
    for h, w, oh, ow in SIZES[:20]:
        for c in (1, 3, 11):  # 11: the channels-last formulas' vector (8) and scalar channels
            x = _image(rng, 2, h, w, c)
            _same_bits(
                resize_bilinear(x, oh, ow, formula, "cpu"),
                resize_bilinear(x, oh, ow, formula, "numpy"),
                f"{(h, w, oh, ow, c)}",
            )
    for h, w, oh, ow in SIZES:
        x = _image(rng, 1, h, w, 4)
        _same_bits(resize_nearest(x, oh, ow, "cpu"), resize_nearest(x, oh, ow, "numpy"))


def test_kernel_is_the_same_across_numba_thread_counts():
    rng = np.random.default_rng(4)
    x = _image(rng, 2, 61, 83, 3)
    before = numba.get_num_threads()
    try:
        results = []
        for threads in sorted({1, before}):
            numba.set_num_threads(threads)
            results.append((resize_bilinear(x, 120, 170), resize_nearest(x, 122, 166)))
    finally:
        numba.set_num_threads(before)
    for bil, near in results[1:]:
        assert_same(bil, results[0][0])
        assert_same(near, results[0][1])


def test_empty_batch_and_dtypes():
    assert resize_bilinear(np.zeros((0, 4, 5, 3), f32), 8, 9).shape == (0, 8, 9, 3)
    got = resize_bilinear(np.ones((1, 4, 5, 3), np.uint8), 8, 9)
    assert got.dtype == f32 and np.all(got == 1)
    assert resize_nearest(np.ones((1, 4, 5, 2), np.float64), 2, 3).dtype == f32


def test_bad_input_is_refused():
    x = np.zeros((1, 4, 5, 3), f32)
    with pytest.raises(ValueError, match="4 dimensions"):
        resize_bilinear(x[0], 8, 8)
    with pytest.raises(ValueError, match="positive height"):
        resize_bilinear(np.zeros((1, 0, 5, 3), f32), 8, 8)
    with pytest.raises(ValueError, match="out_h"):
        resize_bilinear(x, 0, 8)
    with pytest.raises(ValueError, match="out_w"):
        resize_nearest(x, 8, 2.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="formula"):
        resize_bilinear(x, 8, 8, "fma")
    with pytest.raises(ValueError, match="backend"):
        resize_bilinear(x, 8, 8, backend="cuda")
    with pytest.raises(ValueError, match="real numeric"):
        resize_nearest(x.astype(complex), 8, 8)


def test_speed_of_a_detection_sized_resize():
    # The spec's budget: an 800 x 1333 x 3 resize well under 100 ms on the cpu backend
    # (measured about 10 ms on 2 cores). Compilation / cache loading is timed apart.
    x = _image(np.random.default_rng(5), 1, 600, 900, 3)
    t0 = time.perf_counter()
    resize_bilinear(x[:, :8, :8], 16, 16)
    first = time.perf_counter() - t0
    runs = []
    for _ in range(3):
        t0 = time.perf_counter()
        resize_bilinear(x, 800, 1333)
        runs.append(time.perf_counter() - t0)
    print(f"\nresize 600x900 -> 800x1333: {1000 * min(runs):.1f} ms (first call {first:.2f} s)")
    assert min(runs) < 0.1


# ---------------------------------------------------------------------------------------------
# Sizes and dispatch (no torch)
# ---------------------------------------------------------------------------------------------


def test_torchvision_resize_size_hand_worked():
    assert torchvision_resize_size(161, 161) == (799, 799)  # 161 * (800 / 161) = 799.999...
    assert torchvision_resize_size(195, 260) == (799, 1066)
    assert torchvision_resize_size(480, 640) == (800, 1066)  # 640 * 5/3 = 1066.67
    assert torchvision_resize_size(1000, 1000) == (800, 800)
    assert torchvision_resize_size(100, 2000) == (66, 1333)  # max_size binds: 1333 / 2000
    assert torchvision_resize_size(500, 600, 600, 1000) == (600, 720)
    assert torchvision_resize_size(161, 161, 800.0, 1333.0) == (799, 799)
    with pytest.raises(ValueError, match="0 x|x 0"):
        torchvision_resize_size(1, 100_000)
    with pytest.raises(ValueError, match="h must be"):
        torchvision_resize_size(0, 10)
    with pytest.raises(ValueError, match="min_size"):
        torchvision_resize_size(10, 10, -1)


def test_torch_bilinear_formula_dispatch():
    assert torch_bilinear_formula(3, 800, 1066, 2) == "fma_channels_first"
    assert torch_bilinear_formula(3, 800, 1066, 1) == "fma_channels_last"
    assert torch_bilinear_formula(1, 800, 1066, 1) == "fma_channels_first"  # masks
    assert torch_bilinear_formula(3, 64, 64, 2) == "fma_channels_last"  # out_h + out_w <= 128
    assert torch_bilinear_formula(3, 64, 65, 2) == "fma_channels_first"
    assert torch_bilinear_formula(4, 800, 1066, 2, channels_last_input=True) == "fma_channels_last"
    assert torch_bilinear_formula(3, 800, 1066, 2, channels_last_input=True) == (
        "fma_channels_first"
    )
    assert torch_bilinear_formula(3, 800, 1066, 2, "default") == "plain"
    assert torch_bilinear_formula(3, 800, 1066, 1, "DEFAULT") == "plain_channels_last"
    assert torch_bilinear_formula(3, 800, 1066, 2, "AVX2") == "fma_channels_first"
    with pytest.raises(ValueError, match="capability"):
        torch_bilinear_formula(3, 8, 8, 1, "neon")


# ---------------------------------------------------------------------------------------------
# Against torch
# ---------------------------------------------------------------------------------------------


def _torch_bilinear(x: np.ndarray, oh: int, ow: int, threads: int, channels_last: bool = False):
    assert torch is not None
    t = torch.from_numpy(x).permute(0, 3, 1, 2)
    t = t.contiguous(memory_format=torch.channels_last) if channels_last else t.contiguous()
    torch.set_num_threads(threads)
    assert torch.get_num_threads() == threads
    out = F.interpolate(t, size=(oh, ow), mode="bilinear", align_corners=False)
    return out.permute(0, 2, 3, 1).contiguous().numpy()


def _capability() -> str:
    assert torch is not None
    cap = torch.backends.cpu.get_cpu_capability().lower()
    if cap not in ("avx512", "avx2", "default"):
        pytest.skip(f"ATen CPU capability {cap} is not one this module models")
    return cap


@needs_torch
@pytest.mark.parametrize("threads", [2, 1])
def test_bilinear_matches_torch_rgb(threads):
    # threads > 1: "fma_channels_first" (except small outputs); 1: "fma_channels_last".
    cap = _capability()
    rng = np.random.default_rng(6)
    for h, w, oh, ow in SIZES:
        x = _image(rng, 2, h, w, 3)
        want = _torch_bilinear(x, oh, ow, threads)
        formula = torch_bilinear_formula(3, oh, ow, threads, cap)
        backends = ("cpu",) if want.size > LARGE else BACKENDS
        for backend in backends:
            got = resize_bilinear(x, oh, ow, formula, backend)
            _same_bits(got, want, f"{(h, w, oh, ow)} {formula} {backend}")


@needs_torch
def test_formulas_are_distinguished_by_torch():
    # The right formula is needed: on a detection-sized resize the others differ widely.
    cap = _capability()
    x = _image(np.random.default_rng(7), 1, 240, 320, 3)
    for threads in (2, 1):
        want = _torch_bilinear(x, 400, 533, threads)
        right = torch_bilinear_formula(3, 400, 533, threads, cap)
        for formula in FORMULAS:
            bad = np.count_nonzero(_bits(resize_bilinear(x, 400, 533, formula)) != _bits(want))
            assert (bad == 0) == (formula == right), (threads, formula, bad)


@needs_torch
@pytest.mark.parametrize("channels_last", [False, True])
def test_bilinear_matches_torch_any_channels(channels_last):
    # Masks (C = 1), C = 4 in NCHW (generic kernel) and channels_last (channels-last kernel,
    # vector loop of 8 for C >= 8), on both sides of the out_h + out_w <= 128 switch.
    cap = _capability()
    rng = np.random.default_rng(8)
    for c in (1, 2, 4, 8, 11, 19):
        for h, w, oh, ow in [(13, 17, 29, 31), (40, 50, 100, 120), (100, 80, 60, 70), (9, 9, 5, 5)]:
            x = _image(rng, 2, h, w, c)
            for threads in (2, 1):
                want = _torch_bilinear(x, oh, ow, threads, channels_last)
                formula = torch_bilinear_formula(c, oh, ow, threads, cap, channels_last)
                for backend in BACKENDS:
                    got = resize_bilinear(x, oh, ow, formula, backend)
                    _same_bits(got, want, f"{(c, h, w, oh, ow, threads)} {formula} {backend}")


@needs_torch
def test_bilinear_matches_torch_on_non_finite_and_negative_zero():
    cap = _capability()
    rng = np.random.default_rng(9)
    for h, w, oh, ow in [(4, 5, 4, 5), (4, 5, 4, 200), (4, 5, 70, 90), (4, 5, 7, 5)]:
        x = _image(rng, 1, h, w, 3)
        x[0, 1, 1] = -0.0
        x[0, 2, 3, 0], x[0, 3, 4, 2], x[0, 0, 0, 1] = np.inf, -np.inf, np.nan
        for threads in (2, 1):
            want = _torch_bilinear(x, oh, ow, threads)
            got = resize_bilinear(x, oh, ow, torch_bilinear_formula(3, oh, ow, threads, cap))
            assert np.array_equal(np.isnan(got), np.isnan(want))
            finite = ~np.isnan(want)
            assert np.array_equal(_bits(got)[finite], _bits(want)[finite])


@needs_torch
def test_nearest_matches_torch():
    rng = np.random.default_rng(10)
    for c in (1, 3, 256):
        for h, w, oh, ow in [
            (25, 34, 50, 68),
            (13, 17, 25, 34),
            (7, 9, 13, 17),
            (50, 68, 25, 34),
            (10, 10, 10, 10),
            (1, 1, 5, 5),
            (5, 5, 1, 1),
            (3, 7, 11, 5),
            (33, 45, 67, 91),
            (100, 136, 200, 272),
        ]:
            x = _image(rng, 2, h, w, c)
            for threads in (2, 1):
                torch.set_num_threads(threads)
                t = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()
                want = F.interpolate(t, size=(oh, ow), mode="nearest")
                want = want.permute(0, 2, 3, 1).contiguous().numpy()
                for backend in BACKENDS:
                    _same_bits(resize_nearest(x, oh, ow, backend), want, f"{(c, h, w, oh, ow)}")


_ORACLE = r"""
import sys
import numpy as np, torch, torch.nn.functional as F
src, dst = sys.argv[1], sys.argv[2]
data = np.load(src)
out = {"capability": np.array(torch.backends.cpu.get_cpu_capability())}
for name in data.files:
    x = data[name]
    _, threads, oh, ow, cl = name.split("_")
    t = torch.from_numpy(x).permute(0, 3, 1, 2)
    t = t.contiguous(memory_format=torch.channels_last) if cl == "1" else t.contiguous()
    torch.set_num_threads(int(threads))
    y = F.interpolate(t, size=(int(oh), int(ow)), mode="bilinear", align_corners=False)
    out[name] = y.permute(0, 2, 3, 1).contiguous().numpy()
np.savez(dst, **out)
"""


@needs_torch
@pytest.mark.parametrize("capability", ["default", "avx2"])
def test_bilinear_matches_torch_under_other_capabilities(tmp_path, capability):
    # "default": no FMA anywhere ("plain", "plain_channels_last"); "avx2": as AVX-512.
    rng = np.random.default_rng(11)
    cases = [(h, w, oh, ow, 3, threads, False) for h, w, oh, ow in SIZES[:22] for threads in (2, 1)]
    cases += [(40, 50, 100, 120, c, 2, True) for c in (4, 11)]
    arrays = {}
    for i, (h, w, oh, ow, c, threads, cl) in enumerate(cases):
        arrays[f"c{i}_{threads}_{oh}_{ow}_{int(cl)}"] = _image(rng, 1, h, w, c)
    src, dst = tmp_path / "in.npz", tmp_path / "out.npz"
    np.savez(src, **arrays)
    env = {**os.environ, "ATEN_CPU_CAPABILITY": capability}
    r = subprocess.run(
        [sys.executable, "-c", _ORACLE, str(src), str(dst)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    out = dict(np.load(dst))
    got_cap = str(out.pop("capability")).lower()
    if got_cap != capability:
        pytest.skip(f"torch did not honour ATEN_CPU_CAPABILITY={capability} (runs {got_cap})")
    for (_h, _w, oh, ow, c, threads, cl), name in zip(cases, arrays, strict=True):
        formula = torch_bilinear_formula(c, oh, ow, threads, capability, cl)
        assert formula.startswith("plain") == (capability == "default")
        _same_bits(resize_bilinear(arrays[name], oh, ow, formula), out[name], f"{name} {formula}")


# ---------------------------------------------------------------------------------------------
# torchvision's output size against GeneralizedRCNNTransform itself
# ---------------------------------------------------------------------------------------------

_MEAN, _STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def _transform_size(transform, h: int, w: int):
    """The size ``transform.resize`` gives an ``h x w`` image (a ``meta`` tensor: no pixels)."""
    assert torch is not None
    try:
        out, _ = transform.resize(torch.empty(3, h, w, device="meta"), None)
    except (RuntimeError, ZeroDivisionError):  # an output side of 0 pixels (meta: the latter)
        return None
    return tuple(int(v) for v in out.shape[-2:])


def _our_size(h: int, w: int, min_size, max_size):
    try:
        return torchvision_resize_size(h, w, min_size, max_size)
    except ValueError:
        return None


def _trap_pairs(min_size: int, max_size: int, limit: int) -> list[tuple[int, int]]:
    """(h, w) whose float64 product lands just below an integer (the 799 trap)."""
    found = []
    for h in range(1, 1400):
        for w in (h, h + 1, (4 * h) // 3, 2 * h):
            scale = min(min_size / min(h, w), max_size / max(h, w))
            hs, ws = h * scale, w * scale
            if any(0 < round(v) - v < 1e-9 for v in (hs, ws)):
                found.append((h, w))
    return found[:limit]


def _check_sizes(pairs, min_size, max_size) -> int:
    from torchvision.models.detection.transform import GeneralizedRCNNTransform

    transform = GeneralizedRCNNTransform(min_size, max_size, _MEAN, _STD).eval()
    last = min_size[-1] if isinstance(min_size, tuple) else min_size
    for h, w in pairs:
        want = _transform_size(transform, h, w)
        assert _our_size(h, w, last, max_size) == want, (h, w, min_size, max_size)
    return len(pairs)


@needs_torch
def test_resize_size_matches_torchvision():
    pytest.importorskip("torchvision")
    traps = _trap_pairs(800, 1333, 60)
    assert (161, 161) in traps and len(traps) >= 20
    near = [
        (h, w)
        for h in (160, 161, 162, 195, 599, 600, 601, 799, 800, 801)
        for w in (h, h + 1, 1332, 1333, 1334, 2000, 2001, 5000)
    ]
    rng = np.random.default_rng(12)
    rand = [tuple(int(v) for v in rng.integers(1, 4000, 2)) for _ in range(120)]
    named = [(161, 161), (195, 260), (480, 640), (100, 2000), (1, 100_000), (2, 4000), (10_000, 7)]
    n = _check_sizes(traps + near + rand + named, 800, 1333)
    n += _check_sizes(_trap_pairs(600, 1000, 20) + rand[:40], 600, 1000)
    n += _check_sizes(rand[:40] + traps[:20], (640, 672, 704, 736, 768, 800), 1333)
    n += _check_sizes(rand[:30], 800.0, 1333.0)
    assert n > 400


@needs_torch
@pytest.mark.slow
def test_resize_size_matches_torchvision_scan():
    pytest.importorskip("torchvision")
    for min_size, max_size in [(800, 1333), (600, 1000), (1024, 1024), (512, 853)]:
        pairs = [(h, w) for h in range(1, 1200) for w in (h, h + 1, 2 * h, 3 * h + 1, 1333, 4000)]
        _check_sizes(pairs, min_size, max_size)
