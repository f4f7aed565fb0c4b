"""Every CPU kernel is cached on disk, the parallel ones too, and a cached parallel kernel is
correct under another thread count.

Numba caches ``parallel=True`` functions with the thread count read at run time (numba PR
#7522; before it, a cache written with 8 threads crashed a process running 16). Each run below is
a fresh process sharing one empty ``NUMBA_CACHE_DIR``: the first, with one thread, compiles and
writes the cache; the second, with two, must load every parallel kernel from it (no compilation)
and still match the NumPy reference exactly (crop_and_resize, crop_and_pool) or within float32
rounding (roi_align, roi_pool; see their own tests).

The rest checks, in process, the choice of a per-user cache folder when the package's own
``__pycache__`` cannot be written (``npfrcnn.kernels._numba_cache``): a temporary folder is used
only if it is a real folder of ours that no one else can write, and a user's own Numba functions
keep Numba's own cache.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import tempfile
import textwrap

import pytest

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


# The cache policy of npfrcnn.kernels._numba_cache, in process (the read-only install and the
# damaged caches themselves are exercised in fresh processes in test_readonly_install.py).


def test_a_private_temp_folder_is_created_0700_and_then_reused(tmp_path):
    from npfrcnn.kernels import _numba_cache

    path = tmp_path / "npfrcnn-numba-test"
    assert _numba_cache._private(str(path)) is None
    assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0  # 0700, or stricter under umask
    assert _numba_cache._private(str(path)) is None  # already there, ours: used again


@pytest.mark.parametrize("squat", ["group-writable", "world-writable", "symlink", "file", "owner"])
def test_a_temp_folder_someone_else_could_write_is_refused(tmp_path, squat):
    from npfrcnn.kernels import _numba_cache

    path = tmp_path / "npfrcnn-numba-test"
    if squat == "symlink":
        (tmp_path / "real").mkdir(mode=0o700)
        path.symlink_to(tmp_path / "real")
    elif squat == "file":
        path.write_text("")
    else:
        path.mkdir(mode=0o700)
        if squat == "owner":
            if os.geteuid() != 0:
                pytest.skip("only root can make a folder owned by another user")
            os.chown(path, 65534, -1)
        else:
            path.chmod(0o720 if squat == "group-writable" else 0o702)
    reason = _numba_cache._private(str(path))
    assert reason is not None
    assert {"symlink": "not a folder", "file": "not a folder", "owner": "owned by uid 65534"}.get(
        squat, "writable by other users"
    ) in reason


def test_per_user_folders_follow_xdg_then_home_then_the_temp_folder(tmp_path, monkeypatch):
    from npfrcnn.kernels import _numba_cache

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "t"))
    user = f"-{os.geteuid()}" if hasattr(os, "geteuid") else ""
    temp = str(tmp_path / "t" / f"npfrcnn-numba{user}")

    def paths() -> list[str]:
        return [path for path, _ in _numba_cache._candidates()]

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert paths() == [str(tmp_path / "xdg" / "npfrcnn" / "numba"), temp]
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/xdg")  # not absolute: ignored, per the spec
    assert paths() == [str(tmp_path / "home" / ".cache" / "npfrcnn" / "numba"), temp]
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", "relative")  # never a folder named after it in the cwd
    assert paths() == [temp]


def test_functions_outside_the_kernels_keep_numbas_own_cache():
    from numba import njit
    from numba.core.caching import FunctionCache

    from npfrcnn.kernels.cpu import nms

    def double(x):  # a user's function, defined here, beside a writable __pycache__
        return 2 * x

    user = njit(cache=True)(double)
    assert type(user._cache) is FunctionCache  # Numba's own class, untouched
    assert type(nms.nms_kernel._cache) is not FunctionCache
    assert isinstance(nms.nms_kernel._cache, FunctionCache)
