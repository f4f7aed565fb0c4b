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
    INT64_MAX,
    INT64_MIN,
    as_float_array,
    check_backend,
    check_device_array,
    check_int_range,
    check_nbytes,
    check_size_pair,
    describe_result,
    device_inputs,
    nbytes_of,
)
from npfrcnn.ops._backend import kernel_module

__all__ = ["ROI_ALIGN_MAX_SAMPLES", "roi_align"]

F32 = npt.NDArray[np.float32]
# Larger |coordinate * spatial_scale| would overflow the kernels' integer conversions (C's int
# casts in torchvision) and lose float32 integer precision; no feature map comes near it.
_COORD_LIMIT = float(2**24)
#: The most bilinear samples ``roi_align`` takes for one RoI: ``pooled_h * grid_h * pooled_w *
#: grid_w``, a grid side below 1 counted as 1 (so the number of bins is bounded too). 2**24
#: is about a 4096 x 4096-pixel RoI in adaptive mode; Detectron2's C4 head on a whole 800 x 1333
#: image takes 4,704, a whole 10,000 x 10,000 image at stride 16 about 400,000. Above it a RoI
#: costs seconds per channel and torchvision's own kernel needs a 32-byte table entry per
#: sample (512 MiB at the limit; its ``int`` sample count overflows at 2**31), so a RoI that
#: large is a mistake in its coordinates or ``spatial_scale``, or wants a fixed ratio.
ROI_ALIGN_MAX_SAMPLES = 2**24
# Bytes per sample position and axis in the CPU kernel's tables (inside: 1, two int64 taps,
# two float32 weights); see ``npfrcnn.kernels.cpu.roi_align``.
_TABLE_BYTES = 25


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
    check_result_size((r.shape[0], pooled_h, pooled_w, fmap.shape[3]))
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


def check_result_size(shape: tuple[int, int, int, int], table_bytes: int = 0) -> None:
    """Refuse a ``[K, pooled_h, pooled_w, C]`` float32 result (plus ``table_bytes`` of kernel
    tables) larger than the machine's memory, before anything is allocated."""
    check_nbytes(
        describe_result(shape) + (" and its sampling tables" if table_bytes else ""),
        nbytes_of(shape, 4) + table_bytes,
        "pass a smaller output_size or fewer RoIs at a time",
    )


