"""``tf.image.crop_and_resize`` and the fused crop + 2x2 max pool (spec 1.8, 2.5, 6.1).

``crop_and_resize`` reproduces TensorFlow's CPU kernel
(``tensorflow/core/kernels/image/crop_and_resize_op.cc``) bitwise: the same float32 formula, in
the same order, with the crop-size-1 centre computed as TF's double expression. The Faster
R-CNN's RoI step is ``crop_and_resize`` to 14x14 followed by ``tf.nn.max_pool`` 2x2 stride 2
VALID (workshop, Luminoth); ``crop_and_pool`` computes exactly that without materialising the
crops.

The NumPy reference below (``backend="numpy"``) is the readable definition; the Numba kernels
in ``npfrcnn.kernels.cpu.crop_and_resize`` compute the same function and are checked bitwise
against it and against TensorFlow; so are the CUDA kernels (``backend="cuda"``), which also take
GPU arrays: float32 C-contiguous ``image`` and ``boxes`` and int32 ``box_indices`` exposing
``__cuda_array_interface__`` (CuPy, CUDA torch tensors, numba device arrays) are used in place
and the result is a GPU array (numba's). Their shapes and dtypes are checked; their values
(finite boxes, indices in range) are not, since that would copy them to the host.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from npfrcnn._validate import (
    as_boxes,
    as_float_array,
    check_backend,
    check_device_array,
    check_nbytes,
    check_size_pair,
    describe_result,
    device_inputs,
    nbytes_of,
)
from npfrcnn.ops._backend import kernel_module

__all__ = ["crop_and_resize", "crop_and_pool"]

F32 = npt.NDArray[np.float32]
_METHODS = ("bilinear", "nearest")
# TF's max pool starts from the lowest float and keeps a value only if strictly greater.
_LOWEST = np.float32(np.finfo(np.float32).min)
_TINY = np.float32(np.finfo(np.float32).tiny)  # smallest normal float32
_CHUNK = 64  # boxes per step of the NumPy reference (bounds its temporary memory)
_TABLE_BYTES = 25  # per box and crop row/column: the CPU kernels' sampling tables


# --------------------------------------------------------------------------------------------
# NumPy reference
# --------------------------------------------------------------------------------------------


def _axis_samples(lo: F32, hi: F32, size: int, crop: int) -> tuple[Any, Any, Any, Any, Any]:
    """Source coordinates along one axis for ``n`` boxes: TF's ``in_y`` (or ``in_x``).

    ``lo``/``hi`` are float32 ``[n]`` (``y1``/``y2`` or ``x1``/``x2``). Returns
    ``(valid, first, second, lerp, coord)``, each ``[n, crop]``: ``valid`` is False where the
    coordinate lies outside ``[0, size - 1]`` (TF writes ``extrapolation_value``; a NaN
    coordinate, reachable only through float overflow, counts as outside), ``first``/``second``
    are ``floor``/``ceil`` and ``lerp = coord - first``; where not valid the coordinate is
    replaced by 0 so that the indices stay inside the map (those samples are overwritten).
    """
    span = np.float32(size - 1)
    steps = np.arange(crop, dtype=np.float32)  # [crop]; int -> float is exact here
    if crop > 1:
        scale = (hi - lo) * span / np.float32(crop - 1)  # [n]
        coord = lo[:, None] * span + steps[None, :] * scale[:, None]  # [n, crop]
    else:
        # TF: 0.5 * (y1 + y2) * (H - 1) is a double expression, rounded to float once.
        centre = 0.5 * (lo + hi).astype(np.float64) * np.float64(size - 1)
        coord = centre.astype(np.float32)[:, None]  # [n, 1]
    with np.errstate(invalid="ignore"):
        valid = (coord >= 0) & (coord <= span)  # [n, crop]; False for NaN
    safe = np.where(valid, coord, np.float32(0.0))
    first = np.floor(safe)
    lerp = (safe - first).astype(np.float32)
    return valid, first.astype(np.intp), np.ceil(safe).astype(np.intp), lerp, safe


def _round_half_away(c: F32) -> npt.NDArray[np.intp]:
    """C's ``roundf`` for ``c >= 0`` (halves go up); ``c - floor(c)`` is exact in float32."""
    f = np.floor(c)
    return (f + (c - f >= np.float32(0.5))).astype(np.intp)


