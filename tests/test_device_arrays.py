"""GPU arrays through the ``npfrcnn.ops`` front doors (``backend="cuda"``).

GPU arrays are used in place and the result stays on the GPU; their metadata (dtype, shape,
C-contiguity) is checked, their values are not. Without a GPU these run under numba's CUDA
simulator, whose device arrays stand in for CuPy / torch / numba arrays; the metadata checks are
also exercised on a bare ``__cuda_array_interface__`` object, which is all they read.
"""

from __future__ import annotations

import numpy as np
import pytest

from npfrcnn import ops
from npfrcnn._validate import check_device_array, device_inputs, is_device_array
from npfrcnn.kernels.cuda import _cuda
from tests.helpers import assert_same

F32 = np.float32

if not _cuda.cuda.is_available():  # pragma: no cover - NPFRCNN_TEST_GPU=1 without a GPU
    pytest.skip("no CUDA device and the simulator is off", allow_module_level=True)


@pytest.fixture(autouse=True)
def small_blocks():
    old = _cuda.set_threads_per_block(8)
    yield
    _cuda.set_threads_per_block(old)


def _gpu(*arrays: np.ndarray):
    return [_cuda.cuda.to_device(np.ascontiguousarray(a)) for a in arrays]


class _Interface:
    """Only ``__cuda_array_interface__``, as CuPy or torch expose it (strides None: C order)."""

    def __init__(self, shape, typestr, strides=None):
        self.__cuda_array_interface__ = {
            "shape": shape, "typestr": typestr, "strides": strides, "data": (0, False),
            "version": 3,
        }


def _nms_inputs():
    rng = np.random.default_rng(0)
    yx = rng.integers(0, 30, (40, 2)).astype(F32)
    boxes = np.concatenate([yx, yx + rng.integers(2, 12, (40, 2))], axis=1).astype(F32)
    return boxes, rng.integers(0, 6, 40).astype(F32), rng.integers(-1, 2, 40)


def test_nms_and_batched_nms_take_and_return_gpu_arrays():
    boxes, scores, classes = _nms_inputs()
    d_boxes, d_scores, d_classes = _gpu(boxes, scores, classes)
    got = ops.nms(d_boxes, d_scores, 0.4, 9, 1.0, backend="cuda")
    assert is_device_array(got)
    assert_same(got.copy_to_host(), ops.nms(boxes, scores, 0.4, 9, 1.0, backend="numpy"))
    got = ops.batched_nms(d_boxes, d_scores, d_classes, 0.4, 3, backend="cuda")
    assert is_device_array(got)
    want = ops.batched_nms(boxes, scores, classes, 0.4, 3, backend="numpy")
    assert_same(got.copy_to_host(), want)
    empty = ops.nms(*_gpu(np.zeros((0, 4), F32), np.zeros(0, F32)), 0.5, backend="cuda")
    assert is_device_array(empty) and empty.copy_to_host().shape == (0,)


def test_crop_and_roi_ops_take_and_return_gpu_arrays():
    rng = np.random.default_rng(1)
    image = rng.standard_normal((2, 5, 6, 3)).astype(F32)
    boxes = rng.uniform(-0.2, 1.2, (4, 4)).astype(F32)
    idx = np.array([0, 1, 1, 0], np.int32)
    d_image, d_boxes, d_idx = _gpu(image, boxes, idx)
    got = ops.crop_and_resize(d_image, d_boxes, d_idx, (3, 2), "nearest", 0.5, backend="cuda")
    assert is_device_array(got)
    want = ops.crop_and_resize(image, boxes, idx, (3, 2), "nearest", 0.5, backend="numpy")
    assert_same(got.copy_to_host(), want)
    got = ops.crop_and_pool(d_image, d_boxes, d_idx, 4, -1.0, backend="cuda")
    assert_same(got.copy_to_host(), ops.crop_and_pool(image, boxes, idx, 4, -1.0, backend="numpy"))
    rois = np.array([[0, 1.0, 1.0, 9.0, 7.0], [1, 0.5, 2.0, 4.0, 3.0]], F32)
    d_rois = _gpu(rois)[0]
    got = ops.roi_align(d_image, d_rois, (2, 3), 0.5, 0, True, backend="cuda")
    assert is_device_array(got)
    want = ops.roi_align(image, rois, (2, 3), 0.5, 0, True, backend="numpy")
    assert_same(got.copy_to_host(), want)
    got = ops.roi_pool(d_image, d_rois, 2, 0.5, backend="cuda")
    assert_same(got.copy_to_host(), ops.roi_pool(image, rois, 2, 0.5, backend="numpy"))


