"""Every CUDA kernel compiles for a real GPU, with no fused multiply-add, without a GPU.

The simulator runs the kernels as Python, so it cannot catch what only the compiler sees: a
typing error in a kernel, or NVVM contracting ``a * b + c`` into an FMA (one rounding instead of
two, which breaks bitwise parity with the reference). This test runs every driver on small inputs
under the simulator, records each kernel launch with the numba types of its actual arguments (the
types a real launch compiles for), then compiles each one to PTX for sm_90 and sm_80 with NVVM in
a subprocess with the simulator off (``tests/cuda_ptx.py``; no device or driver is needed).

It needs NVVM and NVRTC (``pip install -e ".[test]"`` installs them through ``cuda-toolkit``)
and skips without them. On a GPU, ``test_no_fused_multiply_add_in_the_kernels`` in
``test_cuda_kernels.py`` checks the same on the code numba actually loads.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numba
import numpy as np
import pytest

from npfrcnn.kernels.cuda import _cuda
from npfrcnn.kernels.cuda import crop_and_resize as cuda_crop
from npfrcnn.kernels.cuda import nms as cuda_nms
from npfrcnn.kernels.cuda import roi_align as cuda_roi_align
from npfrcnn.kernels.cuda import roi_pool as cuda_roi_pool

ROOT = Path(__file__).resolve().parents[1]
F32 = np.float32

pytestmark = pytest.mark.skipif(
    not _cuda.SIMULATED, reason="records launches under the simulator (the GPU test covers this)"
)


def _exercise_every_driver() -> None:
    """Call each driver with every argument variant the ops use (host and device inputs,
    ``out=``, both crop methods, aligned or not, fixed and adaptive sampling)."""
    rng = np.random.default_rng(0)
    yx = rng.uniform(0, 20, (70, 2))
    boxes = np.concatenate([yx, yx + rng.uniform(1, 8, (70, 2))], axis=1).astype(F32)
    scores = rng.integers(0, 5, 70).astype(F32)
    classes = rng.integers(0, 3, 70)
    cuda_nms.nms(boxes, scores, 0.5)
    cuda_nms.nms(boxes, scores, 0.5, 10, 1.0)
    cuda_nms.nms(_cuda.cuda.to_device(boxes), _cuda.cuda.to_device(scores), 0.5)
    cuda_nms.batched_nms(boxes, scores, classes, 0.5, 4)
    order = np.argsort(-scores, kind="stable").astype(np.int64)
    cuda_nms.nms_kernel(boxes, order, 0.5, 70)
    cuda_nms.batched_nms_kernel(boxes, order, classes[order].astype(np.int64), 0.5, 4)

    image = rng.standard_normal((2, 5, 6, 3)).astype(F32)
    crop_boxes = rng.uniform(-0.2, 1.2, (4, 4)).astype(F32)
    idx = np.array([0, 1, 1, 0], np.int32)
    for nearest in (False, True):
        cuda_crop.crop_and_resize(image, crop_boxes, idx, 3, 2, nearest, 0.0)
    cuda_crop.crop_and_pool(image, crop_boxes, idx, 4, 4, 0.0)
    out = _cuda.cuda.device_array((4, 2, 2, 3), np.float32)
    d_image = _cuda.cuda.to_device(image)
    cuda_crop.crop_and_pool(d_image, _cuda.cuda.to_device(crop_boxes), idx, 4, 4, 0.0, out=out)

    rois = np.array([[0, 1.0, 1.0, 9.0, 7.0], [1, 0.5, 2.0, 4.0, 3.0]], F32)
    for sampling_ratio, aligned in [(2, False), (0, True), (-1, True)]:
        cuda_roi_align.roi_align(image, rois, (2, 3), 0.5, sampling_ratio, aligned)
    cuda_roi_pool.roi_pool(image, rois, (2, 2), 0.5)


def _record_launches(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str, tuple]]:
    from numba.cuda.simulator import kernel as sim

    seen: dict[tuple[str, str, tuple], None] = {}
    original = sim.FakeCUDAKernel.__call__

    def recording_call(self, *args):
        if not self._device and sim._kernel_context is None:  # a launch, not a device call
            argtypes = tuple(numba.typeof(a) for a in args)
            seen[(self.fn.__module__, self.fn.__name__, argtypes)] = None
        return original(self, *args)

    monkeypatch.setattr(sim.FakeCUDAKernel, "__call__", recording_call)
    old = _cuda.set_threads_per_block(8)
    try:
        _exercise_every_driver()
    finally:
        _cuda.set_threads_per_block(old)
        monkeypatch.undo()
    return list(seen)


def test_every_kernel_compiles_for_the_gpu_without_fma(tmp_path, monkeypatch):
    launches = _record_launches(monkeypatch)
    kernels = {(m, n) for m, n, _ in launches}
    # every kernel the drivers own was launched (a new kernel must be exercised above)
    for module in (cuda_nms, cuda_crop, cuda_roi_align, cuda_roi_pool):
        assert any(m == module.__name__ for m, _ in kernels), module.__name__
    assert ("npfrcnn.kernels.cuda.sort", "_global_step") in kernels  # 70 keys span 2 chunks

    with open(tmp_path / "launches.pkl", "wb") as f:
        pickle.dump(launches, f)
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="0")
    command = [sys.executable, "-m", "tests.cuda_ptx", str(tmp_path / "launches.pkl")]
    proc = subprocess.run(
        [*command, str(tmp_path / "r")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "r").read_text())
    if "unavailable" in report:
        pytest.skip(f"NVVM/NVRTC not installed: {report['unavailable']}")
    results = report["results"]
    assert len(results) == len(launches)
    problems = []
    for key, per_cc in results.items():
        for cc, counts in per_cc.items():
            if "error" in counts:
                problems.append(f"{key} [{cc}]: does not compile: {counts['error'][:400]}")
            elif counts["fma_f32"] or counts["mad_f32"]:
                fused = counts["fma_f32"] + counts["mad_f32"]
                problems.append(f"{key} [{cc}]: {fused} fused multiply-adds (fma/mad .f32)")
    assert not problems, "\n".join(problems)
