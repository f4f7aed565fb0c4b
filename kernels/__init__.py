"""Compiled hot loops for npfrcnn, importable as ``npfrcnn.kernels``.

Kernels never import ``npfrcnn`` and never validate: the front doors in ``npfrcnn.ops`` hand
them C-contiguous arrays of the documented dtype and shape.
"""
