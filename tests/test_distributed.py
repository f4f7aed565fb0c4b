"""npfrcnn.distributed.DaskExecutor on real Dask clusters (no mocks).

A LocalCluster of two worker processes gives exactly the in-process detections, in input order,
with the model loaded once per worker; a bad image is one error record. A cluster started with
``dask scheduler`` and ``dask worker`` (other working folder, no access to the client's weights
file) survives a worker SIGKILLed mid-run, and losing the scheduler raises DaskError. A batch
that kills a worker with ``retries=0`` is error records, and the run goes on.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("distributed")

from PIL import Image  # noqa: E402

from npfrcnn.distributed import DaskError, DaskExecutor  # noqa: E402
from npfrcnn.model import FasterRCNN  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = str(ROOT / "weights" / "demo.h5")


# helpers -----------------------------------------------------------------------------------


def _synthetic(h: int, w: int, seed: int) -> np.ndarray:
    """Smooth gradients with a few flat rectangles (uint8 RGB)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    a = np.stack([255 * x / w, 255 * y / h, 128 + 100 * np.sin((x + y) / 17.0)], axis=-1)
    for _ in range(3):
        y0, x0 = int(rng.integers(0, h - 20)), int(rng.integers(0, w - 20))
        hh, ww = int(rng.integers(10, h // 2)), int(rng.integers(10, w // 2))
        a[y0:y0 + hh, x0:x0 + ww] = rng.integers(0, 256, 3)
    return np.clip(a, 0, 255).astype(np.uint8)


def _images(folder: Path, n: int, size: tuple[int, int] = (96, 128), seed: int = 0) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        h, w = size[0] + 8 * (i % 3), size[1] + 8 * (i % 2)
        p = folder / f"img{i:02d}.png"
        Image.fromarray(_synthetic(h, w, seed + i)).save(p)
        paths.append(str(p))
    return paths


@pytest.fixture(scope="module")
def model() -> FasterRCNN:
    return FasterRCNN.from_hdf5(WEIGHTS)


#: The BLAS thread count of every worker in these tests (LocalCluster on 2 cores: one each;
#: ``dask worker`` under a Nanny: OPENBLAS/OMP/MKL_NUM_THREADS=1).
WORKER_BLAS_THREADS = "1"

_EXPECTED: dict[str, dict[str, Any]] = {}

_EXPECT_SCRIPT = """
import sys, numpy as np
from npfrcnn import FasterRCNN
from npfrcnn.image import load
model = FasterRCNN.from_hdf5(sys.argv[1])
image = load(sys.argv[2])
d = model.detect(image)
np.savez(sys.argv[3], width=image.shape[1], height=image.shape[0], boxes=d.boxes,
         labels=d.labels, scores=d.scores)
"""


def _expect(model: FasterRCNN, path: str) -> dict[str, Any]:
    """The in-process detection of ``path``, run with the workers' BLAS thread count.

    A float32 sgemm's bits can depend on how many threads OpenBLAS splits it over (they do on
    an AMD EPYC family 26 with scipy-openblas 0.3.31), so "bitwise equal to in-process" is
    checked against an in-process run with the same thread configuration as the workers: a
    child process with the thread variables set as the workers have them.
    """
    if path not in _EXPECTED:
        out = path + ".expected.npz"
        env = dict(os.environ)
        for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            env[var] = WORKER_BLAS_THREADS
        subprocess.run([sys.executable, "-c", _EXPECT_SCRIPT, WEIGHTS, path, out],
                       env=env, check=True, timeout=300)
        with np.load(out) as z:
            _EXPECTED[path] = {"width": int(z["width"]), "height": int(z["height"]),
                               "boxes": z["boxes"], "labels": z["labels"],
                               "scores": z["scores"]}
        os.unlink(out)
    return _EXPECTED[path]


def _assert_same(res: dict[str, Any], want: dict[str, Any], path: str) -> None:
    assert res["ok"], res
    assert (res["width"], res["height"]) == (want["width"], want["height"]), path
    boxes = np.asarray(res["boxes"])
    assert boxes.dtype == np.float32 and boxes.shape == want["boxes"].shape, path
    np.testing.assert_array_equal(boxes, want["boxes"], err_msg=path)
    assert np.asarray(res["labels"]).dtype == np.int64
    np.testing.assert_array_equal(res["labels"], want["labels"], err_msg=path)
    assert np.asarray(res["scores"]).dtype == np.float32
    np.testing.assert_array_equal(res["scores"], want["scores"], err_msg=path)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def _time_limit(seconds: int) -> Iterator[None]:
    """A hard bound on a test (SIGALRM in the main thread raises; the finally blocks run)."""

    def _fire(*_: Any) -> None:
        raise TimeoutError(f"test ran over its {seconds} s bound")

    old = signal.signal(signal.SIGALRM, _fire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


# a local cluster -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def local() -> Iterator[DaskExecutor]:
    with _time_limit(60):
        ex = DaskExecutor(WEIGHTS, workers=2, batch_size=2)
    try:
        yield ex
    finally:
        ex.close()


def test_local_cluster_matches_in_process_detect_in_order(
    local: DaskExecutor, model: FasterRCNN, tmp_path: Path
) -> None:
    paths = _images(tmp_path, 8)
    items = [(10 + i, p) for i, p in enumerate(paths)]  # indices need not start at 0
    with _time_limit(60):
        out = list(local.map("detect", items, {}))
        out2 = list(local.map("detect", items[::-1], {"max_detections": 5}))
    assert [i for i, _ in out] == [i for i, _ in items]  # input order
    workers = set()
    for (_, res), p in zip(out, paths, strict=True):
        _assert_same(res, _expect(model, p), p)
        assert set(res["timings"]) == {"load", "preprocess", "features", "rpn", "proposals",
                                       "roi_pool", "head", "detections", "detect"}
        workers.add(res["worker"])
    assert [i for i, _ in out2] == [i for i, _ in items[::-1]]
    for _, res in out2:
        assert res["ok"] and len(res["scores"]) <= 5
    assert workers <= set(local.worker_info())
    # the model was loaded once per worker, not once per task, and the threads were sized
    info = local.worker_info()
    assert len(info) == 2 and local.workers_alive() == 2
    threads = str(max(1, (os.cpu_count() or 1) // 2))
    for w in info.values():
        assert w["loads"] == 1 and w["process_loads"] == 1, w
        assert w["threads"]["NUMBA_NUM_THREADS"] == threads
        assert w["weights_path"] != WEIGHTS
    assert "local cluster, 2 worker(s)" in local.describe()


def test_bad_image_is_one_error_record(
    local: DaskExecutor, model: FasterRCNN, tmp_path: Path
) -> None:
    paths = _images(tmp_path, 3)
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"this is not an image")
    missing = str(tmp_path / "nowhere.jpg")
    items = list(enumerate([paths[0], str(bad), paths[1], missing, paths[2]]))
    with _time_limit(60):
        out = dict(local.map("detect", items, {}))
    assert sorted(out) == [0, 1, 2, 3, 4]
    assert not out[1]["ok"] and str(bad) in out[1]["error"]
    assert "not an image file" in out[1]["error"] and "image-" not in out[1]["error"]
    assert not out[3]["ok"] and missing in out[3]["error"] and "no such file" in out[3]["error"]
    for i, p in ((0, paths[0]), (2, paths[1]), (4, paths[2])):
        _assert_same(out[i], _expect(model, p), p)


def test_trace_task_returns_a_one_image_npz(
    local: DaskExecutor, model: FasterRCNN, tmp_path: Path
) -> None:
    from npfrcnn.trace.io import read_trace

    [path] = _images(tmp_path, 1)
    with _time_limit(60):
        [(i, res)] = list(local.map("trace", [(0, path)], {"store_image": False}))
    assert i == 0 and res["ok"] and (res["width"], res["height"]) == (128, 96)
    f = tmp_path / "t.npz"
    f.write_bytes(res["npz"])
    want = _expect(model, path)
    with read_trace(f) as t:
        assert len(t) == 1 and t.meta["weights_sha256"] == local.sha256
        img = t.images[0]
        assert img.meta["name"] == "img00.png" and "image" not in img
        np.testing.assert_array_equal(img.get("detections/boxes"), want["boxes"])


def test_interrupt_cancels_the_submitted_batches(local: DaskExecutor, tmp_path: Path) -> None:
    """Ctrl-C (KeyboardInterrupt) while map waits: it propagates, the batches are cancelled."""
    # enough work that the map is still running when the alarm fires, on a fast machine too
    paths = _images(tmp_path, 24, size=(480, 640))
    armed = [True]

    def _interrupt(*_: Any) -> None:
        if armed[0]:
            armed[0] = False
            raise KeyboardInterrupt

    old = signal.signal(signal.SIGALRM, _interrupt)
    got = 0
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.15)
        with pytest.raises(KeyboardInterrupt):
            for _ in local.map("detect", list(enumerate(paths)), {}):
                got += 1
    finally:
        armed[0] = False
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    assert got < len(paths)

    def tasks(dask_scheduler: Any) -> int:
        return len(dask_scheduler.tasks)

    # a batch already running when cancelled is only forgotten once it finishes (a thread
    # cannot be stopped): seconds of work, more on a loaded machine; the loop ends as soon as
    # the scheduler is empty
    deadline = time.monotonic() + 60
    while local.client.run_on_scheduler(tasks) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert local.client.run_on_scheduler(tasks) == 0
    # the executor still works afterwards
    [(_, res)] = list(local.map("detect", [(0, paths[0])], {}))
    assert res["ok"]


def test_map_rejects_an_unknown_task(local: DaskExecutor) -> None:
    with pytest.raises(ValueError, match="task must be one of"):
        local.map("segment", [], {})
    assert list(local.map("detect", [], {})) == []


def test_without_dask_the_error_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "distributed", None)  # `import distributed` fails
    with pytest.raises(DaskError, match=r'pip install "npfrcnn\[dask\]"'):
        DaskExecutor(WEIGHTS, workers=1)


def test_bad_arguments_and_addresses_are_dask_errors(tmp_path: Path) -> None:
    with pytest.raises(DaskError, match="cannot read weights"):
        DaskExecutor(str(tmp_path / "none.h5"), workers=1)
    with pytest.raises(DaskError, match="not both"):
        DaskExecutor(WEIGHTS, workers=1, scheduler="tcp://127.0.0.1:1")
    with pytest.raises(DaskError, match="batch_size"):
        DaskExecutor(WEIGHTS, workers=1, batch_size=0)
    with pytest.raises(DaskError, match="tcp://HOST:PORT"):
        DaskExecutor(WEIGHTS, scheduler="nonsense://")
    with _time_limit(30), pytest.raises(DaskError, match="cannot reach the Dask scheduler"):
        DaskExecutor(WEIGHTS, scheduler=f"tcp://127.0.0.1:{_free_port()}", timeout=1)


def test_a_batch_that_kills_workers_is_error_records(model: FasterRCNN, tmp_path: Path) -> None:
    """retries=0: the batch running on a SIGKILLed worker is given up; the run goes on."""
    paths = _images(tmp_path, 8, size=(320, 480))
    with _time_limit(80), DaskExecutor(WEIGHTS, workers=2, batch_size=2, retries=0) as ex:
        pids = {a: w["pid"] for a, w in ex.worker_info().items()}
        killed: list[str] = []

        def killer() -> None:  # kill the first worker seen running a batch
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not killed:
                for addr, keys in ex.client.processing().items():
                    if keys and addr in pids:
                        killed.append(addr)
                        _kill(pids[addr])
                        return
                time.sleep(0.02)

        th = threading.Thread(target=killer, daemon=True)
        th.start()
        out = list(ex.map("detect", list(enumerate(paths)), {}))
        th.join(30)
    assert killed and [i for i, _ in out] == list(range(8))
    errors = [res for _, res in out if not res["ok"]]
    assert errors, "the killed worker's batch should be error records"
    for res in errors:
        assert "killed 1 workers" in res["error"]
    assert len(errors) % 2 == 0 and len(errors) < 8
    for (_, res), p in zip(out, paths, strict=True):
        if res["ok"]:
            _assert_same(res, _expect(model, p), p)


# a cluster of its own processes ---------------------------------------------------------------


def test_external_cluster_survives_a_killed_worker_and_weights_are_shipped(
    model: FasterRCNN, tmp_path: Path
) -> None:
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    env = dict(os.environ, NUMBA_NUM_THREADS="1", OMP_NUM_THREADS="1",
               OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1",
               DASK_TEMPORARY_DIRECTORY=str(tmp_path / "dask-tmp"))  # scratch of killed ones
    procs: list[subprocess.Popen[bytes]] = []
    logs = tmp_path / "logs"
    logs.mkdir()
    client_dir = tmp_path / "client"
    client_dir.mkdir()
    weights = client_dir / "model.h5"
    shutil.copy(WEIGHTS, weights)
    paths = _images(client_dir / "images", 12, size=(320, 480))

    def spawn(name: str, args: list[str], cwd: Path) -> subprocess.Popen[bytes]:
        cwd.mkdir(parents=True, exist_ok=True)
        with open(logs / f"{name}.log", "wb") as f:
            p = subprocess.Popen([sys.executable, "-m", *args], cwd=cwd, env=env, stdout=f,
                                 stderr=subprocess.STDOUT)
        procs.append(p)
        return p

    ex: DaskExecutor | None = None
    try:
        with _time_limit(75):
            sched = spawn("scheduler", ["distributed.cli.dask_scheduler", "--host", "127.0.0.1",
                                        "--port", str(port), "--no-dashboard"], tmp_path / "s")
            workers = [
                spawn(f"worker{i}", [
                    "distributed.cli.dask_worker", address, "--nthreads", "1", "--nworkers",
                    "1", "--no-nanny", "--no-dashboard", "--host", "127.0.0.1",
                    "--local-directory", str(tmp_path / f"w{i}" / "scratch"),
                ], tmp_path / f"w{i}")
                for i in range(2)
            ]
            deadline = time.monotonic() + 30
            while True:  # the scheduler takes a moment to listen
                try:
                    ex = DaskExecutor(str(weights), scheduler=address, batch_size=1, timeout=5,
                                      no_workers_timeout=20)
                    break
                except DaskError:
                    if time.monotonic() > deadline or sched.poll() is not None:
                        raise
                    time.sleep(0.5)
            ex.client.wait_for_workers(2, timeout=30)  # a late worker gets the plugin too
            weights.unlink()  # the workers must not need the client's file
            info = ex.worker_info()
            assert len(info) == 2
            worker_pids = {p.pid for p in workers}
            pid_of = {}
            for addr, w in info.items():
                assert w["loads"] == 1 and w["pid"] in worker_pids
                assert Path(w["weights_path"]).is_relative_to(tmp_path / "w0") or Path(
                    w["weights_path"]).is_relative_to(tmp_path / "w1")
                assert Path(w["cwd"]).resolve() != Path.cwd().resolve()
                pid_of[addr] = w["pid"]

            seen: list[tuple[int, dict[str, Any]]] = []
            victim, lost = "", []
            for i, res in ex.map("detect", list(enumerate(paths)), {}):
                if len(seen) >= 2 and not victim:  # SIGKILL a worker running a task now
                    busy = [(a, keys) for a, keys in ex.client.processing().items() if keys]
                    if busy:
                        victim, keys = busy[0]
                        _kill(pid_of[victim])
                        lost = [int(str(k).rsplit("-", 1)[1]) for k in keys]  # batch = image
                seen.append((i, res))
            assert victim, "no worker was seen running a batch"
            assert [i for i, _ in seen] == list(range(12))  # every image exactly once, in order
            for i in lost:  # the killed worker's images were run again by the other one
                assert seen[i][1]["worker"] != victim
            for i, res in seen:
                _assert_same(res, _expect(model, paths[i]), paths[i])
            later = ex.worker_info()
            assert list(later) == [a for a in pid_of if a != victim]
            assert ex.workers_alive() == 1

            # losing the scheduler mid-run: DaskError, what was yielded stays yielded
            got: list[int] = []
            with pytest.raises(DaskError, match="lost the scheduler"):
                for i, _ in ex.map("detect", list(enumerate(paths)), {}):
                    got.append(i)
                    if len(got) == 1:
                        _kill(sched.pid)
            assert got[:1] == [0]
    finally:
        if ex is not None:
            ex.close()
        for p in procs:
            _kill(p.pid)
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                pass
