"""``npfrcnn bench``: check NMS and RoI pooling kernels exactly, then time them side by side.

The person this serves has written an NMS or RoIAlign kernel (CUDA, Triton, C++, Rust, a Numba
loop) and wants to know, in one command, whether it is exactly right on the cases that break
kernels, and how fast it is beside TensorFlow, torchvision and npfrcnn, on realistic inputs and
across sizes::

    npfrcnn bench nms --impl mykernels:nms --json nms.json --plot nms.png

Modules:

* :mod:`.specs`: each op's neutral inputs, argument conventions (TF's, torchvision's), the
  reference of each semantics, and the exact comparison;
* :mod:`.impls`: the built-in implementations (npfrcnn numpy / cpu / cuda, TensorFlow,
  torchvision) and a user's ``MODULE:FUNCTION``;
* :mod:`.gate`: the adversarial correctness suite;
* :mod:`.workloads`: synthetic sweeps and workloads recorded from a model run (``.npz``);
* :mod:`.timing`: timers (``perf_counter``; CUDA events), threads, peak memory, machine;
* :mod:`.runner`: one run, correctness first; :mod:`.report`: table, JSON, plot;
* :mod:`.cli`: the command line.

From Python::

    from npfrcnn.bench import BenchConfig, run, table
    report = run(BenchConfig("roi-align", impls=["mine:roi_align"], sizes=[300, 1000]))
    print(table(report))
"""

from npfrcnn.bench.gate import cases
from npfrcnn.bench.report import Record, Report, pivot, plot, table, validate, write_json
from npfrcnn.bench.runner import BenchConfig, execute, plan, run
from npfrcnn.bench.specs import OPS, SIGNATURES, compare, reference
from npfrcnn.bench.workloads import RoiConfig

__all__ = [
    "OPS",
    "SIGNATURES",
    "BenchConfig",
    "Record",
    "Report",
    "RoiConfig",
    "cases",
    "compare",
    "execute",
    "pivot",
    "plan",
    "plot",
    "reference",
    "run",
    "table",
    "validate",
    "write_json",
]
