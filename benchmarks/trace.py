"""Trace and compare benchmark: ``npfrcnn trace`` / ``compare`` of one image, time, size, memory.

For a full-size seeded random-weight torchvision model (``tests/tv_models.py``,
``build(variant, small=False)``, converted to HDF5) and one synthetic ``--height`` x ``--width``
image (800 x 1333 by default), each in its own child process:

* ``detect``: load, one warm-up detection (Numba compilation), reset the peak RSS
  (``/proc/self/clear_refs``), one detection: its time and peak RSS;
* ``trace``: load, the same warm-up detection, reset, one trace to HDF5 (and one to ``.npz``):
  time, file size and peak RSS. The trace streams stages to the file, so its peak should not
  exceed the detection's plus the trace's own size;
* ``compare``: ``compare_traces`` of the trace with a second trace of the same image (another
  run of the same model) and with a trace of the torchvision model itself
  (``npfrcnn.trace.from_torchvision``, when torch is installed): time of the table alone and
  with the re-run of every stage out of tolerance.

Usage::

    python benchmarks/trace.py --variant r50-frozen0              # ResNet-50 FPN
    python benchmarks/trace.py --variant r101 --skip-compare      # memory of a ResNet-101 trace
    python benchmarks/trace.py --variant r50-frozen0 --small      # quick check (small model)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

_HERE = Path(__file__).resolve().parent
_REPO = _HERE.parent
sys.path.insert(0, str(_REPO / "tests"))
sys.path.insert(0, str(_HERE))

from model import _reset_peak_rss, _revision, _vm_kib, synthetic_image  # noqa: E402

PROFILES = {"r50-frozen0": "torchvision-r50-fpn", "r101": "torchvision-r101-fpn",
            "v2": "torchvision-r50-fpn-v2"}


def _child(args: argparse.Namespace) -> int:
    from npfrcnn import FasterRCNN

    image = np.load(args.image_npy)
    out: dict[str, Any] = {}
    if args.child in ("detect", "trace"):
        model = FasterRCNN.from_hdf5(args.weights)
        t = time.perf_counter()
        model.detect(image)
        out["warmup_s"] = time.perf_counter() - t
        out["rss_before_kib"] = _vm_kib("VmRSS")
        _reset_peak_rss()
        if args.child == "detect":
            t = time.perf_counter()
            model.detect(image)
            out["seconds"] = time.perf_counter() - t
        else:
            from npfrcnn.trace import trace_images

            t = time.perf_counter()
            trace_images(model, [("synthetic", image)], args.out)
            out["seconds"] = time.perf_counter() - t
            out["bytes"] = os.path.getsize(args.out)
        out["peak_kib"] = _vm_kib("VmHWM")
        if args.child == "trace" and args.npz:
            t = time.perf_counter()
            trace_images(model, [("synthetic", image)], args.npz)
            out["npz_seconds"] = time.perf_counter() - t
            out["npz_bytes"] = os.path.getsize(args.npz)
    elif args.child == "compare":
        from npfrcnn.trace import read_trace
        from npfrcnn.trace.compare import compare_traces, format_table

        model = FasterRCNN.from_hdf5(args.weights)
        for name, cand in (("same", args.cand_same), ("torchvision", args.cand_tv)):
            if not cand or not os.path.exists(cand):
                continue
            with read_trace(args.out) as r, read_trace(cand) as c:
                t = time.perf_counter()
                cmp = compare_traces(r, c)
                plain = time.perf_counter() - t
                t = time.perf_counter()
                cmp = compare_traces(r, c, model=model)
                rerun = time.perf_counter() - t
            out[name] = {"seconds": plain, "rerun_seconds": rerun, "ok": cmp.ok,
                         "table": format_table(cmp)}
        out["peak_kib"] = _vm_kib("VmHWM")
    with open(args.result, "w") as f:
        json.dump(out, f)
    return 0


def _run(kind: str, args: argparse.Namespace, folder: str, extra: list[str]) -> dict[str, Any]:
    result = os.path.join(folder, f"{kind}.json")
    cmd = [sys.executable, os.path.abspath(__file__), "--child", kind, "--result", result,
           *extra]
    env = dict(os.environ, PYTHONPATH=str(_REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                "NUMBA_NUM_THREADS"):
        env[var] = str(args.threads)
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{kind} child failed")
    with open(result) as f:
        out: dict[str, Any] = json.load(f)
    out["ru_maxrss_kib"] = int(usage.ru_maxrss)
    out["wall_s"] = time.perf_counter() - t
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variant", default="r50-frozen0", choices=sorted(PROFILES))
    p.add_argument("--small", action="store_true", help="the small test model (quick check)")
    p.add_argument("--height", type=int, default=800)
    p.add_argument("--width", type=int, default=1333)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--skip-compare", action="store_true")
    p.add_argument("--keep", default=None, help="folder to keep the traces in")
    # child options
    p.add_argument("--child", default=None)
    p.add_argument("--result", default=None)
    p.add_argument("--weights", default=None)
    p.add_argument("--image-npy", default=None)
    p.add_argument("--out", default=None)
    p.add_argument("--npz", default=None)
    p.add_argument("--cand-same", default=None)
    p.add_argument("--cand-tv", default=None)
    args = p.parse_args(argv)
    if args.child:
        return _child(args)

    import torch
    import tv_models

    from npfrcnn.weights.convert_torchvision import torchvision_to_hdf5

    folder = args.keep or tempfile.mkdtemp(prefix="npfrcnn-trace-bench-")
    os.makedirs(folder, exist_ok=True)
    torch.set_num_threads(args.threads)
    tv = tv_models.build(args.variant, small=args.small, seed=0)
    pth, h5 = os.path.join(folder, "model.pth"), os.path.join(folder, "model.h5")
    torch.save(tv.state_dict(), pth)
    changes = ({"min_size": tv.transform.min_size[-1], "max_size": tv.transform.max_size}
               if args.small else None)
    torchvision_to_hdf5(pth, h5, PROFILES[args.variant], changes=changes)
    image = synthetic_image(args.height, args.width, 0)
    npy = os.path.join(folder, "image.npy")
    np.save(npy, image)
    base = ["--weights", h5, "--image-npy", npy]
    ref = os.path.join(folder, "ref.h5")
    res: dict[str, Any] = {}
    print("detect ...", file=sys.stderr, flush=True)
    res["detect"] = _run("detect", args, folder, base)
    print("trace ...", file=sys.stderr, flush=True)
    res["trace"] = _run("trace", args, folder, base + [
        "--out", ref, "--npz", os.path.join(folder, "ref.npz")])
    if not args.skip_compare:
        same = os.path.join(folder, "same.h5")
        _run("trace", args, folder, base + ["--out", same])
        tv_trace = os.path.join(folder, "torchvision.h5")
        try:
            from npfrcnn.trace import from_torchvision

            t = time.perf_counter()
            from_torchvision(tv, image, tv_trace, profile=PROFILES[args.variant])
            res["from_torchvision_s"] = time.perf_counter() - t
        except ImportError as e:
            print(f"no torchvision trace: {e}", file=sys.stderr)
        print("compare ...", file=sys.stderr, flush=True)
        res["compare"] = _run("compare", args, folder, base + [
            "--out", ref, "--cand-same", same, "--cand-tv", tv_trace])
    mib = 2**-10
    d, t = res["detect"], res["trace"]
    print(f"\n{PROFILES[args.variant]}{' (small)' if args.small else ''}, image "
          f"{args.height}x{args.width}, {args.threads} threads; {platform.processor() or ''} "
          f"{os.cpu_count()} cores; revision {_revision()}")
    print(f"detect: {d['seconds']:.2f} s, peak RSS while detecting {d['peak_kib'] * mib:.0f} MiB"
          f" (process peak {d['ru_maxrss_kib'] * mib:.0f} MiB)")
    print(f"trace (HDF5): {t['seconds']:.2f} s, {t['bytes'] / 2**20:.1f} MiB file, peak RSS "
          f"while tracing {t['peak_kib'] * mib:.0f} MiB; detect peak + file = "
          f"{d['peak_kib'] * mib + t['bytes'] / 2**20:.0f} MiB")
    if "npz_seconds" in t:
        print(f"trace (.npz): {t['npz_seconds']:.2f} s, {t['npz_bytes'] / 2**20:.1f} MiB")
    if "from_torchvision_s" in res:
        print(f"from_torchvision: {res['from_torchvision_s']:.2f} s")
    for name in ("same", "torchvision"):
        c = res.get("compare", {}).get(name)
        if c:
            print(f"compare with {name}: {c['seconds']:.2f} s (with re-runs "
                  f"{c['rerun_seconds']:.2f} s), ok={c['ok']}")
    if res.get("compare", {}).get("torchvision"):
        print("\n" + res["compare"]["torchvision"]["table"])
    with open(os.path.join(folder, "results.json"), "w") as f:
        json.dump(res, f, indent=1)
    print(f"\nfiles in {folder}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
