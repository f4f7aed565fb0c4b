"""The correctness gate: adversarial cases every implementation runs before it is timed.

Each case is built on purpose at a place where kernels go wrong, and compared exactly with the
reference of the implementation's declared semantics (:func:`npfrcnn.bench.specs.reference`,
``backend="numpy"``):

* NMS family: IoU exactly at the threshold (0.5, 0.3, 0.7: ``float32(0.3)`` is above 0.3, so
  TF keeps what torchvision suppresses), thresholds 0 and 1, equal scores (ties by lower index,
  ``-0.0 == 0.0``), degenerate (zero width / height / point) and flipped boxes, empty input, one
  box, ``max_output_size`` smaller and larger than the count and zero, score thresholds (strict;
  ``-inf`` scores), huge coordinates, seeded random clustered boxes with tied scores, and for
  batched NMS classes that overlap, sparse class ids and more than 1,000 boxes (torchvision's
  other branch).
* Crop and RoI ops: empty input, boxes inside, on and past the border (with and without an
  extrapolation value), flipped / reversed boxes, zero-size, tiny and huge boxes and RoIs, crop
  size 1, nearest sampling, RoIs on the second image of a batch, non-square maps and outputs
  (so a swap of x and y shows), and for RoIAlign every combination of ``aligned`` and fixed or
  adaptive sampling; for RoIPool coordinates whose scaled value is an exact half (rounding).

``run`` returns whether every case matched and, if not, the first case that differs with the
expected and returned values (:func:`npfrcnn.bench.specs.compare`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from npfrcnn.bench import specs
from npfrcnn.bench.arrays import synchronize, to_numpy

__all__ = ["Case", "GateResult", "cases", "check_one", "run"]

F32 = np.float32
NEG_INF = float("-inf")


@dataclass(frozen=True)
class Case:
    """One adversarial input: its name, neutral inputs, and the semantics it applies to."""

    name: str
    inputs: specs.Inputs
    semantics: tuple[str, ...] = specs.SEMANTICS


@dataclass
class GateResult:
    exact: bool
    first_mismatch: str | None
    cases: int
    failed: list[str] = field(default_factory=list)

    def summary(self) -> str:
        if self.exact:
            return f"exact on {self.cases} cases"
        return f"{len(self.failed)} of {self.cases} cases differ; first: {self.first_mismatch}"


# --------------------------------------------------------------------------------------------
# NMS family
# --------------------------------------------------------------------------------------------


def _b(rows: list[list[float]] | list[list[int]]) -> np.ndarray:
    return np.asarray(rows, dtype=np.float32).reshape(-1, 4)


def _s(values: list[float]) -> np.ndarray:
    return np.asarray(values, dtype=np.float32)


def _nms_inputs(boxes: np.ndarray, scores: np.ndarray, thr: float, **kw: Any) -> specs.Inputs:
    out: specs.Inputs = {
        "boxes": boxes, "scores": scores, "iou_threshold": thr, "max_output_size": None,
        "score_threshold": NEG_INF,
    }
    out.update(kw)
    return out


def _clustered(n: int, seed: int, levels: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` boxes around ``n // 10`` objects on a 200x300 image, scores from ``levels`` values
    (so many are tied)."""
    rng = np.random.default_rng(seed)
    objects = max(1, n // 10)
    centre = rng.uniform([0, 0], [300, 200], (objects, 2))
    size = rng.uniform(8, 60, (objects, 2))
    who = rng.integers(0, objects, n)
    c = centre[who] + rng.normal(0, 0.15, (n, 2)) * size[who]
    wh = size[who] * np.exp(rng.normal(0, 0.15, (n, 2)))
    boxes = np.round(np.concatenate([c - wh / 2, c + wh / 2], axis=1) * 4) / 4  # quarter pixels
    scores = rng.integers(1, levels + 1, n) / np.float32(levels)
    return boxes.astype(np.float32), scores.astype(np.float32)


def _threshold_boxes(h: float) -> np.ndarray:
    """Pairs whose second box has IoU ``h / 10`` exactly (in float32), then just above and just
    below, each pair far from the others: a 10x10 box and a 10 x h box inside it."""
    rows = []
    for k, hh in enumerate((h, h + 0.25, h - 0.25)):
        x = 20.0 * k
        rows += [[x, 0, x + 10, 10], [x, 0, x + 10, hh]]
    return _b(rows)


def _nms_cases() -> list[Case]:
    tf_only = ("tf",)
    out = [
        Case("empty", _nms_inputs(_b([]), _s([]), 0.5)),
        Case("one-box", _nms_inputs(_b([[0, 0, 10, 10]]), _s([0.3]), 0.5)),
    ]
    for thr, h in ((0.5, 5.0), (0.3, 3.0), (0.7, 7.0)):
        out.append(Case(
            f"iou-at-threshold-{thr}",
            _nms_inputs(_threshold_boxes(h), _s([0.9, 0.8, 0.7, 0.6, 0.5, 0.4]), thr),
        ))
    touching = _b([[0, 0, 10, 10], [10, 0, 20, 10], [19, 0, 29, 10], [0, 10, 10, 20]])
    out.append(Case("iou-threshold-0", _nms_inputs(touching, _s([0.9, 0.8, 0.7, 0.6]), 0.0)))
    same = _b([[0, 0, 10, 10]] * 3 + [[2, 2, 12, 12]])
    out.append(Case("iou-threshold-1", _nms_inputs(same, _s([0.5, 0.9, 0.5, 0.7]), 1.0)))
    ties = _b([[0, 0, 10, 10], [0, 0, 10, 10], [30, 0, 40, 10], [1, 0, 11, 10],
               [60, 0, 70, 10], [60, 0, 70, 10], [30, 0, 40, 10], [90, 0, 100, 10]])
    out.append(Case("equal-scores", _nms_inputs(
        ties, _s([0.5, 0.5, 0.5, 0.5, -0.0, 0.0, 0.7, 0.5]), 0.5
    )))
    degenerate = _b([[0, 0, 10, 10], [0, 0, 0, 10], [5, 5, 5, 5], [0, 0, 10, 0], [5, 5, 5, 5],
                     [0, 0, 10, 10], [3, 3, 3, 8]])
    out.append(Case("degenerate-boxes", _nms_inputs(
        degenerate, _s([0.9, 0.8, 0.7, 0.6, 0.65, 0.5, 0.55]), 0.5
    )))
    flipped = _b([[10, 10, 0, 0], [0, 0, 10, 10], [10, 0, 0, 10], [1, 1, 11, 11],
                  [40, 10, 30, 0], [31, 1, 41, 11], [60, 0, 70, 10], [70, 10, 61, 1]])
    out.append(Case("flipped-boxes", _nms_inputs(
        flipped, _s([0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6, 0.55]), 0.5
    )))
    disjoint = _b([[20 * k, 0, 20 * k + 10, 10] for k in range(10)])
    ten = _s([0.1 * (k % 7) + 0.05 for k in range(10)])
    out += [
        Case("max-output-smaller", _nms_inputs(disjoint, ten, 0.5, max_output_size=3), tf_only),
        Case("max-output-larger", _nms_inputs(disjoint, ten, 0.5, max_output_size=50), tf_only),
        Case("max-output-zero", _nms_inputs(disjoint, ten, 0.5, max_output_size=0), tf_only),
        Case("score-threshold", _nms_inputs(
            disjoint, _s([0.9, 0.5, 0.5, 0.2, 0.1, 0.5, 0.6, 0.45, 0.55, 0.3]), 0.5,
            score_threshold=0.5,
        ), tf_only),
    ]
    inf_boxes = _b([[0, 0, 10, 10], [1, 0, 11, 10], [30, 0, 40, 10], [31, 0, 41, 10],
                    [60, 0, 70, 10], [61, 0, 71, 10]])
    out.append(Case("negative-and-infinite-scores", _nms_inputs(
        inf_boxes, _s([-1.0, -5.0, NEG_INF, float("inf"), 0.0, -0.5]), 0.5
    )))
    big = _b([[1e5, 1e5, 1e5 + 10, 1e5 + 10], [1e5 + 0.5, 1e5, 1e5 + 10.5, 1e5 + 10],
              [1e5 + 4, 1e5, 1e5 + 14, 1e5 + 10], [3e6, 3e6, 3e6 + 1, 3e6 + 1],
              [3e6 + 0.25, 3e6, 3e6 + 1.25, 3e6 + 1]])
    out.append(Case("huge-coordinates", _nms_inputs(big, _s([0.9, 0.8, 0.7, 0.6, 0.5]), 0.6)))
    boxes, scores = _clustered(300, seed=1, levels=8)
    out.append(Case("random-clustered-ties", _nms_inputs(boxes, scores, 0.5)))
    boxes, scores = _clustered(1000, seed=2, levels=1000)
    out.append(Case("random-clustered-1000", _nms_inputs(boxes, scores, 0.7)))
    return out


def _soft_cases() -> list[Case]:
    def soft(boxes: np.ndarray, scores: np.ndarray, sigma: float, **kw: Any) -> specs.Inputs:
        return _nms_inputs(boxes, scores, kw.pop("thr", 0.5), sigma=sigma, **kw)

    cluster, cscores = _clustered(40, seed=3, levels=5)
    boxes, scores = _clustered(200, seed=4, levels=200)
    ties = _b([[0, 0, 10, 10], [0, 0, 10, 10], [2, 0, 12, 10], [30, 0, 40, 10]])
    return [
        Case("empty", soft(_b([]), _s([]), 0.5)),
        Case("sigma-0-is-hard-nms", soft(cluster, cscores, 0.0)),
        Case("gaussian-decay", soft(cluster, cscores, 0.5)),
        Case("decayed-below-score-threshold", soft(cluster, cscores, 0.5, score_threshold=0.45)),
        Case("equal-scores", soft(ties, _s([0.6, 0.6, 0.6, 0.6]), 0.5)),
        Case("max-output-smaller", soft(cluster, cscores, 0.5, max_output_size=4)),
        Case("degenerate-and-flipped", soft(
            _b([[0, 0, 10, 10], [10, 10, 0, 0], [5, 5, 5, 5], [0, 0, 0, 10], [1, 1, 11, 11]]),
            _s([0.9, 0.8, 0.7, 0.6, 0.5]), 0.5,
        )),
        Case("random-clustered-200", soft(boxes, scores, 1.0, score_threshold=0.05)),
    ]


def _batched_cases() -> list[Case]:
    tf_only = ("tf",)

    def batched(boxes: np.ndarray, scores: np.ndarray, classes: list[int] | np.ndarray,
                thr: float = 0.5, **kw: Any) -> specs.Inputs:
        return _nms_inputs(boxes, scores, thr, classes=np.asarray(classes, np.int64), **kw)

    same = _b([[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10], [1, 0, 11, 10], [40, 0, 50, 10]])
    disjoint = _b([[20 * k, 0, 20 * k + 10, 10] for k in range(10)])
    ten = _s([0.1 * (k % 7) + 0.05 for k in range(10)])
    two = [k % 2 for k in range(10)]
    boxes, scores = _clustered(300, seed=5, levels=6)
    rng = np.random.default_rng(6)
    many, many_scores = _clustered(1500, seed=7, levels=1500)
    tied, tied_scores = _clustered(1200, seed=8, levels=16)
    return [
        Case("empty", batched(_b([]), _s([]), [])),
        Case("overlap-across-classes", batched(same, _s([0.9, 0.8, 0.7, 0.6, 0.5]),
                                               [0, 1, 0, 1, 0])),
        Case("equal-scores-across-classes", batched(same, _s([0.5] * 5), [1, 0, 1, 0, 2])),
        Case("sparse-class-ids", batched(same, _s([0.9, 0.8, 0.7, 0.6, 0.5]),
                                         [-3, 1000, -3, 7, 1000])),
        Case("iou-at-threshold-0.3", batched(
            _threshold_boxes(3.0), _s([0.9, 0.8, 0.7, 0.6, 0.5, 0.4]), [0, 0, 1, 1, 2, 2], 0.3
        )),
        Case("degenerate-and-flipped", batched(
            _b([[0, 0, 10, 10], [10, 10, 0, 0], [5, 5, 5, 5], [0, 0, 0, 10], [5, 5, 5, 5]]),
            _s([0.9, 0.8, 0.7, 0.6, 0.5]), [0, 0, 0, 1, 1],
        )),
        Case("max-output-per-class", batched(disjoint, ten, two, max_output_size=2), tf_only),
        Case("score-threshold", batched(disjoint, ten, two, score_threshold=0.35), tf_only),
        Case("random-clustered-ties", batched(boxes, scores, rng.integers(0, 4, 300))),
        Case("1500-boxes", batched(many, many_scores, rng.integers(0, 5, 1500), 0.7)),
        Case("1200-boxes-ties", batched(tied, tied_scores, rng.integers(0, 3, 1200), 0.6)),
    ]


# --------------------------------------------------------------------------------------------
# crop_and_resize and crop-and-pool
# --------------------------------------------------------------------------------------------


def _image() -> np.ndarray:
    return np.random.default_rng(11).standard_normal((2, 5, 7, 3)).astype(np.float32)


def _crop_boxes() -> list[tuple[str, list[list[float]], list[int]]]:
    return [
        ("inside", [[0.1, 0.2, 0.8, 0.9], [0.25, 0.0, 0.5, 0.4]], [0, 1]),
        ("on-border", [[0.0, 0.0, 1.0, 1.0], [0.5, 0.5, 1.0, 1.0], [0.0, 0.75, 1.0, 1.0]],
         [0, 0, 1]),
        ("past-border", [[-0.3, -0.2, 1.2, 1.5], [0.9, 0.9, 1.6, 1.3], [-1.0, -1.0, -0.1, 0.5]],
         [0, 1, 0]),
        ("flipped", [[0.9, 0.8, 0.1, 0.2], [0.2, 0.9, 0.7, 0.1]], [0, 1]),
        ("zero-size", [[0.5, 0.5, 0.5, 0.5], [0.3, 0.1, 0.3, 0.9]], [0, 0]),
        ("tiny-and-huge", [[0.4, 0.4, 0.41, 0.41], [-5.0, -5.0, 6.0, 6.0]], [1, 0]),
        ("batch-index", [[0.1, 0.1, 0.9, 0.9], [0.1, 0.1, 0.9, 0.9], [0.0, 0.3, 0.6, 1.0]],
         [1, 0, 1]),
    ]


def _crop_inputs(boxes: list[list[float]], idx: list[int], crop: tuple[int, int],
                 method: str = "bilinear", ev: float = 0.0) -> specs.Inputs:
    return {
        "image": _image(), "boxes": np.asarray(boxes, np.float32).reshape(-1, 4),
        "box_indices": np.asarray(idx, np.int32), "crop_size": crop, "method": method,
        "extrapolation_value": ev,
    }


def _crop_cases() -> list[Case]:
    out = [Case("empty", _crop_inputs([], [], (3, 3)))]
    for name, boxes, idx in _crop_boxes():
        out.append(Case(name, _crop_inputs(boxes, idx, (3, 4))))
    out += [
        Case("past-border-extrapolation", _crop_inputs(
            [[-0.3, -0.2, 1.2, 1.5], [0.9, 0.9, 1.6, 1.3]], [0, 1], (4, 3), ev=-2.5
        )),
        Case("crop-size-1", _crop_inputs([[0.1, 0.2, 0.8, 0.9], [0.0, 0.0, 1.0, 1.0]], [0, 1],
                                         (1, 1))),
        Case("crop-1-by-4", _crop_inputs([[0.1, 0.2, 0.8, 0.9]], [1], (1, 4))),
        # 0.125 * (5 - 1) = 0.5: nearest sampling lands on exact halves
        Case("nearest-halves", _crop_inputs(
            [[0.125, 1 / 12, 0.875, 11 / 12], [0.0, 0.0, 1.0, 1.0]], [0, 1], (4, 5), "nearest"
        )),
    ]
    return out


def _pool_cases() -> list[Case]:
    out = [Case("empty", _crop_inputs([], [], (4, 4)))]
    for name, boxes, idx in _crop_boxes():
        out.append(Case(name, _crop_inputs(boxes, idx, (4, 6))))
    out += [
        Case("odd-crop-size", _crop_inputs([[0.1, 0.2, 0.8, 0.9], [-0.2, 0.0, 1.1, 1.0]], [0, 1],
                                           (5, 7))),
        Case("past-border-extrapolation", _crop_inputs(
            [[-0.3, -0.2, 1.2, 1.5], [0.9, 0.9, 1.6, 1.3]], [0, 1], (4, 4), ev=-2.5
        )),
    ]
    return out


# --------------------------------------------------------------------------------------------
# RoIAlign and RoIPool
# --------------------------------------------------------------------------------------------


def _features() -> np.ndarray:
    return np.random.default_rng(12).standard_normal((2, 6, 9, 3)).astype(np.float32)


# RoIs in input pixels for a 6x9 map at scale 0.5 (a 12x18 image): (batch, x1, y1, x2, y2)
_ROIS: list[tuple[str, list[list[float]], bool]] = [  # (name, rois, fine with adaptive+aligned)
    ("inside", [[0, 2, 3, 10, 8], [1, 1.5, 0.5, 7.25, 11]], True),
    ("on-border", [[0, 0, 0, 18, 12], [0, 10, 6, 18, 12], [1, 0, 8, 6, 12]], True),
    ("past-border", [[0, -6, -4, 25, 17], [1, 16, 10, 30, 20], [0, -9, -7, -1, 3]], True),
    ("tiny", [[0, 5, 5, 5.3, 5.2], [0, 7, 3, 7, 3], [1, 17.5, 11.5, 17.9, 12.0]], True),
    ("huge", [[0, -40, -30, 60, 50], [1, -10, 2, 40, 9]], True),
    ("reversed", [[0, 10, 8, 2, 3], [1, 6, 1, 3, 9]], False),
    ("batch-index", [[1, 2, 3, 10, 8], [0, 2, 3, 10, 8], [1, 0, 0, 4, 12]], True),
]


def _roi_inputs(rois: list[list[float]], size: tuple[int, int], scale: float = 0.5,
                **kw: Any) -> specs.Inputs:
    out: specs.Inputs = {
        "features": _features(), "rois": np.asarray(rois, np.float32).reshape(-1, 5),
        "output_size": size, "spatial_scale": scale,
    }
    out.update(kw)
    return out


def _align_cases() -> list[Case]:
    out: list[Case] = []
    variants = [("", 2, False), ("/aligned", 2, True), ("/adaptive", 0, False),
                ("/adaptive-aligned", 0, True)]
    for suffix, ratio, aligned in variants:
        kw = {"sampling_ratio": ratio, "aligned": aligned}
        out.append(Case("empty" + suffix, _roi_inputs([], (3, 3), **kw)))
        for name, rois, adaptive_aligned_ok in _ROIS:
            if ratio == 0 and aligned and not adaptive_aligned_ok:
                continue  # torchvision itself fails on reversed RoIs there (roi_align doc)
            out.append(Case(name + suffix, _roi_inputs(rois, (3, 3), **kw)))
        out.append(Case("non-square-output" + suffix,
                        _roi_inputs([[0, 2, 3, 10, 8], [1, -3, 1, 15, 12]], (2, 3), **kw)))
    out.append(Case("scale-1", _roi_inputs([[0, 1, 0.5, 6, 4]], (2, 2), 1.0, sampling_ratio=3,
                                           aligned=False)))
    return out


def _pool_roi_cases() -> list[Case]:
    out = [Case("empty", _roi_inputs([], (3, 3)))]
    for name, rois, _ in _ROIS:
        out.append(Case(name, _roi_inputs(rois, (3, 3))))
    out += [
        Case("non-square-output", _roi_inputs([[0, 2, 3, 10, 8], [1, -3, 1, 15, 12]], (2, 3))),
        # x * 0.5 is an exact half: C's round() goes away from zero
        Case("rounding-halves", _roi_inputs([[0, 1, 3, 5, 7], [0, -1, -3, 9, 11]], (2, 2))),
        Case("scale-1", _roi_inputs([[0, 1, 0.5, 6, 4], [1, 0.5, 1.5, 8.5, 5.5]], (2, 2), 1.0)),
    ]
    return out


_BUILDERS: dict[str, Callable[[], list[Case]]] = {
    "nms": _nms_cases,
    "soft-nms": _soft_cases,
    "batched-nms": _batched_cases,
    "crop-and-resize": _crop_cases,
    "crop-and-pool": _pool_cases,
    "roi-align": _align_cases,
    "roi-pool": _pool_roi_cases,
}


def cases(op: str, semantics: str | None = None) -> list[Case]:
    """The adversarial cases of ``op`` (those that apply to ``semantics``, if given)."""
    specs.get(op)
    return [c for c in _BUILDERS[op]() if semantics is None or semantics in c.semantics]


# --------------------------------------------------------------------------------------------
# Running it
# --------------------------------------------------------------------------------------------


def check_one(impl: Any, inputs: specs.Inputs, expected: Any) -> str | None:
    """Run ``impl`` once on ``inputs``; ``None`` if it returns exactly ``expected``."""
    try:
        raw = impl.bind(inputs)()
        synchronize(impl.device)
        got = impl.result(to_numpy(raw), inputs)
    except Exception as e:  # a kernel that fails on a case fails the case
        return f"raised {type(e).__name__}: {e}"
    return specs.compare(expected, got)


def run(impl: Any, suite: list[Case] | None = None,
        expected: dict[tuple[str, str], Any] | None = None) -> GateResult:
    """Every case of ``impl``'s op and semantics, against the NumPy reference.

    ``expected`` caches the reference results by ``(semantics, case name)`` across
    implementations.
    """
    suite = cases(impl.op, impl.semantics) if suite is None else suite
    cache = {} if expected is None else expected
    failed: list[str] = []
    first: str | None = None
    for case in suite:
        key = (impl.semantics, case.name)
        if key not in cache:
            cache[key] = specs.reference(impl.op, impl.semantics, case.inputs, "numpy")
        msg = check_one(impl, case.inputs, cache[key])
        if msg is not None:
            failed.append(case.name)
            first = first or f"{case.name}: {msg}"
    return GateResult(not failed, first, len(suite), failed)
