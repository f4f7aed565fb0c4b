"""npfrcnn.evaluate: COCO metrics against pycocotools (the reference implementation), hand-worked
COCO cases for what pycocotools cannot run (empty results), and hand-worked Pascal VOC AP."""

from __future__ import annotations

import contextlib
import copy
import io
import math

import numpy as np
import pytest
from hypothesis import given

from npfrcnn.evaluate import (
    IOU_THRESHOLDS,
    STAT_NAMES,
    coco_box_iou,
    coco_metrics,
    coco_metrics_from_json,
    voc_ap,
    voc_metrics,
)
from tests.helpers import assert_same
from tests.strategies import coco_datasets

# Both sides run the same float64 operations; only np.mean's pairwise summation over
# differently shaped selections could differ, by a few ulp. The issue asks for 1e-6.
COCO_ATOL = 1e-12


def _pycocotools(dataset: dict, results: list):
    coco = pytest.importorskip("pycocotools.coco")
    cocoeval = pytest.importorskip("pycocotools.cocoeval")
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress and tables
        gt = coco.COCO()
        gt.dataset = copy.deepcopy(dataset)
        gt.createIndex()
        dt = gt.loadRes(copy.deepcopy(results))
        ev = cocoeval.COCOeval(gt, dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


def _per_image(dataset: dict, results: list):
    """The same data as npfrcnn's in-memory input, images in sorted id order, xywh boxes."""
    ids = sorted(im["id"] for im in dataset["images"])
    gts = {i: {"boxes": [], "classes": [], "area": [], "iscrowd": []} for i in ids}
    dts = {i: {"boxes": [], "scores": [], "classes": []} for i in ids}
    for a in dataset["annotations"]:
        g = gts[a["image_id"]]
        g["boxes"].append(a["bbox"])
        g["classes"].append(a["category_id"])
        g["area"].append(a["area"])
        g["iscrowd"].append(bool(a["iscrowd"]))
    for r in results:
        d = dts[r["image_id"]]
        d["boxes"].append(r["bbox"])
        d["scores"].append(r["score"])
        d["classes"].append(r["category_id"])
    return [gts[i] for i in ids], [dts[i] for i in ids]


def _assert_same_as_pycocotools(ours, ev) -> None:
    k = ev.eval["precision"].shape[2]
    cats = sorted(ev.cocoGt.getCatIds())
    # pycocotools keeps a K slot for every dataset category; classes without ground truth stay
    # -1 there, and the in-memory API leaves them out (they never count in a mean).
    keep = [cats.index(c) for c in ours.classes.tolist()]
    assert_same(ours.stats, np.asarray(ev.stats), atol=COCO_ATOL)
    assert_same(ours.precision, ev.eval["precision"][:, :, keep], atol=COCO_ATOL)
    assert_same(ours.recall, ev.eval["recall"][:, keep], atol=COCO_ATOL)
    dropped = [i for i in range(k) if i not in keep]
    assert (ev.eval["precision"][:, :, dropped] == -1).all()


@given(data=coco_datasets())
def test_coco_from_json_matches_pycocotools(data):
    dataset, results = data
    if not results:  # pycocotools' loadRes crashes on an empty list (tested by hand below)
        return
    ev = _pycocotools(dataset, results)
    ours = coco_metrics_from_json(dataset, results)
    assert_same(ours.stats, np.asarray(ev.stats), atol=COCO_ATOL)
    assert_same(ours.precision, ev.eval["precision"], atol=COCO_ATOL)
    assert_same(ours.recall, ev.eval["recall"], atol=COCO_ATOL)


@given(data=coco_datasets(max_images=4, max_classes=8))
def test_coco_in_memory_matches_pycocotools(data):
    dataset, results = data
    if not results:
        return
    ev = _pycocotools(dataset, results)
    gts, dts = _per_image(dataset, results)
    _assert_same_as_pycocotools(coco_metrics(gts, dts, box_format="xywh"), ev)


def test_coco_many_detections_per_image_matches_pycocotools():
    """More than 100 detections per image (the maxDets cut) and many classes."""
    rs = np.random.default_rng(12345)
    images = [{"id": i} for i in (7, 3, 11)]
    anns, results = [], []
    for im in images:
        for _ in range(40):
            x, y = rs.uniform(0, 400, 2).tolist()
            w, h = rs.uniform(5, 150, 2).tolist()
            c = int(rs.integers(1, 13))
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": im["id"],
                    "category_id": c,
                    "bbox": [x, y, w, h],
                    "area": w * h,
                    "iscrowd": int(rs.random() < 0.05),
                }
            )
            for _ in range(4):
                jitter = rs.normal(0, 6, 4).tolist()
                results.append(
                    {
                        "image_id": im["id"],
                        "category_id": c if rs.random() < 0.9 else 1,
                        "bbox": [
                            x + jitter[0],
                            y + jitter[1],
                            max(w + jitter[2], 1.0),
                            max(h + jitter[3], 1.0),
                        ],
                        "score": float(np.round(rs.random(), 2)),
                    }  # rounded: many tied scores
                )
    dataset = {
        "images": images,
        "annotations": anns,
        "categories": [{"id": c} for c in range(1, 13)],
    }
    ev = _pycocotools(dataset, results)
    ours = coco_metrics_from_json(dataset, results)
    assert_same(ours.stats, np.asarray(ev.stats), atol=COCO_ATOL)
    assert_same(ours.precision, ev.eval["precision"], atol=COCO_ATOL)
    assert 0 < ours.stats[0] < 1


