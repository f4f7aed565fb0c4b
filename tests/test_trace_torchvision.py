"""The torchvision trace adapter (:func:`npfrcnn.trace.torchvision.from_torchvision`).

(a) The adapter's trace against torch's own intermediates (``tv_models.stages``, which calls
the model's parts one by one): **bitwise**. Both run the very same torchvision modules and
functions on the same tensors, in the same order, in one process with the same thread count
(2), on CPU kernels that are deterministic for a given shape and thread count; the adapter only
observes (hooks, wrappers that pass arguments and results through) and changes layouts
(permute/reshape/index, exact). So any difference at all would be an adapter bug, not rounding.
The stages that ``stages`` does not expose (top-k, candidates, keep lists, levels,
post-processing candidates) are computed here on the oracle side by calling torchvision's own
functions (``_get_top_n_idx``, ``clip_boxes_to_image``, ``remove_small_boxes``,
``batched_nms``, the pool's level mapper, ...) on torch's intermediates: again bitwise.

(b) The adapter's trace against npfrcnn's trace of the converted model (``npfrcnn convert``'s
converter, ``npfrcnn.trace.trace_images``), with the tolerances of
``tests/test_torchvision_parity.py`` (copied, with their reasoning, below): end to end the input
and anchors are bitwise, convolution outputs within ``conv_tol``, the final detections equal
as sets. The discrete stages (top-k, keep lists, levels, labels) are compared exactly with
npfrcnn given the adapter's traced inputs for that stage (end to end, near-tied RPN logits that
the convolutions' rounding reorders can swap a top-k member, so indices are only comparable on
the same inputs); this also checks that both traces give each index stage the same meaning.

(c) The model is unchanged and every hook and patch removed after a run, also after an error
inside the run (no trace file is left then). (d) Several images of different sizes give one
image group each.

Tolerances (float32, eps = 2**-23), as in test_torchvision_parity.py:

* bitwise: the resized and padded input, anchors, the top-k / NMS / level / label indices when
  fed the same inputs, sigmoid/softmax scores given the same logits;
* convolutions and Linear layers (oneDNN/MKL vs OpenBLAS summation order): each layer's float32
  dot products of K terms err by about ``sqrt(K) * eps`` relative to the scale of the terms;
  along a path of L layers these add up to at most ``L * sqrt(K_max) * eps`` relative to the
  output's scale. We allow 4x that, against ``max|ref|`` of the stage (:func:`conv_tol`);
* decoded boxes: torch's ``exp`` is MKL VML (±1 ulp of correctly rounded in ~1 % of inputs);
  npfrcnn rounds the float64 ``exp``. An edge ``cx ± 0.5 * w * exp(dw)`` then differs by about
  one ulp of the half-width, plus the cancellation in ``cx - hw``: ``8 ulp`` of the largest
  coordinate (:func:`box_tol`);
* final detections end to end (through the convolutions): matched as sets by label and IoU;
  scores within the head's tolerance.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchvision")

import tv_models  # noqa: E402
from test_torchvision_parity import (  # noqa: E402  (the parity tests' tolerances)
    box_tol,
    conv_tol,
    k_max,
    path_layers,
    synthetic,
)
from test_torchvision_parity import match_sets as parity_match_sets  # noqa: E402
from torch.nn import functional as F  # noqa: E402
from torchvision.models.detection.rpn import concat_box_prediction_layers  # noqa: E402
from torchvision.ops import boxes as box_ops  # noqa: E402
from torchvision.ops import poolers  # noqa: E402

from npfrcnn import FasterRCNN  # noqa: E402
from npfrcnn.modeling.rpn import LevelOutput, MultiLevelRPNOutput  # noqa: E402
from npfrcnn.trace import read_trace, trace_images  # noqa: E402
from npfrcnn.trace.io import pixels_sha256  # noqa: E402
from npfrcnn.trace.torchvision import from_torchvision  # noqa: E402
from npfrcnn.weights.convert_torchvision import torchvision_to_hdf5  # noqa: E402

EPS32 = float(np.finfo(np.float32).eps)
LEVELS = ("0", "1", "2", "3", "pool")


IMAGE = synthetic(150, 220, 1)


def t2n(t) -> np.ndarray:
    return t.detach().numpy()


def forward(model, image):
    with torch.no_grad():
        return model([tv_models.to_tensor(image)])[0]


@pytest.fixture(scope="module", params=["r50-frozen0", "v2"])
def traced(request, tmp_path_factory):
    """A small model, torch's own stages (run first, so the pool's scales are set by torch as
    in any first forward), and the adapter's trace of the same image."""
    torch.set_num_threads(2)
    variant = request.param
    model = tv_models.build(variant, small=True, seed=3)
    ref = tv_models.stages(model, IMAGE)
    folder = tmp_path_factory.mktemp("tvtrace-" + variant)
    path = from_torchvision(model, IMAGE, folder / "trace.h5", names=["synthetic"])
    return variant, model, ref, path, folder


