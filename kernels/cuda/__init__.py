"""numba.cuda kernels and their host drivers, one file per op (same names as ``npfrcnn.ops``).

``_cuda`` is the only module that imports numba.cuda: launch configuration
(``THREADS_PER_BLOCK``, settable for tests), transfers, work arrays and the non-contracting
float32 helpers every kernel uses. ``nms`` (with ``sort``, the device score sort),
``crop_and_resize``, ``roi_align`` and ``roi_pool`` hold the kernels and their drivers; the
drivers take NumPy arrays (copied in and out) or device arrays (used in place, results left on
the device). Without a GPU they run under ``NUMBA_ENABLE_CUDASIM=1``.
"""
