"""``npfrcnn detect/eval/trace`` on Dask distributed, end to end through the command line.

Real Dask, no mocks: a LocalCluster started by ``--workers 2``, and a ``dask scheduler`` with
two ``dask worker`` processes on localhost (``--scheduler``), one of them SIGKILLed mid-run.
Every run is compared with the in-process run of the same command (the same code on the same
machine: the records must be identical, in input order). Processes are started in their own
session and killed by process group in ``finally``; every wait is bounded.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("distributed")

REPO = Path(__file__).resolve().parents[1]
DEMO = str(REPO / "weights" / "demo.h5")
NPFRCNN = [sys.executable, "-m", "npfrcnn.cli"]


def _images(folder: Path, n: int, size: int = 160) -> list[str]:
    from PIL import Image

    from npfrcnn.data import synthetic_sample

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        image, _, _ = synthetic_sample(11, i)
        img = Image.fromarray(image).resize((size, size))
        p = folder / f"img_{i:03d}.png"
        img.save(p)
        out.append(str(p))
    return out


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _strip(rec: dict) -> dict:
    return {k: v for k, v in rec.items() if k not in ("timings", "worker")}


def _run(args: list[str], timeout: float = 240, **kw) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1",
               OPENBLAS_NUM_THREADS="1")
    return subprocess.run(NPFRCNN + args, capture_output=True, text=True, timeout=timeout,
                          env=env, cwd=REPO, **kw)


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    """Images and the in-process detect output (the reference)."""
    d = tmp_path_factory.mktemp("dask-cli")
    paths = _images(d / "in", 10)
    out = d / "local.jsonl"
    p = _run(["detect", *paths, "--weights", DEMO, "-o", str(out), "-q"])
    assert p.returncode == 0, p.stderr
    return d, paths, [_strip(r) for r in _records(out)]


def test_local_cluster_equals_in_process(local):
    d, paths, ref = local
    out = d / "dask.jsonl"
    p = _run(["detect", *paths, "--weights", DEMO, "-o", str(out), "--workers", "2",
              "--batch-size", "3"])
    assert p.returncode == 0, p.stderr
    got = [_strip(r) for r in _records(out)]
    assert got == ref  # exactly, in input order
    assert "on Dask" in p.stderr and "Speed:" in p.stderr + p.stdout


def test_workers_and_scheduler_together_refused(local):
    _, paths, _ = local
    p = _run(["detect", paths[0], "--weights", DEMO, "--workers", "2", "--scheduler",
              "tcp://127.0.0.1:1"])
    assert p.returncode == 2 and "not both" in p.stderr


def test_unreachable_scheduler_is_a_clear_error(local):
    _, paths, _ = local
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    p = _run(["detect", paths[0], "--weights", DEMO, "--scheduler", f"tcp://127.0.0.1:{port}"],
             timeout=120)
    assert p.returncode != 0
    assert f"127.0.0.1:{port}" in p.stderr and "Traceback" not in p.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(cmd: list[str], log: Path) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1",
               OPENBLAS_NUM_THREADS="1")
    return subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env,
                            start_new_session=True, cwd=log.parent)


def _kill(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pass


def _wait_lines(path: Path, n: int, timeout: float, proc: subprocess.Popen) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if path.exists() and len(path.read_text().splitlines()) >= n:
            return
        if proc.poll() is not None:
            return
        time.sleep(0.05)
    raise AssertionError(f"{path}: fewer than {n} lines after {timeout} s")


def test_scheduler_worker_killed_mid_run(local, tmp_path):
    """``--scheduler`` against ``dask scheduler`` + two ``dask worker`` processes; one worker
    is SIGKILLed after the first results: every image still appears exactly once, with the
    in-process result."""
    _, paths, ref = local
    port = _free_port()
    procs: list[subprocess.Popen] = []
    try:
        procs.append(_start([sys.executable, "-m", "distributed.cli.dask_scheduler", "--host",
                             "127.0.0.1", "--port", str(port), "--no-dashboard"],
                            tmp_path / "scheduler.log"))
        workers = []
        for k in range(2):
            w = _start([sys.executable, "-m", "distributed.cli.dask_worker",
                        f"tcp://127.0.0.1:{port}", "--nthreads", "1", "--no-nanny",
                        "--no-dashboard", "--local-directory", str(tmp_path / f"w{k}")],
                       tmp_path / f"worker{k}.log")
            workers.append(w)
            procs.append(w)
        out = tmp_path / "out.jsonl"
        client = _start(NPFRCNN + ["detect", *paths, "--weights", DEMO, "-o", str(out),
                                   "--scheduler", f"tcp://127.0.0.1:{port}",
                                   "--batch-size", "1"], tmp_path / "client.log")
        procs.append(client)
        _wait_lines(out, 2, 180, client)
        os.kill(workers[0].pid, signal.SIGKILL)
        client.wait(timeout=240)
        log = (tmp_path / "client.log").read_text()
        assert client.returncode == 0, log
        got = [_strip(r) for r in _records(out)]
        assert got == ref, log
    finally:
        _kill(procs)


def test_resume_after_a_killed_client(local, tmp_path):
    """A ``--workers 2`` run killed (SIGKILL, its whole process group: client and local
    workers) after some results; ``--resume`` does the rest: every image once, in input
    order, as in-process."""
    _, paths, ref = local
    out = tmp_path / "out.jsonl"
    client = _start(NPFRCNN + ["detect", *paths, "--weights", DEMO, "-o", str(out),
                               "--workers", "2", "--batch-size", "1"], tmp_path / "c.log")
    try:
        _wait_lines(out, 3, 180, client)
    finally:
        _kill([client])
    first = _records(out)
    assert 0 < len(first) < len(paths) or len(first) == len(paths)
    p = _run(["detect", *paths, "--weights", DEMO, "-o", str(out), "--workers", "2",
              "--resume"])
    assert p.returncode == 0, p.stderr
    got = [_strip(r) for r in _records(out)]
    assert got == ref


def test_eval_on_dask_equals_in_process(tmp_path):
    d = tmp_path / "synth"
    p = _run(["synth", "--out", str(d), "--n", "6", "--size", "96", "-q"])
    assert p.returncode == 0, p.stderr
    a = _run(["eval", "--data", str(d), "--weights", DEMO, "--json", str(tmp_path / "a.json")])
    assert a.returncode == 0, a.stderr
    b = _run(["eval", "--data", str(d), "--weights", DEMO, "--json", str(tmp_path / "b.json"),
              "--workers", "2"])
    assert b.returncode == 0, b.stderr
    ja, jb = (json.loads((tmp_path / f).read_text()) for f in ("a.json", "b.json"))
    assert ja["coco"] == jb["coco"] and ja["voc"] == jb["voc"]


def test_trace_on_dask_equals_in_process(local, tmp_path):
    _, paths, _ = local
    a, b = tmp_path / "a.h5", tmp_path / "b.h5"
    p = _run(["trace", *paths[:3], "--weights", DEMO, "--out", str(a)])
    assert p.returncode == 0, p.stderr
    p = _run(["trace", *paths[:3], "--weights", DEMO, "--out", str(b), "--workers", "2"])
    assert p.returncode == 0, p.stderr
    from npfrcnn.trace import read_trace

    with read_trace(a) as ta, read_trace(b) as tb:
        assert len(ta) == len(tb) == 3
        for ia, ib in zip(ta, tb, strict=True):
            assert ia.meta == ib.meta
            assert sorted(ia.names) == sorted(ib.names)
            for name in ia.names:
                np.testing.assert_array_equal(ia.raw(name), ib.raw(name), err_msg=name)