# (a) bitwise against torch's own intermediates ----------------------------------------------


def assert_bitwise(got: np.ndarray, ref: np.ndarray, what: str) -> None:
    assert got.shape == ref.shape, f"{what}: shape {got.shape} != {ref.shape}"
    assert got.dtype == ref.dtype, f"{what}: dtype {got.dtype} != {ref.dtype}"
    np.testing.assert_array_equal(got, ref, err_msg=what)



def rpn_oracle(model, ref):
    """filter_proposals's steps on torch's intermediates, by torchvision's own functions; the
    flat (y, x, anchor) order of concat_box_prediction_layers is the schema's row order."""
    rpn = model.rpn
    counts = [int(o[0].numel()) for o in ref["objectness"]]
    obj, _ = concat_box_prediction_layers(ref["objectness"], ref["deltas"])
    obj = obj.reshape(1, -1)
    with torch.no_grad():
        topk = rpn._get_top_n_idx(obj, counts)[0]
        cand = box_ops.clip_boxes_to_image(ref["decoded"][topk], ref["image_size"])
        cscores = torch.sigmoid(obj[0, topk])
        lvl = torch.cat([torch.full((n,), i) for i, n in enumerate(counts)])[topk]
        small = box_ops.remove_small_boxes(cand, rpn.min_size)
        filt = small[torch.where(cscores[small] >= rpn.score_thresh)[0]]
        keep = filt[box_ops.batched_nms(cand[filt], cscores[filt], lvl[filt], rpn.nms_thresh)]
    return topk, cand, cscores, (len(small), len(filt)), keep


def test_meta(traced):
    variant, model, ref, path, _ = traced
    with read_trace(path) as tr:
        assert tr.meta["family"] == "fpn" and tr.meta["layout"] == "NCHW"
        assert tr.meta["num_classes"] == 5 and tr.meta["background"] == "first"
        assert tr.meta["producer"].startswith("torchvision ")
        assert len(tr) == 1
        m = tr.images[0].meta
        assert m["name"] == "synthetic" and m["sha256"] == pixels_sha256(IMAGE)
        assert m["original_size"] == [150, 220]
        assert tuple(m["image_size"]) == ref["image_size"]
        assert m["input_size"] == list(ref["input"].shape[-2:])
        assert_bitwise(tr.images[0].get("image"), IMAGE, "image")