def test_coco_box_iou_hand_worked():
    gt = np.array([[0, 0, 10, 10], [0, 0, 10, 10]], dtype=np.float64)  # xywh
    dt = np.array([[5, 0, 10, 10], [20, 20, 1, 1], [10, 0, 5, 5]], dtype=np.float64)
    iou = coco_box_iou(dt, gt, np.array([False, True]))
    # 50 / 150; crowd: 50 / area(dt) = 0.5; disjoint 0; touching edges (w = 0) 0
    expected = np.array([[1 / 3, 0.5], [0, 0], [0, 0]])
    assert_same(iou, expected, rtol=1e-15)


def _near(value: float, expected: float) -> bool:
    """COCOeval's precision is ``tp / (tp + fp + np.spacing(1))``: a perfect 1 is 1 - 2e-16."""
    return math.isclose(value, expected, rel_tol=1e-12, abs_tol=0.0)


def _img(boxes, classes, **extra):
    return {
        "boxes": np.asarray(boxes, dtype=np.float64).reshape(-1, 4),
        "classes": classes,
        **extra,
    }


def test_coco_hand_worked_perfect_and_partial():
    gt = [_img([[0, 0, 40, 40]], [1])]  # area 1600: medium
    perfect = [{"boxes": [[0, 0, 40, 40]], "scores": [0.9], "classes": [1]}]
    m = coco_metrics(gt, perfect).as_dict()
    assert all(_near(m[k], 1.0) for k in ("AP", "AP50", "AP75", "AP_medium"))
    assert m["AR1"] == m["AR100"] == m["AR_medium"] == 1.0
    assert m["AP_small"] == m["AP_large"] == m["AR_small"] == m["AR_large"] == -1.0
    # x shifted by 9.35: IoU = 30.65 * 40 / (3200 - 30.65 * 40) = 0.6221..., a match at
    # thresholds .50, .55, .60 only: AP = AR = 3 / 10.
    shifted = [{"boxes": [[9.35, 0, 49.35, 40]], "scores": [0.9], "classes": [1]}]
    m = coco_metrics(gt, shifted).as_dict()
    assert math.isclose(m["AP"], 0.3, rel_tol=1e-12)
    assert _near(m["AP50"], 1.0) and m["AP75"] == 0.0
    assert math.isclose(m["AR100"], 0.3, rel_tol=1e-12)
    # A second, lower-scored duplicate is a false positive after the true positive: at 101
    # recall points precision stays 1 up to recall 1, so AP is unchanged.
    dup = [{"boxes": [[0, 0, 40, 40], [0, 0, 40, 40]], "scores": [0.9, 0.8], "classes": [1, 1]}]
    assert _near(coco_metrics(gt, dup).as_dict()["AP"], 1.0)
    # Equal scores keep input order (stable sort): here a false positive, then the hit.
    fp_first = [
        {"boxes": [[100, 100, 140, 140], [0, 0, 40, 40]], "scores": [0.9, 0.9], "classes": [1, 1]}
    ]
    # FP then TP: precision at recall 1 is 1/2 -> AP50 = 0.5
    assert _near(coco_metrics(gt, fp_first).as_dict()["AP50"], 0.5)


