"""Compiled hot loops for npfrcnn, importable as ``npfrcnn.kernels``.

Kernels never import ``npfrcnn`` and never validate: the front doors in ``npfrcnn.ops`` hand
them C-contiguous arrays of the documented dtype and shape.

Importing this package, which Python does before any kernel module, sets where the kernels'
Numba cache lives (``_numba_cache``): ``NUMBA_CACHE_DIR`` if set and writable, else the
``__pycache__`` beside each kernel, else a per-user folder, else compiled in memory; a damaged
cache entry is recompiled. Functions outside this package keep Numba's own behaviour.
"""

from . import _numba_cache  # relative: kernels never import npfrcnn

_numba_cache.install()