def test_stages_bitwise(traced):
    variant, model, ref, path, _ = traced
    rpn, heads = model.rpn, model.roi_heads
    with read_trace(path) as tr:
        g = tr.images[0].get
        # module outputs
        assert_bitwise(g("input"), tv_models.nhwc(ref["input"]), "input")
        for i, b in enumerate(ref["body"]):
            assert_bitwise(g(f"body/{i}"), tv_models.nhwc(b), f"body/{i}")
        assert list(ref["features"]) == list(LEVELS)
        for lvl, o, d in zip(LEVELS, ref["objectness"], ref["deltas"], strict=True):
            assert_bitwise(g(f"features/{lvl}"), tv_models.nhwc(ref["features"][lvl]), lvl)
            _, a, h, w = o.shape
            assert_bitwise(g(f"rpn/objectness/{lvl}"), t2n(o[0].permute(1, 2, 0).reshape(-1)),
                           f"objectness {lvl}")
            rd = d[0].view(a, 4, h, w).permute(2, 3, 0, 1).reshape(-1, 4)
            assert_bitwise(g(f"rpn/deltas/{lvl}"), t2n(rd), f"deltas {lvl}")
        anchors = np.concatenate([g(f"anchors/{lvl}") for lvl in LEVELS])
        assert_bitwise(anchors, t2n(ref["anchors"]), "anchors")
        assert_bitwise(g("proposals/decoded"), t2n(ref["decoded"]), "decoded")

        # the RPN's selection, by torchvision's own functions on torch's intermediates
        topk, cand, cscores, _, keep = rpn_oracle(model, ref)
        assert_bitwise(g("proposals/topk"), t2n(topk), "topk")
        assert_bitwise(g("proposals/candidates"), t2n(cand), "candidates")
        assert_bitwise(g("proposals/candidate_scores"), t2n(cscores), "candidate scores")
        assert_bitwise(g("proposals/keep"), t2n(keep), "proposals/keep")
        post_n = rpn.post_nms_top_n()
        assert_bitwise(g("proposals/boxes"), t2n(ref["proposals"]), "proposals")
        assert_bitwise(g("proposals/scores"), t2n(ref["proposal_scores"]), "proposal scores")
        # keep means what the schema says: the proposals are the candidates it selects
        assert_bitwise(g("proposals/candidates")[g("proposals/keep")[:post_n]],
                       t2n(ref["proposals"]), "candidates[keep]")

        # pooling and the heads
        with torch.no_grad():
            levels = heads.box_roi_pool.map_levels([ref["proposals"]])
        assert_bitwise(g("roi_levels"), t2n(levels), "roi_levels")
        assert_bitwise(g("pooled"), tv_models.nhwc(ref["pooled"]), "pooled")
        assert_bitwise(g("box_head"), t2n(ref["box_head"]), "box_head")
        assert_bitwise(g("head/cls"), t2n(ref["class_logits"]), "head/cls")
        assert_bitwise(g("head/bbox"), t2n(ref["box_regression"]), "head/bbox")

        # post-processing's candidates: postprocess_detections's steps, torchvision's functions
        with torch.no_grad():
            boxes = heads.box_coder.decode(ref["box_regression"], [ref["proposals"]])
            scores = F.softmax(ref["class_logits"], -1)
            boxes = box_ops.clip_boxes_to_image(boxes, ref["image_size"])[:, 1:].reshape(-1, 4)
            labels = torch.arange(scores.shape[1]).view(1, -1).expand_as(scores)[:, 1:]
            scores, labels = scores[:, 1:].reshape(-1), labels.reshape(-1)
            inds = torch.where(scores > heads.score_thresh)[0]
            boxes, scores, labels = boxes[inds], scores[inds], labels[inds]
            k = box_ops.remove_small_boxes(boxes, min_size=1e-2)
            boxes, scores, labels = boxes[k], scores[k], labels[k]
            dkeep = box_ops.batched_nms(boxes, scores, labels, heads.nms_thresh)
        assert_bitwise(g("detections/candidates"), t2n(boxes), "detections/candidates")
        assert_bitwise(g("detections/candidate_scores"), t2n(scores), "candidate scores")
        assert_bitwise(g("detections/candidate_labels"), t2n(labels) - 1, "candidate labels")
        assert_bitwise(g("detections/keep"), t2n(dkeep), "detections/keep")
        d = g("detections/keep")[: heads.detections_per_img]
        assert_bitwise(g("detections/candidates")[d], t2n(ref["post_boxes"]), "post")
        assert_bitwise(g("detections/candidate_scores")[d], t2n(ref["post_scores"]), "post")
        assert_bitwise(g("detections/candidate_labels")[d] + 1, t2n(ref["post_labels"]), "post")

        # the final detections are the forward's own
        real = forward(model, IMAGE)
        for key, dets in (("real", real), ("stages", ref["detections"])):
            assert_bitwise(g("detections/boxes"), t2n(dets["boxes"]), f"boxes ({key})")
            assert_bitwise(g("detections/scores"), t2n(dets["scores"]), f"scores ({key})")
            assert_bitwise(g("detections/labels"), t2n(dets["labels"]) - 1, f"labels ({key})")
        assert len(real["boxes"]) > 0


# (b) against npfrcnn's own trace of the converted model ---------------------------------------


@pytest.fixture(scope="module")
def ours(traced):
    variant, model, ref, path, folder = traced
    torch.save(model.state_dict(), folder / "model.pth")
    changes = {"min_size": model.transform.min_size[-1], "max_size": model.transform.max_size}
    torchvision_to_hdf5(folder / "model.pth", folder / "model.h5", tv_models.VARIANTS[variant][0],
                        changes=changes)
    return FasterRCNN.from_hdf5(folder / "model.h5", backend="cpu")


def assert_close(got, ref, atol, what):
    assert got.shape == ref.shape, f"{what}: shape {got.shape} != {ref.shape}"
    assert got.dtype == ref.dtype, f"{what}: dtype {got.dtype} != {ref.dtype}"
    err = float(np.abs(got.astype(np.float64) - ref).max()) if got.size else 0.0
    assert err <= atol, f"{what}: max abs error {err:.3g} > {atol:.3g}"


