"""Self-checks of the Detectron2 oracle (``tests/d2_oracle.py``): hand-worked cases, Detectron2's
state-dict layout, the checkpoint files, and invariants of one tiny forward per variant.

The oracle was also compared with Detectron2 itself (v0.6 source, on CPU, the same weights loaded
from the oracle's ``model_final.pth`` / model-zoo ``.pkl``): every stage bitwise equal.
:func:`test_matches_detectron2` repeats that comparison where ``detectron2`` (and fvcore) can be
imported; CI has no Detectron2, so it is skipped there.
"""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

import d2_oracle as d2  # noqa: E402

SMALL = dict(stem_channels=16, res2_channels=64, width_per_group=16, fpn_channels=32, fc_dim=64)


def synthetic(h: int, w: int, seed: int) -> np.ndarray:
    """A smooth random image with a flat box, uint8 (used as BGR)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.zeros((h, w, 3), np.float64)
    for c in range(3):
        fy, fx, ph = rng.uniform(0.02, 0.15, 3)
        img[..., c] = 127 + 100 * np.sin(fy * yy + ph) * np.cos(fx * xx)
    img[h // 4 : h // 4 + h // 3, w // 3 : w // 3 + w // 4] = rng.integers(0, 255, 3)
    img += rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


# ---- hand-worked rules -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "hw, short, longest, expect",
    [
        # h < w: new_h = 800, new_w = 800 / 480 * 640 = 1066.67 -> int(1067.17) = 1067
        ((480, 640), 800, 1333, (800, 1067)),
        # h >= w: (1600, 800) exceeds 1333: scale 1333 / 1600 -> (1333.0, 666.5); int(x + 0.5)
        # rounds the half up: 667
        ((1000, 500), 800, 1333, (1333, 667)),
        # square: the else branch, 800 / 100 * 100 = 800
        ((100, 100), 800, 1333, (800, 800)),
        # (800, 2666.67) -> scale 1333 / 2666.67: (399.9, 1333.0) -> (400, 1333)
        ((600, 2000), 800, 1333, (400, 1333)),
        # 64 / 50 * 70 = 89.6 -> 90
        ((50, 70), 64, 100, (64, 90)),
        # upscaling a tiny image: 800 / 2 * 3 = 1200 (< 1333, kept)
        ((3, 2), 800, 1333, (1200, 800)),
    ],
)
def test_get_output_shape_by_hand(hw, short, longest, expect):
    assert d2.get_output_shape(*hw, short, longest) == expect


def test_cell_anchors_by_hand():
    # size 32: ratio 0.5 -> w = sqrt(1024 / 0.5) = 45.2548, h = 22.6274; 1 -> 32 x 32;
    # 2 -> w = sqrt(512) = 22.6274, h = 45.2548; corners +-w/2, +-h/2 (float64, then float32)
    a = d2.cell_anchors([32, 64], [0.5, 1.0, 2.0])
    assert a.dtype == torch.float32 and a.shape == (6, 4)
    hw, hh = math.sqrt(2048) / 2, math.sqrt(512) / 2
    expect = np.array(
        [
            [-hw, -hh, hw, hh],
            [-16, -16, 16, 16],
            [-hh, -hw, hh, hw],
            [-2 * hw, -2 * hh, 2 * hw, 2 * hh],  # size 64 follows all ratios of size 32
            [-32, -32, 32, 32],
            [-2 * hh, -2 * hw, 2 * hh, 2 * hw],
        ],
        np.float64,
    ).astype(np.float32)
    np.testing.assert_array_equal(a.numpy(), expect)


def test_anchors_of_a_2x3_map_by_hand():
    """C4: one level, stride 16, 15 cell anchors (5 sizes x 3 ratios), offset 0: anchor
    (y, x, a) is cell anchor a shifted by (16 x, 16 y)."""
    m = d2.D2Oracle("c4", units=(1, 1, 1, 1), num_classes=3, **SMALL)
    feat = torch.zeros((1, 256, 2, 3))
    (anchors,) = m.anchors({"res4": feat})
    assert anchors.shape == (2 * 3 * 15, 4) and anchors.dtype == torch.float32
    cell = d2.cell_anchors((32, 64, 128, 256, 512), (0.5, 1.0, 2.0))
    for y in range(2):
        for x in range(3):
            rows = anchors[(y * 3 + x) * 15 : (y * 3 + x + 1) * 15]
            shift = torch.tensor([16.0 * x, 16.0 * y, 16.0 * x, 16.0 * y])
            assert torch.equal(rows, cell + shift)
    # row 0 (y 0, x 0, size 32, ratio 0.5) and row 15 + 4 (x 1, size 64, ratio 1)
    assert torch.equal(anchors[0], cell[0])
    np.testing.assert_array_equal(anchors[19].numpy(), [16 - 32, -32, 16 + 32, 32])


def test_fpn_anchors_and_strides():
    m = d2.D2Oracle("fpn", units=(1, 1, 1, 1), num_classes=3, **SMALL)
    feats = [torch.zeros((1, 32, 2, 3)) for _ in range(5)]
    out = m.anchors(feats)
    assert [len(a) for a in out] == [18] * 5
    for lvl, (a, stride, size) in enumerate(
        zip(out, (4, 8, 16, 32, 64), (32, 64, 128, 256, 512), strict=True)
    ):
        cell = d2.cell_anchors((size,), (0.5, 1.0, 2.0))
        assert torch.equal(a[:3], cell), lvl
        assert torch.equal(a[3 * 5 : 3 * 6], cell + torch.tensor([2.0, 1, 2, 1]) * stride), lvl


def test_apply_deltas_by_hand():
    box = torch.tensor([[0.0, 0.0, 10.0, 20.0]])  # w 10, h 20, centre (5, 10)
    # dx 0.1 -> cx 6; dy 0.2 -> cy 14; dw log 2 -> w 20; dh 0 -> h 20
    deltas = torch.tensor([[0.1, 0.2, math.log(2.0), 0.0]])
    out = d2.apply_deltas(deltas, box, (1, 1, 1, 1), math.log(1000 / 16))
    np.testing.assert_allclose(out.numpy(), [[-4.0, 4.0, 16.0, 24.0]], rtol=1e-6)
    # the same through the box head's weights (10, 10, 5, 5), for two classes
    deltas2 = torch.tensor([[1.0, 2.0, 5 * math.log(2.0), 0.0, 0.0, 0.0, 0.0, 0.0]])
    out2 = d2.apply_deltas(deltas2, box, (10, 10, 5, 5), math.log(1000 / 16))
    assert out2.shape == (1, 8)
    np.testing.assert_allclose(out2[0, :4].numpy(), [-4.0, 4.0, 16.0, 24.0], rtol=1e-6)
    np.testing.assert_array_equal(out2[0, 4:].numpy(), [0.0, 0.0, 10.0, 20.0])
    # dw clamped at log(1000 / 16): the width grows at most 62.5 times
    big = d2.apply_deltas(
        torch.tensor([[0.0, 0.0, 50.0, 0.0]]), box, (1, 1, 1, 1), 4.135166556742356
    )
    np.testing.assert_allclose(float(big[0, 2] - big[0, 0]), 625.0, rtol=1e-5)


def test_clip_and_nonempty():
    b = torch.tensor([[-5.0, -1.0, 50.0, 30.0], [10.0, 10.0, 10.0, 20.0], [3.0, 3.0, 3.5, 4.0]])
    c = d2.clip_boxes(b, (20, 40))  # size (h, w)
    np.testing.assert_array_equal(c[0].numpy(), [0, 0, 40, 20])
    assert d2.nonempty(c).tolist() == [True, False, True]  # width 0 is empty (strict >)
    assert d2.nonempty(c, 0.5).tolist() == [True, False, False]  # 0.5 is not > 0.5


@pytest.mark.parametrize(
    "side, level",
    [
        (224.0, 4),  # canonical: log2(1 + 1e-8) is 0 in float32
        (448.0, 5),
        (112.0, 3),
        (56.0, 2),
        (223.0, 3),  # just under the canonical size
        (28.0, 2),  # would be level 1: clamped to 2
        (2000.0, 5),  # would be level 7: clamped to 5
    ],
)
def test_level_assignment(side, level):
    box = torch.tensor([[10.0, 10.0, 10.0 + side, 10.0 + side]])
    assert d2.assign_levels(box, 2, 5, 224, 4).tolist() == [level]


def test_level_assignment_uses_sqrt_area():
    # 112 x 448 has sqrt(area) 224: level 4, as a 224 x 224 box
    box = torch.tensor([[0.0, 0.0, 112.0, 448.0]])
    assert d2.assign_levels(box, 2, 5, 224, 4).tolist() == [4]


# ---- Detectron2's state dict -----------------------------------------------------------------


def _expected_count(variant: str, units) -> int:
    """Detectron2's keys from its module structure: a conv with FrozenBN has 5 tensors (weight
    + norm weight, bias, running_mean, running_var; num_batches_tracked is a None buffer); a
    bottleneck 3 of those, the first of each stage one more (the shortcut)."""
    stem = 5
    stage = [5 * (3 * n + 1) for n in units]
    rpn = 6  # conv, objectness_logits, anchor_deltas: weight + bias each
    predictor = 4  # cls_score, bbox_pred
    if variant == "c4":  # backbone res2..res4, roi_heads.res5
        return stem + sum(stage) + rpn + predictor
    fpn = 4 * 2 * 2  # fpn_lateral2..5 and fpn_output2..5, weight + bias
    box_head = 4  # fc1, fc2
    return stem + sum(stage) + fpn + rpn + box_head + predictor


@pytest.mark.parametrize(
    "variant, units, count",
    [
        ("fpn", (3, 4, 6, 3), 295),  # R50-FPN (Detectron2's model: 295 keys)
        ("fpn", (3, 4, 23, 3), 550),  # R101-FPN (550)
        ("c4", (3, 4, 23, 3), 530),  # R101-C4 (530)
    ],
)
def test_state_dict_key_count(variant, units, count):
    assert _expected_count(variant, units) == count
    m = d2.D2Oracle(variant, units=units, num_classes=80, **SMALL)
    sd = m.state_dict()
    assert len(sd) == count
    assert not any(k.endswith("num_batches_tracked") for k in sd)
    assert "pixel_mean" not in sd and not any("anchor_generator" in k for k in sd)


def test_state_dict_keys_and_shapes_r50_fpn():
    m = d2.D2Oracle("fpn", units=(3, 4, 6, 3), num_classes=80)
    sd = m.state_dict()
    keys = list(sd)
    # Detectron2's order: FPN registers its convs before bottom_up; a block's shortcut first
    assert keys[:4] == [
        "backbone.fpn_lateral2.weight",
        "backbone.fpn_lateral2.bias",
        "backbone.fpn_output2.weight",
        "backbone.fpn_output2.bias",
    ]
    assert keys[16:22] == [
        "backbone.bottom_up.stem.conv1.weight",
        "backbone.bottom_up.stem.conv1.norm.weight",
        "backbone.bottom_up.stem.conv1.norm.bias",
        "backbone.bottom_up.stem.conv1.norm.running_mean",
        "backbone.bottom_up.stem.conv1.norm.running_var",
        "backbone.bottom_up.res2.0.shortcut.weight",
    ]
    assert keys[-14:] == [
        "proposal_generator.rpn_head.conv.weight",
        "proposal_generator.rpn_head.conv.bias",
        "proposal_generator.rpn_head.objectness_logits.weight",
        "proposal_generator.rpn_head.objectness_logits.bias",
        "proposal_generator.rpn_head.anchor_deltas.weight",
        "proposal_generator.rpn_head.anchor_deltas.bias",
        "roi_heads.box_head.fc1.weight",
        "roi_heads.box_head.fc1.bias",
        "roi_heads.box_head.fc2.weight",
        "roi_heads.box_head.fc2.bias",
        "roi_heads.box_predictor.cls_score.weight",
        "roi_heads.box_predictor.cls_score.bias",
        "roi_heads.box_predictor.bbox_pred.weight",
        "roi_heads.box_predictor.bbox_pred.bias",
    ]
    shapes = {
        "backbone.bottom_up.stem.conv1.weight": (64, 3, 7, 7),
        "backbone.bottom_up.res2.0.shortcut.weight": (256, 64, 1, 1),
        "backbone.bottom_up.res3.0.conv1.weight": (128, 256, 1, 1),  # stride 2 here (1x1)
        "backbone.bottom_up.res5.2.conv3.norm.running_var": (2048,),
        "backbone.fpn_lateral5.weight": (256, 2048, 1, 1),
        "backbone.fpn_output3.weight": (256, 256, 3, 3),
        "proposal_generator.rpn_head.objectness_logits.weight": (3, 256, 1, 1),
        "proposal_generator.rpn_head.anchor_deltas.weight": (12, 256, 1, 1),
        "roi_heads.box_head.fc1.weight": (1024, 256 * 7 * 7),
        "roi_heads.box_predictor.cls_score.weight": (81, 1024),
        "roi_heads.box_predictor.bbox_pred.weight": (320, 1024),
    }
    for k, s in shapes.items():
        assert tuple(sd[k].shape) == s, k
    body = m._body()
    assert body.res3[0].conv1.stride == (2, 2) and body.res3[0].conv2.stride == (1, 1)
    assert body.res2[0].conv1.stride == (1, 1)


def test_state_dict_keys_r101_c4():
    m = d2.D2Oracle("c4", units=(3, 4, 23, 3), num_classes=80)
    sd = m.state_dict()
    keys = list(sd)
    assert keys[0] == "backbone.stem.conv1.weight"
    assert "backbone.res4.22.conv3.norm.running_var" in sd
    assert not any(k.startswith("backbone.res5") for k in keys)
    assert [k for k in keys if k.startswith("roi_heads.res5.0.shortcut")] == [
        "roi_heads.res5.0.shortcut.weight",
        "roi_heads.res5.0.shortcut.norm.weight",
        "roi_heads.res5.0.shortcut.norm.bias",
        "roi_heads.res5.0.shortcut.norm.running_mean",
        "roi_heads.res5.0.shortcut.norm.running_var",
    ]
    assert tuple(sd["roi_heads.res5.0.conv1.weight"].shape) == (512, 1024, 1, 1)
    assert m.roi_heads.res5[0].conv1.stride == (2, 2)
    assert tuple(sd["proposal_generator.rpn_head.conv.weight"].shape) == (1024, 1024, 3, 3)
    assert tuple(sd["proposal_generator.rpn_head.objectness_logits.weight"].shape) == (
        15,
        1024,
        1,
        1,
    )
    assert tuple(sd["roi_heads.box_predictor.cls_score.weight"].shape) == (81, 2048)
    assert keys[-4:] == [
        "roi_heads.box_predictor.cls_score.weight",
        "roi_heads.box_predictor.cls_score.bias",
        "roi_heads.box_predictor.bbox_pred.weight",
        "roi_heads.box_predictor.bbox_pred.bias",
    ]
    # FrozenBatchNorm2d._version 3 in the metadata, as Detectron2's
    assert sd._metadata["backbone.stem.conv1.norm"]["version"] == 3


def test_unknown_knob_and_variant():
    with pytest.raises(TypeError):
        d2.D2Oracle("fpn", units=(1, 1, 1, 1), min_size=3)
    with pytest.raises(ValueError):
        d2.D2Oracle("c5")


# ---- weights and files -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny():
    """Both variants at full width, one block per stage, 3 classes, seeded."""
    kw = dict(num_classes=3, min_size_test=64, max_size_test=100)
    return {
        "c4": d2.D2Oracle("c4", units=(1, 1, 1, 1), **kw).randomize_(0),
        "fpn": d2.D2Oracle("fpn", units=(1, 1, 1, 1), **kw).randomize_(0),
    }


def test_randomize_is_seeded():
    a = d2.D2Oracle("fpn", units=(1, 1, 1, 1), num_classes=3, **SMALL).randomize_(3)
    b = d2.D2Oracle("fpn", units=(1, 1, 1, 1), num_classes=3, **SMALL).randomize_(3)
    c = d2.D2Oracle("fpn", units=(1, 1, 1, 1), num_classes=3, **SMALL).randomize_(4)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["roi_heads.box_head.fc1.weight"], sc["roi_heads.box_head.fc1.weight"])
    for k, v in sa.items():
        assert torch.isfinite(v).all(), k
        if k.endswith("running_var"):
            assert float(v.min()) >= 0.5 and float(v.max()) <= 2.0, k
        if k.endswith(".weight") and v.dim() > 1:
            assert float(v.std()) > 0, k


def test_model_zoo_pkl(tmp_path, tiny):
    sd = tiny["c4"].state_dict()
    for numpy1 in (False, True):
        path = tmp_path / f"zoo{int(numpy1)}.pkl"
        d2.save_model_zoo_pkl(sd, path, numpy1_names=numpy1)
        raw = path.read_bytes()
        assert (b"numpy.core.multiarray" in raw) == numpy1
        assert (b"numpy._core" in raw) == (not numpy1 and np.__version__ >= "2")
        with open(path, "rb") as f:
            data = pickle.load(f, encoding="latin1")  # as DetectionCheckpointer reads it
        assert set(data) == {"model", "__author__"}
        assert data["__author__"] == "Detectron2 Model Zoo"
        assert list(data["model"]) == list(sd)
        for k, v in data["model"].items():
            assert isinstance(v, np.ndarray) and v.dtype == np.float32, k
            np.testing.assert_array_equal(v, sd[k].numpy())


@pytest.mark.parametrize("layout", ["trainer", "legacy"])
def test_model_final_pth(tmp_path, tiny, layout):
    m = tiny["fpn"]
    path = tmp_path / "model_final.pth"
    d2.save_model_final_pth(m, path, layout=layout)
    data = torch.load(path, map_location="cpu", weights_only=True)
    sd = m.state_dict()
    assert list(data["model"]) == list(sd)
    assert all(torch.equal(data["model"][k], sd[k]) for k in sd)
    assert data["iteration"] == 9
    if layout == "trainer":
        assert set(data) == {"model", "trainer", "iteration"}
        tr = data["trainer"]
        assert set(tr) == {"iteration", "hooks", "_trainer"} and tr["iteration"] == 9
        assert tr["hooks"] == {"LRScheduler": {"base_lrs": [0.02], "last_epoch": 10}}
        assert tr["_trainer"]["iteration"] == 9
        opt = tr["_trainer"]["optimizer"]
    else:
        assert set(data) == {"model", "optimizer", "scheduler", "iteration"}
        assert data["scheduler"] == {"base_lrs": [0.02], "last_epoch": 10}
        opt = data["optimizer"]
    trainable = d2.trainable_parameters(m)
    names = [n for n, _ in trainable]
    assert not any(".stem." in n or ".res2." in n for n in names)  # FREEZE_AT 2
    assert "backbone.bottom_up.res3.0.conv1.weight" in names
    n_params = sum(1 for p in m.parameters())  # stem and res2 convs are frozen
    assert len(names) == n_params - 1 - (3 + 1)
    (group,) = opt["param_groups"]
    assert group["params"] == list(range(len(trainable)))
    assert group["lr"] == 0.02 and group["initial_lr"] == 0.02
    assert group["momentum"] == 0.9 and group["weight_decay"] == 1e-4
    assert group["nesterov"] is False and group["foreach"] is True
    assert len(opt["state"]) == len(trainable)
    for i, (_, p) in enumerate(trainable):
        assert opt["state"][i]["momentum_buffer"].shape == p.shape


# ---- one tiny forward per variant ------------------------------------------------------------


@pytest.mark.parametrize("variant", ["c4", "fpn"])
def test_preprocess(tiny, variant):
    m = tiny[variant]
    img = synthetic(50, 70, 0)
    pre = m.preprocess(img)
    assert pre["original_size"] == (50, 70) and pre["image_size"] == (64, 90)
    resized = pre["resized_uint8"]
    from PIL import Image

    expect = np.asarray(Image.fromarray(img).resize((90, 64), Image.BILINEAR))
    np.testing.assert_array_equal(resized, expect)
    x = pre["input"]
    assert x.dtype == torch.float32 and x.is_contiguous()
    mean = np.array([103.530, 116.280, 123.675], np.float32)[:, None, None]
    body = resized.astype(np.float32).transpose(2, 0, 1) - mean
    if variant == "fpn":  # padded to 32: 64 x 96, zeros bottom/right
        assert x.shape == (1, 3, 64, 96)
        assert not x[..., 90:].any()
    else:
        assert x.shape == (1, 3, 64, 90)
    np.testing.assert_array_equal(x[0, :, :64, :90].numpy(), body)


@pytest.mark.parametrize("variant", ["c4", "fpn"])
def test_tiny_forward_invariants(tiny, variant):
    m = tiny[variant]
    img = synthetic(60, 90, 1)
    out = m(img)
    h, w = out["preprocess"]["image_size"]
    assert (h, w) == (64, 96)
    feats = out["features"]
    if variant == "c4":
        assert set(feats) == {"res2", "res3", "res4"} and feats["res4"].shape == (1, 1024, 4, 6)
    else:
        assert set(feats) == {f"res{i}" for i in range(2, 6)} | {f"p{i}" for i in range(2, 7)}
        assert [feats[f"p{i}"].shape[-2:] for i in range(2, 7)] == [
            (16, 24),
            (8, 12),
            (4, 6),
            (2, 3),
            (1, 2),
        ]
        np.testing.assert_array_equal(feats["p6"], feats["p5"][:, :, ::2, ::2])
    for f in feats.values():
        assert np.isfinite(f).all() and 0.05 < np.sqrt((f**2).mean()) < 50
    props = out["proposals"]
    boxes, logits = props["boxes"], props["logits"]
    assert 10 < len(boxes) <= 1000
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= w).all() and (boxes[:, 3] <= h).all()
    assert ((boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])).all()
    assert (np.diff(logits) <= 0).all()  # batched_nms returns its keep sorted by score
    assert np.std(np.concatenate(out["rpn_logits"])) > 0.5
    # the candidates are each level's top-k: the concatenated scores are the top-k logits
    for lvl, (idx, lg) in enumerate(zip(props["topk_idx"], out["rpn_logits"], strict=True)):
        np.testing.assert_array_equal(props["topk_logits"][lvl], lg[idx])
        assert len(idx) == min(len(lg), m.cfg["rpn_pre_nms_topk_test"])
    levels = out["pool_levels"]
    assert levels.min() >= 2 and levels.max() <= 5
    assert out["pooled"].shape[0] == len(boxes)
    post = out["postprocess"]
    n = len(post["scores"])
    assert 0 < n <= 100
    assert (post["scores"] > 0.05).all() and (np.diff(post["scores"]) <= 0).all()
    assert (post["classes"] >= 0).all() and (post["classes"] < 3).all()
    fb = post["boxes"]
    assert (fb[:, 0] >= 0).all() and (fb[:, 2] <= 90).all() and (fb[:, 3] <= 60).all()
    assert ((fb[:, 2] > fb[:, 0]) & (fb[:, 3] > fb[:, 1])).all()
    # scores are the softmax probabilities of (proposal, class)
    np.testing.assert_array_equal(
        post["scores"], post["probs"][post["proposal_indices"], post["classes"]]
    )
    # candidates in proposal-major order
    key = post["cand_proposal"] * 10 + post["cand_classes"]
    assert (np.diff(key) > 0).all()


@pytest.mark.parametrize("variant", ["c4", "fpn"])
def test_stages_compose(tiny, variant):
    """Each stage fed the previous stage's NumPy output reproduces forward() bitwise."""
    m = tiny[variant]
    img = synthetic(70, 60, 2)
    out = m(img)
    with torch.no_grad():
        feats = m.backbone(out["preprocess"]["input"])
        for k, v in feats.items():
            np.testing.assert_array_equal(v.numpy(), out["features"][k])
        logits, deltas = m.rpn_head(out["features"])
        anchors = m.anchors(out["features"])
        size, orig = out["preprocess"]["image_size"], out["preprocess"]["original_size"]
        props = m.proposals(out["rpn_logits"], out["rpn_deltas"], out["anchors"], size)
        pooled, levels = m.pool(out["features"], out["proposals"]["boxes"])
        x = m.box_head(out["pooled"])
        cls, dl = m.predictor(out["box_features"])
        post = m.postprocess(
            out["proposals"]["boxes"], out["cls_logits"], out["box_deltas"], size, orig
        )
    assert (size, orig) == ((75, 64), (70, 60))  # h >= w: 64 / 60 * 70 = 74.67 -> 75
    for a, b in zip(logits, out["rpn_logits"], strict=True):
        np.testing.assert_array_equal(a.numpy(), b)
    for a, b in zip(deltas, out["rpn_deltas"], strict=True):
        np.testing.assert_array_equal(a.numpy(), b)
    for a, b in zip(anchors, out["anchors"], strict=True):
        np.testing.assert_array_equal(a.numpy(), b)
    np.testing.assert_array_equal(props["boxes"].numpy(), out["proposals"]["boxes"])
    np.testing.assert_array_equal(pooled.numpy(), out["pooled"])
    np.testing.assert_array_equal(levels.numpy(), out["pool_levels"])
    np.testing.assert_array_equal(x.numpy(), out["box_features"])
    np.testing.assert_array_equal(cls.numpy(), out["cls_logits"])
    np.testing.assert_array_equal(dl.numpy(), out["box_deltas"])
    for k in ("boxes", "scores", "classes", "proposal_indices"):
        np.testing.assert_array_equal(post[k].numpy(), out["postprocess"][k])
    # FPN pooling: each RoI is roi_align of its own level
    if variant == "fpn":
        boxes = torch.from_numpy(out["proposals"]["boxes"])
        for i in (0, len(boxes) // 2, len(boxes) - 1):
            lvl = int(levels[i])
            f = torch.from_numpy(out["features"][f"p{lvl}"])
            roi = torch.cat([torch.zeros(1, 1), boxes[i : i + 1]], dim=1)
            ref = torchvision.ops.roi_align(f, roi, (7, 7), 2.0**-lvl, 0, True)
            np.testing.assert_array_equal(ref[0].numpy(), out["pooled"][i])


def test_rpn_filters_non_finite_and_small_boxes():
    """find_top_rpn_proposals: NaN/inf candidates are dropped before clipping; boxes with a side
    <= min_size are dropped after it; NMS runs per level on the logits."""
    m = d2.D2Oracle("fpn", units=(1, 1, 1, 1), num_classes=3, rpn_min_size=2.0, **SMALL)
    anchors = [torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30], [0, 0, 10, 10]])]
    anchors += [torch.tensor([[0.0, 0, 10, 10]])] * 4
    deltas = [torch.zeros((3, 4))] + [torch.zeros((1, 4))] * 4
    deltas[0][1, 0] = float("nan")
    logits = [torch.tensor([5.0, 9.0, 4.0])] + [torch.tensor([1.0 + i]) for i in range(4)]
    # level 4's anchor moved out of the image: clipped to an empty box (width 0)
    anchors[4] = torch.tensor([[200.0, 0, 210, 10]])
    out = m.proposals(logits, deltas, anchors, (50, 50))
    # candidates: level 0 in top-k order (9.0 = the NaN box, 5.0, 4.0), then levels 1..4
    assert out["valid"].tolist() == [False, True, True, True, True, True, True]
    assert out["nonempty"].tolist() == [True, True, True, True, True, False]
    # level 0: anchors 0 and 2 coincide (IoU 1) -> the 4.0 one is suppressed; levels 1..3 are
    # separate groups, so their identical boxes survive; level 4's box is empty
    assert out["logits"].tolist() == [5.0, 3.0, 2.0, 1.0]
    assert out["levels"].tolist() == [0, 3, 2, 1]
    assert out["candidate_index"].tolist() == [1, 5, 4, 3]