def sample_grids(
    rois: F32,
    scale: np.float32,
    pooled_h: int,
    pooled_w: int,
    sampling_ratio: int,
    aligned: bool,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Each RoI's ``(grid_h, grid_w)`` samples per bin and axis, int64 ``[K]`` each.

    The kernels' own float32 operations, in their order (so the same values):
    ``size = x2 * scale - offset - (x1 * scale - offset)``, widened to at least 1 unless
    ``aligned``, and ``grid = ceil(size / pooled)`` when ``sampling_ratio <= 0``.
    """
    k = rois.shape[0]
    if sampling_ratio > 0:
        full = np.full(k, sampling_ratio, dtype=np.int64)
        return full, full.copy()
    offset = np.float32(0.5) if aligned else np.float32(0.0)
    start = rois[:, 1:3] * scale - offset  # [K, 2] (x, y)
    end = rois[:, 3:5] * scale - offset
    size = end - start  # float32
    if not aligned:
        size = np.maximum(size, np.float32(1.0))
    grid_w = np.ceil(size[:, 0] / np.float32(pooled_w)).astype(np.int64)
    grid_h = np.ceil(size[:, 1] / np.float32(pooled_h)).astype(np.int64)
    return grid_h, grid_w


def _fixed_ratio_samples(pooled_h: int, pooled_w: int, sampling_ratio: int) -> None:
    """With ``sampling_ratio > 0`` (or for the bins alone) every RoI takes the same number of
    samples: refuse it above ``ROI_ALIGN_MAX_SAMPLES`` whatever the RoIs."""
    grid = max(sampling_ratio, 1)
    n = pooled_h * grid * pooled_w * grid
    if n <= ROI_ALIGN_MAX_SAMPLES:
        return
    if sampling_ratio > 0:
        raise ValueError(
            f"sampling_ratio={sampling_ratio} with output_size ({pooled_h}, {pooled_w}) takes "
            f"{n:,} bilinear samples per RoI, more than ROI_ALIGN_MAX_SAMPLES = "
            f"{ROI_ALIGN_MAX_SAMPLES:,}; pass a smaller sampling_ratio or output_size "
            "(torchvision's MultiScaleRoIAlign uses sampling_ratio=2)"
        )
    raise ValueError(
        f"output_size ({pooled_h}, {pooled_w}) has {n:,} bins per RoI, more than "
        f"ROI_ALIGN_MAX_SAMPLES = {ROI_ALIGN_MAX_SAMPLES:,}; pass a smaller output_size"
    )


def check_samples(
    rois: F32,
    scale: np.float32,
    pooled_h: int,
    pooled_w: int,
    sampling_ratio: int,
    aligned: bool,
    channels: int,
) -> None:
    """Refuse, before any work, a RoI that would take more than ``ROI_ALIGN_MAX_SAMPLES``
    samples, and a result plus sampling tables larger than the machine's memory."""
    _fixed_ratio_samples(pooled_h, pooled_w, sampling_ratio)
    grid_h, grid_w = sample_grids(rois, scale, pooled_h, pooled_w, sampling_ratio, aligned)
    gh, gw = np.maximum(grid_h, 1), np.maximum(grid_w, 1)  # <= 2**26 each: no overflow
    worst = int(np.argmax(gh * gw)) if rois.shape[0] else 0
    if rois.shape[0]:
        n = pooled_h * int(gh[worst]) * pooled_w * int(gw[worst])
        if n > ROI_ALIGN_MAX_SAMPLES:
            x1, y1, x2, y2 = (float(v) for v in rois[worst, 1:])
            raise ValueError(
                f"rois[{worst}] ({x1:g}, {y1:g}, {x2:g}, {y2:g}) at spatial_scale "
                f"{float(scale):g} takes {int(grid_h[worst])} x {int(grid_w[worst])} samples "
                f"in each of its {pooled_h} x {pooled_w} bins (adaptive sampling, "
                f"sampling_ratio <= 0: ceil(RoI size / output size) per axis), {n:,} in all, "
                f"more than ROI_ALIGN_MAX_SAMPLES = {ROI_ALIGN_MAX_SAMPLES:,} per RoI; pass a "
                "positive sampling_ratio (torchvision's MultiScaleRoIAlign uses 2), or check "
                "the RoI's coordinates and spatial_scale"
            )
    positions = pooled_h * int(np.maximum(grid_h, 0).sum()) + pooled_w * int(
        np.maximum(grid_w, 0).sum()
    )
    check_result_size(
        (rois.shape[0], pooled_h, pooled_w, channels), _TABLE_BYTES * positions
    )


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
    k = check_device_array("rois", rois, np.float32, (None, 5))[0]
    pooled_h, pooled_w, scale = _roi_scalars(output_size, spatial_scale)
    check_result_size((k, pooled_h, pooled_w, shape[3]))
    return pooled_h, pooled_w, scale


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
        output_size: ``(pooled_h, pooled_w)`` positive ints (an int means square), each at
            most ``2**63 - 1``.
        spatial_scale: feature-map pixels per input pixel (e.g. 1/16); finite, > 0; used as
            float32, as torchvision's float kernel does.
        sampling_ratio: samples per bin and axis, an integer in ``[-2**63, 2**63 - 1]``;
            ``<= 0`` means adaptive, ``ceil(roi_size / pooled_size)`` (so the cost grows with
            the RoI's size). A RoI may take at most ``ROI_ALIGN_MAX_SAMPLES`` (2**24)
            samples, ``pooled_h * grid_h * pooled_w * grid_w`` with a grid side below 1
            counted as 1: larger ones are refused before any work (torchvision has no
            limit; it allocates 32 bytes per sample and RoI). For GPU arrays only a fixed
            ratio is checked, since the RoIs' values stay on the GPU.
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
        float32 ``[K, pooled_h, pooled_w, C]``; ``K == 0`` or ``C == 0`` gives an empty array
        of that shape. Where torchvision itself fails (an aligned RoI with exactly one negative
        adaptive grid side makes it allocate a negative-size vector) the bins here are 0.

    Raises:
        ValueError: wrong rank or shape, non-real dtype, non-finite RoIs, a batch index that is
            not a whole number in ``[0, N)``, coordinates beyond ``2**24``, a non-positive
            output size or spatial scale, a non-integer or out-of-range sampling ratio, a RoI
            over ``ROI_ALIGN_MAX_SAMPLES``, a result (with the kernel's sampling tables)
            larger than the machine's memory, an unknown backend.
    """
    ratio = check_int_range(
        "sampling_ratio", sampling_ratio, INT64_MIN, INT64_MAX, fix="<= 0 means adaptive"
    )
    align = bool(aligned)
    on_gpu = device_rois("roi_align", features, rois, output_size, spatial_scale, backend)
    if on_gpu is not None:
        # The RoIs' values stay on the GPU, so only a fixed ratio's sample count is checked.
        _fixed_ratio_samples(on_gpu[0], on_gpu[1], ratio)
        cuda_align = kernel_module("cuda", "roi_align")
        return cuda_align.roi_align(
            features, rois, on_gpu[:2], float(on_gpu[2]), ratio, align
        )
    fmap, r, batch, scale, pooled_h, pooled_w = validate_rois(
        features, rois, output_size, spatial_scale, backend
    )
    check_samples(r, scale, pooled_h, pooled_w, ratio, align, fmap.shape[3])
    if r.shape[0] == 0 or fmap.shape[3] == 0:  # nothing to compute
        return np.zeros((r.shape[0], pooled_h, pooled_w, fmap.shape[3]), dtype=np.float32)
    if backend == "numpy":
        return _roi_align_reference(fmap, r, batch, scale, pooled_h, pooled_w, ratio, align)
    return _RUNNERS[backend](fmap, r, batch, scale, (pooled_h, pooled_w), ratio, align)
