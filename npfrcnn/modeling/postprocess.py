"""torchvision's ``RoIHeads.postprocess_detections`` and the transform's box rescaling.

Per image (torchvision-spec section 9), with ``K = num_classes + 1`` (background 0)::

    boxes  = decode(box_regression [P, 4K], proposals) with weights (10, 10, 5, 5)  -> [P, K, 4]
    scores = softmax(class_logits)                    (torch's float32 algorithm)
    clip boxes to [0, w] x [0, h] of the resized image
    drop class 0; flatten proposal-major, class-minor
    keep score > f32(box_score_thresh); keep both sides >= f32(0.01)
    batched_nms by class at box_nms_thresh (torchvision's branch rule); first detections_per_img

then ``GeneralizedRCNNTransform.postprocess``: ``x * f32(orig_w) / f32(resized_w)`` (float32
ratio, then a float32 product), and the same for y. The boxes are not clipped again.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from npfrcnn.config.fpn import FPNConfig
from npfrcnn.modeling.rpn import clip_to_image, decode_torchvision, remove_small_boxes
from npfrcnn.ops.torch_math import torch_softmax
from npfrcnn.ops.tv_nms import torchvision_batched_nms

__all__ = ["TorchvisionPostprocess", "PostprocessOutput", "resize_boxes"]

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]


@dataclass
class PostprocessOutput:
    """Detections in resized-image pixels, and the candidates they were chosen from.

    Attributes:
        boxes: float32 ``[D, 4]`` in the resized image (before :func:`resize_boxes`).
        labels: int64 ``[D]`` torchvision labels (1..num_classes; 0 is the background).
        scores: float32 ``[D]``.
        candidates: int64 ``[M]`` flat indices ``p * num_classes + (c - 1)`` of the candidates
            that passed the score and size filters, in that order.
        nms: int64 indices into ``candidates`` as batched NMS kept them (before the cut).
        candidate_boxes: float32 ``[M, 4]`` the candidates' boxes (decoded, clipped).
        candidate_scores: float32 ``[M]`` their scores.
        candidate_labels: int64 ``[M]`` their torchvision labels.
    """

    boxes: F32
    labels: I64
    scores: F32
    candidates: I64
    nms: I64
    candidate_boxes: F32 = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    candidate_scores: F32 = field(default_factory=lambda: np.zeros(0, np.float32))
    candidate_labels: I64 = field(default_factory=lambda: np.zeros(0, np.int64))


def resize_boxes(
    boxes: F32, resized: tuple[int, int], original: tuple[int, int]
) -> F32:
    """``transform.resize_boxes``: from the resized image back to the original one (float32)."""
    rh = np.float32(original[0]) / np.float32(resized[0])
    rw = np.float32(original[1]) / np.float32(resized[1])
    out = np.empty_like(boxes)
    out[:, 0] = boxes[:, 0] * rw
    out[:, 1] = boxes[:, 1] * rh
    out[:, 2] = boxes[:, 2] * rw
    out[:, 3] = boxes[:, 3] * rh
    return out


class TorchvisionPostprocess:
    """``postprocess_detections`` for one image (module docstring)."""

    def __init__(self, config: FPNConfig, backend: str):
        self.config = config
        self.backend = backend

    def scores(self, class_logits: F32) -> F32:
        """``F.softmax(class_logits, -1)`` as torch's CPU kernel computes it."""
        return torch_softmax(np.asarray(class_logits, np.float32), lanes=self.config.simd_lanes)

    def __call__(
        self,
        proposals: npt.ArrayLike,
        box_regression: npt.ArrayLike,
        class_logits: npt.ArrayLike,
        image_size: tuple[int, int],
        *,
        score_thresh: float | None = None,
        detections_per_img: int | None = None,
    ) -> PostprocessOutput:
        cfg = self.config
        props = np.asarray(proposals, np.float32).reshape(-1, 4)
        reg = np.asarray(box_regression, np.float32)
        logits = np.asarray(class_logits, np.float32)
        k = cfg.num_classes + 1
        p = props.shape[0]
        if reg.shape != (p, 4 * k) or logits.shape != (p, k):
            raise ValueError(
                f"box_regression {reg.shape} and class_logits {logits.shape} must be "
                f"[P, {4 * k}] and [P, {k}] for {p} proposals"
            )
        refs = np.repeat(props, k, axis=0)  # [P*K,4], proposal-major
        boxes = decode_torchvision(refs, reg.reshape(-1, 4), cfg.bbox_reg_weights)
        boxes = clip_to_image(boxes, image_size).reshape(p, k, 4)
        scores = self.scores(logits) if p else np.zeros((0, k), np.float32)
        boxes = boxes[:, 1:].reshape(-1, 4)
        flat_scores = np.ascontiguousarray(scores[:, 1:]).reshape(-1)
        labels = np.tile(np.arange(1, k, dtype=np.int64), p)
        thr = cfg.box_score_thresh if score_thresh is None else score_thresh
        inds = np.flatnonzero(flat_scores > np.float32(thr))
        small = remove_small_boxes(boxes[inds], 1e-2)
        inds = inds[small]
        b, s, lab = boxes[inds], flat_scores[inds], labels[inds]
        keep = np.asarray(
            torchvision_batched_nms(b, s, lab, cfg.box_nms_thresh, backend=self.backend),
            dtype=np.int64,
        )
        limit = cfg.box_detections_per_img if detections_per_img is None else detections_per_img
        final = keep[:limit]
        return PostprocessOutput(
            np.ascontiguousarray(b[final]), lab[final], np.ascontiguousarray(s[final]),
            inds.astype(np.int64), keep, b, s, lab,
        )
