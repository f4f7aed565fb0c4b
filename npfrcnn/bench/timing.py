"""Timing, thread pools, peak memory and the machine description for ``npfrcnn bench``.

Rules (DESIGN.md): every figure is the median of several runs after a warm-up; the first call
(Numba compilation or a load from its cache, TF's start-up) is reported apart; the spread is
the 10th to 90th percentile of the timed runs.

* CPU: ``time.perf_counter`` around each call.
* CUDA: CUDA events recorded around each call on device-resident inputs and synchronised after
  it (torch's events when torch sees the GPU, else numba's). Work the implementation queues on
  another stream than the default one is covered by the device-wide synchronisation that ends
  every call, so ``first_call_ms`` and the event times never miss it. Refused under numba's CUDA
  simulator (:func:`refuse_simulator`): ``cuda.is_available()`` is true there too, and its
  times mean nothing.
* Peak memory: measured on the warm-up call. CPU: the rise of the process's peak resident set
  (``VmHWM``, reset through ``/proc/self/clear_refs`` before the call) over its size before it;
  memory that an allocator had already taken from the system and reuses is not seen, so this is
  a lower bound. CUDA: torch's allocator peak (``torch.cuda.max_memory_allocated``) for
  implementations that allocate through torch; ``None`` otherwise (numba has no peak counter).
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from npfrcnn.bench.arrays import synchronize

__all__ = [
    "Timing",
    "git_revision",
    "machine",
    "machine_line",
    "measure",
    "peak_rss",
    "refuse_simulator",
    "set_threads",
    "simulated",
    "versions",
]

SLOW_REPEATS = 3  # timed runs once a warm-up call has taken longer than the slow limit


@dataclass
class Timing:
    """One implementation on one input: the first call, the timed runs and the peak memory."""

    first_ms: float
    runs_ms: list[float] = field(default_factory=list)
    peak_mem_mb: float | None = None
    timer: str = "perf_counter"
    slow: bool = False  # the warm-up call took longer than the slow limit: fewer runs

    @property
    def median_ms(self) -> float:
        return statistics.median(self.runs_ms)

    def percentile(self, q: float) -> float:
        return float(np.percentile(np.asarray(self.runs_ms), q))

    @property
    def p10_ms(self) -> float:
        return self.percentile(10)

    @property
    def p90_ms(self) -> float:
        return self.percentile(90)


# --------------------------------------------------------------------------------------------
# The CUDA simulator
# --------------------------------------------------------------------------------------------


def simulated() -> bool:
    """True under numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``)."""
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        return True
    try:
        import numba

        return bool(getattr(numba.config, "ENABLE_CUDASIM", False))
    except ImportError:  # pragma: no cover - numba is a dependency
        return False


def refuse_simulator(what: str) -> None:
    """Raise ``RuntimeError`` if ``what`` would time CUDA code under the simulator."""
    if simulated():
        raise RuntimeError(
            f"{what}: refusing to time under numba's CUDA simulator (NUMBA_ENABLE_CUDASIM=1); "
            "its timings mean nothing. Unset it and run on a machine with an NVIDIA GPU, or "
            "pass --check-only to run the correctness suite alone"
        )


# --------------------------------------------------------------------------------------------
# Threads and memory
# --------------------------------------------------------------------------------------------


def max_threads() -> int:
    """Numba's thread pool size (``NUMBA_NUM_THREADS``: the machine's cores by default)."""
    import numba

    return int(numba.config.NUMBA_NUM_THREADS)  # type: ignore[attr-defined]


def set_threads(n: int) -> int:
    """Give Numba's and (when imported) torch's thread pools ``n`` threads; returns Numba's.

    TensorFlow's pools are sized when TF starts (:func:`npfrcnn.bench.impls.load_tensorflow`).
    """
    import numba

    numba.set_num_threads(max(1, min(n, max_threads())))
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(n)
    return int(numba.get_num_threads())


def _status_kb(key: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def peak_rss(call: Callable[[], Any]) -> tuple[Any, float | None]:
    """``call()`` and the rise of the peak resident set during it, in MiB (``None`` where
    ``/proc/self/clear_refs`` cannot reset the peak: not Linux, or not permitted)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current resident set (Linux >= 4.0)
    except OSError:
        return call(), None
    before = _status_kb("VmRSS")
    result = call()
    peak = _status_kb("VmHWM")
    if before is None or peak is None:
        return result, None
    return result, max(peak - before, 0) / 1024.0


def _torch_peak(call: Callable[[], Any]) -> tuple[Any, float | None]:
    import torch

    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    result = call()
    torch.cuda.synchronize()
    return result, max(torch.cuda.max_memory_allocated() - before, 0) / 2**20


# --------------------------------------------------------------------------------------------
# Timers
# --------------------------------------------------------------------------------------------


def _event_pair(timer: str) -> tuple[Any, Any, Callable[[Any, Any], float]]:
    start: Any
    stop: Any
    if timer == "cuda-events (torch)":
        import torch

        start = torch.cuda.Event(enable_timing=True)
        stop = torch.cuda.Event(enable_timing=True)
    else:
        from numba import cuda

        start, stop = cuda.event(), cuda.event()
    return start, stop, lambda a, b: float(a.elapsed_time(b))


