"""The ops' front doors refuse integers their kernels cannot hold and work or memory without
bound, before any kernel runs (a ``ValueError`` naming the argument, the range or limit, and a
fix), and their kernels never return a partly written buffer.

Expected values are the kernels' integer range (int64), ``ROI_ALIGN_MAX_SAMPLES`` worked out by
hand from torchvision's sampling rule (``grid = ceil(roi_size / pooled)`` per axis, one sample
per grid cell and bin), and sizes far beyond any machine's memory (terabytes).
"""

from __future__ import annotations

import numpy as np
import pytest

import npfrcnn._validate as validate
from npfrcnn import ops
from npfrcnn.ops.roi_align import ROI_ALIGN_MAX_SAMPLES

INT64_MAX = 2**63 - 1
BOXES = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30]], np.float32)
SCORES = np.array([0.9, 0.8, 0.7], np.float32)
FMAP = np.arange(2 * 8 * 8 * 3, dtype=np.float32).reshape(2, 8, 8, 3)
ROIS = np.array([[0, 0, 0, 4, 4], [1, 2, 1, 7, 6]], np.float32)
CROP_BOXES = np.array([[0, 0, 1, 1], [0.2, 0.1, 0.9, 0.7]], np.float32)
CROP_IDX = np.array([0, 1], np.int32)


# Integers that do not fit the kernels' int64 ---------------------------------------------------


@pytest.mark.parametrize("backend", ["numpy", "cpu"])
@pytest.mark.parametrize("value", [2**63, 2**64, 10**30])
def test_nms_limits_beyond_int64_are_refused(backend, value):
    rng = "in \\[0, 9223372036854775807\\]"
    with pytest.raises(ValueError, match=f"max_output_size must be an integer {rng}.*None"):
        ops.nms(BOXES, SCORES, 0.5, max_output_size=value, backend=backend)
    with pytest.raises(ValueError, match=f"max_output_size must be an integer {rng}"):
        ops.soft_nms(BOXES, SCORES, max_output_size=value, sigma=0.5, backend=backend)
    with pytest.raises(ValueError, match=f"max_output_size_per_class must be an integer {rng}"):
        ops.batched_nms(BOXES, SCORES, [0, 0, 1], 0.5, value, backend=backend)


@pytest.mark.parametrize("backend", ["numpy", "cpu"])
def test_nms_limit_at_int64_max_means_no_limit(backend):
    # The largest int64 is allowed and keeps everything NMS keeps (boxes 0 and 1 overlap:
    # IoU 81/119 = 0.68 > 0.5, so box 1 goes).
    assert ops.nms(BOXES, SCORES, 0.5, INT64_MAX, backend=backend).tolist() == [0, 2]
    idx, _ = ops.soft_nms(BOXES, SCORES, INT64_MAX, 0.5, backend=backend)
    assert idx.tolist() == [0, 2]
    got = ops.batched_nms(BOXES, SCORES, np.array([0, 0, 1]), 0.5, INT64_MAX, backend=backend)
    assert got.tolist() == [0, 2]
    assert ops.nms(BOXES, SCORES, 0.5, np.uint64(2**63 - 1), backend=backend).tolist() == [0, 2]


@pytest.mark.parametrize("backend", ["numpy", "cpu"])
def test_roi_align_sampling_ratio_beyond_int64_is_refused(backend):
    for value in (2**63, -(2**63) - 1):
        with pytest.raises(ValueError, match=r"sampling_ratio must be an integer in "
                           r"\[-9223372036854775808, 9223372036854775807\]"):
            ops.roi_align(FMAP, ROIS, 2, sampling_ratio=value, backend=backend)
    # The most negative int64 is an ordinary "adaptive", the same as -1.
    want = ops.roi_align(FMAP, ROIS, 2, sampling_ratio=-1, backend=backend)
    got = ops.roi_align(FMAP, ROIS, 2, sampling_ratio=-(2**63), backend=backend)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("call", [
    lambda: ops.roi_align(FMAP, ROIS, 2**63),
    lambda: ops.roi_pool(FMAP, ROIS, (2, 2**63)),
    lambda: ops.crop_and_resize(FMAP, CROP_BOXES, CROP_IDX, (2**63, 2)),
    lambda: ops.crop_and_pool(FMAP, CROP_BOXES, CROP_IDX, 2**64),
], ids=["roi_align", "roi_pool", "crop_and_resize", "crop_and_pool"])
def test_output_sizes_beyond_int64_are_refused(call):
    with pytest.raises(ValueError, match=r"must be an integer in \[1, 9223372036854775807\]"):
        call()


