"""``FasterRCNN``: the whole pipeline, stage by stage, and ``Detections``.

Stages (each a public method, so a port can be diffed against any of them)::

    image uint8 [H, W, 3] RGB
      preprocess  -> x         float32 [1, H, W, 3]        RGB minus the profile's means
      features    -> fm        float32 [1, H_f, W_f, C3]   ResNet block1..3 (npfrcnn.resnet)
      rpn         -> RPNOutput bbox_pred [A, 4], cls_prob [A, 2], A = H_f * W_f * k
      anchors     -> float32 [A, 4]                         npfrcnn.anchors, order (y, x, a)
      proposals   -> Proposals boxes [P, 4], scores [P]     decode, area > 0, top-n, NMS
      pool_rois   -> float32 [P, 7, 7, C3]                  crop_and_resize 14x14 + max-pool 2x2
      head        -> (bbox_pred [P, 4n], cls_prob [P, n+1]) block4, mean, fc heads
      detections  -> Detections                             per-class NMS, top 300

``detect(image)`` runs them all. The ``backend`` (``"numpy"`` or ``"cpu"``) is passed to the
ops that have one (convolutions, NMS, crop-and-resize); the others are NumPy/BLAS for both.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from npfrcnn import anchors as anchors_mod
from npfrcnn._validate import check_backend
from npfrcnn.config import ModelConfig
from npfrcnn.rcnn import HEAD_CHUNK, final_detections, head, roi_pool
from npfrcnn.resnet import feature_map_shape, run_base
from npfrcnn.rpn import Proposals, RPNOutput, generate_proposals, rpn_head

__all__ = ["FasterRCNN", "Detections"]

F32 = npt.NDArray[np.float32]

#: Keys of the ``timings`` dict filled by :meth:`FasterRCNN.detect`.
STAGES = ("preprocess", "features", "rpn", "proposals", "roi_pool", "head", "detections")


@dataclass
class Detections:
    """Final detections of one image, sorted by descending score.

    Attributes:
        boxes: float32 ``[K, 4]`` ``(x1, y1, x2, y2)`` in input-image pixels, clipped to the
            image (``[0, W-1] x [0, H-1]`` for the workshop).
        labels: int64 ``[K]`` 0-based class ids (background excluded).
        scores: float32 ``[K]`` class probabilities.
        class_names: ``K`` names, ``class_names[i]`` is the name of ``labels[i]``.
    """

    boxes: F32
    labels: npt.NDArray[np.int64]
    scores: F32
    class_names: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def _unsupported(config: ModelConfig) -> list[str]:
    """Config values this version does not implement (other profiles come later)."""
    out = []
    if config.rpn_objectness != "softmax":
        out.append("rpn_objectness='sigmoid'")
    if config.roi_op != "crop_and_resize":
        out.append(f"roi_op={config.roi_op!r}")
    if config.resize_min is not None or config.resize_max is not None:
        out.append("resize_min/resize_max (resizing)")
    if config.anchor_ratio_mode != "h/w" or config.anchor_order != "ratio_major":
        out.append("anchor_ratio_mode/anchor_order other than the workshop's")
    return out


class FasterRCNN:
    """A ResNet-C4 Faster R-CNN in NumPy.

    Args:
        config: the model configuration (:mod:`npfrcnn.config`).
        classes: ``config.num_classes`` class names.
        tensors: name -> float32 array for every name of
            ``npfrcnn.weights.expected_shapes(config)``; validated here (one error listing every
            problem).
        backend: ``"cpu"`` (Numba kernels, default) or ``"numpy"`` (reference ops).
    """

    def __init__(
        self,
        config: ModelConfig,
        classes: Sequence[str],
        tensors: Mapping[str, np.ndarray],
        backend: str = "cpu",
    ) -> None:
        from npfrcnn.weights.hdf5 import WeightsError, check_tensors

        check_backend(backend, ("numpy", "cpu"))
        missing = _unsupported(config)
        if missing:
            raise NotImplementedError(
                f"this npfrcnn does not implement {', '.join(missing)} yet; use the workshop "
                "profile's values"
            )
        arrays = {n: np.asarray(a) for n, a in tensors.items()}
        problems = check_tensors(config, arrays)
        if len(classes) != config.num_classes:
            problems.append(
                f"{len(classes)} class names given but config.num_classes is {config.num_classes}"
            )
        if problems:
            raise WeightsError("FasterRCNN", problems)
        self.config = config
        self.classes = [str(c) for c in classes]
        self.tensors = {n: np.ascontiguousarray(a, dtype=np.float32) for n, a in arrays.items()}
        self.backend = backend
        style = "luminoth" if config.anchor_plus_one else "workshop"
        self._reference_anchors = anchors_mod.reference_anchors(
            config.anchor_base_size, config.anchor_ratios, config.anchor_scales,
            style=style, dtype=np.float32,
        )

    @classmethod
    def from_hdf5(cls, path: str | os.PathLike[str], backend: str = "cpu") -> FasterRCNN:
        """Load a weights file (``npfrcnn.weights.read`` validates it completely)."""
        from npfrcnn.weights.hdf5 import read

        wf = read(path)
        return cls(wf.config, wf.classes, wf.tensors, backend=backend)

    # Sizes ----------------------------------------------------------------------------------

    def feature_map_shape(self, height: int, width: int) -> tuple[int, int]:
        """``(H_f, W_f)`` of the block3 map for an image of ``height x width`` (no compute)."""
        return feature_map_shape(self.config, height, width)

    def num_anchors(self, height: int, width: int) -> int:
        """Anchors for an image: ``H_f * W_f * k``."""
        h_f, w_f = self.feature_map_shape(height, width)
        return h_f * w_f * self.config.num_anchors

    # Stages ---------------------------------------------------------------------------------

    def preprocess(self, image: npt.ArrayLike) -> F32:
        """uint8 ``[H, W, 3]`` RGB -> float32 ``[1, H, W, 3]``: channel order, minus the means.

        Other real dtypes are accepted and converted to float32 first.
        """
        img = np.asarray(image)
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype.kind not in "uif":
            raise ValueError(
                f"image must be a uint8 [H, W, 3] RGB array, got {img.dtype} array of shape "
                f"{img.shape}; load it with npfrcnn.image.load"
            )
        if img.shape[0] < 1 or img.shape[1] < 1:
            raise ValueError(f"image must not be empty, got shape {img.shape}")
        self.feature_map_shape(img.shape[0], img.shape[1])  # raises for too-small images
        x = img.astype(np.float32)
        if self.config.channel_order == "BGR":
            x = x[:, :, ::-1]
        x = x - np.asarray(self.config.pixel_means, dtype=np.float32)
        return np.ascontiguousarray(x[None], dtype=np.float32)

    def features(self, x: F32) -> F32:
        """block3 feature map ``[1, H_f, W_f, C3]`` of a preprocessed image."""
        return run_base(np.asarray(x, dtype=np.float32), self.tensors, self.config, self.backend)

    def rpn(self, features: F32) -> RPNOutput:
        """RPN head outputs (:class:`npfrcnn.rpn.RPNOutput`)."""
        return rpn_head(np.asarray(features, dtype=np.float32), self.tensors, self.config,
                        self.backend)

    def anchors(self, feature_shape: tuple[int, int]) -> F32:
        """float32 ``[H_f * W_f * k, 4]`` anchors, row ``(y * W_f + x) * k + a``."""
        return anchors_mod.grid_anchors(
            int(feature_shape[0]), int(feature_shape[1]), self.config.output_stride,
            self._reference_anchors, offset=self.config.anchor_offset,
        )

    def proposals(
        self,
        rpn_out: RPNOutput,
        image_shape: tuple[int, int],
        anchors: npt.ArrayLike | None = None,
    ) -> Proposals:
        """Proposals from the RPN output; ``anchors`` default to :meth:`anchors`."""
        anc = self.anchors(rpn_out.feature_shape) if anchors is None else anchors
        return generate_proposals(
            rpn_out.bbox_pred, rpn_out.cls_prob, anc, image_shape, self.config, self.backend
        )

    def pool_rois(
        self, features: F32, proposals: npt.ArrayLike, image_shape: tuple[int, int]
    ) -> F32:
        """Pooled RoIs ``[P, 7, 7, C3]`` (:func:`npfrcnn.rcnn.roi_pool`)."""
        return roi_pool(
            np.asarray(features, dtype=np.float32), proposals, image_shape, self.config,
            self.backend,
        )

    def head(self, pooled: F32) -> tuple[F32, F32]:
        """``(bbox_pred [P, 4n], cls_prob [P, n + 1])`` (:func:`npfrcnn.rcnn.head`)."""
        return head(np.asarray(pooled, dtype=np.float32), self.tensors, self.config, self.backend)

    def detections(
        self,
        proposals: npt.ArrayLike,
        bbox_pred: npt.ArrayLike,
        cls_prob: npt.ArrayLike,
        image_shape: tuple[int, int],
        *,
        min_prob: float | None = None,
        max_detections: int | None = None,
    ) -> Detections:
        """Final :class:`Detections` (:func:`npfrcnn.rcnn.final_detections`)."""
        if min_prob is not None and not 0.0 <= float(min_prob) <= 1.0:
            raise ValueError(f"min_prob must be in [0, 1], got {min_prob!r}")
        if max_detections is not None and (
            isinstance(max_detections, bool) or int(max_detections) < 0
        ):
            raise ValueError(
                f"max_detections must be a non-negative int, got {max_detections!r}"
            )
        boxes, labels, scores = final_detections(
            proposals, bbox_pred, cls_prob, image_shape, self.config, min_prob=min_prob,
            max_detections=max_detections, backend=self.backend,
        )
        return Detections(boxes, labels, scores, [self.classes[int(i)] for i in labels])

    def detect(
        self,
        image: npt.ArrayLike,
        *,
        min_prob: float | None = None,
        max_detections: int | None = None,
        timings: dict[str, float] | None = None,
    ) -> Detections:
        """Detect objects in one uint8 ``[H, W, 3]`` RGB image.

        Args:
            image: as :func:`npfrcnn.image.load` returns.
            min_prob: keep detections with probability ``>= min_prob`` (default the profile's).
            max_detections: at most this many (default ``config.total_max_detections``).
            timings: if a dict, receives seconds per stage under the keys
                ``"preprocess", "features", "rpn", "proposals", "roi_pool", "head",
                "detections"``.

        Returns:
            :class:`Detections` in input pixels.
        """
        clock: dict[str, float] = {}
        t0 = time.perf_counter()

        def lap(name: str) -> None:
            nonlocal t0
            t1 = time.perf_counter()
            clock[name] = t1 - t0
            t0 = t1

        x = self.preprocess(image)
        im_shape = (int(x.shape[1]), int(x.shape[2]))
        lap("preprocess")
        fm = self.features(x)
        lap("features")
        rpn_out = self.rpn(fm)
        lap("rpn")
        props = self.proposals(rpn_out, im_shape)
        lap("proposals")
        # RoI pooling and the head are streamed over chunks of proposals, so the pooled RoIs
        # ([P, 7, 7, C3]) and the tail's activations are never held for all P at once.
        clock["roi_pool"] = clock["head"] = 0.0
        bbox_parts, prob_parts = [], []
        for start in range(0, max(len(props.boxes), 1), HEAD_CHUNK):
            t1 = time.perf_counter()
            pooled = self.pool_rois(fm, props.boxes[start : start + HEAD_CHUNK], im_shape)
            t2 = time.perf_counter()
            part_bbox, part_prob = self.head(pooled)
            t0 = time.perf_counter()
            clock["roi_pool"] += t2 - t1
            clock["head"] += t0 - t2
            bbox_parts.append(part_bbox)
            prob_parts.append(part_prob)
        bbox_pred = np.concatenate(bbox_parts)
        cls_prob = np.concatenate(prob_parts)
        dets = self.detections(
            props.boxes, bbox_pred, cls_prob, im_shape, min_prob=min_prob,
            max_detections=max_detections,
        )
        lap("detections")
        if timings is not None:
            timings.update(clock)
        return dets

    def run_stages(self, image: npt.ArrayLike) -> dict[str, Any]:
        """Every stage's output for one image (for diffs): a dict of arrays and dataclasses."""
        x = self.preprocess(image)
        im_shape = (int(x.shape[1]), int(x.shape[2]))
        fm = self.features(x)
        rpn_out = self.rpn(fm)
        anc = self.anchors(rpn_out.feature_shape)
        props = self.proposals(rpn_out, im_shape, anc)
        pooled = self.pool_rois(fm, props.boxes, im_shape)
        bbox_pred, cls_prob = self.head(pooled)
        dets = self.detections(props.boxes, bbox_pred, cls_prob, im_shape)
        return {
            "input": x, "features": fm, "rpn": rpn_out, "anchors": anc, "proposals": props,
            "pooled": pooled, "bbox_pred": bbox_pred, "cls_prob": cls_prob, "detections": dets,
        }
