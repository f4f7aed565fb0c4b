"""The default ``npfrcnn bench`` sweeps for NMS and RoIAlign, saved and written up.

    python benchmarks/bench_sweep.py [--device cpu|cuda] [--write] [--from-json]

Runs ``npfrcnn bench nms`` and ``npfrcnn bench roi-align`` with their defaults and every
implementation installed (npfrcnn numpy / cpu / cuda, TensorFlow, torchvision), saves each
report as ``benchmarks/bench-<op>-<device>.json`` and its log-log plot as ``.png``, and prints a
Markdown section: the machine, the command, per op the median-ms table (sizes by
implementation) and the plot. ``--write`` replaces the "npfrcnn bench: default sweep (<device>)"
section of benchmarks/RESULTS.md with it; ``--from-json`` rebuilds the section and plots from
the saved JSON files without measuring again.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from npfrcnn.bench import BenchConfig, Report, pivot, plot, run, validate, write_json
from npfrcnn.bench.timing import machine_line

from _harness import log, replace_section

HERE = Path(__file__).resolve().parent
OPS = {
    "nms": "NMS, IoU 0.7, no cap on the output (every box is visited); "
    "`synthetic-clustered`: RPN-like boxes on a 600x1000 image (about 20 per object, anchor "
    "sizes 32 to 512 px), scores uniform in (0, 1)",
    "roi-align": "RoIAlign, torchvision semantics; `synthetic-clustered`: proposal-like RoIs on "
    "a 38x63x256 map (stride 16), 7x7 output, sampling ratio 2, not aligned (torchvision's "
    "MultiScaleRoIAlign)",
}


def _section(reports: dict[str, Report], device: str, from_json: bool) -> str:
    first = next(iter(reports.values()))
    v = first.versions
    libs = ", ".join(f"{k} {v[k]}" for k in ("numpy", "numba", "numba-cuda", "tensorflow",
                                              "torch", "torchvision") if k in v)
    s = first.settings
    lines = [
        f"Machine: {machine_line(first.machine)}; {libs}.",
        "Commands: " + ", ".join(f"`{r.command}`" for r in reports.values())
        + f" (revision {first.revision}), written up by `python benchmarks/bench_sweep.py "
        f"--device {device}{' --from-json' if from_json else ''} --write`; the defaults: the "
        f"correctness suite first, then per size a first call, {s['warmup']} "
        f"warm-up call and the median of {s['repeats']} runs; {s['threads']} threads for "
        "Numba, torch and TF; a warm-up call slower than "
        f"{s['slow_s']:g} s ends that implementation's sweep (3 runs there, '-' above).",
        "Recorded workloads: `demo-c4` (the shipped demo model on a 320x320 synthetic image: "
        "its RPN NMS input, 1,000 boxes, and its 100 proposals as RoIs) and `demo-c4-12k` (the "
        "same with the workshop's top-n: 12,000 boxes, 2,000 RoIs); their RoIAlign is "
        "Detectron2's C4 pooler (14x14, adaptive sampling, aligned) on the 40x40x256 map.",
    ]
    for op, rep in reports.items():
        inexact = sorted({f"{r.impl}: {r.first_mismatch}" for r in rep.records if not r.exact})
        verdict = ("Every implementation was exact on the correctness suite and on every "
                   "workload." if not inexact else "Not exact: " + "; ".join(inexact))
        lines += [
            "", f"{OPS[op]}. Median ms per call. {verdict}", "", pivot(rep), "",
            f"![npfrcnn bench {op}, {device}](bench-{op}-{device}.png)",
        ]
    lines += [
        "",
        "Every call allocates its own output, as a caller's would: for the RoI ops on the CPU "
        "that is tens of MB per call (1,000 RoIs: 50 MB), and first-touching it costs page "
        "faults that this VM serves at very different speeds from one process to the next "
        "(huge pages or not): in one probe of npfrcnn-cpu's RoIAlign at 1,000 RoIs, 7 to 9 ms "
        "into a preallocated output, 12 to 65 ms into a fresh one, by process. Its figures at "
        "1,000 RoIs and more can therefore move by 2x or more between runs.",
        "",
        f"Full records (p10-p90 spread, first call, peak memory, threads, versions): "
        f"`benchmarks/bench-nms-{device}.json` and `bench-roi-align-{device}.json`.",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--write", action="store_true", help="update benchmarks/RESULTS.md")
    parser.add_argument("--from-json", action="store_true",
                        help="rebuild from the saved JSON files; measure nothing")
    args = parser.parse_args()
    reports: dict[str, Report] = {}
    for op in OPS:
        path = HERE / f"bench-{op}-{args.device}.json"
        if args.from_json:
            obj = json.loads(path.read_text())
            problems = validate(obj)
            if problems:
                sys.exit(f"{path}: {'; '.join(problems)}")
            reports[op] = Report.from_json(obj)
        else:
            reports[op] = run(BenchConfig(
                op, device=args.device,
                command=f"npfrcnn bench {op} --device {args.device}",
            ), log)
            write_json(reports[op], path)
        plot(reports[op], path.with_suffix(".png"))
    body = _section(reports, args.device, args.from_json)
    print(body)
    if args.write:
        heading = f"npfrcnn bench: default sweep ({args.device.upper()})"
        replace_section(HERE / "RESULTS.md", heading, body)
        log("wrote benchmarks/RESULTS.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
