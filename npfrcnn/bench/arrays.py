"""Moving benchmark inputs into an implementation's array kind, and results back to NumPy.

Array kinds: ``numpy`` (host), ``torch`` (CPU tensors, or CUDA tensors on ``--device cuda``),
``tensorflow`` (``tf.constant`` on the CPU, or the first GPU), ``numba`` (numba CUDA device
arrays; ``--device cuda`` only). Inputs are converted once, before any call is timed, so a GPU
implementation is timed on device-resident inputs.

Results come back by their type: torch tensors (``.cpu().numpy()``), TF tensors (``.numpy()``),
numba device arrays (``copy_to_host``), any other ``__cuda_array_interface__`` array (CuPy, ...)
through numba, tuples element by element, everything else through ``np.asarray``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["KINDS", "convert", "default_kind", "synchronize", "to_numpy"]

KINDS = ("numpy", "torch", "tensorflow", "numba")


def default_kind(device: str) -> str:
    """``numpy`` on the CPU; on CUDA, torch tensors when torch sees the GPU, else numba's."""
    if device == "cpu":
        return "numpy"
    try:
        import torch

        if torch.cuda.is_available():
            return "torch"
    except ImportError:
        pass
    return "numba"


def convert(x: Any, kind: str, device: str) -> Any:
    """``x`` (a NumPy array; anything else is returned as it is) in array kind ``kind``."""
    if not isinstance(x, np.ndarray) or kind == "numpy":
        return x
    if kind == "torch":
        import torch

        t = torch.from_numpy(np.ascontiguousarray(x).copy())
        return t.to("cuda") if device == "cuda" else t
    if kind == "tensorflow":
        import tensorflow as tf

        with tf.device("/GPU:0" if device == "cuda" else "/CPU:0"):
            return tf.constant(x)
    if kind == "numba":
        from numba import cuda

        return cuda.to_device(np.ascontiguousarray(x))
    raise ValueError(f"unknown array kind {kind!r}; choose one of {', '.join(KINDS)}")


def to_numpy(x: Any) -> Any:
    """A result as NumPy arrays (tuples and lists become tuples)."""
    if isinstance(x, (tuple, list)):
        return tuple(to_numpy(v) for v in x)
    if isinstance(x, np.ndarray):
        return x
    module = type(x).__module__ or ""
    if module.startswith("torch"):
        return x.detach().cpu().numpy()
    if module.startswith(("tensorflow", "tf_keras", "keras")) and hasattr(x, "numpy"):
        return x.numpy()
    if hasattr(x, "copy_to_host"):
        return x.copy_to_host()
    if hasattr(x, "__cuda_array_interface__"):
        from numba import cuda

        return cuda.as_cuda_array(x).copy_to_host()
    return np.asarray(x)


def synchronize(device: str) -> None:
    """Wait for every GPU queue this process uses (numba's and torch's); a no-op on the CPU."""
    if device != "cuda":
        return
    import sys

    if "torch" in sys.modules:
        torch = sys.modules["torch"]
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.synchronize()
    if "numba.cuda" in sys.modules:
        from numba import cuda

        cuda.synchronize()
    if "tensorflow" in sys.modules:
        tf = sys.modules["tensorflow"]
        if tf.config.list_logical_devices("GPU"):
            tf.test.experimental.sync_devices()
