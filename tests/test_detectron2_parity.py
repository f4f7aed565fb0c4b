"""Stage-by-stage parity of npfrcnn's Detectron2 profiles with the torch oracle.

Detectron2 is not on PyPI, so the oracle is ``tests/d2_oracle.py``: a torch implementation of
Detectron2's test-time Faster R-CNN written from Detectron2's rules, sharing no code with
npfrcnn (torchvision's ``roi_align(aligned=True)`` and ``batched_nms``, as Detectron2 calls
them). It was checked bitwise against the real Detectron2 at every stage, reduced and full
size (``docs/detectron2.md``; ``tests/test_d2_oracle.py::test_matches_detectron2`` repeats it
where Detectron2 is importable).

For each profile a seeded random-weight oracle (reduced depth and width, 5 classes, min/max size
160/256) is saved in the model-zoo ``.pkl`` format (one variant as ``DefaultTrainer``'s
``model_final.pth``), converted by ``npfrcnn convert``'s converter (no torch involved) and run
on synthetic images and a workshop photo. Every stage is compared with the oracle's, and every
stage is also fed the oracle's input for it, so an error shows where it starts.

Tolerances (float32, eps = 2**-23), derived as in ``tests/test_torchvision_parity.py``:

* bitwise: the Pillow resize, the normalised and padded input, anchors, RoIAlign given the
  oracle's features and proposals, every top-k / NMS / level / label / candidate index when fed
  the oracle's inputs, softmax scores given the oracle's logits, and the proposals' logits;
* convolutions and Linear layers (oneDNN vs OpenBLAS summation order): ``conv_tol``, 4x
  ``L * sqrt(K_max) * eps`` of the stage's largest magnitude for a path of ``L`` layers with
  ``K_max``-term dot products;
* the C4 head's mean over 7x7: npfrcnn rounds the float64 sum once, torch sums in float32 (a
  relative error below ``49 * eps``), which the conv tolerance of the head covers;
* decoded boxes: torch's ``exp`` is MKL VML, npfrcnn rounds the float64 ``exp``; ``box_tol``
  (8 ulp of the largest coordinate);
* end to end (through the convolutions): detections matched as sets by label and IoU, scores
  within the head's tolerance (``match_sets``).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchvision")

import d2_oracle  # noqa: E402
from test_torchvision_parity import (  # noqa: E402
    SHARED,
    assert_close,
    box_tol,
    conv_tol,
    match_sets,
    synthetic,
)

from npfrcnn import FasterRCNN  # noqa: E402
from npfrcnn.modeling.rpn import LevelOutput, MultiLevelRPNOutput  # noqa: E402
from npfrcnn.weights.convert_detectron2 import detectron2_to_hdf5  # noqa: E402

#: profile -> (oracle variant, reduced units, file format written)
VARIANTS = {
    "detectron2-r50-fpn": ("fpn", (1, 2, 1, 1), "pkl"),
    "detectron2-r101-fpn": ("fpn", (1, 1, 3, 1), "pth"),
    "detectron2-r101-c4": ("c4", (1, 1, 2, 2), "pkl"),
}
#: reduced widths (oracle knob -> value), 5 classes, small images
WIDTHS = {"stem_channels": 16, "res2_channels": 64, "width_per_group": 16, "fpn_channels": 32,
          "fc_dim": 64}
SIZES = {"min_size_test": 160, "max_size_test": 256}
NUM_CLASSES = 5


def build_oracle(variant: str, units, seed: int, **knobs) -> d2_oracle.D2Oracle:
    torch.manual_seed(seed)
    model = d2_oracle.D2Oracle(variant, units=units, num_classes=NUM_CLASSES, **knobs)
    return model.randomize_(seed)


def images() -> list[tuple[str, np.ndarray]]:
    out = [("synthetic-150x220", synthetic(150, 220, 1)),
           ("synthetic-333x181", synthetic(333, 181, 2))]
    if SHARED.is_dir():
        from npfrcnn.image import load

        photo = sorted(SHARED.glob("*.jpg"))[0]
        out.append((photo.name, load(photo)))
    return out


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def pair(request, tmp_path_factory):
    torch.set_num_threads(2)
    profile = request.param
    variant, units, fmt = VARIANTS[profile]
    oracle = build_oracle(variant, units, seed=5, **WIDTHS, **SIZES)
    folder = tmp_path_factory.mktemp(profile)
    if fmt == "pkl":
        src = folder / "model_final_0123ab.pkl"
        d2_oracle.save_model_zoo_pkl(oracle.state_dict(), src)
    else:
        src = folder / "model_final.pth"
        d2_oracle.save_model_final_pth(oracle, src)
    detectron2_to_hdf5(src, folder / "model.h5", profile, changes=dict(SIZES))
    ours = FasterRCNN.from_hdf5(folder / "model.h5", backend="cpu")
    return profile, oracle, ours


def path_layers(model: FasterRCNN) -> int:
    """Conv/Linear layers on the longest path to the predictor's output (for conv_tol)."""
    c = model.config
    body = 1 + 3 * sum(c.units_per_block[:3]) + 1  # stem, res2..res4, one shortcut
    if c.is_fpn:
        return body + 3 * c.units_per_block[3] + 2 + 1 + c.num_fc + 1
    return body + 1 + 3 * c.units_per_block[3] + 1 + 1


