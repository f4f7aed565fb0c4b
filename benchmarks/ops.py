"""Benchmark the core ops beside TensorFlow (CPU), in one run.

    python benchmarks/ops.py [--repeats 5] [--write]

Cases (issue 2):
  * NMS on 1,000 / 6,000 / 12,000 RPN-like boxes, keep at most 2,000, IoU 0.7;
  * crop_and_resize (14x14, bilinear) + 2x2/2 max pool for 300 and 2,000 RoIs on a 38x63x1024
    feature map (7x7 out): TF runs the two ops, npfrcnn runs the fused ``crop_and_pool``.

For each case: the NumPy reference (``backend="numpy"``), the Numba kernels (``backend="cpu"``)
and TensorFlow are timed in the same process; each figure is the median of ``--repeats`` runs
after a warm-up call, and the first call's extra time (Numba compilation, TF tracing) is shown
apart. Results are checked against TF before they are timed. ``--write`` replaces the "Core
ops (CPU)" section of benchmarks/RESULTS.md with the table and the machine description.
"""

from __future__ import annotations

import argparse
import os
import sys
from functools import partial
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

from npfrcnn import ops
from npfrcnn.anchors import grid_anchors, reference_anchors
from npfrcnn.boxes import decode

from _harness import (
    Timing,
    fmt_ms,
    git_revision,
    log,
    machine_description,
    replace_section,
    time_call,
)

IMAGE_H, IMAGE_W = 600, 1000  # the workshop's native-size example; block3 map 38x63 (stride 16)
FMAP_H, FMAP_W, FMAP_C = 38, 63, 1024


def rpn_like_boxes(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``n`` boxes shaped like decoded RPN proposals, and their objectness scores.

    Workshop anchors on the 38x63 grid, decoded with small random deltas (so boxes cluster and
    overlap as real proposals do), scores uniform in (0, 1).
    """
    anchors = grid_anchors(FMAP_H, FMAP_W, 16, reference_anchors())  # [35910, 4]
    idx = rng.choice(len(anchors), size=n, replace=n > len(anchors))
    deltas = rng.normal(0.0, [0.1, 0.1, 0.2, 0.2], size=(n, 4)).astype(np.float32)
    boxes = decode(anchors[idx], deltas).astype(np.float32)
    scores = rng.random(n, dtype=np.float32)
    return boxes, scores


def normalized_rois(n: int, rng: np.random.Generator) -> np.ndarray:
    """RoIs as the workshop's ``normalize_bboxes`` gives them: (y1, x1, y2, x2) / (H, W)."""
    boxes, _ = rpn_like_boxes(n, rng)
    scale = np.array([IMAGE_H, IMAGE_W, IMAGE_H, IMAGE_W], dtype=np.float32)
    return (boxes[:, [1, 0, 3, 2]] / scale).astype(np.float32)


def nms_case(tf, n: int, repeats: int, rng: np.random.Generator) -> dict:
    boxes, scores = rpn_like_boxes(n, rng)
    tb, ts = tf.constant(boxes), tf.constant(scores)

    def run_tf():
        return tf.image.non_max_suppression(tb, ts, 2000, iou_threshold=0.7).numpy()

    tf_timing, expected = time_call(run_tf, repeats)
    results: dict[str, Timing] = {"tf": tf_timing}
    for backend in ("numpy", "cpu"):
        run = partial(ops.nms, boxes, scores, 0.7, max_output_size=2000, backend=backend)
        results[backend], got = time_call(run, repeats)
        if not np.array_equal(got, expected):
            raise SystemExit(f"nms backend={backend} disagrees with TF at n={n}")
    log(f"nms n={n}: " + ", ".join(f"{k} {fmt_ms(v.median_s)} ms" for k, v in results.items()))
    return {"case": f"NMS {n:,} boxes (keep 2,000, IoU 0.7)", **results}


def crop_and_pool_case(tf, fmap: np.ndarray, n: int, repeats: int, rng) -> dict:
    rois = normalized_rois(n, rng)
    index = np.zeros(n, dtype=np.int32)
    tfmap, troi, tidx = tf.constant(fmap), tf.constant(rois), tf.constant(index)

    def run_tf():
        crops = tf.image.crop_and_resize(tfmap, troi, tidx, [14, 14])
        return tf.nn.max_pool2d(crops, 2, 2, "VALID").numpy()

    tf_timing, expected = time_call(run_tf, repeats)
    results: dict[str, Timing] = {"tf": tf_timing}
    for backend in ("numpy", "cpu"):
        run = partial(ops.crop_and_pool, fmap, rois, index, (14, 14), backend=backend)
        results[backend], got = time_call(run, repeats)
        # The same float32 formula as TF's kernel and max pooling only selects: bitwise equal.
        if got.shape != expected.shape or not np.array_equal(got, expected):
            raise SystemExit(f"crop_and_pool backend={backend} disagrees with TF at n={n}")
    log(
        f"crop_and_pool n={n}: "
        + ", ".join(f"{k} {fmt_ms(v.median_s)} ms" for k, v in results.items())
    )
    return {"case": f"crop 14x14 + max pool 2x2, {n:,} RoIs, 38x63x1024", **results}


def table(rows: list[dict]) -> str:
    out = [
        "| case | TF ms | numpy ms | cpu ms | numpy / TF | cpu / TF | first-call extra (cpu) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        tf_t, np_t, cpu_t = r["tf"], r["numpy"], r["cpu"]
        out.append(
            f"| {r['case']} | {fmt_ms(tf_t.median_s)} | {fmt_ms(np_t.median_s)} | "
            f"{fmt_ms(cpu_t.median_s)} | {np_t.median_s / tf_t.median_s:.2f}x | "
            f"{cpu_t.median_s / tf_t.median_s:.3f}x | {cpu_t.compile_s:.2f} s |"
        )
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per case (median)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--write", action="store_true", help="update benchmarks/RESULTS.md")
    args = parser.parse_args()
    if args.repeats < 5:
        log("note: fewer than 5 repeats; the issue asks for the median of at least 5")

    import tensorflow as tf

    tf.config.set_visible_devices([], "GPU")
    rng = np.random.default_rng(args.seed)
    rows = [nms_case(tf, n, args.repeats, rng) for n in (1000, 6000, 12000)]
    fmap = rng.standard_normal((1, FMAP_H, FMAP_W, FMAP_C), dtype=np.float32)
    rows += [crop_and_pool_case(tf, fmap, n, args.repeats, rng) for n in (300, 2000)]
    body = "\n".join(
        [
            f"Machine: {machine_description()}.",
            f"Command: `python benchmarks/ops.py --repeats {args.repeats} --write` "
            f"(revision {git_revision()}); median of {args.repeats} runs after a warm-up call; "
            "TF with its default thread pools; Numba kernels parallel over all cores.",
            "",
            table(rows),
            "",
            "'first-call extra' is the first call's time minus the median: Numba compilation "
            "or a load from its on-disk cache for the cpu backend (every kernel, the parallel "
            "crop kernel too, compiles once per machine and loads from the cache after that).",
        ]
    )
    print(body)
    if args.write:
        replace_section(Path(__file__).with_name("RESULTS.md"), "Core ops (CPU)", body)
        log("wrote benchmarks/RESULTS.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
