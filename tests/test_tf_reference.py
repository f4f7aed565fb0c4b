"""The TensorFlow reference network itself, checked against hand-worked values from the spec.

These make the reference trustworthy independently of npfrcnn's NumPy model (which
tests/test_model_parity.py compares against it). The hand-worked final-detection case is run
through both implementations.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import assert_same

from npfrcnn import FasterRCNN
from npfrcnn.config import workshop
from npfrcnn.weights import expected_shapes, random_weights, read


def tiny_config(**changes):
    kw = dict(
        units_per_block=(1, 1, 1, 1), root_depth=4, base_depths=(2, 4, 4, 8), rpn_depth=8,
        num_classes=2,
    )
    kw.update(changes)
    return workshop(**kw)


@pytest.fixture(scope="module")
def ref(tf):
    from npfrcnn.weights.tf_reference import TFReference

    cfg = tiny_config()
    return TFReference(cfg, random_weights(cfg, seed=2))


def test_reference_anchors_hand_values():
    from npfrcnn.weights.tf_reference import reference_anchors

    a = reference_anchors(workshop())
    assert a.shape == (15, 4)
    # a = ratio_idx * 5 + scale_idx; h = s * sqrt(r) * 256, w = s / sqrt(r) * 256, +-w/2.
    h0, w0 = 0.125 * np.sqrt(0.5) * 256, 0.125 / np.sqrt(0.5) * 256  # 22.627..., 45.254...
    np.testing.assert_allclose(a[0], [-w0 / 2, -h0 / 2, w0 / 2, h0 / 2], rtol=1e-15)
    assert a[7].tolist() == [-64.0, -64.0, 64.0, 64.0]  # ratio 1, scale 0.5
    h14, w14 = 2 * np.sqrt(2.0) * 256, 2 / np.sqrt(2.0) * 256
    np.testing.assert_allclose(a[14], [-w14 / 2, -h14 / 2, w14 / 2, h14 / 2], rtol=1e-15)


def test_anchor_grid_layout(ref):
    anchors = ref.anchors((1, 3, 4, 8)).numpy()
    assert anchors.shape == (3 * 4 * 15, 4)
    # Row (y * W_f + x) * 15 + a; centre (16 x, 16 y): y=1, x=2, a=7 is 128x128 at (32, 16).
    assert anchors[(1 * 4 + 2) * 15 + 7].tolist() == [32 - 64, 16 - 64, 32 + 64, 16 + 64]


def test_variables_named_by_the_table(ref):
    assert set(ref.variables) == set(expected_shapes(ref.config))
    v = ref.variables["resnet_v1_14/block1/unit_1/bottleneck_v1/shortcut/conv2d/kernel"]
    assert v.name == "resnet_v1_14/block1/unit_1/bottleneck_v1/shortcut/conv2d/kernel:0"
    assert tuple(v.shape) == (1, 1, 4, 8)


@pytest.mark.parametrize("hw,want", [((642, 970), (40, 61)), ((919, 736), (58, 46))])
def test_reference_feature_map_size_matches_data_readme(ref, hw, want):
    # cats.jpg and horse.jpg sizes (VALID pool1 column of ../shared/data/README.md).
    x = np.zeros((1, *hw, 3), np.float32)
    assert tuple(ref.features(x).shape) == (1, *want, 16)


def test_pool1_same_gives_slim_size(tf):
    from npfrcnn.weights.tf_reference import TFReference

    cfg = tiny_config(pool1_padding="SAME")
    r = TFReference(cfg, random_weights(cfg))
    assert tuple(r.features(np.zeros((1, 642, 970, 3), np.float32)).shape)[1:3] == (41, 61)


def test_proposals_hand_case(ref):
    tf = ref.tf
    anchors = np.array(
        [[0, 0, 10, 10], [3, 0, 13, 10], [5, 5, 5, 9], [20, 20, 30, 30]], np.float32
    )  # anchor 2 has zero width -> removed by the area filter
    deltas = np.zeros((4, 4), np.float32)
    probs = np.array([[0.2, 0.8], [0.1, 0.9], [0.0, 1.0], [0.5, 0.5]], np.float32)
    out = ref.proposals(tf.constant(deltas), tf.constant(probs), tf.constant(anchors))
    assert out["kept"].numpy().tolist() == [0, 1, 3]
    # top-k by score: 0.9 (kept 1), 0.8 (kept 0), 0.5 (kept 2).
    # IoU(anchor 0, anchor 1) = 70 / 130 = 0.54 <= 0.7: NMS keeps all three.
    assert out["top_k"].numpy().tolist() == [1, 0, 2]
    assert out["nms"].numpy().tolist() == [0, 1, 2]
    assert_same(out["proposals"].numpy(), anchors[[1, 0, 3]])


# Hand-worked final detections (spec 1.3 rcnn_proposals), both implementations ---------------

PROPOSALS = np.array(
    [[0, 0, 10, 10], [1, 0, 11, 10], [20, 20, 30, 30], [-5, -5, 5, 5]], np.float32
)  # A, B, C, D
CLS_PROB = np.array(
    [[0.1, 0.6, 0.3], [0.1, 0.7, 0.2], [0.5, 0.2, 0.3], [0.2, 0.4, 0.4]], np.float32
)  # columns: background, class 0, class 1
D_CLIPPED = [0, 0, 5, 5]  # D clipped to [0, W-1] x [0, H-1]
# class 0: B .7 wins; A (IoU with B 90/110 > .5) suppressed; D' .4 (IoU 20/105) and C .2 kept.
# class 1: D' .4; A .3 and C .3 tie -> A (lower index) first; B .2 suppressed by A.
# Overall top_k over [B0 .7, D'0 .4, C0 .2, D'1 .4, A1 .3, C1 .3]: ties by lower index.
WANT_LABELS = [0, 0, 1, 1, 1, 0]
WANT_PROBS = np.array([0.7, 0.4, 0.4, 0.3, 0.3, 0.2], np.float32)
WANT_BOXES = np.array(
    [PROPOSALS[1], D_CLIPPED, D_CLIPPED, PROPOSALS[0], PROPOSALS[2], PROPOSALS[2]], np.float32
)


def test_detections_hand_case_tf(ref):
    boxes, labels, probs = ref.detections(
        PROPOSALS, np.zeros((4, 8), np.float32), CLS_PROB, (100, 100)
    )
    assert labels.numpy().tolist() == WANT_LABELS
    assert_same(probs.numpy(), WANT_PROBS)
    assert_same(boxes.numpy(), WANT_BOXES)


@pytest.mark.parametrize("backend", ["numpy", "cpu"])
def test_detections_hand_case_numpy_model(backend):
    cfg = tiny_config()
    m = FasterRCNN(cfg, ["a", "b"], random_weights(cfg), backend=backend)
    d = m.detections(PROPOSALS, np.zeros((4, 8), np.float32), CLS_PROB, (100, 100))
    assert d.labels.tolist() == WANT_LABELS
    assert_same(d.scores, WANT_PROBS)
    assert_same(d.boxes, WANT_BOXES)
    assert d.class_names == ["a", "a", "b", "b", "b", "a"]
    d = m.detections(PROPOSALS, np.zeros((4, 8), np.float32), CLS_PROB, (100, 100),
                     min_prob=0.35, max_detections=2)
    assert d.labels.tolist() == [0, 0] and d.scores.tolist() == [WANT_PROBS[0], WANT_PROBS[1]]


def test_export_hdf5_round_trip(ref, tmp_path):
    from npfrcnn.weights.tf_reference import export_hdf5

    path = export_hdf5(tmp_path / "ref.h5", ref, ["a", "b"], {"note": "test"})
    f = read(path)
    assert f.config == ref.config and f.provenance["note"] == "test"
    for name, v in ref.variables.items():
        assert_same(f.tensors[name], v.numpy())
