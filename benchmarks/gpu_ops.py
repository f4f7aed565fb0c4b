"""GPU kernels beside torchvision: NMS, crop_and_pool, RoIAlign, RoIPool (run on a real GPU).

    python benchmarks/gpu_ops.py [--repeat 50] [--warmup 5] [--write] [--out table.md] [--quick]

A thin caller of ``npfrcnn bench --device cuda`` (:mod:`npfrcnn.bench`): every implementation
runs the correctness suite first, then each input is made on the device before timing; the
first call (numba compiles the kernels) is reported apart, then ``--warmup`` calls, then
``--repeat`` calls timed with CUDA events, synchronised after each; the median is reported.
Ours run on device arrays and return device arrays; the RoI ops write into an output allocated
once per input (torch's caching allocator makes torchvision's output allocation free, numba's
allocator does not cache).

Cases (the Faster R-CNN sizes): NMS at 1,000, 6,000, 12,000 and 100,000 RPN-like boxes
(IoU 0.7); crop_and_pool (14x14 crops pooled to 7x7, the workshop / Luminoth RoI step),
RoIAlign (14x14 aligned, adaptive sampling: Detectron2 C4; and 7x7, sampling 2) and RoIPool
7x7 for 300 and 2,000 RoIs on a 38x63x1024 map. torchvision works in NCHW, ours in NHWC: each
gets the map in its own layout. The ratio column is ours / torchvision (below 1: ours is
faster).

``--write`` replaces the "CUDA kernels (GPU)" section of benchmarks/RESULTS.md with the table,
the GPU, the versions, and whether the targets hold (NMS at 12,000 boxes no slower than
torchvision's; crop_and_pool and RoIAlign at 2,000 RoIs no slower than torchvision's RoIAlign
of the same output size). It refuses to run under numba's CUDA simulator or without a GPU.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from npfrcnn._io import atomic_write
from npfrcnn.bench import BenchConfig, RoiConfig, execute, plan
from npfrcnn.bench.impls import UsageError
from npfrcnn.bench.report import Record, Report
from npfrcnn.bench.timing import machine_line, simulated

from _harness import git_revision, log, replace_section

SECTION = "CUDA kernels (GPU)"
BUILTINS = ["npfrcnn-cuda", "torchvision-cuda"]


def _refuse_if_simulated() -> None:
    if simulated():
        sys.exit("gpu_ops.py: refusing to run under the numba CUDA simulator (fake timings)")
    from numba import cuda

    if not cuda.is_available():
        sys.exit("gpu_ops.py: no CUDA GPU available")


def _nms_phases(n: int, repeat: int) -> str:
    """Where a warm NMS call's time goes: GPU time between CUDA events around the two halves
    of the driver, and the host's wall time to issue each half (diagnostic; kernel internals)."""
    import numpy as np
    from numba import cuda

    from npfrcnn.bench.workloads import synthetic
    from npfrcnn.kernels.cuda import nms as k_nms

    w = synthetic("nms", n)
    yxyx = np.ascontiguousarray(w.inputs["boxes"][:, [1, 0, 3, 2]])
    d_boxes, d_scores = cuda.to_device(yxyx), cuda.to_device(w.inputs["scores"])
    tpb = k_nms._cuda.threads_per_block()
    gpu: dict[str, list[float]] = {"order": [], "suppress": []}
    host: dict[str, list[float]] = {"order": [], "suppress": []}
    for _ in range(repeat):
        e0, e1, e2 = cuda.event(), cuda.event(), cuda.event()
        cuda.synchronize()
        e0.record()
        t0 = time.perf_counter()
        order, count, sboxes = k_nms._device_order(d_boxes, d_scores, float("-inf"), tpb)
        t1 = time.perf_counter()
        e1.record()
        k_nms._suppress(sboxes, order, count, None, 0.7, n, 0, True)  # ends in a host sync
        t2 = time.perf_counter()
        e2.record()
        e2.synchronize()
        gpu["order"].append(e0.elapsed_time(e1))
        gpu["suppress"].append(e1.elapsed_time(e2))
        host["order"].append((t1 - t0) * 1e3)
        host["suppress"].append((t2 - t1) * 1e3)
    med = {k: statistics.median(v) for k, v in gpu.items()}
    hmed = {k: statistics.median(v) for k, v in host.items()}
    k_nms._cuda.release_scratch()
    return (
        f"nms {n:,} boxes by phase (median of {repeat}): score keys + sort + gather "
        f"{med['order']:.3f} ms GPU / {hmed['order']:.3f} ms host to launch; mask + select "
        f"{med['suppress']:.3f} ms GPU / {hmed['suppress']:.3f} ms host including the result "
        "count's copy"
    )


def _bench(label: str, op: str, sizes: list[int], args: argparse.Namespace,
           roi: RoiConfig | None = None) -> tuple[str, Report]:
    config = BenchConfig(op, builtins=BUILTINS, sizes=sizes, workload_files=[], device="cuda",
                         repeats=args.repeat, warmup=args.warmup, roi=roi or RoiConfig(),
                         slow_s=600.0)
    try:
        return label, execute(plan(config), log)
    except UsageError as e:
        sys.exit(f"gpu_ops.py: {e}")


def _rows(runs: list[tuple[str, Report]]) -> list[dict[str, Any]]:
    rows = []
    for label, rep in runs:
        sizes = sorted({r.size for r in rep.records})
        for n in sizes:
            by: dict[str, Record] = {r.impl: r for r in rep.records if r.size == n}
            ours, tv = by.get("npfrcnn-cuda"), by.get("torchvision-cuda")
            rows.append({"op": label, "size": n, "ours": ours, "tv": tv})
    return rows


