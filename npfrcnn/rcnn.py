"""Second stage: RoI pooling, the block4 head and the final detections (spec 1.3, 1.8).

RoI pooling (workshop ``roi_pooling``): proposals ``(x1, y1, x2, y2)`` are normalized to
``(y1 / H, x1 / W, y2 / H, x2 / W)`` (no clipping; ``roi_normalizer="size_minus_one"`` divides by
``H - 1`` and ``W - 1`` instead), cropped with ``crop_and_resize`` to 14x14 and max-pooled 2x2/2
to 7x7 (``ops.crop_and_pool``, bitwise equal to the two TF ops).

Head (``run_rcnn``): block4 at ``tail_stride`` on the crops, mean over H and W, then
``rcnn/fc_classifier`` (``num_classes + 1`` logits, softmax; background column 0 when
``background_first``) and ``rcnn/fc_bbox`` (``4 * num_classes`` deltas, no background slot).

Final detections (``rcnn_proposals``), for each class ``c`` in order::

    p = cls_prob[:, c + 1];  d = bbox_pred[:, 4c:4c+4]
    boxes = clip(decode(proposals, d * variances), image)        [0, W-1] x [0, H-1]
    keep p >= min_prob and max(x2-x1,0)*max(y2-y1,0) > 0
    nms(yxyx, p, class_max_detections, class_nms_threshold)
then all classes concatenated in class order and ``top_k(probs, min(total_max, n))`` (ties:
lower index first, i.e. lower class, then NMS order).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import numpy.typing as npt

from npfrcnn import boxes as bx
from npfrcnn import ops
from npfrcnn.config import ModelConfig
from npfrcnn.resnet import run_tail

__all__ = ["normalize_boxes", "roi_pool", "head", "final_detections"]

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]


def normalize_boxes(
    proposals: npt.ArrayLike, image_shape: tuple[int, int], config: ModelConfig
) -> F32:
    """``(x1, y1, x2, y2)`` pixels -> float32 ``(y1 / H, x1 / W, y2 / H, x2 / W)`` (no clipping)."""
    p = np.asarray(proposals, dtype=np.float32).reshape(-1, 4)
    sub = 1.0 if config.roi_normalizer == "size_minus_one" else 0.0
    h = np.float32(image_shape[0] - sub)
    w = np.float32(image_shape[1] - sub)
    return np.stack([p[:, 1] / h, p[:, 0] / w, p[:, 3] / h, p[:, 2] / w], axis=1)  # [P,4]


def roi_pool(
    features: F32,
    proposals: npt.ArrayLike,
    image_shape: tuple[int, int],
    config: ModelConfig,
    backend: str = "cpu",
) -> F32:
    """Pooled RoIs float32 ``[P, 7, 7, C]`` from a ``[1, H_f, W_f, C]`` map."""
    if config.roi_op != "crop_and_resize":
        raise NotImplementedError(f"roi_op {config.roi_op!r} is not implemented yet")
    nb = normalize_boxes(proposals, image_shape, config)
    idx = np.zeros(nb.shape[0], dtype=np.int32)
    return ops.crop_and_pool(features, nb, idx, config.roi_crop_size, backend=backend)


#: RoIs per chunk in :func:`head` (and in ``FasterRCNN.detect``, which streams RoI pooling and
#: the head together): bounds the memory of the block4 tail whatever the proposal count.
HEAD_CHUNK = 256


def head(
    pooled: F32,
    tensors: Mapping[str, np.ndarray],
    config: ModelConfig,
    backend: str = "cpu",
) -> tuple[F32, F32]:
    """``(bbox_pred [P, 4 * num_classes], cls_prob [P, num_classes + 1])`` for pooled RoIs."""
    if pooled.shape[0] == 0:
        n = config.num_classes
        return np.zeros((0, 4 * n), np.float32), np.zeros((0, n + 1), np.float32)
    # block4 runs on HEAD_CHUNK RoIs at a time: each RoI is independent, and a chunk's
    # activations (and im2col buffers) stay small instead of scaling with P.
    feats = np.concatenate(
        [
            ops.mean(run_tail(pooled[i : i + HEAD_CHUNK], tensors, config, backend), axis=(1, 2))
            for i in range(0, pooled.shape[0], HEAD_CHUNK)
        ]
    )  # [P,C4]
    logits = ops.dense(
        feats, tensors["rcnn/fc_classifier/kernel"], tensors["rcnn/fc_classifier/bias"]
    )
    bbox = ops.dense(feats, tensors["rcnn/fc_bbox/kernel"], tensors["rcnn/fc_bbox/bias"])
    return bbox, ops.softmax(logits, axis=-1)


def final_detections(
    proposals: npt.ArrayLike,
    bbox_pred: npt.ArrayLike,
    cls_prob: npt.ArrayLike,
    image_shape: tuple[int, int],
    config: ModelConfig,
    *,
    min_prob: float | None = None,
    max_detections: int | None = None,
    backend: str = "cpu",
) -> tuple[F32, I64, F32]:
    """Per-class decode, clip, filter and NMS, then the overall top-n (module docstring).

    Args:
        proposals: float32 ``[P, 4]``.
        bbox_pred: float32 ``[P, 4 * num_classes]``.
        cls_prob: float32 ``[P, num_classes + 1]``.
        image_shape: ``(height, width)`` of the input image.
        min_prob: overrides ``config.min_prob`` (kept when ``p >= min_prob``).
        max_detections: overrides ``config.total_max_detections``.

    Returns:
        ``(boxes float32 [K, 4], labels int64 [K] (0-based, background excluded),
        scores float32 [K])`` sorted by descending score.
    """
    n = config.num_classes
    props = np.asarray(proposals, dtype=np.float32).reshape(-1, 4)
    deltas = np.asarray(bbox_pred, dtype=np.float32)
    probs = np.asarray(cls_prob, dtype=np.float32)
    if deltas.shape != (props.shape[0], 4 * n) or probs.shape != (props.shape[0], n + 1):
        raise ValueError(
            f"bbox_pred {deltas.shape} and cls_prob {probs.shape} must be [P, {4 * n}] and "
            f"[P, {n + 1}] for {props.shape[0]} proposals"
        )
    thr = np.float32(config.min_prob if min_prob is None else min_prob)
    total = config.total_max_detections if max_detections is None else int(max_detections)
    first = 1 if config.background_first else 0
    all_boxes: list[F32] = []
    all_labels: list[I64] = []
    all_probs: list[F32] = []
    for c in range(n):
        p = probs[:, c + first]  # [P]
        d = deltas[:, 4 * c: 4 * c + 4]  # [P,4]
        b = bx.decode(
            props, d, variances=config.rcnn_variances, plus_one=config.box_plus_one,
            decode_minus_one=config.decode_minus_one, clamp=config.delta_clamp,
        )
        b = bx.clip(b, image_shape, inclusive=config.clip_inclusive)
        pos = np.zeros(b.shape[0], dtype=bool)
        pos[bx.filter_nonpositive(b)] = True
        keep = np.flatnonzero((p >= thr) & pos)
        b, p = b[keep], p[keep]
        sel = ops.nms(
            bx.to_yxyx(b), p, config.class_nms_threshold, config.class_max_detections,
            backend=backend,
        )
        all_boxes.append(b[sel])
        all_probs.append(p[sel])
        all_labels.append(np.full(len(sel), c, dtype=np.int64))
    boxes = np.concatenate(all_boxes, axis=0) if all_boxes else np.zeros((0, 4), np.float32)
    labels = np.concatenate(all_labels) if all_labels else np.zeros(0, np.int64)
    scores = np.concatenate(all_probs) if all_probs else np.zeros(0, np.float32)
    k = min(total, int(scores.shape[0]))
    _, top = ops.top_k(scores, k)
    top = np.asarray(top, dtype=np.int64)
    return (
        np.ascontiguousarray(boxes[top], dtype=np.float32),
        labels[top],
        np.ascontiguousarray(scores[top], dtype=np.float32),
    )
