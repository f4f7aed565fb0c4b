"""Run ``detect`` and ``trace`` on Dask distributed: a local cluster or any scheduler.

:class:`DaskExecutor` is the engine behind ``npfrcnn detect/eval/trace --workers N`` and
``--scheduler tcp://HOST:PORT`` (or ``$DASK_SCHEDULER_ADDRESS``). It needs the ``dask`` extra
(``pip install "npfrcnn[dask]"``); this module imports without it, and Dask is only imported when
an executor is made.

How a run goes:

* **The weights travel with the run**, so workers need not share the client's filesystem (only
  npfrcnn itself installed): the client reads the weights file once, hashes it (sha256) and
  registers a :class:`distributed.WorkerPlugin` holding the bytes. The scheduler hands the plugin
  to every worker, also to workers that join later. On each worker the plugin writes the bytes to a
  private file in the worker's scratch folder, checks the sha256, loads
  :meth:`FasterRCNN.from_hdf5 <npfrcnn.model.FasterRCNN.from_hdf5>` **once** and keeps the model;
  tasks find it with :func:`distributed.get_worker`. The plugin is unregistered when the executor
  closes.
* **A task is a batch of images** (``batch_size``). The client reads each file's bytes and sends
  them with the task; the worker decodes them exactly as :func:`npfrcnn.image.load` does (the
  bytes go to a temporary file with the original suffix, and ``load`` reads it; messages name the
  original path).
* **A window bounds memory**: at most ``window`` batches (default ``2 * workers``) are submitted
  and not yet handed to the caller, counting the finished ones waiting in the reorder buffer.
  :meth:`DaskExecutor.map` yields ``(index, result)`` in input order as soon as the next one is
  there, and submits another batch for each one handed over.
* **Faults**: a worker that dies mid-batch loses nothing: the scheduler runs its tasks elsewhere
  (``distributed.scheduler.allowed-failures`` = ``retries``). A batch that kills ``retries + 1``
  workers (``KilledWorker``) gives an error record for each of its images and the run goes on. A
  bad image is an error record for that image only. Losing the scheduler, or every worker for
  ``no_workers_timeout`` seconds, raises :class:`DaskError` (the results already yielded stay
  yielded). Ctrl-C cancels the submitted batches and propagates.

* **Worker environment**: Dask's Nanny starts worker processes with
  ``OMP/MKL/OPENBLAS_NUM_THREADS=1`` and ``MALLOC_TRIM_THRESHOLD_=65536``. The second turns off
  glibc's adaptive mmap threshold, so every large temporary is mmapped and page-faulted afresh;
  with both, a detection ran 2.2x slower in a worker than in a plain process (numpy
  elementwise ops 2.8x). A local cluster starts its workers with the thread pools at their share
  of the cores and no trim threshold (``distributed.nanny.pre-spawn-environ``); for an existing
  cluster the executor says so when its workers run with the defaults.

Per-image results (dicts, see :meth:`DaskExecutor.map`) carry the stage timings and the worker's
address, so the caller can summarise every worker's stages.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import CancelledError  # what distributed raises for cancelled futures
from typing import Any

__all__ = ["DaskError", "DaskExecutor", "TASKS", "INSTALL_HINT"]

#: The task kinds :meth:`DaskExecutor.map` runs.
TASKS = ("detect", "trace")

#: How to install what this module needs.
INSTALL_HINT = 'pip install "npfrcnn[dask]"'

#: Image decoders the workers know (``options["decoder"]``): ``"exif"`` is
#: :func:`npfrcnn.image.load` (EXIF orientation applied, any mode to RGB, the pixel guard),
#: ``"stored"`` is :func:`npfrcnn.data.load_image` (the stored orientation; ``eval``).
DECODERS = ("exif", "stored")

#: Environment variables that size a worker's thread pools (Numba, OpenMP, BLAS).
THREAD_VARIABLES = ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                    "MKL_NUM_THREADS")

_PLUGIN_PREFIX = "npfrcnn-model"


class DaskError(ValueError):
    """A problem running on Dask that the user can fix (the message says how): Dask missing, a
    bad scheduler address, an unreachable or lost cluster, no workers."""


def _import_distributed() -> Any:
    try:
        import distributed
    except ImportError as e:
        raise DaskError(
            f"running on Dask needs dask[distributed] ({e}); install it: {INSTALL_HINT}"
        ) from None
    return distributed


def _noop(_: str) -> None:
    pass


def _format_mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


# The worker side -------------------------------------------------------------------------------
#
# The plugin must subclass distributed.WorkerPlugin, but this module may not import Dask at import
# time; so the class is made on first use (module __getattr__), under this module's name, so that
# pickle finds it by reference on the workers (which import npfrcnn.distributed).

_LOADS = 0  # models loaded in this process (worker side; read by the tests through client.run)
_LOADS_LOCK = threading.Lock()
_PIXELS_LOCK = threading.Lock()  # PIL.Image.MAX_IMAGE_PIXELS is process-wide
_plugin_class: type | None = None


def _make_plugin_class() -> type:
    _import_distributed()
    from distributed import WorkerPlugin

    class _ModelPlugin(WorkerPlugin):
        """Carries the weights to a worker; loads the model there once and keeps it."""

        def __init__(self, data: bytes, sha256: str, backend: str, weights_name: str):
            self.data: bytes | None = data
            self.sha256 = sha256
            self.backend = backend
            self.weights_name = weights_name
            self.model: Any = None
            self.weights_path = ""
            self.folder = ""
            self.loads = 0
            self.lock = threading.Lock()  # one image at a time through the model (it has state)

        def __getstate__(self) -> dict[str, Any]:
            state = dict(self.__dict__)
            state["model"] = None
            del state["lock"]
            return state

        def __setstate__(self, state: dict[str, Any]) -> None:
            self.__dict__.update(state)
            self.lock = threading.Lock()

        async def setup(self, worker: Any) -> None:
            import asyncio

            # the load runs in a thread: the worker's event loop keeps answering the scheduler
            await asyncio.get_running_loop().run_in_executor(None, self._load, worker)

        def _load(self, worker: Any) -> None:
            global _LOADS
            from npfrcnn.model import FasterRCNN
            from npfrcnn.weights.hdf5 import file_sha256

            if self.data is None:
                raise RuntimeError("npfrcnn: the weights were not sent with the plugin")
            base = getattr(worker, "local_directory", None) or tempfile.gettempdir()
            self.folder = tempfile.mkdtemp(prefix="npfrcnn-", dir=base)  # mode 0700
            suffix = os.path.splitext(self.weights_name)[1] or ".h5"
            self.weights_path = os.path.join(self.folder, "weights" + suffix)
            with open(self.weights_path, "wb") as f:
                f.write(self.data)
            got = file_sha256(self.weights_path)
            if got != self.sha256:
                raise RuntimeError(
                    f"npfrcnn: the weights {self.weights_name} arrived damaged on worker "
                    f"{worker.address} (sha256 {got[:16]}..., expected {self.sha256[:16]}...); "
                    "check the worker's disk space and run again"
                )
            self.data = None  # the model holds the tensors now; free the bytes
            self.model = FasterRCNN.from_hdf5(self.weights_path, backend=self.backend)
            with _LOADS_LOCK:
                _LOADS += 1
            self.loads += 1

        def teardown(self, worker: Any) -> None:
            import shutil

            self.model = None
            if self.folder:
                shutil.rmtree(self.folder, ignore_errors=True)

        def info(self) -> dict[str, Any]:
            return {
                "loads": self.loads, "process_loads": _LOADS, "weights_path": self.weights_path,
                "sha256": self.sha256, "backend": self.backend, "pid": os.getpid(),
                "cwd": os.getcwd(),
                "threads": {v: os.environ.get(v) for v in THREAD_VARIABLES},
            }

    _ModelPlugin.__module__ = __name__
    _ModelPlugin.__qualname__ = _ModelPlugin.__name__ = "_ModelPlugin"
    return _ModelPlugin


def __getattr__(name: str) -> Any:
    global _plugin_class
    if name == "_ModelPlugin":
        if _plugin_class is None:
            _plugin_class = _make_plugin_class()
        return _plugin_class
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _worker_plugin(plugin_name: str) -> tuple[Any, Any]:
    from distributed import get_worker

    worker = get_worker()
    plugin: Any = worker.plugins.get(plugin_name)
    if plugin is None or plugin.model is None:
        raise RuntimeError(
            f"npfrcnn: worker {worker.address} has no model (plugin {plugin_name!r} missing or "
            "not set up); it may have joined while the weights were being sent"
        )
    return worker, plugin


def _worker_info(plugin_name: str, dask_worker: Any = None) -> dict[str, Any]:
    """What one worker holds (through ``client.run``): loads, the weights' path, pid, threads."""
    plugin = dask_worker.plugins.get(plugin_name) if dask_worker is not None else None
    if plugin is None:
        return {"loads": 0, "process_loads": _LOADS, "pid": os.getpid(), "plugin": False}
    out: dict[str, Any] = plugin.info()
    return out


