"""The ONNX adapter (npfrcnn.trace.onnx): a seeded small torchvision R50-FPN exported with every
stage as a graph output, run in ONNX Runtime, traced, read back, and checked against
torchvision's own stages; plus what differs between ONNX Runtime and torchvision, and why.

Tolerances. ONNX Runtime's CPU kernels (MLAS convolutions and GEMMs) and torch's (oneDNN /
ATen) are both float32 but accumulate the dot products in different orders, so every dense
stage after the first convolution differs by rounding. A float32 dot product of length K
reordered changes by about sqrt(K) eps |terms| (eps = 2**-23 ~ 1.2e-7); through the ~20 layers
of the small model the measured difference relative to the stage's largest magnitude is at
most ~2e-6 (~17 eps), so the dense bound used here is RTOL = 2e-5 * max|ref| (10x the
measurement; a real departure, e.g. a wrong resize or a half-pixel offset in RoIAlign, is 1e-2
to 1 relative). Boxes are within RTOL of their largest coordinate. Index stages (top-k, NMS
keeps, FPN levels, labels) are discrete: they are equal where no score or IoU lies within
rounding of a decision; the ordered ones (top-k, NMS keeps) are compared as "the same elements,
and where the order differs the swapped elements' scores are within RTOL" (near ties).

Findings (measured in this file; see the individual tests):

* transform, resized size: for ~15% of image sizes the export resizes to one pixel less than
  eager torchvision (100x150 at min/max 160/256: 159x239, eagerly 160x240; 375x500, a common
  PASCAL VOC size, at torchvision's default 800/1333: 799x1066 vs 800x1066).
  torchvision's GeneralizedRCNNTransform computes the scale in float32 under the TorchScript
  tracer (``torch.min(min_size / min(h, w), ...)`` with ``Tensor.__rtruediv__`` =
  ``reciprocal() * min_size``, then ``floor(float32(h) * scale)``) and in float64 eagerly. It
  is the export, not ONNX Runtime: the traced torch module already returns 159x239. Every
  stage from ``input`` on then differs beyond rounding.
* transform, values at the same size: ONNX ``Resize`` (linear, half_pixel) vs torch's
  ``interpolate(bilinear, align_corners=False)``: about half the values differ, by at most 2
  ulps of the image's range (4.8e-7): rounding.
* RoIAlign: ONNX ``RoiAlign`` (``output_half_pixel``, sampling_ratio 2, avg) on torch's own
  features and proposals is bitwise equal to torchvision's ``roi_align(aligned=False)``; the
  exported graph uses exactly those attributes. ``half_pixel`` (= ``aligned=True``) would be
  off by up to ~1.8 here, so opset >= 16 (which has the attribute) is required.
* TopK: ONNX Runtime breaks ties by the lower index (ONNX's spec); ``torch.topk`` on CPU does
  not, so ``proposals/topk`` can differ where objectness logits tie exactly (none do here).
* NMS: ONNX ``NonMaxSuppression`` vs ``torchvision.ops.nms``, with tied scores and duplicate
  boxes: identical keeps. (Eager torchvision's ``batched_nms`` takes its per-class "vanilla"
  branch above 4000 coordinates, the export always the coordinate-offset trick; on this image
  the keeps agree.)
* FPN level of each RoI (``log2`` exported as ``Log / ln 2``): identical, also for box sizes
  within a few ulps of the level boundaries.
"""

from __future__ import annotations

import math
import time
import warnings

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")
pytest.importorskip("torchvision")

import tv_models  # noqa: E402
from onnx import TensorProto  # noqa: E402
from onnx import helper as oh  # noqa: E402
from torchvision.ops import nms, roi_align  # noqa: E402

from npfrcnn.trace import read_trace  # noqa: E402
from npfrcnn.trace.io import pixels_sha256  # noqa: E402
from npfrcnn.trace.onnx import (  # noqa: E402
    IMAGE_SIZE_OUTPUT,
    OnnxTraceError,
    _stage_names,
    _staged_module,
    export_torchvision,
    from_onnxruntime,
    read_onnx_meta,
    traced_image_size,
)
from npfrcnn.trace.schema import FPN_LEVELS, stage_info  # noqa: E402

