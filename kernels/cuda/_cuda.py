"""The one module that imports numba.cuda: launch configuration, transfers, exact float helpers.

Every CUDA kernel file in this package takes ``cuda`` and its helpers from here, so moving from
numba-cuda to its successor touches this file only.

Launch configuration
    ``THREADS_PER_BLOCK`` (default 256) is the block size of every grid-stride kernel and of
    the NMS final pass, and the upper bound of the RoI kernels' blocks (``cell_launch``; the NMS
    sort uses ``4 x`` it, at most 1,024); drivers read it at call time.
    Tests lower it (``set_threads_per_block(8)``) so that tiny inputs still span several blocks
    under the simulator (``NUMBA_ENABLE_CUDASIM=1``). ``NMS_BLOCK = 64`` is fixed: one bit per
    box in a ``uint64`` mask word. Shared arrays whose size follows the block size are dynamic
    (``cuda.shared.array(0, ...)``, sized at launch), so no kernel is compiled per block size.

Exact float32 arithmetic
    NVVM contracts ``a * b + c`` into a fused multiply-add unless told otherwise, and numba-cuda
    offers no switch for that short of ``fastmath``. A fused result is rounded once instead of
    twice, so it can differ from NumPy (and TensorFlow's CPU kernels) in the last bit, which moves
    an IoU across an NMS threshold or a sample point across a border. The kernels therefore do
    every float32 ``+ - * /`` that feeds a comparison or an output through ``fadd``/``fsub``/
    ``fmul``/``fdiv`` below: libdevice's round-to-nearest intrinsics on a GPU (never contracted),
    plain float32 operations under the simulator (where NumPy scalars round each operation).

Transfers
    ``is_device_array`` recognises device arrays (numba's own, or anything exposing
    ``__cuda_array_interface__``, such as CuPy arrays and CUDA torch tensors); ``as_device`` wraps
    them without a copy, or copies a NumPy array to the device. Host drivers own every transfer.
"""

from __future__ import annotations

import math
import os
from typing import Any

import numba
import numpy as np
import numpy.typing as npt
from numba import cuda

__all__ = [
    "NMS_BLOCK",
    "SIMULATED",
    "THREADS_PER_BLOCK",
    "CHANNELS_PER_THREAD",
    "as_device",
    "blocks_for",
    "cell_launch",
    "cuda",
    "device_array",
    "device_function",
    "fadd",
    "fdiv",
    "fmul",
    "fsub",
    "ftz",
    "is_device_array",
    "output",
    "release_scratch",
    "scratch",
    "set_threads_per_block",
    "split_cell",
    "threads_per_block",
    "to_device",
    "to_host",
]

#: True under numba's CUDA simulator, where ``cuda.is_available()`` is also true: timings taken
#: there mean nothing, and benchmarks refuse to run.
SIMULATED: bool = (
    bool(getattr(numba.config, "ENABLE_CUDASIM", 0))
    or os.environ.get("NUMBA_ENABLE_CUDASIM", "") == "1"
)

#: Block size of every kernel launched with the configurable block size.
THREADS_PER_BLOCK: int = 256

#: Boxes per NMS mask word (bits of a uint64); not configurable.
NMS_BLOCK: int = 64

#: Upper bound on the grid of a grid-stride kernel (each thread then loops).
MAX_BLOCKS: int = 65535


def threads_per_block() -> int:
    """The current block size (read by the drivers at every call)."""
    return THREADS_PER_BLOCK


def set_threads_per_block(n: int) -> int:
    """Set the block size of later launches (a power of two in [2, 1024]); return the old one."""
    global THREADS_PER_BLOCK
    if n < 2 or n > 1024 or n & (n - 1):
        raise ValueError(f"threads per block must be a power of two in [2, 1024], got {n}")
    old = THREADS_PER_BLOCK
    THREADS_PER_BLOCK = int(n)
    return old


