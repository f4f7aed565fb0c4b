"""Device sort of uint64 keys (bitonic network), used for the NMS score order.

The NMS driver packs each candidate as ``key = (descending score rank) << 32 | index`` so that
an ascending sort of distinct keys gives descending score with equal scores by lower index (see
``nms._score_keys``). The network sorts a power-of-two length ``P`` in place:

* ``_local_sort``: every block sorts its own chunk of ``2 * threads`` keys in shared memory
  (all stages ``k <= chunk``), ascending or descending by the chunk's place in the network;
* for each larger stage ``k``: one ``_global_step`` launch per distance ``j >= chunk``, then
  ``_local_merge`` finishes distances ``j < chunk`` in shared memory.

Launches: ``1 + sum over stages k > chunk of (log2(k / chunk) + 1)``. Each launch costs tens of
microseconds of Python-side dispatch while its work takes a few, so the NMS driver sorts with
``sort_threads(tpb)`` threads per block (1,024 at the production block size): chunks of 2,048
keys, and 10 launches for 12,000 boxes instead of 21 with 256 threads.
"""

from __future__ import annotations

from typing import Any

import numba

from . import _cuda
from ._cuda import cuda

__all__ = ["padded_length", "sort_keys", "sort_threads"]


@cuda.jit
def _local_sort(keys):
    sh = cuda.shared.array(0, dtype=numba.uint64)
    tid = cuda.threadIdx.x
    nt = cuda.blockDim.x
    chunk = 2 * nt
    base = cuda.blockIdx.x * chunk
    sh[tid] = keys[base + tid]
    sh[tid + nt] = keys[base + tid + nt]
    cuda.syncthreads()
    k = 2
    while k <= chunk:
        j = k // 2
        while j > 0:
            i = 2 * j * (tid // j) + (tid % j)
            a = sh[i]
            b = sh[i + j]
            up = ((base + i) & k) == 0
            if (a > b) == up and a != b:
                sh[i] = b
                sh[i + j] = a
            cuda.syncthreads()
            j //= 2
        k *= 2
    keys[base + tid] = sh[tid]
    keys[base + tid + nt] = sh[tid + nt]


@cuda.jit
def _global_step(keys, k, j):
    half = keys.shape[0] // 2
    start = cuda.grid(1)
    stride = cuda.gridsize(1)
    for t in range(start, half, stride):
        i = 2 * j * (t // j) + (t % j)
        a = keys[i]
        b = keys[i + j]
        up = (i & k) == 0
        if (a > b) == up and a != b:
            keys[i] = b
            keys[i + j] = a


@cuda.jit
def _local_merge(keys, k):
    sh = cuda.shared.array(0, dtype=numba.uint64)
    tid = cuda.threadIdx.x
    nt = cuda.blockDim.x
    chunk = 2 * nt
    base = cuda.blockIdx.x * chunk
    sh[tid] = keys[base + tid]
    sh[tid + nt] = keys[base + tid + nt]
    cuda.syncthreads()
    up = (base & k) == 0
    j = nt
    while j > 0:
        i = 2 * j * (tid // j) + (tid % j)
        a = sh[i]
        b = sh[i + j]
        if (a > b) == up and a != b:
            sh[i] = b
            sh[i + j] = a
        cuda.syncthreads()
        j //= 2
    keys[base + tid] = sh[tid]
    keys[base + tid + nt] = sh[tid + nt]


def sort_threads(tpb: int) -> int:
    """Threads per block for the sort: ``4 * tpb``, at most 1,024 (the kernels are small, so a
    full-size block fits; tests with a lowered ``tpb`` still get several chunks)."""
    return min(1024, 4 * tpb)


def padded_length(n: int, tpb: int) -> int:
    """The power-of-two length (at least one chunk of ``2 * tpb``) that ``sort_keys`` needs."""
    p = 2 * tpb
    while p < n:
        p *= 2
    return p


def sort_keys(keys: Any, tpb: int) -> None:
    """Sort the device array ``keys`` (uint64, length ``padded_length(.., tpb)``) ascending."""
    p = keys.shape[0]
    chunk = 2 * tpb
    nchunks = p // chunk
    shmem = chunk * 8
    _local_sort[nchunks, tpb, 0, shmem](keys)
    k = 2 * chunk
    while k <= p:
        j = k // 2
        while j >= chunk:
            _global_step[_cuda.blocks_for(p // 2, tpb), tpb](keys, k, j)
            j //= 2
        _local_merge[nchunks, tpb, 0, shmem](keys, k)
        k *= 2
