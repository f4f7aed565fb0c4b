"""GPU kernels beside torchvision: NMS, crop_and_pool, RoIAlign, RoIPool (run on a real GPU).

    python benchmarks/gpu_ops.py [--repeat 50] [--warmup 5] [--write] [--out table.md] [--quick]

Every input is made on the device before timing; each op is called once untimed (for numba,
that first call compiles the kernels: reported apart, below the table), then
``--warmup`` more times, then timed ``--repeat`` times with CUDA events (numba's events for
ours, torch's for torchvision, each on its own op's stream, synchronised after every call) and
the median is reported. Ours run on device arrays and return device arrays (no host copies
beyond the NMS result count); the RoI ops write into a preallocated output (torch's caching
allocator makes torchvision's output allocation free, numba's allocator does not cache).

Cases (the Faster R-CNN sizes): NMS at 1,000, 6,000, 12,000 and 100,000 boxes (IoU 0.7,
distinct scores, boxes from an RPN-like distribution on a 600x1000 image); crop_and_pool
(14x14 crops pooled to 7x7, the workshop / Luminoth RoI step) and RoIAlign (14x14 aligned,
adaptive sampling: Detectron2 C4; and 7x7, sampling 2) for 300 and 2,000 RoIs on a 38x63x1024
map; RoIPool 7x7. torchvision works in NCHW, ours in NHWC: each gets the feature map in its
own layout. The ratio column is ours / torchvision (below 1: ours is faster).

``--write`` replaces the "CUDA kernels (GPU)" section of benchmarks/RESULTS.md with the table,
the GPU, the versions, and whether the issue's two targets hold (NMS at 12,000 boxes no slower
than torchvision's; crop_and_pool and RoIAlign at 2,000 RoIs no slower than torchvision's
RoIAlign of the same output size).

It refuses to run under numba's CUDA simulator (``cuda.is_available()`` is true there too) or
without a GPU: simulated timings mean nothing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from _harness import git_revision, machine_description, replace_section

SECTION = "CUDA kernels (GPU)"


def _targets(rows: list[tuple[str, str, float, float | None]]) -> list[str]:
    """The issue's targets, judged on the measured ratios (ours / torchvision, <= 1 to pass)."""
    out = []
    wanted = [
        ("nms (IoU 0.7)", "12,000", "NMS at 12,000 boxes no slower than torchvision.ops.nms"),
        (
            "crop_and_pool 14x14 -> 7x7 (vs tv roi_align 7x7, sr 2)",
            "2,000",
            "crop_and_pool at 2,000 RoIs no slower than torchvision's roi_align (7x7, sr 2)",
        ),
        (
            "roi_align 7x7 sr 2",
            "2,000",
            "roi_align 7x7 at 2,000 RoIs no slower than torchvision's roi_align",
        ),
        (
            "roi_align 14x14 aligned sr 0",
            "2,000",
            "roi_align 14x14 at 2,000 RoIs no slower than torchvision's roi_align",
        ),
    ]
    for op, size, text in wanted:
        for r_op, r_size, ms, tv_ms in rows:
            if r_op == op and r_size == size and tv_ms:
                verdict = "met" if ms <= tv_ms else "NOT met"
                out.append(f"{text}: {verdict} ({ms / tv_ms:.2f}x)")
    return out


def _refuse_if_simulated() -> None:
    import numba

    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1" or getattr(
        numba.config, "ENABLE_CUDASIM", False
    ):
        sys.exit("gpu_ops.py: refusing to run under the numba CUDA simulator (fake timings)")
    from numba import cuda

    if not cuda.is_available():
        sys.exit("gpu_ops.py: no CUDA GPU available")


def _time_numba(fn: Callable[[], Any], warmup: int, repeat: int) -> float:
    """Median ms of ``fn`` timed with numba CUDA events, after ``warmup`` untimed calls (the
    kernels are already compiled: see ``first_call`` in ``main``)."""
    from numba import cuda

    for _ in range(warmup):
        fn()
    cuda.synchronize()
    times = []
    for _ in range(repeat):
        start, stop = cuda.event(), cuda.event()
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop))
    return statistics.median(times)


def _nms_phases(k_nms: Any, d_boxes: Any, d_scores: Any, repeat: int) -> str:
    """Where a (warm) NMS call's time goes: GPU time between CUDA events around the two halves
    of the driver, and the host's wall time to issue each half. When the host time of a half
    exceeds its GPU time, the GPU waits on Python's kernel launches."""
    from numba import cuda

    tpb = k_nms._cuda.threads_per_block()
    n = int(d_scores.shape[0])
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
    return (
        f"nms {n:,} boxes by phase (median of {repeat}): score keys + sort + gather "
        f"{med['order']:.3f} ms GPU / {hmed['order']:.3f} ms host to launch; mask + select "
        f"{med['suppress']:.3f} ms GPU / {hmed['suppress']:.3f} ms host including the result "
        "count's copy"
    )