def _decode(path: str, data: bytes, folder: str, options: Mapping[str, Any]) -> Any:
    """The image in ``data`` (the bytes of the file ``path``) as :func:`npfrcnn.image.load`
    gives it (``options["decoder"] == "stored"``: as :func:`npfrcnn.data.load_image`, the
    stored orientation that annotations refer to, for ``eval``); an error names ``path``, not
    the temporary file."""
    from npfrcnn.image import ImageError
    from npfrcnn.image import load as load_exif

    def load(p: str) -> Any:
        if options.get("decoder", "exif") != "stored":
            return load_exif(p)
        from npfrcnn.data import load_image

        try:
            return load_image(p)
        except ValueError as e:  # DataError: reported as an image error
            raise ImageError(str(e)) from None

    suffix = os.path.splitext(path)[1]
    fd, tmp = tempfile.mkstemp(prefix="image-", suffix=suffix, dir=folder or None)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        max_pixels = options.get("max_pixels")
        try:
            if max_pixels is None:
                return load(tmp)
            from PIL import Image

            with _PIXELS_LOCK:
                saved = Image.MAX_IMAGE_PIXELS
                Image.MAX_IMAGE_PIXELS = max_pixels
                try:
                    return load(tmp)
                finally:
                    Image.MAX_IMAGE_PIXELS = saved
        except ImageError as e:
            raise ImageError(str(e).replace(tmp, path)) from None
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def _detect_one(plugin: Any, path: str, data: bytes, options: Mapping[str, Any],
                address: str) -> dict[str, Any]:
    from npfrcnn.image import ImageError

    try:
        t = time.perf_counter()
        image = _decode(path, data, plugin.folder, options)
        load_s = time.perf_counter() - t
        stage: dict[str, float] = {}
        with plugin.lock:
            t = time.perf_counter()
            dets = plugin.model.detect(
                image, min_prob=options.get("min_prob"),
                max_detections=options.get("max_detections"), timings=stage,
            )
            detect_s = time.perf_counter() - t
    except ImageError as e:
        return {"ok": False, "error": str(e), "image_error": True, "worker": address}
    except Exception as e:  # one bad image is a record, never a failed task
        return {"ok": False, "error": f"{path}: {type(e).__name__}: {e}", "image_error": False,
                "worker": address}
    import numpy as np

    timings = {"load": load_s, **{k: float(v) for k, v in stage.items()}, "detect": detect_s}
    return {
        "sha256": hashlib.sha256(data).hexdigest(),
        "ok": True, "width": int(image.shape[1]), "height": int(image.shape[0]),
        "boxes": np.asarray(dets.boxes, np.float32).reshape(-1, 4),
        "labels": np.asarray(dets.labels, np.int64).reshape(-1),
        "scores": np.asarray(dets.scores, np.float32).reshape(-1),
        "timings": timings, "worker": address,
    }