def _targets(rows: list[dict[str, Any]]) -> list[str]:
    """The issue's targets, judged on the measured ratios (ours / torchvision, <= 1 to pass)."""
    def ms(op: str, size: int, who: str) -> float | None:
        for r in rows:
            if r["op"] == op and r["size"] == size and r[who] is not None:
                return r[who].median_ms
        return None

    wanted = [
        ("nms (IoU 0.7)", "nms (IoU 0.7)", 12000,
         "NMS at 12,000 boxes no slower than torchvision.ops.nms"),
        ("crop_and_pool 14x14 -> 7x7", "roi_align 7x7 sr 2", 2000,
         "crop_and_pool at 2,000 RoIs no slower than torchvision's roi_align (7x7, sr 2)"),
        ("roi_align 7x7 sr 2", "roi_align 7x7 sr 2", 2000,
         "roi_align 7x7 at 2,000 RoIs no slower than torchvision's roi_align"),
        ("roi_align 14x14 aligned sr 0", "roi_align 14x14 aligned sr 0", 2000,
         "roi_align 14x14 at 2,000 RoIs no slower than torchvision's roi_align"),
    ]
    out = []
    for ours_op, tv_op, size, text in wanted:
        a, b = ms(ours_op, size, "ours"), ms(tv_op, size, "tv")
        if a and b:
            out.append(f"{text}: {'met' if a <= b else 'NOT met'} ({a / b:.2f}x)")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="fewer sizes")
    parser.add_argument(
        "--smoke", action="store_true", help="tiny sizes: checks the harness, times nothing useful"
    )
    parser.add_argument("--out", help="also write the table (markdown) to this file")
    parser.add_argument(
        "--write", action="store_true", help=f'replace the "{SECTION}" section of RESULTS.md'
    )
    args = parser.parse_args(argv)
    _refuse_if_simulated()

    nms_sizes = [1000, 12000] if args.quick else [1000, 6000, 12000, 100000]
    roi_sizes = [300] if args.quick else [300, 2000]
    channels = 1024
    if args.smoke:
        nms_sizes, roi_sizes, channels = [100], [3], 8
    runs = [_bench("nms (IoU 0.7)", "nms", nms_sizes, args)]
    checks = []
    if 12000 in nms_sizes:
        checks.append(_nms_phases(12000, args.repeat))
    c = channels
    runs += [
        _bench("crop_and_pool 14x14 -> 7x7", "crop-and-pool", roi_sizes, args,
               RoiConfig(channels=c, crop_size=(14, 14))),
        _bench("roi_align 7x7 sr 2", "roi-align", roi_sizes, args,
               RoiConfig(channels=c, output_size=(7, 7), sampling_ratio=2)),
        _bench("roi_align 14x14 aligned sr 0", "roi-align", roi_sizes, args,
               RoiConfig(channels=c, output_size=(14, 14), sampling_ratio=0, aligned=True)),
        _bench("roi_pool 7x7", "roi-pool", roi_sizes, args,
               RoiConfig(channels=c, output_size=(7, 7))),
    ]
    rows = _rows(runs)
    first = runs[0][1]
    versions = first.versions
    command = "python benchmarks/gpu_ops.py" + "".join(
        f" {a}" for a in (argv if argv is not None else sys.argv[1:])
    )
    lines = [
        f"GPU: {first.machine.get('gpu')}; host: {machine_line(first.machine)}; numba-cuda "
        f"{versions.get('numba-cuda', '?')}, torch {versions.get('torch', '?')}, torchvision "
        f"{versions.get('torchvision', '?')}.",
        f"Command: `{command}` (revision {git_revision()}); the `npfrcnn bench --device cuda` "
        f"machinery: correctness suite first, median of {args.repeat} calls after "
        f"{args.warmup} warm-up calls, each timed with CUDA events and synchronised, inputs "
        "already on the device; the first call of each (numba compiles the kernels) is "
        "reported apart.",
        "",
        "| op | size | ours (ms) | torchvision (ms) | ours / tv | ours first call (ms) | exact |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        ours, tv = r["ours"], r["tv"]
        o = ours.median_ms if ours else None
        t = tv.median_ms if tv else None
        exact = " / ".join(
            f"{x.impl}: {'exact' if x.exact else 'NOT exact'}" for x in (ours, tv) if x
        )
        lines.append(
            f"| {r['op']} | {r['size']:,} | {'-' if o is None else f'{o:.3f}'} | "
            f"{'-' if t is None else f'{t:.3f}'} | {f'{o / t:.2f}' if o and t else '-'} | "
            f"{(ours.first_call_ms or 0) if ours else 0:.1f} | {exact} |"
        )
    mismatches = {
        f"{rec.impl} ({label})": rec.first_mismatch
        for label, rep in runs for rec in rep.records if not rec.exact
    }
    if mismatches:
        lines += ["", "Not exact (first mismatch):", ""]
        lines += [f"* {k}: {v}" for k, v in mismatches.items()]
    if checks:
        lines += ["", "Diagnostics:", ""] + [f"* {c}" for c in checks]
    verdicts = _targets(rows)
    if verdicts:
        lines += ["", "Targets:", ""] + [f"* {v}" for v in verdicts]
    table = "\n".join(lines)
    print()
    print(table)
    if args.out:
        with atomic_write(args.out) as f:
            f.write(table + "\n")
    if args.write:
        if args.smoke or args.quick:
            print("not writing RESULTS.md from a --smoke or --quick run", file=sys.stderr)
        else:
            replace_section(Path(__file__).with_name("RESULTS.md"), SECTION, table)
            print("wrote benchmarks/RESULTS.md", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