def test_gpu_arrays_need_the_cuda_backend_and_no_host_arrays_beside_them():
    boxes, scores, _ = _nms_inputs()
    d_boxes, d_scores = _gpu(boxes, scores)
    with pytest.raises(ValueError, match=r"nms: boxes, scores are GPU arrays; pass backend='cuda'"):
        ops.nms(d_boxes, d_scores, 0.5, backend="cpu")
    with pytest.raises(ValueError, match=r"boxes on the GPU but scores on the host"):
        ops.nms(d_boxes, scores, 0.5, backend="cuda")
    with pytest.raises(ValueError, match="soft_nms has no CUDA kernel"):
        ops.soft_nms(d_boxes, d_scores, backend="cuda")
    rois = _gpu(np.zeros((1, 5), F32))[0]
    with pytest.raises(ValueError, match=r"roi_pool: features, rois are GPU arrays"):
        ops.roi_pool(*_gpu(np.zeros((1, 4, 4, 2), F32)), rois, 2, backend="numpy")


def test_gpu_arrays_of_the_wrong_dtype_or_shape_are_named():
    boxes, scores, _ = _nms_inputs()
    d64, d_scores = _gpu(boxes.astype(np.float64), scores)
    with pytest.raises(ValueError, match=r"boxes must be a C-contiguous float32 GPU array of "
                       r"shape \[N, 4\], got a C-contiguous float64 array of shape \(40, 4\)"):
        ops.nms(d64, d_scores, 0.5, backend="cuda")
    d_boxes, d_short = _gpu(boxes, scores[:-1])
    with pytest.raises(ValueError, match=r"scores must be .* shape \[40\], got .* \(39,\)"):
        ops.nms(d_boxes, d_short, 0.5, backend="cuda")
    d_float_classes = _gpu(scores)[0]
    with pytest.raises(ValueError, match=r"classes must be a C-contiguous integer GPU array"):
        ops.batched_nms(d_boxes, d_scores, d_float_classes, 0.5, backend="cuda")
    image, boxes4, idx64 = _gpu(
        np.zeros((1, 3, 3, 2), F32), np.zeros((2, 4), F32), np.zeros(2, np.int64)
    )
    with pytest.raises(ValueError, match=r"box_indices must be a C-contiguous int32 GPU array"):
        ops.crop_and_pool(image, boxes4, idx64, 4, backend="cuda")
    # thresholds and sizes are checked as for host input
    with pytest.raises(ValueError, match=r"iou_threshold must be in \[0, 1\]"):
        ops.nms(d_boxes, d_scores, 1.5, backend="cuda")


def test_device_metadata_checks_read_only_the_interface():
    # C-contiguous (strides None or the C strides) passes; other strides are named
    assert check_device_array("x", _Interface((3, 4), "<f4"), F32, (None, 4)) == (3, 4)
    assert check_device_array("x", _Interface((3, 4), "<f4", (16, 4)), F32, (3, None)) == (3, 4)
    with pytest.raises(ValueError, match="got a non-contiguous float32 array of shape"):
        check_device_array("x", _Interface((3, 4), "<f4", (4, 12)), F32, (None, 4))
    with pytest.raises(ValueError, match=r"must be a C-contiguous float32 GPU array of shape "
                       r"\[N, 4\], got a C-contiguous float32 array of shape \(3,\)"):
        check_device_array("x", _Interface((3,), "<f4"), F32, (None, 4))
    assert check_device_array("c", _Interface((5,), "<i2"), None, (5,)) == (5,)
    assert is_device_array(_Interface((1,), "<f4")) and not is_device_array(np.zeros(1))
    assert device_inputs("op", "cpu", a=np.zeros(1), b=[1.0]) is False


@pytest.mark.gpu
def test_torch_cuda_tensors_go_through_in_place():
    torch = pytest.importorskip("torch")
    boxes, scores, _ = _nms_inputs()
    t_boxes = torch.from_numpy(boxes).cuda()
    t_scores = torch.from_numpy(scores).cuda()
    got = ops.nms(t_boxes, t_scores, 0.4, backend="cuda")
    assert is_device_array(got)
    assert_same(np.asarray(got.copy_to_host()), ops.nms(boxes, scores, 0.4, backend="numpy"))
    rng = np.random.default_rng(2)
    image = rng.standard_normal((1, 6, 7, 5)).astype(F32)
    rois = np.array([[0, 1.0, 1.0, 9.0, 7.0], [0, 0.5, 2.0, 4.0, 3.0]], F32)
    got = ops.roi_align(
        torch.from_numpy(image).cuda(), torch.from_numpy(rois).cuda(), 2, 0.5, 2, True,
        backend="cuda",
    )
    want = ops.roi_align(image, rois, 2, 0.5, 2, True, backend="numpy")
    assert_same(np.asarray(got.copy_to_host()), want)
    with pytest.raises(ValueError, match="non-contiguous float32"):
        ops.nms(t_boxes.t().contiguous().t(), t_scores, 0.4, backend="cuda")