def test_postprocess_rescales_and_filters():
    m = d2.D2Oracle("fpn", units=(1, 1, 1, 1), num_classes=2, **SMALL)
    props = torch.tensor([[10.0, 10.0, 30.0, 30.0], [0.0, 0.0, 4.0, 60.0]])
    # proposal 0: class 0 likely, class 1 not; proposal 1: class 1 above the threshold
    logits = torch.tensor([[4.0, -4.0, 0.0], [-4.0, 1.0, 0.0]])
    deltas = torch.zeros((2, 8))
    post = m.postprocess(props, logits, deltas, (64, 32), (128, 48))
    assert post["cand_proposal"].tolist() == [0, 1] and post["cand_classes"].tolist() == [0, 1]
    # x scale 48 / 32 = 1.5, y scale 128 / 64 = 2; proposal 1's y2 60 -> 120
    np.testing.assert_array_equal(
        post["boxes"].numpy(), [[15.0, 20.0, 45.0, 60.0], [0.0, 0.0, 6.0, 120.0]]
    )
    p = torch.softmax(logits, -1)
    assert post["scores"].tolist() == [float(p[0, 0]), float(p[1, 1])]


# ---- optional: against Detectron2 itself ------------------------------------------------------


def test_matches_detectron2(tmp_path):
    """Bitwise equality with Detectron2 (where it is importable, e.g. PYTHONPATH with its source,
    fvcore, iopath, yacs, omegaconf): the oracle's weights loaded through Detectron2's own
    checkpointer, every stage compared."""
    pytest.importorskip("fvcore")
    pytest.importorskip("detectron2.modeling")
    from detectron2.config import get_cfg
    from detectron2.engine import DefaultPredictor
    from detectron2.modeling import build_model

    img = synthetic(90, 120, 5)
    for variant, name in (("fpn", "faster_rcnn_R_50_FPN_3x"), ("c4", "faster_rcnn_R_101_C4_3x")):
        cfg = get_cfg()
        cfg.MODEL.DEVICE = "cpu"
        if variant == "fpn":
            cfg.MODEL.BACKBONE.NAME = "build_resnet_fpn_backbone"
            cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
            cfg.MODEL.FPN.IN_FEATURES = ["res2", "res3", "res4", "res5"]
            cfg.MODEL.ANCHOR_GENERATOR.SIZES = [[32], [64], [128], [256], [512]]
            cfg.MODEL.RPN.IN_FEATURES = ["p2", "p3", "p4", "p5", "p6"]
            cfg.MODEL.RPN.PRE_NMS_TOPK_TEST = 1000
            cfg.MODEL.ROI_HEADS.NAME = "StandardROIHeads"
            cfg.MODEL.ROI_HEADS.IN_FEATURES = ["p2", "p3", "p4", "p5"]
            cfg.MODEL.ROI_BOX_HEAD.NAME = "FastRCNNConvFCHead"
            cfg.MODEL.ROI_BOX_HEAD.NUM_FC = 2
            cfg.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION = 7
        cfg.MODEL.RESNETS.DEPTH = 50
        cfg.MODEL.ROI_HEADS.NUM_CLASSES = 3
        cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = 96, 160
        cfg.MODEL.RESNETS.STEM_OUT_CHANNELS = 16
        cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
        cfg.MODEL.RESNETS.WIDTH_PER_GROUP = 16
        cfg.MODEL.FPN.OUT_CHANNELS = 32
        cfg.MODEL.ROI_BOX_HEAD.FC_DIM = 64
        ora = d2.D2Oracle(
            variant, units=(3, 4, 6, 3), num_classes=3, min_size_test=96, max_size_test=160, **SMALL
        ).randomize_(7)
        assert list(ora.state_dict()) == list(build_model(cfg).state_dict()), name
        cfg.MODEL.WEIGHTS = str(tmp_path / f"{variant}_model_final.pth")
        d2.save_model_final_pth(ora, cfg.MODEL.WEIGHTS)
        predictor = DefaultPredictor(cfg)  # loads the weights with DetectionCheckpointer
        o = ora(img)
        inst = predictor(img)["instances"]
        assert len(inst) > 10, name
        np.testing.assert_array_equal(o["postprocess"]["boxes"], inst.pred_boxes.tensor.numpy())
        np.testing.assert_array_equal(o["postprocess"]["scores"], inst.scores.numpy())
        np.testing.assert_array_equal(o["postprocess"]["classes"], inst.pred_classes.numpy())
