"""npfrcnn's Detectron2 profiles against the real Detectron2, stage by stage.

Reads what ``benchmarks/real_detectron2.py`` dumped from a real ``DefaultPredictor`` run
(``stages.npz``), converts the same weights with ``npfrcnn convert``'s converter (no torch), runs
npfrcnn on the same photo and prints one Markdown row per stage: npfrcnn's own chain, and the
stage fed Detectron2's input for it ("fed"), so a difference shows where it starts.

Usage (after ``real_detectron2.py`` wrote ``W.pkl`` and ``stages.npz`` for ``photo.jpg``)::

    python benchmarks/compare_detectron2.py --profile detectron2-r50-fpn --weights W.pkl \\
        --stages stages.npz --image photo.jpg [--set KEY=VALUE ...]

Needs only npfrcnn (numpy): Detectron2 and torch are not imported here.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from typing import Any

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def nhwc(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(a).transpose(0, 2, 3, 1))


class Table:
    def __init__(self) -> None:
        self.rows: list[str] = [
            "| stage | input | shape | max abs error | relative to max abs | bitwise |",
            "|---|---|---|---:|---:|:---:|",
        ]

    def add(self, name: str, fed: bool, got: Any, ref: Any) -> None:
        g, r = np.asarray(got), np.asarray(ref)
        where = "Detectron2's" if fed else "npfrcnn's"
        if g.shape != r.shape:
            self.rows.append(f"| {name} | {where} | {g.shape} vs {r.shape} | | | no |")
            return
        err = float(np.abs(g.astype(np.float64) - r).max()) if g.size else 0.0
        scale = float(np.abs(r.astype(np.float64)).max()) if r.size else 0.0
        rel = err / scale if scale else 0.0
        same = "yes" if np.array_equal(g, r) else "no"
        self.rows.append(
            f"| {name} | {where} | {list(r.shape)} | {err:.3g} | {rel:.2g} | {same} |"
        )

    def __str__(self) -> str:
        return "\n".join(self.rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", required=True)
    ap.add_argument("--weights", required=True, help="the model-zoo .pkl or model_final.pth")
    ap.add_argument("--stages", required=True, help="real_detectron2.py's stages.npz")
    ap.add_argument("--image", required=True)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args(argv)

    from npfrcnn import FasterRCNN
    from npfrcnn.cli import _parse_set
    from npfrcnn.modeling.rpn import LevelOutput, MultiLevelRPNOutput
    from npfrcnn.weights.convert_detectron2 import detectron2_to_hdf5

    z = dict(np.load(args.stages))
    with tempfile.TemporaryDirectory() as tmp:
        h5 = os.path.join(tmp, "model.h5")
        detectron2_to_hdf5(args.weights, h5, args.profile, changes=_parse_set(args.set))
        m = FasterRCNN.from_hdf5(h5, backend="cpu")
    cfg = m.config
    # real_detectron2.py decodes with PIL without EXIF rotation; so does this comparison.
    from PIL import Image

    with Image.open(args.image) as im:
        image = np.asarray(im.convert("RGB"))
    t = Table()
    pre = m.transform(image)
    assert pre.image_size == tuple(int(v) for v in z["image_size"]), (pre.image_size,
                                                                      z["image_size"])
    t.add("resized uint8 (Pillow)", True, m.parts.transform.resize(image[:, :, ::-1].copy()),
          z["resized_uint8"])
    t.add("input", False, pre.x, nhwc(z["input"]))
    x = nhwc(z["input"])
    t0 = time.perf_counter()
    feats = m.features(x)
    feat_s = time.perf_counter() - t0
    body = m.parts.backbone.last_body
    names = ["res2", "res3", "res4", "res5"] if cfg.is_fpn else ["res4"]
    for n in names:
        t.add(n, True, body[n], nhwc(z[n]))
    levels = ["p2", "p3", "p4", "p5", "p6"] if cfg.is_fpn else ["res4"]
    ref_feats = {n: nhwc(z[n]) for n in levels}
    if cfg.is_fpn:
        fed = m.parts.backbone.fpn({n: nhwc(z[n]) for n in names})
        for n in levels:
            t.add(n, True, fed[n], ref_feats[n])
        for n in levels:
            t.add(f"{n} (our whole backbone)", True, feats[n], ref_feats[n])
    rpn = m.rpn(ref_feats)
    for i, n in enumerate(levels):
        t.add(f"rpn logits {n}", True, rpn.levels[n].logits, z[f"rpn_logits/{i}"])
        t.add(f"rpn deltas {n}", True, rpn.levels[n].deltas, z[f"rpn_deltas/{i}"])
    ref_rpn = MultiLevelRPNOutput(
        {n: LevelOutput(z[f"rpn_logits/{i}"], z[f"rpn_deltas/{i}"], rpn.levels[n].shape)
         for i, n in enumerate(levels)}, (0, 0),
    )
    anchors = m.anchors(ref_rpn)
    for i, n in enumerate(levels):
        t.add(f"anchors {n}", False, anchors[n], z[f"anchors/{i}"])
    props = m.proposals(ref_rpn, pre.image_size, anchors)
    t.add("proposals", True, props.boxes, z["proposals"])
    t.add("proposal logits", True, props.scores, z["proposal_logits"])
    pooled = m.pool_rois(ref_feats, z["proposals"], pre.image_size)
    k = int(z.get("pooled_rows", len(z["pooled"])))
    t.add(f"pooled (first {k})", True, pooled.features[:k], nhwc(z["pooled"][:k]))
    box_in = nhwc(z["pooled"][:k])
    t.add(f"box features (first {k})", True, m.parts.box_head(box_in), z["box_features"][:k])
    bbox, logits = m.parts.predictor(z["box_features"])
    t.add("class logits", True, logits, z["cls_logits"])
    t.add("box deltas", True, bbox, z["bbox_deltas"])
    d2 = m.parts.postprocess(z["proposals"], z["bbox_deltas"], z["cls_logits"], pre.image_size,
                             pre.original_size)
    t.add("detections, resized image", True, d2.resized_boxes, z["boxes_resized"])
    t.add("detection boxes", True, d2.boxes, z["boxes"])
    t.add("detection scores", True, d2.scores, z["scores"])
    t.add("detection classes", True, d2.labels, z["classes"])
    t0 = time.perf_counter()
    dets = m.detect(image)
    detect_s = time.perf_counter() - t0
    t.add("end to end: boxes", False, dets.boxes, z["boxes"])
    t.add("end to end: scores", False, dets.scores, z["scores"])
    t.add("end to end: classes", False, dets.labels, z["classes"])
    print(f"{cfg.name}: {args.image} {image.shape[1]}x{image.shape[0]} -> resized "
          f"{pre.image_size[1]}x{pre.image_size[0]}, input {x.shape[2]}x{x.shape[1]}; "
          f"{len(z['proposals'])} proposals, {len(z['boxes'])} detections "
          f"(npfrcnn features {feat_s:.1f} s, detect {detect_s:.1f} s)\n")
    print(t)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