def blocks_for(total: int, tpb: int | None = None) -> int:
    """Grid size for a grid-stride loop over ``total`` items (at least 1 block)."""
    t = THREADS_PER_BLOCK if tpb is None else tpb
    return max(1, min(MAX_BLOCKS, math.ceil(total / t)))


#: Channels each thread handles in the per-cell RoI kernels (crop, crop-and-pool, RoIAlign,
#: RoIPool), kept in a per-thread array: the geometry of an output cell (box coordinates, sample
#: positions, taps and weights, and the 64-bit index arithmetic that finds the cell) is
#: computed once per thread and reused for this many channels.
CHANNELS_PER_THREAD: int = 4

#: Upper bound on the grid of the per-cell kernels (each block then loops over cells).
MAX_CELL_BLOCKS: int = 1 << 20


def cell_launch(cells: int, depth: int) -> tuple[int, int]:
    """``(blocks, threads)`` for a per-cell kernel over ``cells`` output cells of ``depth``
    channels.

    A block handles one ``(cell, channel chunk)`` at a time; its ``threads`` threads take
    ``CHANNELS_PER_THREAD`` channels each, thread ``t`` channels ``chunk * span + t + j *
    threads`` (``span = threads * CHANNELS_PER_THREAD``), so each of a thread's loads is
    coalesced with its neighbours'. ``threads`` covers ``depth`` in one chunk where the block
    size allows (at least a warp; 256 threads for 1,024 channels); deeper maps take several
    chunks, as do the tests' lowered block sizes.
    """
    need = -(-depth // CHANNELS_PER_THREAD)
    threads = min(THREADS_PER_BLOCK, max(32, -(-need // 32) * 32))
    chunks = -(-depth // (threads * CHANNELS_PER_THREAD))
    return max(1, min(MAX_CELL_BLOCKS, cells * chunks)), threads


def is_device_array(x: object) -> bool:
    """True for numba device arrays and objects exposing ``__cuda_array_interface__``."""
    if SIMULATED:
        return bool(cuda.devicearray.is_cuda_ndarray(x))
    return bool(cuda.is_cuda_array(x))


def _numba_view(x: Any) -> Any:
    """A numba device array for a device array: numba's own as is (no new view object per call
    on the hot path), anything else through ``__cuda_array_interface__``."""
    if SIMULATED or getattr(x, "__cuda_ndarray__", False):
        return x
    return cuda.as_cuda_array(x)


def to_device(x: npt.ArrayLike, dtype: npt.DTypeLike) -> Any:
    """Copy host data to a new C-contiguous device array of ``dtype``."""
    return cuda.to_device(np.ascontiguousarray(x, dtype=dtype))


def as_device(x: Any, dtype: npt.DTypeLike) -> Any:
    """A device view of ``x``: device arrays are wrapped (no copy), host data is copied in.

    A device array must already have ``dtype`` and be C-contiguous (the kernels index it flat);
    converting it would need a copy on the device, which is the caller's decision to make.
    """
    if is_device_array(x):
        d = _numba_view(x)
        if np.dtype(d.dtype) != np.dtype(dtype):
            raise TypeError(f"device array has dtype {d.dtype}; convert it to {np.dtype(dtype)}")
        if not d.is_c_contiguous():
            raise TypeError("device array is not C-contiguous; make a contiguous copy first")
        return d
    return to_device(x, dtype)


_SCRATCH: dict[str, Any] = {}


def scratch(name: str, shape: int | tuple[int, ...], dtype: npt.DTypeLike) -> Any:
    """A device work array named ``name``, reused across calls (grown when too small).

    For intermediates only (NMS keys, mask, ...), never for results handed to the caller: the
    next call overwrites it. Kernels run in order on the default stream, so reuse is safe.
    ``release_scratch()`` frees them (a 100,000-box NMS mask holds 1.25 GB).
    """
    dims = (shape,) if isinstance(shape, int) else tuple(shape)
    size = math.prod(dims)
    dt = np.dtype(dtype)
    buf = _SCRATCH.get(name)
    if buf is None or buf.size < size or np.dtype(buf.dtype) != dt:
        buf = cuda.device_array(max(size, 1), dtype=dt)
        _SCRATCH[name] = buf
    return buf[:size].reshape(dims)


def release_scratch() -> None:
    """Free the work arrays kept by ``scratch``."""
    _SCRATCH.clear()


def to_host(x: Any) -> npt.NDArray[Any]:
    """A host copy of a device array, or ``np.asarray(x)`` for host data."""
    if is_device_array(x):
        return np.asarray(_numba_view(x).copy_to_host())
    return np.asarray(x)


def output(out: Any, shape: tuple[int, ...]) -> Any:
    """The result array: ``out`` if given (a float32 C-contiguous device array of ``shape``,
    e.g. reused across calls), else a new float32 device array."""
    if out is None:
        return cuda.device_array(shape, dtype=np.float32)
    d = as_device(out, np.float32)
    if tuple(d.shape) != tuple(shape):
        raise ValueError(f"out has shape {tuple(d.shape)}; the result needs {tuple(shape)}")
    return d


def device_array(shape: int | tuple[int, ...], dtype: npt.DTypeLike) -> Any:
    """An uninitialised device array."""
    return cuda.device_array(shape, dtype=np.dtype(dtype))


def device_function(fn: Any) -> Any:
    """``cuda.jit(device=True)`` on a GPU; the plain Python function under the simulator.

    The simulator runs a device function as the same Python code, but wraps every call in a
    per-module lock and a swap of the module's ``cuda`` global (so that the function sees the
    launching kernel's thread indices). Our device functions use no ``cuda`` API, so the swap does
    nothing for them, while the lock makes every simulated thread queue on each ``fadd``: a
    130-box NMS took about a minute, and many minutes on a loaded machine. Kernels (``cuda.jit``
    without ``device``) are simulated as usual. A device function that needs the ``cuda`` API
    must use ``cuda.jit(device=True)`` directly.
    """
    if SIMULATED:
        return fn
    return cuda.jit(device=True)(fn)


#: Smallest normal float32; below it ``ftz`` flushes.
TINY = np.float32(np.finfo(np.float32).tiny)


@device_function
def ftz(x):
    """``x`` with a subnormal value flushed to +0.0 (NaN kept): TF's CPU threads run with FTZ
    and DAZ, and the NMS reference emulates that, so the NMS kernels flush where it does."""
    if abs(x) < TINY:
        return np.float32(0.0)
    return x


@device_function
def split_cell(t, chunks, out_h, out_w):
    """Work item ``t`` of a per-cell kernel as ``(chunk, k, y, x)``: cell-major, chunk-minor."""
    chunk = t % chunks
    cell = t // chunks
    x = cell % out_w
    r = cell // out_w
    return chunk, r // out_h, r % out_h, x


if SIMULATED:
    # NumPy float32 scalars round every operation to float32, exactly like the intrinsics.
    def fadd(a, b):
        return np.float32(a) + np.float32(b)

    def fsub(a, b):
        return np.float32(a) - np.float32(b)

    def fmul(a, b):
        return np.float32(a) * np.float32(b)

    def fdiv(a, b):
        return np.float32(a) / np.float32(b)

else:
    from numba.cuda import libdevice

    @cuda.jit(device=True, inline=True)
    def fadd(a, b):
        return libdevice.fadd_rn(a, b)

    @cuda.jit(device=True, inline=True)
    def fsub(a, b):
        return libdevice.fsub_rn(a, b)

    @cuda.jit(device=True, inline=True)
    def fmul(a, b):
        return libdevice.fmul_rn(a, b)

    @cuda.jit(device=True, inline=True)
    def fdiv(a, b):
        return libdevice.fdiv_rn(a, b)