def _crop_and_resize_reference(
    image: F32,
    boxes: F32,
    box_indices: npt.NDArray[np.int32],
    crop_h: int,
    crop_w: int,
    nearest: bool,
    extrapolation_value: np.float32,
) -> F32:
    n, depth = boxes.shape[0], image.shape[3]
    out = np.empty((n, crop_h, crop_w, depth), dtype=np.float32)
    for s in range(0, n, _CHUNK):
        out[s : s + _CHUNK] = _crop_boxes(
            image,
            boxes[s : s + _CHUNK],
            box_indices[s : s + _CHUNK],
            crop_h,
            crop_w,
            nearest,
            extrapolation_value,
        )
    return out


def _crop_boxes(
    image: F32,
    boxes: F32,
    box_indices: npt.NDArray[np.int32],
    crop_h: int,
    crop_w: int,
    nearest: bool,
    extrapolation_value: np.float32,
) -> F32:
    """TF's per-box loop, vectorised over a few boxes: float32 ``[n, crop_h, crop_w, D]``."""
    # inf taps or overflowing box spans give inf/NaN exactly as in TF's kernel: no warnings.
    with np.errstate(over="ignore", invalid="ignore"):
        vy, top, bottom, ylerp, cy = _axis_samples(boxes[:, 0], boxes[:, 2], image.shape[1], crop_h)
        vx, left, right, xlerp, cx = _axis_samples(boxes[:, 1], boxes[:, 3], image.shape[2], crop_w)
        b = box_indices[:, None, None]  # [n, 1, 1]
        if nearest:
            rows = _round_half_away(cy)[:, :, None]  # [n, crop_h, 1]
            cols = _round_half_away(cx)[:, None, :]  # [n, 1, crop_w]
            crop = image[b, rows, cols]  # [n, crop_h, crop_w, D]
        else:
            t, bt = top[:, :, None], bottom[:, :, None]  # [n, crop_h, 1]
            lf, rt = left[:, None, :], right[:, None, :]  # [n, 1, crop_w]
            xl = xlerp[:, None, :, None]  # [n, 1, crop_w, 1]
            yl = ylerp[:, :, None, None]  # [n, crop_h, 1, 1]
            top_left, top_right = image[b, t, lf], image[b, t, rt]  # [n, crop_h, crop_w, D]
            bottom_left, bottom_right = image[b, bt, lf], image[b, bt, rt]
            upper = top_left + (top_right - top_left) * xl
            lower = bottom_left + (bottom_right - bottom_left) * xl
            crop = upper + (lower - upper) * yl
    inside = (vy[:, :, None] & vx[:, None, :])[..., None]  # [n, crop_h, crop_w, 1]
    return np.where(inside, crop, extrapolation_value)


def _max_pool_2x2(crops: F32) -> F32:
    """``tf.nn.max_pool2d(crops, 2, 2, "VALID")``: TF's rule, window visited row-major."""
    n, h, w, d = crops.shape
    h2, w2 = h // 2, w // 2
    windows = crops[:, : 2 * h2, : 2 * w2].reshape(n, h2, 2, w2, 2, d)
    out = np.full((n, h2, w2, d), _LOWEST, dtype=np.float32)
    for dy in range(2):
        for dx in range(2):
            v = windows[:, :, dy, :, dx]  # [n, h2, w2, d]
            out = np.where(v > out, v, out)  # strictly greater: NaN skipped, first tie kept
    return out