def test_against_npfrcnn_trace_end_to_end(traced, ours):
    """npfrcnn's trace of the converted model, stage by stage, each through its own chain."""
    variant, model, ref, path, folder = traced
    mine = trace_images(ours, [("synthetic", IMAGE)], folder / "npfrcnn.npz")
    layers, kmax = path_layers(ours), k_max(ours)
    with read_trace(path) as tv, read_trace(mine) as np_:
        t, o = tv.images[0], np_.images[0]
        for key in ("sha256", "original_size", "image_size", "input_size"):
            assert t.meta[key] == o.meta[key], key
        assert set(t.names) == set(o.names)
        assert_bitwise(o.get("input"), t.get("input"), "input")
        for lvl in LEVELS:
            assert_bitwise(o.get(f"anchors/{lvl}"), t.get(f"anchors/{lvl}"), f"anchors {lvl}")
        for name in [f"body/{i}" for i in range(4)] + [f"features/{lv}" for lv in LEVELS]:
            r = t.get(name)
            assert_close(o.get(name), r, conv_tol(r, layers, kmax), name)
        for lvl in LEVELS:
            for name in (f"rpn/objectness/{lvl}", f"rpn/deltas/{lvl}"):
                r = t.get(name)
                assert_close(o.get(name), r, conv_tol(r, layers, kmax), name)
        score_tol = conv_tol(t.get("head/cls"), layers, kmax)
        match_sets(o.get("detections/boxes"), o.get("detections/labels"),
                   o.get("detections/scores"), t.get("detections/boxes"),
                   t.get("detections/labels"), t.get("detections/scores"), score_tol)


def test_discrete_stages_match_npfrcnn_given_the_same_inputs(traced, ours):
    """npfrcnn fed the adapter's traced inputs of each stage gives the same indices, in the
    form npfrcnn's trace writes them (npfrcnn/trace/_npfrcnn.py)."""
    variant, model, ref, path, folder = traced
    with read_trace(path) as tv:
        check_fed(ours, tv.images[0])


def check_fed(ours, t):
    """npfrcnn given the traced inputs of each stage of ``t`` (an ImageTrace)."""
    image_size = tuple(t.meta["image_size"])
    feats = {lv: t.get(f"features/{lv}") for lv in LEVELS}
    levels = {
        lv: LevelOutput(t.get(f"rpn/objectness/{lv}"), t.get(f"rpn/deltas/{lv}"),
                        feats[lv].shape[1:3])
        for lv in LEVELS
    }
    trpn = MultiLevelRPNOutput(levels, tuple(t.meta["input_size"]))
    anchors = ours.anchors(trpn, tuple(t.meta["input_size"]))
    props = ours.proposals(trpn, image_size, anchors)
    rd = t.get("proposals/decoded")
    assert_close(props.decoded, rd, box_tol(rd), "decoded")
    np.testing.assert_array_equal(props.top_k, t.get("proposals/topk"), "topk")
    rc = t.get("proposals/candidates")
    assert_close(props.clipped, rc, box_tol(rc), "candidates")
    np.testing.assert_array_equal(props.probs, t.get("proposals/candidate_scores"))
    np.testing.assert_array_equal(props.kept[props.nms], t.get("proposals/keep"), "keep")
    rp = t.get("proposals/boxes")
    assert_close(props.boxes, rp, box_tol(rp), "proposals")
    np.testing.assert_array_equal(props.scores, t.get("proposals/scores"))

    pooled = ours.pool_rois(feats, rp, image_size)
    np.testing.assert_array_equal(pooled.levels, t.get("roi_levels"), "roi_levels")

    post = ours.parts.postprocess(rp, t.get("head/bbox"), t.get("head/cls"), image_size)
    np.testing.assert_array_equal(post.candidate_labels - 1,
                                  t.get("detections/candidate_labels"), "candidate labels")
    np.testing.assert_array_equal(post.candidate_scores, t.get("detections/candidate_scores"))
    rc = t.get("detections/candidates")
    assert_close(post.candidate_boxes, rc, box_tol(rc), "detections/candidates")
    np.testing.assert_array_equal(post.nms, t.get("detections/keep"), "detections/keep")
    dets = ours.detections(rp, t.get("head/bbox"), t.get("head/cls"), image_size,
                           original_size=tuple(t.meta["original_size"]))
    np.testing.assert_array_equal(dets.labels, t.get("detections/labels"), "labels")
    np.testing.assert_array_equal(dets.scores, t.get("detections/scores"), "scores")