RTOL = 2e-5
EPS32 = float(np.finfo(np.float32).eps)
H, W = 120, 150  # resized to 160x200 by the small model, eagerly and traced alike


def synthetic(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([128 + 100 * np.sin(xx / 9.0 + c) * np.cos(yy / 7.0 - c) for c in range(3)], -1)
    img = base + rng.normal(0, 20, (h, w, 3))
    img[h // 4: h // 2, w // 3: w // 2] = (230, 40, 40)  # a flat block: an "object"
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def model():
    torch.set_num_threads(2)
    return tv_models.build("r50-frozen0", small=True, seed=3)


@pytest.fixture(scope="module")
def run(model, tmp_path_factory):
    """Export (H x W), ORT trace of one image, torchvision's stages of the same image."""
    d = tmp_path_factory.mktemp("onnx")
    image = synthetic(H, W, 7)
    t0 = time.perf_counter()
    path = export_torchvision(model, d / "small.onnx", H, W)
    t1 = time.perf_counter()
    out = from_onnxruntime(path, [image], d / "small.h5", names=["synthetic.png"],
                           weights_sha256="ab" * 32)
    t2 = time.perf_counter()
    ref = tv_models.stages(model, image)
    with torch.no_grad():
        staged = _staged_module(model, (H, W)).eval()(tv_models.to_tensor(image))
    eager = {n: t.numpy() for n, t in zip([*_stage_names(), IMAGE_SIZE_OUTPUT], staged,
                                          strict=True)}
    print(f"\nexport {t1 - t0:.2f} s, ORT run + trace {t2 - t1:.2f} s, "
          f"trace {out.stat().st_size / 1e6:.2f} MB, onnx {path.stat().st_size / 1e6:.2f} MB")
    return {"path": path, "out": out, "image": image, "ref": ref, "eager": eager}


def _torch_stage(ref: dict, name: str) -> np.ndarray:
    """torchvision's value of a schema stage from tv_models.stages (torch's layout)."""
    levels = list(FPN_LEVELS)
    if name == "input":
        return ref["input"].numpy()
    if name.startswith("body/"):
        return ref["body"][int(name[5:])].numpy()
    if name.startswith("features/"):
        return ref["features"][name[9:]].numpy()
    if name.startswith(("rpn/objectness/", "rpn/deltas/")):
        i = levels.index(name.rsplit("/", 1)[1])
        o, d = ref["objectness"][i], ref["deltas"][i]
        _, a, h, w = o.shape
        if "objectness" in name:
            return o[0].permute(1, 2, 0).reshape(-1).numpy()
        return d[0].view(a, 4, h, w).permute(2, 3, 0, 1).reshape(-1, 4).numpy()
    if name.startswith("anchors/"):
        sizes = [int(o[0].numel()) for o in ref["objectness"]]
        i = levels.index(name[8:])
        return ref["anchors"].split(sizes)[i].numpy()
    simple = {
        "proposals/decoded": "decoded", "proposals/boxes": "proposals",
        "proposals/scores": "proposal_scores", "pooled": "pooled", "box_head": "box_head",
        "head/cls": "class_logits", "head/bbox": "box_regression",
    }
    if name in simple:
        return ref[simple[name]].numpy()
    det = ref["detections"]
    if name == "detections/boxes":
        return det["boxes"].numpy()
    if name == "detections/scores":
        return det["scores"].numpy()
    if name == "detections/labels":
        return det["labels"].numpy() - 1
    raise KeyError(name)


def test_the_wrapper_is_torchvisions_computation(model, run):
    """Eagerly, the staged wrapper returns exactly torchvision's own stages and detections."""
    eager, ref = run["eager"], run["ref"]
    for name in _stage_names():
        try:
            want = _torch_stage(ref, name)
        except KeyError:
            continue  # intermediates torchvision does not return (re-run in the wrapper)
        np.testing.assert_array_equal(eager[name], want, err_msg=name)
    with torch.no_grad():
        det = model([tv_models.to_tensor(run["image"])])[0]
    np.testing.assert_array_equal(eager["detections/boxes"], det["boxes"].numpy())
    np.testing.assert_array_equal(eager["detections/labels"], det["labels"].numpy() - 1)
    # the re-run intermediates are consistent with the model's own outputs
    cand = eager["proposals/candidates"]
    keep = eager["proposals/keep"][: model.rpn.post_nms_top_n()]
    np.testing.assert_array_equal(cand[keep], eager["proposals/boxes"])
    np.testing.assert_array_equal(eager["proposals/candidate_scores"][keep],
                                  eager["proposals/scores"])
    dk = eager["detections/keep"][: model.roi_heads.detections_per_img]
    np.testing.assert_array_equal(eager["detections/candidate_scores"][dk],
                                  eager["detections/scores"])
    np.testing.assert_array_equal(eager["detections/candidate_labels"][dk],
                                  eager["detections/labels"])


def test_metadata(model, run):
    meta = read_onnx_meta(run["path"])
    assert meta["layout"] == "NCHW" and meta["box_format"] == "xyxy"
    assert meta["background"] == "first" and meta["family"] == "fpn"
    assert meta["boxes_normalized"] is False and meta["num_classes"] == 5
    assert meta["profile"] == "torchvision-r50-fpn"
    assert "dynamo=False" in meta["exporter"]
    with read_trace(run["out"]) as tr:
        assert tr.meta["format"] == "npfrcnn-trace" and tr.meta["version"] == 1
        assert tr.meta["producer"] == f"onnxruntime {ort.__version__}"
        assert tr.meta["weights_sha256"] == "ab" * 32
        for k in ("family", "layout", "box_format", "background", "num_classes", "profile",
                  "boxes_normalized"):
            assert tr.meta[k] == meta[k], k
        assert len(tr) == 1
        im = tr.images[0]
        ref = run["ref"]
        assert im.meta["name"] == "synthetic.png"
        assert im.meta["sha256"] == pixels_sha256(run["image"])
        assert im.meta["original_size"] == [H, W]
        assert im.meta["image_size"] == [int(v) for v in ref["image_size"]] == [160, 200]
        assert im.meta["input_size"] == list(ref["input"].shape[-2:])
        np.testing.assert_array_equal(im.get("image"), run["image"])
        # every graph output that is a stage is in the trace, and nothing else
        assert set(im.names) == {*_stage_names(), "image"}
        # canonical form: NHWC
        assert im.get("features/0").shape == tv_models.nhwc(ref["features"]["0"]).shape
        np.testing.assert_array_equal(im.get("pooled"), im.raw("pooled").transpose(0, 2, 3, 1))


def _close(name: str, got: np.ndarray, want: np.ndarray) -> float:
    assert got.shape == want.shape, f"{name}: {got.shape} vs {want.shape}"
    if got.size == 0:
        return 0.0
    scale = float(np.abs(want).max())
    err = float(np.abs(got.astype(np.float64) - want).max())
    assert err <= RTOL * max(scale, 1.0), f"{name}: max |ORT - torch| = {err:.3g} (max |ref| " \
        f"{scale:.3g}, bound {RTOL * max(scale, 1.0):.3g})"
    return err / max(scale, 1.0)


def _order_scores(eager: dict, name: str) -> np.ndarray:
    """The (torch) scores an index stage is in decreasing order of, indexed like it."""
    if name == "proposals/topk":  # indices into all anchors, by objectness logit per level
        return np.concatenate([eager[f"rpn/objectness/{lvl}"] for lvl in FPN_LEVELS])
    return eager[name.replace("keep", "candidate_scores")]


#: Index stages in decreasing order of a score: equal up to near ties.
ORDERED = ("proposals/topk", "proposals/keep", "detections/keep")


def _same_up_to_near_ties(name: str, got: np.ndarray, want: np.ndarray,
                          scores: np.ndarray) -> int:
    """``got`` and ``want`` select the same elements, and where their orders differ the
    swapped elements' (torch) scores are within rounding (RTOL) of each other: two scores that
    close can be ordered either way by ORT's rounding. Returns how many positions differ."""
    assert got.shape == want.shape, f"{name}: {got.shape} vs {want.shape}"
    assert set(got.tolist()) == set(want.tolist()), f"{name}: other elements selected"
    diff = np.flatnonzero(got != want)
    if diff.size:
        gap = np.abs(scores[got[diff]].astype(np.float64) - scores[want[diff]])
        bound = RTOL * float(np.abs(scores).max())
        assert gap.max() <= bound, f"{name}: order differs beyond rounding ({gap.max():.3g})"
    return int(diff.size)


def test_every_stage_matches_torchvision_within_rounding(run):
    """Each traced stage vs torchvision's value (eager; intermediates from the eager wrapper):
    dense and box stages within RTOL, index and label stages equal."""
    eager = run["eager"]
    rel = {}
    swapped = {}
    with read_trace(run["out"]) as tr:
        im = tr.images[0]
        for name in _stage_names():
            got, want = im.raw(name), eager[name]
            if name in ORDERED:
                swapped[name] = _same_up_to_near_ties(name, got, want,
                                                      _order_scores(eager, name))
            elif stage_info(name).dtype == "int64":
                np.testing.assert_array_equal(got, want, err_msg=name)
            else:
                rel[name] = _close(name, got, want)
    # measured on this image: the detections' NMS order may swap one pair of class-2
    # candidates whose scores differ by 6e-8 (torch: 0.06963503 < 0.06963509), less than the
    # rounding of ORT's scores (checked above: every swap is such a near tie). Whether it does
    # depends on the rounding of that run: on an AMD EPYC family 26 it swaps in the whole
    # suite and not when this file runs alone (other thread counts for torch and MLAS).
    # Everything else is in the same order.
    assert swapped["proposals/topk"] == 0 and swapped["proposals/keep"] == 0
    assert swapped["detections/keep"] in (0, 2)
    # rounding, not bitwise: the convolutions' accumulation order differs (MLAS vs oneDNN)
    assert rel["features/0"] > 0 and rel["pooled"] > 0
    # the anchors are computed from shapes only: bitwise
    assert all(rel[f"anchors/{lvl}"] == 0 for lvl in FPN_LEVELS)
    assert max(rel.values()) < RTOL / 4  # measured ~2e-6


def test_topk_boundary_is_not_a_near_tie(model, run):
    """The discrete stages can be equal only because no decision lies within rounding: the
    pre-NMS top-n boundary of each level is separated by more than the dense bound."""
    eager = run["eager"]
    n = model.rpn.pre_nms_top_n()
    for lvl in FPN_LEVELS:
        logits = np.sort(eager[f"rpn/objectness/{lvl}"])[::-1]
        if len(logits) <= n:
            continue
        gap = float(logits[n - 1] - logits[n])
        assert gap > RTOL * float(np.abs(logits).max()), (lvl, gap)


# Isolated ops: ONNX Runtime's kernels fed torch's own inputs ---------------------------------


def _run_node(node, inputs: dict, outputs: list[str], types: list[int] | None = None):
    types = types or [TensorProto.FLOAT] * len(outputs)
    ins = [oh.make_tensor_value_info(k, oh.np_dtype_to_tensor_dtype(v.dtype), v.shape)
           for k, v in inputs.items()]
    outs = [oh.make_tensor_value_info(k, t, None) for k, t in zip(outputs, types, strict=True)]
    m = oh.make_model(oh.make_graph([node], "g", ins, outs),
                      opset_imports=[oh.make_opsetid("", 17)])
    s = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return s.run(None, inputs)


def test_resize_values_differ_by_rounding(model, run):
    """ONNX Resize (linear, half_pixel, the exported attributes) vs torch's bilinear
    interpolate, on the same normalised image and output size: not bitwise, at most 2 ulps of
    the image's largest magnitude."""
    x = model.transform.normalize(tv_models.to_tensor(run["image"]))[None]
    with torch.no_grad():
        want = torch.nn.functional.interpolate(x, size=(160, 200), mode="bilinear",
                                               align_corners=False).numpy()
    (got,) = _run_node(
        oh.make_node("Resize", ["x", "", "", "sizes"], ["y"], mode="linear",
                     coordinate_transformation_mode="half_pixel"),
        {"x": x.numpy(), "sizes": np.array([1, 3, 160, 200], np.int64)}, ["y"])
    err = np.abs(got - want)
    ulp = float(np.spacing(np.float32(np.abs(want).max())))
    assert 0 < err.max() <= 2 * ulp, (err.max(), ulp)
    assert 0.1 < (err > 0).mean() < 0.9  # measured ~0.5 of the values
    proto = onnx.load(str(run["path"]))
    resize = [{a.name: oh.get_attribute_value(a) for a in n.attribute}
              for n in proto.graph.node if n.op_type == "Resize"]
    linear = [a for a in resize if a["mode"] == b"linear"]  # the others: the FPN's nearest
    assert len(linear) == 1 and linear[0]["coordinate_transformation_mode"] == b"half_pixel"


def test_roi_align_is_bitwise_on_the_same_inputs(model, run):
    """ONNX RoiAlign with the exported attributes on torch's features and proposals equals
    torchvision's roi_align(aligned=False) bit for bit; half_pixel (aligned=True) does not."""
    ref = run["ref"]
    boxes = ref["proposals"]
    pool = model.roi_heads.box_roi_pool
    levels = pool.map_levels([boxes])
    proto = onnx.load(str(run["path"]))
    nodes = [n for n in proto.graph.node if n.op_type == "RoiAlign"]
    attrs = [{a.name: oh.get_attribute_value(a) for a in n.attribute} for n in nodes]
    assert len(nodes) == 4
    for a, scale in zip(attrs, pool.scales, strict=True):
        assert a["coordinate_transformation_mode"] == b"output_half_pixel"
        assert a["sampling_ratio"] == pool.sampling_ratio == 2
        assert a["output_height"] == a["output_width"] == 7
        assert a.get("mode", b"avg") == b"avg" and a["spatial_scale"] == pytest.approx(scale)
    compared = 0
    for lvl, (f, scale) in enumerate(zip(list(ref["features"].values())[:4], pool.scales,
                                         strict=True)):
        b = boxes[torch.where(levels == lvl)[0]]
        if not len(b):
            continue
        rois = torch.cat([torch.zeros(len(b), 1), b], 1)
        want = roi_align(f, rois, (7, 7), spatial_scale=scale, sampling_ratio=2,
                         aligned=False).numpy()
        inputs = {"x": f.numpy(), "rois": b.numpy(), "bi": np.zeros(len(b), np.int64)}
        outs = {}
        for mode in ("output_half_pixel", "half_pixel"):
            (outs[mode],) = _run_node(
                oh.make_node("RoiAlign", ["x", "rois", "bi"], ["y"], mode="avg",
                             coordinate_transformation_mode=mode, output_height=7,
                             output_width=7, sampling_ratio=2, spatial_scale=scale),
                inputs, ["y"])
        np.testing.assert_array_equal(outs["output_half_pixel"], want, err_msg=f"level {lvl}")
        assert np.abs(outs["half_pixel"] - want).max() > 1e-2
        compared += len(b)
    assert compared == len(boxes)


def test_topk_tie_order():
    """ONNX Runtime's TopK breaks ties by the lower index (ONNX's rule); torch.topk on CPU
    does not, so a top-k over tied logits can pick or order other indices."""
    v = np.random.default_rng(1).integers(0, 20, 5000).astype(np.float32)
    k = 1000
    tv, ti = torch.topk(torch.from_numpy(v), k)
    ov, oi = _run_node(oh.make_node("TopK", ["x", "k"], ["v", "i"], axis=-1, largest=1,
                                    sorted=1),
                       {"x": v, "k": np.array([k], np.int64)}, ["v", "i"],
                       [TensorProto.FLOAT, TensorProto.INT64])
    stable = np.argsort(-v, kind="stable")[:k]
    np.testing.assert_array_equal(ov, tv.numpy())  # same values
    np.testing.assert_array_equal(oi, stable)  # ORT: ties by lower index
    assert not np.array_equal(ti.numpy(), oi)  # torch: another tie order


def _onnx_nms(b: np.ndarray, s: np.ndarray, thr: float) -> np.ndarray:
    (o,) = _run_node(oh.make_node("NonMaxSuppression", ["b", "s", "m", "t"], ["o"]),
                     {"b": b[None], "s": s[None, None], "m": np.array([2**62], np.int64),
                      "t": np.array([thr], np.float32)}, ["o"], [TensorProto.INT64])
    return o[:, 2]


def test_nms_agrees_with_ties_and_duplicates():
    """ONNX NonMaxSuppression (the export of torchvision.ops.nms) vs torchvision's nms on
    integer-grid boxes (duplicates, exact IoU ties) with few distinct scores: identical."""
    rng = np.random.default_rng(2)
    for trial in range(6):
        n = 2000
        xy = rng.integers(0, 60, (n, 2)).astype(np.float32)
        wh = rng.integers(1, 30, (n, 2)).astype(np.float32)
        b = np.concatenate([xy, xy + wh], 1)
        s = rng.integers(0, 3, n).astype(np.float32) if trial % 2 else rng.random(n, np.float32)
        thr = (0.5, 0.7)[trial % 2]
        want = nms(torch.from_numpy(b), torch.from_numpy(s), thr).numpy()
        np.testing.assert_array_equal(_onnx_nms(b, s, thr), want, err_msg=f"trial {trial}")


def test_level_mapping_log2_agrees():
    """torchvision's LevelMapper uses torch.log2; the TorchScript exporter writes log2 as
    Log(x) / ln 2. The FPN levels agree, also within a few ulps of the boundaries."""
    rng = np.random.default_rng(3)
    s = rng.uniform(1, 600, 100_000).astype(np.float32)
    near = (np.float32([56, 112, 224, 448])[None, :]
            * (1 + np.arange(-50, 51)[:, None] * np.float32(EPS32))).ravel().astype(np.float32)
    s = np.concatenate([s, near])
    want = torch.floor(4 + torch.log2(torch.from_numpy(s) / 224) + torch.tensor(1e-6)).numpy()
    (lg,) = _run_node(oh.make_node("Log", ["x"], ["y"]), {"x": s / np.float32(224)}, ["y"])
    got = np.floor(np.float32(4) + lg / np.float32(math.log(2)) + np.float32(1e-6))
    np.testing.assert_array_equal(got, want)


# The resized size under tracing ----------------------------------------------------------------


def _eager_size(h: int, w: int, mn: int, mx: int) -> tuple[int, int]:
    s = min(mn / min(h, w), mx / max(h, w))
    return math.floor(h * s), math.floor(w * s)


def _float32_size(h: int, w: int, mn: int, mx: int) -> tuple[int, int]:
    f = np.float32
    s = min(f(1) / f(min(h, w)) * f(mn), f(1) / f(max(h, w)) * f(mx))
    return int(np.floor(f(h) * s)), int(np.floor(f(w) * s))


def test_traced_resize_size_is_float32(model):
    """Under the TorchScript tracer torchvision's transform computes the resized size in
    float32 (reciprocal * min_size, floor(h * scale)); eagerly in float64. The traced size is
    the float32 formula, the eager one the float64 formula, and they differ for many sizes."""
    mn, mx = model.transform.min_size[0], model.transform.max_size
    for h, w in ((100, 150), (94, 120), (98, 147), (120, 150), (138, 207)):
        with torch.no_grad():
            images, _ = model.transform([torch.zeros(3, h, w)])
        assert tuple(images.image_sizes[0]) == _eager_size(h, w, mn, mx)
        assert traced_image_size(model, h, w) == _float32_size(h, w, mn, mx), (h, w)
    assert _eager_size(100, 150, mn, mx) == (160, 240)
    assert _float32_size(100, 150, mn, mx) == (159, 239)
    # how common: image sizes 100..1099 square, torchvision's default 800/1333
    sizes = range(100, 1100, 3)
    bad = sum(_eager_size(h, w, 800, 1333) != _float32_size(h, w, 800, 1333)
              for h in sizes for w in sizes)
    assert 0.05 < bad / len(sizes) ** 2 < 0.3  # measured ~0.15
    # e.g. PASCAL VOC's common 375x500 and a 12 MP photo, 3000x4000, at 800/1333
    for h, w in ((375, 500), (3000, 4000)):
        assert _float32_size(h, w, 800, 1333) == (799, 1066)
        assert _eager_size(h, w, 800, 1333) == (800, 1066)
    assert _float32_size(480, 640, 800, 1333) == _eager_size(480, 640, 800, 1333)


def test_resize_size_departure_end_to_end(model, tmp_path):
    """At 100x150 the export warns, the ORT trace's image_size is the graph's 159x239, and the
    input (and every stage after it) departs from torchvision beyond rounding."""
    image = synthetic(100, 150, 5)
    with pytest.warns(UserWarning, match="159x239.*160x240"):
        path = export_torchvision(model, tmp_path / "m.onnx", 100, 150)
    assert read_onnx_meta(path)["image_size"] == [159, 239]
    assert read_onnx_meta(path)["eager_image_size"] == [160, 240]
    out = from_onnxruntime(path, image, tmp_path / "t.npz")
    ref = tv_models.stages(model, image)
    with read_trace(out) as tr:
        im = tr.images[0]
        assert im.meta["image_size"] == [159, 239]
        assert list(ref["image_size"]) == [160, 240]
        got = im.raw("input")
        want = ref["input"].numpy()
        assert got.shape == want.shape  # both padded to 160x256
        assert np.abs(got - want).max() > 0.1  # not rounding: a different resize
        assert np.abs(im.raw("features/0") - ref["features"]["0"].numpy()).max() > 1e-2


# Errors -----------------------------------------------------------------------------------------


def test_errors(model, run, tmp_path):
    with pytest.raises(ValueError, match="exported for 120x150"):
        from_onnxruntime(run["path"], np.zeros((100, 150, 3), np.uint8), tmp_path / "x.h5")
    assert not (tmp_path / "x.h5").exists()
    with pytest.raises(ValueError, match="uint8"):
        from_onnxruntime(run["path"], np.zeros((120, 150, 3), np.float32), tmp_path / "x.h5")
    with pytest.raises(ValueError, match="2 names for 1 images"):
        from_onnxruntime(run["path"], [run["image"]], tmp_path / "x.h5", names=["a", "b"])
    with pytest.raises(FileNotFoundError):
        from_onnxruntime(tmp_path / "none.onnx", run["image"], tmp_path / "x.h5")
    bare = onnx.load(str(run["path"]))
    del bare.metadata_props[:]
    onnx.save(bare, str(tmp_path / "bare.onnx"))
    with pytest.raises(OnnxTraceError, match="metadata_props lack.*layout"):
        from_onnxruntime(tmp_path / "bare.onnx", run["image"], tmp_path / "x.h5")
    with pytest.raises(TypeError, match="FasterRCNN"):
        export_torchvision(torch.nn.Linear(2, 2), tmp_path / "x.onnx", 64, 64)
    with pytest.raises(ValueError, match="opset 11 is too old"):
        export_torchvision(model, tmp_path / "x.onnx", 64, 64, opset=11)
    model.train()
    try:
        with pytest.raises(ValueError, match="model.eval"):
            export_torchvision(model, tmp_path / "x.onnx", 64, 64)
    finally:
        model.eval()
    assert not (tmp_path / "x.onnx").exists()


def test_several_images_npz(model, run, tmp_path):
    """A list of images, an .npz trace: one image group each, in order."""
    images = [run["image"], synthetic(H, W, 11)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = from_onnxruntime(run["path"], images, tmp_path / "two.npz")
    with read_trace(out) as tr:
        assert len(tr) == 2
        for im, img in zip(tr, images, strict=True):
            assert im.meta["sha256"] == pixels_sha256(img)
            assert im.meta["name"] == f"image_{im.index}"
        with read_trace(run["out"]) as one:
            np.testing.assert_array_equal(tr.images[0].raw("detections/boxes"),
                                          one.images[0].raw("detections/boxes"))


@pytest.mark.slow
def test_full_size_model(tmp_path):
    """The full-size R50-FPN (91 classes, 800/1333) at 480x640 (resized to 800x1066 eagerly
    and traced alike): exports (~25 s on 2 cores, 170 MB) and its ORT detections match
    torchvision's within rounding. The trace of one image is ~300 MB."""
    torch.set_num_threads(2)
    full = tv_models.build("r50-frozen0", small=False)
    image = synthetic(480, 640, 13)
    path = export_torchvision(full, tmp_path / "full.onnx", 480, 640)
    out = from_onnxruntime(path, image, tmp_path / "full.h5")
    ref = tv_models.stages(full, image)
    with read_trace(out) as tr:
        im = tr.images[0]
        assert im.meta["image_size"] == [800, 1066] == list(ref["image_size"])
        _close("features/0", im.raw("features/0"), ref["features"]["0"].numpy())
        got, want = im.raw("detections/boxes"), ref["detections"]["boxes"].numpy()
        assert got.shape == want.shape
        _close("detections/boxes", got, want)
