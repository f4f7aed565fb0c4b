"""Numba ``@njit`` CPU kernels, one file per op (no fastmath; ``cache=True``)."""