def test_rpn_and_box_filters_that_drop_candidates(traced, ours, tmp_path):
    """With a large RPN min_size and score threshold and a short post-NMS cut, proposals/keep
    composes remove_small_boxes's, the score filter's and batched_nms's indices, and is cut;
    a higher box score threshold changes the post-processing candidates. The model's knobs are
    restored afterwards."""
    variant, model, ref, path, folder = traced
    rpn, heads = model.rpn, model.roi_heads
    old = (rpn.min_size, rpn.score_thresh, rpn._post_nms_top_n, heads.score_thresh)
    rpn.min_size, rpn.score_thresh = 20.0, 0.51
    rpn._post_nms_top_n = {"training": 100, "testing": 100}
    heads.score_thresh = 0.3
    try:
        kref = tv_models.stages(model, IMAGE)
        out = from_torchvision(model, IMAGE, tmp_path / "knobs.h5")
        topk, cand, cscores, (n_small, n_filt), keep = rpn_oracle(model, kref)
    finally:
        rpn.min_size, rpn.score_thresh, rpn._post_nms_top_n, heads.score_thresh = old
    assert len(cand) > n_small > n_filt > len(keep) > 100, (len(cand), n_small, n_filt)
    cfg = ours.config.replace(rpn_min_size=20.0, rpn_score_thresh=0.51, rpn_post_nms_top_n=100,
                              box_score_thresh=0.3)
    knobbed = FasterRCNN(cfg, ours.classes, ours.tensors)
    with read_trace(out) as tr:
        g = tr.images[0].get
        assert_bitwise(g("proposals/keep"), t2n(keep), "proposals/keep")
        assert_bitwise(g("proposals/candidates")[g("proposals/keep")[:100]],
                       t2n(kref["proposals"]), "candidates[keep]")
        assert_bitwise(g("proposals/boxes"), t2n(kref["proposals"]), "proposals")
        assert_bitwise(g("detections/boxes"), t2n(kref["detections"]["boxes"]), "detections")
        assert g("detections/candidate_scores").min() > 0.3
        check_fed(knobbed, tr.images[0])



def match_sets(boxes, labels, scores, rb, rl, rs, score_tol):
    """The same detections as a set: test_torchvision_parity.match_sets on trace arrays."""
    from types import SimpleNamespace

    class Dets(SimpleNamespace):
        def __len__(self) -> int:
            return len(self.boxes)

    ref = {"boxes": torch.from_numpy(rb), "labels": torch.from_numpy(rl + 1),
           "scores": torch.from_numpy(rs)}
    parity_match_sets(Dets(boxes=boxes, labels=labels, scores=scores), ref,
                      score_tol, "detections")


# (c) the model is unchanged, hooks and patches removed ---------------------------------------


def snapshot(model):
    hooks = [
        (name, len(m._forward_hooks), len(m._forward_pre_hooks)) for name, m in
        model.named_modules()
    ]
    attrs = {
        "rpn": sorted(vars(model.rpn)), "box_coder": sorted(vars(model.rpn.box_coder)),
        "roi_heads": sorted(vars(model.roi_heads)),
        "pool": sorted(vars(model.roi_heads.box_roi_pool)),
    }
    funcs = (box_ops.batched_nms, box_ops.remove_small_boxes, box_ops.clip_boxes_to_image,
             poolers._multiscale_roi_align, torch.sigmoid)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    return hooks, attrs, funcs, state, model.training, model.roi_heads.box_roi_pool.map_levels


def assert_unchanged(model, before, outputs):
    hooks, attrs, funcs, state, training, mapper = snapshot(model)
    assert hooks == before[0], "hooks left on the model"
    assert attrs == before[1], "instance attributes left on the model"
    assert all(a is b for a, b in zip(funcs, before[2], strict=True)), "functions not restored"
    assert training == before[4] and mapper is before[5]
    assert state.keys() == before[3].keys()
    for k, v in state.items():
        assert torch.equal(v, before[3][k]), k
    assert torch._C._len_torch_function_stack() == 0, "a torch function mode was left active"
    again = forward(model, IMAGE)
    for k in ("boxes", "scores", "labels"):
        assert torch.equal(again[k], outputs[k]), k