def _crop_and_pool_reference(
    image: F32,
    boxes: F32,
    box_indices: npt.NDArray[np.int32],
    crop_h: int,
    crop_w: int,
    extrapolation_value: np.float32,
) -> F32:
    n, depth = boxes.shape[0], image.shape[3]
    out = np.empty((n, crop_h // 2, crop_w // 2, depth), dtype=np.float32)
    for s in range(0, n, _CHUNK):
        crops = _crop_and_resize_reference(
            image,
            boxes[s : s + _CHUNK],
            box_indices[s : s + _CHUNK],
            crop_h,
            crop_w,
            False,
            extrapolation_value,
        )
        out[s : s + _CHUNK] = _max_pool_2x2(crops)
    return out


# --------------------------------------------------------------------------------------------
# Backends
# --------------------------------------------------------------------------------------------


def _cpu_module() -> Any:
    from npfrcnn.kernels.cpu import crop_and_resize as kernels

    return kernels


def _run_crop_cpu(
    img: F32, bx: F32, idx: npt.NDArray[np.int32], ch: int, cw: int, nearest: bool, ev: np.float32
) -> F32:
    out = np.empty((bx.shape[0], ch, cw, img.shape[3]), dtype=np.float32)
    _cpu_module().crop_and_resize(img, bx, idx, ch, cw, nearest, float(ev), out)
    return out


def _run_pool_cpu(
    img: F32, bx: F32, idx: npt.NDArray[np.int32], ch: int, cw: int, ev: np.float32
) -> F32:
    out = np.empty((bx.shape[0], ch // 2, cw // 2, img.shape[3]), dtype=np.float32)
    _cpu_module().crop_and_pool(img, bx, idx, ch, cw, float(ev), out)
    return out


def _run_crop_cuda(
    img: F32, bx: F32, idx: npt.NDArray[np.int32], ch: int, cw: int, nearest: bool, ev: np.float32
) -> F32:
    cuda_crop = kernel_module("cuda", "crop_and_resize")
    out = cuda_crop.crop_and_resize(img, bx, idx, ch, cw, nearest, float(ev))
    return np.asarray(out, dtype=np.float32)


def _run_pool_cuda(
    img: F32, bx: F32, idx: npt.NDArray[np.int32], ch: int, cw: int, ev: np.float32
) -> F32:
    out = kernel_module("cuda", "crop_and_resize").crop_and_pool(img, bx, idx, ch, cw, float(ev))
    return np.asarray(out, dtype=np.float32)


# backend name -> runner taking the validated arrays: float32 C-contiguous image [B, H, W, D],
# finite float32 boxes [N, 4], int32 box indices in [0, B), positive crop sizes.
_CROP: dict[str, Callable[..., F32]] = {"cpu": _run_crop_cpu, "cuda": _run_crop_cuda}
_POOL: dict[str, Callable[..., F32]] = {"cpu": _run_pool_cpu, "cuda": _run_pool_cuda}


# --------------------------------------------------------------------------------------------
# Front doors
# --------------------------------------------------------------------------------------------


def _validate(
    image: npt.ArrayLike,
    boxes: npt.ArrayLike,
    box_indices: npt.ArrayLike,
    crop_size: int | Sequence[int],
    extrapolation_value: float,
    backend: str,
) -> tuple[F32, F32, npt.NDArray[np.int32], int, int, np.float32]:
    check_backend(backend)
    img = as_float_array("image", image, ndim=4)
    if img.shape[1] == 0 or img.shape[2] == 0:
        raise ValueError(
            f"image must have positive height and width, got shape {img.shape}; "
            "pass a [batch, height, width, depth] array with height, width >= 1"
        )
    bx = as_boxes("boxes", boxes)
    bx = _daz(bx)  # TF's CPU threads run with denormals-are-zero: a subnormal coordinate is 0
    idx = np.asarray(box_indices)
    if idx.dtype.kind not in "iu":
        raise ValueError(
            f"box_indices must be an integer array, got dtype {idx.dtype}; "
            "pass np.asarray(box_indices, dtype=np.int32)"
        )
    if idx.ndim != 1 or idx.shape[0] != bx.shape[0]:
        raise ValueError(
            f"box_indices must have shape [{bx.shape[0]}] (one image index per box), "
            f"got shape {idx.shape}"
        )
    batch = img.shape[0]
    if idx.size and (idx.min() < 0 or idx.max() >= batch):
        raise ValueError(
            f"box_indices must lie in [0, {batch}) (the image batch), got values in "
            f"[{idx.min()}, {idx.max()}]; index images from 0 to batch - 1"
        )
    crop_h, crop_w, ev = _scalars(crop_size, extrapolation_value)
    return img, bx, np.ascontiguousarray(idx, dtype=np.int32), crop_h, crop_w, ev


def _daz(a: F32) -> F32:
    """Subnormal values read as 0, as TF's CPU threads (denormals-are-zero) read them in
    arithmetic. Intermediate results that come out subnormal are not flushed here (TF's
    flush-to-zero); that differs from TF only for values below ``1.2e-38``."""
    tiny = (a != 0) & (np.abs(a) < _TINY)
    return np.where(tiny, np.float32(0.0), a) if tiny.any() else a


def _scalars(
    crop_size: int | Sequence[int], extrapolation_value: float
) -> tuple[int, int, np.float32]:
    crop_h, crop_w = check_size_pair("crop_size", crop_size)
    try:
        ev = np.float32(extrapolation_value)
    except (TypeError, ValueError):
        raise ValueError(
            f"extrapolation_value must be a real number, got {extrapolation_value!r}"
        ) from None
    return crop_h, crop_w, ev


def _check_size(
    op: str, n: int, crop_h: int, crop_w: int, depth: int, pooled: bool
) -> None:
    """Refuse a result (with the CPU kernels' sampling tables) larger than the machine's
    memory before anything is allocated; every axis counts as at least 1 (``nbytes_of``)."""
    shape = (n, crop_h // 2, crop_w // 2, depth) if pooled else (n, crop_h, crop_w, depth)
    check_nbytes(
        f"{op} with crop_size ({crop_h}, {crop_w}): {describe_result(shape)} and its "
        "sampling tables",
        nbytes_of(shape, 4) + _TABLE_BYTES * max(n, 1) * (crop_h + crop_w),
        "pass a smaller crop_size or fewer boxes at a time",
    )


def _device_crop(
    op: str,
    image: Any,
    boxes: Any,
    box_indices: Any,
    crop_size: int | Sequence[int],
    extrapolation_value: float,
    backend: str,
) -> tuple[int, int, np.float32] | None:
    """For GPU inputs (``backend="cuda"``): their shapes and dtypes checked, and the crop size
    and extrapolation value; ``None`` for host inputs."""
    if not device_inputs(op, backend, image=image, boxes=boxes, box_indices=box_indices):
        return None
    shape = check_device_array("image", image, np.float32, (None, None, None, None))
    if shape[1] == 0 or shape[2] == 0:
        raise ValueError(
            f"image must have positive height and width, got shape {shape}; "
            "pass a [batch, height, width, depth] array with height, width >= 1"
        )
    n = check_device_array("boxes", boxes, np.float32, (None, 4))[0]
    check_device_array("box_indices", box_indices, np.int32, (n,))
    crop_h, crop_w, ev = _scalars(crop_size, extrapolation_value)
    _check_size(op, n, crop_h, crop_w, shape[3], op == "crop_and_pool")
    return crop_h, crop_w, ev


def _check_pool_size(crop_h: int, crop_w: int) -> None:
    if crop_h < 2 or crop_w < 2:
        raise ValueError(
            f"crop_size must be at least 2 on each axis for a 2x2 max pool, got "
            f"({crop_h}, {crop_w}); pass e.g. (14, 14)"
        )


def crop_and_resize(
    image: npt.ArrayLike,
    boxes: npt.ArrayLike,
    box_indices: npt.ArrayLike,
    crop_size: int | Sequence[int],
    method: str = "bilinear",
    extrapolation_value: float = 0.0,
    backend: str = "cpu",
) -> F32:
    """Crop boxes out of a batch of images and resize them, exactly as ``tf.image.crop_and_resize``.

    Args:
        image: ``[batch, H, W, depth]`` real array (any int/float dtype; converted to float32
            first, as TF's kernel casts each tap to float). ``H`` and ``W`` must be >= 1.
            For ``"bilinear"``, subnormal values count as 0 (TF's denormals-are-zero; a
            subnormal produced inside the lerp is not flushed, unlike TF's flush-to-zero).
        boxes: float32 ``[N, 4]`` normalized ``(y1, x1, y2, x2)``: ``y`` maps to
            ``y * (H - 1)``. Coordinates outside ``[0, 1]`` are allowed (samples falling outside
            the image get ``extrapolation_value``); ``y1 > y2`` / ``x1 > x2`` give an up-down /
            left-right flipped crop; a zero-size box repeats one sample. Must be finite.
            Subnormal coordinates (below ``1.2e-38``) count as 0, as on TF's CPU, whose
            threads run with denormals-are-zero.
        box_indices: integer ``[N]``, the image of each box, in ``[0, batch)``.
        crop_size: ``(crop_h, crop_w)`` positive ints (an int means square), each at most
            ``2**63 - 1``. A size of 1 samples the box centre ``0.5 * (y1 + y2) * (H - 1)``
            (computed in double, as TF does).
        method: ``"bilinear"`` (corner-aligned lerp, TF's float32 order) or ``"nearest"``
            (``roundf``: halves round up).
        extrapolation_value: value for samples outside the image (float32; NaN allowed).
        backend: ``"cpu"`` (Numba, parallel over boxes), ``"numpy"`` (reference) or ``"cuda"``
            (``npfrcnn.kernels.cuda.crop_and_resize``; a clear error where it cannot run).

    Returns:
        float32 ``[N, crop_h, crop_w, depth]``; ``N == 0`` or ``depth == 0`` gives an empty
        array of that shape.
        Bitwise equal to TF's CPU kernel for all valid input, except where
        ``(y2 - y1) * (H - 1)`` overflows float32 (coordinates near 1e38): TF then indexes with
        an undefined ``(int)NaN``; here such samples are extrapolated.

    Raises:
        ValueError: wrong rank or shape, non-real dtype, non-finite boxes, a box index outside
            ``[0, batch)``, a non-positive crop size, a result larger than the machine's memory
            (counting an empty axis as 1, and the CPU kernel's ``25 * N * (crop_h + crop_w)``
            bytes of sampling tables), an unknown method or backend.
    """
    if method not in _METHODS:
        raise ValueError(f"method must be 'bilinear' or 'nearest', got {method!r}")
    check_backend(backend)
    on_gpu = _device_crop(
        "crop_and_resize", image, boxes, box_indices, crop_size, extrapolation_value, backend
    )
    if on_gpu is not None:
        crop_h, crop_w, ev = on_gpu
        cuda_crop = kernel_module("cuda", "crop_and_resize")
        return cuda_crop.crop_and_resize(
            image, boxes, box_indices, crop_h, crop_w, method == "nearest", float(ev)
        )
    img, bx, idx, crop_h, crop_w, ev = _validate(
        image, boxes, box_indices, crop_size, extrapolation_value, backend
    )
    nearest = method == "nearest"
    if not nearest:  # TF's lerp reads subnormal taps as 0 (DAZ); nearest copies them as they are
        img = _daz(img)
    _check_size("crop_and_resize", bx.shape[0], crop_h, crop_w, img.shape[3], False)
    if bx.shape[0] == 0 or img.shape[3] == 0:  # nothing to compute
        return np.zeros((bx.shape[0], crop_h, crop_w, img.shape[3]), dtype=np.float32)
    if backend == "numpy":
        return _crop_and_resize_reference(img, bx, idx, crop_h, crop_w, nearest, ev)
    return _CROP[backend](img, bx, idx, crop_h, crop_w, nearest, ev)


def crop_and_pool(
    image: npt.ArrayLike,
    boxes: npt.ArrayLike,
    box_indices: npt.ArrayLike,
    crop_size: int | Sequence[int],
    extrapolation_value: float = 0.0,
    backend: str = "cpu",
) -> F32:
    """Bilinear ``crop_and_resize`` followed by a 2x2 stride-2 VALID max pool, fused.

    Equal to ``tf.nn.max_pool2d(tf.image.crop_and_resize(image, boxes, box_indices, crop_size),
    2, 2, "VALID")``: the RoI pooling of the workshop and Luminoth (14x14 crops, 7x7 out). The
    max follows TF's rule (start from -FLT_MAX, keep a value only if strictly greater, window
    visited row-major), so NaN samples are skipped and a window with no larger value gives
    -FLT_MAX. The ``cpu`` backend never materialises the crops: each output cell computes its
    four bilinear samples and keeps the largest.

    Args:
        image, boxes, box_indices, extrapolation_value, backend: as for ``crop_and_resize``.
        crop_size: ``(crop_h, crop_w)``, each >= 2 (an int means square); an odd size drops the
            last crop row/column, as VALID pooling does (15 -> 7).

    Returns:
        float32 ``[N, crop_h // 2, crop_w // 2, depth]``; ``N == 0`` or ``depth == 0`` gives
        an empty array.

    Raises:
        ValueError: as ``crop_and_resize`` (the size bound applies to the pooled result), and
            for a crop size below 2.
    """
    check_backend(backend)
    on_gpu = _device_crop(
        "crop_and_pool", image, boxes, box_indices, crop_size, extrapolation_value, backend
    )
    if on_gpu is not None:
        crop_h, crop_w, ev = on_gpu
        _check_pool_size(crop_h, crop_w)
        cuda_crop = kernel_module("cuda", "crop_and_resize")
        return cuda_crop.crop_and_pool(
            image, boxes, box_indices, crop_h, crop_w, float(ev)
        )
    img, bx, idx, crop_h, crop_w, ev = _validate(
        image, boxes, box_indices, crop_size, extrapolation_value, backend
    )
    _check_pool_size(crop_h, crop_w)
    img = _daz(img)  # TF's lerp reads subnormal taps as 0
    _check_size("crop_and_pool", bx.shape[0], crop_h, crop_w, img.shape[3], True)
    if bx.shape[0] == 0 or img.shape[3] == 0:  # nothing to compute
        return np.zeros((bx.shape[0], crop_h // 2, crop_w // 2, img.shape[3]), dtype=np.float32)
    if backend == "numpy":
        return _crop_and_pool_reference(img, bx, idx, crop_h, crop_w, ev)
    return _POOL[backend](img, bx, idx, crop_h, crop_w, ev)
