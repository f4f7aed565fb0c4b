"""npfrcnn.trace.from_tf: the TensorFlow reference's trace, against npfrcnn's own and TF itself.

A tiny workshop network (units (1, 1, 1, 1), widths 2..8, random weights) on a small synthetic
image, traced by TensorFlow (``from_tf``) and by npfrcnn (``trace_images``), both read back with
``read_trace`` (canonical: NHWC, xyxy pixels, background first) and compared stage by stage.

Tolerances are those of tests/test_model_parity.py, for the same reasons (float32,
eps = 2**-23), the comparison being end to end (each side fed its own previous stages):

* conv chains and dense layers (``features/0``, ``rpn/deltas/0``): BLAS and TF's Eigen sum in
  different orders, ~sqrt(K) * eps per dot product over a chain of gains ~1:
  ``conv_tol = 5e-6 * max|ref|``.
* softmax outputs (``rpn/objectness/0``, candidate and proposal scores, ``head/cls``,
  detection scores): softmax's derivative is at most 1/4 per logit, plus an ulp of ``exp``:
  ``atol = 2e-6``.
* boxes decoded from the RPN's deltas (``proposals/decoded``, candidates, proposals) and the
  final detections: ~1 ulp of ``exp`` (``box_tol = 4 * eps * max|box|``) plus the deltas'
  own conv error carried into the edge (``conv_tol`` of the boxes), as the parity test's
  end-to-end proposal and detection checks allow.
* ``pooled``: bilinear weights are a convex combination of features carrying ``conv_tol``, and
  the grid moves with the proposals' error: ``2 * conv_tol``, as in the parity test.
* ``box_head`` and ``head/bbox``: block4 and the fc layers (more conv chain, gains ~1) on the
  pooled RoIs (``2 * conv_tol``): ``3 * conv_tol`` relative to their own largest value.
* anchors, the image and the input: computed identically, bitwise.
* indices (``proposals/topk``, ``proposals/keep``, ``detections/labels``): identical. With the
  same float32 scores TF and npfrcnn break ties alike (the parity test's "fed" checks); end to
  end the scores differ by <= 2e-6, which could swap near-tied anchors, and this fixed,
  deterministic case has no such swap, so any difference is a real change.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
from helpers import assert_same

pytest.importorskip("tensorflow")

from npfrcnn import FasterRCNN  # noqa: E402
from npfrcnn.config import workshop  # noqa: E402
from npfrcnn.trace import read_trace, stage_names, trace_images  # noqa: E402
from npfrcnn.trace.io import pixels_sha256  # noqa: E402
from npfrcnn.trace.tf import from_tf  # noqa: E402
from npfrcnn.weights import random_weights  # noqa: E402

EPS32 = float(np.finfo(np.float32).eps)
CLASSES = ["cat", "dog"]


def tiny_config():
    return workshop(
        units_per_block=(1, 1, 1, 1), root_depth=4, base_depths=(2, 4, 4, 8), rpn_depth=8,
        num_classes=len(CLASSES),
    )


def synthetic_image(h: int, w: int, seed: int) -> np.ndarray:
    """Blocks of noise plus fine noise (as the parity test's), so features have structure."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, size=(h // 8 + 1, w // 8 + 1, 3))
    img = np.repeat(np.repeat(base, 8, axis=0), 8, axis=1)[:h, :w]
    noise = rng.integers(-20, 21, size=(h, w, 3))
    return np.clip(img + noise, 0, 255).astype(np.uint8)


def conv_tol(ref: np.ndarray) -> float:
    return 5e-6 * float(np.abs(ref).max()) if ref.size else 0.0


def box_tol(ref: np.ndarray) -> float:
    return 4 * EPS32 * max(float(np.abs(ref).max()) if ref.size else 0.0, 1.0)


def boxes_tol(ref: np.ndarray) -> float:
    return box_tol(ref) + conv_tol(ref)


SOFTMAX_ATOL = 2e-6

#: stage -> absolute tolerance from the TF array (0: bitwise / identical).
TOLERANCE = {
    "image": lambda r: 0.0,
    "input": lambda r: 0.0,
    "anchors/0": lambda r: 0.0,
    "features/0": conv_tol,
    "rpn/objectness/0": lambda r: SOFTMAX_ATOL,
    "rpn/deltas/0": conv_tol,
    "proposals/decoded": boxes_tol,
    "proposals/topk": lambda r: 0.0,
    "proposals/candidates": boxes_tol,
    "proposals/candidate_scores": lambda r: SOFTMAX_ATOL,
    "proposals/keep": lambda r: 0.0,
    "proposals/boxes": boxes_tol,
    "proposals/scores": lambda r: SOFTMAX_ATOL,
    "pooled": lambda r: 2 * conv_tol(r),
    "box_head": lambda r: 3 * conv_tol(r),
    "head/cls": lambda r: SOFTMAX_ATOL,
    "head/bbox": lambda r: 3 * conv_tol(r),
    "detections/boxes": boxes_tol,
    "detections/scores": lambda r: SOFTMAX_ATOL,
    "detections/labels": lambda r: 0.0,
}


@pytest.fixture(scope="module")
def setup(tf):
    from npfrcnn.weights.tf_reference import TFReference

    cfg = tiny_config()
    weights = random_weights(cfg, seed=2)
    return cfg, weights, TFReference(cfg, weights)


@pytest.fixture(scope="module")
def traces(setup, tmp_path_factory):
    cfg, weights, ref = setup
    d = tmp_path_factory.mktemp("trace_tf")
    image = synthetic_image(96, 128, seed=0)
    tf_path = from_tf(ref, image, d / "tf.h5", names="synthetic.png", weights_sha256="ab" * 32)
    np_path = trace_images(
        FasterRCNN(cfg, CLASSES, weights, backend="cpu"), [("synthetic.png", image)],
        d / "np.h5",
    )
    with read_trace(tf_path) as t, read_trace(np_path) as n:
        yield image, t, n


def test_every_c4_stage_written(traces):
    _, t, _ = traces
    assert len(t) == 1
    # (the reader lists HDF5 names alphabetically, so the order written is not visible here)
    assert sorted(t.images[0].names) == sorted(stage_names("c4"))


def test_stages_agree_with_npfrcnn(traces):
    _, t, n = traces
    ti, ni = t.images[0], n.images[0]
    common = [s for s in ti.names if s in ni.names]
    assert set(common) == set(TOLERANCE), "a stage without a stated tolerance"
    for name in common:
        ref, ours = ti.get(name), ni.get(name)
        tol = TOLERANCE[name](ref)
        assert_same(ours, ref, atol=tol, err_msg=f"stage {name!r} (atol {tol:.3g})")
    # the case is not vacuous: NMS drops some candidates, detections exist
    assert 0 < len(ti.get("proposals/keep")) < len(ti.get("proposals/topk"))
    assert len(ti.get("detections/boxes")) > 0


def test_trace_is_tf_reference_run_bitwise(setup, traces):
    """The trace holds TFReference.run's arrays, the composed stages as defined by the schema."""
    _, _, ref = setup
    image, t, _ = traces
    r = ref.run(image)
    ti = t.images[0]
    kept, top_k, nms = r["rpn_kept"], r["rpn_top_k"], r["rpn_nms"]
    topk = kept[top_k]
    want = {
        "image": image, "input": r["input"], "features/0": r["features"],
        "rpn/objectness/0": r["rpn_cls_prob"], "rpn/deltas/0": r["rpn_bbox_pred"],
        "anchors/0": r["anchors"], "proposals/decoded": r["rpn_decoded"],
        "proposals/topk": topk.astype(np.int64),
        "proposals/candidates": r["rpn_decoded"][topk],
        "proposals/candidate_scores": r["rpn_cls_prob"][topk, 1],
        "proposals/keep": nms.astype(np.int64), "proposals/boxes": r["rpn_proposals"],
        "proposals/scores": r["rpn_scores"], "pooled": r["pooled"],
        "head/cls": r["cls_prob"], "head/bbox": r["bbox_pred"],
        "detections/boxes": r["boxes"], "detections/scores": r["probs"],
        "detections/labels": r["labels"].astype(np.int64),
    }
    for name, a in want.items():
        assert_same(ti.get(name), a, err_msg=name)
    # the candidates NMS keeps are the proposals
    assert_same(ti.get("proposals/candidates")[ti.get("proposals/keep")], r["rpn_proposals"])
    # box_head is what head's fc layers read: its class probabilities reproduce head's
    feats = ti.get("box_head")
    assert feats.shape == (len(r["rpn_proposals"]), 4 * ref.config.base_depths[3])
    v = ref.variables
    logits = ref.tf.matmul(feats, v["rcnn/fc_classifier/kernel"]) + v["rcnn/fc_classifier/bias"]
    assert_same(np.array(ref.tf.nn.softmax(logits)), r["cls_prob"])


def test_metadata(setup, traces):
    import tensorflow as tf

    cfg, _, _ = setup
    image, t, _ = traces
    assert t.meta == {
        "format": "npfrcnn-trace", "version": 1, "family": "c4", "profile": "workshop",
        "producer": f"tensorflow {tf.__version__}", "weights_sha256": "ab" * 32,
        "layout": "NHWC", "box_format": "xyxy", "boxes_normalized": False,
        "background": "first", "num_classes": cfg.num_classes,
    }
    h, w = image.shape[:2]
    assert t.images[0].meta == {
        "name": "synthetic.png", "sha256": pixels_sha256(image), "original_size": [h, w],
        "image_size": [h, w], "input_size": [h, w],
    }
    # the raw arrays are what the metadata say: xyxy pixels, background first
    ti = t.images[0]
    assert_same(ti.raw("proposals/boxes"), ti.get("proposals/boxes"))
    boxes = ti.raw("detections/boxes")
    assert (boxes[:, 2] >= boxes[:, 0]).all() and (boxes[:, 3] >= boxes[:, 1]).all()
    assert boxes[:, [0, 2]].max() <= w - 1 and boxes[:, [1, 3]].max() <= h - 1
    assert ti.raw("head/cls").shape[1] == cfg.num_classes + 1
    assert ti.raw("head/bbox").shape[1] == 4 * cfg.num_classes


def test_two_images_from_a_weights_file(setup, tmp_path):
    from npfrcnn.trace._npfrcnn import file_sha256
    from npfrcnn.weights import write

    cfg, weights, _ = setup
    h5 = write(tmp_path / "w.h5", cfg, CLASSES, weights, {"source": "test"})
    a, b = synthetic_image(64, 80, seed=5), synthetic_image(80, 64, seed=6)
    out = from_tf(h5, [a, b], tmp_path / "two.npz", names=["a.png", "b.png"])
    assert out == tmp_path / "two.npz"
    with read_trace(out) as t:
        assert len(t) == 2
        assert t.meta["weights_sha256"] == file_sha256(h5)
        assert t.meta["classes"] == CLASSES
        for im, name, ti in zip((a, b), ("a.png", "b.png"), t.images, strict=True):
            assert ti.meta["name"] == name
            assert ti.meta["sha256"] == pixels_sha256(im)
            assert ti.meta["original_size"] == list(im.shape[:2])
            assert sorted(ti.names) == sorted(stage_names("c4"))
            assert_same(ti.get("image"), im)


def test_bad_inputs(setup, tmp_path):
    _, _, ref = setup
    img = synthetic_image(64, 64, seed=1)
    with pytest.raises(ValueError, match="uint8"):
        from_tf(ref, img.astype(np.float32), tmp_path / "x.h5")
    with pytest.raises(ValueError, match="2 names for 1 images"):
        from_tf(ref, [img], tmp_path / "x.h5", names=["a", "b"])
    assert not (tmp_path / "x.h5").exists()


def test_missing_tensorflow_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorflow", None)
    with pytest.raises(ImportError, match="needs TensorFlow"):
        from_tf(object(), np.zeros((8, 8, 3), np.uint8), tmp_path / "x.h5")


def test_compare_finds_no_departure_from_tensorflow(setup, traces):
    """``npfrcnn compare`` of npfrcnn's trace (reference) with TensorFlow's (candidate), with
    the re-run: every stage within the default tolerance (1e-4 of its scale; the measured
    differences above are below 5e-6), and no departure."""
    from npfrcnn.trace.compare import compare_traces, verdict

    cfg, weights, _ = setup
    _, t, n = traces
    cmp = compare_traces(n, t, model=FasterRCNN(cfg, CLASSES, weights))
    im = cmp.images[0]
    assert im.first_failure is None, verdict(im)
    assert {r.stage for r in im.rows} >= {"input", "features/0", "proposals/keep", "pooled",
                                          "detections/boxes"}
