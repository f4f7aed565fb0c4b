"""The shared backend lookup: every op reports an unusable backend with the same ValueError."""

from __future__ import annotations

import pytest

from npfrcnn.ops._backend import kernel, kernel_module


def test_cpu_kernels_are_found():
    assert callable(kernel("cpu", "nms", "nms_kernel"))


def test_missing_kernel_module_names_backend_op_and_fix():
    with pytest.raises(ValueError, match=r"backend='cuda' is not available for no_such_op.*"
                       r"backend='cpu'"):
        kernel_module("cuda", "no_such_op")


def _skip_without_cuda() -> None:
    from npfrcnn.kernels.cuda import _cuda

    if not _cuda.cuda.is_available():  # NPFRCNN_TEST_GPU=1 on a machine without a GPU
        pytest.skip("neither a GPU nor the simulator: the device check answers first")


def test_missing_kernel_function_names_backend_op_and_fix():
    _skip_without_cuda()
    with pytest.raises(ValueError, match=r"backend='cuda' has no kernel for nms \(no_such\)"):
        kernel("cuda", "nms", "no_such")


def test_cuda_without_a_device_names_the_fix(monkeypatch):
    from npfrcnn.kernels.cuda import _cuda

    monkeypatch.setattr(_cuda.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=r"needs a CUDA GPU for roi_pool.*backend='cpu'"):
        kernel_module("cuda", "roi_pool")


def test_a_missing_cpu_kernel_module_is_a_bug_not_a_user_error():
    with pytest.raises(ImportError):
        kernel_module("cpu", "no_such_op")
