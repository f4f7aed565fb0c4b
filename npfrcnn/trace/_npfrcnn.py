"""Trace npfrcnn's own model: every stage of :class:`npfrcnn.FasterRCNN`, streamed to the file."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from npfrcnn.trace.io import ImageWriter, TraceWriter, file_meta, pixels_sha256
from npfrcnn.weights.hdf5 import file_sha256

__all__ = ["trace_images", "trace_image", "model_meta", "file_sha256"]


def model_meta(model: Any, weights_sha256: str = "", **extra: Any) -> dict[str, Any]:
    """The file metadata of a trace of ``model`` (a :class:`npfrcnn.FasterRCNN`)."""
    import npfrcnn

    cfg = model.config
    if getattr(model, "is_detectron2", False):
        raise ValueError(
            f"npfrcnn trace does not trace Detectron2 profiles yet ({cfg.name}); it traces the "
            "workshop (C4) and torchvision (FPN) profiles. Diff a Detectron2 port stage by "
            "stage with FasterRCNN.run_stages (docs/detectron2.md)"
        )
    if model.is_fpn:
        family, background = "fpn", "first"
    else:
        family = "c4"
        background = "first" if cfg.background_first else "last"
    return file_meta(
        family, profile=str(getattr(cfg, "name", "") or ("fpn" if model.is_fpn else "c4")),
        producer=f"npfrcnn {npfrcnn.__version__} ({model.backend})",
        num_classes=int(cfg.num_classes), weights_sha256=weights_sha256,
        background=background, classes=list(model.classes), **extra,
    )


def trace_image(
    model: Any, image: npt.NDArray[np.uint8], writer: TraceWriter, name: str = "",
    store_image: bool = True,
) -> ImageWriter:
    """Run ``model`` on one uint8 RGB image, writing each stage as soon as it exists."""
    from npfrcnn.modeling.poolers import PooledRoIs
    from npfrcnn.rcnn import HEAD_CHUNK

    pre = model.transform(image)
    x = pre.x
    img = writer.image({
        "name": name, "sha256": pixels_sha256(image), "original_size": pre.original_size,
        "image_size": pre.image_size, "input_size": (int(x.shape[1]), int(x.shape[2])),
    })
    if store_image:
        img.put("image", np.asarray(image, dtype=np.uint8))
    img.put("input", x)
    fm = model.features(x)
    del x
    if model.is_fpn:
        for i, level in enumerate(model.parts.backbone.last_body):
            img.put(f"body/{i}", level)
        model.parts.backbone.last_body = []
        for lvl, f in fm.items():
            img.put(f"features/{lvl}", f)
        rpn_out = model.rpn(fm)
        for lvl, out in rpn_out.levels.items():
            img.put(f"rpn/objectness/{lvl}", out.logits)
            img.put(f"rpn/deltas/{lvl}", out.deltas)
        anchors = model.anchors(rpn_out, pre.x.shape[1:3])
        for lvl, a in anchors.items():
            img.put(f"anchors/{lvl}", a)
        props = model.proposals(rpn_out, pre.image_size, anchors)
        del rpn_out, anchors
        img.put("proposals/decoded", props.decoded)
        img.put("proposals/topk", props.top_k)
        img.put("proposals/candidates", props.clipped)
        img.put("proposals/candidate_scores", props.probs)
        img.put("proposals/keep", props.kept[props.nms])
    else:
        img.put("features/0", fm)
        rpn_out = model.rpn(fm)
        cls_prob = rpn_out.cls_prob
        img.put("rpn/objectness/0", cls_prob)
        img.put("rpn/deltas/0", rpn_out.bbox_pred)
        anchors = model.anchors(rpn_out.feature_shape)
        img.put("anchors/0", anchors)
        props = model.proposals(rpn_out, pre.image_size, anchors)
        del rpn_out, anchors
        img.put("proposals/decoded", props.decoded)
        topk = props.kept[props.top_k]
        img.put("proposals/topk", topk)
        cand = props.decoded[topk]
        if model.config.rpn_clip_before_nms:
            from npfrcnn import boxes as bx

            cand = bx.clip(cand, pre.image_size, inclusive=model.config.clip_inclusive)
        img.put("proposals/candidates", cand)
        img.put("proposals/candidate_scores", cls_prob[topk, 1])
        img.put("proposals/keep", props.nms)
    img.put("proposals/boxes", props.boxes)
    img.put("proposals/scores", props.scores)
    # pooling and the box head in chunks, as detect runs them
    pooled_parts, levels, reps = [], [], []
    for start in range(0, max(len(props.boxes), 1), HEAD_CHUNK):
        pooled = model.pool_rois(fm, props.boxes[start : start + HEAD_CHUNK], pre.image_size)
        if model.is_fpn:
            assert isinstance(pooled, PooledRoIs)
            levels.append(pooled.levels)
            pooled = pooled.features
        pooled_parts.append(pooled)
        reps.append(model.parts.box_head(np.asarray(pooled, np.float32)))
    del fm
    if model.is_fpn:
        img.put("roi_levels", np.concatenate(levels))
    img.put("pooled", np.concatenate(pooled_parts))
    del pooled_parts
    rep = np.concatenate(reps)
    img.put("box_head", rep)
    bbox, cls = model.parts.predictor(rep)
    img.put("head/cls", cls)
    img.put("head/bbox", bbox)
    if model.is_fpn:
        post = model.parts.postprocess(props.boxes, bbox, cls, pre.image_size)
        img.put("detections/candidates", post.candidate_boxes)
        img.put("detections/candidate_scores", post.candidate_scores)
        img.put("detections/candidate_labels", post.candidate_labels - 1)
        img.put("detections/keep", post.nms)
    dets = model.detections(
        props.boxes, bbox, cls, pre.image_size, original_size=pre.original_size
    )
    img.put("detections/boxes", dets.boxes)
    img.put("detections/scores", dets.scores)
    img.put("detections/labels", dets.labels)
    return img


def trace_images(
    model: Any,
    images: Sequence[tuple[str, npt.NDArray[np.uint8]]] | Any,
    path: str | os.PathLike[str],
    *,
    weights_sha256: str = "",
    store_image: bool = True,
    progress: Callable[[int, str], None] | None = None,
) -> Path:
    """Trace every ``(name, image)`` into ``path`` (HDF5, or ``.npz``); returns the path."""
    meta = model_meta(model, weights_sha256)
    with TraceWriter(path, meta) as w:
        for i, (name, image) in enumerate(images):
            trace_image(model, image, w, name, store_image)
            if progress is not None:
                progress(i, name)
    return Path(path)