def test_coco_crowd_region_absorbs_detections():
    gt = [_img([[0, 0, 40, 40], [100, 0, 300, 200]], [1, 1], iscrowd=[False, True])]
    # two detections inside the crowd region (IoU = inter / det area = 1) are ignored, not FPs
    dets = [
        {
            "boxes": [[120, 20, 160, 60], [200, 100, 240, 140], [0, 0, 40, 40]],
            "scores": [0.95, 0.9, 0.5],
            "classes": [1, 1, 1],
        }
    ]
    m = coco_metrics(gt, dets).as_dict()
    assert _near(m["AP"], 1.0) and m["AR100"] == 1.0
    # The same region without iscrowd: two false positives ahead of the true positive.
    plain = [_img([[0, 0, 40, 40], [100, 0, 300, 200]], [1, 1])]
    assert coco_metrics(plain, dets).as_dict()["AP50"] < 1.0


def test_coco_match_to_regular_gt_is_not_traded_for_an_ignored_one():
    # Two identical gts, the second a crowd region: the detection (IoU 1 with both) keeps the
    # regular gt, because matching stops at the first ignored gt once it holds a regular one.
    gt = [_img([[0, 0, 40, 40], [0, 0, 40, 40]], [1, 1], iscrowd=[False, True])]
    dets = [{"boxes": [[0, 0, 40, 40]], "scores": [0.9], "classes": [1]}]
    assert _near(coco_metrics(gt, dets).as_dict()["AP"], 1.0)
    # Only the crowd region: the detection is ignored and there is no positive at all.
    crowd_only = [_img([[0, 0, 40, 40]], [1], iscrowd=[True])]
    assert coco_metrics(crowd_only, dets).as_dict()["AP"] == -1.0


def test_coco_ignore_flag_is_like_an_ignored_region_matched_once():
    gt = [_img([[0, 0, 40, 40], [100, 100, 140, 140]], [1, 1], ignore=[False, True])]
    dets = [
        {
            "boxes": [[100, 100, 140, 140], [100, 100, 140, 140], [0, 0, 40, 40]],
            "scores": [0.9, 0.8, 0.7],
            "classes": [1, 1, 1],
        }
    ]
    # det 0 matches the ignored gt (ignored); det 1 cannot re-match it (not crowd): FP; det 2 TP
    m = coco_metrics(gt, dets)
    assert _near(m.as_dict()["AP50"], 0.5)


def test_coco_empty_detections_are_zero_not_a_crash():
    gt = [_img([[0, 0, 10, 10]], [1]), _img([[0, 0, 200, 200]], [2]), {}]
    m = coco_metrics(gt, [{}, {"boxes": np.zeros((0, 4))}, {}])
    expected = dict.fromkeys(STAT_NAMES, 0.0)
    expected["AP_medium"] = expected["AR_medium"] = -1.0  # no ground truth of medium size
    assert m.as_dict() == expected
    j = coco_metrics_from_json(
        {
            "images": [{"id": 1}],
            "categories": [{"id": 1}],
            "annotations": [
                {
                    "id": 1,
                    "image_id": 1,
                    "category_id": 1,
                    "bbox": [0, 0, 10, 10],
                    "area": 100.0,
                    "iscrowd": 0,
                }
            ],
        },
        [],
    )
    assert j.as_dict()["AP"] == 0.0 and j.as_dict()["AP_large"] == -1.0


def test_coco_empty_ground_truth_is_undefined():
    dets = [{"boxes": [[0, 0, 10, 10]], "scores": [0.5], "classes": [1]}]
    for gt, dt in (([{}], dets), ([{}], [{}]), ([], [])):
        m = coco_metrics(gt, dt)
        assert_same(m.stats, np.full(12, -1.0))
        assert m.precision.shape == (10, 101, 0, 4, 3)


def test_coco_constants_are_cocoevals():
    assert IOU_THRESHOLDS.shape == (10,) and np.where(0.75 == IOU_THRESHOLDS)[0].tolist() == [5]


