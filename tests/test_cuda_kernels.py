"""The numba.cuda kernels (``npfrcnn.kernels.cuda``) against the NumPy reference and TensorFlow.

Without a GPU these run under numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``, set by
conftest), which runs every CUDA thread as a Python thread: inputs are tiny, and the block size
is lowered (``set_threads_per_block``) so each launch still spans several blocks. NMS inputs of
130 boxes span three 64-box mask blocks. Tests marked ``gpu`` need a real GPU
(``NPFRCNN_TEST_GPU=1`` on a machine with one) and check full-size inputs.

The simulator runs each block's threads as Python threads, so it does exercise the barriers and
shared memory; the kernels' device functions run as plain Python there (``_cuda.device_function``:
the simulator's own wrapper serialised every call on a lock, which made a 130-box NMS take a
minute and, on a loaded machine, many minutes). ``test_cuda_compile.py`` compiles the same
kernels for a real GPU.

Every comparison with the reference is bitwise (``assert_same`` with no tolerance): the kernels
do their float32 arithmetic with non-contracting operations, in the reference's order.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings

from npfrcnn import ops
from npfrcnn.kernels.cuda import _cuda
from npfrcnn.kernels.cuda import crop_and_resize as cuda_crop
from npfrcnn.kernels.cuda import nms as cuda_nms
from npfrcnn.kernels.cuda import roi_align as cuda_roi_align
from npfrcnn.kernels.cuda import roi_pool as cuda_roi_pool
from npfrcnn.kernels.cuda import sort as cuda_sort
from tests.helpers import assert_same
from tests.strategies import integer_box_pairs, iou_thresholds, nms_cases

if not _cuda.cuda.is_available():  # pragma: no cover - a GPU run asked for on a machine without
    pytest.skip("no CUDA device and the simulator is off", allow_module_level=True)

F32 = np.float32


@pytest.fixture(autouse=True)
def tpb():
    """Small blocks (8 threads unless a test asks for another size), so that tiny inputs span
    several blocks and the simulator stays fast; the old size is restored afterwards."""

    def set_size(n: int) -> None:
        _cuda.set_threads_per_block(n)

    old = _cuda.set_threads_per_block(8)
    yield set_size
    _cuda.set_threads_per_block(old)


def _yxyx(xyxy: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(xyxy[:, [1, 0, 3, 2]])


def _random_boxes(
    rng: np.random.Generator, n: int, extent: float = 60.0, grid: bool = True
) -> np.ndarray:
    """``[n, 4]`` float32 ``(y1, x1, y2, x2)``; on an integer grid (exact IoU ties and IoUs
    equal to round thresholds happen) or, with ``grid=False``, anywhere."""
    if grid:
        yx = rng.integers(0, int(extent), (n, 2)).astype(F32)
        hw = rng.integers(1, max(2, int(extent) // 3), (n, 2)).astype(F32)
    else:
        yx = rng.uniform(0, extent, (n, 2)).astype(F32)
        hw = rng.uniform(1, extent / 3, (n, 2)).astype(F32)
    boxes = np.concatenate([yx, yx + hw], axis=1)
    flip = rng.random(n) < 0.3  # some boxes with their corners swapped
    boxes[flip] = boxes[flip][:, [2, 3, 0, 1]]
    return boxes


# --------------------------------------------------------------------------------------------
# Launch configuration and transfers
# --------------------------------------------------------------------------------------------


def test_threads_per_block_must_be_a_power_of_two():
    with pytest.raises(ValueError, match="power of two"):
        _cuda.set_threads_per_block(48)
    with pytest.raises(ValueError, match="power of two"):
        _cuda.set_threads_per_block(2048)


def test_device_arrays_need_the_kernel_dtype():
    d = _cuda.cuda.to_device(np.zeros((3, 4), np.float64))
    with pytest.raises(TypeError, match="float32"):
        _cuda.as_device(d, np.float32)


# --------------------------------------------------------------------------------------------
# Device sort
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [16, 100])
def test_bitonic_sort_matches_numpy(tpb, n):
    tpb(8)  # chunks of 16 keys: 100 keys pad to 128, 8 chunks, stages across blocks
    rng = np.random.default_rng(n)
    keys = rng.integers(0, 50, n).astype(np.uint64) << np.uint64(40)  # many duplicates
    keys |= rng.integers(0, 2**32, n).astype(np.uint64) % np.uint64(7)
    p = cuda_sort.padded_length(n, 8)
    padded = np.full(p, np.iinfo(np.uint64).max, np.uint64)
    padded[:n] = keys
    d = _cuda.to_device(padded, np.uint64)
    cuda_sort.sort_keys(d, 8)
    assert_same(d.copy_to_host()[:n], np.sort(keys))


# --------------------------------------------------------------------------------------------
# NMS: hand-worked cases
# --------------------------------------------------------------------------------------------


def test_nms_iou_exactly_at_threshold_is_kept():
    # (y1, x1, y2, x2): overlap 1x1, areas 2 and 2, union 3 -> IoU = float32(1) / float32(3)
    boxes = np.array([[0, 0, 1, 2], [0, 1, 1, 3]], F32)
    scores = np.array([0.9, 0.8], F32)
    at = float(F32(1.0) / F32(3.0))
    below = float(np.nextafter(F32(at), F32(0.0)))
    assert_same(cuda_nms.nms(boxes, scores, at), np.array([0, 1], np.int64))
    assert_same(cuda_nms.nms(boxes, scores, below), np.array([0], np.int64))


def test_nms_equal_scores_go_to_the_lower_index():
    # boxes 1 and 3 are the same box, 0 and 2 disjoint from it and each other; all scores tie
    boxes = np.array([[0, 0, 1, 1], [5, 5, 9, 9], [20, 20, 21, 21], [5, 5, 9, 9]], F32)
    scores = np.array([0.5, 0.5, 0.5, 0.5], F32)
    assert_same(cuda_nms.nms(boxes, scores, 0.5), np.array([0, 1, 2], np.int64))
    # -0.0 and 0.0 are equal scores: lower index first (four disjoint boxes)
    boxes = np.array([[0, 0, 1, 1], [2, 2, 3, 3], [4, 4, 5, 5], [6, 6, 7, 7]], F32)
    scores = np.array([0.0, -0.0, 0.0, 1.0], F32)
    assert_same(cuda_nms.nms(boxes, scores, 0.5), np.array([3, 0, 1, 2], np.int64))
    # TF's CPU threads flush subnormals (DAZ): a score of 1e-45 ties with 0 and is not > 0
    scores = np.array([0.0, 1e-45, 0.0, 1.0], F32)
    assert_same(cuda_nms.nms(boxes, scores, 0.5), np.array([3, 0, 1, 2], np.int64))
    assert_same(cuda_nms.nms(boxes, scores, 0.5, None, 0.0), np.array([3], np.int64))


def test_nms_candidates_limits_and_empty_input():
    boxes = np.array([[0, 0, 1, 1], [2, 2, 3, 3], [4, 4, 5, 5], [6, 6, 7, 7]], F32)
    scores = np.array([0.3, np.nan, 0.9, 0.5], F32)
    # NaN never a candidate; score_threshold strict (0.3 is not > 0.3)
    assert_same(cuda_nms.nms(boxes, scores, 0.5, None, 0.3), np.array([2, 3], np.int64))
    assert_same(cuda_nms.nms(boxes, scores, 0.5, 1), np.array([2], np.int64))
    assert_same(cuda_nms.nms(boxes, scores, 0.5, 0), np.zeros(0, np.int64))
    assert_same(cuda_nms.nms(boxes, scores, 0.5, None, 2.0), np.zeros(0, np.int64))
    empty = np.zeros((0, 4), F32)
    assert_same(cuda_nms.nms(empty, np.zeros(0, F32), 0.5), np.zeros(0, np.int64))


def test_nms_zero_area_boxes_never_suppress():
    boxes = np.array([[0, 0, 0, 4], [0, 0, 0, 4], [1, 1, 3, 3]], F32)  # two degenerate boxes
    scores = np.array([0.9, 0.8, 0.7], F32)
    assert_same(cuda_nms.nms(boxes, scores, 0.0), np.array([0, 1, 2], np.int64))


# --------------------------------------------------------------------------------------------
# NMS: parity with the reference and TensorFlow, several 64-box blocks
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seed", "threshold", "max_out", "score_thr"),
    [(0, 0.3, None, float("-inf")), (1, 0.5, 17, 2.0)],
)
def test_nms_matches_reference_and_tf_across_blocks(tpb, tf, seed, threshold, max_out, score_thr):
    tpb(16)
    rng = np.random.default_rng(seed)
    boxes = _random_boxes(rng, 130)
    scores = rng.integers(0, 8, 130).astype(F32)  # many equal scores
    want = ops.nms(boxes, scores, threshold, max_out, score_thr, backend="numpy")
    got = cuda_nms.nms(boxes, scores, threshold, max_out, score_thr)
    assert_same(got, want)
    tf_idx = tf.image.non_max_suppression(
        boxes, scores, 130 if max_out is None else max_out, threshold, score_thr
    ).numpy()
    assert_same(got, tf_idx.astype(np.int64))
    # the host-sorted entry point computes the same selection
    order = np.flatnonzero(scores > F32(score_thr))
    order = order[np.argsort(-scores[order], kind="stable")]
    limit = 130 if max_out is None else max_out
    assert_same(cuda_nms.nms_kernel(boxes, order.astype(np.int64), threshold, limit), want)


@settings(max_examples=12)
@given(case=nms_cases(max_n=24), threshold=iou_thresholds())
def test_nms_matches_reference_hypothesis(case, threshold):
    xyxy, scores = case
    boxes = _yxyx(xyxy)
    want = ops.nms(boxes, scores, threshold, backend="numpy")
    assert_same(cuda_nms.nms(boxes, scores, threshold), want)


@settings(max_examples=8)
@given(pair=integer_box_pairs())
def test_nms_threshold_equal_to_the_iou(pair):
    y1a, x1a, y2a, x2a = (int(v) for v in pair[0])
    y1b, x1b, y2b, x2b = (int(v) for v in pair[1])
    ih = max(min(y2a, y2b) - max(y1a, y1b), 0)
    iw = max(min(x2a, x2b) - max(x1a, x1b), 0)
    inter = ih * iw
    union = (y2a - y1a) * (x2a - x1a) + (y2b - y1b) * (x2b - x1b) - inter
    iou = F32(inter) / F32(union)  # exact integer operands: one float32 rounding
    scores = np.array([0.9, 0.8], F32)
    assert_same(cuda_nms.nms(pair, scores, float(iou)), np.array([0, 1], np.int64))
    if iou > 0:
        below = float(np.nextafter(iou, F32(0.0)))
        assert_same(cuda_nms.nms(pair, scores, below), np.array([0], np.int64))


def test_batched_nms_matches_reference_across_blocks(tpb):
    tpb(16)
    rng = np.random.default_rng(7)
    boxes = _random_boxes(rng, 130, extent=30.0)
    scores = rng.integers(0, 5, 130).astype(F32)
    classes = rng.choice(np.array([-3, 4, 100]), 130)  # any integer labels
    want = ops.batched_nms(boxes, scores, classes, 0.4, 6, backend="numpy")
    assert_same(cuda_nms.batched_nms(boxes, scores, classes, 0.4, 6), want)


def test_nms_device_arrays_stay_on_the_device():
    rng = np.random.default_rng(3)
    boxes = _random_boxes(rng, 20)
    scores = rng.random(20).astype(F32)
    d_boxes, d_scores = _cuda.cuda.to_device(boxes), _cuda.cuda.to_device(scores)
    got = cuda_nms.nms(d_boxes, d_scores, 0.5)
    assert _cuda.is_device_array(got)
    assert_same(got.copy_to_host(), ops.nms(boxes, scores, 0.5, backend="numpy"))
    classes = _cuda.cuda.to_device(np.arange(20) % 2)
    got = cuda_nms.batched_nms(d_boxes, d_scores, classes, 0.5)
    assert _cuda.is_device_array(got)
    want = ops.batched_nms(boxes, scores, np.arange(20) % 2, 0.5, backend="numpy")
    assert_same(got.copy_to_host(), want)


# --------------------------------------------------------------------------------------------
# crop_and_resize and crop_and_pool
# --------------------------------------------------------------------------------------------


def _crop_inputs(seed: int, n: int = 5, depth: int = 3):
    rng = np.random.default_rng(seed)
    image = rng.standard_normal((2, 5, 7, depth)).astype(F32)
    boxes = rng.uniform(-0.4, 1.4, (n, 4)).astype(F32)  # outside the image, flipped, inside
    boxes[0] = [0.0, 0.0, 1.0, 1.0]
    boxes[1] = [0.9, 0.8, 0.1, 0.2]  # flipped both ways
    boxes[2 % n] = [0.5, 0.5, 0.5, 0.5]  # zero size
    idx = rng.integers(0, 2, n).astype(np.int32)
    return image, boxes, idx


def test_crop_and_resize_corner_aligned_hand_worked():
    image = np.array([[[[0.0], [2.0]], [[4.0], [6.0]]]], F32)  # [1, 2, 2, 1]
    boxes = np.array([[0.0, 0.0, 1.0, 1.0]], F32)
    got = cuda_crop.crop_and_resize(image, boxes, np.zeros(1, np.int32), 3, 3, False, 0.0)
    want = np.array([[0, 1, 2], [2, 3, 4], [4, 5, 6]], F32).reshape(1, 3, 3, 1)
    assert_same(got, want)
    # a box reaching past the image: samples beyond [0, H-1] get the extrapolation value
    boxes = np.array([[0.0, 0.0, 2.0, 1.0]], F32)
    got = cuda_crop.crop_and_resize(image, boxes, np.zeros(1, np.int32), 3, 2, False, -7.0)
    want = np.array([[0, 2], [4, 6], [-7, -7]], F32).reshape(1, 3, 2, 1)
    assert_same(got, want)


@pytest.mark.parametrize("method", ["bilinear", "nearest"])
@pytest.mark.parametrize("crop", [(3, 4), (1, 1), (1, 5)])
def test_crop_and_resize_matches_reference(method, crop):
    image, boxes, idx = _crop_inputs(11)
    want = ops.crop_and_resize(image, boxes, idx, crop, method, 0.25, backend="numpy")
    got = cuda_crop.crop_and_resize(image, boxes, idx, crop[0], crop[1], method == "nearest", 0.25)
    assert_same(got, want)


def test_crop_and_resize_matches_tf(tf):
    image, boxes, idx = _crop_inputs(12, n=6)
    for method in ("bilinear", "nearest"):
        want = tf.image.crop_and_resize(image, boxes, idx, (4, 3), method, 1.5).numpy()
        got = cuda_crop.crop_and_resize(image, boxes, idx, 4, 3, method == "nearest", 1.5)
        assert_same(got, want)


@pytest.mark.parametrize("crop", [(4, 4), (5, 3)])
def test_crop_and_pool_matches_reference_and_tf(tf, crop):
    image, boxes, idx = _crop_inputs(13)
    want = ops.crop_and_pool(image, boxes, idx, crop, 0.0, backend="numpy")
    got = cuda_crop.crop_and_pool(image, boxes, idx, crop[0], crop[1], 0.0)
    assert_same(got, want)
    crops = tf.image.crop_and_resize(image, boxes, idx, crop)
    assert_same(got, tf.nn.max_pool2d(crops, 2, 2, "VALID").numpy())


def test_crop_kernels_across_channel_chunks(tpb):
    # 70 channels with 8 threads of 4 channels each: 3 chunks per cell, the last one with 6
    # channels (lanes past the depth write nothing), several cells per block loop
    tpb(8)
    assert _cuda.cell_launch(1, 70) == (3, 8)
    image, boxes, idx = _crop_inputs(15, n=3, depth=70)
    for method in ("bilinear", "nearest"):
        want = ops.crop_and_resize(image, boxes, idx, (2, 3), method, -0.5, backend="numpy")
        got = cuda_crop.crop_and_resize(image, boxes, idx, 2, 3, method == "nearest", -0.5)
        assert_same(got, want)
    want = ops.crop_and_pool(image, boxes, idx, (4, 2), -0.5, backend="numpy")
    assert_same(cuda_crop.crop_and_pool(image, boxes, idx, 4, 2, -0.5), want)


def test_crop_and_pool_skips_nan_like_tf_max_pool():
    image = np.arange(2 * 3 * 3, dtype=F32).reshape(2, 3, 3, 1)
    boxes = np.array([[0.0, 0.0, 1.0, 1.0], [3.0, 3.0, 4.0, 4.0], [0.5, 0.5, 1.5, 1.5]], F32)
    idx = np.array([1, 0, 0], np.int32)
    got = cuda_crop.crop_and_pool(image, boxes, idx, 2, 2, float("nan"))
    # box 0: image 1 corners 9, 11, 15, 17 -> 17; box 1 all outside: only NaN -> -FLT_MAX;
    # box 2: one sample inside at (1, 1) = 4, the rest NaN -> 4
    want = np.array([17.0, np.finfo(F32).min, 4.0], F32).reshape(3, 1, 1, 1)
    assert_same(got, want)


def test_crop_device_arrays_stay_on_the_device():
    image, boxes, idx = _crop_inputs(14, n=2, depth=2)
    d = [_cuda.cuda.to_device(a) for a in (image, boxes, idx)]
    got = cuda_crop.crop_and_pool(*d, 2, 2, 0.0)
    assert _cuda.is_device_array(got)
    assert_same(got.copy_to_host(), ops.crop_and_pool(image, boxes, idx, 2, backend="numpy"))


# --------------------------------------------------------------------------------------------
# RoIAlign and RoIPool
# --------------------------------------------------------------------------------------------


def _ramp(h: int = 6, w: int = 7) -> np.ndarray:
    """``[1, h, w, 2]``: channel 0 is ``x``, channel 1 is ``10 * y`` (bilinear is exact on it)."""
    y, x = np.mgrid[0:h, 0:w].astype(F32)
    return np.stack([x, 10 * y], axis=-1)[None]


def test_roi_align_hand_worked():
    feats = _ramp()
    rois = np.array([[0, 0.0, 0.0, 4.0, 4.0]], F32)  # bins of 2x2 pixels, 2x2 samples each
    got = cuda_roi_align.roi_align(feats, rois, (2, 2), 1.0, 2, False)
    # samples at 0.5, 1.5 | 2.5, 3.5 -> means 1.0 and 3.0 (x), 10 and 30 (10 y)
    want = np.array([[[1, 10], [3, 10]], [[1, 30], [3, 30]]], F32)[None]
    assert_same(got, want)
    # aligned: the RoI shifts by -0.5 pixel -> samples at 0, 1 | 2, 3
    got = cuda_roi_align.roi_align(feats, rois, (2, 2), 1.0, 2, True)
    want = np.array([[[0.5, 5], [2.5, 5]], [[0.5, 25], [2.5, 25]]], F32)[None]
    assert_same(got, want)


def test_roi_pool_hand_worked():
    feats = _ramp()
    rois = np.array([[0, 0.6, 1.2, 6.4, 3.6]], F32)  # scale 0.5 -> rounds to x 0..3, y 1..2
    got = cuda_roi_pool.roi_pool(feats, rois, (2, 2), 0.5)
    # roi 4 wide x 2 high, bins 2x1: x bins [0, 2) [2, 4), y bins [1, 2) [2, 3)
    want = np.array([[[1, 10], [3, 10]], [[1, 20], [3, 20]]], F32)[None]
    assert_same(got, want)


def _roi_inputs(seed: int, k: int = 6):
    rng = np.random.default_rng(seed)
    feats = rng.standard_normal((2, 6, 7, 3)).astype(F32)
    xy1 = rng.uniform(-4.0, 20.0, (k, 2))
    xy2 = xy1 + rng.uniform(-2.0, 12.0, (k, 2))  # some RoIs smaller than a pixel or flipped
    rois = np.concatenate([rng.integers(0, 2, (k, 1)), xy1, xy2], axis=1).astype(F32)
    return feats, rois


@pytest.mark.parametrize(("sampling_ratio", "aligned"), [(-1, False), (2, True), (0, True)])
def test_roi_align_matches_reference(sampling_ratio, aligned):
    feats, rois = _roi_inputs(21)
    want = ops.roi_align(feats, rois, (2, 3), 0.5, sampling_ratio, aligned, backend="numpy")
    got = cuda_roi_align.roi_align(feats, rois, (2, 3), 0.5, sampling_ratio, aligned)
    assert_same(got, want)


def test_roi_pool_matches_reference():
    feats, rois = _roi_inputs(22)
    want = ops.roi_pool(feats, rois, (3, 2), 0.5, backend="numpy")
    assert_same(cuda_roi_pool.roi_pool(feats, rois, (3, 2), 0.5), want)


def test_roi_kernels_across_channel_chunks(tpb):
    # as test_crop_kernels_across_channel_chunks: 70 channels, 3 chunks of 32, the last partial
    tpb(8)
    _, rois = _roi_inputs(24, k=3)
    feats = np.random.default_rng(24).standard_normal((2, 6, 7, 70)).astype(F32)
    for sampling_ratio, aligned in [(2, False), (0, True)]:
        want = ops.roi_align(feats, rois, (2, 2), 0.5, sampling_ratio, aligned, backend="numpy")
        got = cuda_roi_align.roi_align(feats, rois, (2, 2), 0.5, sampling_ratio, aligned)
        assert_same(got, want)
    want = ops.roi_pool(feats, rois, (2, 3), 0.5, backend="numpy")
    assert_same(cuda_roi_pool.roi_pool(feats, rois, (2, 3), 0.5), want)


def test_roi_device_arrays_stay_on_the_device():
    feats, rois = _roi_inputs(23, k=2)
    d_feats, d_rois = _cuda.cuda.to_device(feats), _cuda.cuda.to_device(rois)
    got = cuda_roi_align.roi_align(d_feats, d_rois, 2, 0.5, 2, True)
    assert _cuda.is_device_array(got)
    want = ops.roi_align(feats, rois, 2, 0.5, 2, True, backend="numpy")
    assert_same(got.copy_to_host(), want)
    got = cuda_roi_pool.roi_pool(d_feats, d_rois, 2, 0.5)
    assert _cuda.is_device_array(got)
    assert_same(got.copy_to_host(), ops.roi_pool(feats, rois, 2, 0.5, backend="numpy"))


# --------------------------------------------------------------------------------------------
# Full size, on a real GPU only
# --------------------------------------------------------------------------------------------


def _faster_rcnn_rois(rng: np.random.Generator, k: int, h: int = 38, w: int = 63):
    """``k`` RoIs on a ``h x w`` stride-16 map: pixel ``(x1, y1, x2, y2)`` and normalized yxyx."""
    img_h, img_w = 16 * h, 16 * w
    x1 = rng.uniform(0, img_w - 32, k)
    y1 = rng.uniform(0, img_h - 32, k)
    x2 = np.minimum(x1 + rng.uniform(16, 400, k), img_w)
    y2 = np.minimum(y1 + rng.uniform(16, 400, k), img_h)
    pix = np.stack([np.zeros(k), x1, y1, x2, y2], axis=1).astype(F32)
    norm = np.stack([y1 / img_h, x1 / img_w, y2 / img_h, x2 / img_w], axis=1).astype(F32)
    return pix, norm


@pytest.mark.gpu
def test_full_size_parity_on_gpu(tpb):
    tpb(256)  # the production block size
    rng = np.random.default_rng(0)
    boxes = _random_boxes(rng, 6000, extent=1000.0)
    scores = rng.integers(0, 1000, 6000).astype(F32) / F32(1000)  # ties included
    assert_same(cuda_nms.nms(boxes, scores, 0.7), ops.nms(boxes, scores, 0.7, backend="cpu"))
    feats = rng.standard_normal((1, 38, 63, 256)).astype(F32)  # 256 channels: reference speed
    pix, norm = _faster_rcnn_rois(rng, 300)
    idx = np.zeros(300, np.int32)
    assert_same(
        cuda_crop.crop_and_pool(feats, norm, idx, 14, 14, 0.0),
        ops.crop_and_pool(feats, norm, idx, 14, backend="numpy"),
    )
    assert_same(
        cuda_roi_align.roi_align(feats, pix, 14, 1 / 16, 0, True),
        ops.roi_align(feats, pix, 14, 1 / 16, 0, True, backend="numpy"),
    )
    assert_same(
        cuda_roi_pool.roi_pool(feats, pix, 7, 1 / 16),
        ops.roi_pool(feats, pix, 7, 1 / 16, backend="numpy"),
    )


@pytest.mark.gpu
def test_parity_with_torchvision_on_gpu(tpb):
    tpb(256)
    torch = pytest.importorskip("torch")
    tvops = pytest.importorskip("torchvision.ops")
    rng = np.random.default_rng(1)
    # NMS without ties (torchvision's sort is not stable): distinct scores. torchvision's CUDA
    # IoU may be contracted to an FMA, so an IoU within an ulp of the threshold could decide
    # differently: random (not grid) boxes and a moderate count keep that unlikely.
    boxes = _random_boxes(rng, 3000, extent=1000.0, grid=False)
    scores = rng.permutation(3000).astype(F32) / F32(3000)
    xyxy = torch.from_numpy(boxes[:, [1, 0, 3, 2]].copy()).cuda()
    xyxy = torch.stack(
        [
            torch.minimum(xyxy[:, 0], xyxy[:, 2]),
            torch.minimum(xyxy[:, 1], xyxy[:, 3]),
            torch.maximum(xyxy[:, 0], xyxy[:, 2]),
            torch.maximum(xyxy[:, 1], xyxy[:, 3]),
        ],
        dim=1,
    )
    want = tvops.nms(xyxy, torch.from_numpy(scores).cuda(), 0.7).cpu().numpy()
    assert_same(cuda_nms.nms(boxes, scores, 0.7), want.astype(np.int64))
    feats = rng.standard_normal((1, 38, 63, 256)).astype(F32)
    pix, _ = _faster_rcnn_rois(rng, 300)
    t_feats = torch.from_numpy(feats).cuda().permute(0, 3, 1, 2).contiguous()  # NCHW
    t_rois = torch.from_numpy(pix).cuda()
    for aligned in (False, True):
        want = tvops.roi_align(t_feats, t_rois, 14, 1 / 16, 0, aligned)
        got = cuda_roi_align.roi_align(feats, pix, 14, 1 / 16, 0, aligned)
        # torchvision's CUDA build contracts a*b+c into FMAs (one rounding instead of two);
        # each output averages <= ~900 samples of 4 taps: 1e-5 absolute on unit-normal data.
        np.testing.assert_allclose(got, want.permute(0, 2, 3, 1).cpu().numpy(), rtol=0, atol=1e-5)
    want = tvops.roi_pool(t_feats, t_rois, 7, 1 / 16).permute(0, 2, 3, 1).cpu().numpy()
    # a max picks an input value: exact, unless an FMA moves a bin edge (floor/ceil of
    # ph * bin), which torchvision computes as one product, so no contraction applies.
    assert_same(cuda_roi_pool.roi_pool(feats, pix, 7, 1 / 16), want)


# --------------------------------------------------------------------------------------------
# The front doors in npfrcnn.ops dispatch backend="cuda" to these drivers
# --------------------------------------------------------------------------------------------


def test_front_doors_dispatch_to_cuda():
    rng = np.random.default_rng(5)
    boxes = _random_boxes(rng, 30, extent=20.0)
    scores = rng.integers(0, 4, 30).astype(F32)
    classes = rng.integers(0, 3, 30)
    for name, args in [
        ("nms", (boxes, scores, 0.3, 9, 0.5)),
        ("batched_nms", (boxes, scores, classes, 0.3, 3)),
    ]:
        fn = getattr(ops, name)
        assert_same(fn(*args, backend="cuda"), fn(*args, backend="numpy"), err_msg=name)
    image, crop_boxes, idx = _crop_inputs(31, n=3, depth=2)
    feats, rois = _roi_inputs(32, k=3)
    for name, args in [
        ("crop_and_resize", (image, crop_boxes, idx, (3, 2), "nearest", 0.5)),
        ("crop_and_pool", (image, crop_boxes, idx, (4, 2), 0.5)),
        ("roi_align", (feats, rois, (2, 2), 0.5, 0, True)),
        ("roi_pool", (feats, rois, (2, 2), 0.5)),
    ]:
        fn = getattr(ops, name)
        assert_same(fn(*args, backend="cuda"), fn(*args, backend="numpy"), err_msg=name)


@pytest.mark.gpu
def test_no_fused_multiply_add_in_the_kernels(tpb):
    """NVVM contracts a*b+c unless each operation is an explicit round-to-nearest intrinsic;
    a fused result differs from NumPy's in the last bit. The compiled PTX must have none."""
    tpb(256)
    test_front_doors_dispatch_to_cuda()  # compiles every kernel for the arguments the ops use
    kernels = [
        cuda_nms._order_and_gather,
        cuda_nms._mask,
        cuda_crop._crop_kernel,
        cuda_crop._crop_pool_kernel,
        cuda_roi_align._roi_align_kernel,
        cuda_roi_pool._roi_pool_kernel,
    ]
    for kernel in kernels:
        listings = kernel.inspect_asm()
        assert listings, f"{kernel.__name__} was not compiled"
        for ptx in listings.values():
            assert "fma.rn.f32" not in ptx, kernel.__name__
