"""Whole-model benchmark: one Faster R-CNN detection, npfrcnn (numpy, cpu) beside TensorFlow.

One run of this script measures, with the same random weights and the same image:

* ``numpy``: ``FasterRCNN(backend="numpy")``, the pure NumPy reference;
* ``cpu``: ``FasterRCNN(backend="cpu")``, Numba kernels and BLAS;
* ``tf``: ``npfrcnn.weights.tf_reference.TFReference``, the workshop network in TF2 eager mode.

Each one runs in its own child process, so its peak resident memory (``VmHWM``, and the
kernel's ``ru_maxrss`` for that child) is its own: imports, weights, activations and all.
In each child: load the weights, run once (the warm-up: Numba compilation or TF's first-call
set-up), then ``--runs`` timed runs; the table shows the median of those runs per stage and in
total, and the warm-up run apart ("first - median" estimates the one-time compile/set-up cost).

The weights are written once, by ``npfrcnn.weights.make_random_model``, to an HDF5 file in a
temporary folder; every child reads that file. The image is synthetic (smooth gradients, flat
rectangles and mild noise, seeded), ``--height`` x ``--width`` (600 x 1000 by default), or a real
photo (``--image``) resized to that size.

Usage::

    python benchmarks/model.py                       # ResNet-101, 600x1000, 3 runs (minutes)
    python benchmarks/model.py --units 1,1,1,1 --base-width 16 --runs 2   # quick check
    python benchmarks/model.py --backends cpu,tf --threads 2

Stages are those of ``FasterRCNN.detect(timings=...)``: preprocess, features (ResNet to
block3), rpn (RPN convs and softmax), proposals (anchors, decode, top-k, NMS), roi_pool
(crop-and-resize and max-pool), head (block4 and the fully connected layers), detections
(decoding, clipping, per-class NMS). For TF, anchor generation is counted in ``proposals``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

STAGES = ("preprocess", "features", "rpn", "proposals", "roi_pool", "head", "detections")
BACKENDS = ("numpy", "cpu", "tf")
_THREAD_VARS = (
    "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS",
)


# --- the image -------------------------------------------------------------------------------


def synthetic_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """uint8 ``[height, width, 3]``: colour gradients, 12 flat rectangles, noise (std 8)."""
    rng = np.random.default_rng(seed)
    y = np.linspace(0.0, 1.0, height)[:, None]
    x = np.linspace(0.0, 1.0, width)[None, :]
    img = np.stack(
        [160 * x + 40 * y, 120 + 80 * np.sin(6 * x + 3 * y), 200 - 150 * y + 0 * x], axis=2
    )
    for _ in range(12):
        h, w = rng.integers(height // 10, height // 2), rng.integers(width // 10, width // 2)
        top, left = rng.integers(0, height - h), rng.integers(0, width - w)
        img[top : top + h, left : left + w] = rng.integers(0, 256, 3)
    img = img + rng.normal(0.0, 8.0, img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def photo_image(path: str, height: int, width: int) -> np.ndarray:
    from PIL import Image

    from npfrcnn.image import load

    rgb = load(path)
    return np.asarray(Image.fromarray(rgb).resize((width, height), Image.Resampling.BILINEAR))


# --- children --------------------------------------------------------------------------------


def _vm_kib(field: str) -> int | None:
    """``VmHWM`` / ``VmRSS`` of this process in KiB (Linux); None elsewhere."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _timed_runs(
    once: Any, first: dict[str, float], runs: int
) -> list[dict[str, float]]:
    """``runs`` timed calls of ``once``, with a progress line per run on stderr."""
    print(f"    warm-up run: {first['total']:.2f} s", file=sys.stderr, flush=True)
    out = []
    for i in range(runs):
        st = once()[0]
        print(f"    run {i + 1}/{runs}: {st['total']:.2f} s", file=sys.stderr, flush=True)
        out.append(st)
    return out


def _run_npfrcnn(backend: str, weights: str, image: np.ndarray, runs: int) -> dict[str, Any]:
    t = time.perf_counter()
    from npfrcnn.model import FasterRCNN

    model = FasterRCNN.from_hdf5(weights, backend=backend)
    load_s = time.perf_counter() - t
    rss_loaded = _vm_kib("VmRSS")

    def once() -> tuple[dict[str, float], int]:
        stages: dict[str, float] = {}
        t0 = time.perf_counter()
        dets = model.detect(image, timings=stages)
        stages["total"] = time.perf_counter() - t0
        return stages, int(np.asarray(dets.scores).shape[0])

    first, n_det = once()
    timed = _timed_runs(once, first, runs)
    return {"load_s": load_s, "rss_loaded_kib": rss_loaded, "first": first, "runs": timed,
            "detections": n_det}


