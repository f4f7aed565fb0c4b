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

torchvision profiles (``--profile torchvision-r50-fpn``, ``torchvision-r101-fpn``,
``torchvision-r50-fpn-v2``): npfrcnn beside torchvision itself, eager on the CPU.

* the weights: a seeded random-weight full-size torchvision model (``tests/tv_models.py``:
  ``build(variant, small=False, seed)``, 91 classes, min/max size 800/1333), saved with
  ``torch.save(model.state_dict())`` and converted by
  ``npfrcnn.weights.convert_torchvision.torchvision_to_hdf5``; the ``torch`` child builds the
  architecture and loads that state dict, the ``cpu`` (and ``numpy``) child loads the HDF5;
* the image: synthetic (as above), 800 x 1333 by default, so torchvision's resize keeps the
  size (scale 1.0; ``interpolate`` still runs, and so does npfrcnn's resize) and the input is
  padded to 800 x 1344;
* threads: 2 by default (``--threads``): ``torch.set_num_threads`` and OMP/MKL/OpenBLAS/Numba
  thread variables in both children;
* torch's stages are its own modules called in ``forward``'s order (as ``tests/tv_models.py``
  ``stages`` does) under ``torch.no_grad()``: preprocess = ``model.transform``; features =
  ``model.backbone`` (body + FPN); rpn = ``rpn.head``; proposals = anchors, decode,
  ``filter_proposals``; roi_pool = ``box_roi_pool`` (MultiScaleRoIAlign); head = ``box_head`` +
  ``box_predictor``; detections = ``postprocess_detections`` + ``transform.postprocess``.
  After the timed runs it makes one plain ``model([image])`` call (reported apart) whose
  detections are compared with npfrcnn's: count, labels, boxes (IoU) and scores;
* peak RSS: ``VmHWM`` after loading the model, then reset (``/proc/self/clear_refs``) and read
  again at the end: the peak while detecting; the whole process's peak is the larger.

Usage (torchvision)::

    python benchmarks/model.py --profile torchvision-r50-fpn --runs 3 --rounds 4 --write
    python benchmarks/model.py --profile torchvision-r101-fpn --runs 3 --rounds 4 --write
    python benchmarks/model.py --profile torchvision-r50-fpn-v2 --small --runs 2   # quick check

``--rounds N`` runs each system N times, each in a fresh process, alternating which goes first,
and pools the timed runs: torch's speed differs by 10-15 % from one process to the next on a
small VM. Each child's row "other processes' CPU time" (from ``/proc/stat``) says whether
anything else ran meanwhile; above 3 % of the cores the output warns that it is unreliable.

Detectron2 profiles (``--profile detectron2-r101-c4``, ``detectron2-r50-fpn``,
``detectron2-r101-fpn``): npfrcnn beside the torch implementation of Detectron2's Faster R-CNN
that the tests use as their oracle (``tests/d2_oracle.py``; Detectron2 itself is not on PyPI),
eager on the CPU, with the same machinery (children, rounds, RSS, agreement, verdicts) as the
torchvision profiles:

* the weights: a seeded full-size ``D2Oracle`` (80 classes; ``"c4", units=(3, 4, 23, 3)`` for
  R101-C4, ``"fpn", (3, 4, 6, 3)`` for R50-FPN, ``"fpn", (3, 4, 23, 3)`` for R101-FPN; min/max
  size 800/1333) filled by ``D2Oracle.randomize_(seed)``, saved as a model-zoo ``.pkl``
  (``save_model_zoo_pkl``) and converted by
  ``npfrcnn.weights.convert_detectron2.detectron2_to_hdf5``; the same state dict is also
  saved beside it with ``torch.save``, and the ``torch`` child builds the ``D2Oracle``
  architecture and loads it with ``load_state_dict``; the ``cpu`` (and ``numpy``) child loads
  the HDF5;
* the image: as for torchvision (synthetic, 800 x 1333 by default, or ``--image``): Detectron2's
  ``ResizeShortestEdge(800, 1333)`` keeps that size (Pillow's resize still runs in both); FPN
  pads to 800 x 1344, C4 does not pad. npfrcnn gets the RGB image (its preprocess flips it to
  BGR); the oracle gets the same image as BGR (what ``DefaultPredictor`` gets from cv2), flipped
  once before the timed runs;
* torch's stages are the oracle's stage methods in ``forward``'s order under
  ``torch.no_grad()``: preprocess = ``preprocess`` (resize, normalise, pad); features =
  ``backbone``; rpn = ``rpn_head``; proposals = ``anchors`` + ``proposals``; roi_pool = ``pool``;
  head = ``box_head`` + ``predictor``; detections = ``postprocess``. After the timed runs it
  makes one plain ``forward()`` call (reported apart) whose detections are compared with
  npfrcnn's; npfrcnn's labels and Detectron2's ``pred_classes`` are the same 0-based numbers.

Usage (Detectron2)::

    python benchmarks/model.py --profile detectron2-r101-c4 --runs 3 --rounds 4 --write
    python benchmarks/model.py --profile detectron2-r50-fpn --runs 3 --rounds 4 --write
    python benchmarks/model.py --profile detectron2-r101-fpn --runs 3 --rounds 4 --write
    python benchmarks/model.py --profile detectron2-r50-fpn --small --runs 1   # quick check

``--write`` replaces the section "Whole model (CPU): PROFILE vs the torch implementation
(tests/d2_oracle.py)" of ``benchmarks/RESULTS.md``. ``--small`` uses reduced test models
(units (1, 1, 1, 1), narrow widths, min/max size 160/256): a check of this script, not a
measurement.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from npfrcnn._io import atomic_write

STAGES = ("preprocess", "features", "rpn", "proposals", "roi_pool", "head", "detections")
BACKENDS = ("numpy", "cpu", "tf", "torch")
WORKSHOP = "workshop"
#: torchvision profile -> tests/tv_models.py variant that builds its full-size model
TV_VARIANTS = {
    "torchvision-r50-fpn": "r50-frozen0",
    "torchvision-r50-fpn-v2": "v2",
    "torchvision-r101-fpn": "r101",
}
#: Detectron2 profile -> the tests/d2_oracle.py ``D2Oracle`` (variant, units) of its full size
D2_VARIANTS: dict[str, tuple[str, tuple[int, int, int, int]]] = {
    "detectron2-r101-c4": ("c4", (3, 4, 23, 3)),
    "detectron2-r50-fpn": ("fpn", (3, 4, 6, 3)),
    "detectron2-r101-fpn": ("fpn", (3, 4, 23, 3)),
}
#: the classes of the Detectron2 profiles' models (COCO's 80)
D2_CLASSES = 80
#: ``--small``: the reduced oracle (units and ``D2Oracle`` knobs) for a quick check
D2_SMALL_UNITS = (1, 1, 1, 1)
D2_SMALL_KNOBS: dict[str, Any] = {
    "stem_channels": 16, "res2_channels": 64, "width_per_group": 16, "fpn_channels": 32,
    "fc_dim": 64, "min_size_test": 160, "max_size_test": 256,
}
PROFILES = (WORKSHOP, *TV_VARIANTS, *D2_VARIANTS)
_REPO = Path(__file__).resolve().parents[1]
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


# --- arithmetic --------------------------------------------------------------------------------


def count_flops(model: Any, image: np.ndarray) -> dict[str, float]:
    """Floating-point operations per stage of one ``detect`` (multiply and add counted apart):
    every ``ops.conv2d`` (``2 * output size * kh * kw * cin``) and ``ops.dense``
    (``2 * rows * in * out``), attributed to the stage whose method called it. One extra,
    untimed detection with ``npfrcnn.ops`` wrapped; the other stages' arithmetic (NMS, RoI
    pooling, decoding) is not GEMM work and is not counted."""
    import npfrcnn.ops as ops

    counts: dict[str, float] = {}
    current = ["other"]
    conv, dense = ops.conv2d, ops.dense

    def conv2d(x: Any, kernel: Any, *a: Any, **kw: Any) -> Any:
        out = conv(x, kernel, *a, **kw)
        kh, kw_, cin = (int(s) for s in np.shape(kernel)[:3])
        counts[current[0]] = counts.get(current[0], 0.0) + 2.0 * out.size * kh * kw_ * cin
        return out

    def dense_(x: Any, w: Any, *a: Any, **kw: Any) -> Any:
        out = dense(x, w, *a, **kw)
        rows = int(np.prod(np.shape(x)[:-1]))
        n_in, n_out = (int(s) for s in np.shape(w)[:2])
        counts[current[0]] = counts.get(current[0], 0.0) + 2.0 * rows * n_in * n_out
        return out

    def staged(name: str, fn: Any) -> Any:
        def call(*a: Any, **kw: Any) -> Any:
            outer = current[0]
            current[0] = name
            try:
                return fn(*a, **kw)
            finally:
                current[0] = outer
        return call

    saved = {k: getattr(model, k) for k in ("features", "rpn")}
    parts = {k: getattr(model.parts, k) for k in ("box_head", "predictor")}
    ops.conv2d, ops.dense = conv2d, dense_  # type: ignore[assignment]
    try:
        model.features = staged("features", saved["features"])
        model.rpn = staged("rpn", saved["rpn"])
        model.parts.box_head = staged("head", parts["box_head"])
        model.parts.predictor = staged("head", parts["predictor"])
        model.detect(image)
    finally:
        ops.conv2d, ops.dense = conv, dense  # type: ignore[assignment]
        for k in saved:
            delattr(model, k)
        for k, v in parts.items():
            setattr(model.parts, k, v)
    return counts


def sgemm_ceiling(n: int = 2048, runs: int = 5) -> float:
    """This machine's float32 GEMM rate now, GFLOP/s: the median of ``runs`` ``n x n x n``
    ``np.matmul`` calls (OpenBLAS, the threads this process has) after one warm-up."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    np.matmul(a, b)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        np.matmul(a, b)
        times.append(time.perf_counter() - t)
    return 2.0 * n**3 / float(np.median(times)) / 1e9


def format_arithmetic(results: dict[str, dict[str, Any]], names: dict[str, str]) -> str:
    """Per stage: GFLOP (from npfrcnn's count) and each system's GFLOP/s (median stage time),
    beside the sgemm ceiling measured in the same run."""
    src = next((r for r in results.values() if "flops" in r and "error" not in r), None)
    if src is None:
        return ""
    flops = src["flops"]
    cols = [b for b in results if "error" not in results[b]]
    ceil = [results[b]["sgemm_gflops"] for b in cols if "sgemm_gflops" in results[b]]
    lines = ["| stage | GFLOP | " + " | ".join(f"{names.get(b, b)} GFLOP/s" for b in cols)
             + " |", "|---|---:|" + "---:|" * len(cols)]
    stages = [s for s in ("features", "rpn", "head") if s in flops]
    for s in stages:
        cells = []
        for b in cols:
            sec = _median(results[b]["runs"], s if s != "head" else "head")
            cells.append(f"{flops[s] / sec / 1e9:.0f}" if sec > 0 else "-")
        lines.append(f"| {s} | {flops[s] / 1e9:.1f} | " + " | ".join(cells) + " |")
    total = sum(flops.values())
    cells = [f"{total / _median(results[b]['runs'], 'total') / 1e9:.0f}" for b in cols]
    lines.append(f"| **total** | {total / 1e9:.1f} | " + " | ".join(cells) + " |")
    if ceil:
        lines.append("")
        lines.append(
            "sgemm ceiling (2048^3 np.matmul, median of 5, in each npfrcnn child): "
            + ", ".join(f"{c:.0f}" for c in ceil) + " GFLOP/s; each stage's GFLOP/s above is its "
            "convolution/GEMM arithmetic over its whole time, so the gap to the ceiling is what "
            "the stage spends outside GEMM-rate arithmetic. The count is the direct "
            "convolution's for every system: npfrcnn's cpu backend computes the 3x3 stride-1 "
            "convolutions as Winograd F(2x2, 3x3) (up to 2.25x fewer multiplies), so its stages "
            "can pass the ceiling."
        )
    return "\n".join(lines)


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


def _reset_peak_rss() -> int | None:
    """``VmHWM`` so far (KiB), then reset it to the current RSS (Linux ``clear_refs`` 5)."""
    before = _vm_kib("VmHWM")
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return None
    return before


def _save_dets(path: str | None, boxes: Any, labels: Any, scores: Any) -> None:
    if path:
        np.savez(path, boxes=np.asarray(boxes, np.float32), labels=np.asarray(labels, np.int64),
                 scores=np.asarray(scores, np.float32))


def _run_npfrcnn(backend: str, weights: str, image: np.ndarray, runs: int,
                 dets_out: str | None = None, label_offset: int = 1) -> dict[str, Any]:
    """``label_offset``: added to npfrcnn's labels in ``dets_out`` to give the reference's ids
    (torchvision 1, its 0 is the background; Detectron2 0, the same numbers)."""
    t = time.perf_counter()
    from npfrcnn.model import FasterRCNN

    model = FasterRCNN.from_hdf5(weights, backend=backend)
    load_s = time.perf_counter() - t
    rss_loaded = _vm_kib("VmRSS")
    # beside torch (torchvision, Detectron2): the peak while loading, then the peak while
    # detecting apart
    load_peak = _reset_peak_rss() if dets_out else None

    def once() -> tuple[dict[str, float], Any]:
        stages: dict[str, float] = {}
        t0 = time.perf_counter()
        dets = model.detect(image, timings=stages)
        stages["total"] = time.perf_counter() - t0
        return stages, dets

    first, dets = once()
    timed = _timed_runs(once, first, runs)
    out = {"load_s": load_s, "rss_loaded_kib": rss_loaded, "first": first, "runs": timed,
           "detections": int(np.asarray(dets.scores).shape[0])}
    out["flops"] = count_flops(model, image)
    out["sgemm_gflops"] = sgemm_ceiling()
    if dets_out:
        # npfrcnn's labels are 0-based without the background: torchvision's are labels + 1,
        # Detectron2's pred_classes the same numbers
        _save_dets(dets_out, dets.boxes, np.asarray(dets.labels) + label_offset, dets.scores)
        out["load_peak_rss_kib"] = load_peak
    return out


def _tv_models() -> Any:
    tests = str(_REPO / "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)
    import tv_models

    return tv_models


def _d2_oracle() -> Any:
    """``tests/d2_oracle.py`` (the torch implementation of the Detectron2 profiles)."""
    tests = str(_REPO / "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)
    import d2_oracle

    return d2_oracle


def _build_d2_oracle(profile: str, small: bool = False) -> Any:
    """The ``D2Oracle`` of ``profile`` (Detectron2's init: weights still to be filled or
    loaded); ``small``: the reduced test model (:data:`D2_SMALL_UNITS`, :data:`D2_SMALL_KNOBS`)."""
    variant, units = D2_VARIANTS[profile]
    if small:
        return _d2_oracle().D2Oracle(variant, units=D2_SMALL_UNITS, num_classes=D2_CLASSES,
                                     **D2_SMALL_KNOBS)
    return _d2_oracle().D2Oracle(variant, units=units, num_classes=D2_CLASSES)


def _tv_chain(profile: str, pth: str, image: np.ndarray, seed: int, small: bool) -> Any:
    """torchvision's model with the weights of ``pth``: (its stages, timed, as one call; one
    plain ``forward()``), each returning its detections (boxes, labels, scores)."""
    import torch
    from torchvision.models.detection.rpn import concat_box_prediction_layers

    tv_models = _tv_models()
    # torchvision's usual way: build the architecture, then load the state dict into it
    model = tv_models.build(TV_VARIANTS[profile], small=small, seed=seed)
    state = torch.load(pth, map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    del state
    model.eval()
    original_size = [tuple(image.shape[:2])]

    def once() -> tuple[dict[str, float], Any]:
        st: dict[str, float] = {}
        t0 = time.perf_counter()
        t = t0

        def lap(name: str) -> None:
            nonlocal t
            t1 = time.perf_counter()
            st[name] = t1 - t
            t = t1

        img = tv_models.to_tensor(image)
        images, _ = model.transform([img])
        lap("preprocess")
        features = model.backbone(images.tensors)
        lap("features")
        feats = list(features.values())
        objectness, deltas = model.rpn.head(feats)
        lap("rpn")
        anchors = model.rpn.anchor_generator(images, feats)
        num_per_level = [int(o[0].numel()) for o in objectness]
        obj_flat, deltas_flat = concat_box_prediction_layers(objectness, deltas)
        decoded = model.rpn.box_coder.decode(deltas_flat.detach(), anchors).view(1, -1, 4)
        boxes, _scores = model.rpn.filter_proposals(
            decoded, obj_flat, images.image_sizes, num_per_level
        )
        lap("proposals")
        box_features = model.roi_heads.box_roi_pool(features, boxes, images.image_sizes)
        lap("roi_pool")
        head_out = model.roi_heads.box_head(box_features)
        class_logits, box_regression = model.roi_heads.box_predictor(head_out)
        lap("head")
        b, s, lab = model.roi_heads.postprocess_detections(
            class_logits, box_regression, boxes, images.image_sizes
        )
        dets = model.transform.postprocess(
            [{"boxes": b[0], "scores": s[0], "labels": lab[0]}], images.image_sizes,
            original_size,
        )[0]
        lap("detections")
        st["total"] = t - t0
        return st, dets

    def forward() -> Any:
        return model([tv_models.to_tensor(image)])[0]

    return once, forward


def _d2_chain(profile: str, pth: str, image: np.ndarray, seed: int, small: bool) -> Any:
    """The Detectron2 oracle (``tests/d2_oracle.py``) with the weights of ``pth``, as
    :func:`_tv_chain`. It gets the image as BGR (``DefaultPredictor``'s input format)."""
    import torch

    model = _build_d2_oracle(profile, small)
    state = torch.load(pth, map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    del state
    model.eval()
    # npfrcnn flips its RGB input in its preprocess; Detectron2 is given cv2's BGR image
    bgr = np.ascontiguousarray(image[:, :, ::-1])

    def once() -> tuple[dict[str, float], Any]:
        st: dict[str, float] = {}
        t0 = time.perf_counter()
        t = t0

        def lap(name: str) -> None:
            nonlocal t
            t1 = time.perf_counter()
            st[name] = t1 - t
            t = t1

        pre = model.preprocess(bgr)
        lap("preprocess")
        feats = model.backbone(pre["input"])
        lap("features")
        logits, deltas = model.rpn_head(feats)
        lap("rpn")
        anchors = model.anchors(feats)
        props = model.proposals(logits, deltas, anchors, pre["image_size"])
        lap("proposals")
        pooled, _levels = model.pool(feats, props["boxes"])
        lap("roi_pool")
        x = model.box_head(pooled)
        cls_logits, box_deltas = model.predictor(x)
        lap("head")
        post = model.postprocess(
            props["boxes"], cls_logits, box_deltas, pre["image_size"], pre["original_size"]
        )
        lap("detections")
        st["total"] = t - t0
        return st, {"boxes": post["boxes"], "labels": post["classes"], "scores": post["scores"]}

    def forward() -> Any:
        post = model(bgr)["postprocess"]
        return {"boxes": post["boxes"], "labels": post["classes"], "scores": post["scores"]}

    return once, forward


def _as_numpy(v: Any) -> np.ndarray:
    return v.numpy() if hasattr(v, "numpy") else np.asarray(v)


def _run_torch(profile: str, pth: str, image: np.ndarray, runs: int, threads: int | None,
               seed: int, dets_out: str | None, small: bool = False) -> dict[str, Any]:
    """The torch child of a torchvision or Detectron2 profile (:func:`_tv_chain`,
    :func:`_d2_chain`): load, a warm-up and ``runs`` timed staged runs under
    ``torch.no_grad()``, then one plain ``forward()`` whose detections go to ``dets_out``."""
    t = time.perf_counter()
    import torch
    import torchvision

    if threads:
        torch.set_num_threads(threads)
    chain = _d2_chain if profile in D2_VARIANTS else _tv_chain
    staged_once, forward = chain(profile, pth, image, seed, small)
    load_s = time.perf_counter() - t
    rss_loaded = _vm_kib("VmRSS")
    load_peak = _reset_peak_rss()
    once = torch.no_grad()(staged_once)

    first, staged = once()
    timed = _timed_runs(once, first, runs)
    # one plain forward() call: the public API, and the detections compared with npfrcnn's
    with torch.no_grad():
        t0 = time.perf_counter()
        dets = forward()
        forward_s = time.perf_counter() - t0
    print(f"    forward(): {forward_s:.2f} s", file=sys.stderr, flush=True)
    keys = ("boxes", "labels", "scores")
    dets = {k: _as_numpy(dets[k]) for k in keys}
    same = all(np.array_equal(dets[k], _as_numpy(staged[k])) for k in keys)
    _save_dets(dets_out, dets["boxes"], dets["labels"], dets["scores"])
    return {"load_s": load_s, "rss_loaded_kib": rss_loaded, "first": first, "runs": timed,
            "detections": int(dets["scores"].shape[0]), "forward_s": forward_s,
            "staged_equals_forward": same, "load_peak_rss_kib": load_peak,
            "torch_threads": torch.get_num_threads(),
            "versions": {"torch": torch.__version__, "torchvision": torchvision.__version__}}


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
    elif args.child == "torch":
        result = _run_torch(args.profile, args.weights, image, args.runs, args.threads,
                            args.seed, args.dets, args.small)
    else:
        result = _run_npfrcnn(args.child, args.weights, image, args.runs, args.dets,
                              label_offset=0 if args.profile in D2_VARIANTS else 1)
    result["peak_rss_kib"] = _vm_kib("VmHWM")
    with atomic_write(args.result) as f:
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
              folder: str, extra: list[str] | None = None) -> dict[str, Any]:
    result = os.path.join(folder, f"{backend}.json")
    cmd = [
        sys.executable, os.path.abspath(__file__), "--child", backend, "--weights", weights,
        "--image-npy", image_npy, "--runs", str(runs), "--result", result,
    ]
    if threads:
        cmd += ["--threads", str(threads)]
    cmd += extra or []
    load_before = os.getloadavg()[0]
    stat_before = _proc_stat()
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
    out["cpu_s"] = usage.ru_utime + usage.ru_stime
    out["loadavg_1min"] = (load_before, os.getloadavg()[0])
    stat_after = _proc_stat()
    if stat_before and stat_after:
        busy = stat_after[0] - stat_before[0]
        # every process's CPU time minus this child's: what else ran meanwhile
        out["others_cpu_s"] = max(busy - out["cpu_s"], 0.0)
        out["steal_s"] = stat_after[1] - stat_before[1]
    return out


def _proc_stat() -> tuple[float, float] | None:
    """Seconds of (non-idle CPU time, steal time) of the whole machine so far (Linux)."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    hz = os.sysconf("SC_CLK_TCK")
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq) / hz, steal / hz


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


# --- torchvision profiles ----------------------------------------------------------------------

_TV_NAMES = {"cpu": "npfrcnn cpu", "numpy": "npfrcnn numpy", "torch": "torchvision"}
#: the Detectron2 profiles' names: in rows, ratios, notes and verdicts, and the torch column's
_D2_NAMES = {**_TV_NAMES, "torch": "Detectron2 oracle"}
_D2_COLUMN = "Detectron2 oracle (tests/d2_oracle.py, torch eager)"


def _ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or not b or a != a or b != b:
        return "n/a"
    return f"{a / b:.2f}x"


def _whole_peak(r: dict[str, Any]) -> int | None:
    vals = [v for v in (r.get("load_peak_rss_kib"), r.get("peak_rss_kib")) if v is not None]
    return max(vals) if vals else None


def compare_detections(ours: dict[str, np.ndarray], ref: dict[str, np.ndarray]) -> dict[str, Any]:
    """npfrcnn's detections against the reference's (labels in the reference's ids:
    torchvision's 1-based ones, Detectron2's 0-based ``pred_classes``).

    Each of ours (in score order) is matched to the unused reference detection of the same
    label with the largest IoU; it counts as matched when that IoU is at least 0.99.
    """
    la, lb = ours["labels"], ref["labels"]
    out: dict[str, Any] = {
        "count": (int(la.shape[0]), int(lb.shape[0])),
        "labels_in_order": bool(la.shape == lb.shape and np.array_equal(la, lb)),
        "labels_as_multiset": bool(np.array_equal(np.sort(la), np.sort(lb))),
    }
    used = np.zeros(lb.shape[0], bool)
    ious, dscore = [], []
    rb = ref["boxes"].astype(np.float64)
    area_b = (rb[:, 2] - rb[:, 0]) * (rb[:, 3] - rb[:, 1])
    for box, lab, score in zip(ours["boxes"].astype(np.float64), la, ours["scores"], strict=True):
        x1 = np.maximum(box[0], rb[:, 0])
        y1 = np.maximum(box[1], rb[:, 1])
        x2 = np.minimum(box[2], rb[:, 2])
        y2 = np.minimum(box[3], rb[:, 3])
        inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
        union = (box[2] - box[0]) * (box[3] - box[1]) + area_b - inter
        iou = np.where((~used) & (lb == lab), inter / np.maximum(union, 1e-12), -1.0)
        if iou.size and iou.max() >= 0.99:
            j = int(iou.argmax())
            used[j] = True
            ious.append(float(iou[j]))
            dscore.append(abs(float(score) - float(ref["scores"][j])))
    out["matched"] = len(ious)
    out["min_iou"] = min(ious) if ious else None
    out["max_score_diff"] = max(dscore) if dscore else None
    out["agree"] = bool(
        out["count"][0] == out["count"][1] and out["labels_as_multiset"]
        and out["matched"] == out["count"][1]
    )
    return out


def format_agreement(cmp: dict[str, Any], name: str, ref: str = "torchvision") -> str:
    n_ours, n_ref = cmp["count"]
    yes = {True: "yes", False: "no"}
    text = (
        f"Detections, {name} vs {ref} `forward()`: "
        f"{'AGREE' if cmp['agree'] else 'DISAGREE'}: count {n_ours} vs {n_ref}; labels "
        f"identical in order: {yes[cmp['labels_in_order']]}; same labels as a multiset: "
        f"{yes[cmp['labels_as_multiset']]}; matched one to one (same label, IoU >= 0.99): "
        f"{cmp['matched']}/{n_ref}"
    )
    if cmp["matched"]:
        text += (f"; smallest IoU of a match {cmp['min_iou']:.6f}, largest |score difference| "
                 f"{cmp['max_score_diff']:.2g}")
    return text + "."


def _merge_rounds(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """One system's rounds (one child process each) as one result: the timed runs of every
    round pooled; the first round's warm-up; the largest RSS figures; CPU times summed."""
    bad = [r for r in rounds if "error" in r]
    if bad:
        return bad[0]
    out = dict(rounds[0])
    out["runs"] = [run for r in rounds for run in r["runs"]]
    out["round_medians"] = [_median(r["runs"], "total") for r in rounds]
    for key in ("rss_loaded_kib", "load_peak_rss_kib", "peak_rss_kib", "ru_maxrss_kib"):
        vals = [r[key] for r in rounds if r.get(key) is not None]
        out[key] = max(vals) if vals else None
    for key in ("cpu_s", "wall_s", "others_cpu_s", "steal_s"):
        vals = [r[key] for r in rounds if r.get(key) is not None]
        out[key] = sum(vals) if vals else None
    out["loadavg_1min"] = [r["loadavg_1min"] for r in rounds]
    if all("forward_s" in r for r in rounds):
        out["forward_s"] = statistics.median(r["forward_s"] for r in rounds)
    if "staged_equals_forward" in out:
        out["staged_equals_forward"] = all(r["staged_equals_forward"] for r in rounds)
    # the detections of every round are the first round's (the same weights and image)
    first = rounds[0].get("dets_arrays")
    out["rounds_identical"] = all(
        first is not None and r.get("dets_arrays") is not None
        and all(np.array_equal(first[k], r["dets_arrays"][k]) for k in first)
        for r in rounds
    )
    return out


def format_tv_table(results: dict[str, dict[str, Any]], header: str,
                    names: dict[str, str] | None = None, torch_column: str | None = None) -> str:
    """The table of a torchvision or Detectron2 profile: ``names`` (default torchvision's)
    name each system in its column, the ratios and the rows; ``torch_column``, if given, heads
    the torch column instead of ``names["torch"]``."""
    names = names or _TV_NAMES
    ok = [b for b in results if "error" not in results[b]]
    base = "torch" if "torch" in ok else None
    ours = [b for b in ok if b != "torch"]
    cols = [*ours, *(["torch"] if base else [])]
    ratio_cols = ours if base else []
    lines = [header, ""]
    col_names = [torch_column if b == "torch" and torch_column else names.get(b, b)
                 for b in cols]
    ratio_names = [f"{names[b]} / {names['torch']}" for b in ratio_cols]
    lines.append("| stage (s, median) | " + " | ".join(col_names + ratio_names) + " |")
    lines.append("|---|" + "---:|" * (len(cols) + len(ratio_cols)))

    def row(name: str, value: Any, fmt: Any, ratio: bool) -> None:
        vals = {b: value(results[b]) for b in cols}
        cells = [fmt(vals[b]) for b in cols]
        if ratio and base is not None:
            cells += [_ratio(vals[b], vals[base]) for b in ratio_cols]
        else:
            cells += [""] * len(ratio_cols)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")

    def sec(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.3f}"

    for k in (*STAGES, "total"):
        row(f"**{k}**" if k == "total" else k,
            lambda r, k=k: _median(r["runs"], k), sec, True)
    row("first run (warm-up) total, s", lambda r: r["first"]["total"], sec, True)
    row("first - median (compile / set-up), s",
        lambda r: r["first"]["total"] - _median(r["runs"], "total"), sec, False)
    row(f"{names['torch']} `forward()`, one call after the runs, s",
        lambda r: r.get("forward_s"), sec, False)
    row("load (imports, build, weights), s", lambda r: r["load_s"], sec, True)
    row("RSS after load, MiB", lambda r: r.get("rss_loaded_kib"), _mib, True)
    row("peak RSS while loading, MiB", lambda r: r.get("load_peak_rss_kib"), _mib, True)
    row("peak RSS while detecting, MiB", lambda r: r.get("peak_rss_kib"), _mib, True)
    row("**peak RSS, whole process**, MiB", _whole_peak, _mib, True)
    row("growth while detecting (peak while detecting - RSS after load), MiB",
        lambda r: (r["peak_rss_kib"] - r["rss_loaded_kib"])
        if r.get("peak_rss_kib") and r.get("rss_loaded_kib") else None, _mib, True)
    if any(len(results[b].get("round_medians", [])) > 1 for b in cols):
        row("median total of each round (own process), s", lambda r: r["round_medians"],
            lambda v: ", ".join(f"{x:.3f}" for x in v), False)
    row("process CPU time (user + sys) / wall, s",
        lambda r: (r["cpu_s"], r["wall_s"]), lambda v: f"{v[0]:.0f} / {v[1]:.0f}", False)
    row("other processes' CPU time meanwhile / steal, s",
        lambda r: (r.get("others_cpu_s"), r.get("steal_s")),
        lambda v: "n/a" if v[0] is None else f"{v[0]:.1f} / {v[1]:.1f}", False)
    row("load average (1 min) before / after", lambda r: r["loadavg_1min"],
        lambda v: "; ".join(f"{a:.2f} / {b:.2f}" for a, b in
                            (v if isinstance(v[0], list | tuple) else [v])), False)
    row("detections", lambda r: r["detections"], str, False)
    for b, r in results.items():
        if "error" in r:
            lines.append(f"\n{names.get(b, b)}: {r['error']}")
    return "\n".join(lines)


def tv_verdicts(results: dict[str, dict[str, Any]], backend: str = "cpu",
                names: dict[str, str] | None = None) -> list[str]:
    """The issue's targets for ``backend`` against the torch reference (torchvision, or the
    Detectron2 oracle with ``names=_D2_NAMES``): time and peak RSS."""
    names = names or _TV_NAMES
    if any(b not in results or "error" in results[b] for b in (backend, "torch")):
        return [f"Targets: not assessed ({backend} or torch did not finish)."]
    ours, ref = results[backend], results["torch"]
    t_o, t_r = _median(ours["runs"], "total"), _median(ref["runs"], "total")
    m_o, m_r = _whole_peak(ours), _whole_peak(ref)
    d_o, d_r = ours.get("peak_rss_kib"), ref.get("peak_rss_kib")
    name, ref_name = names[backend], names["torch"]
    out = [
        f"Target, end to end ({name} median total <= {ref_name}'s): "
        f"**{'met' if t_o <= t_r else 'NOT met'}**, {t_o:.3f} s vs {t_r:.3f} s "
        f"({_ratio(t_o, t_r)})."
    ]
    if m_o is not None and m_r is not None:
        out.append(
            f"Target, peak RSS (whole process, {name} <= {ref_name}'s): "
            f"**{'met' if m_o <= m_r else 'NOT met'}**, {m_o / 1024:.0f} MiB vs "
            f"{m_r / 1024:.0f} MiB ({_ratio(m_o, m_r)})"
            + (f"; while detecting only: {d_o / 1024:.0f} vs {d_r / 1024:.0f} MiB "
               f"({_ratio(d_o, d_r)})." if d_o and d_r else ".")
        )
    return out


def _tv_machine(torch_versions: dict[str, str] | None) -> str:
    import importlib.metadata as md

    cpu, family, model = platform.processor() or platform.machine(), None, None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, val = line.partition(":")
            key, val = key.strip(), val.strip()
            if key == "model name" and cpu == (platform.processor() or platform.machine()):
                cpu = val
            elif key == "cpu family" and family is None:
                family = val
            elif key == "model" and model is None:
                model = val
    except OSError:
        pass
    if family and model:
        cpu += f" (family {family}, model {model})"
    versions = {}
    for mod in ("numpy", "numba", "torch", "torchvision"):
        try:
            versions[mod] = md.version(mod)
        except md.PackageNotFoundError:
            versions[mod] = "not installed"
    versions.update(torch_versions or {})
    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        blas_s = f" ({blas['name']} {blas.get('version', '')})".rstrip()
    except Exception:
        blas_s = ""
    return (
        f"{cpu}, {os.cpu_count()} logical cores, Linux {platform.release()}, "
        f"Python {platform.python_version()}, numpy {versions['numpy']}{blas_s}, "
        f"numba {versions['numba']}, torch {versions['torch']}, "
        f"torchvision {versions['torchvision']}"
    )


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], capture_output=True, text=True, check=True,
                          cwd=_REPO).stdout


def _revision() -> str:
    """``git rev-parse --short HEAD``, and the uncommitted changes the run included."""
    try:
        head = _git("rev-parse", "--short", "HEAD").strip()
        status = _git("status", "--porcelain").splitlines()
    except Exception:
        return os.environ.get("NPFRCNN_REVISION", "unknown (no git)")
    tracked = [ln[3:] for ln in status if not ln.startswith("??")]
    untracked = [ln[3:] for ln in status if ln.startswith("??")]
    if not tracked and not untracked:
        return f"{head}, clean"

    def some(files: list[str]) -> str:
        return ", ".join(files[:12]) + (f", and {len(files) - 12} more" if len(files) > 12 else "")

    parts = []
    if tracked:
        parts.append(f"{len(tracked)} modified tracked files ({some(tracked)})")
    if untracked:
        parts.append(f"{len(untracked)} untracked files ({some(untracked)})")
    return f"{head} plus uncommitted changes: " + "; ".join(parts)


@dataclass
class _TorchReference:
    """A torchvision or Detectron2 profile's model, as :func:`main_vs_torch` runs it."""

    torch_weights: str  # what the torch child loads (a torch.save state dict)
    h5: str  # what the npfrcnn children load
    model: str  # the header's opening: the model, its weights and files
    resized: tuple[int, int]  # the image's size after the profile's resize
    padded: tuple[int, int] | None  # after the padding; None: not padded
    torch_desc: str  # the header's last words: what torch runs
    names: dict[str, str]  # backend -> name in rows, ratios, notes and verdicts
    column: str | None  # the torch column's heading (None: names["torch"])
    section: str  # the RESULTS.md section --write replaces


def _prepare_torchvision(args: argparse.Namespace, folder: str) -> _TorchReference | None:
    """Build the seeded torchvision model, save its state dict, convert it to HDF5."""
    import torch

    from npfrcnn.ops.resize import torchvision_resize_size
    from npfrcnn.weights.convert_torchvision import torchvision_to_hdf5

    profile, variant = args.profile, TV_VARIANTS[args.profile]
    tv_models = _tv_models()
    pth, h5 = os.path.join(folder, "model.pth"), os.path.join(folder, "model.h5")
    t = time.perf_counter()
    tv = tv_models.build(variant, small=args.small, seed=args.seed)
    torch.save(tv.state_dict(), pth)
    sizes = (tv.transform.min_size[-1], tv.transform.max_size)
    del tv
    build_s = time.perf_counter() - t
    t = time.perf_counter()
    changes = {"min_size": sizes[0], "max_size": sizes[1]} if args.small else None
    conv = torchvision_to_hdf5(pth, h5, profile, changes=changes)
    convert_s = time.perf_counter() - t
    cfg = conv["config"]
    if (cfg.min_size, cfg.max_size) != sizes:
        print(f"converted min/max size {(cfg.min_size, cfg.max_size)} != torchvision's "
              f"{sizes}", file=sys.stderr)
        return None
    rh, rw = torchvision_resize_size(args.height, args.width, cfg.min_size, cfg.max_size)
    d = cfg.size_divisible
    model = (
        f"{profile} (tests/tv_models.py variant `{variant}`, "
        f"{'REDUCED size (small=True), a quick check only' if args.small else 'full size'}"
        "), RANDOM weights "
        f"(seed {args.seed}), {cfg.num_classes + 1} torchvision classes; `.pth` "
        f"{os.path.getsize(pth) / 1e6:.0f} MB (built and saved in {build_s:.1f} s), "
        f"HDF5 {os.path.getsize(h5) / 1e6:.0f} MB (converted in {convert_s:.1f} s). "
    )
    return _TorchReference(
        torch_weights=pth, h5=h5, model=model, resized=(rh, rw),
        padded=(-(-rh // d) * d, -(-rw // d) * d), torch_desc="torchvision eager",
        names=_TV_NAMES, column=None, section=f"Whole model (CPU): {profile} vs torchvision",
    )


def _prepare_detectron2(args: argparse.Namespace, folder: str) -> _TorchReference | None:
    """Build the seeded ``D2Oracle``, save it as a model-zoo ``.pkl`` (and its state dict with
    ``torch.save``, for the torch child), convert the ``.pkl`` to HDF5."""
    import torch

    from npfrcnn.modeling.detectron2 import resize_shortest_edge_size
    from npfrcnn.weights.convert_detectron2 import detectron2_to_hdf5

    profile = args.profile
    variant = D2_VARIANTS[profile][0]
    d2 = _d2_oracle()
    pkl, pth, h5 = (os.path.join(folder, f"model.{ext}") for ext in ("pkl", "pth", "h5"))
    t = time.perf_counter()
    oracle = _build_d2_oracle(profile, args.small).randomize_(args.seed)
    state = oracle.state_dict()
    d2.save_model_zoo_pkl(state, pkl)
    torch.save(state, pth)
    sizes = (int(oracle.cfg["min_size_test"]), int(oracle.cfg["max_size_test"]))
    units = tuple(oracle.units)
    del oracle, state
    build_s = time.perf_counter() - t
    t = time.perf_counter()
    changes = {"min_size_test": sizes[0], "max_size_test": sizes[1]} if args.small else None
    conv = detectron2_to_hdf5(pkl, h5, profile, changes=changes)
    convert_s = time.perf_counter() - t
    cfg = conv["config"]
    for note in conv.get("notes", []):
        print(f"note (conversion): {note}", file=sys.stderr)
    problems = []
    if (cfg.min_size_test, cfg.max_size_test) != sizes:
        problems.append(f"converted min/max size {(cfg.min_size_test, cfg.max_size_test)} != "
                        f"the oracle's {sizes}")
    if tuple(cfg.units_per_block) != units or cfg.num_classes != D2_CLASSES:
        problems.append(f"converted units {cfg.units_per_block} / {cfg.num_classes} classes "
                        f"!= the oracle's {units} / {D2_CLASSES}")
    if problems:
        print("; ".join(problems), file=sys.stderr)
        return None
    rh, rw = resize_shortest_edge_size(args.height, args.width, cfg.min_size_test,
                                       cfg.max_size_test)
    theirs = d2.get_output_shape(args.height, args.width, *sizes)
    if tuple(theirs) != (rh, rw):
        print(f"WARNING: npfrcnn resizes to {rh}x{rw}, the oracle to {theirs[0]}x{theirs[1]}",
              file=sys.stderr)
    d = cfg.size_divisibility
    if args.small:
        knobs = {"stem": "stem_channels", "res2": "res2_channels",
                 "bottleneck": "width_per_group"}
        if cfg.is_fpn:
            knobs.update(FPN="fpn_channels", fc="fc_dim")
        widths = "/".join(str(D2_SMALL_KNOBS[k]) for k in knobs.values())
        size = (f"REDUCED size ({'/'.join(knobs)} widths {widths}, min/max size "
                f"{sizes[0]}/{sizes[1]}), a quick check only")
    else:
        size = "full size"
    model = (
        f"{profile} (tests/d2_oracle.py `D2Oracle(\"{variant}\", units={units})`, {size}), "
        f"RANDOM weights (seed {args.seed}, `D2Oracle.randomize_`), {cfg.num_classes} "
        "Detectron2 classes (+ the background, last); model-zoo `.pkl` "
        f"{os.path.getsize(pkl) / 1e6:.0f} MB (built, randomised and saved, with a "
        f"`torch.save` state dict for the torch child, in {build_s:.1f} s), HDF5 "
        f"{os.path.getsize(h5) / 1e6:.0f} MB (converted from the `.pkl` in {convert_s:.1f} s). "
    )
    return _TorchReference(
        torch_weights=pth, h5=h5, model=model, resized=(rh, rw),
        padded=(-(-rh // d) * d, -(-rw // d) * d) if d > 1 else None,
        torch_desc="the Detectron2 oracle (tests/d2_oracle.py, torch eager; given the image as "
                   "BGR, as DefaultPredictor is)",
        names=_D2_NAMES, column=_D2_COLUMN,
        section=f"Whole model (CPU): {profile} vs the torch implementation (tests/d2_oracle.py)",
    )


def _vs_torch_header(args: argparse.Namespace, ref: _TorchReference) -> str:
    rh, rw = ref.resized
    same = (rh, rw) == (args.height, args.width)
    threads = args.threads
    if ref.padded is not None:
        pad = f", padded to {ref.padded[0]}x{ref.padded[1]}"
    else:
        pad = ", not padded (size_divisibility 0)"
    return (
        ref.model
        + f"Image {args.height}x{args.width} "
        f"({'photo ' + args.image if args.image else 'synthetic, seeded'}): resized to "
        f"{rh}x{rw}" + (" (scale 1.0, the size is unchanged; both systems still run their "
                        "bilinear resize)" if same else "")
        + f"{pad}. {threads or 'default'} threads in both "
        f"(torch.set_num_threads, OMP/MKL/OpenBLAS/Numba variables); each system in its "
        f"own process, "
        + (f"{args.rounds} rounds (a fresh process each, alternating which system goes "
           f"first), each a warm-up + {args.runs} timed runs: medians of the "
           f"{args.rounds * args.runs} timed runs"
           + " (the first run is the first round's; RSS figures the largest of any round)"
           if args.rounds > 1 else f"a warm-up + median of {args.runs} timed runs")
        + f"; {ref.torch_desc} under torch.no_grad()."
    )


def main_vs_torch(args: argparse.Namespace, backends: list[str], argv: list[str] | None) -> int:
    """A torchvision or Detectron2 profile: npfrcnn beside its torch implementation."""
    import torch

    profile = args.profile
    threads = args.threads
    if threads:
        torch.set_num_threads(threads)
    load0 = os.getloadavg()
    if load0[0] > 0.5:
        print(f"note: load average {load0[0]:.2f} before the run (other jobs, or a run that "
              "just ended); each child's table row 'other processes' CPU time' says what else "
              "ran meanwhile", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="npfrcnn-bench-") as folder:
        prepare = _prepare_detectron2 if profile in D2_VARIANTS else _prepare_torchvision
        ref_model = prepare(args, folder)
        if ref_model is None:
            return 1
        names = ref_model.names
        if args.image:
            image = photo_image(args.image, args.height, args.width)
        else:
            image = synthetic_image(args.height, args.width, args.seed)
        image_npy = os.path.join(folder, "image.npy")
        np.save(image_npy, image)
        header = _vs_torch_header(args, ref_model)
        per_round: dict[str, list[dict[str, Any]]] = {b: [] for b in backends}
        for k in range(args.rounds):
            # alternate the order, so that a slow spell of the machine does not fall on one
            # system only
            for b in backends if k % 2 == 0 else backends[::-1]:
                print(f"running {b} (round {k + 1}/{args.rounds}) ...", file=sys.stderr,
                      flush=True)
                dets = os.path.join(folder, f"{b}-dets-{k}.npz")
                extra = ["--profile", profile, "--seed", str(args.seed), "--dets", dets]
                extra += ["--small"] if args.small else []
                weights = ref_model.torch_weights if b == "torch" else ref_model.h5
                r = run_child(b, weights, image_npy, args.runs, threads, folder, extra)
                per_round[b].append(r)
                if "error" in r:
                    print(f"  {b}: {r['error']}", file=sys.stderr)
                    continue
                with np.load(dets) as z:
                    r["dets_arrays"] = {k: z[k] for k in z.files}
                print(f"  {b}: median total {_median(r['runs'], 'total'):.3f} s (others' CPU "
                      f"time meanwhile {r.get('others_cpu_s', float('nan')):.1f} s, steal "
                      f"{r.get('steal_s', float('nan')):.1f} s)", file=sys.stderr, flush=True)
        results = {b: _merge_rounds(rs) for b, rs in per_round.items()}
    notes = []
    ref = results.get("torch", {})
    if "error" not in ref and "dets_arrays" in ref:
        for b in backends:
            if "error" not in results[b] and not results[b].get("rounds_identical", True):
                notes.append(f"WARNING: {names[b]} gave other detections in another round.")
        if not ref.get("staged_equals_forward", True):
            notes.append(f"WARNING: {names['torch']}'s staged chain gave other detections than "
                         "its forward().")
        for b in backends:
            if b != "torch" and "dets_arrays" in results[b]:
                cmp = compare_detections(results[b]["dets_arrays"], ref["dets_arrays"])
                results[b]["agreement"] = cmp
                notes.append(format_agreement(cmp, names[b], names["torch"]))
    for b in results:
        results[b].pop("dets_arrays", None)
        r = results[b]
        if r.get("others_cpu_s") is not None and r.get("wall_s"):
            share = r["others_cpu_s"] / (r["wall_s"] * (os.cpu_count() or 1))
            if share > 0.03:
                notes.append(
                    f"WARNING: the machine was busy while {names.get(b, b)} ran: other "
                    f"processes used {r['others_cpu_s']:.0f} s of CPU time ({100 * share:.0f} % "
                    "of all cores); its figures are not reliable: run again on a quiet machine."
                )
    verdicts = tv_verdicts(results, "cpu" if "cpu" in results else backends[0], names)
    table = format_tv_table(results, header, names, ref_model.column)
    arith = format_arithmetic(results, names)
    text = table + ("\n\n" + arith if arith else "") + "\n\n" + "\n\n".join(notes + verdicts)
    print(text)
    if args.write:
        from _harness import replace_section

        given = argv if argv is not None else sys.argv[1:]
        command = "python benchmarks/model.py " + " ".join(given)
        body = (
            f"Machine: {_tv_machine(ref.get('versions'))}.\n"
            f"Command: `{command}`.\nRevision: {_revision()}.\n\n{text}"
        )
        replace_section(Path(__file__).with_name("RESULTS.md"), ref_model.section, body)
        print("wrote benchmarks/RESULTS.md", file=sys.stderr)
    if args.json:
        with atomic_write(args.json) as f:
            json.dump({"header": header, "results": results}, f, indent=2)
    return 1 if any("error" in r for r in results.values()) else 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--depth", type=int, default=101, choices=(50, 101, 152))
    p.add_argument("--units", default=None, metavar="A,B,C,D",
                   help="units per block for a quick check (overrides --depth), e.g. 1,1,1,1")
    p.add_argument("--base-width", type=int, default=None, metavar="W",
                   help="block1 bottleneck width (default 64, the real network)")
    p.add_argument("--num-classes", type=int, default=80)
    p.add_argument("--profile", default=WORKSHOP, choices=PROFILES,
                   help="workshop (the default: the C4 model beside TF), a torchvision "
                        "profile (npfrcnn beside torchvision on the CPU) or a Detectron2 "
                        "profile (npfrcnn beside the torch implementation of Detectron2 in "
                        "tests/d2_oracle.py, on the CPU)")
    p.add_argument("--height", type=int, default=None,
                   help="image height (default 600; torchvision and Detectron2 profiles 800)")
    p.add_argument("--width", type=int, default=None,
                   help="image width (default 1000; torchvision and Detectron2 profiles 1333)")
    p.add_argument("--image", default=None,
                   help="use this photo (resized) instead of a synthetic image")
    p.add_argument("--runs", type=int, default=3, help="timed runs after the warm-up (default 3)")
    p.add_argument("--rounds", type=int, default=1,
                   help="torchvision and Detectron2 profiles: run each system this many times, "
                        "each time in a fresh process, alternating the order; the timed runs "
                        "are pooled (default 1)")
    p.add_argument("--backends", default=None,
                   help="comma-separated subset of numpy,cpu,tf (default all three); for the "
                        "torchvision and Detectron2 profiles a subset of numpy,cpu,torch "
                        "(default cpu,torch)")
    p.add_argument("--threads", type=int, default=None,
                   help="limit BLAS/Numba/TF/torch threads in each child (default: library "
                        "defaults; torchvision and Detectron2 profiles: 2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--small", action="store_true",
                   help="torchvision and Detectron2 profiles: the reduced-size test models "
                        "(tests/tv_models.py small=True; a D2Oracle with units 1,1,1,1 and "
                        "narrow widths), min/max size 160/256, for a quick check of this script")
    p.add_argument("--json", default=None, help="also write the raw results here")
    p.add_argument("--write", action="store_true",
                   help="replace the 'Whole model (CPU)' section of benchmarks/RESULTS.md (for "
                        "a torchvision profile: 'Whole model (CPU): PROFILE vs torchvision'; for "
                        "a Detectron2 profile: 'Whole model (CPU): PROFILE vs the torch "
                        "implementation (tests/d2_oracle.py)')")
    # internal: one measurement in a child process
    p.add_argument("--child", choices=BACKENDS, help=argparse.SUPPRESS)
    p.add_argument("--weights", help=argparse.SUPPRESS)
    p.add_argument("--image-npy", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    p.add_argument("--dets", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    tv = args.profile != WORKSHOP  # torchvision or Detectron2: npfrcnn beside torch
    if args.height is None:
        args.height = 800 if tv else 600
    if args.width is None:
        args.width = 1333 if tv else 1000
    if args.backends is None:
        args.backends = "cpu,torch" if tv else "numpy,cpu,tf"
    if tv and args.threads is None and not args.child:
        args.threads = 2
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        return child_main(args)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    allowed = ("numpy", "cpu", "tf") if args.profile == WORKSHOP else ("numpy", "cpu", "torch")
    bad = [b for b in backends if b not in allowed]
    if bad or not backends:
        print(f"--backends: unknown {bad}; choose from {', '.join(allowed)}", file=sys.stderr)
        return 2
    if args.runs < 1 or args.rounds < 1:
        print("--runs and --rounds must be at least 1", file=sys.stderr)
        return 2
    if args.profile != WORKSHOP:
        return main_vs_torch(args, backends, argv)

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
    arith = format_arithmetic(results, {"cpu": "npfrcnn cpu", "numpy": "npfrcnn numpy",
                                        "tf": "TF"})
    if arith:
        table += "\n\n" + arith
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
        with atomic_write(args.json) as f:
            json.dump({"header": header, "results": results}, f, indent=2)
    return 1 if any("error" in r for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
