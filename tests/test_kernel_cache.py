"""Every CPU kernel is cached on disk, the parallel ones too, and a cached parallel kernel is
correct under another thread count.

Numba caches ``parallel=True`` functions with the thread count read at run time (numba PR
#7522; before it, a cache written with 8 threads crashed a process running 16). Each run below is
a fresh process sharing one empty ``NUMBA_CACHE_DIR``: the first, with one thread, compiles and
writes the cache; the second, with two, must load every parallel kernel from it (no compilation)
and still match the NumPy reference exactly (crop_and_resize, crop_and_pool) or within float32
rounding (roi_align, roi_pool; see their own tests).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

_SCRIPT = textwrap.dedent(
    """
    import json
    import numba
    import numpy as np
    from npfrcnn import ops
    from npfrcnn.kernels.cpu import crop_and_resize, roi_align, roi_pool

    rng = np.random.default_rng(7)
    image = rng.standard_normal((2, 11, 13, 5)).astype(np.float32)
    boxes = rng.uniform(-0.3, 1.3, (40, 4)).astype(np.float32)
    idx = rng.integers(0, 2, 40).astype(np.int32)
    xy = rng.uniform(0, 200, (40, 4)).astype(np.float32)
    rois = np.concatenate(
        [idx[:, None].astype(np.float32), np.minimum(xy[:, :2], xy[:, 2:]),
         np.maximum(xy[:, :2], xy[:, 2:])], axis=1)
    same = {}
    for name, fn, args in [
        ("crop_and_resize", ops.crop_and_resize, (image, boxes, idx, (4, 6))),
        ("crop_and_pool", ops.crop_and_pool, (image, boxes, idx, (6, 4))),
    ]:
        got, want = fn(*args, backend="cpu"), fn(*args, backend="numpy")
        same[name] = bool(np.array_equal(got, want, equal_nan=True))
    for name, fn, args in [
        ("roi_align", ops.roi_align, (image, rois, 3, 1 / 16, 2, True)),
        ("roi_pool", ops.roi_pool, (image, rois, 3, 1 / 16)),
    ]:
        got, want = fn(*args, backend="cpu"), fn(*args, backend="numpy")
        same[name] = bool(np.allclose(got, want, rtol=1e-5, atol=1e-6))
    kernels = [crop_and_resize.crop_and_resize, crop_and_resize.crop_and_pool,
               roi_align.roi_align, roi_pool.roi_pool]
    stats = {k.__name__: [sum(k.stats.cache_hits.values()), sum(k.stats.cache_misses.values())]
             for k in kernels}
    print(json.dumps({"threads": numba.get_num_threads(), "same": same, "stats": stats}))
    """
)


def _run(cache_dir: str, threads: int) -> dict:
    env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir, NUMBA_NUM_THREADS=str(threads))
    proc = subprocess.run(
        [sys.executable, "-c", _SCRIPT], env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_parallel_kernels_load_from_the_cache_under_another_thread_count(tmp_path):
    first = _run(str(tmp_path), 1)
    assert first["threads"] == 1
    assert all(first["same"].values()), first
    # an empty cache: every parallel kernel compiled (a miss), none loaded
    assert all(hits == 0 and misses >= 1 for hits, misses in first["stats"].values()), first

    second = _run(str(tmp_path), 2)
    assert second["threads"] == 2
    assert all(second["same"].values()), second
    assert all(hits >= 1 and misses == 0 for hits, misses in second["stats"].values()), second