@pytest.mark.parametrize("backend", ["numpy", "cpu"])
@pytest.mark.parametrize("op", [ops.resize_bilinear, ops.resize_nearest])
def test_resize_sizes_beyond_int64_are_refused(op, backend):
    # Before, 2**63 wrapped around inside np.arange and gave a [1, 0, 1, 3] "result".
    with pytest.raises(ValueError, match=r"out_h must be an integer in \[1, 9223372036854775807\]"):
        op(FMAP, 2**63, 1, backend=backend)
    with pytest.raises(ValueError, match=r"out_w must be an integer in \[1, 9223372036854775807\]"):
        op(FMAP, 1, 2**64, backend=backend)


def test_torchvision_resize_size_refuses_sizes_beyond_int64():
    with pytest.raises(ValueError, match=r"h must be an integer in \[1, 9223372036854775807\]"):
        ops.torchvision_resize_size(10**400, 5)
    with pytest.raises(ValueError, match="beyond torch's int64 sizes"):
        ops.torchvision_resize_size(1, 1, min_size=1e300, max_size=1e300)


def test_top_k_refuses_k_beyond_the_axis():
    # Already true before this change (k <= n is checked first); kept as the contract.
    for k in (2**40, 2**70):
        with pytest.raises(ValueError, match="k must be at most"):
            ops.top_k(SCORES, k)
        with pytest.raises(ValueError, match="k must be at most"):
            ops.torch_topk(SCORES, k)


# RoIAlign's sample count ------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["numpy", "cpu"])
def test_roi_align_refuses_a_huge_adaptive_grid_before_any_work(backend):
    # A 31,623 x 31,623-pixel RoI (1e9 pixels) at 7 x 7: ceil(31623 / 7) = 4518 samples per
    # bin and axis, 49 * 4518**2 = 1,000,203,876 samples: that took minutes per RoI before.
    big = np.array([[0, 0, 0, 31623, 31623]], np.float32)
    with pytest.raises(ValueError) as e:
        ops.roi_align(FMAP, big, 7, sampling_ratio=0, backend=backend)
    msg = str(e.value)
    for part in ("rois[0]", "4518 x 4518 samples", "7 x 7 bins", "1,000,203,876",
                 "ROI_ALIGN_MAX_SAMPLES = 16,777,216", "positive sampling_ratio"):
        assert part in msg, (part, msg)
    # A fixed ratio on the same RoI is cheap (49 * 4 samples) and runs.
    assert ops.roi_align(FMAP, big, 7, sampling_ratio=2, backend=backend).shape == (1, 7, 7, 3)


@pytest.mark.parametrize("aligned", [False, True])
def test_roi_align_sample_limit_is_inclusive(aligned):
    # 1 x 1 output: grid = ceil(roi size) per axis. A 4096 x 4096 RoI takes exactly 2**24
    # samples (allowed); one more pixel of width makes 4096 x 4097 (refused). ``aligned`` only
    # shifts both corners by half a pixel, which leaves the size alone.
    at = np.array([[0, 0, 0, 4096, 4096]], np.float32)
    over = np.array([[0, 0, 0, 4097, 4096]], np.float32)
    tiny = np.ones((1, 2, 2, 1), np.float32)
    assert ROI_ALIGN_MAX_SAMPLES == 4096 * 4096
    out = ops.roi_align(tiny, at, 1, 1 / 1, 0, aligned, backend="cpu")
    assert out.shape == (1, 1, 1, 1)
    with pytest.raises(ValueError, match="4096 x 4097 samples"):
        ops.roi_align(tiny, over, 1, 1.0, 0, aligned, backend="cpu")


