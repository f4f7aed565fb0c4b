"""Stage-by-stage parity of npfrcnn.FasterRCNN with the TensorFlow reference (weights/tf_reference).

The network is the workshop's at a small depth and width (ResNet-14-ish, units (1, 1, 2, 1),
bottleneck widths 8..64) with random weights, on a small random image, so that CI stays fast;
the same code paths run at full depth in the slow test at the end.

Every stage is checked twice: end to end (our own previous stages) and fed TF's input for that
stage, so that an error shows where it starts.

Tolerances (float32, eps = 2**-23 ~ 1.2e-7):

* convolutions / dense layers / means: BLAS and TF's Eigen sum in different orders. The rounding
  error of a float32 dot product of K terms is at most ~K * eps * sum|terms| and typically
  ~sqrt(K) * eps * sum|terms|. With K <= 3 * 3 * 64 = 576 (the 3x3 convs of the small net) and a
  chain of ~15 convs + BN whose gains are ~1, we expect a relative error (to the largest
  activation) of ~1e-6 and allow ``5e-6 * max|ref|``.
* softmax outputs: the logits carry the error above; softmax's derivative is at most 1/4 per
  logit, plus TF's vectorised ``exp`` differs from NumPy's by an ulp: ``atol = 2e-6``.
* decoded boxes: elementwise, same order as TF, except ``exp`` (Eigen's polynomial vs libm), which
  may differ by ~1 ulp of ``exp(dw)``. A box edge ``cx +- 0.5 * w * exp(dw)`` then moves by about
  ``eps * |w'|``: we allow ``4 * eps * max|box|`` absolute.
* everything that only moves or selects float32 values (anchors, crop_and_resize + max-pool,
  top-k, NMS, gathers) is compared bitwise, and indices must be identical.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import assert_same
from hypothesis import given, settings
from hypothesis import strategies as st

from npfrcnn import Detections, FasterRCNN
from npfrcnn.config import workshop
from npfrcnn.rpn import RPNOutput
from npfrcnn.weights import random_weights

EPS32 = float(np.finfo(np.float32).eps)
NUM_CLASSES = 6
CLASSES = [f"class_{i}" for i in range(NUM_CLASSES)]


def small_config(**changes):
    """Workshop conventions at a small depth and width (the CI network)."""
    kw = dict(
        units_per_block=(1, 1, 2, 1), root_depth=8, base_depths=(8, 16, 32, 64), rpn_depth=32,
        num_classes=NUM_CLASSES,
    )
    kw.update(changes)
    return workshop(**kw)


def conv_tol(ref: np.ndarray) -> float:
    """Absolute tolerance for outputs of a float32 conv chain (module docstring)."""
    return 5e-6 * float(np.abs(ref).max())


def box_tol(ref: np.ndarray) -> float:
    """Absolute tolerance for decoded boxes: ~1 ulp of exp() scaled by the box size."""
    return 4 * EPS32 * max(float(np.abs(ref).max()), 1.0)


def random_image(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    # Smooth-ish image (blocks of noise) so that features have spatial structure.
    base = rng.integers(0, 256, size=(h // 8 + 1, w // 8 + 1, 3))
    img = np.repeat(np.repeat(base, 8, axis=0), 8, axis=1)[:h, :w]
    noise = rng.integers(-20, 21, size=(h, w, 3))
    return np.clip(img + noise, 0, 255).astype(np.uint8)


def tie_groups(scores: np.ndarray, tol: float) -> list[np.ndarray]:
    """Split positions of a non-increasing score list into runs whose scores differ <= tol."""
    groups, start = [], 0
    for i in range(1, len(scores) + 1):
        if i == len(scores) or scores[i - 1] - scores[i] > tol:
            groups.append(np.arange(start, i))
            start = i
    return groups


def assert_same_ranking(ours_ids, tf_ids, tf_scores, tol, what):
    """Identical id sequences, except that ids may permute within groups of tied TF scores."""
    ours_ids, tf_ids = np.asarray(ours_ids), np.asarray(tf_ids)
    assert ours_ids.shape == tf_ids.shape, f"{what}: {ours_ids.shape} != {tf_ids.shape}"
    for g in tie_groups(np.asarray(tf_scores), tol):
        if len(g) == 1:
            assert ours_ids[g[0]] == tf_ids[g[0]], f"{what}: differs at position {g[0]}"
        else:
            assert set(ours_ids[g].tolist()) == set(tf_ids[g].tolist()), (
                f"{what}: tied group at positions {g[0]}..{g[-1]} differs"
            )


class Case:
    """One network + image, run by both implementations (built once per module)."""

    def __init__(self, tf, config, image, seed=1):
        from npfrcnn.weights.tf_reference import TFReference

        self.config = config
        self.image = image
        self.shape = image.shape[:2]
        self.weights = random_weights(config, seed=seed)
        self.ref = TFReference(config, self.weights).run(image)
        classes = [f"class_{i}" for i in range(config.num_classes)]
        self.model = FasterRCNN(config, classes, self.weights, backend="cpu")
        self.ours = self.model.run_stages(image)

    def proposal_anchor_ids(self, kept, top, sel):
        return np.asarray(kept)[np.asarray(top)[np.asarray(sel)]]


@pytest.fixture(scope="module")
def case(tf):
    return Case(tf, small_config(), random_image(112, 144, seed=0))


@pytest.fixture(scope="module")
def tight_case(tf):
    """Limits that bind: fewer anchors kept before NMS, few proposals, few detections."""
    cfg = small_config(
        rpn_pre_nms_top_n=300, rpn_post_nms_top_n=60, class_max_detections=7,
        total_max_detections=25,
    )
    return Case(tf, cfg, random_image(96, 128, seed=3), seed=4)


# Stage 0-1: preprocessing and features ------------------------------------------------------


def test_preprocess_bitwise(case):
    # cast to float32 and subtract float32 means: the same two roundings as TF.
    assert_same(case.ours["input"], case.ref["input"])


def test_features_end_to_end(case):
    ref = case.ref["features"]
    assert ref.shape[1:3] == case.model.feature_map_shape(*case.shape)
    assert_same(case.ours["features"], ref, atol=conv_tol(ref))


def test_features_fed_tf_input(case):
    ref = case.ref["features"]
    assert_same(case.model.features(case.ref["input"]), ref, atol=conv_tol(ref))


# Stage 2: RPN head and anchors ----------------------------------------------------------------


def test_anchors_bitwise(case):
    assert_same(case.ours["anchors"], case.ref["anchors"])


@pytest.mark.parametrize("fed", [False, True], ids=["end_to_end", "fed_tf_features"])
def test_rpn_outputs(case, fed):
    out = case.model.rpn(case.ref["features"]) if fed else case.ours["rpn"]
    assert_same(out.bbox_pred, case.ref["rpn_bbox_pred"], atol=conv_tol(case.ref["rpn_bbox_pred"]))
    assert_same(out.cls_prob, case.ref["rpn_cls_prob"], atol=2e-6)


# Stage 3: proposals ---------------------------------------------------------------------------


def _fed_proposals(c):
    rpn = RPNOutput(c.ref["rpn_bbox_pred"], c.ref["rpn_cls_prob"], c.ref["features"].shape[1:3])
    return c.model.proposals(rpn, c.shape, anchors=c.ref["anchors"])


@pytest.mark.parametrize("which", ["case", "tight_case"])
def test_proposals_fed_tf_rpn_outputs(which, request):
    c = request.getfixturevalue(which)
    p = _fed_proposals(c)
    assert_same(p.decoded, c.ref["rpn_decoded"], atol=box_tol(c.ref["rpn_decoded"]))
    assert_same(p.kept, c.ref["rpn_kept"])
    # top-k and NMS indices must be identical (same float32 scores in, TF's tie rules).
    assert_same(p.top_k, c.ref["rpn_top_k"].astype(np.int64))
    assert_same(p.nms, c.ref["rpn_nms"].astype(np.int64))
    assert_same(p.scores, c.ref["rpn_scores"])
    assert_same(p.boxes, c.ref["rpn_proposals"], atol=box_tol(c.ref["rpn_proposals"]))


@pytest.mark.parametrize("which", ["case", "tight_case"])
def test_proposals_end_to_end(which, request):
    c = request.getfixturevalue(which)
    p = c.ours["proposals"]
    ref_ids = c.proposal_anchor_ids(c.ref["rpn_kept"], c.ref["rpn_top_k"], c.ref["rpn_nms"])
    ids = c.proposal_anchor_ids(p.kept, p.top_k, p.nms)
    # Our scores differ from TF's by the softmax tolerance; proposals whose TF scores lie within
    # that tolerance are ties and may come in either order.
    assert_same_ranking(ids, ref_ids, c.ref["rpn_scores"], 4e-6, "proposal anchor ids")
    order = np.argsort(ids, kind="stable")
    ref_order = np.argsort(ref_ids, kind="stable")
    assert_same(p.scores[order], c.ref["rpn_scores"][ref_order], atol=2e-6)
    assert_same(
        p.boxes[order], c.ref["rpn_proposals"][ref_order],
        atol=box_tol(c.ref["rpn_proposals"]) + conv_tol(c.ref["rpn_proposals"]),
    )


def test_tight_case_limits_bind(tight_case):
    c = tight_case
    assert len(c.ref["rpn_top_k"]) == 300 < len(c.ref["rpn_kept"])
    assert len(c.ref["rpn_nms"]) == 60
    assert len(c.ref["probs"]) == 25


def test_workshop_numbers_used(case):
    # The default small case runs the workshop's 12,000 / 2,000 / NMS 0.7 / 100 / 300 numbers.
    cfg = case.config
    assert (cfg.rpn_pre_nms_top_n, cfg.rpn_post_nms_top_n, cfg.rpn_nms_threshold) == (
        12000, 2000, 0.7,
    )
    assert (cfg.class_max_detections, cfg.total_max_detections, cfg.min_prob) == (100, 300, 0.0)
    assert len(case.ref["probs"]) == 300


# Stage 4: RoI pooling -------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["case", "tight_case"])
def test_roi_pool_fed_tf_inputs_bitwise(which, request):
    c = request.getfixturevalue(which)
    pooled = c.model.pool_rois(c.ref["features"], c.ref["rpn_proposals"], c.shape)
    assert_same(pooled, c.ref["pooled"])


def test_roi_pool_end_to_end(case):
    p = case.ours["proposals"]
    ref_ids = case.proposal_anchor_ids(
        case.ref["rpn_kept"], case.ref["rpn_top_k"], case.ref["rpn_nms"]
    )
    ids = case.proposal_anchor_ids(p.kept, p.top_k, p.nms)
    order, ref_order = np.argsort(ids, kind="stable"), np.argsort(ref_ids, kind="stable")
    ref = case.ref["pooled"]
    # Features carry conv_tol; bilinear weights are a convex combination, so the same bound
    # holds, plus the sampling grid moves with the proposal's (box_tol) position error.
    assert_same(case.ours["pooled"][order], ref[ref_order], atol=2 * conv_tol(ref))


# Stage 5: head --------------------------------------------------------------------------------


def test_head_fed_tf_pooled(case):
    bbox, prob = case.model.head(case.ref["pooled"])
    assert_same(bbox, case.ref["bbox_pred"], atol=conv_tol(case.ref["bbox_pred"]))
    assert_same(prob, case.ref["cls_prob"], atol=2e-6)


# Stage 6: final detections --------------------------------------------------------------------


@pytest.mark.parametrize("which", ["case", "tight_case"])
def test_detections_fed_tf_inputs(which, request):
    c = request.getfixturevalue(which)
    d = c.model.detections(c.ref["rpn_proposals"], c.ref["bbox_pred"], c.ref["cls_prob"], c.shape)
    assert isinstance(d, Detections)
    # Same float32 probabilities in: the per-class NMS and the final top-k select identically.
    assert_same(d.labels, c.ref["labels"].astype(np.int64))
    assert_same(d.scores, c.ref["probs"])
    assert_same(d.boxes, c.ref["boxes"], atol=box_tol(c.ref["boxes"]))
    assert d.class_names == [CLASSES[i] for i in c.ref["labels"]]


@pytest.mark.parametrize("which", ["case", "tight_case"])
def test_detections_end_to_end(which, request):
    c = request.getfixturevalue(which)
    d = c.ours["detections"]
    ref_labels, ref_probs, ref_boxes = c.ref["labels"], c.ref["probs"], c.ref["boxes"]
    assert len(d) == len(ref_labels)
    assert_same(d.scores, ref_probs, atol=2e-6)
    # Ranked lists equal modulo ties: within each run of TF scores equal to within 4e-6 (twice
    # the softmax tolerance), every detection must pair with a distinct TF detection of the
    # same label whose box is within tolerance; elsewhere position i must match position i.
    tol = box_tol(ref_boxes) + conv_tol(ref_boxes)
    for g in tie_groups(ref_probs, 4e-6):
        unmatched = list(g)
        for i in g:
            hit = [
                j for j in unmatched
                if d.labels[i] == ref_labels[j] and np.abs(d.boxes[i] - ref_boxes[j]).max() <= tol
            ]
            assert hit, f"detection {i} (label {d.labels[i]}) has no TF counterpart in its group"
            unmatched.remove(hit[0])


def test_detect_matches_run_stages_and_times_every_stage(case):
    timings: dict[str, float] = {}
    d = case.model.detect(case.image, timings=timings)
    ref = case.ours["detections"]
    assert_same(d.boxes, ref.boxes)
    assert_same(d.labels, ref.labels)
    assert_same(d.scores, ref.scores)
    assert set(timings) == {
        "preprocess", "features", "rpn", "proposals", "roi_pool", "head", "detections",
    }
    assert all(v >= 0 for v in timings.values())


def test_detect_min_prob_and_max_detections(case):
    d = case.model.detect(case.image, min_prob=0.3, max_detections=5)
    assert len(d) <= 5
    assert (d.scores >= np.float32(0.3)).all()
    full = case.ours["detections"]
    want = full.scores[full.scores >= np.float32(0.3)][:5]
    assert_same(d.scores, want)


def test_numpy_backend_same_as_cpu(case):
    m = FasterRCNN(case.config, CLASSES, case.weights, backend="numpy")
    p = m.proposals(case.ours["rpn"], case.shape)
    ref = case.ours["proposals"]
    assert_same(p.nms, ref.nms)
    assert_same(p.boxes, ref.boxes)
    pooled = m.pool_rois(case.ours["features"], ref.boxes[:50], case.shape)
    assert_same(pooled, case.ours["pooled"][:50])


def test_from_hdf5_round_trip(case, tmp_path):
    from npfrcnn.weights import write

    path = write(tmp_path / "m.h5", case.config, CLASSES, case.weights, {"source": "test"})
    m = FasterRCNN.from_hdf5(path)
    d = m.detect(case.image)
    assert_same(d.scores, case.ours["detections"].scores)
    assert m.classes == CLASSES and m.config == case.config


def test_bad_image_rejected(case):
    with pytest.raises(ValueError, match="image must be"):
        case.model.detect(np.zeros((10, 10), np.uint8))
    with pytest.raises(ValueError, match="min_prob"):
        case.model.detect(case.image, min_prob=1.5)


# The six workshop photos: feature-map and anchor counts ----------------------------------------

PHOTO_TABLE = {  # ../shared/data/README.md (VALID pool1 column)
    "bicycles.jpg": ((40, 60), 36000),
    "cats.jpg": ((40, 61), 36600),
    "horse.jpg": ((58, 46), 40020),
    "kids.jpg": ((38, 60), 34200),
    "kittens.png": ((56, 75), 63000),
    "woman.jpg": ((32, 46), 22080),
}


def _photo(shared_dir, name):
    from PIL import Image

    with Image.open(shared_dir / "data" / "workshop-images" / name) as im:
        return np.asarray(im.convert("RGB"))  # the workshop's open_image


def test_workshop_photo_feature_maps(shared_dir):
    # Run the backbone itself (narrow widths keep it cheap; sizes do not depend on widths).
    cfg = small_config(units_per_block=(3, 4, 23, 3), root_depth=2, base_depths=(1, 1, 1, 1))
    model = FasterRCNN(cfg, CLASSES, random_weights(cfg), backend="cpu")
    for name, ((h_f, w_f), n_anchors) in PHOTO_TABLE.items():
        img = _photo(shared_dir, name)
        fm = model.features(model.preprocess(img))
        assert fm.shape[1:3] == (h_f, w_f), name
        assert model.feature_map_shape(*img.shape[:2]) == (h_f, w_f), name
        assert model.anchors(fm.shape[1:3]).shape == (n_anchors, 4), name
        assert model.num_anchors(*img.shape[:2]) == n_anchors, name
    assert json.dumps(cfg.pool1_padding) == '"VALID"'


# Full depth (slow) ------------------------------------------------------------------------------


@pytest.mark.slow
def test_full_depth_resnet101_on_workshop_photo(tf, shared_dir):
    """ResNet-101 at full width, random weights, woman.jpg (731 x 508): all stages vs TF."""
    cfg = workshop(depth=101, num_classes=80)
    c = Case(tf, cfg, _photo(shared_dir, "woman.jpg"), seed=0)
    ref = c.ref
    # 33 units deep: the per-conv error of the module docstring (K up to 4,608 at full width)
    # compounds over ~100 convs; we allow 5e-5 of the largest activation.
    assert_same(c.ours["features"], ref["features"], atol=5e-5 * np.abs(ref["features"]).max())
    p = _fed_proposals(c)
    assert_same(p.nms, ref["rpn_nms"].astype(np.int64))
    assert_same(p.boxes, ref["rpn_proposals"], atol=box_tol(ref["rpn_proposals"]))
    pooled = c.model.pool_rois(ref["features"], ref["rpn_proposals"], c.shape)
    assert_same(pooled, ref["pooled"])
    bbox, prob = c.model.head(ref["pooled"])
    assert_same(bbox, ref["bbox_pred"], atol=5e-5 * np.abs(ref["bbox_pred"]).max())
    assert_same(prob, ref["cls_prob"], atol=2e-5)
    d = c.model.detections(ref["rpn_proposals"], ref["bbox_pred"], ref["cls_prob"], c.shape)
    assert_same(d.labels, ref["labels"].astype(np.int64))
    assert_same(d.scores, ref["probs"])
    e2e = c.ours["detections"]
    assert len(e2e) == len(ref["labels"]) == 300
    assert_same(e2e.scores, ref["probs"], atol=2e-5)


# Edge cases (no TF needed) ----------------------------------------------------------------------


def test_no_positive_area_proposal_gives_empty_detections():
    cfg = small_config()
    m = FasterRCNN(cfg, CLASSES, random_weights(cfg), backend="cpu")
    k = cfg.num_anchors
    # Deltas dw = dh = -inf shrink every anchor to a point: area 0, all filtered.
    deltas = np.tile(np.array([0, 0, -np.inf, -np.inf], np.float32), (k, 1))
    rpn = RPNOutput(deltas, np.full((k, 2), 0.5, np.float32), (1, 1))
    p = m.proposals(rpn, (16, 16))
    assert p.boxes.shape == (0, 4) and p.scores.shape == (0,)
    pooled = m.pool_rois(np.zeros((1, 1, 1, 128), np.float32), p.boxes, (16, 16))
    assert pooled.shape == (0, 7, 7, 128)
    bbox, prob = m.head(pooled)
    assert bbox.shape == (0, 4 * NUM_CLASSES) and prob.shape == (0, NUM_CLASSES + 1)
    d = m.detections(p.boxes, bbox, prob, (16, 16))
    assert len(d) == 0 and d.boxes.shape == (0, 4) and d.class_names == []


def test_smallest_image():
    cfg = small_config()
    m = FasterRCNN(cfg, CLASSES, random_weights(cfg), backend="cpu")
    with pytest.raises(ValueError, match="too small"):
        m.detect(np.zeros((4, 40, 3), np.uint8))
    assert m.feature_map_shape(5, 5) == (1, 1)
    d = m.detect(np.zeros((5, 5, 3), np.uint8))
    assert d.boxes.dtype == np.float32 and d.labels.dtype == np.int64


@pytest.fixture(scope="module")
def narrow_models():
    out = {}
    for pad in ("VALID", "SAME"):
        cfg = small_config(
            units_per_block=(1, 1, 1, 1), root_depth=2, base_depths=(1, 1, 1, 1), pool1_padding=pad
        )
        out[pad] = FasterRCNN(cfg, CLASSES, random_weights(cfg), backend="cpu")
    return out


@settings(max_examples=15)
@given(h=st.integers(5, 90), w=st.integers(5, 90), pad=st.sampled_from(["VALID", "SAME"]))
def test_feature_map_shape_matches_backbone(narrow_models, h, w, pad):
    from npfrcnn.anchors import feature_map_size

    m = narrow_models[pad]
    fm = m.features(m.preprocess(np.zeros((h, w, 3), np.uint8)))
    assert fm.shape[1:3] == m.feature_map_shape(h, w) == feature_map_size(h, w, pad)


def test_config_values_the_model_does_not_run_are_refused_up_front():
    # ModelConfig can describe other systems (Detectron2's RoIAlign, sigmoid objectness); the
    # model refuses them at construction, naming each, rather than computing something else.
    cfg = small_config(roi_op="roi_align", rpn_objectness="sigmoid")
    with pytest.raises(NotImplementedError, match=r"rpn_objectness='sigmoid'.*roi_op='roi_align'"):
        FasterRCNN(cfg, CLASSES, random_weights(cfg), backend="cpu")
    # The stage function guards itself too, for callers that bypass the model.
    from npfrcnn import rcnn

    with pytest.raises(NotImplementedError, match="roi_op 'roi_align'"):
        rcnn.roi_pool(np.zeros((1, 4, 4, 8), np.float32), np.zeros((1, 4)), (64, 64), cfg)
