"""Shared test set-up.

Hypothesis profiles (choose with HYPOTHESIS_PROFILE=...):
  ci        default: derandomized (a fixed set of examples every run), 40 examples per test
  dev       random examples, 100 per test
  thorough  random examples, 1,000 per test (minutes)

Markers:
  slow  full-depth models and large budgets; skipped unless --run-slow is given
  gpu   needs a real CUDA GPU (not the simulator); skipped without one
"""

from __future__ import annotations

import os
from pathlib import Path

# TensorFlow is the numerical reference: keep oneDNN's reordered float arithmetic off, and quiet.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Without a GPU run requested (NPFRCNN_TEST_GPU=1), CUDA kernels run under Numba's simulator.
if os.environ.get("NPFRCNN_TEST_GPU") != "1":
    os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")

import importlib.util

import pytest
from hypothesis import HealthCheck, settings

#: Thread-count variables as this process started. A Dask LocalCluster's Nanny (in this
#: process) leaves its workers' pre-spawn values (``NUMBA/OMP/OPENBLAS_NUM_THREADS=1``) in
#: ``os.environ``; a later test's subprocess would then run its BLAS with another thread count
#: than this process did, and on some CPUs sgemm's bits depend on it.
_THREAD_ENV = {v: os.environ.get(v) for v in (
    "NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
    "MALLOC_TRIM_THRESHOLD_",
)}


@pytest.fixture(autouse=True)
def _restore_thread_environment():
    yield
    for var, value in _THREAD_ENV.items():
        if value is None:
            os.environ.pop(var, None)
        else:
            os.environ[var] = value



# Both oracles, TensorFlow and torch, run in one pytest process. Once TensorFlow is loaded,
# torchvision's first import (torch._dynamo -> triton) crashes the process with a segmentation
# fault, so torch and torchvision are imported first, before any test module imports TF.
if importlib.util.find_spec("torchvision") is not None:
    import torchvision  # noqa: F401

settings.register_profile(
    "ci",
    max_examples=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)
settings.register_profile(
    "dev", max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "thorough", max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--run-slow", action="store_true", help="also run tests marked slow")


def _real_gpu() -> bool:
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        return False
    try:
        from numba import cuda

        return bool(cuda.is_available())
    except Exception:
        return False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    run_slow = config.getoption("--run-slow")
    gpu = None
    for item in items:
        if "slow" in item.keywords and not run_slow:
            item.add_marker(pytest.mark.skip(reason="slow: run with --run-slow"))
        if "gpu" in item.keywords:
            if gpu is None:
                gpu = _real_gpu()
            if not gpu:
                item.add_marker(pytest.mark.skip(reason="needs a real CUDA GPU"))


@pytest.fixture(scope="session")
def tf():
    """TensorFlow (CPU), imported once; tests that need it skip if it is not installed."""
    tf = pytest.importorskip("tensorflow")
    tf.config.set_visible_devices([], "GPU")
    return tf


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """../shared beside the checkout; tests that need it skip cleanly when it is absent."""
    if not SHARED.is_dir():
        pytest.skip("../shared is absent (a fresh clone has no shared data)")
    return SHARED
