"""RoI max pooling with torchvision's semantics on NHWC feature maps.

The reference below (``backend="numpy"``) transcribes torchvision's CPU kernel
(``torchvision/csrc/ops/cpu/roi_pool_kernel.cpp``, forward, without argmax); the Numba kernel
``npfrcnn.kernels.cpu.roi_pool`` computes the same function and is checked bitwise against it.
Layouts as ``roi_align``: ``features`` ``[N, H, W, C]``, ``rois`` ``[K, 5]``
``(batch_index, x1, y1, x2, y2)``.

``backend="cuda"`` runs the numba.cuda kernel on host arrays (copied in and out) or on GPU
arrays: float32 C-contiguous ``features`` and ``rois`` exposing ``__cuda_array_interface__``
(CuPy, CUDA torch tensors, numba device arrays) are used in place and the result is a GPU array
(numba's). Their shapes and dtypes are checked; their values are not (finite RoIs, batch
indices in range), since that would copy them to the host.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt

from npfrcnn.ops._backend import kernel_module
from npfrcnn.ops.roi_align import device_rois, validate_rois

__all__ = ["roi_pool"]

F32 = npt.NDArray[np.float32]
_LOWEST = np.float32(np.finfo(np.float32).min)


def _round_half_away(v: F32) -> npt.NDArray[np.int64]:
    """C's ``round``: halves go away from zero (``v - trunc(v)`` is exact in float32)."""
    t = np.trunc(v)
    return (t + np.where(np.abs(v - t) >= np.float32(0.5), np.sign(v), 0)).astype(np.int64)


def _roi_pool_reference(
    features: F32,
    rois: F32,
    batch: npt.NDArray[np.int64],
    scale: np.float32,
    pooled_h: int,
    pooled_w: int,
) -> F32:
    height, width = features.shape[1], features.shape[2]
    out = np.zeros((rois.shape[0], pooled_h, pooled_w, features.shape[3]), dtype=np.float32)
    for k in range(rois.shape[0]):
        fmap = features[batch[k]]  # [H, W, C]
        start_w, start_h, end_w, end_h = _round_half_away(rois[k, 1:] * scale)
        roi_w = max(end_w - start_w + 1, 1)  # torchvision forces malformed RoIs to 1x1
        roi_h = max(end_h - start_h + 1, 1)
        bin_h = np.float32(roi_h) / np.float32(pooled_h)
        bin_w = np.float32(roi_w) / np.float32(pooled_w)
        for ph in range(pooled_h):
            h0 = int(np.floor(np.float32(ph) * bin_h)) + start_h
            h1 = int(np.ceil(np.float32(ph + 1) * bin_h)) + start_h
            h0, h1 = min(max(h0, 0), height), min(max(h1, 0), height)
            for pw in range(pooled_w):
                w0 = int(np.floor(np.float32(pw) * bin_w)) + start_w
                w1 = int(np.ceil(np.float32(pw + 1) * bin_w)) + start_w
                w0, w1 = min(max(w0, 0), width), min(max(w1, 0), width)
                if h1 <= h0 or w1 <= w0:
                    continue  # an empty bin is 0
                m = np.full(features.shape[3], _LOWEST, dtype=np.float32)
                for h in range(h0, h1):
                    for w in range(w0, w1):
                        v = fmap[h, w]  # [C]
                        m = np.where(v > m, v, m)  # strictly greater: NaN skipped
                out[k, ph, pw] = m
    return out


def _run_cpu(
    fmap: F32, r: F32, batch: npt.NDArray[np.int64], scale: np.float32, size: tuple[int, int]
) -> F32:
    from npfrcnn.kernels.cpu import roi_pool as kernels

    out = np.empty((r.shape[0], *size, fmap.shape[3]), dtype=np.float32)
    kernels.roi_pool(fmap, r, batch, float(scale), size[0], size[1], out)
    return out


def _run_cuda(
    fmap: F32, r: F32, batch: npt.NDArray[np.int64], scale: np.float32, size: tuple[int, int]
) -> F32:
    cuda_pool = kernel_module("cuda", "roi_pool")
    return np.asarray(cuda_pool.roi_pool(fmap, r, size, float(scale)), np.float32)


# backend name -> runner taking the validated arrays (see ``validate_rois``).
_RUNNERS: dict[str, Callable[..., F32]] = {"cpu": _run_cpu, "cuda": _run_cuda}


def roi_pool(
    features: npt.ArrayLike,
    rois: npt.ArrayLike,
    output_size: int | Sequence[int],
    spatial_scale: float = 1.0,
    backend: str = "cpu",
) -> F32:
    """RoI max pooling, as ``torchvision.ops.roi_pool`` (Fast R-CNN's RoIPool).

    Args:
        features: ``[N, H, W, C]`` real array (converted to float32), ``H, W >= 1``.
        rois: ``[K, 5]`` ``(batch_index, x1, y1, x2, y2)``, finite, input-image pixels;
            ``batch_index`` a whole number in ``[0, N)``; ``|coordinate * spatial_scale|`` at
            most ``2**24``.
        output_size: ``(pooled_h, pooled_w)`` positive ints (an int means square), each at
            most ``2**63 - 1``.
        spatial_scale: finite, > 0, used as float32.
        backend: ``"cpu"`` (Numba, parallel over RoIs), ``"numpy"`` (reference) or ``"cuda"``
            (``npfrcnn.kernels.cuda.roi_pool``; a clear error where it cannot run).

    Rules (torchvision's): RoI corners are ``round(coordinate * spatial_scale)`` (halves away
    from zero) and inclusive, so the RoI is ``max(x2 - x1 + 1, 1)`` pixels wide; bin ``pw``
    covers columns ``[floor(pw * bin_w), ceil((pw + 1) * bin_w))`` offset by ``x1`` and clamped
    to ``[0, W]``; an empty bin gives 0; otherwise the max over the bin starting from -FLT_MAX
    and keeping a value only if strictly greater (NaN is skipped; an all -inf bin gives
    -FLT_MAX, as torchvision's does).

    Returns:
        float32 ``[K, pooled_h, pooled_w, C]``; ``K == 0`` or ``C == 0`` gives an empty array
        of that shape.

    Raises:
        ValueError: as ``roi_align`` (wrong rank or shape, non-real dtype, non-finite RoIs, bad
            batch index, coordinates beyond ``2**24``, non-positive sizes or scale, a result
            larger than the machine's memory, backend).
    """
    on_gpu = device_rois("roi_pool", features, rois, output_size, spatial_scale, backend)
    if on_gpu is not None:
        cuda_pool = kernel_module("cuda", "roi_pool")
        return cuda_pool.roi_pool(features, rois, on_gpu[:2], float(on_gpu[2]))
    fmap, r, batch, scale, pooled_h, pooled_w = validate_rois(
        features, rois, output_size, spatial_scale, backend
    )
    if r.shape[0] == 0 or fmap.shape[3] == 0:  # nothing to compute
        return np.zeros((r.shape[0], pooled_h, pooled_w, fmap.shape[3]), dtype=np.float32)
    if backend == "numpy":
        return _roi_pool_reference(fmap, r, batch, scale, pooled_h, pooled_w)
    return _RUNNERS[backend](fmap, r, batch, scale, (pooled_h, pooled_w))
