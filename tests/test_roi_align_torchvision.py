"""npfrcnn.ops.roi_align against torchvision.ops.roi_align (CPU), bit for bit.

The call torchvision's ``MultiScaleRoIAlign`` makes (spec 7.3): ``roi_align(feat, rois,
output_size=7, spatial_scale=s, sampling_ratio=2, aligned=False)`` for s = 1/4 .. 1/32, on
random float32 features (NCHW there, NHWC here). RoIs are drawn partly outside the map, tiny
(under a feature pixel, widened to 1 by torchvision), huge (beyond the map on every side) and
reversed (x2 < x1 or y2 < y1); both backends are compared, with torch at 1 and 2 threads.
A smaller set checks ``aligned=True`` and the adaptive grid (``sampling_ratio=0``,
Detectron2's call). Equality is bitwise: torchvision's kernel has no FMA and one fixed
summation order (spec 7.4).
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

from npfrcnn.ops import roi_align  # noqa: E402

f32 = np.float32
BACKENDS = ("numpy", "cpu")

# (spatial_scale, feature map H x W): the FPN levels of an 800 x 1344 padded image, an odd
# size, and maps of 3 x 5 and 1 x 1 pixels (every sample clamps).
LEVELS = [
    (1 / 4, (200, 336)),
    (1 / 8, (100, 168)),
    (1 / 16, (50, 84)),
    (1 / 32, (25, 42)),
    (1 / 16, (37, 53)),
    (1 / 4, (3, 5)),
    (1 / 32, (1, 1)),
]


def _rois(rng: np.random.Generator, k: int, scale: float, h: int, w: int) -> np.ndarray:
    """``[k, 5]`` float32 ``(batch, x1, y1, x2, y2)`` in image pixels (the map is ``h x w``)."""
    img_h, img_w = h / scale, w / scale
    x1 = rng.uniform(-0.3 * img_w, 1.2 * img_w, k)
    y1 = rng.uniform(-0.3 * img_h, 1.2 * img_h, k)
    # Side lengths log-uniform from 1/20 of an image pixel to twice the image.
    bw = np.exp(rng.uniform(np.log(0.05), np.log(2 * img_w), k))
    bh = np.exp(rng.uniform(np.log(0.05), np.log(2 * img_h), k))
    flip_x, flip_y = rng.random(k) < 0.1, rng.random(k) < 0.1
    x2 = x1 + np.where(flip_x, -bw, bw)
    y2 = y1 + np.where(flip_y, -bh, bh)
    rois = np.stack([rng.integers(0, 2, k), x1, y1, x2, y2], axis=1).astype(f32)
    rois[:7, 1:] = [
        [0, 0, 0, 0],  # a point at the corner
        [10, 10, 10, 10],  # a point inside
        [0, 0, img_w, img_h],  # the whole image
        [-1e4, -1e4, 1e4, 1e4],  # huge
        [img_w - 1, img_h - 1, img_w + 5, img_h + 5],  # over the far corner
        [30, 40, 20, 10],  # reversed on both axes
        [-50, -50, -20, -20],  # wholly outside (before the map)
    ]
    return rois


def _torchvision(features: np.ndarray, rois: np.ndarray, scale: float, threads: int, **kw):
    torch.set_num_threads(threads)  # a Numba parallel kernel may have reset it
    assert torch.get_num_threads() == threads
    out = torchvision.ops.roi_align(
        torch.from_numpy(features).permute(0, 3, 1, 2).contiguous(),
        torch.from_numpy(rois),
        output_size=7,
        spatial_scale=scale,
        **kw,
    )
    return out.permute(0, 2, 3, 1).contiguous().numpy()


def _same_bits(got: np.ndarray, want: np.ndarray, msg: str) -> None:
    assert got.shape == want.shape and got.dtype == want.dtype == f32, msg
    bad = np.count_nonzero(got.view(np.uint32) != want.view(np.uint32))
    assert bad == 0, f"{bad} of {got.size} values differ: {msg}"


@pytest.mark.parametrize("threads", [2, 1])
@pytest.mark.parametrize(("scale", "size"), LEVELS)
def test_matches_torchvision_multiscale_call(scale, size, threads):
    rng = np.random.default_rng(int(1 / scale) * 1000 + size[0])
    h, w = size
    features = rng.standard_normal((2, h, w, 16)).astype(f32)
    rois = _rois(rng, 160, scale, h, w)
    want = _torchvision(features, rois, scale, threads, sampling_ratio=2, aligned=False)
    for backend in BACKENDS:
        got = roi_align(features, rois, 7, scale, sampling_ratio=2, aligned=False, backend=backend)
        _same_bits(got, want, f"scale {scale}, map {size}, {backend}")


def test_matches_torchvision_with_a_scale_that_is_not_a_power_of_two():
    # spatial_scale reaches the kernel as a double and is used as float32 (1/7 rounds).
    rng = np.random.default_rng(1)
    features = rng.standard_normal((2, 40, 60, 8)).astype(f32)
    rois = _rois(rng, 200, 1 / 7, 40, 60)
    want = _torchvision(features, rois, 1 / 7, 2, sampling_ratio=2, aligned=False)
    for backend in BACKENDS:
        got = roi_align(features, rois, 7, 1 / 7, sampling_ratio=2, backend=backend)
        _same_bits(got, want, backend)


@pytest.mark.parametrize(("sampling_ratio", "aligned"), [(0, True), (0, False), (2, True)])
def test_matches_torchvision_other_settings(sampling_ratio, aligned):
    rng = np.random.default_rng(2)
    features = rng.standard_normal((2, 50, 84, 8)).astype(f32)
    rois = _rois(rng, 120, 1 / 16, 50, 84)
    if aligned and sampling_ratio == 0:
        # torchvision allocates a negative-size buffer for an aligned RoI with exactly one
        # reversed side and an adaptive grid (roi_align.py documents this); keep RoIs that are
        # reversed on both sides or neither.
        rev_x, rev_y = rois[:, 3] < rois[:, 1], rois[:, 4] < rois[:, 2]
        rois = rois[rev_x == rev_y]
    want = _torchvision(features, rois, 1 / 16, 2, sampling_ratio=sampling_ratio, aligned=aligned)
    for backend in BACKENDS:
        got = roi_align(
            features,
            rois,
            7,
            1 / 16,
            sampling_ratio=sampling_ratio,
            aligned=aligned,
            backend=backend,
        )
        _same_bits(got, want, backend)