def _run_tf(weights: str, image: np.ndarray, runs: int, threads: int | None) -> dict[str, Any]:
    t = time.perf_counter()
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    tf.config.set_visible_devices([], "GPU")
    if threads:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    from npfrcnn.weights.hdf5 import read
    from npfrcnn.weights.tf_reference import TFReference

    wf = read(weights)
    ref = TFReference(wf.config, wf.tensors)
    del wf
    load_s = time.perf_counter() - t
    rss_loaded = _vm_kib("VmRSS")
    im_shape = image.shape[:2]

    def once() -> tuple[dict[str, float], int]:
        st: dict[str, float] = {}
        t0 = time.perf_counter()
        t = t0
        x = ref.preprocess(image)
        _ = x.numpy()  # eager CPU ops run synchronously; .numpy() makes sure the stage is done
        st["preprocess"], t = time.perf_counter() - t, time.perf_counter()
        fm = ref.features(x)
        _ = fm.numpy()
        st["features"], t = time.perf_counter() - t, time.perf_counter()
        rpn_bbox, rpn_prob = ref.rpn(fm)
        _ = rpn_prob.numpy()
        st["rpn"], t = time.perf_counter() - t, time.perf_counter()
        anchors = ref.anchors(fm.shape)
        props = ref.proposals(rpn_bbox, rpn_prob, anchors)
        _ = props["proposals"].numpy()
        st["proposals"], t = time.perf_counter() - t, time.perf_counter()
        pooled = ref.roi_pool(fm, props["proposals"], im_shape)
        _ = pooled.numpy()
        st["roi_pool"], t = time.perf_counter() - t, time.perf_counter()
        bbox_pred, cls_prob = ref.head(pooled)
        _ = cls_prob.numpy()
        st["head"], t = time.perf_counter() - t, time.perf_counter()
        boxes, labels, probs = ref.detections(props["proposals"], bbox_pred, cls_prob, im_shape)
        n = int(probs.numpy().shape[0])
        st["detections"] = time.perf_counter() - t
        st["total"] = time.perf_counter() - t0
        return st, n

    first, n_det = once()
    timed = _timed_runs(once, first, runs)
    return {"load_s": load_s, "rss_loaded_kib": rss_loaded, "first": first, "runs": timed,
            "detections": n_det}


def child_main(args: argparse.Namespace) -> int:
    image = np.load(args.image_npy)
    if args.child == "tf":
        result = _run_tf(args.weights, image, args.runs, args.threads)
    else:
        result = _run_npfrcnn(args.child, args.weights, image, args.runs)
    result["peak_rss_kib"] = _vm_kib("VmHWM")
    with open(args.result, "w") as f:
        json.dump(result, f)
    return 0


# --- parent ----------------------------------------------------------------------------------


def _child_env(threads: int | None) -> dict[str, str]:
    env = dict(os.environ)
    repo = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = repo + os.pathsep + env.get("PYTHONPATH", "")
    if threads:
        for var in _THREAD_VARS:
            env[var] = str(threads)
    return env


def run_child(backend: str, weights: str, image_npy: str, runs: int, threads: int | None,
              folder: str) -> dict[str, Any]:
    result = os.path.join(folder, f"{backend}.json")
    cmd = [
        sys.executable, os.path.abspath(__file__), "--child", backend, "--weights", weights,
        "--image-npy", image_npy, "--runs", str(runs), "--result", result,
    ]
    if threads:
        cmd += ["--threads", str(threads)]
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, env=_child_env(threads))
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        return {"error": f"child exited with status {proc.returncode}", "wall_s": wall}
    with open(result) as f:
        out: dict[str, Any] = json.load(f)
    out["ru_maxrss_kib"] = int(usage.ru_maxrss)  # KiB on Linux
    out["wall_s"] = wall
    return out


def _median(runs: list[dict[str, float]], key: str) -> float:
    vals = [r[key] for r in runs if key in r]
    return statistics.median(vals) if vals else float("nan")


def format_table(results: dict[str, dict[str, Any]], header: str) -> str:
    cols = [b for b in results if "error" not in results[b]]
    lines = [header, ""]
    lines.append("| stage (s, median) | " + " | ".join(cols) + " |")
    lines.append("|---|" + "---:|" * len(cols))
    for k in (*STAGES, "total"):
        cells = [f"{_median(results[b]['runs'], k):.3f}" for b in cols]
        name = f"**{k}**" if k == "total" else k
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    rows = [
        ("first run (warm-up) total, s", lambda r: f"{r['first']['total']:.3f}"),
        ("first - median (compile / set-up), s",
         lambda r: f"{r['first']['total'] - _median(r['runs'], 'total'):.3f}"),
        ("weights load (incl. imports), s", lambda r: f"{r['load_s']:.3f}"),
        ("RSS after load, MiB", lambda r: _mib(r.get("rss_loaded_kib"))),
        ("peak RSS (VmHWM), MiB", lambda r: _mib(r.get("peak_rss_kib"))),
        ("peak RSS (wait4 ru_maxrss), MiB", lambda r: _mib(r.get("ru_maxrss_kib"))),
        ("detections", lambda r: str(r["detections"])),
    ]
    for name, fn in rows:
        lines.append(f"| {name} | " + " | ".join(fn(results[b]) for b in cols) + " |")
    for b, r in results.items():
        if "error" in r:
            lines.append(f"\n{b}: {r['error']}")
    if cols:
        base = "tf" if "tf" in cols else None
        if base is not None:
            ref = _median(results[base]["runs"], "total")
            ratio = [
                f"{b} {_median(results[b]['runs'], 'total') / ref:.2f}x"
                for b in cols if b != base
            ]
            if ratio:
                lines.append("")
                lines.append("total time relative to TF (median): " + ", ".join(ratio))
    return "\n".join(lines)