def _trace_one(plugin: Any, path: str, data: bytes, options: Mapping[str, Any],
               address: str) -> dict[str, Any]:
    from npfrcnn.image import ImageError
    from npfrcnn.trace._npfrcnn import model_meta, trace_image
    from npfrcnn.trace.io import TraceWriter

    folder = tempfile.mkdtemp(prefix="trace-", dir=plugin.folder or None)
    try:
        t = time.perf_counter()
        image = _decode(path, data, plugin.folder, options)
        load_s = time.perf_counter() - t
        out = os.path.join(folder, "trace.npz")
        with plugin.lock:
            t = time.perf_counter()
            meta = model_meta(plugin.model, plugin.sha256, **dict(options.get("meta", {})))
            with TraceWriter(out, meta) as w:
                trace_image(plugin.model, image, w, os.path.basename(path),
                            bool(options.get("store_image", True)))
            trace_s = time.perf_counter() - t
        with open(out, "rb") as f:
            npz = f.read()
    except ImageError as e:
        return {"ok": False, "error": str(e), "worker": address}
    except Exception as e:
        return {"ok": False, "error": f"{path}: {type(e).__name__}: {e}", "worker": address}
    finally:
        import shutil

        shutil.rmtree(folder, ignore_errors=True)
    return {
        "ok": True, "npz": npz, "width": int(image.shape[1]), "height": int(image.shape[0]),
        "timings": {"load": load_s, "trace": trace_s}, "worker": address,
    }


