"""The ``cpu`` fast paths around the convolution GEMMs give the reference's bits.

``backend="cpu"`` gathers patches, applies norms/biases/residuals/ReLU and max-pools in
parallel Numba passes (``npfrcnn.kernels.cpu.conv``); ``backend="numpy"`` is the readable
reference (NumPy copies and separate ufunc passes). Both feed the same BLAS GEMMs the same
matrices and round every elementwise step the same way, so the tolerance is **zero**: every
comparison here is bitwise (``view(np.int32)``), special values included (NaN, +-inf, -0.0,
subnormals), since a mismatch in any of them would be a different function, not rounding.

The ``cpu`` backend's other fast path, Winograd F(2x2, 3x3) for 3x3 stride-1 convolutions, does
not give the reference's bits (fewer multiplies, other roundings): every test here runs with it
switched off (``npfrcnn.ops.conv.WINOGRAD = False``, as ``NPFRCNN_CONV=direct`` does), so what
is compared is the gathers, the strided copies and the fused epilogues. Winograd is checked
against float64 within its derived bound in ``tests/test_winograd.py``, conv by conv and on
every Winograd conv of these same models.

The end-to-end check builds a small random torchvision model (the real framework writes the
checkpoint) and compares every backbone/FPN/RPN-head output of the two backends.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from npfrcnn import ops
from npfrcnn.ops import conv as conv_mod
from npfrcnn.ops.layers import affine_epilogue_, max_pool_3x3_s2_p1

SPECIALS = np.array(
    [np.nan, np.inf, -np.inf, -0.0, 0.0, 1e-45, -1e-45, 1e-39, 3.4e38, -3.4e38], np.float32
)


@pytest.fixture(autouse=True)
def _direct_convolutions(monkeypatch):
    """Winograd off: the cpu backend's convolutions are the direct path (module docstring)."""
    monkeypatch.setattr(conv_mod, "WINOGRAD", False)


def bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a).view(np.int32)


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal shapes and identical bit patterns, except that any NaN equals any NaN (numpy
    and LLVM may propagate different NaN payloads; a NaN is a NaN)."""
    if a.shape != b.shape:
        return False
    na, nb = np.isnan(a), np.isnan(b)
    return bool(np.array_equal(na, nb) and np.array_equal(bits(np.where(na, 0, a)),
                                                          bits(np.where(nb, 0, b))))


def with_specials(rng: np.random.Generator, x: np.ndarray, frac: float) -> np.ndarray:
    mask = rng.random(x.shape) < frac
    x[mask] = rng.choice(SPECIALS, int(mask.sum()))
    return x


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 2), h=st.integers(1, 12), w=st.integers(1, 12), cin=st.integers(1, 9),
    cout=st.integers(1, 6), kh=st.integers(1, 4), kw=st.integers(1, 4),
    sh=st.integers(1, 3), sw=st.integers(1, 3), dh=st.integers(1, 2), dw=st.integers(1, 2),
    pads=st.tuples(*[st.integers(0, 3)] * 4), bias=st.booleans(), seed=st.integers(0, 2**16),
)
def test_conv2d_cpu_equals_numpy(n, h, w, cin, cout, kh, kw, sh, sw, dh, dw, pads, bias, seed):
    rng = np.random.default_rng(seed)
    pt, pb, pl, pr = pads
    if (h + pt + pb) < (kh - 1) * dh + 1 or (w + pl + pr) < (kw - 1) * dw + 1:
        return  # smaller than the kernel: refused by both (tested elsewhere)
    x = rng.standard_normal((n, h, w, cin)).astype(np.float32)
    k = rng.standard_normal((kh, kw, cin, cout)).astype(np.float32)
    b = rng.standard_normal(cout).astype(np.float32) if bias else None
    args = (x, k, b, (sh, sw), ((pt, pb), (pl, pr)), (dh, dw))
    ref = ops.conv2d(*args, backend="numpy")
    got = ops.conv2d(*args, backend="cpu")
    assert same_bits(got, ref)


@pytest.mark.parametrize(
    "shape, ksize, stride, pad",
    [
        ((1, 57, 63, 3), 7, 2, 3),  # the ResNet stem
        ((1, 30, 41, 64), 3, 2, 1),  # a stride-2 3x3 bottleneck conv
        ((1, 30, 41, 64), 1, 2, 0),  # a stride-2 downsample
        ((1, 30, 41, 64), 1, 1, 0),  # a 1x1 (no copy at all)
        ((1, 30, 41, 64), 3, 1, 1),  # a stride-1 3x3 bottleneck conv (Winograd when on)
        ((1, 130, 150, 8), 3, 1, 1),  # several im2col chunks (below)
    ],
)
def test_conv2d_cpu_equals_numpy_resnet_shapes(shape, ksize, stride, pad, monkeypatch):
    # A small budget forces the chunked path (several GEMMs per image) in both backends.
    monkeypatch.setattr(conv_mod, "IM2COL_BUDGET_BYTES", 200_000)
    rng = np.random.default_rng(1)
    x = with_specials(rng, rng.standard_normal(shape).astype(np.float32), 0.001)
    k = rng.standard_normal((ksize, ksize, shape[3], 16)).astype(np.float32)
    args = (x, k, None, stride, ((pad, pad), (pad, pad)))
    with np.errstate(all="ignore"):  # the specials overflow in the GEMM, on purpose
        assert same_bits(ops.conv2d(*args, backend="cpu"), ops.conv2d(*args, backend="numpy"))


@pytest.mark.parametrize("kind", ["none", "frozen_bn", "fma64", "bias"])
@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("relu", [False, True])
def test_epilogue_cpu_equals_numpy(kind, residual, relu):
    rng = np.random.default_rng(hash((kind, residual, relu)) % 2**32)
    c = 37
    y = with_specials(rng, rng.standard_normal((3, 11, 13, c)).astype(np.float32) * 50, 0.05)
    a = with_specials(rng, rng.standard_normal(c).astype(np.float32), 0.1)
    b = with_specials(rng, rng.standard_normal(c).astype(np.float32), 0.1)
    r = with_specials(rng, rng.standard_normal(y.shape).astype(np.float32), 0.05)
    res = r if residual else None
    with np.errstate(all="ignore"):  # the specials overflow and make NaNs, on purpose
        ref = affine_epilogue_(y.copy(), kind, a, b, res, relu, backend="numpy")
    got = affine_epilogue_(y.copy(), kind, a, b, res, relu, backend="cpu")
    assert same_bits(got, ref)
    if relu:
        # np.maximum(v, 0) turns -0.0 into +0.0: the sign of zero is part of the contract
        assert not np.signbit(got[got == 0]).any()


def test_epilogue_is_in_place_and_checks_its_arguments():
    y = np.ones((4, 3), np.float32)
    a = np.full(3, 2.0, np.float32)
    b = np.full(3, -5.0, np.float32)
    out = affine_epilogue_(y, "frozen_bn", a, b, relu=True)
    assert out is y and np.array_equal(y, np.zeros((4, 3), np.float32))
    with pytest.raises(ValueError, match="kind"):
        affine_epilogue_(y, "bn", a, b)
    with pytest.raises(ValueError, match=r"a must be float32 of shape \[3\]"):
        affine_epilogue_(y, "frozen_bn", None, b)
    with pytest.raises(ValueError, match="residual"):
        affine_epilogue_(y, "none", residual=np.ones((4, 2), np.float32))


@settings(max_examples=40, deadline=None)
@given(h=st.integers(1, 14), w=st.integers(1, 14), c=st.integers(1, 5), seed=st.integers(0, 999))
def test_max_pool_cpu_equals_numpy(h, w, c, seed):
    rng = np.random.default_rng(seed)
    # small integers: ties are everywhere; specials: NaN, infinities, signed zeros
    x = rng.integers(-3, 3, (2, h, w, c)).astype(np.float32)
    x = with_specials(rng, x, 0.15)
    ref = max_pool_3x3_s2_p1(x, backend="numpy")
    got = max_pool_3x3_s2_p1(x, backend="cpu")
    assert got.shape == ((2, (h - 1) // 2 + 1, (w - 1) // 2 + 1, c))
    assert same_bits(got, ref)


def test_max_pool_hand_worked():
    # 3x3 input: output 2x2; window rows/cols {-1,0,1} and {1,2,3} clipped to the image
    x = np.arange(9, dtype=np.float32).reshape(1, 3, 3, 1)
    got = max_pool_3x3_s2_p1(x, backend="cpu")[0, :, :, 0]
    assert np.array_equal(got, np.array([[4, 5], [7, 8]], np.float32))
    x[0, 0, 0, 0] = np.nan
    assert np.isnan(max_pool_3x3_s2_p1(x, backend="cpu")[0, 0, 0, 0])


def test_fpn_model_backends_agree_bitwise(tmp_path):
    """Every body level, FPN level and RPN output of a small random torchvision model."""
    torch = pytest.importorskip("torch")
    from npfrcnn.model import FasterRCNN
    from npfrcnn.weights.convert_torchvision import torchvision_to_hdf5
    from tests import tv_models

    torch.set_num_threads(2)
    for variant in ("r50-frozen0", "v2"):
        profile, _ = tv_models.VARIANTS[variant]
        tv = tv_models.build(variant, small=True, seed=5)
        torch.save(tv.state_dict(), tmp_path / f"{variant}.pth")
        changes = {"min_size": tv.transform.min_size[-1], "max_size": tv.transform.max_size}
        h5 = tmp_path / f"{variant}.h5"
        torchvision_to_hdf5(tmp_path / f"{variant}.pth", h5, profile, changes=changes)
        image = np.random.default_rng(2).integers(0, 256, (97, 131, 3), dtype=np.uint8)
        ref = FasterRCNN.from_hdf5(h5, backend="numpy").run_stages(image)
        got = FasterRCNN.from_hdf5(h5, backend="cpu").run_stages(image)
        for i, (g, r) in enumerate(zip(got["body"], ref["body"], strict=True)):
            assert same_bits(g, r), f"{variant} body C{i + 2}"
        for name in ref["features"]:
            assert same_bits(got["features"][name], ref["features"][name]), f"{variant} {name}"
        for name, lv in ref["rpn"].levels.items():
            assert same_bits(got["rpn"].levels[name].logits, lv.logits), f"{variant} {name}"
            assert same_bits(got["rpn"].levels[name].deltas, lv.deltas), f"{variant} {name}"


@pytest.mark.parametrize("stride_in", ["1x1", "3x3"])
def test_c4_model_backends_agree_bitwise(stride_in):
    """The workshop C4 network: block1..3 features and block4 on the pooled RoIs, ``cpu``
    (parallel patches, fused BN + residual + ReLU) against ``numpy`` (separate passes)."""
    from npfrcnn import FasterRCNN
    from npfrcnn.config import workshop
    from npfrcnn.weights import random_weights

    cfg = workshop(
        units_per_block=(1, 2, 2, 2), root_depth=8, base_depths=(8, 16, 32, 64), rpn_depth=32,
        num_classes=3, stride_in=stride_in,
    )
    tensors = random_weights(cfg, seed=4)
    classes = ["a", "b", "c"]
    image = np.random.default_rng(3).integers(0, 256, (70, 90, 3), dtype=np.uint8)
    ref = FasterRCNN(cfg, classes, tensors, backend="numpy").run_stages(image)
    got = FasterRCNN(cfg, classes, tensors, backend="cpu").run_stages(image)
    assert same_bits(got["features"], ref["features"])
    # block4 on the same pooled input (the pooled RoIs are compared by the crop tests)
    from npfrcnn.resnet import run_tail

    pooled = ref["pooled"]
    assert same_bits(run_tail(pooled.copy(), tensors, cfg, "cpu"),
                     run_tail(pooled.copy(), tensors, cfg, "numpy"))