def _mib(kib: int | None) -> str:
    return "n/a" if kib is None else f"{kib / 1024:.0f}"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--depth", type=int, default=101, choices=(50, 101, 152))
    p.add_argument("--units", default=None, metavar="A,B,C,D",
                   help="units per block for a quick check (overrides --depth), e.g. 1,1,1,1")
    p.add_argument("--base-width", type=int, default=None, metavar="W",
                   help="block1 bottleneck width (default 64, the real network)")
    p.add_argument("--num-classes", type=int, default=80)
    p.add_argument("--height", type=int, default=600)
    p.add_argument("--width", type=int, default=1000)
    p.add_argument("--image", default=None,
                   help="use this photo (resized) instead of a synthetic image")
    p.add_argument("--runs", type=int, default=3, help="timed runs after the warm-up (default 3)")
    p.add_argument("--backends", default="numpy,cpu,tf",
                   help="comma-separated subset of numpy,cpu,tf (default all three)")
    p.add_argument("--threads", type=int, default=None,
                   help="limit BLAS/Numba/TF threads in each child (default: library defaults)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="also write the raw results here")
    p.add_argument("--write", action="store_true",
                   help="replace the 'Whole model (CPU)' section of benchmarks/RESULTS.md")
    # internal: one measurement in a child process
    p.add_argument("--child", choices=BACKENDS, help=argparse.SUPPRESS)
    p.add_argument("--weights", help=argparse.SUPPRESS)
    p.add_argument("--image-npy", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        return child_main(args)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    bad = [b for b in backends if b not in BACKENDS]
    if bad or not backends:
        print(f"--backends: unknown {bad}; choose from {', '.join(BACKENDS)}", file=sys.stderr)
        return 2
    if args.runs < 1:
        print("--runs must be at least 1", file=sys.stderr)
        return 2

    from npfrcnn.config import workshop
    from npfrcnn.weights.random import make_random_model

    changes: dict[str, Any] = {}
    if args.base_width:
        w = args.base_width
        changes = {"base_depths": (w, 2 * w, 4 * w, 8 * w), "root_depth": w, "rpn_depth": 8 * w}
    units = tuple(int(u) for u in args.units.split(",")) if args.units else None
    config = workshop(args.depth, args.num_classes, units_per_block=units, **changes)  # type: ignore[arg-type]

    with tempfile.TemporaryDirectory(prefix="npfrcnn-bench-") as folder:
        weights = os.path.join(folder, "random.h5")
        t = time.perf_counter()
        make_random_model(weights, config, seed=args.seed)
        write_s = time.perf_counter() - t
        if args.image:
            image = photo_image(args.image, args.height, args.width)
        else:
            image = synthetic_image(args.height, args.width, args.seed)
        image_npy = os.path.join(folder, "image.npy")
        np.save(image_npy, image)
        header = (
            f"ResNet-{config.depth} workshop model, RANDOM weights (seed {args.seed}, "
            f"{os.path.getsize(weights) / 1e6:.0f} MB HDF5 written in {write_s:.1f} s), "
            f"{config.num_classes} classes, image {args.height}x{args.width} "
            f"({'photo ' + args.image if args.image else 'synthetic'}); "
            f"warm-up + median of {args.runs} runs; each backend in its own process.\n"
            f"Machine: {platform.machine()}, {os.cpu_count()} logical CPUs, "
            f"Python {platform.python_version()}, NumPy {np.__version__}"
            + (f", threads limited to {args.threads}" if args.threads else "")
        )
        results: dict[str, dict[str, Any]] = {}
        for b in backends:
            print(f"running {b} ...", file=sys.stderr, flush=True)
            results[b] = run_child(b, weights, image_npy, args.runs, args.threads, folder)
            if "error" in results[b]:
                print(f"  {b}: {results[b]['error']}", file=sys.stderr)
            else:
                print(f"  {b}: median total {_median(results[b]['runs'], 'total'):.3f} s",
                      file=sys.stderr, flush=True)
    table = format_table(results, header)
    print(table)
    if args.write:
        from _harness import git_revision, machine_description, replace_section

        given = argv if argv is not None else sys.argv[1:]
        command = "python benchmarks/model.py " + " ".join(given)
        body = (
            f"Machine: {machine_description()}.\n"
            f"Command: `{command}` (revision {git_revision()}).\n\n{table}"
        )
        replace_section(Path(__file__).with_name("RESULTS.md"), "Whole model (CPU)", body)
        print("wrote benchmarks/RESULTS.md", file=sys.stderr)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"header": header, "results": results}, f, indent=2)
    return 1 if any("error" in r for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
