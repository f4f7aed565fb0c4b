"""Numba ``@njit`` CPU kernels, one file per op (no fastmath; ``cache=True``).

Where their cache lives, and what a damaged or unwritable cache does, is set in
``npfrcnn.kernels`` (``_numba_cache``) before any of these modules is imported.

Importing this package starts Numba's threading layer with idle threads that sleep instead of
spinning: when Numba picks its OpenMP layer (libgomp), its threads otherwise busy-wait after
every parallel kernel (``OMP_WAIT_POLICY`` unset), taking a core from the multi-threaded BLAS
GEMM that runs next (about 10 % of the torchvision backbone's time on 2 cores; see
benchmarks/RESULTS.md). ``OMP_WAIT_POLICY=PASSIVE`` is set only while libgomp loads and is
then removed again, so child processes and libraries that read the environment later see it
unchanged (a later ``import torch`` shares this libgomp by its soname, and so its passive
threads). A value you set yourself is left alone, as is a threading layer Numba already started.

It cannot help when libgomp is already loaded: ``import torch`` loads its own
``libgomp.so.1``, which Numba's OpenMP layer then shares, with the policy it read at torch's
import (the torchvision backbone runs about 1.4x slower on 2 cores in such a process). There,
set ``OMP_WAIT_POLICY=PASSIVE`` in the environment before Python starts, or import npfrcnn's
kernels first.
"""

from __future__ import annotations

import os


def _start_quiet_threads() -> None:
    if "OMP_WAIT_POLICY" in os.environ:
        return  # the user's choice
    from numba.np.ufunc import parallel

    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    try:
        parallel._launch_threads()
    finally:
        del os.environ["OMP_WAIT_POLICY"]


_start_quiet_threads()
