"""``npfrcnn bench``: the command line of :mod:`npfrcnn.bench` (registered by ``npfrcnn.cli``).

Exit status: 0 done; 1 some ``--impl`` implementation was not exact (its timings are still
reported); 2 a usage error (reported before any work is done); 130 interrupted.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shlex
import sys
from pathlib import Path
from typing import Any

from npfrcnn.bench import specs

__all__ = ["cmd_bench", "register"]


def _epilog() -> str:
    lines = [
        "conventions (what an --impl FUNCTION is called with; --semantics picks one, and the",
        "reference it is checked against):",
    ]
    for op, convs in specs.SIGNATURES.items():
        for name, sig in convs.items():
            if name == "torchvision-nhwc":
                continue
            lines.append(f"  {op} --semantics {name}:")
            lines.append(f"      {sig}")
    lines += [
        "",
        "Inputs arrive as --inputs arrays (default numpy on the CPU; torch CUDA tensors, or numba",
        "device arrays without torch, on --device cuda); any returned torch / TF / numba / CuPy",
        "array or NumPy array is accepted, and its indices or values compared exactly (shape,",
        "dtype and bits) with npfrcnn's reference of that system.",
        "",
        "Before timing, each implementation runs an adversarial suite (IoU at the threshold,",
        "ties, degenerate and flipped boxes, empty input, max output and score thresholds, RoIs",
        "on and past the border, tiny and huge RoIs; --list shows them); the table and the JSON",
        "say 'exact' or the first case that differs, expected vs got. Then each workload, smallest",
        "first: one first call (compilation, start-up), --warmup calls, --repeats timed calls;",
        "median and p10-p90. A size whose warm-up call takes longer than --max-seconds gets 3",
        "runs, and larger sizes are skipped for that implementation.",
        "",
        "workloads: the synthetic sweep (--sizes, --synthetic) plus recorded ones: the files",
        "shipped in npfrcnn/bench/data (proposals and RoIs of the demo model on a synthetic",
        "image), or your own --workload files, written by",
        "  npfrcnn bench --save-workload OUT.npz --weights MODEL.h5 IMAGE [--set KEY=VALUE]",
        "",
        "examples:",
        "  npfrcnn bench nms --impl mykernels:nms --json nms.json --plot nms.png",
        "  npfrcnn bench roi-align --impl kern.py:roi_align --inputs torch --device cuda",
        "  npfrcnn bench nms --semantics torchvision --impl mine:nms --check-only",
        "exit:    0 done; 1 an --impl is not exact; 2 usage error.",
    ]
    return "\n".join(lines)


def _int_list(text: str) -> list[int]:
    try:
        values = [int(p.replace("_", "")) for p in text.split(",") if p.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected integers separated by commas, got {text!r}"
        ) from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _names(text: str) -> list[str]:
    return [] if text.strip() in ("", "none") else [p.strip() for p in text.split(",") if p]


def _pair(text: str) -> tuple[int, int]:
    v = _int_list(text)
    if len(v) not in (1, 2):
        raise argparse.ArgumentTypeError(f"expected N or H,W, got {text!r}")
    return (v[0], v[-1])


def _map(text: str) -> tuple[int, int, int]:
    v = _int_list(text)
    if len(v) != 3:
        raise argparse.ArgumentTypeError(f"expected H,W,C, got {text!r}")
    return (v[0], v[1], v[2])


def register(sub: Any) -> None:
    """Add ``bench`` to ``sub`` (from ``add_subparsers``)."""
    b = sub.add_parser(
        "bench",
        help="check and time NMS / RoI kernels (yours too) beside TF, torchvision and npfrcnn",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Check an NMS or RoI pooling implementation exactly against the reference of "
        "TF's or torchvision's semantics on adversarial cases, then time it beside the built-in "
        "implementations installed here (npfrcnn numpy / cpu / cuda, TensorFlow, torchvision) "
        "on synthetic sweeps and recorded workloads.",
        epilog=_epilog(),
        usage="npfrcnn bench OP [options]\n       npfrcnn bench --save-workload OUT.npz "
        "[--weights MODEL.h5] [--set KEY=VALUE ...] IMAGE",
    )
    b.add_argument("target", nargs="?", metavar="OP|IMAGE",
                   help=f"the op: {', '.join(specs.OPS)}; with --save-workload, the image")
    b.add_argument("--impl", action="append", default=[], metavar="MODULE:FUNCTION",
                   help="an implementation to check and time (repeatable): pkg.mod:fn or "
                   "path/to/file.py:fn, optionally NAME=MODULE:FUNCTION")
    b.add_argument("--semantics", choices=specs.SEMANTICS, default=None,
                   help="the convention and reference of --impl (default: tf, or torchvision "
                   "for roi-align / roi-pool)")
    b.add_argument("--inputs", choices=("numpy", "torch", "tensorflow", "numba"), default=None,
                   help="array kind --impl receives (default numpy; cuda: torch, else numba)")
    b.add_argument("--builtins", type=_names, default=None, metavar="NAME,...|none",
                   help="only these built-ins (npfrcnn, tensorflow, torchvision, or names such "
                   "as npfrcnn-cpu); none: only --impl")
    b.add_argument("--sizes", type=_int_list, default=None, metavar="N,...",
                   help="synthetic sizes, boxes or RoIs (default: nms 1000..200000; soft-nms to "
                   "30000; RoI ops 100..3000)")
    b.add_argument("--synthetic", type=_names, default=["clustered"], metavar="LAYOUT,...|none",
                   help="synthetic layouts: clustered (default), uniform, ties (NMS ops); none")
    b.add_argument("--workload", action="append", default=None, metavar="FILE.npz",
                   help="recorded workload(s) instead of the shipped ones (repeatable); "
                   "'none' for none")
    b.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    b.add_argument("--repeats", type=int, default=None, metavar="R",
                   help="timed runs per size (default 7 on the CPU, 50 on CUDA)")
    b.add_argument("--warmup", type=int, default=1, metavar="W",
                   help="untimed calls after the first (default 1)")
    b.add_argument("--threads", type=int, default=None, metavar="N",
                   help="threads for Numba, torch and TF (default: all cores)")
    b.add_argument("--iou-threshold", type=float, default=0.7, metavar="T",
                   help="NMS threshold of the synthetic sweep (default 0.7)")
    b.add_argument("--roi-map", type=_map, default=(38, 63, 256), metavar="H,W,C",
                   help="synthetic feature map of the RoI ops, stride 16 (default 38,63,256)")
    b.add_argument("--output-size", type=_pair, default=(7, 7), metavar="H[,W]",
                   help="synthetic roi-align / roi-pool output (default 7)")
    b.add_argument("--sampling-ratio", type=int, default=2, metavar="S",
                   help="synthetic roi-align sampling ratio, <= 0 adaptive (default 2)")
    b.add_argument("--aligned", action="store_true", help="synthetic roi-align aligned=True")
    b.add_argument("--crop-size", type=_pair, default=(14, 14), metavar="H[,W]",
                   help="synthetic crop-and-resize / crop-and-pool crop (default 14)")
    b.add_argument("--max-seconds", type=float, default=2.0, metavar="S",
                   help="a warm-up call slower than this ends the sweep for that "
                   "implementation (default 2)")
    b.add_argument("--seed", type=int, default=0, help="synthetic workload seed (default 0)")
    b.add_argument("--check-only", action="store_true",
                   help="run the correctness checks only (allowed under the CUDA simulator)")
    b.add_argument("--list", action="store_true",
                   help="list the implementations available and the suite's cases, then exit")
    b.add_argument("--json", metavar="OUT.json", help="write every record as JSON")
    b.add_argument("--plot", metavar="OUT.png",
                   help="log-log plot of time against size (needs matplotlib: npfrcnn[bench])")
    b.add_argument("--quiet", "-q", action="store_true", help="no progress messages")
    s = b.add_argument_group("recording a workload")
    s.add_argument("--save-workload", metavar="OUT.npz",
                   help="run the model on IMAGE and save its NMS and RoI inputs")
    s.add_argument("--weights", metavar="MODEL.h5",
                   help="npfrcnn weights (default: the shipped demo model)")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="change a config value first, e.g. --set rpn_pre_nms_top_n=12000")
    b.set_defaults(func=cmd_bench)


def _folder_ok(path: str | None, option: str, log: Any) -> bool:
    if path is not None and not Path(path).resolve().parent.is_dir():
        log.error(f"{option} {path}: folder {Path(path).parent} does not exist; create it first")
        return False
    return True


def _save_workload(args: argparse.Namespace, log: Any) -> int:
    from npfrcnn.cli import _parse_set
    from npfrcnn.cli_train import default_weights

    if args.target is None:
        log.error("--save-workload needs an IMAGE: npfrcnn bench --save-workload OUT.npz IMAGE")
        return 2
    if not _folder_ok(args.save_workload, "--save-workload", log):
        return 2
    weights = args.weights or default_weights()
    if weights is None:
        log.error("no demo weights installed (weights/demo.h5); pass --weights MODEL.h5")
        return 2
    try:
        changes = _parse_set(args.set)
    except ValueError as e:
        log.error(str(e))
        return 2
    from npfrcnn import FasterRCNN
    from npfrcnn.bench import workloads
    from npfrcnn.image import ImageError, load
    from npfrcnn.weights.hdf5 import read

    try:
        image = load(args.target)
    except (ImageError, OSError) as e:
        log.error(f"{args.target}: {e}")
        return 2
    try:
        wf = read(weights)
        config = workloads.config_with(wf.config, changes)
    except (ValueError, OSError) as e:
        log.error(f"{weights}: {e}")
        return 2
    model = FasterRCNN(config, wf.classes, wf.tensors)
    source = {
        "weights": Path(weights).name, "profile": type(config).__name__,
        "image": Path(args.target).name, "image_shape": list(image.shape), "set": changes,
    }
    arrays = workloads.save(args.save_workload, model, image, source)
    fmap = "x".join(str(v) for v in arrays["roi_features"].shape[1:])
    log.info(
        f"wrote {args.save_workload}: {arrays['nms_boxes'].shape[0]:,} NMS boxes, "
        f"{arrays['roi_rois'].shape[0]:,} RoIs on a {fmap} map"
    )
    return 0


def _list(args: argparse.Namespace, log: Any) -> int:
    from npfrcnn.bench import gate, impls

    found, notes = impls.builtins(args.target, args.device, args.threads or 1, args.builtins)
    print(f"{args.target}: {specs.OPS[args.target].summary}")
    print("built-in implementations here:")
    for i in found:
        print(f"  {i.name:<18} {i.semantics:<12} {i.description}")
    for n in notes:
        print(f"  (not available: {n})")
    for sem in specs.OPS[args.target].semantics:
        print(f"correctness cases, {sem} semantics:")
        print("  " + ", ".join(c.name for c in gate.cases(args.target, sem)))
    return 0


def cmd_bench(args: argparse.Namespace, log: Any) -> int:
    if args.save_workload:
        return _save_workload(args, log)
    if args.target not in specs.OPS:
        what = "an op is required" if args.target is None else f"unknown op {args.target!r}"
        log.error(f"{what}; choose one of {', '.join(specs.OPS)} (or --save-workload)")
        return 2
    if args.list:
        return _list(args, log)
    if not (_folder_ok(args.json, "--json", log) and _folder_ok(args.plot, "--plot", log)):
        return 2
    if args.plot and importlib.util.find_spec("matplotlib") is None:
        log.error("--plot needs matplotlib: pip install 'npfrcnn[bench]'")
        return 2
    from npfrcnn.bench import report as rep
    from npfrcnn.bench import runner
    from npfrcnn.bench.impls import UsageError
    from npfrcnn.bench.workloads import RoiConfig

    files = args.workload
    if files is not None and [f.lower() for f in files] == ["none"]:
        files = []
    h, w, c = args.roi_map
    config = runner.BenchConfig(
        op=args.target, impls=args.impl, semantics=args.semantics, inputs=args.inputs,
        builtins=args.builtins, sizes=args.sizes, layouts=args.synthetic, workload_files=files,
        device=args.device, repeats=args.repeats, warmup=args.warmup, threads=args.threads,
        iou_threshold=args.iou_threshold,
        roi=RoiConfig(height=h, width=w, channels=c, output_size=args.output_size,
                      sampling_ratio=args.sampling_ratio, aligned=args.aligned,
                      crop_size=args.crop_size),
        slow_s=args.max_seconds, check_only=args.check_only, seed=args.seed,
        command="npfrcnn bench " + " ".join(shlex.quote(a) for a in getattr(args, "argv", [])[1:]),
    )
    try:
        plan = runner.plan(config)
    except UsageError as e:
        log.error(str(e))
        return 2
    for note in plan.notes:
        log.info(f"not run: {note}")
    result = runner.execute(plan, log.info)
    print(rep.table(result))
    if not args.check_only:
        print("\nMedian ms:\n")
        print(rep.pivot(result))
    sys.stdout.flush()
    if args.json:
        rep.write_json(result, args.json)
        problems = rep.validate(json.loads(Path(args.json).read_text()))
        if problems:  # pragma: no cover - a bug in the writer
            log.error(f"{args.json}: invalid report: {'; '.join(problems)}")
            return 2
        log.info(f"wrote {args.json}")
    if args.plot:
        rep.plot(result, args.plot)
        log.info(f"wrote {args.plot}")
    bad = runner.inexact_users(result, plan)
    if bad:
        log.error(f"not exact: {', '.join(bad)} (timed anyway; see the table)")
        return 1
    return 0
