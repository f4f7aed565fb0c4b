"""Benchmark the core ops beside TensorFlow (CPU), in one run: a thin caller of npfrcnn.bench.

    python benchmarks/ops.py [--repeats 5] [--write]

Cases (issue 2), run by the same machinery as ``npfrcnn bench`` (correctness suite first, then
the timing, the first call apart):

  * NMS on 1,000 / 6,000 / 12,000 RPN-like boxes (``synthetic-clustered``), IoU 0.7, no cap on
    the output (every box is visited);
  * crop_and_resize (14x14, bilinear) + 2x2/2 max pool for 300 and 2,000 RoIs on a 38x63x1024
    feature map (7x7 out): TF runs the two ops, npfrcnn runs the fused ``crop_and_pool``.

For each case: the NumPy reference (``npfrcnn-numpy``), the Numba kernels (``npfrcnn-cpu``)
and TensorFlow, median of ``--repeats`` runs after a warm-up call. ``--write`` replaces the
"Core ops (CPU)" section of benchmarks/RESULTS.md with the table and the machine description.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from npfrcnn.bench import BenchConfig, RoiConfig, run
from npfrcnn.bench.report import Record

from _harness import git_revision, log, machine_description, replace_section

BUILTINS = ["npfrcnn-numpy", "npfrcnn-cpu", "tensorflow"]


def _cases(repeats: int) -> list[tuple[str, list[Record]]]:
    out = []
    nms = run(BenchConfig("nms", builtins=BUILTINS, sizes=[1000, 6000, 12000],
                          workload_files=[], repeats=repeats, slow_s=60.0), log)
    for n in (1000, 6000, 12000):
        out.append((f"NMS {n:,} boxes (IoU 0.7)", [r for r in nms.records if r.size == n]))
    roi = RoiConfig(channels=1024, crop_size=(14, 14))
    pool = run(BenchConfig("crop-and-pool", builtins=BUILTINS, sizes=[300, 2000],
                           workload_files=[], repeats=repeats, roi=roi, slow_s=60.0), log)
    for n in (300, 2000):
        out.append((f"crop 14x14 + max pool 2x2, {n:,} RoIs, 38x63x1024",
                    [r for r in pool.records if r.size == n]))
    return out


def table(cases: list[tuple[str, list[Record]]]) -> str:
    out = [
        "| case | TF ms | numpy ms | cpu ms | numpy / TF | cpu / TF | first-call extra (cpu) "
        "| exact |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, recs in cases:
        by = {r.impl: r for r in recs}
        tf_, np_, cpu = by["tensorflow"], by["npfrcnn-numpy"], by["npfrcnn-cpu"]
        tf_ms, np_ms, cpu_ms = (float(r.median_ms or 0) for r in (tf_, np_, cpu))
        extra = max(float(cpu.first_call_ms or 0) - cpu_ms, 0.0) / 1e3
        exact = "all" if all(r.exact for r in recs) else ", ".join(
            f"{r.impl} NOT" for r in recs if not r.exact
        )
        out.append(
            f"| {name} | {tf_ms:.3g} | {np_ms:.4g} | {cpu_ms:.3g} | {np_ms / tf_ms:.2f}x | "
            f"{cpu_ms / tf_ms:.3f}x | {extra:.2f} s | {exact} |"
        )
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per case (median)")
    parser.add_argument("--write", action="store_true", help="update benchmarks/RESULTS.md")
    args = parser.parse_args()
    cases = _cases(args.repeats)
    body = "\n".join([
        f"Machine: {machine_description()}.",
        f"Command: `python benchmarks/ops.py --repeats {args.repeats} --write` "
        f"(revision {git_revision()}); the `npfrcnn bench` machinery: correctness suite "
        f"first, median of {args.repeats} runs after a warm-up call; TF and Numba with as "
        "many threads as cores.",
        "",
        table(cases),
        "",
        "'first-call extra' is the first call's time minus the median: Numba compilation "
        "or a load from its on-disk cache for the cpu backend.",
    ])
    print(body)
    if args.write:
        replace_section(Path(__file__).with_name("RESULTS.md"), "Core ops (CPU)", body)
        log("wrote benchmarks/RESULTS.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