@pytest.mark.parametrize("backend", ["numpy", "cpu"])
def test_roi_align_refuses_a_huge_fixed_ratio_whatever_the_rois(backend):
    # sampling_ratio=10**9 at 7 x 7: 49 * 10**18 samples per RoI; refused even with no RoIs,
    # since it is the argument that is wrong.
    for rois in (ROIS, ROIS[:0]):
        with pytest.raises(ValueError, match="sampling_ratio=1000000000 with output_size "
                           r"\(7, 7\) takes 49,000,000,000,000,000,000 bilinear samples"):
            ops.roi_align(FMAP, rois, 7, sampling_ratio=10**9, backend=backend)
    # The limit itself: 1 x 1 output, ratio 4096 is 2**24 samples (runs on the Numba kernel;
    # the reference would take minutes of Python loops), 4097 is refused.
    if backend == "cpu":
        assert ops.roi_align(FMAP, ROIS, 1, sampling_ratio=4096).shape == (2, 1, 1, 3)
    with pytest.raises(ValueError, match="16,785,409 bilinear samples"):
        ops.roi_align(FMAP, ROIS, 1, sampling_ratio=4097, backend=backend)


def test_roi_align_bins_count_even_without_samples():
    # 8192 x 8192 bins of one sample is 2**26 > 2**24, whatever else.
    with pytest.raises(ValueError, match="67,108,864 bilinear samples"):
        ops.roi_align(FMAP, ROIS, 8192, sampling_ratio=1)
    # An aligned, reversed RoI takes no samples (grid <= 0), but its bins still count.
    rev = np.array([[0, 4, 4, 0, 0]], np.float32)
    with pytest.raises(ValueError, match="output_size"):
        ops.roi_align(FMAP[..., :0], rev, (8192, 4096), sampling_ratio=0, aligned=True)


# Results and tables larger than the machine's memory -------------------------------------------

@pytest.mark.parametrize("backend", ["numpy", "cpu"])
@pytest.mark.parametrize("call, words", [
    (lambda b: ops.crop_and_resize(FMAP, CROP_BOXES, CROP_IDX, (10**6, 10**6), backend=b),
     ["crop_and_resize with crop_size (1000000, 1000000)", "[2, 1000000, 1000000, 3]",
      "21.8 TiB", "smaller crop_size"]),
    (lambda b: ops.crop_and_pool(FMAP, CROP_BOXES, CROP_IDX, (10**6, 10**6), backend=b),
     ["crop_and_pool with crop_size (1000000, 1000000)", "[2, 500000, 500000, 3]"]),
    (lambda b: ops.crop_and_resize(FMAP, CROP_BOXES[:0], CROP_IDX[:0], (10**7, 10**7), backend=b),
     ["[0, 10000000, 10000000, 3] float32 result (an empty axis counted as 1)"]),
    (lambda b: ops.roi_align(FMAP, ROIS, (10**6, 10**6), sampling_ratio=1, backend=b),
     ["[2, 1000000, 1000000, 3] float32 result", "smaller output_size"]),
    (lambda b: ops.roi_pool(FMAP, ROIS, (10**6, 10**6), backend=b),
     ["[2, 1000000, 1000000, 3] float32 result", "smaller output_size"]),
    (lambda b: ops.roi_pool(FMAP[..., :0], ROIS, (10**7, 10**7), backend=b),
     ["[2, 10000000, 10000000, 0] float32 result (an empty axis counted as 1)"]),
    (lambda b: ops.resize_bilinear(FMAP, 10**6, 10**6, backend=b),
     ["resizing to 1000000 x 1000000", "[2, 1000000, 1000000, 3]", "smaller out_h"]),
    (lambda b: ops.resize_nearest(FMAP[:0], 10**7, 10**7, backend=b),
     ["[0, 10000000, 10000000, 3] float32 result (an empty axis counted as 1)"]),
], ids=["crop", "pool", "crop-empty", "roi_align", "roi_pool", "roi_pool-no-channels",
        "bilinear", "nearest-empty"])
