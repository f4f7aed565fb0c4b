"""``npfrcnn trace`` / ``compare``: planted bugs are found at the right first stage.

Each candidate is a port with one known bug: npfrcnn's own pipeline with that one function
replaced (in the test, by monkeypatching the module the pipeline calls), traced with the same
tracer. The reference is the unmodified model on the same image. ``compare`` must name the
stage where the bug first shows, and its re-run (the reference given the candidate's inputs
of that stage) must call it a departure; a candidate that only differs by a near-tie flip must
be called rounding. The bugs are the ones ports actually have: the legacy ``+ 1`` in the box
coder, x and y swapped, ``>=`` instead of ``>`` in NMS, BGR input, a missing FPN level.

Every plant is first checked to change the candidate (a plant that changes nothing would make
the test vacuous).
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from npfrcnn import FasterRCNN
from npfrcnn.trace import TraceError, read_trace, trace_images
from npfrcnn.trace.compare import compare_traces, verdict
from npfrcnn.trace.io import TraceWriter
from npfrcnn.trace.schema import stage_names


def synthetic(h: int, w: int, seed: int) -> np.ndarray:
    """Smooth blobs plus noise: varied features and objectness."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    img = np.zeros((h, w, 3))
    for _ in range(6):
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(10, 40)
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / r**2)
        img += rng.uniform(40, 120, 3) * blob[..., None]
    img += rng.normal(0, 8, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


IMAGE = synthetic(150, 200, 7)


def rewrite(src: Path, dst: Path, drop: tuple[str, ...] = (), change=None) -> Path:
    """Copy a trace, leaving out the stages in ``drop`` and replacing those in ``change``."""
    change = change or {}
    with read_trace(src) as t, TraceWriter(dst, t.meta) as w:
        for im in t:
            out = w.image(im.meta)
            for name in im.names:
                if name in drop:
                    continue
                out.put(name, change[name](im.raw(name)) if name in change else im.raw(name))
    return dst


def first(ref: Path, cand: Path, model=None):
    with read_trace(ref) as r, read_trace(cand) as c:
        cmp = compare_traces(r, c, model=model)
    im = cmp.images[0]
    return cmp, im, im.first_failure


# FPN (torchvision-r50-fpn profile, small seeded model) ------------------------------------------


@pytest.fixture(scope="module")
def fpn(tmp_path_factory):
    torch = pytest.importorskip("torch")
    pytest.importorskip("torchvision")
    import tv_models

    from npfrcnn.weights.convert_torchvision import torchvision_to_hdf5

    torch.set_num_threads(2)
    tv = tv_models.build("r50-frozen0", small=True, seed=3)
    folder = tmp_path_factory.mktemp("trace-fpn")
    torch.save(tv.state_dict(), folder / "model.pth")
    changes = {"min_size": tv.transform.min_size[-1], "max_size": tv.transform.max_size}
    torchvision_to_hdf5(folder / "model.pth", folder / "model.h5", "torchvision-r50-fpn",
                        changes=changes)
    model = FasterRCNN.from_hdf5(folder / "model.h5")
    ref = trace_images(model, [("blobs", IMAGE)], folder / "ref.h5")
    return model, ref, folder


def test_identical_traces_pass_and_npz_equals_hdf5(fpn):
    model, ref, folder = fpn
    npz = trace_images(model, [("blobs", IMAGE)], folder / "same.npz")
    cmp, im, bad = first(ref, npz, model)
    assert bad is None, verdict(im)
    assert cmp.ok
    traced = [r.stage for r in im.rows]
    assert traced == [n for n in stage_names("fpn") if n not in (
        "proposals/scores", "detections/scores", "detections/labels",
        "detections/candidate_scores", "detections/candidate_labels")]
    assert all(r.max_abs in (0.0, None) for r in im.rows)


def test_plus_one_in_the_box_coder(fpn, monkeypatch, tmp_path):
    model, ref, _ = fpn
    import npfrcnn.modeling.rpn as rpn_mod

    orig = rpn_mod.decode_torchvision

    def legacy(refs, deltas, weights):  # widths = x2 - x1 + 1 (Detectron's old convention)
        return orig(refs + np.float32([0, 0, 1, 1]), deltas, weights)

    monkeypatch.setattr(rpn_mod, "decode_torchvision", legacy)
    cand = trace_images(model, [("blobs", IMAGE)], tmp_path / "cand.h5")
    monkeypatch.undo()
    _, im, bad = first(ref, cand, model)
    assert bad is not None and bad.stage == "proposals/decoded", verdict(im)
    assert bad.verdict == "departure"
    # the centre moves by 1/2 px and the half-width by exp(dw) / 2 px: at least 1/2 px
    assert bad.max_abs >= 0.5
    assert im.first_departure is bad


def test_x_and_y_swapped(fpn, monkeypatch, tmp_path):
    model, ref, _ = fpn
    import npfrcnn.modeling.rpn as rpn_mod

    orig = rpn_mod.grid_anchors

    def swapped(cell, feature_shape, input_shape):
        return np.ascontiguousarray(orig(cell, feature_shape, input_shape)[:, [1, 0, 3, 2]])

    monkeypatch.setattr(rpn_mod, "grid_anchors", swapped)
    cand = trace_images(model, [("blobs", IMAGE)], tmp_path / "cand.h5")
    monkeypatch.undo()
    _, im, bad = first(ref, cand, model)
    assert bad is not None and bad.stage == "anchors/0", verdict(im)
    assert bad.verdict == "departure"


def _tie_threshold(model, ref: Path) -> float:
    """An RPN NMS threshold equal to a float32 IoU that NMS computes: the IoU of the
    top-scoring level-0 candidate with another level-0 candidate, computed here as
    torchvision's kernel does (float32, ``inter / (area_i + area_j - inter)``)."""
    with read_trace(ref) as t:
        im = t.images[0]
        boxes = im.get("proposals/candidates")
        scores = im.get("proposals/candidate_scores")
    k0 = min(model.config.rpn_pre_nms_top_n, 40 * 56 * 3)
    b, s = boxes[:k0], scores[:k0]
    i = int(np.argmax(s))
    x1, y1, x2, y2 = (b[:, c] for c in range(4))
    area = (x2 - x1) * (y2 - y1)
    w = np.maximum(np.float32(0), np.minimum(x2[i], x2) - np.maximum(x1[i], x1))
    h = np.maximum(np.float32(0), np.minimum(y2[i], y2) - np.maximum(y1[i], y1))
    inter = w * h
    iou = inter / ((area[i] + area) - inter)
    iou[i] = 0
    good = np.flatnonzero((iou > 0.5) & (iou < 0.95))
    assert good.size, "no candidate pair to plant an NMS tie on"
    return float(iou[good[np.argmax(s[good])]])


def test_greater_equal_in_nms(fpn, monkeypatch, tmp_path):
    model, ref0, _ = fpn
    thr = _tie_threshold(model, ref0)
    tied = FasterRCNN(dataclasses.replace(model.config, rpn_nms_thresh=thr), model.classes,
                      model.tensors)
    ref = trace_images(tied, [("blobs", IMAGE)], tmp_path / "ref.h5")
    import npfrcnn.modeling.rpn as rpn_mod

    orig = rpn_mod.torchvision_batched_nms

    def suppress_at_equal(boxes, scores, idxs, iou_threshold, backend="cpu"):
        # float32 IoUs are compared in float64: "> the next double below t" is ">= t"
        return orig(boxes, scores, idxs, float(np.nextafter(iou_threshold, -np.inf)), backend)

    monkeypatch.setattr(rpn_mod, "torchvision_batched_nms", suppress_at_equal)
    cand = trace_images(tied, [("blobs", IMAGE)], tmp_path / "cand.h5")
    monkeypatch.undo()
    with read_trace(ref) as r, read_trace(cand) as c:
        assert not np.array_equal(r.images[0].get("proposals/keep"),
                                  c.images[0].get("proposals/keep")), "the plant changed nothing"
    _, im, bad = first(ref, cand, tied)
    assert bad is not None and bad.stage == "proposals/keep", verdict(im)
    assert bad.verdict == "departure"
    assert bad.first_diff is not None


def test_bgr_input(fpn, monkeypatch, tmp_path):
    model, ref, _ = fpn
    transform = model.parts.transform
    orig = type(transform).__call__
    monkeypatch.setattr(type(transform), "__call__",
                        lambda self, image: orig(self, np.asarray(image)[:, :, ::-1]))
    cand = trace_images(model, [("blobs", IMAGE)], tmp_path / "cand.h5")
    monkeypatch.undo()
    _, im, bad = first(ref, cand, model)
    assert bad is not None and bad.stage == "input", verdict(im)
    assert bad.verdict == "departure"


def test_missing_fpn_level(fpn, tmp_path):
    model, ref, _ = fpn
    cand = rewrite(ref, tmp_path / "cand.h5", drop=(
        "features/pool", "rpn/objectness/pool", "rpn/deltas/pool", "anchors/pool"))
    _, im, bad = first(ref, cand, model)
    assert bad is not None and bad.stage == "features/pool", verdict(im)
    assert "missing" in bad.note and "features/3" in bad.note


def test_near_tie_flip_is_rounding(fpn, monkeypatch, tmp_path):
    """A candidate whose level-0 logits differ from the reference by one near-tie (below the
    tolerance): the top-k order flips, and the re-run shows the reference would flip too."""
    model, ref, _ = fpn
    with read_trace(ref) as t:
        logits = t.images[0].get("rpn/objectness/0")
        k = min(model.config.rpn_pre_nms_top_n, logits.size)
        order = t.images[0].get("proposals/topk")[:k]
    gaps = logits[order[:-1]] - logits[order[1:]]
    gaps[gaps <= 0] = np.inf
    p = int(np.argmin(gaps))
    assert gaps[p] < 1e-4 * np.abs(logits).max()
    lo, hi = int(order[p + 1]), int(order[p])
    import npfrcnn.modeling.rpn as rpn_mod

    orig = rpn_mod.MultiLevelRPN.head

    def head(self, features):
        out = orig(self, features)
        lv = out.levels["0"].logits
        lv[lo] = np.nextafter(lv[hi], np.float32(np.inf))
        return out

    monkeypatch.setattr(rpn_mod.MultiLevelRPN, "head", head)
    cand = trace_images(model, [("blobs", IMAGE)], tmp_path / "cand.h5")
    monkeypatch.undo()
    _, im, bad = first(ref, cand, model)
    assert bad is not None and bad.stage == "proposals/topk", verdict(im)
    assert bad.first_diff == p
    assert bad.verdict == "rounding"
    assert im.first_departure is None, verdict(im)


def test_shape_mismatch_is_named(fpn, tmp_path):
    model, ref, _ = fpn
    cand = rewrite(ref, tmp_path / "cand.h5", change={"features/2": lambda a: a[:, :-1]})
    _, im, bad = first(ref, cand)
    assert bad is not None and bad.stage == "features/2"
    assert "shape" in bad.note and "differs" in bad.note


def test_declared_layout_is_converted(fpn, tmp_path):
    """An NCHW, yxyx, normalised, background-last trace of the same run compares equal."""
    model, ref, _ = fpn
    with read_trace(ref) as t:
        meta = dict(t.meta, layout="NCHW", box_format="yxyx", boxes_normalized=True,
                    background="last")
        im = t.images[0]
        h, w = im.meta["image_size"]
        hp, wp = im.meta["input_size"]
        oh, ow = im.meta["original_size"]
        with TraceWriter(tmp_path / "cand.npz", meta) as wr:
            out = wr.image(im.meta)
            for name in im.names:
                a = im.raw(name)
                if a.ndim == 4 and name != "image":
                    a = a.transpose(0, 3, 1, 2)
                if name in ("head/cls",):
                    a = np.roll(a, -1, axis=1)
                if name == "head/bbox":
                    a = np.roll(a, -4, axis=1)
                if name.startswith("rpn/deltas/") or name == "head/bbox":
                    a = a.reshape(a.shape[0], -1, 4)[:, :, [1, 0, 3, 2]].reshape(a.shape)
                if name.startswith("anchors/") or name in (
                        "proposals/decoded", "proposals/candidates", "proposals/boxes",
                        "detections/candidates", "detections/boxes"):
                    size = ((hp, wp) if name.startswith("anchors/") else
                            (oh, ow) if name == "detections/boxes" else (h, w))
                    a = a[:, [1, 0, 3, 2]] / np.float32([size[0], size[1], size[0], size[1]])
                out.put(name, a)
    _, im2, bad = first(ref, tmp_path / "cand.npz")
    # normalising and back costs up to an ulp or two of the coordinate, far below 1e-4
    assert bad is None, verdict(im2)


# Errors ----------------------------------------------------------------------------------------


def test_not_a_trace(tmp_path):
    p = tmp_path / "x.h5"
    p.write_bytes(b"hello")
    with pytest.raises(TraceError, match="x.h5"):
        read_trace(p)
    import h5py

    with h5py.File(tmp_path / "w.h5", "w") as f:
        f["a"] = 1
    with pytest.raises(TraceError, match="no 'meta'"):
        read_trace(tmp_path / "w.h5")


def test_unknown_stage_and_version(fpn, tmp_path):
    _, ref, _ = fpn
    with read_trace(ref) as t:
        meta = dict(t.meta, version=99)
    with pytest.raises(TraceError, match="version 99"):
        TraceWriter(tmp_path / "v.h5", meta)
    import h5py

    dst = rewrite(ref, tmp_path / "u.h5")
    with h5py.File(dst, "a") as f:
        f["images/0/featurez/0"] = np.zeros(3, np.float32)
    with pytest.raises(TraceError, match="featurez/0"):
        read_trace(dst)


def test_different_images_refused(fpn, tmp_path):
    model, ref, _ = fpn
    other = trace_images(model, [("other", synthetic(150, 200, 8))], tmp_path / "o.h5")
    with read_trace(ref) as r, read_trace(other) as c, pytest.raises(
            TraceError, match="different images"):
        compare_traces(r, c)


def test_cli_exit_codes_and_report(fpn, tmp_path):
    model, ref, folder = fpn
    from PIL import Image

    Image.fromarray(IMAGE).save(tmp_path / "blobs.png")
    run = [sys.executable, "-m", "npfrcnn.cli"]
    out = tmp_path / "t.h5"
    p = subprocess.run(run + ["trace", str(tmp_path / "blobs.png"), "--weights",
                              str(folder / "model.h5"), "--out", str(out)],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    p = subprocess.run(run + ["compare", str(ref), str(out), "--report",
                              str(tmp_path / "r.html"), "--json", str(tmp_path / "r.json")],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "every stage is within tolerance" in p.stdout
    page = (tmp_path / "r.html").read_text()
    assert page.count("data:image/png;base64,") >= 2 + 5  # detections x2, feature levels
    doc = json.loads((tmp_path / "r.json").read_text())
    assert doc["ok"] and doc["images"][0]["first_failure"] is None
    bad = rewrite(ref, tmp_path / "bad.h5", change={
        "features/1": lambda a: a + np.float32(0.01) * np.abs(a).max()})
    p = subprocess.run(run + ["compare", str(ref), str(bad), "--weights",
                              str(folder / "model.h5")], capture_output=True, text=True)
    assert p.returncode == 1, p.stdout + p.stderr
    assert "first stage out of tolerance: features/1" in p.stdout
    assert "a departure" in p.stdout
    p = subprocess.run(run + ["compare", str(ref), str(tmp_path / "blobs.png")],
                       capture_output=True, text=True)
    assert p.returncode == 2 and "CANDIDATE" in p.stderr and "blobs.png" in p.stderr


# C4 (workshop profile, tiny random model; no torch) ---------------------------------------------


@pytest.fixture(scope="module")
def c4(tmp_path_factory):
    from npfrcnn.config import workshop
    from npfrcnn.weights import random_weights
    from npfrcnn.weights.random import placeholder_classes

    cfg = workshop(units_per_block=(1, 1, 1, 1), root_depth=4, base_depths=(2, 4, 4, 8),
                   rpn_depth=8, num_classes=2)
    model = FasterRCNN(cfg, placeholder_classes(2), random_weights(cfg, seed=2))
    folder = tmp_path_factory.mktemp("trace-c4")
    ref = trace_images(model, [("blobs", IMAGE)], folder / "ref.h5")
    return model, ref


def test_c4_identical_and_planted(c4, monkeypatch, tmp_path):
    model, ref = c4
    cmp, im, bad = first(ref, trace_images(model, [("b", IMAGE)], tmp_path / "same.npz"), model)
    assert bad is None, verdict(im)
    assert {r.stage for r in im.rows} >= {"features/0", "proposals/topk", "pooled", "head/cls",
                                          "detections/boxes"}
    import npfrcnn.rpn as c4_rpn

    orig = c4_rpn.bx.decode

    def plus_one(anchors, deltas, **kw):
        return orig(anchors + np.float32([0, 0, 1, 1]), deltas, **kw)

    monkeypatch.setattr(c4_rpn.bx, "decode", plus_one)
    cand = trace_images(model, [("b", IMAGE)], tmp_path / "cand.h5")
    monkeypatch.undo()
    _, im, bad = first(ref, cand, model)
    assert bad is not None and bad.stage == "proposals/decoded", verdict(im)
    assert bad.verdict == "departure"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))


def test_slightly_different_decoding_is_a_finding(fpn, tmp_path):
    """Pixels off by one (another JPEG decoder) are compared, not refused: the first stage out
    of tolerance is the image itself."""
    model, ref, _ = fpn
    from npfrcnn.trace.io import pixels_sha256

    img = IMAGE.copy()
    img[::7, ::5, 1] ^= 1
    cand = trace_images(model, [("blobs", img)], tmp_path / "c.h5")
    with read_trace(cand) as c:
        assert c.images[0].meta["sha256"] == pixels_sha256(img) != pixels_sha256(IMAGE)
    cmp, im, bad = first(ref, cand, model)
    assert bad is not None and bad.stage == "image", verdict(im)
    assert any("decoded pixels differ" in n for n in cmp.notes)


def test_trace_cli_refuses_to_overwrite(fpn, tmp_path):
    model, ref, folder = fpn
    from PIL import Image

    Image.fromarray(IMAGE).save(tmp_path / "b.png")
    out = tmp_path / "t.h5"
    out.write_bytes(b"keep me")
    args = [sys.executable, "-m", "npfrcnn.cli", "trace", str(tmp_path / "b.png"), "--weights",
            str(folder / "model.h5"), "--out", str(out)]
    p = subprocess.run(args, capture_output=True, text=True)
    assert p.returncode == 2 and "--overwrite" in p.stderr
    assert out.read_bytes() == b"keep me"
    p = subprocess.run(args + ["--overwrite"], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    with read_trace(out) as t:
        assert len(t) == 1 and t.meta["weights_sha256"]