def _run_batch(plugin_name: str, task: str, batch: list[tuple[int, str, bytes | None, str | None]],
               options: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A Dask task: every image of ``batch``, one after the other, on this worker's model."""
    worker, plugin = _worker_plugin(plugin_name)
    run = _detect_one if task == "detect" else _trace_one
    out = []
    for _, path, data, error in batch:
        if error is not None or data is None:  # the client could not read the file
            out.append({"ok": False, "error": error or f"{path}: not read", "worker": ""})
        else:
            out.append(run(plugin, path, data, options, worker.address))
    return out


def _echo(x: Any) -> Any:
    """An empty task (for measuring the round trip)."""
    return x


# The client side -------------------------------------------------------------------------------


def _read_input(path: str) -> tuple[bytes | None, str | None]:
    """The file's bytes, or the message :func:`npfrcnn.image.load` would give for it."""
    try:
        with open(path, "rb") as f:
            return f.read(), None
    except OSError as e:
        from npfrcnn.image import ImageError, load

        try:
            load(path)
        except ImageError as e2:
            return None, str(e2)
        return None, f"{path}: cannot read it ({type(e).__name__}: {e})"


def _check_address(address: str) -> str:
    from distributed.comm import parse_address, parse_host_port
    from distributed.comm.registry import get_backend

    addr = address.strip()
    fix = ("give the scheduler's address as tcp://HOST:PORT (e.g. tcp://10.0.0.5:8786; "
           "`dask scheduler` prints it)")
    if not addr:
        raise DaskError(f"the Dask scheduler address is empty; {fix}")
    try:
        scheme, loc = parse_address(addr)
        get_backend(scheme)  # ValueError for a scheme no installed backend speaks
        if scheme in ("tcp", "tls"):
            host, port = parse_host_port(loc)
            if not host or not port:
                raise ValueError("no host or port")
    except (ValueError, TypeError) as e:
        raise DaskError(f"{address!r} is not a Dask scheduler address ({e}); {fix}") from None
    return addr


class DaskExecutor:
    """Runs batches of images on Dask workers that each load the model once.

    Args:
        weights: the weights file (HDF5), read here and sent to every worker.
        workers: start a :class:`distributed.LocalCluster` of this many worker processes
            (``threads_per_worker = max(1, cpu_count // workers)``; each worker's Numba, OpenMP
            and BLAS pools sized to its threads, so the cores are not oversubscribed).
        scheduler: connect to this scheduler (``tcp://HOST:PORT``) instead. With neither,
            ``$DASK_SCHEDULER_ADDRESS`` if set, else a local cluster of
            ``min(cpu_count, 4)`` workers.
        backend: the model's backend on the workers (``"cpu"`` or ``"numpy"``).
        batch_size: images per task.
        window: at most this many batches submitted and not yet yielded (default
            ``2 * workers``, the workers counted when :meth:`map` starts).
        log: receives one-line progress messages (cluster started, weights sent, batches given
            up on).
        retries: how many worker deaths a batch may cause before it is given up
            (``distributed.scheduler.allowed-failures``).
        timeout: seconds to wait for the scheduler when connecting.
        no_workers_timeout: ``map`` raises :class:`DaskError` after this many seconds without
            a worker.

    Raises:
        DaskError: Dask not installed, a bad or unreachable scheduler, an unreadable weights
            file, workers that cannot load the weights, bad arguments.
    """

    def __init__(
        self,
        weights: str,
        *,
        workers: int | None = None,
        scheduler: str | None = None,
        backend: str = "cpu",
        batch_size: int = 4,
        window: int | None = None,
        log: Callable[[str], None] | None = None,
        retries: int = 3,
        timeout: float = 30.0,
        no_workers_timeout: float = 120.0,
    ) -> None:
        self.log = log or _noop
        for name, value, low in (("workers", workers, 1), ("batch_size", batch_size, 1),
                                 ("window", window, 1), ("retries", retries, 0)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or value < low):
                raise DaskError(f"{name} must be an int >= {low}, got {value!r}")
        if workers is not None and scheduler is not None:
            raise DaskError("give either workers (a local cluster) or a scheduler address, "
                            "not both")
        if backend not in ("cpu", "numpy"):
            raise DaskError(f"backend must be 'cpu' or 'numpy' on Dask workers, got {backend!r}")
        self.weights = os.fspath(weights)
        self.backend = backend
        self.batch_size = batch_size
        self.window = window
        self.retries = retries
        self.timeout = float(timeout)
        self.no_workers_timeout = float(no_workers_timeout)
        self.client: Any = None
        self.cluster: Any = None
        self.plugin_name = ""
        self._closed = False
        self._broken = False  # the scheduler was lost: close without talking to it
        if scheduler is None and workers is None:
            scheduler = os.environ.get("DASK_SCHEDULER_ADDRESS") or None
        self.scheduler_address = scheduler
        self.local_workers = 0
        if scheduler is None:
            self.local_workers = workers or max(1, min(os.cpu_count() or 1, 4))
        distributed = _import_distributed()
        try:
            data = self._read_weights()
            if scheduler is not None:
                self._connect(distributed, _check_address(scheduler))
            else:
                self._start_local(distributed, self.local_workers)
            self._set_allowed_failures()
            self._ship_weights(data)
            if scheduler is not None:
                self._check_worker_environment()
        except BaseException:
            self.close()
            raise

    def _check_worker_environment(self) -> None:
        """Say so when an existing cluster's workers run with Dask's default pre-spawn
        environment (1-thread BLAS pools, ``MALLOC_TRIM_THRESHOLD_``), which makes npfrcnn
        about 2x slower (module docstring)."""
        def probe() -> dict[str, str | None]:
            return {k: os.environ.get(k) for k in ("MALLOC_TRIM_THRESHOLD_",
                                                   "OPENBLAS_NUM_THREADS")}

        try:
            envs = self.client.run(probe)
            nthreads = self.client.nthreads()
        except Exception:
            return
        slow = [a for a, e in envs.items() if e.get("MALLOC_TRIM_THRESHOLD_") or (
            e.get("OPENBLAS_NUM_THREADS") == "1" and nthreads.get(a, 1) > 1)]
        if slow:
            self.log(
                f"Dask: {len(slow)} worker(s) run with Dask's default pre-spawn environment "
                "(MALLOC_TRIM_THRESHOLD_ set, or 1-thread BLAS with more task threads), which "
                "makes npfrcnn about 2x slower; start them with `dask worker --no-nanny` or "
                "DASK_DISTRIBUTED__NANNY__PRE_SPAWN_ENVIRON='{\"OMP_NUM_THREADS\": \"T\", "
                "\"OPENBLAS_NUM_THREADS\": \"T\"}' (T = threads per worker)"
            )

    # setup ------------------------------------------------------------------------------------

    def _read_weights(self) -> bytes:
        try:
            with open(self.weights, "rb") as f:
                data = f.read()
        except OSError as e:
            raise DaskError(
                f"cannot read weights {self.weights}: {e.strerror or e}; check the path"
            ) from None
        self.sha256 = hashlib.sha256(data).hexdigest()
        return data

    def _connect(self, distributed: Any, address: str) -> None:
        try:
            self.client = distributed.Client(address, timeout=self.timeout,
                                             set_as_default=False)
        except (OSError, TimeoutError) as e:
            raise DaskError(
                f"cannot reach the Dask scheduler at {address} within {self.timeout:g} s "
                f"({type(e).__name__}: {e}); check that `dask scheduler` runs there and the "
                "port is open, or use --workers N for a local cluster"
            ) from None
        n = self.workers_alive()
        self.log(f"Dask: connected to the scheduler at {address} ({n} worker(s))")

    def _start_local(self, distributed: Any, n: int) -> None:
        import logging

        import dask

        threads = max(1, (os.cpu_count() or 1) // n)
        env = {v: str(threads) for v in THREAD_VARIABLES}
        # The Nanny's pre-spawn environment is what the worker process starts with (``env=``
        # is applied after numpy has loaded OpenBLAS). Dask's default sets the BLAS/OpenMP
        # pools to 1 thread and MALLOC_TRIM_THRESHOLD_=65536, which turns off glibc's
        # adaptive mmap threshold: every large temporary is then mmapped and page-faulted
        # afresh. Measured here: numpy elementwise ops 2.8x and a detection 2.2x slower in
        # such a worker. So: the pools at this worker's share of the cores, and no trimming.
        pre_spawn = dict(env)
        try:
            with dask.config.set({"distributed.scheduler.allowed-failures": self.retries,
                                  "distributed.nanny.pre-spawn-environ": pre_spawn}):
                self.cluster = distributed.LocalCluster(
                    n_workers=n, processes=True, threads_per_worker=threads,
                    dashboard_address=None, silence_logs=logging.ERROR, env=env,
                    # no dashboard; the scheduler's health routes on a free local port (not
                    # 8787, which a second cluster would find taken)
                    scheduler_kwargs={"dashboard": False, "dashboard_address": "127.0.0.1:0"},
                )
            self.client = distributed.Client(self.cluster, timeout=self.timeout,
                                             set_as_default=False)
        except (OSError, TimeoutError, RuntimeError) as e:
            raise DaskError(
                f"cannot start a local Dask cluster of {n} worker(s) ({type(e).__name__}: {e}); "
                "try fewer --workers (a script that starts one must do so under "
                "`if __name__ == \"__main__\":`, as the workers are spawned processes)"
            ) from None
        self.log(f"Dask: started a local cluster of {n} worker process(es) x {threads} "
                 f"thread(s)")

    def _set_allowed_failures(self) -> None:
        retries = self.retries

        def _set(dask_scheduler: Any) -> int:
            old = int(dask_scheduler.allowed_failures)
            dask_scheduler.allowed_failures = retries
            return old

        try:
            self.client.run_on_scheduler(_set)
        except Exception as e:  # a scheduler that refuses remote code keeps its own setting
            self.log(f"Dask: could not set the scheduler's allowed-failures to {retries} ({e})")

    def _ship_weights(self, data: bytes) -> None:
        cls = __getattr__("_ModelPlugin")
        self.plugin_name = f"{_PLUGIN_PREFIX}-{self.sha256[:12]}-{uuid.uuid4().hex[:8]}"
        plugin = cls(data, self.sha256, self.backend, os.path.basename(self.weights))
        t = time.perf_counter()
        try:
            self.client.register_plugin(plugin, name=self.plugin_name)
        except Exception as e:
            self.plugin_name = ""
            raise DaskError(
                f"the Dask workers could not load the weights {self.weights} "
                f"({type(e).__name__}: {e}); check that npfrcnn is installed on every worker "
                "and that the file loads locally"
            ) from None
        self.log(f"Dask: sent the weights ({_format_mib(len(data))}, sha256 "
                 f"{self.sha256[:12]}...) to {self.workers_alive()} worker(s) in "
                 f"{time.perf_counter() - t:.1f} s")

    # queries ---------------------------------------------------------------------------------

    def workers_alive(self) -> int:
        """The workers the scheduler knows now (0 when it cannot be asked)."""
        if self.client is None or self._closed:
            return 0
        try:
            return len(self.client.nthreads())
        except Exception:
            return 0

    def describe(self) -> str:
        """``local cluster, 2 worker(s) x 1 thread(s), batches of 4`` and the like."""
        n = self.workers_alive()
        if self.cluster is not None:
            threads = max(1, (os.cpu_count() or 1) // max(1, self.local_workers))
            where = f"local cluster, {n} worker(s) x {threads} thread(s)"
        else:
            where = f"scheduler {self.scheduler_address}, {n} worker(s)"
        return f"{where}, batches of {self.batch_size}"

    def worker_info(self) -> dict[str, dict[str, Any]]:
        """Per worker address: models loaded, the weights' path there, pid, cwd, thread vars."""
        out: dict[str, dict[str, Any]] = self.client.run(_worker_info, self.plugin_name)
        return out

    def round_trip(self, n: int = 50) -> float:
        """Mean seconds for an empty task submitted and gathered, ``n`` times in a row."""
        t = time.perf_counter()
        for i in range(n):
            self.client.submit(_echo, i, pure=False).result()
        return (time.perf_counter() - t) / max(1, n)

    # running ---------------------------------------------------------------------------------

    def map(
        self, task: str, items: Sequence[tuple[int, str]], options: Mapping[str, Any]
    ) -> Iterator[tuple[int, dict[str, Any]]]:
        """Run ``task`` on every ``(index, path)``; yields ``(index, result)`` in input order.

        ``task``:

        * ``"detect"``: ``{"ok": True, "width", "height", "boxes" float32 [K, 4], "labels"
          int64 [K], "scores" float32 [K], "timings": {"load", <the model's stages>...,
          "detect"}, "worker": address}``. ``options``: ``min_prob``, ``max_detections``
          (``detect``'s), ``max_pixels`` (``PIL.Image.MAX_IMAGE_PIXELS`` while decoding),
          ``decoder`` (``"exif"``).
        * ``"trace"``: ``{"ok": True, "npz": bytes of a one-image .npz trace, "width",
          "height", "timings": {"load", "trace"}, "worker"}``; the image is named by the file's
          basename; ``options``: ``store_image`` (default True), ``meta`` (extra file
          metadata), ``max_pixels``, ``decoder``.

        A failed image is ``{"ok": False, "error": "<message naming the file>"}``.

        Raises:
            DaskError: the scheduler was lost, or no worker was left for
                ``no_workers_timeout`` seconds (what was yielded stays yielded).
            ValueError: an unknown ``task`` or ``decoder``.
        """
        if task not in TASKS:
            raise ValueError(f"task must be one of {list(TASKS)}, got {task!r}")
        decoder = options.get("decoder", "exif")
        if decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {list(DECODERS)}, got {decoder!r}")
        if self._closed or self.client is None:
            raise DaskError("this DaskExecutor is closed; make a new one")
        return self._map(task, list(items), dict(options))

    def _map(self, task: str, items: list[tuple[int, str]],
             options: dict[str, Any]) -> Iterator[tuple[int, dict[str, Any]]]:
        from distributed import wait
        from distributed.scheduler import KilledWorker

        bs = self.batch_size
        batches = [items[i:i + bs] for i in range(0, len(items), bs)]
        window = self.window or max(2, 2 * self.workers_alive())
        run_id = uuid.uuid4().hex[:8]
        pending: dict[Any, int] = {}  # future -> batch number
        done: dict[int, list[dict[str, Any]]] = {}  # finished, not yet yielded
        next_submit = next_yield = 0
        no_workers_since: float | None = None

        def submit(k: int) -> None:
            payload = []
            for index, path in batches[k]:
                data, error = _read_input(path)
                payload.append((index, path, data, error))
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Sending large graph")
                fut = self.client.submit(
                    _run_batch, self.plugin_name, task, payload, options, pure=False,
                    key=f"npfrcnn-{task}-{run_id}-{k}",
                )
            pending[fut] = k

        try:
            while next_yield < len(batches):
                while next_submit < len(batches) and next_submit - next_yield < window:
                    submit(next_submit)
                    next_submit += 1
                if next_yield in done:
                    for (index, _), res in zip(batches[next_yield], done.pop(next_yield),
                                               strict=True):
                        yield index, res
                    next_yield += 1
                    continue
                try:
                    with self.client.as_current():  # wait() asks for the current client
                        finished, _ = wait(list(pending), timeout=1.0,
                                           return_when="FIRST_COMPLETED")
                except TimeoutError:
                    finished = set()
                except CancelledError as e:  # the client lost the scheduler: it cancels all
                    self._broken = True
                    raise self._lost(f"the batches were cancelled: {type(e).__name__}") from None
                if not finished:
                    no_workers_since = self._check_health(no_workers_since)
                    continue
                no_workers_since = None
                for fut in finished:
                    k = pending.pop(fut)
                    done[k] = self._collect(fut, batches[k], KilledWorker)
        finally:
            if pending:
                futures = list(pending)
                pending.clear()
                with contextlib.suppress(Exception):
                    self.client.cancel(futures)

    def _collect(self, fut: Any, batch: list[tuple[int, str]],
                 killed: type) -> list[dict[str, Any]]:
        status = fut.status
        if status == "finished":
            try:
                res: list[dict[str, Any]] = fut.result()
            except CancelledError:  # the connection was lost while fetching it
                self._broken = True
                raise self._lost("a finished batch could not be fetched") from None
            return res
        if status != "error":  # cancelled (the connection to the scheduler was lost), lost
            self._broken = True
            raise self._lost(f"a batch was {status}")
        exc = fut.exception()
        if isinstance(exc, killed):
            n = int(getattr(exc, "allowed_failures", self.retries)) + 1
            self.log(f"Dask: gave up on a batch of {len(batch)} image(s) that killed {n} "
                     "workers")
            return [{"ok": False, "error": (
                f"{path}: its Dask task killed {n} workers (each died while running it: out of "
                "memory, or a crash); given up after the retries")} for _, path in batch]
        return [{"ok": False, "error": f"{path}: the Dask task failed: "
                 f"{type(exc).__name__}: {exc}"} for _, path in batch]

    def _lost(self, what: str) -> DaskError:
        where = (f"the scheduler at {self.scheduler_address}" if self.cluster is None
                 else "the local Dask cluster")
        return DaskError(f"lost {where} ({what}); check that it still runs, then run again")

    def _check_health(self, since: float | None) -> float | None:
        status = getattr(self.client, "status", "closed")
        if status in ("closed", "closing", "failed"):
            self._broken = True
            raise self._lost(f"client status {status!r}")
        if self.workers_alive() > 0:
            return None
        now = time.monotonic()
        if since is None:
            self.log("Dask: no workers alive; waiting for one to join")
            return now
        if now - since > self.no_workers_timeout:
            raise DaskError(
                f"no Dask worker for {self.no_workers_timeout:g} s; start workers "
                f"(`dask worker {self.scheduler_address or 'tcp://HOST:PORT'}`) and run again"
            )
        return since

    # closing ---------------------------------------------------------------------------------

    def close(self) -> None:
        """Unregister the weights, close the client and any local cluster (idempotent)."""
        if self._closed:
            return
        self._closed = True
        client, cluster = self.client, self.cluster
        running = client is not None and getattr(client, "status", "") == "running"
        if running and self.plugin_name and cluster is None and not self._broken:
            with contextlib.suppress(Exception):
                client.unregister_worker_plugin(self.plugin_name)
        if client is not None:
            with contextlib.suppress(Exception):
                client.close(timeout=10 if running and not self._broken else 2)
        if cluster is not None:
            with contextlib.suppress(Exception):
                cluster.close(timeout=20)

    def __enter__(self) -> DaskExecutor:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
