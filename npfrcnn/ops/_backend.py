"""Backend lookup shared by every op's front door.

``kernel_module(backend, op)`` returns ``npfrcnn.kernels.<backend>.<op>``. Where a backend cannot
run here (numba-cuda not installed, no GPU and no simulator, or no kernel for that op yet) it
raises one ``ValueError`` naming the backend, the op and the fix, so every op fails the same way.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

_FIX = "use backend='cpu' (Numba) or backend='numpy' (reference)"


def kernel_module(backend: str, op: str) -> ModuleType:
    """``npfrcnn.kernels.<backend>.<op>``, checked to be runnable ("cpu" or "cuda")."""
    name = f"npfrcnn.kernels.{backend}.{op}"
    try:
        module = importlib.import_module(name)
    except ImportError as err:
        if backend == "cpu":
            raise
        raise ValueError(
            f"backend={backend!r} is not available for {op} ({err}); install the 'cuda' extra "
            f"(pip install 'npfrcnn[cuda]') on a machine with an NVIDIA GPU, or {_FIX}"
        ) from err
    if backend == "cuda":
        from npfrcnn.kernels.cuda._cuda import cuda

        if not cuda.is_available():
            raise ValueError(
                f"backend='cuda' needs a CUDA GPU for {op} (or NUMBA_ENABLE_CUDASIM=1 for the "
                f"slow simulator); {_FIX}"
            )
    return module


def kernel(backend: str, op: str, name: str) -> Any:
    """The function ``name`` of :func:`kernel_module`; a missing one is the same ValueError."""
    module = kernel_module(backend, op)
    try:
        return getattr(module, name)
    except AttributeError:
        raise ValueError(
            f"backend={backend!r} has no kernel for {op} ({name}) yet; {_FIX}"
        ) from None