def k_max(model: FasterRCNN) -> int:
    c = model.config
    ks = [9 * max(c.bottleneck_widths), max(c.stage_channels), 49 * 3]
    if c.is_fpn:
        ks += [9 * c.fpn_channels, c.fpn_channels * c.pooler_resolution ** 2, c.fc_dim]
    return max(ks)


def nhwc(t) -> np.ndarray:
    a = t.numpy() if hasattr(t, "numpy") else np.asarray(t)
    return np.ascontiguousarray(a.transpose(0, 2, 3, 1))


def bgr(image: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(image[:, :, ::-1])


def oracle_rpn(ref, ours: FasterRCNN) -> MultiLevelRPNOutput:
    """The oracle's per-level head outputs as npfrcnn's RPN output."""
    names = ["p2", "p3", "p4", "p5", "p6"] if ours.config.is_fpn else ["res4"]
    feats = ref["features"]
    levels = {}
    for name, lg, dl in zip(names, ref["rpn_logits"], ref["rpn_deltas"], strict=True):
        h, w = feats[name].shape[-2:]
        levels[name] = LevelOutput(np.ascontiguousarray(lg), np.ascontiguousarray(dl), (h, w))
    return MultiLevelRPNOutput(levels, (0, 0))


def check_stages(oracle, ours: FasterRCNN, name: str, image: np.ndarray) -> None:
    """Every stage against the oracle's, each also fed the oracle's input (module docstring)."""
    ref = oracle.forward(bgr(image))
    cfg = ours.config
    layers, kmax = path_layers(ours), k_max(ours)

    # 1. input: bitwise.
    pre = ours.transform(image)
    rpre = ref["preprocess"]
    assert pre.image_size == tuple(rpre["image_size"]), f"{name}: resized size"
    assert pre.original_size == tuple(rpre["original_size"])
    np.testing.assert_array_equal(ours.parts.transform.resize(bgr(image)),
                                  rpre["resized_uint8"], err_msg=f"{name}: Pillow resize")
    np.testing.assert_array_equal(pre.x, nhwc(rpre["input"]), err_msg=f"{name}: input")

    # 2. backbone fed the oracle's input; the FPN also fed the oracle's res2..res5.
    feats = ours.features(nhwc(rpre["input"]))
    body = ours.parts.backbone.last_body
    rfeats = ref["features"]
    for n in ("res2", "res3", "res4", "res5") if cfg.is_fpn else ("res2", "res3", "res4"):
        r = nhwc(rfeats[n])
        assert_close(body[n], r, conv_tol(r, layers, kmax), f"{name}: {n}")
    levels = ["p2", "p3", "p4", "p5", "p6"] if cfg.is_fpn else ["res4"]
    if cfg.is_fpn:
        fed = ours.parts.backbone.fpn({n: nhwc(rfeats[n]) for n in ("res2", "res3", "res4",
                                                                     "res5")})
        for n in levels:
            r = nhwc(rfeats[n])
            assert_close(feats[n], r, conv_tol(r, layers, kmax), f"{name}: {n}")
            assert_close(fed[n], r, conv_tol(r, 4, kmax), f"{name}: {n} (fed)")

    # 3. RPN head fed the oracle's features.
    tfeats = {n: nhwc(rfeats[n]) for n in levels}
    rpn_out = ours.rpn(tfeats)
    trpn = oracle_rpn(ref, ours)
    for n in levels:
        g, r = rpn_out.levels[n], trpn.levels[n]
        assert_close(g.logits, r.logits, conv_tol(r.logits, 3, kmax), f"{name}: logits {n}")
        assert_close(g.deltas, r.deltas, conv_tol(r.deltas, 3, kmax), f"{name}: deltas {n}")

    # 4. anchors: bitwise.
    anchors = ours.anchors(trpn)
    for n, ra in zip(levels, ref["anchors"], strict=True):
        np.testing.assert_array_equal(anchors[n], ra, err_msg=f"{name}: anchors {n}")

    # 5. proposals fed the oracle's head outputs: every index identical, boxes to the exp
    # stand-in, logits bitwise.
    props = ours.proposals(trpn, pre.image_size, anchors)
    rp = ref["proposals"]
    rdec = np.concatenate(rp["decoded"])
    assert_close(props.decoded, rdec, box_tol(rdec), f"{name}: decoded anchors")
    offsets = np.cumsum([0] + [len(a) for a in ref["anchors"]])[:-1]
    rtop = np.concatenate([idx + off for idx, off in zip(rp["topk_idx"], offsets, strict=True)])
    np.testing.assert_array_equal(props.top_k, rtop, err_msg=f"{name}: RPN top-k")
    np.testing.assert_array_equal(props.levels, rp["level_ids"])
    rkept = np.flatnonzero(rp["valid"])[rp["nonempty"]]
    np.testing.assert_array_equal(props.kept, rkept, err_msg=f"{name}: non-empty candidates")
    post = cfg.rpn_post_nms_topk_test
    np.testing.assert_array_equal(props.nms[:post], rp["nms_keep"], err_msg=f"{name}: RPN NMS")
    np.testing.assert_array_equal(props.kept[props.nms[:post]], rp["candidate_index"])
    assert_close(props.boxes, rp["boxes"], box_tol(rp["boxes"]), f"{name}: proposals")
    np.testing.assert_array_equal(props.scores, rp["logits"], err_msg=f"{name}: proposal logits")
    # ... and the last steps fed the oracle's own clipped candidates: the same NMS, exactly.
    v = np.flatnonzero(rp["valid"])
    kept, sel = ours.parts.rpn.select(rp["clipped"], np.concatenate(rp["topk_logits"])[v],
                                      rp["level_ids"][v])
    np.testing.assert_array_equal(kept, np.flatnonzero(rp["nonempty"]))
    np.testing.assert_array_equal(sel[:post], rp["nms_keep"], err_msg=f"{name}: select")

    # 6. pooler fed the oracle's features and proposals: levels and RoIAlign bitwise.
    pooled = ours.pool_rois(tfeats, rp["boxes"], pre.image_size)
    if cfg.is_fpn:
        np.testing.assert_array_equal(pooled.levels + 2, ref["pool_levels"], err_msg="levels")
    np.testing.assert_array_equal(pooled.features, nhwc(ref["pooled"]),
                                  err_msg=f"{name}: pooled")

    # 7. box head and predictor fed the oracle's pooled RoIs and box features.
    bf = ours.parts.box_head(nhwc(ref["pooled"]))
    rbf = ref["box_features"]
    assert_close(bf, rbf, conv_tol(rbf, 3 * cfg.units_per_block[3] + 2, kmax),
                 f"{name}: box features")
    reg, logits = ours.parts.predictor(rbf)
    rl, rr = ref["cls_logits"], ref["box_deltas"]
    assert_close(logits, rl, conv_tol(rl, 1, kmax), f"{name}: class logits")
    assert_close(reg, rr, conv_tol(rr, 1, kmax), f"{name}: box deltas")

    # 8. inference + detector_postprocess fed the oracle's proposals, logits and deltas.
    rpost = ref["postprocess"]
    d2 = ours.parts.postprocess(rp["boxes"], rr, rl, pre.image_size, pre.original_size)
    np.testing.assert_array_equal(ours.parts.postprocess.scores(rl), rpost["probs"],
                                  err_msg=f"{name}: softmax")
    n = cfg.num_classes
    np.testing.assert_array_equal(
        d2.candidates, rpost["cand_proposal"] * n + rpost["cand_classes"],
        err_msg=f"{name}: candidates",
    )
    np.testing.assert_array_equal(d2.nms, rpost["nms_keep_all"], err_msg=f"{name}: final NMS")
    assert_close(d2.resized_boxes, rpost["resized_boxes"], box_tol(rpost["resized_boxes"]),
                 f"{name}: detections in the resized image")
    np.testing.assert_array_equal(d2.labels, rpost["classes"], err_msg=f"{name}: classes")
    np.testing.assert_array_equal(d2.scores, rpost["scores"], err_msg=f"{name}: scores")
    assert_close(d2.boxes, rpost["boxes"], box_tol(rpost["boxes"]), f"{name}: final boxes")
    assert len(rpost["classes"]) > 0, f"{name}: the random model detects nothing"

    # 9. end to end, through our own convolutions: the same detections as a set.
    e2e = ours.detect(image)
    fake = {"boxes": torch.from_numpy(rpost["boxes"]),
            "labels": torch.from_numpy(rpost["classes"] + 1),  # match_sets' 1-based labels
            "scores": torch.from_numpy(rpost["scores"])}
    match_sets(e2e, fake, conv_tol(rl, layers, kmax), name)


@pytest.mark.parametrize("index", [0, 1, 2])
def test_stages(pair, index):
    profile, oracle, ours = pair
    imgs = images()
    if index >= len(imgs):
        pytest.skip("the workshop photos (../shared) are not here")
    name, image = imgs[index]
    check_stages(oracle, ours, name, image)


@pytest.mark.parametrize("knobs", [
    {"rpn_pre_nms_topk_test": 50, "rpn_post_nms_topk_test": 30, "rpn_nms_thresh": 0.5},
    {"rpn_pre_nms_topk_test": 3000, "rpn_post_nms_topk_test": 2000, "rpn_min_size": 6.0},
    {"score_thresh_test": 0.3, "nms_thresh_test": 0.3, "detections_per_image": 7},
    {"score_thresh_test": 0.0, "nms_thresh_test": 0.9, "detections_per_image": 0},
    {"min_size_test": 96, "max_size_test": 120},
])
def test_knobs(pair, knobs):
    """Test-time knobs as config values, against the oracle run with the same values."""
    profile, oracle, ours = pair
    name, image = images()[1]
    old = {k: oracle.cfg[k] for k in knobs}
    oracle.cfg.update(knobs)
    knobbed = FasterRCNN(ours.config.replace(**knobs), ours.classes, ours.tensors)
    try:
        if knobs.get("detections_per_image") == 0:
            ref = oracle.forward(bgr(image))
            assert len(ref["postprocess"]["classes"]) == 0
            assert len(knobbed.detect(image)) == 0
        else:
            check_stages(oracle, knobbed, f"{name} {knobs}", image)
    finally:
        oracle.cfg.update(old)


def test_nonfinite_and_empty_proposals(pair):
    """Non-finite and empty candidates in the RPN are dropped as Detectron2 drops them: the
    oracle's head outputs with planted NaN/inf deltas and a huge negative delta (an empty box
    after clipping), fed to both."""
    profile, oracle, ours = pair
    name, image = images()[0]
    ref = oracle.forward(bgr(image))
    logits = [np.array(v, copy=True) for v in ref["rpn_logits"]]
    deltas = [np.array(v, copy=True) for v in ref["rpn_deltas"]]
    top = int(np.argmax(logits[0]))
    deltas[0][top] = [np.nan, 0, 0, 0]
    second = int(np.argsort(logits[0])[-2])
    deltas[0][second] = [0, 0, np.inf, 0]
    third = int(np.argsort(logits[0])[-3])
    deltas[0][third] = [-1e4, 0, 0, 0]  # moved far left: clipped to zero width
    logits[0][int(np.argsort(logits[0])[-4])] = np.inf
    with torch.no_grad():
        rp = oracle.proposals(logits, deltas, ref["anchors"], ref["preprocess"]["image_size"])
    rp = d2_oracle.to_numpy(rp)
    names = ["p2", "p3", "p4", "p5", "p6"] if ours.config.is_fpn else ["res4"]
    feats = ref["features"]
    trpn = MultiLevelRPNOutput(
        {n: LevelOutput(lg, dl, tuple(feats[n].shape[-2:]))
         for n, lg, dl in zip(names, logits, deltas, strict=True)}, (0, 0))
    props = ours.proposals(trpn, tuple(ref["preprocess"]["image_size"]), ours.anchors(trpn))
    assert not rp["valid"].all()
    np.testing.assert_array_equal(props.kept, np.flatnonzero(rp["valid"])[rp["nonempty"]])
    np.testing.assert_array_equal(props.kept[props.nms[: ours.config.rpn_post_nms_topk_test]],
                                  rp["candidate_index"])
    np.testing.assert_array_equal(props.scores, rp["logits"])


def test_cli_convert_and_detect(pair, tmp_path):
    """``npfrcnn convert --from detectron2`` then ``npfrcnn detect`` on a photo file: the JSON
    detections are the oracle's on the decoded image (no torch in npfrcnn's process path)."""
    from npfrcnn.cli import main
    from npfrcnn.image import load

    profile, oracle, ours = pair
    pkl = tmp_path / "model.pkl"
    d2_oracle.save_model_zoo_pkl(oracle.state_dict(), pkl)
    h5 = tmp_path / "model.h5"
    args = ["convert", str(pkl), str(h5), "--profile", profile]
    for k, v in SIZES.items():
        args += ["--set", f"{k}={v}"]
    assert main(args) == 0
    from PIL import Image

    photo = tmp_path / "photo.png"
    Image.fromarray(synthetic(170, 240, 7)).save(photo)
    out = tmp_path / "dets.jsonl"
    assert main(["detect", str(photo), "--weights", str(h5), "--output", str(out)]) == 0
    lines = [json.loads(x) for x in out.read_text().splitlines() if x.strip()]
    assert len(lines) == 1
    rec = lines[0]
    ref = oracle.forward(bgr(load(photo)))["postprocess"]
    dets = rec["detections"]
    assert len(dets) == len(ref["classes"])
    got = sorted((d["class_id"], round(d["score"], 4)) for d in dets)
    want = sorted((int(c), round(float(s), 4)) for c, s in zip(ref["classes"], ref["scores"],
                                                               strict=True))
    assert got == want


@pytest.mark.slow
def test_every_workshop_photo(pair):
    """The reduced models on all six workshop photos (CI runs the first one)."""
    if not SHARED.is_dir():
        pytest.skip("the workshop photos (../shared) are not here")
    from npfrcnn.image import load

    profile, oracle, ours = pair
    for photo in sorted(p for p in SHARED.iterdir() if p.suffix in (".jpg", ".png")):
        check_stages(oracle, ours, photo.name, load(photo))


@pytest.mark.slow
@pytest.mark.parametrize("profile", sorted(VARIANTS))
def test_full_size_stages(profile, tmp_path):
    """The full-size models (80 classes, 800/1333) on a 480x640 image (resized to 800x1067)."""
    torch.set_num_threads(2)
    variant = VARIANTS[profile][0]
    units = (3, 4, 6, 3) if profile == "detectron2-r50-fpn" else (3, 4, 23, 3)
    torch.manual_seed(9)
    oracle = d2_oracle.D2Oracle(variant, units=units, num_classes=80).randomize_(9)
    d2_oracle.save_model_zoo_pkl(oracle.state_dict(), tmp_path / "m.pkl")
    detectron2_to_hdf5(tmp_path / "m.pkl", tmp_path / "m.h5", profile)
    ours = FasterRCNN.from_hdf5(tmp_path / "m.h5")
    imgs = images()
    name, image = imgs[2] if len(imgs) > 2 else ("synthetic-480x640", synthetic(480, 640, 9))
    check_stages(oracle, ours, name, image)


def test_tolerance_catches_a_planted_departure(pair):
    """The derived conv tolerance is tight enough to catch a small real departure: the last
    res4 block's conv3 norm scaled by 1.02 (as a mis-converted FrozenBN would be) moves res4
    by more than the tolerance, while the true weights stay within it."""
    profile, oracle, ours = pair
    name, image = images()[0]
    ref = oracle.forward(bgr(image))
    r = nhwc(ref["features"]["res4"])
    tol = conv_tol(r, path_layers(ours), k_max(ours))
    x = nhwc(ref["preprocess"]["input"])
    good = ours.parts.backbone.resnet(x)["res4"]
    assert float(np.abs(good - r).max()) <= tol
    last = ours.parts.backbone.resnet.stages["res4"][-1].prefix + "conv3.norm.weight"
    bad_tensors = dict(ours.tensors)
    bad_tensors[last] = bad_tensors[last] * np.float32(1.02)
    bad = FasterRCNN(ours.config, ours.classes, bad_tensors).parts.backbone.resnet(x)["res4"]
    assert float(np.abs(bad - r).max()) > tol, (float(np.abs(bad - r).max()), tol)
    assert math.isfinite(tol)