def test_model_unchanged_after_a_run(traced, tmp_path):
    variant, model, ref, path, _ = traced
    before, outputs = snapshot(model), forward(model, IMAGE)
    from_torchvision(model, IMAGE, tmp_path / "again.npz")
    assert_unchanged(model, before, outputs)
    # the same trace as the module fixture's (HDF5), also through an .npz
    with read_trace(tmp_path / "again.npz") as a, read_trace(path) as b:
        assert sorted(a.images[0].names) == sorted(b.images[0].names)
        for name in a.images[0].names:
            np.testing.assert_array_equal(a.images[0].get(name), b.images[0].get(name), name)


def test_model_unchanged_after_an_error_in_a_module(traced, tmp_path):
    variant, model, ref, path, _ = traced
    before, outputs = snapshot(model), forward(model, IMAGE)

    def boom(*args):
        raise RuntimeError("boom in the box predictor")

    handle = model.roi_heads.box_predictor.register_forward_hook(boom)
    try:
        with pytest.raises(RuntimeError, match="boom in the box predictor"):
            from_torchvision(model, IMAGE, tmp_path / "failed.h5")
    finally:
        handle.remove()
    assert not (tmp_path / "failed.h5").exists()
    assert_unchanged(model, before, outputs)


def test_model_unchanged_after_an_error_in_a_wrapped_function(traced, tmp_path, monkeypatch):
    """An error inside filter_proposals (under the adapter's torch function mode and patches)."""
    variant, model, ref, path, _ = traced
    before, outputs = snapshot(model), forward(model, IMAGE)

    def raiser(boxes, min_size):
        raise ValueError("boom in remove_small_boxes")

    monkeypatch.setattr(box_ops, "remove_small_boxes", raiser)
    with pytest.raises(ValueError, match="boom in remove_small_boxes"):
        from_torchvision(model, [IMAGE, IMAGE], tmp_path / "failed.npz")
    assert box_ops.remove_small_boxes is raiser
    monkeypatch.undo()
    assert not (tmp_path / "failed.npz").exists()
    assert_unchanged(model, before, outputs)


def test_rejects_training_mode_and_bad_images(traced, tmp_path):
    variant, model, ref, path, _ = traced
    with pytest.raises(ValueError, match="uint8"):
        from_torchvision(model, IMAGE.astype(np.float32), tmp_path / "x.h5")
    with pytest.raises(ValueError, match="names"):
        from_torchvision(model, [IMAGE], tmp_path / "x.h5", names=["a", "b"])
    model.train()
    try:
        with pytest.raises(ValueError, match="eval"):
            from_torchvision(model, IMAGE, tmp_path / "x.h5")
    finally:
        model.eval()
    with pytest.raises(TypeError, match="FasterRCNN"):
        from_torchvision(model.backbone, IMAGE, tmp_path / "x.h5")
    assert not (tmp_path / "x.h5").exists()


# (d) several images ------------------------------------------------------------------------


def test_two_images_of_different_sizes(traced, tmp_path):
    variant, model, ref, path, _ = traced
    images = [synthetic(150, 220, 1), synthetic(333, 181, 2)]
    out = from_torchvision(model, images, tmp_path / "two.h5", names=["a.png", "b.png"],
                           weights_sha256="ab" * 32)
    assert out == tmp_path / "two.h5"
    with read_trace(out) as tr:
        assert tr.meta["weights_sha256"] == "ab" * 32
        assert len(tr) == 2
        for im, name, image in zip(tr.images, ["a.png", "b.png"], images, strict=True):
            assert im.meta["name"] == name
            assert im.meta["sha256"] == pixels_sha256(image)
            assert im.meta["original_size"] == list(image.shape[:2])
            assert_bitwise(im.get("image"), image, "image")
            real = forward(model, image)
            assert_bitwise(im.get("detections/boxes"), t2n(real["boxes"]), name)
            assert_bitwise(im.get("detections/labels"), t2n(real["labels"]) - 1, name)
            with torch.no_grad():
                il, _ = model.transform([tv_models.to_tensor(image)])
            assert_bitwise(im.get("input"), tv_models.nhwc(il.tensors), name)
        assert tr.images[0].meta["image_size"] != tr.images[1].meta["image_size"]


def test_imports_without_torch(tmp_path):
    """npfrcnn.trace.torchvision imports without torch; calling it then says what is missing."""
    code = textwrap.dedent("""
        import sys
        sys.modules["torch"] = None
        sys.modules["torchvision"] = None
        import numpy as np
        import npfrcnn.trace.torchvision as m
        try:
            m.from_torchvision(object(), np.zeros((4, 4, 3), np.uint8), "x.h5")
        except ImportError as e:
            assert "needs torch and torchvision" in str(e), e
            print("ok")
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "ok"