def gpu_timer() -> str:
    """The CUDA timer ``measure`` uses: torch's events when torch sees the GPU, else numba's."""
    try:
        import torch

        if torch.cuda.is_available():
            return "cuda-events (torch)"
    except ImportError:
        pass
    return "cuda-events (numba)"


def measure(
    call: Callable[[], Any],
    *,
    device: str = "cpu",
    repeats: int = 7,
    warmup: int = 1,
    slow_ms: float = float("inf"),
    memory: str = "rss",
    first: tuple[float, Any] | None = None,
    allow_simulator: bool = False,
) -> tuple[Timing, Any]:
    """Time ``call``: a first call, ``warmup`` untimed calls, then ``repeats`` timed runs.

    Args:
        call: the zero-argument call to time (inputs already converted and, for CUDA, resident
            on the device).
        device: ``"cpu"`` (``perf_counter``) or ``"cuda"`` (CUDA events, synchronised).
        repeats: timed runs (``>= 1``); only ``SLOW_REPEATS`` once the first warm-up call took
            longer than ``slow_ms``.
        warmup: untimed calls after the first (``>= 1``); peak memory is taken on the first.
        memory: ``"rss"`` (CPU resident set), ``"torch"`` (torch's CUDA allocator) or
            ``"none"``.
        first: ``(milliseconds, result)`` of a first call the caller already made and timed
            (so that the compile-time call can run before the correctness suite).
        allow_simulator: time CUDA code under the simulator anyway (only for testing this
            function; such figures must never be reported).

    Returns:
        ``(timing, result of the first call)``.
    """
    if device == "cuda" and not allow_simulator:
        refuse_simulator("npfrcnn bench")
    if first is None:
        synchronize(device)
        t0 = time.perf_counter()
        result = call()
        synchronize(device)
        first_ms = (time.perf_counter() - t0) * 1e3
    else:
        first_ms, result = first
    timing = Timing(first_ms)
    peak: Callable[[Callable[[], Any]], tuple[Any, float | None]] | None = {
        "rss": peak_rss, "torch": _torch_peak
    }.get(memory)
    for k in range(max(warmup, 1)):
        t0 = time.perf_counter()
        if k == 0 and peak is not None:
            _, timing.peak_mem_mb = peak(call)
        else:
            call()
        synchronize(device)
        if k == 0 and (time.perf_counter() - t0) * 1e3 > slow_ms:
            timing.slow = True
            break
    n = min(repeats, SLOW_REPEATS) if timing.slow else repeats
    if device == "cpu":
        for _ in range(max(n, 1)):
            t0 = time.perf_counter()
            call()
            timing.runs_ms.append((time.perf_counter() - t0) * 1e3)
        return timing, result
    timing.timer = "cuda-events (numba)" if allow_simulator else gpu_timer()
    for _ in range(max(n, 1)):
        start, stop, elapsed = _event_pair(timing.timer)
        start.record()
        call()
        stop.record()
        synchronize(device)
        timing.runs_ms.append(elapsed(start, stop))
    return timing, result


# --------------------------------------------------------------------------------------------
# Machine and versions
# --------------------------------------------------------------------------------------------


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _gpu_name() -> str | None:
    try:
        import torch

        if torch.cuda.is_available():
            return str(torch.cuda.get_device_name(0))
    except ImportError:
        pass
    try:
        from numba import cuda

        if cuda.is_available() and not simulated():
            name = cuda.get_current_device().name
            return name.decode() if isinstance(name, bytes) else str(name)
    except Exception:  # pragma: no cover - no driver
        pass
    return None


def machine(device: str = "cpu") -> dict[str, Any]:
    """The machine: CPU model, logical cores, OS, Python, and the GPU for ``device="cuda"``."""
    out: dict[str, Any] = {
        "cpu": _cpu_name(),
        "logical_cores": os.cpu_count(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
    }
    if device == "cuda":
        out["gpu"] = _gpu_name()
    return out


def machine_line(info: dict[str, Any]) -> str:
    text = (
        f"{info['cpu']}, {info['logical_cores']} logical cores, {info['os']}, "
        f"Python {info['python']}"
    )
    return text + (f", GPU {info['gpu']}" if info.get("gpu") else "")


_DISTRIBUTIONS = {
    "npfrcnn": ("npfrcnn",),
    "numpy": ("numpy",),
    "numba": ("numba",),
    "numba-cuda": ("numba-cuda",),
    "tensorflow": ("tensorflow", "tensorflow-cpu"),
    "torch": ("torch",),
    "torchvision": ("torchvision",),
}


def versions() -> dict[str, str]:
    """Installed versions of npfrcnn and the libraries it is benchmarked against."""
    out: dict[str, str] = {}
    for name, dists in _DISTRIBUTIONS.items():
        for dist in dists:
            try:
                out[name] = importlib.metadata.version(dist)
                break
            except importlib.metadata.PackageNotFoundError:
                continue
    return out


def git_revision() -> str:
    """The checkout's short commit (``+dirty`` with uncommitted changes), or
    ``$NPFRCNN_REVISION``, or ``unknown`` (an installed copy without git)."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, check=True, cwd=here, timeout=10,
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, cwd=here, timeout=10,
        ).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "")
    except Exception:
        return os.environ.get("NPFRCNN_REVISION", "unknown")