def test_results_beyond_memory_are_refused_before_allocating(backend, call, words):
    with pytest.raises(ValueError) as e:
        call(backend)
    msg = str(e.value)
    for w in words:
        assert w in msg, (w, msg)
    assert "more than this machine's" in msg


def test_memory_bound_is_the_machine_and_inclusive(monkeypatch):
    # One crop of 4 x 4 x 3 float32 = 192 bytes, plus its tables: 25 bytes per box and crop
    # row/column = 25 * (4 + 4) = 200: 392 bytes in all. With 392 bytes of "memory" it runs,
    # with 391 it is refused.
    monkeypatch.setattr(validate, "memory_limit_bytes", lambda: 392)
    got = ops.crop_and_resize(FMAP[:1], CROP_BOXES[:1], CROP_IDX[:1], 4)
    assert got.shape == (1, 4, 4, 3)
    monkeypatch.setattr(validate, "memory_limit_bytes", lambda: 391)
    with pytest.raises(ValueError, match="would need 392 B, more than this machine's 391 B"):
        ops.crop_and_resize(FMAP[:1], CROP_BOXES[:1], CROP_IDX[:1], 4)
    monkeypatch.undo()
    assert validate.memory_limit_bytes() > 2**26  # a real machine: more than 64 MiB


@pytest.mark.parametrize("op", ["roi_align", "roi_pool", "crop_and_resize"])
def test_no_channels_gives_an_empty_result_without_running_a_kernel(op):
    # 4096 x 4096 bins of nothing: before, the kernels looped over all 16.7M (empty) bins.
    empty = FMAP[..., :0]
    if op == "crop_and_resize":
        got = ops.crop_and_resize(empty, CROP_BOXES, CROP_IDX, 4096)
    else:
        got = getattr(ops, op)(empty, ROIS, 4096)
    assert got.shape == (2, 4096, 4096, 0) and got.dtype == np.float32


# Kernels never hand back a partly written buffer ----------------------------------------------


def test_kernel_allocation_failure_is_an_error_not_a_result():
    """Under a memory limit, a parallel kernel whose sampling tables cannot be allocated raises
    MemoryError instead of returning ``out`` as it was (run in a child process under
    ``RLIMIT_AS``; the kernels are called directly, past the front doors' size checks).

    Before, the tables were allocated inside the ``prange`` body, where Numba loses the error:
    roi_align returned its uninitialised buffer as the result.
    """
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(
        """
        import resource, numpy as np
        from npfrcnn.kernels.cpu import crop_and_resize as crop, roi_align as align
        img = np.ones((1, 4, 4, 1), np.float32)
        boxes = np.tile(np.array([[0, 0, 1, 1]], np.float32), (4, 1))
        idx = np.zeros(4, np.int32)
        rois = np.tile(np.array([[0, 0, 0, 3, 3]], np.float32), (4, 1))
        batch = np.zeros(4, np.int64)
        out = np.full((4, 1, 1, 1), 7.0, np.float32)
        crop.crop_and_resize(img, boxes, idx, 1, 1, False, 0.0, out)  # compile first
        align.roi_align(img, rois, batch, 1.0, 1, 1, 2, False, out)
        resource.setrlimit(resource.RLIMIT_AS, (3 * 2**30, 3 * 2**30))
        for name, run in [
            # 4 boxes x 10**8 crop rows: 10 GB of tables, over the 3 GiB limit
            ("crop", lambda: crop.crop_and_resize(img, boxes, idx, 10**8, 1, False, 0.0, out)),
            # 4 RoIs x 10**8 samples per axis: 20 GB of tables
            ("align", lambda: align.roi_align(img, rois, batch, 1.0, 1, 1, 10**8, False, out)),
        ]:
            out[:] = 7.0
            try:
                run()
                print(name, "returned", out.ravel().tolist())
            except MemoryError:
                print(name, "MemoryError")
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300)
    lines = proc.stdout.strip().splitlines()
    assert lines[-2:] == ["crop MemoryError", "align MemoryError"], (lines, proc.stderr[-2000:])
