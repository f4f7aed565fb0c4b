"""Compile CUDA kernels to PTX without a GPU (run as a subprocess by test_cuda_compile.py).

    python -m tests.cuda_ptx LAUNCHES.pkl RESULT.json

``LAUNCHES.pkl`` holds ``[(module, kernel name, (numba arg types, ...)), ...]``, the launches the
drivers made under the simulator. With the simulator off, each kernel's Python function is
compiled by NVVM (``numba.cuda.compile_ptx``, no device or driver needed, only the NVVM and
NVRTC libraries) for every compute capability in ``CCS``, and ``RESULT.json`` gets, per launch,
the PTX instruction counts the test checks, or the error. If NVVM cannot be found at all,
``RESULT.json`` is ``{"unavailable": reason}`` and the test skips.
"""

from __future__ import annotations

import importlib
import json
import os
import pickle
import re
import sys

#: Hopper (H100/H200) and Ampere (A100): the GPUs the benchmarks are run on.
CCS = [(9, 0), (8, 0)]

#: PTX instructions counted: float32 fused multiply-adds (must be none), and float64 work.
PATTERNS = {
    "fma_f32": re.compile(r"\bfma\.rn(?:\.ftz)?(?:\.sat)?\.f32\b"),
    "mad_f32": re.compile(r"\bmad\.(?:rn\.)?f32\b"),
    "f64_ops": re.compile(r"\b(?:add|sub|mul|div|fma)\.[a-z.]*f64\b"),
}


def main(argv: list[str]) -> int:
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        sys.exit("cuda_ptx: run with NUMBA_ENABLE_CUDASIM=0 (the simulator does not compile)")
    from numba import cuda
    from numba.core import types
    from numba.cuda import dispatcher

    # A device function called from a kernel is compiled for "the current device"'s compute
    # capability, which needs a driver. Stand in a device of the capability being compiled for.
    current_cc = [CCS[0]]

    class _Device:
        @property
        def compute_capability(self) -> tuple[int, int]:
            return current_cc[0]

    dispatcher.get_current_device = _Device  # type: ignore[attr-defined]

    launches_path, result_path = argv
    with open(launches_path, "rb") as f:
        launches = pickle.load(f)
    results: dict[str, object] = {}
    try:
        probe = cuda.compile_ptx(lambda a: None, (types.float32[:],), cc=CCS[0])
        del probe
    except Exception as exc:  # no NVVM / NVRTC on this machine
        with open(result_path, "w") as f:
            json.dump({"unavailable": f"{type(exc).__name__}: {exc}".splitlines()[0]}, f)
        return 0
    for module, name, argtypes in launches:
        key = f"{module}.{name}({', '.join(str(t) for t in argtypes)})"
        kernel = getattr(importlib.import_module(module), name)
        entry: dict[str, object] = {}
        for cc in CCS:
            current_cc[0] = cc
            try:
                ptx, _ = cuda.compile_ptx(kernel.py_func, tuple(argtypes), cc=cc)
            except Exception as exc:
                entry[f"sm_{cc[0]}{cc[1]}"] = {"error": f"{type(exc).__name__}: {exc}"}
                continue
            entry[f"sm_{cc[0]}{cc[1]}"] = {k: len(p.findall(ptx)) for k, p in PATTERNS.items()}
        results[key] = entry
    with open(result_path, "w") as f:
        json.dump({"results": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
