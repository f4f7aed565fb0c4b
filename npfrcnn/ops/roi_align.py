"""RoIAlign with torchvision's semantics on NHWC feature maps (spec 5.4).

The reference below (``backend="numpy"``) transcribes torchvision's CPU kernel
(``torchvision/csrc/ops/cpu/roi_align_kernel.cpp`` and ``roi_align_common.h``) in float32, in
the same order of operations; the Numba kernel ``npfrcnn.kernels.cpu.roi_align`` computes the
same function and is checked bitwise against it. Detectron2's R101-C4 head uses
``roi_align(features, rois, (14, 14), 1/16, sampling_ratio=0, aligned=True)``.

Layouts: ``features`` is ``[N, H, W, C]`` (NHWC, npfrcnn's layout) where torchvision takes
NCHW; ``rois`` is ``[K, 5]`` ``(batch_index, x1, y1, x2, y2)`` in input-image pixels, as in
torchvision.

``backend="cuda"`` runs the numba.cuda kernel on host arrays (copied in and out) or on GPU
arrays: float32 C-contiguous ``features`` and ``rois`` exposing ``__cuda_array_interface__``
(CuPy, CUDA torch tensors, numba device arrays) are used in place and the result is a GPU array
(numba's). Their shapes and dtypes are checked; their values are not (finite RoIs, batch
indices in range), since that would copy them to the host.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from npfrcnn._validate import (
    as_float_array,
    check_backend,
    check_device_array,
    check_size_pair,
    device_inputs,
)
from npfrcnn.ops._backend import kernel_module

__all__ = ["roi_align"]

F32 = npt.NDArray[np.float32]
# Larger |coordinate * spatial_scale| would overflow the kernels' integer conversions (C's int
# casts in torchvision) and lose float32 integer precision; no feature map comes near it.
_COORD_LIMIT = float(2**24)


def validate_rois(
    features: npt.ArrayLike,
    rois: npt.ArrayLike,
    output_size: int | Sequence[int],
    spatial_scale: float,
    backend: str,
) -> tuple[F32, F32, npt.NDArray[np.int64], np.float32, int, int]:
    """Checks shared by ``roi_align`` and ``roi_pool``; returns the arrays the kernels take."""
    check_backend(backend)
    fmap = as_float_array("features", features, ndim=4)
    if fmap.shape[1] == 0 or fmap.shape[2] == 0:
        raise ValueError(
            f"features must have positive height and width, got shape {fmap.shape}; "
            "pass a [N, H, W, C] feature map with H, W >= 1"
        )
    r = as_float_array("rois", rois, ndim=2, last=5, finite=True)
    pooled_h, pooled_w, scale32 = _roi_scalars(output_size, spatial_scale)
    batch = r[:, 0]
    if batch.size and (
        np.any(batch != np.trunc(batch)) or batch.min() < 0 or batch.max() >= fmap.shape[0]
    ):
        raise ValueError(
            f"rois[:, 0] must hold whole-number batch indices in [0, {fmap.shape[0]}), got "
            f"values in [{batch.min()}, {batch.max()}]; put each RoI's image index first"
        )
    scaled = np.abs(r[:, 1:] * scale32)
    if scaled.size and scaled.max() > _COORD_LIMIT:
        raise ValueError(
            f"rois coordinates times spatial_scale must lie within +-2**24, got "
            f"{scaled.max():g}; pass boxes in input-image pixels with the feature map's scale"
        )
    return fmap, r, batch.astype(np.int64), scale32, pooled_h, pooled_w


def _roi_scalars(
    output_size: int | Sequence[int], spatial_scale: float
) -> tuple[int, int, np.float32]:
    pooled_h, pooled_w = check_size_pair("output_size", output_size)
    try:
        scale = float(spatial_scale)
    except (TypeError, ValueError):
        raise ValueError(f"spatial_scale must be a number, got {spatial_scale!r}") from None
    if not (np.isfinite(scale) and scale > 0):
        raise ValueError(
            f"spatial_scale must be a finite positive number, got {spatial_scale!r}; "
            "pass the feature stride's reciprocal, e.g. 1/16"
        )
    return pooled_h, pooled_w, np.float32(scale)


def device_rois(
    op: str,
    features: Any,
    rois: Any,
    output_size: int | Sequence[int],
    spatial_scale: float,
    backend: str,
) -> tuple[int, int, np.float32] | None:
    """For GPU inputs (``backend="cuda"``): their shapes and dtypes checked (not their values:
    that would copy them to the host), and ``(pooled_h, pooled_w, scale)``; ``None`` for host
    inputs."""
    check_backend(backend)
    if not device_inputs(op, backend, features=features, rois=rois):
        return None
    shape = check_device_array("features", features, np.float32, (None, None, None, None))
    if shape[1] == 0 or shape[2] == 0:
        raise ValueError(
            f"features must have positive height and width, got shape {shape}; "
            "pass a [N, H, W, C] feature map with H, W >= 1"
        )
    check_device_array("rois", rois, np.float32, (None, 5))
    return _roi_scalars(output_size, spatial_scale)


# --------------------------------------------------------------------------------------------
# NumPy reference
# --------------------------------------------------------------------------------------------


def _axis_weights(
    start: np.float32, bin_size: np.float32, pooled: int, grid: int, size: int
) -> tuple[Any, Any, Any, Any, Any]:
    """torchvision's sample coordinates along one axis and their bilinear data.

    Returns ``(inside, low, high, w_low, w_high)``, each ``[pooled, grid]``: ``inside`` is the
    axis' half of the ``-1 <= y <= H`` test; ``low``/``high`` are the taps after clamping
    (``y < 0`` -> 0; at or past the last row both are ``H - 1``), ``w_high = y - low`` and
    ``w_low = 1 - w_high`` (a double expression in C++, rounded to float).
    """
    p = np.arange(pooled, dtype=np.float32)[:, None]  # [pooled, 1]
    i = np.arange(grid, dtype=np.float32)[None, :]  # [1, grid]
    y = start + p * bin_size + (i + np.float32(0.5)) * bin_size / np.float32(grid)  # [pooled, grid]
    inside = (y >= np.float32(-1.0)) & (y <= np.float32(size))
    y = np.where(inside, np.maximum(y, np.float32(0.0)), np.float32(0.0))
    low = y.astype(np.int64)  # C's (int) cast; y >= 0 here
    last = low >= size - 1
    low = np.where(last, size - 1, low)
    high = np.where(last, low, low + 1)
    y = np.where(last, low.astype(np.float32), y)
    w_high = (y - low.astype(np.float32)).astype(np.float32)
    w_low = (1.0 - w_high.astype(np.float64)).astype(np.float32)
    return inside, low, high, w_low, w_high


def _roi_align_reference(
    features: F32,
    rois: F32,
    batch: npt.NDArray[np.int64],
    scale: np.float32,
    pooled_h: int,
    pooled_w: int,
    sampling_ratio: int,
    aligned: bool,
) -> F32:
    out = np.zeros((rois.shape[0], pooled_h, pooled_w, features.shape[3]), dtype=np.float32)
    height, width = features.shape[1], features.shape[2]
    offset = np.float32(0.5) if aligned else np.float32(0.0)
    for k in range(rois.shape[0]):
        fmap = features[batch[k]]  # [H, W, C]
        start_w, start_h, end_w, end_h = rois[k, 1:] * scale - offset
        roi_w, roi_h = end_w - start_w, end_h - start_h
        if not aligned:  # torchvision forces malformed RoIs to 1x1
            roi_w, roi_h = max(roi_w, np.float32(1.0)), max(roi_h, np.float32(1.0))
        bin_h, bin_w = roi_h / np.float32(pooled_h), roi_w / np.float32(pooled_w)
        if sampling_ratio > 0:
            grid_h = grid_w = sampling_ratio
        else:  # adaptive: ceil(roi / pooled) samples per bin and axis
            grid_h, grid_w = int(np.ceil(bin_h)), int(np.ceil(bin_w))
        count = np.float32(max(grid_h * grid_w, 1))
        # A negative grid (aligned, reversed RoI) takes no samples: every bin is 0 / count.
        gh, gw = max(grid_h, 0), max(grid_w, 0)
        in_y, y_lo, y_hi, wy_lo, wy_hi = _axis_weights(start_h, bin_h, pooled_h, gh, height)
        in_x, x_lo, x_hi, wx_lo, wx_hi = _axis_weights(start_w, bin_w, pooled_w, gw, width)
        acc = np.zeros((pooled_h, pooled_w, features.shape[3]), dtype=np.float32)
        with np.errstate(invalid="ignore", over="ignore"):  # inf features: NaN/inf as in C++
            for iy in range(gh):
                for ix in range(gw):
                    inside = in_y[:, iy, None] & in_x[None, :, ix]  # [ph, pw]
                    # torchvision gives an outside sample zero weights at position (0, 0).
                    yl = np.where(inside, y_lo[:, iy, None], 0)  # [ph, pw]
                    yh = np.where(inside, y_hi[:, iy, None], 0)
                    xl = np.where(inside, x_lo[None, :, ix], 0)
                    xh = np.where(inside, x_hi[None, :, ix], 0)
                    hy, ly = wy_lo[:, iy, None], wy_hi[:, iy, None]  # [ph, 1]
                    hx, lx = wx_lo[None, :, ix], wx_hi[None, :, ix]  # [1, pw]
                    zero = np.float32(0.0)
                    w1 = np.where(inside, hy * hx, zero)[..., None]  # [ph, pw, 1]
                    w2 = np.where(inside, hy * lx, zero)[..., None]
                    w3 = np.where(inside, ly * hx, zero)[..., None]
                    w4 = np.where(inside, ly * lx, zero)[..., None]
                    v1, v2, v3, v4 = fmap[yl, xl], fmap[yl, xh], fmap[yh, xl], fmap[yh, xh]
                    acc = acc + (w1 * v1 + w2 * v2 + w3 * v3 + w4 * v4)  # [ph, pw, C]
        out[k] = acc / count
    return out


# --------------------------------------------------------------------------------------------
# Backends and front door
# --------------------------------------------------------------------------------------------


def _run_cpu(
    fmap: F32,
    r: F32,
    batch: npt.NDArray[np.int64],
    scale: np.float32,
    size: tuple[int, int],
    ratio: int,
    align: bool,
) -> F32:
    from npfrcnn.kernels.cpu import roi_align as kernels

    out = np.empty((r.shape[0], *size, fmap.shape[3]), dtype=np.float32)
    kernels.roi_align(fmap, r, batch, float(scale), size[0], size[1], ratio, align, out)
    return out


def _run_cuda(
    fmap: F32,
    r: F32,
    batch: npt.NDArray[np.int64],
    scale: np.float32,
    size: tuple[int, int],
    ratio: int,
    align: bool,
) -> F32:
    out = kernel_module("cuda", "roi_align").roi_align(fmap, r, size, float(scale), ratio, align)
    return np.asarray(out, dtype=np.float32)


# backend name -> runner taking the validated arrays (see ``validate_rois``).
_RUNNERS: dict[str, Callable[..., F32]] = {"cpu": _run_cpu, "cuda": _run_cuda}


def roi_align(
    features: npt.ArrayLike,
    rois: npt.ArrayLike,
    output_size: int | Sequence[int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
    backend: str = "cpu",
) -> F32:
    """RoIAlign: the average of bilinear samples over each bin, as ``torchvision.ops.roi_align``.

    Args:
        features: ``[N, H, W, C]`` real array (converted to float32), ``H, W >= 1``.
        rois: ``[K, 5]`` ``(batch_index, x1, y1, x2, y2)``, finite, in the pixels of the image
            the features were computed from; ``batch_index`` a whole number in ``[0, N)``.
            ``|coordinate * spatial_scale|`` must not exceed ``2**24``.
        output_size: ``(pooled_h, pooled_w)`` positive ints (an int means square).
        spatial_scale: feature-map pixels per input pixel (e.g. 1/16); finite, > 0; used as
            float32, as torchvision's float kernel does.
        sampling_ratio: samples per bin and axis; ``<= 0`` means adaptive,
            ``ceil(roi_size / pooled_size)`` (so the cost grows with the RoI's size).
        aligned: False (Detectron1 / legacy): a RoI spans ``[x1 * scale, x2 * scale]`` and is
            widened to at least 1 pixel. True: shifted by -0.5 pixel so that pixel centres
            line up, with no widening (a reversed or empty RoI then gives 0).
        backend: ``"cpu"`` (Numba, parallel over RoIs), ``"numpy"`` (reference) or ``"cuda"``
            (``npfrcnn.kernels.cuda.roi_align``; a clear error where it cannot run).

    Sampling rules (torchvision's): a sample outside ``[-1, H] x [-1, W]`` contributes 0 (as
    zero weights on pixel (0, 0), so a non-finite ``features[b, 0, 0]`` still poisons it);
    otherwise coordinates below 0 clamp to 0 and at or past the last row/column clamp to it.
    Each bin is ``sum / max(grid_h * grid_w, 1)`` with the samples summed in row-major order.

    Returns:
        float32 ``[K, pooled_h, pooled_w, C]``; ``K == 0`` gives an empty array of that shape.
        Where torchvision itself fails (an aligned RoI with exactly one negative adaptive grid
        side makes it allocate a negative-size vector) the bins here are 0.

    Raises:
        ValueError: wrong rank or shape, non-real dtype, non-finite RoIs, a batch index that is
            not a whole number in ``[0, N)``, coordinates beyond ``2**24``, a non-positive
            output size or spatial scale, a non-integer sampling ratio, an unknown backend.
    """
    if isinstance(sampling_ratio, bool) or not isinstance(sampling_ratio, (int, np.integer)):
        raise ValueError(
            f"sampling_ratio must be an integer (<= 0 for adaptive), got {sampling_ratio!r}"
        )
    ratio, align = int(sampling_ratio), bool(aligned)
    on_gpu = device_rois("roi_align", features, rois, output_size, spatial_scale, backend)
    if on_gpu is not None:
        cuda_align = kernel_module("cuda", "roi_align")
        return cuda_align.roi_align(
            features, rois, on_gpu[:2], float(on_gpu[2]), ratio, align
        )
    fmap, r, batch, scale, pooled_h, pooled_w = validate_rois(
        features, rois, output_size, spatial_scale, backend
    )
    if r.shape[0] == 0:
        return np.zeros((0, pooled_h, pooled_w, fmap.shape[3]), dtype=np.float32)
    if backend == "numpy":
        return _roi_align_reference(fmap, r, batch, scale, pooled_h, pooled_w, ratio, align)
    return _RUNNERS[backend](fmap, r, batch, scale, (pooled_h, pooled_w), ratio, align)
