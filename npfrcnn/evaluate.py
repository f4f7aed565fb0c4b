"""Detection metrics: COCO's 12 numbers (as ``pycocotools.cocoeval.COCOeval`` computes them for
``iouType="bbox"``) and Pascal VOC AP (the 2007 11-point and the area-under-curve variants).

Input format (both metrics)
    Two equally long sequences with one mapping per image, in image order:

    * ground truth: ``{"boxes": [G, 4], "classes": [G] int}`` plus optional ``"iscrowd"`` ``[G]``
      bool (COCO), ``"area"`` ``[G]`` (COCO; default the box area ``w * h``), ``"ignore"`` ``[G]``
      bool (COCO; see below) and ``"difficult"`` ``[G]`` bool (VOC).
    * detections: ``{"boxes": [D, 4], "scores": [D], "classes": [D] int}``.

    Boxes are ``(x1, y1, x2, y2)`` (npfrcnn's convention) unless ``box_format="xywh"`` (COCO's
    ``(x, y, width, height)``). Missing keys or zero-length arrays mean an image without ground
    truth or without detections. :func:`coco_metrics_from_json` takes COCO-format dicts instead.

COCO rules reproduced (``cocoeval.py``, ``maskApi.c::bbIou``)
    * IoU in float64 on ``(x, y, w, h)``, no +1: ``w = min(x2) - max(x1)``, zero unless both
      overlaps are positive; a crowd ground truth's union is the detection's area.
    * Per image and class, detections sorted by score with a stable sort (``mergesort``) and
      cut to 100; ground truth that is crowd, ``ignore``, or outside the area range goes last
      (stable). Greedy matching in score order at each IoU threshold: a detection takes the
      ground truth with the highest IoU ``>= t`` (``min(t, 1 - 1e-10)``; a later ground truth
      wins an exact tie), skips non-crowd ground truth already taken, and stops at the first
      ignored ground truth once it holds a regular one. A detection matched to ignored ground
      truth is ignored; an unmatched detection outside the area range is ignored.
    * Accumulation over images (in input order) per class, area range and max-detection limit
      (1, 10, 100, each a prefix of the image's sorted detections); scores merged with a stable
      sort; precision made monotone; 101 recall points, ``searchsorted(side="left")``; entries
      with no ground truth stay -1 and are left out of the means.
    * Area ranges ``all [0, 1e10]``, ``small [0, 32**2]``, ``medium [32**2, 96**2]``,
      ``large [96**2, 1e10]``, inclusive at both ends. IoU thresholds
      ``np.linspace(.5, .95, 10)`` and recall points ``np.linspace(0, 1, 101)``, built as
      COCOeval builds them.
    * Classes: the classes present in the ground truth (a class without ground truth is -1 in
      COCOeval and so never counts); detections of other classes are dropped.

    Differences: COCOeval's bbox mode overwrites an annotation's ``ignore`` with ``iscrowd``; the
    in-memory ``"ignore"`` flag is an addition (an ignored, non-crowd ground truth, matched at
    most once), and :func:`coco_metrics_from_json` ignores the JSON field as COCOeval does.
    pycocotools crashes on an empty result list; here empty detections give AP = AR = 0 for
    every class with ground truth, and no ground truth at all gives -1 everywhere.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

__all__ = [
    "EvaluationError",
    "AREA_RANGES",
    "IOU_THRESHOLDS",
    "RECALL_THRESHOLDS",
    "MAX_DETECTIONS",
    "STAT_NAMES",
    "CocoMetrics",
    "coco_metrics",
    "coco_metrics_from_json",
    "coco_box_iou",
    "VocMetrics",
    "voc_ap",
    "voc_metrics",
]

# COCOeval.Params.setDetParams, built the same way so the floats are the same.
IOU_THRESHOLDS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)
RECALL_THRESHOLDS = np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1, endpoint=True)
MAX_DETECTIONS = (1, 10, 100)
AREA_RANGES: dict[str, tuple[float, float]] = {
    "all": (0.0**2, 1e5**2),
    "small": (0.0**2, 32.0**2),
    "medium": (32.0**2, 96.0**2),
    "large": (96.0**2, 1e5**2),
}
STAT_NAMES = (
    "AP",
    "AP50",
    "AP75",
    "AP_small",
    "AP_medium",
    "AP_large",
    "AR1",
    "AR10",
    "AR100",
    "AR_small",
    "AR_medium",
    "AR_large",
)

FloatArray = npt.NDArray[np.float64]


class EvaluationError(ValueError):
    """Inputs the metrics cannot use (shapes, non-finite values, mismatched lengths); the
    message names the argument and the fix."""


# --------------------------------------------------------------------------- input handling


def _boxes_xywh(name: str, value: Any, box_format: str) -> FloatArray:
    arr = np.asarray(value if value is not None else np.zeros((0, 4)), dtype=np.float64)
    if arr.size == 0:
        arr = arr.reshape(0, 4)
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise EvaluationError(f"{name} must be [N, 4], got shape {list(arr.shape)}")
    if not np.isfinite(arr).all():
        raise EvaluationError(f"{name} contains non-finite values; remove them before evaluating")
    if box_format == "xyxy":
        arr = np.stack([arr[:, 0], arr[:, 1], arr[:, 2] - arr[:, 0], arr[:, 3] - arr[:, 1]], axis=1)
    elif box_format not in ("xywh", "asis"):
        raise EvaluationError(f"box_format must be 'xyxy' or 'xywh', got {box_format!r}")
    return arr


def _vector(name: str, value: Any, n: int, dtype: npt.DTypeLike, default: Any) -> np.ndarray:
    if value is None:
        return np.full(n, default, dtype=dtype)
    arr = np.asarray(value)
    if arr.size == 0:
        arr = arr.reshape(0)
    if arr.shape != (n,):
        raise EvaluationError(f"{name} must have shape [{n}] (one per box), got {list(arr.shape)}")
    if np.dtype(dtype).kind == "i" and arr.size and arr.dtype.kind not in "iub":
        if not (arr.dtype.kind == "f" and np.all(arr == np.round(arr))):
            raise EvaluationError(f"{name} must hold integers, got dtype {arr.dtype}")
    if np.dtype(dtype).kind == "f" and arr.size and not np.isfinite(arr.astype(np.float64)).all():
        raise EvaluationError(f"{name} contains non-finite values")
    return arr.astype(dtype)


@dataclass
class _Image:
    gt_box: FloatArray  # [G,4] xywh
    gt_cls: np.ndarray  # [G]
    gt_area: FloatArray  # [G]
    gt_crowd: np.ndarray  # [G] bool
    gt_ignore: np.ndarray  # [G] bool
    gt_difficult: np.ndarray  # [G] bool
    dt_box: FloatArray  # [D,4] xywh
    dt_score: FloatArray  # [D]
    dt_cls: np.ndarray  # [D]


def _images(
    ground_truth: Sequence[Mapping[str, Any]],
    detections: Sequence[Mapping[str, Any]],
    box_format: str,
) -> list[_Image]:
    if len(ground_truth) != len(detections):
        raise EvaluationError(
            f"ground_truth has {len(ground_truth)} images but detections has "
            f"{len(detections)}; pass one entry per image to both (empty dicts are fine)"
        )
    out = []
    for i, (gt, dt) in enumerate(zip(ground_truth, detections, strict=True)):
        gb = _boxes_xywh(f"ground_truth[{i}]['boxes']", gt.get("boxes"), box_format)
        g = gb.shape[0]
        db = _boxes_xywh(f"detections[{i}]['boxes']", dt.get("boxes"), box_format)
        d = db.shape[0]
        if g and gt.get("classes") is None:
            raise EvaluationError(f"ground_truth[{i}] has boxes but no 'classes'")
        if d and (dt.get("classes") is None or dt.get("scores") is None):
            raise EvaluationError(f"detections[{i}] has boxes but no 'classes' or 'scores'")
        area = gt.get("area")
        out.append(
            _Image(
                gt_box=gb,
                gt_cls=_vector(f"ground_truth[{i}]['classes']", gt.get("classes"), g, np.int64, 0),
                gt_area=(gb[:, 2] * gb[:, 3])
                if area is None
                else _vector(f"ground_truth[{i}]['area']", area, g, np.float64, 0.0),
                gt_crowd=_vector(
                    f"ground_truth[{i}]['iscrowd']", gt.get("iscrowd"), g, bool, False
                ),
                gt_ignore=_vector(f"ground_truth[{i}]['ignore']", gt.get("ignore"), g, bool, False),
                gt_difficult=_vector(
                    f"ground_truth[{i}]['difficult']", gt.get("difficult"), g, bool, False
                ),
                dt_box=db,
                dt_score=_vector(
                    f"detections[{i}]['scores']", dt.get("scores"), d, np.float64, 0.0
                ),
                dt_cls=_vector(f"detections[{i}]['classes']", dt.get("classes"), d, np.int64, 0),
            )
        )
    return out


# --------------------------------------------------------------------------- COCO


def coco_box_iou(
    dt_xywh: npt.ArrayLike, gt_xywh: npt.ArrayLike, iscrowd: npt.ArrayLike
) -> FloatArray:
    """COCO's box IoU (``maskApi.c::bbIou``) in float64, ``[D, G]``.

    ``w = min(dx + dw, gx + gw) - max(dx, gx)`` (the same for ``h``); the IoU is 0 unless
    ``w > 0`` and ``h > 0``; ``union = d_area + g_area - inter``, or ``d_area`` for a crowd
    ground truth. Boxes are ``(x, y, w, h)``, no +1.
    """
    d = np.asarray(dt_xywh, dtype=np.float64).reshape(-1, 4)
    g = np.asarray(gt_xywh, dtype=np.float64).reshape(-1, 4)
    crowd = np.asarray(iscrowd, dtype=bool).reshape(-1)
    da = d[:, 2] * d[:, 3]  # [D]
    ga = g[:, 2] * g[:, 3]  # [G]
    w = np.minimum(d[:, None, 2] + d[:, None, 0], g[None, :, 2] + g[None, :, 0]) - np.maximum(
        d[:, None, 0], g[None, :, 0]
    )  # [D,G]
    h = np.minimum(d[:, None, 3] + d[:, None, 1], g[None, :, 3] + g[None, :, 1]) - np.maximum(
        d[:, None, 1], g[None, :, 1]
    )  # [D,G]
    inter = w * h
    union = np.where(crowd[None, :], da[:, None], da[:, None] + ga[None, :] - inter)
    ok = (w > 0) & (h > 0)
    out = np.zeros(inter.shape, dtype=np.float64)
    np.divide(inter, union, out=out, where=ok)
    return out


@dataclass(frozen=True)
class CocoMetrics:
    """COCO results.

    Attributes:
        stats: float64 ``[12]`` in COCOeval's ``stats`` order (:data:`STAT_NAMES`); -1 where
            undefined (no ground truth in that area range).
        precision: ``[T=10, R=101, K, A=4, M=3]`` interpolated precision (-1: undefined).
        recall: ``[T, K, A, M]`` final recall (-1: undefined).
        classes: ``[K]`` the class of each ``K`` index (sorted).
    """

    stats: FloatArray
    precision: FloatArray
    recall: FloatArray
    classes: npt.NDArray[np.int64]

    def as_dict(self) -> dict[str, float]:
        """``{"AP": ..., "AP50": ..., ...}``."""
        return {name: float(v) for name, v in zip(STAT_NAMES, self.stats, strict=True)}


@dataclass
class _EvalImg:
    dt_matched: np.ndarray  # [T,D] bool
    dt_ignore: np.ndarray  # [T,D] bool
    dt_score: FloatArray  # [D]
    gt_ignore: np.ndarray  # [G] bool


def _evaluate_img(
    ious: FloatArray,  # [D,G] dt sorted by score (cut to 100), gt in input order
    gt_area: FloatArray,
    gt_crowd: np.ndarray,
    gt_ignore: np.ndarray,
    dt_area: FloatArray,
    dt_score: FloatArray,
    area_rng: tuple[float, float],
) -> _EvalImg:
    lo, hi = area_rng
    g_ig = gt_ignore | (gt_area < lo) | (gt_area > hi)  # [G]
    gorder = np.argsort(g_ig.astype(np.int64), kind="mergesort")
    g_ig = g_ig[gorder]
    crowd = gt_crowd[gorder]
    iou = ious[:, gorder] if ious.size else ious
    n_t, n_d, n_g = len(IOU_THRESHOLDS), len(dt_score), len(gorder)
    dtm = np.full((n_t, n_d), -1, dtype=np.int64)
    dt_ig = np.zeros((n_t, n_d), dtype=bool)
    if n_d and n_g:
        rows = iou.tolist()
        g_ig_l = g_ig.tolist()
        crowd_l = crowd.tolist()
        for ti, t in enumerate(IOU_THRESHOLDS.tolist()):
            taken = [False] * n_g
            for di in range(n_d):
                best = min(t, 1 - 1e-10)
                m = -1
                row = rows[di]
                for gi in range(n_g):
                    if taken[gi] and not crowd_l[gi]:
                        continue
                    if m > -1 and not g_ig_l[m] and g_ig_l[gi]:
                        break
                    if row[gi] < best:
                        continue
                    best = row[gi]
                    m = gi
                if m == -1:
                    continue
                dt_ig[ti, di] = g_ig_l[m]
                dtm[ti, di] = m
                taken[m] = True
    outside = (dt_area < lo) | (dt_area > hi)  # [D]
    matched = dtm >= 0
    dt_ig = dt_ig | (~matched & outside[None, :])
    return _EvalImg(matched, dt_ig, dt_score, g_ig)


def _accumulate(
    per_img: list[_EvalImg | None], max_det: int
) -> tuple[FloatArray, FloatArray] | None:
    """Precision ``[T, R]`` and recall ``[T]`` for one (class, area, maxDet), or None (-1)."""
    es = [e for e in per_img if e is not None]
    if not es:
        return None
    scores = np.concatenate([e.dt_score[:max_det] for e in es])
    order = np.argsort(-scores, kind="mergesort")
    dtm = np.concatenate([e.dt_matched[:, :max_det] for e in es], axis=1)[:, order]
    dt_ig = np.concatenate([e.dt_ignore[:, :max_det] for e in es], axis=1)[:, order]
    g_ig = np.concatenate([e.gt_ignore for e in es])
    npig = int(np.count_nonzero(~g_ig))
    if npig == 0:
        return None
    tps = dtm & ~dt_ig
    fps = ~dtm & ~dt_ig
    tp_sum = np.cumsum(tps, axis=1).astype(np.float64)
    fp_sum = np.cumsum(fps, axis=1).astype(np.float64)
    n_t, n_r = len(IOU_THRESHOLDS), len(RECALL_THRESHOLDS)
    precision = np.zeros((n_t, n_r))
    recall = np.zeros(n_t)
    for ti in range(n_t):
        tp, fp = tp_sum[ti], fp_sum[ti]
        nd = tp.shape[0]
        rc = tp / npig
        pr = tp / (fp + tp + np.spacing(1))
        recall[ti] = rc[-1] if nd else 0.0
        # make precision non-increasing from the right (COCOeval's loop, vectorised)
        pr = np.maximum.accumulate(pr[::-1])[::-1] if nd else pr
        idx = np.searchsorted(rc, RECALL_THRESHOLDS, side="left")
        valid = idx < nd  # COCOeval stops at the first index past the end: zeros after it
        q = np.zeros(n_r)
        first_bad = int(np.argmin(valid)) if not valid.all() else n_r
        q[:first_bad] = pr[idx[:first_bad]]
        precision[ti] = q
    return precision, recall


def _summarize(precision: FloatArray, recall: FloatArray) -> FloatArray:
    areas = list(AREA_RANGES)

    def mean_valid(s: np.ndarray) -> float:
        v = s[s > -1]
        return float(np.mean(v)) if v.size else -1.0

    def ap(iou_thr: float | None = None, area: str = "all", max_det: int = 100) -> float:
        s = precision
        if iou_thr is not None:
            s = s[np.where(iou_thr == IOU_THRESHOLDS)[0]]
        return mean_valid(s[:, :, :, areas.index(area), MAX_DETECTIONS.index(max_det)])

    def ar(area: str = "all", max_det: int = 100) -> float:
        return mean_valid(recall[:, :, areas.index(area), MAX_DETECTIONS.index(max_det)])

    return np.array(
        [
            ap(),
            ap(iou_thr=0.5),
            ap(iou_thr=0.75),
            ap(area="small"),
            ap(area="medium"),
            ap(area="large"),
            ar(max_det=1),
            ar(max_det=10),
            ar(max_det=100),
            ar(area="small"),
            ar(area="medium"),
            ar(area="large"),
        ],
        dtype=np.float64,
    )


def _coco(images: list[_Image], classes: np.ndarray) -> CocoMetrics:
    n_t, n_r, n_k = len(IOU_THRESHOLDS), len(RECALL_THRESHOLDS), len(classes)
    n_a, n_m = len(AREA_RANGES), len(MAX_DETECTIONS)
    precision = -np.ones((n_t, n_r, n_k, n_a, n_m))
    recall = -np.ones((n_t, n_k, n_a, n_m))
    max_all = MAX_DETECTIONS[-1]
    for k, c in enumerate(classes.tolist()):
        per_area: list[list[_EvalImg | None]] = [[] for _ in range(n_a)]
        for im in images:
            gsel = np.flatnonzero(im.gt_cls == c)
            dsel = np.flatnonzero(im.dt_cls == c)
            if gsel.size == 0 and dsel.size == 0:
                for a in range(n_a):
                    per_area[a].append(None)
                continue
            dorder = dsel[np.argsort(-im.dt_score[dsel], kind="mergesort")][:max_all]
            d_box = im.dt_box[dorder]
            ious = coco_box_iou(d_box, im.gt_box[gsel], im.gt_crowd[gsel])  # [D,G]
            d_area = d_box[:, 2] * d_box[:, 3]
            for a, rng in enumerate(AREA_RANGES.values()):
                per_area[a].append(
                    _evaluate_img(
                        ious,
                        im.gt_area[gsel],
                        im.gt_crowd[gsel],
                        im.gt_ignore[gsel] | im.gt_crowd[gsel],
                        d_area,
                        im.dt_score[dorder],
                        rng,
                    )
                )
        for a in range(n_a):
            for m, max_det in enumerate(MAX_DETECTIONS):
                res = _accumulate(per_area[a], max_det)
                if res is not None:
                    precision[:, :, k, a, m] = res[0]
                    recall[:, k, a, m] = res[1]
    return CocoMetrics(_summarize(precision, recall), precision, recall, classes.astype(np.int64))


def coco_metrics(
    ground_truth: Sequence[Mapping[str, Any]],
    detections: Sequence[Mapping[str, Any]],
    *,
    box_format: Literal["xyxy", "xywh"] = "xyxy",
) -> CocoMetrics:
    """COCO bbox metrics, equal to ``COCOeval(...).evaluate(); accumulate(); summarize()``.

    Args:
        ground_truth: one mapping per image (module docstring): ``boxes``, ``classes``, and
            optionally ``iscrowd``, ``area`` (default ``w * h``), ``ignore``.
        detections: one mapping per image: ``boxes``, ``scores``, ``classes``.
        box_format: ``"xyxy"`` (default) or COCO's ``"xywh"``. With ``"xyxy"`` widths are
            ``x2 - x1`` in float64, which can differ from a given COCO width by an ulp: pass
            ``"xywh"`` to reproduce numbers computed from COCO-format boxes bit for bit.

    Returns:
        :class:`CocoMetrics`; ``stats`` holds the 12 numbers COCOeval prints.
    """
    images = _images(ground_truth, detections, box_format)
    classes = np.unique(np.concatenate([im.gt_cls for im in images])) if images else np.zeros(0)
    return _coco(images, classes.astype(np.int64))


def coco_metrics_from_json(
    dataset: Mapping[str, Any], results: Sequence[Mapping[str, Any]]
) -> CocoMetrics:
    """COCO bbox metrics from COCO-format data, as ``COCO(dataset)`` / ``loadRes(results)``.

    Args:
        dataset: a COCO ground-truth dict with ``images`` (``id``), ``annotations``
            (``image_id``, ``category_id``, ``bbox`` xywh, ``area``, ``iscrowd``) and
            ``categories`` (``id``). Images are evaluated in sorted id order, annotations in file
            order within an image, as COCOeval does.
        results: detection results, each ``image_id``, ``category_id``, ``bbox`` (xywh),
            ``score``; may be empty. Every ``image_id`` must be one of the dataset's images.
            Results of categories not in the dataset are dropped, as COCOeval does.

    Returns:
        :class:`CocoMetrics` over the dataset's categories (sorted ids).
    """
    img_ids = sorted({int(im["id"]) for im in dataset.get("images", [])})
    index = {iid: i for i, iid in enumerate(img_ids)}
    cat_ids = sorted({int(c["id"]) for c in dataset.get("categories", [])})
    cat_set = set(cat_ids)
    gts: list[dict[str, list[Any]]] = [
        {"boxes": [], "classes": [], "area": [], "iscrowd": []} for _ in img_ids
    ]
    dts: list[dict[str, list[Any]]] = [{"boxes": [], "scores": [], "classes": []} for _ in img_ids]
    for ann in dataset.get("annotations", []):
        iid = int(ann["image_id"])
        if iid not in index or int(ann["category_id"]) not in cat_set:
            continue
        g = gts[index[iid]]
        g["boxes"].append(list(ann["bbox"]))
        g["classes"].append(int(ann["category_id"]))
        g["area"].append(float(ann["area"]))
        g["iscrowd"].append(bool(ann.get("iscrowd", 0)))
    for j, res in enumerate(results):
        iid = int(res["image_id"])
        if iid not in index:
            raise EvaluationError(
                f"results[{j}] has image_id {iid}, which is not among the dataset's images; "
                "COCOeval refuses such results too"
            )
        if int(res["category_id"]) not in cat_set:
            continue
        d = dts[index[iid]]
        d["boxes"].append(list(res["bbox"]))
        d["scores"].append(float(res["score"]))
        d["classes"].append(int(res["category_id"]))
    images = _images(gts, dts, "xywh")
    return _coco(images, np.asarray(cat_ids, dtype=np.int64))


# --------------------------------------------------------------------------- Pascal VOC


def voc_ap(
    recall: npt.ArrayLike, precision: npt.ArrayLike, *, use_07_metric: bool = False
) -> float:
    """Average precision from a precision/recall curve (the VOC devkit's ``voc_ap``).

    Args:
        recall: ``[N]`` cumulative recall in detection order.
        precision: ``[N]`` cumulative precision.
        use_07_metric: VOC2007's 11-point AP: the mean over ``t`` in ``np.arange(0, 1.1, 0.1)``
            of the highest precision at recall ``>= t`` (0 if none). Otherwise (VOC2010+) the
            area under the curve after making precision non-increasing, summed where recall
            changes, with the curve padded by recall 0 and 1 at precision 0.
    """
    rec = np.asarray(recall, dtype=np.float64).reshape(-1)
    prec = np.asarray(precision, dtype=np.float64).reshape(-1)
    if rec.shape != prec.shape:
        raise EvaluationError(f"recall and precision must match, got {rec.shape} and {prec.shape}")
    if use_07_metric:
        ap = 0.0
        for t in np.arange(0.0, 1.1, 0.1):
            above = rec >= t
            p = float(np.max(prec[above])) if np.any(above) else 0.0
            ap += p / 11.0
        return float(ap)
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    change = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[change + 1] - mrec[change]) * mpre[change + 1]))


@dataclass(frozen=True)
class VocMetrics:
    """Pascal VOC results: ``ap[c]`` per class (NaN for a class without non-difficult ground
    truth) and ``mean_ap``, the mean over classes with a defined AP (NaN if none)."""

    ap: dict[int, float]
    mean_ap: float


def _voc_iou(bb: FloatArray, gt: FloatArray, one: float) -> FloatArray:
    ixmin = np.maximum(gt[:, 0], bb[0])
    iymin = np.maximum(gt[:, 1], bb[1])
    ixmax = np.minimum(gt[:, 2], bb[2])
    iymax = np.minimum(gt[:, 3], bb[3])
    iw = np.maximum(ixmax - ixmin + one, 0.0)
    ih = np.maximum(iymax - iymin + one, 0.0)
    inter = iw * ih
    union = (
        (bb[2] - bb[0] + one) * (bb[3] - bb[1] + one)
        + (gt[:, 2] - gt[:, 0] + one) * (gt[:, 3] - gt[:, 1] + one)
        - inter
    )
    return np.asarray(inter / union, dtype=np.float64)


def voc_metrics(
    ground_truth: Sequence[Mapping[str, Any]],
    detections: Sequence[Mapping[str, Any]],
    *,
    iou_threshold: float = 0.5,
    use_07_metric: bool = False,
    plus_one: bool = True,
    classes: Sequence[int] | None = None,
) -> VocMetrics:
    """Pascal VOC AP per class (the devkit's ``voc_eval``).

    For each class: detections of all images sorted by score, highest first (stable: ties keep
    image order, then input order; the devkit's unstable ``argsort`` leaves ties arbitrary).
    Each detection takes the ground truth of its image with the highest IoU (over all of them,
    difficult or already matched included). If that IoU is ``> iou_threshold`` (strict): a
    difficult ground truth makes the detection neither TP nor FP; an unmatched one makes it a TP
    and marks it; an already-matched one makes it a FP. Otherwise it is a FP. Recall is over
    the non-difficult ground truth; precision is ``tp / max(tp + fp, eps)``; AP by
    :func:`voc_ap`.

    Args:
        ground_truth: one mapping per image: ``boxes`` (xyxy), ``classes``, optional
            ``difficult``.
        detections: one mapping per image: ``boxes`` (xyxy), ``scores``, ``classes``.
        iou_threshold: 0.5 in VOC.
        use_07_metric: 11-point AP (VOC2007) instead of the area under the curve.
        plus_one: the devkit's inclusive widths ``x2 - x1 + 1`` (True) or ``x2 - x1``.
        classes: classes to evaluate; default every class in the ground truth or detections.

    Returns:
        :class:`VocMetrics`.
    """
    if not (0.0 <= float(iou_threshold) <= 1.0):
        raise EvaluationError(f"iou_threshold must be in [0, 1], got {iou_threshold!r}")
    images = _images(ground_truth, detections, "asis")  # VOC works on xyxy as given
    one = 1.0 if plus_one else 0.0
    if classes is None:
        found = [im.gt_cls for im in images] + [im.dt_cls for im in images]
        cls_list = np.unique(np.concatenate(found)).tolist() if found else []
    else:
        cls_list = [int(c) for c in classes]
    aps: dict[int, float] = {}
    for c in cls_list:
        npos = 0
        recs = []
        img_of, scores, boxes = [], [], []
        for i, im in enumerate(images):
            gsel = im.gt_cls == c
            diff = im.gt_difficult[gsel]
            recs.append((im.gt_box[gsel], diff, np.zeros(int(gsel.sum()), dtype=bool)))
            npos += int(np.count_nonzero(~diff))
            dsel = np.flatnonzero(im.dt_cls == c)
            img_of.extend([i] * dsel.size)
            scores.append(im.dt_score[dsel])
            boxes.append(im.dt_box[dsel])
        if npos == 0:
            aps[c] = float("nan")
            continue
        score = np.concatenate(scores) if scores else np.zeros(0)
        bbs = np.concatenate(boxes) if boxes else np.zeros((0, 4))
        order = np.argsort(-score, kind="mergesort")
        nd = order.size
        tp = np.zeros(nd)
        fp = np.zeros(nd)
        for d, j in enumerate(order.tolist()):
            gtb, diff, det = recs[img_of[j]]
            ovmax = -np.inf
            jmax = -1
            if gtb.shape[0] > 0:
                ov = _voc_iou(bbs[j], gtb, one)
                ovmax = float(np.max(ov))
                jmax = int(np.argmax(ov))
            if ovmax > iou_threshold:
                if not diff[jmax]:
                    if not det[jmax]:
                        tp[d] = 1.0
                        det[jmax] = True
                    else:
                        fp[d] = 1.0
            else:
                fp[d] = 1.0
        fp = np.cumsum(fp)
        tp = np.cumsum(tp)
        rec = tp / float(npos)
        prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
        aps[c] = voc_ap(rec, prec, use_07_metric=use_07_metric)
    defined = [v for v in aps.values() if not np.isnan(v)]
    return VocMetrics(aps, float(np.mean(defined)) if defined else float("nan"))
