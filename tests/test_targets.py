"""npfrcnn.targets: hand-worked cases, invariants, and agreement with a loop-based transcription
of the rules (written from the spec and the docstrings, not from the vectorised code)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings

from npfrcnn import boxes
from npfrcnn.targets import (
    AnchorTargetConfig,
    ProposalTargetConfig,
    anchor_targets,
    per_class_targets,
    proposal_targets,
)
from tests.helpers import assert_same
from tests.strategies import target_scenes

F = np.float32

# ----------------------------------------------------------------------------- loop reference


def _iou32(a, b, plus_one: bool) -> np.float32:
    """One IoU in float32 scalars: ``inter / (area_a + area_b - inter)``, 0 if the union <= 0."""
    one = F(1.0 if plus_one else 0.0)
    area_a = (F(a[2]) - F(a[0]) + one) * (F(a[3]) - F(a[1]) + one)
    area_b = (F(b[2]) - F(b[0]) + one) * (F(b[3]) - F(b[1]) + one)
    w = max(min(F(a[2]), F(b[2])) - max(F(a[0]), F(b[0])) + one, F(0.0))
    h = max(min(F(a[3]), F(b[3])) - max(F(a[1]), F(b[1])) + one, F(0.0))
    inter = F(w * h)
    union = F(area_a + area_b - inter)
    return F(inter / union) if union > 0 else F(0.0)


def _encode64(g, a, plus_one: bool, variances) -> list[float]:
    one = 1.0 if plus_one else 0.0
    aw, ah = float(a[2]) - float(a[0]) + one, float(a[3]) - float(a[1]) + one
    gw, gh = float(g[2]) - float(g[0]) + one, float(g[3]) - float(g[1]) + one
    acx, acy = float(a[0]) + 0.5 * aw, float(a[1]) + 0.5 * ah
    gcx, gcy = float(g[0]) + 0.5 * gw, float(g[1]) + 0.5 * gh
    d = [(gcx - acx) / aw, (gcy - acy) / ah, math.log(gw / aw), math.log(gh / ah)]
    if variances is not None:
        v = list(variances)
        if len(v) == 2:
            v = [v[0], v[0], v[1], v[1]]
        d = [d[k] / v[k] for k in range(4)]
    return d


def _loop_sample(labels: list[int], cfg, rng: np.random.Generator) -> None:
    fg = [i for i, lab in enumerate(labels) if lab > 0]
    if cfg.foreground_fraction is not None:
        cap = int(cfg.foreground_fraction * cfg.minibatch_size)
    else:
        cap = int(cfg.minibatch_size / (1.0 + cfg.background_ratio))
    if len(fg) > cap:
        for i in rng.permutation(np.array(fg, dtype=np.int64))[: len(fg) - cap]:
            labels[int(i)] = -1
    n_fg = sum(1 for lab in labels if lab > 0)
    if cfg.foreground_fraction is not None:
        bg_cap = cfg.minibatch_size - n_fg
    else:
        bg_cap = int(n_fg * cfg.background_ratio)
    bg = [i for i, lab in enumerate(labels) if lab == 0]
    if len(bg) > bg_cap:
        for i in rng.permutation(np.array(bg, dtype=np.int64))[: len(bg) - bg_cap]:
            labels[int(i)] = -1


def loop_anchor_targets(anchors, gt, image_shape, cfg: AnchorTargetConfig, seed: int):
    rng = np.random.default_rng(seed)
    height, width = image_shape
    b = F(cfg.allowed_border)
    inside = [
        i
        for i, a in enumerate(anchors)
        if F(a[0]) >= -b and F(a[1]) >= -b and F(a[2]) < F(width) + b and F(a[3]) < F(height) + b
    ]
    ious = [[_iou32(anchors[i], g, cfg.plus_one) for g in gt] for i in inside]
    gt_max = [max((ious[r][j] for r in range(len(inside))), default=None) for j in range(len(gt))]
    labels_in, best_gt, max_in = [], [], []
    for r in range(len(inside)):
        row = ious[r]
        m = max(row) if row else F(0.0)
        arg = row.index(m) if row else -1
        max_in.append(m)
        best_gt.append(arg)
        if cfg.background_high_inclusive:
            is_bg = F(cfg.background_threshold_low) <= m <= F(cfg.background_threshold_high)
        else:
            is_bg = F(cfg.background_threshold_low) <= m < F(cfg.background_threshold_high)
        is_best = any(
            row[j] == gt_max[j] and (gt_max[j] > 0 or not cfg.best_match_requires_overlap)
            for j in range(len(gt))
        )
        is_fg = m >= F(cfg.foreground_threshold) or is_best
        lab = -1
        if cfg.clobber_positives:
            lab = 1 if is_fg else lab
            lab = 0 if is_bg else lab
        else:
            lab = 0 if is_bg else lab
            lab = 1 if is_fg else lab
        labels_in.append(lab)
    _loop_sample(labels_in, cfg, rng)
    n = len(anchors)
    labels = np.full(n, -1, dtype=np.int32)
    targets = np.zeros((n, 4), dtype=np.float64)
    max_iou = np.zeros(n, dtype=np.float32)
    matched = np.full(n, -1, dtype=np.int64)
    for r, i in enumerate(inside):
        labels[i] = labels_in[r]
        max_iou[i] = max_in[r]
        matched[i] = best_gt[r]
        if labels_in[r] == 1:
            targets[i] = _encode64(gt[best_gt[r]], anchors[i], cfg.plus_one, cfg.variances)
    return labels, targets, max_iou, matched


def loop_proposal_targets(proposals, gt, classes, cfg: ProposalTargetConfig, seed: int):
    rng = np.random.default_rng(seed)
    n = len(proposals)
    ious = [[_iou32(p, g, cfg.plus_one) for g in gt] for p in proposals]
    labels, best_gt, max_iou = [], [], []
    for i in range(n):
        row = ious[i]
        m = max(row) if row else F(0.0)
        arg = row.index(m) if row else -1
        max_iou.append(m)
        best_gt.append(arg)
        lab = -1
        if F(cfg.background_threshold_low) <= m < F(cfg.background_threshold_high):
            lab = 0
        if m >= F(cfg.foreground_threshold):
            lab = int(classes[arg]) + 1
        labels.append(lab)
    if cfg.best_proposal_per_gt and n:
        for j in range(len(gt)):
            col = [ious[i][j] for i in range(n)]
            best = col.index(max(col))
            if cfg.best_match_requires_overlap and not col[best] > 0:
                continue
            labels[best] = int(classes[j]) + 1
    _loop_sample(labels, cfg, rng)
    targets = np.zeros((n, 4), dtype=np.float64)
    for i in range(n):
        if labels[i] > 0:
            targets[i] = _encode64(gt[best_gt[i]], proposals[i], cfg.plus_one, cfg.variances)
    return (
        np.asarray(labels, dtype=np.int32),
        targets,
        np.asarray(max_iou, dtype=np.float32).reshape(n),
        np.asarray(best_gt, dtype=np.int64).reshape(n),
    )


# Float tolerance for box targets against the loop reference: the library encodes in float32
# (as Luminoth does) and the loop in float64; a coordinate difference of up to ~100 px loses
# ~1e-5 px to float32 rounding, i.e. ~1e-5 in dx for widths >= 1 (x10 with variance 0.1).
TARGET_ATOL = 2e-4
TARGET_RTOL = 1e-5

ANCHOR_CONFIGS = {
    "luminoth": AnchorTargetConfig.luminoth().replace(minibatch_size=16),
    "wheat": AnchorTargetConfig.wheat().replace(minibatch_size=12),
    "luminoth-clobber-border": AnchorTargetConfig.luminoth().replace(
        minibatch_size=10,
        clobber_positives=True,
        allowed_border=4.0,
        best_match_requires_overlap=True,
    ),
}
PROPOSAL_CONFIGS = {
    "luminoth": ProposalTargetConfig.luminoth().replace(minibatch_size=16),
    "wheat": ProposalTargetConfig.wheat().replace(minibatch_size=10),
    "luminoth-overlap": ProposalTargetConfig.luminoth().replace(
        minibatch_size=12, best_match_requires_overlap=True, background_threshold_low=0.1
    ),
}


# ----------------------------------------------------------------------------- hand-worked


IMAGE = (100, 100)
GT = np.array([[10, 10, 49, 49]], dtype=F)  # 40 x 40 with +1 widths, area 1600
ANCHORS = np.array(
    [
        [10, 10, 49, 49],  # 0: IoU 1
        [10, 10, 49, 89],  # 1: 1600 / 3200 = 0.5 -> ignored
        [60, 60, 99, 99],  # 2: IoU 0 -> background
        [-5, 0, 30, 30],  # 3: x1 < 0 -> outside
        [60, 60, 99, 100],  # 4: y2 = 100 is not < 100 -> outside
        [30, 10, 69, 49],  # 5: 800 / 2400 = 1/3 -> ignored
        [35, 10, 74, 49],  # 6: 600 / 2600 -> background
    ],
    dtype=F,
)


def test_anchor_targets_hand_worked_luminoth():
    out = anchor_targets(ANCHORS, GT, IMAGE, AnchorTargetConfig.luminoth(), rng=0)
    assert_same(out.labels, np.array([1, -1, 0, -1, -1, -1, 0], dtype=np.int32))
    assert_same(out.box_targets, np.zeros((7, 4), dtype=F))
    expected_iou = np.array([1, 0.5, 0, 0, 0, 1 / 3, 600 / 2600], dtype=F)
    # float32 IoU against the exact fractions: one rounding of inter / union.
    assert_same(out.max_iou, expected_iou, rtol=1e-7, atol=0)
    assert_same(out.matched_gt, np.array([0, 0, 0, -1, -1, 0, 0], dtype=np.int64))


def test_best_anchor_rule_and_clobbering():
    # A 20 x 20 gt whose best anchor (2) reaches only 400 / 1600 = 0.25 < 0.3.
    gt = np.array([[60, 60, 79, 79]], dtype=F)
    lum = anchor_targets(ANCHORS, gt, IMAGE, AnchorTargetConfig.luminoth(), rng=0)
    assert lum.labels[2] == 1  # Luminoth: background first, then the best anchor -> 1
    # widths 40 -> 20 (+1 convention): dx = (70 - 80) / 40, dw = log(20 / 40)
    expected = np.array([-0.25, -0.25, -math.log(2), -math.log(2)], dtype=F)
    assert_same(lum.box_targets[2], expected, rtol=1e-6, atol=1e-7)  # float32 log
    clobber = AnchorTargetConfig.luminoth().replace(clobber_positives=True)
    out = anchor_targets(ANCHORS, gt, IMAGE, clobber, rng=0)
    assert out.labels[2] == 0  # background assigned last (wheat's order) clobbers it
    assert_same(out.box_targets[2], np.zeros(4, dtype=F))
    # wheat: the same clobbering leaves no foreground, and int(0 * 2) = 0 background are kept.
    wheat = anchor_targets(ANCHORS, gt, IMAGE, AnchorTargetConfig.wheat(), rng=0)
    assert (wheat.labels == -1).all()


def test_thresholds_are_inclusive_or_strict_as_documented():
    gt = np.array([[0, 0, 9, 0]], dtype=F)  # 10 x 1 pixels (+1 convention)
    anchors = np.array(
        [[0, 0, 9, 0], [0, 0, 6, 0], [0, 0, 2, 0], [0, 0, 1, 0]], dtype=F
    )  # IoU 1, 7/10, 3/10, 2/10: float32(7 / 10) == float32(0.7) and likewise 0.3
    cfg = AnchorTargetConfig.luminoth()
    out = anchor_targets(anchors, gt, (5, 20), cfg, rng=0)
    assert_same(out.max_iou, np.array([1, 0.7, 0.3, 0.2], dtype=F))
    # >= 0.7 is foreground; 0.3 is not < 0.3, so it is ignored
    assert_same(out.labels, np.array([1, 1, -1, 0], dtype=np.int32))
    inclusive = cfg.replace(background_high_inclusive=True)  # wheat's "<= 0.3"
    out = anchor_targets(anchors, gt, (5, 20), inclusive, rng=0)
    assert_same(out.labels, np.array([1, 1, 0, 0], dtype=np.int32))
    # R-CNN: background is [low, high): 0.3 is background with high 0.5, not with high 0.3
    p = proposal_targets(anchors, gt, np.array([0]), ProposalTargetConfig.luminoth(), rng=0)
    assert_same(p.labels, np.array([1, 1, 0, 0], dtype=np.int32))
    cfg = ProposalTargetConfig.luminoth().replace(
        background_threshold_high=0.3, background_threshold_low=0.2
    )
    p = proposal_targets(anchors, gt, np.array([0]), cfg, rng=0)
    assert_same(p.labels, np.array([1, 1, -1, 0], dtype=np.int32))


def test_best_anchor_rule_takes_all_ties():
    gt = np.array([[0, 0, 9, 9]], dtype=F)  # area 100
    anchors = np.array(
        [[0, 0, 19, 19], [0, 0, 19, 19], [0, 0, 9, 19], [50, 50, 59, 59]], dtype=F
    )  # IoU 0.25, 0.25, 0.5, 0
    cfg = AnchorTargetConfig.luminoth()
    out = anchor_targets(anchors, gt, (100, 100), cfg, rng=0)
    assert_same(out.labels, np.array([0, 0, 1, 0], dtype=np.int32))
    anchors[2] = [0, 0, 19, 19]  # now all three tie at 0.25
    out = anchor_targets(anchors, gt, (100, 100), cfg, rng=0)
    assert_same(out.labels, np.array([1, 1, 1, 0], dtype=np.int32))


def test_zero_overlap_gt_best_match_rule():
    gt = np.array([[0, 0, 9, 9], [80, 80, 89, 89]], dtype=F)
    anchors = np.array([[0, 0, 9, 9], [40, 40, 49, 49], [20, 20, 29, 29]], dtype=F)
    # Faithful Luminoth: gt 1 overlaps nothing, so its maximum is 0 and every anchor with
    # IoU 0 to it (all three) is foreground.
    out = anchor_targets(anchors, gt, (100, 100), AnchorTargetConfig.luminoth(), rng=0)
    assert_same(out.labels, np.array([1, 1, 1], dtype=np.int32))
    fixed = AnchorTargetConfig.luminoth().replace(best_match_requires_overlap=True)
    out = anchor_targets(anchors, gt, (100, 100), fixed, rng=0)
    assert_same(out.labels, np.array([1, 0, 0], dtype=np.int32))


def test_proposal_targets_hand_worked_luminoth():
    gt = np.array([[0, 0, 9, 9], [50, 50, 69, 69]], dtype=F)
    classes = np.array([3, 0])
    proposals = np.array(
        [
            [5, 0, 14, 9],  # IoU 50 / 150 = 1/3 with gt 0 -> background
            [0, 0, 9, 9],  # IoU 1 with gt 0 -> class 3 + 1
            [50, 50, 69, 79],  # 400 / 600 = 2/3 with gt 1 -> class 0 + 1
            [200, 200, 209, 209],  # IoU 0 -> background
        ],
        dtype=F,
    )
    out = proposal_targets(proposals, gt, classes, ProposalTargetConfig.luminoth(), rng=0)
    assert_same(out.labels, np.array([0, 4, 1, 0], dtype=np.int32))
    # proposal 2: widths equal, height 30 -> 20; cy 65 -> 60: dy = -5 / 30 / 0.1,
    # dh = log(20 / 30) / 0.2
    expected = np.zeros((4, 4), dtype=F)
    expected[2] = [0.0, -5 / 30 / 0.1, 0.0, math.log(2 / 3) / 0.2]
    assert_same(out.box_targets, expected, rtol=1e-6, atol=1e-6)  # float32 arithmetic
    assert_same(out.matched_gt, np.array([0, 0, 1, 0], dtype=np.int64))


def test_best_proposal_rule_and_shared_best():
    gt = np.array([[0, 0, 9, 9], [0, 0, 9, 9]], dtype=F)  # identical gts
    classes = np.array([5, 7])
    proposals = np.array([[0, 0, 19, 9], [0, 0, 39, 39]], dtype=F)  # IoU 0.5, 1/16
    cfg = ProposalTargetConfig.luminoth().replace(foreground_threshold=0.6)
    out = proposal_targets(proposals, gt, classes, cfg, rng=0)
    # proposal 0 is below 0.6 but is the best for both gts: the later gt (class 7) wins.
    assert_same(out.labels, np.array([8, 0], dtype=np.int32))
    # ... while its box target goes to its own argmax gt (0, first on the tie), as Luminoth.
    assert out.matched_gt[0] == 0
    # Without the rule, IoU 0.5 is neither foreground (< 0.6) nor background (not < 0.5).
    plain = proposal_targets(proposals, gt, classes, cfg.replace(best_proposal_per_gt=False), 0)
    assert_same(plain.labels, np.array([-1, 0], dtype=np.int32))


def test_wheat_proposal_sampling_counts():
    gt = np.array([[0, 0, 99, 99]], dtype=F)
    # 30 proposals with IoU 1 (foreground) and 40 far away (background, IoU 0)
    proposals = np.concatenate(
        [np.tile(gt, (30, 1)), np.tile(np.array([[300, 300, 309, 309]], dtype=F), (40, 1))]
    )
    cfg = ProposalTargetConfig.wheat().replace(minibatch_size=20)  # at most int(20 / 2) fg
    out = proposal_targets(proposals, gt, np.array([0]), cfg, rng=1)
    assert np.count_nonzero(out.labels == 1) == 10
    assert np.count_nonzero(out.labels == 0) == 10  # one background per foreground
    lum = ProposalTargetConfig.luminoth().replace(minibatch_size=20)  # int(0.25 * 20) = 5 fg
    out = proposal_targets(proposals, gt, np.array([0]), lum, rng=1)
    assert np.count_nonzero(out.labels == 1) == 5
    assert np.count_nonzero(out.labels == 0) == 15


def test_per_class_targets_layout():
    labels = np.array([2, 0, -1, 1])
    t = np.arange(16, dtype=F).reshape(4, 4)
    targets, weights = per_class_targets(labels, t, num_classes=3)
    expected_t = np.zeros((4, 12), dtype=F)
    expected_w = np.zeros((4, 12), dtype=F)
    expected_t[0, 4:8] = t[0]
    expected_w[0, 4:8] = 1
    expected_t[3, 0:4] = t[3]
    expected_w[3, 0:4] = 1
    assert_same(targets, expected_t)
    assert_same(weights, expected_w)


# ----------------------------------------------------------------------------- edge cases


@pytest.mark.parametrize("name", ["luminoth", "wheat"])
def test_empty_ground_truth(name):
    cfg = getattr(AnchorTargetConfig, name)().replace(minibatch_size=4)
    out = anchor_targets(ANCHORS, np.zeros((0, 4), F), IMAGE, cfg, rng=0)
    inside = np.array([0, 1, 2, 5, 6])
    if name == "luminoth":  # all 5 inside anchors are background, 4 kept
        assert np.count_nonzero(out.labels == 0) == 4
        assert set(np.flatnonzero(out.labels == 0)) <= set(inside)
    else:  # wheat: no foreground -> int(0 * 2) = 0 background
        assert (out.labels == -1).all()
    assert (out.labels != 1).all()
    assert_same(out.max_iou, np.zeros(7, F))
    assert_same(out.matched_gt, np.full(7, -1, np.int64))
    assert_same(out.box_targets, np.zeros((7, 4), F))
    p = proposal_targets(ANCHORS, np.zeros((0, 4), F), np.zeros(0, np.int64), None, rng=0)
    assert_same(p.labels, np.zeros(7, np.int32))
    assert_same(p.matched_gt, np.full(7, -1, np.int64))


def test_empty_anchors_and_proposals():
    out = anchor_targets(np.zeros((0, 4), F), GT, IMAGE, None, rng=0)
    assert_same(out.labels, np.zeros(0, np.int32))
    assert_same(out.box_targets, np.zeros((0, 4), F))
    p = proposal_targets(np.zeros((0, 4), F), GT, np.array([0]), None, rng=0)
    assert_same(p.labels, np.zeros(0, np.int32))
    assert_same(p.box_targets, np.zeros((0, 4), F))


def test_bad_input_messages():
    with pytest.raises(ValueError, match="exactly one of foreground_fraction"):
        AnchorTargetConfig(background_ratio=2.0)
    with pytest.raises(ValueError, match="foreground_threshold"):
        ProposalTargetConfig(foreground_threshold=1.5)
    with pytest.raises(ValueError, match="background_threshold_low"):
        ProposalTargetConfig(background_threshold_low=0.6, background_threshold_high=0.5)
    with pytest.raises(ValueError, match="gt_classes"):
        proposal_targets(ANCHORS, GT, np.array([0, 1]), None, rng=0)
    with pytest.raises(ValueError, match="gt_classes"):
        proposal_targets(ANCHORS, GT, np.array([-1]), None, rng=0)
    with pytest.raises(ValueError, match="image_shape"):
        anchor_targets(ANCHORS, GT, (0, 10), None, rng=0)
    with pytest.raises(ValueError, match="rng"):
        anchor_targets(ANCHORS, GT, IMAGE, None, rng="seed")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="gt_boxes"):
        anchor_targets(ANCHORS, np.array([[0, 0, np.nan, 1]]), IMAGE, None, rng=0)


def test_sampling_is_deterministic_given_rng():
    gt = np.array([[0, 0, 99, 99]], dtype=F)
    anchors = np.tile(gt, (50, 1))
    cfg = AnchorTargetConfig.luminoth().replace(minibatch_size=20)
    a = anchor_targets(anchors, gt, (200, 200), cfg, rng=np.random.default_rng(7))
    b = anchor_targets(anchors, gt, (200, 200), cfg, rng=7)
    assert_same(a.labels, b.labels)
    assert np.count_nonzero(a.labels == 1) == 10


# ----------------------------------------------------------------------------- properties


@pytest.mark.parametrize("name", list(ANCHOR_CONFIGS))
@given(scene=target_scenes())
@settings(max_examples=30)
def test_anchor_targets_match_loop_reference(name, scene):
    cfg = ANCHOR_CONFIGS[name]
    args = (scene["anchors"], scene["gt_boxes"], scene["image_shape"], cfg)
    out = anchor_targets(*args, rng=scene["seed"])
    labels, targets, max_iou, matched = loop_anchor_targets(*args, scene["seed"])
    assert_same(out.labels, labels)
    assert_same(out.max_iou, max_iou)
    assert_same(out.matched_gt, matched)
    assert_same(out.box_targets, targets.astype(F), rtol=TARGET_RTOL, atol=TARGET_ATOL)


@pytest.mark.parametrize("name", list(PROPOSAL_CONFIGS))
@given(scene=target_scenes())
@settings(max_examples=30)
def test_proposal_targets_match_loop_reference(name, scene):
    cfg = PROPOSAL_CONFIGS[name]
    args = (scene["anchors"], scene["gt_boxes"], scene["gt_classes"], cfg)
    out = proposal_targets(*args, rng=scene["seed"])
    labels, targets, max_iou, matched = loop_proposal_targets(*args, scene["seed"])
    assert_same(out.labels, labels)
    assert_same(out.max_iou, max_iou)
    assert_same(out.matched_gt, matched)
    assert_same(out.box_targets, targets.astype(F), rtol=TARGET_RTOL, atol=TARGET_ATOL)


@pytest.mark.parametrize("name", ["luminoth", "wheat"])
@given(scene=target_scenes())
def test_anchor_target_invariants(name, scene):
    anchors, gt, shape = scene["anchors"], scene["gt_boxes"], scene["image_shape"]
    base = getattr(AnchorTargetConfig, name)()
    unsampled = base.replace(minibatch_size=10**6, foreground_fraction=1.0, background_ratio=None)
    full = anchor_targets(anchors, gt, shape, unsampled, rng=0)
    small = base.replace(minibatch_size=9)
    out = anchor_targets(anchors, gt, shape, small, rng=scene["seed"])
    # Sampling only ever turns labels into -1.
    assert np.all((out.labels == full.labels) | (out.labels == -1))
    n_fg_full = int(np.count_nonzero(full.labels == 1))
    n_bg_full = int(np.count_nonzero(full.labels == 0))
    n_fg = int(np.count_nonzero(out.labels == 1))
    n_bg = int(np.count_nonzero(out.labels == 0))
    if name == "luminoth":  # at most int(0.5 * 9) = 4 foreground, the rest background
        assert n_fg == min(n_fg_full, 4)
        assert n_bg == min(n_bg_full, 9 - n_fg)
    else:  # at most int(9 / 3) = 3 foreground and twice as many background
        assert n_fg == min(n_fg_full, 3)
        assert n_bg == min(n_bg_full, 2 * n_fg)
    h, w = shape
    outside = (
        (anchors[:, 0] < 0) | (anchors[:, 1] < 0) | (anchors[:, 2] >= w) | (anchors[:, 3] >= h)
    )
    assert (out.labels[outside] == -1).all()
    assert (out.box_targets[out.labels != 1] == 0).all()
    # Every gt that some inside anchor overlaps has a foreground anchor at its best IoU
    # (Luminoth, before sampling; wheat lets background clobber it).
    if name == "luminoth" and gt.shape[0]:
        inside = np.flatnonzero(~outside)
        iou = boxes.iou(anchors[inside], gt, plus_one=True)
        for j in range(gt.shape[0]):
            if inside.size and iou[:, j].max() > 0:
                best = inside[iou[:, j] == iou[:, j].max()]
                assert (full.labels[best] == 1).all()
    # Targets decode back to the matched gt (float32 encode/decode round trip: a few ulp of
    # coordinates up to ~100 px, and exp/log of ratios up to ~40).
    fg = np.flatnonzero(out.labels == 1)
    if fg.size:
        dec = boxes.decode(anchors[fg], out.box_targets[fg], plus_one=True)
        assert_same(dec, gt[out.matched_gt[fg]], rtol=1e-5, atol=2e-4)
        assert_same(out.matched_gt[fg], boxes.iou(anchors[fg], gt, plus_one=True).argmax(1))


@given(scene=target_scenes())
def test_proposal_target_invariants(scene):
    p, gt, cls = scene["anchors"], scene["gt_boxes"], scene["gt_classes"]
    cfg = ProposalTargetConfig.luminoth()
    full = proposal_targets(p, gt, cls, cfg.replace(minibatch_size=10**6), rng=0)
    out = proposal_targets(p, gt, cls, cfg.replace(minibatch_size=8), rng=scene["seed"])
    assert np.all((out.labels == full.labels) | (out.labels == -1))
    n_fg_full = int(np.count_nonzero(full.labels > 0))
    n_fg = int(np.count_nonzero(out.labels > 0))
    assert n_fg == min(n_fg_full, 2)  # int(0.25 * 8)
    assert np.count_nonzero(out.labels == 0) == min(np.count_nonzero(full.labels == 0), 8 - n_fg)
    # Every gt has a foreground proposal before sampling (the best-proposal rule).
    if p.shape[0] and gt.shape[0]:
        iou = boxes.iou(p, gt, plus_one=True)
        for j in range(gt.shape[0]):
            assert full.labels[iou[:, j].argmax()] > 0
    pos = np.flatnonzero(out.labels > 0)
    if pos.size:
        dec = boxes.decode(p[pos], out.box_targets[pos], variances=(0.1, 0.2), plus_one=True)
        # variances scale deltas up by 10 and 5: a bit more float32 error than without.
        assert_same(dec, gt[out.matched_gt[pos]], rtol=1e-5, atol=5e-4)