def test_coco_bad_input_messages():
    with pytest.raises(ValueError, match="one entry per image"):
        coco_metrics([{}], [])
    with pytest.raises(ValueError, match="no 'classes'"):
        coco_metrics([{"boxes": [[0, 0, 1, 1]]}], [{}])
    with pytest.raises(ValueError, match="box_format"):
        coco_metrics([{}], [{}], box_format="yxyx")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not among the dataset's images"):
        coco_metrics_from_json(
            {"images": [{"id": 1}], "annotations": [], "categories": []},
            [{"image_id": 2, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 1.0}],
        )


# ----------------------------------------------------------------------------- Pascal VOC


def test_voc_ap_hand_worked_curves():
    # TP, FP, TP against 2 positives: recall [.5, .5, 1], precision [1, .5, 2/3].
    rec = np.array([0.5, 0.5, 1.0])
    prec = np.array([1.0, 0.5, 2 / 3])
    # area: 0.5 * 1 + 0.5 * 2/3 (precision made non-increasing from the right)
    assert math.isclose(voc_ap(rec, prec), 0.5 + 1 / 3, rel_tol=1e-15)
    # 11-point: t = 0 .. 0.5 take max precision 1 (6 points), t = 0.6 .. 1.0 take 2/3 (5)
    assert math.isclose(voc_ap(rec, prec, use_07_metric=True), (6 + 5 * 2 / 3) / 11, rel_tol=1e-15)
    assert voc_ap(np.zeros(0), np.zeros(0)) == 0.0


def test_voc_metrics_hand_worked():
    gt = [
        _img([[0, 0, 9, 9], [20, 20, 29, 29]], [1, 1]),
        _img([[0, 0, 9, 9]], [2], difficult=[True]),
    ]
    dets = [
        {
            "boxes": [[0, 0, 9, 9], [50, 50, 59, 59], [20, 20, 29, 29], [0, 0, 9, 9]],
            "scores": [0.9, 0.8, 0.7, 0.6],
            "classes": [1, 1, 1, 1],
        },
        {"boxes": [[0, 0, 9, 9]], "scores": [0.99], "classes": [2]},
    ]
    m = voc_metrics(gt, dets)
    # class 1: TP, FP, TP, FP (duplicate) -> rec [.5,.5,1,1], prec [1,.5,2/3,1/2] -> 0.8333
    assert math.isclose(m.ap[1], 0.5 + 1 / 3, rel_tol=1e-15)
    # class 2: only a difficult object: no positives, AP undefined
    assert math.isnan(m.ap[2])
    assert math.isclose(m.mean_ap, 0.5 + 1 / 3, rel_tol=1e-15)
    m07 = voc_metrics(gt, dets, use_07_metric=True)
    assert math.isclose(m07.ap[1], (6 + 5 * 2 / 3) / 11, rel_tol=1e-15)


def test_voc_difficult_detection_is_neither_tp_nor_fp():
    gt = [_img([[0, 0, 9, 9], [20, 20, 29, 29]], [1, 1], difficult=[False, True])]
    dets = [{"boxes": [[20, 20, 29, 29], [0, 0, 9, 9]], "scores": [0.9, 0.8], "classes": [1, 1]}]
    assert voc_metrics(gt, dets).ap[1] == 1.0  # the hit on the difficult box is not a FP


def test_voc_threshold_is_strict_and_plus_one():
    gt = [_img([[0, 0, 9, 9]], [1])]  # 10 x 10 inclusive pixels
    half = [{"boxes": [[0, 0, 9, 4]], "scores": [1.0], "classes": [1]}]  # 50 / 100 = 0.5
    assert voc_metrics(gt, half).ap[1] == 0.0  # IoU must be > 0.5
    # without +1: a 9 x 4 box inside a 9 x 9 one -> 36 / 81, still a miss
    assert voc_metrics(gt, half, plus_one=False).ap[1] == 0.0
    more = [{"boxes": [[0, 0, 9, 5]], "scores": [1.0], "classes": [1]}]  # 60 / 100
    assert voc_metrics(gt, more).ap[1] == 1.0


def test_voc_empty_inputs():
    gt = [_img([[0, 0, 9, 9]], [1])]
    m = voc_metrics(gt, [{}])
    assert m.ap == {1: 0.0} and m.mean_ap == 0.0
    m = voc_metrics([{}], [{"boxes": [[0, 0, 1, 1]], "scores": [1.0], "classes": [3]}])
    assert math.isnan(m.ap[3]) and math.isnan(m.mean_ap)
    assert voc_metrics([], []).ap == {}