def _time_torch(torch: Any, fn: Callable[[], Any], warmup: int, repeat: int) -> float:
    """Median ms of ``fn`` timed with torch CUDA events."""
    fn()
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeat):
        start = torch.cuda.Event(enable_timing=True)
        stop = torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop))
    return statistics.median(times)


def _rpn_like(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` boxes ``(x1, y1, x2, y2)`` on a 600x1000 image, clustered like RPN proposals
    (anchor-like sizes around ``n / 20`` objects, so many overlap), and distinct scores."""
    img_h, img_w = 600.0, 1000.0
    objects = max(1, n // 20)
    centres = rng.uniform([0, 0], [img_w, img_h], (objects, 2))
    sizes = rng.choice([32.0, 64.0, 128.0, 256.0, 512.0], objects)[:, None]
    shapes = sizes * np.sqrt(rng.choice([0.5, 1.0, 2.0], (objects, 1)) ** np.array([[1, -1]]))
    who = rng.integers(0, objects, n)
    c = centres[who] + rng.normal(0, 0.1, (n, 2)) * shapes[who]
    wh = shapes[who] * np.exp(rng.normal(0, 0.1, (n, 2)))
    boxes = np.concatenate([c - wh / 2, c + wh / 2], axis=1).astype(np.float32)
    scores = (rng.permutation(n).astype(np.float64) / n).astype(np.float32)
    return boxes, scores


def _rois(rng: np.random.Generator, k: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """``k`` RoIs on a stride-16 ``h x w`` map: ``(batch, x1, y1, x2, y2)`` pixels and TF's
    normalized ``(y1, x1, y2, x2)`` (Luminoth's ``x / W``)."""
    img_h, img_w = 16.0 * h, 16.0 * w
    x1 = rng.uniform(0, img_w - 32, k)
    y1 = rng.uniform(0, img_h - 32, k)
    x2 = np.minimum(x1 + np.exp(rng.uniform(np.log(16), np.log(500), k)), img_w)
    y2 = np.minimum(y1 + np.exp(rng.uniform(np.log(16), np.log(500), k)), img_h)
    pix = np.stack([np.zeros(k), x1, y1, x2, y2], axis=1).astype(np.float32)
    norm = np.stack([y1 / img_h, x1 / img_w, y2 / img_h, x2 / img_w], axis=1).astype(np.float32)
    return pix, norm


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
    import torch
    import torchvision
    from numba import cuda

    from npfrcnn.kernels.cuda import crop_and_resize as k_crop
    from npfrcnn.kernels.cuda import nms as k_nms
    from npfrcnn.kernels.cuda import roi_align as k_align
    from npfrcnn.kernels.cuda import roi_pool as k_pool

    tv = torchvision.ops
    dev = torch.device("cuda")
    rng = np.random.default_rng(0)
    rows: list[tuple[str, str, float, float | None]] = []
    checks: list[str] = []
    compiles: dict[str, float] = {}

    def first_call(kernel: str, fn: Callable[[], Any]) -> Any:
        """Call ``fn``; the first call per kernel compiles it: its time is reported apart."""
        t0 = time.perf_counter()
        result = fn()
        cuda.synchronize()
        compiles.setdefault(kernel, time.perf_counter() - t0)
        return result

    def add(op: str, size: str, ours: Callable[[], Any], theirs: Callable[[], Any] | None) -> None:
        first_call(op, ours)
        ms = _time_numba(ours, args.warmup, args.repeat)
        tv_ms = _time_torch(torch, theirs, args.warmup, args.repeat) if theirs else None
        rows.append((op, size, ms, tv_ms))
        ratio = f"{ms / tv_ms:.2f}" if tv_ms else "-"
        print(f"{op:<34} {size:>8}  ours {ms:9.3f} ms  torchvision {tv_ms or 0:9.3f} ms  {ratio}")

    # NMS
    nms_sizes = [1000, 12000] if args.quick else [1000, 6000, 12000, 100000]
    if args.smoke:
        nms_sizes = [100]
    for n in nms_sizes:
        xyxy, scores = _rpn_like(rng, n)
        yxyx = np.ascontiguousarray(xyxy[:, [1, 0, 3, 2]])
        d_boxes, d_scores = cuda.to_device(yxyx), cuda.to_device(scores)
        t_boxes = torch.from_numpy(xyxy).to(dev)
        t_scores = torch.from_numpy(scores).to(dev)
        ours = first_call("nms (IoU 0.7)", partial(k_nms.nms, d_boxes, d_scores, 0.7))
        ours = ours.copy_to_host()
        theirs = tv.nms(t_boxes, t_scores, 0.7).cpu().numpy()
        same = "same" if np.array_equal(ours, theirs) else "DIFFERENT"
        checks.append(f"nms {n:,} boxes: {len(ours)} kept, indices {same} as torchvision's")
        print(checks[-1])
        add(
            "nms (IoU 0.7)",
            f"{n:,}",
            partial(k_nms.nms, d_boxes, d_scores, 0.7),
            partial(tv.nms, t_boxes, t_scores, 0.7),
        )
        if n == 12000:
            checks.append(_nms_phases(k_nms, d_boxes, d_scores, args.repeat))
            print(checks[-1])
        k_nms._cuda.release_scratch()

    # RoI ops on a 38x63x1024 map
    h, w, c = (38, 63, 8) if args.smoke else (38, 63, 1024)
    feats = rng.standard_normal((1, h, w, c)).astype(np.float32)
    d_feats = cuda.to_device(feats)
    t_feats = torch.from_numpy(feats).to(dev).permute(0, 3, 1, 2).contiguous()  # NCHW
    for k in [3] if args.smoke else [300] if args.quick else [300, 2000]:
        pix, norm = _rois(rng, k, h, w)
        d_pix, d_norm = cuda.to_device(pix), cuda.to_device(norm)
        d_idx = cuda.to_device(np.zeros(k, np.int32))
        t_pix = torch.from_numpy(pix).to(dev)
        out7 = cuda.device_array((k, 7, 7, c), np.float32)
        out14 = cuda.device_array((k, 14, 14, c), np.float32)
        size = f"{k:,}"
        for label, ours_fn, theirs_fn in [
            (
                "roi_align 14x14 aligned sr 0",
                partial(k_align.roi_align, d_feats, d_pix, 14, 1 / 16, 0, True),
                partial(tv.roi_align, t_feats, t_pix, 14, 1 / 16, 0, True),
            ),
            (
                "roi_pool 7x7",
                partial(k_pool.roi_pool, d_feats, d_pix, 7, 1 / 16),
                partial(tv.roi_pool, t_feats, t_pix, 7, 1 / 16),
            ),
        ]:
            mine = first_call(label, ours_fn).copy_to_host()
            ref = theirs_fn().permute(0, 2, 3, 1).cpu().numpy()
            diff = float(np.max(np.abs(mine - ref))) if mine.shape == ref.shape else float("nan")
            checks.append(f"{label}, {k:,} RoIs: max |ours - torchvision| = {diff:.3g}")
            print(checks[-1])
        add(
            "crop_and_pool 14x14 -> 7x7 (vs tv roi_align 7x7, sr 2)",
            size,
            partial(k_crop.crop_and_pool, d_feats, d_norm, d_idx, 14, 14, 0.0, out=out7),
            partial(tv.roi_align, t_feats, t_pix, 7, 1 / 16, 2, False),
        )
        add(
            "roi_align 7x7 sr 2",
            size,
            partial(k_align.roi_align, d_feats, d_pix, 7, 1 / 16, 2, False, out=out7),
            partial(tv.roi_align, t_feats, t_pix, 7, 1 / 16, 2, False),
        )
        add(
            "roi_align 14x14 aligned sr 0",
            size,
            partial(k_align.roi_align, d_feats, d_pix, 14, 1 / 16, 0, True, out=out14),
            partial(tv.roi_align, t_feats, t_pix, 14, 1 / 16, 0, True),
        )
        add(
            "roi_pool 7x7",
            size,
            partial(k_pool.roi_pool, d_feats, d_pix, 7, 1 / 16, out=out7),
            partial(tv.roi_pool, t_feats, t_pix, 7, 1 / 16),
        )

    name = getattr(cuda.get_current_device(), "name", "unknown GPU")
    name = name.decode() if isinstance(name, bytes) else name
    import numba_cuda

    command = "python benchmarks/gpu_ops.py" + "".join(
        f" {a}" for a in (argv if argv is not None else sys.argv[1:])
    )
    lines = [
        f"GPU: {name}; host: {machine_description()}; numba-cuda "
        f"{getattr(numba_cuda, '__version__', '?')}, torch {torch.__version__}, torchvision "
        f"{torchvision.__version__}.",
        f"Command: `{command}` (revision {git_revision()}); median of {args.repeat} calls after "
        f"{args.warmup} warm-up calls, each timed with CUDA events and synchronised, inputs "
        "already on the device; the first call of each kernel (numba compiles it) is reported "
        "apart, below the table.",
        "",
        "| op | size | ours (ms) | torchvision (ms) | ours / tv |",
        "|---|---:|---:|---:|---:|",
    ]
    for op, size, ms, tv_ms in rows:
        tvs = f"{tv_ms:.3f}" if tv_ms else "-"
        ratio = f"{ms / tv_ms:.2f}" if tv_ms else "-"
        lines.append(f"| {op} | {size} | {ms:.3f} | {tvs} | {ratio} |")
    lines += ["", "First call of each of our kernels in the process (compilation included):", ""]
    lines += [f"* {kernel}: {sec:.2f} s" for kernel, sec in compiles.items()]
    lines += ["", "Checks on the same inputs:", ""] + [f"* {c}" for c in checks]
    verdicts = _targets(rows)
    if verdicts:
        lines += ["", "Targets:", ""] + [f"* {v}" for v in verdicts]
    table = "\n".join(lines)
    print()
    print(table)
    if args.out:
        with open(args.out, "w") as f:
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
