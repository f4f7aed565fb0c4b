"""The ResNet-C4 parts (workshop profile): thin parts around ``npfrcnn.resnet``, ``rpn`` and
``rcnn``, which hold the arithmetic (pipeline-spec 1.3, 1.4, 1.8).

* :class:`WorkshopTransform`: RGB minus the means, native size, no padding;
* :class:`C4Backbone`: ResNet block1..block3 (one feature map);
* :class:`SingleLevelRPN`: the RPN head on that map, grid anchors, proposals;
* :class:`CropAndPool`: ``crop_and_resize`` 14x14 + 2x2 max-pool;
* :class:`Block4Head`: block4 + spatial mean; :class:`C4Predictor`: the two fc layers + softmax;
* :class:`C4Postprocess`: per-class decode, clip, NMS and the overall top-n.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import numpy.typing as npt

from npfrcnn import anchors as anchors_mod
from npfrcnn import ops
from npfrcnn.config.c4 import ModelConfig
from npfrcnn.modeling.transform import Preprocessed, check_image
from npfrcnn.rcnn import final_detections, roi_pool
from npfrcnn.resnet import feature_map_shape, run_base, run_tail
from npfrcnn.rpn import Proposals, RPNOutput, generate_proposals, rpn_head

__all__ = [
    "WorkshopTransform", "C4Backbone", "SingleLevelRPN", "CropAndPool", "Block4Head",
    "C4Predictor", "C4Postprocess",
]

F32 = npt.NDArray[np.float32]


class WorkshopTransform:
    def __init__(self, config: ModelConfig, backend: str):
        self.config = config

    def __call__(self, image: npt.ArrayLike) -> Preprocessed:
        img = check_image(image)
        feature_map_shape(self.config, img.shape[0], img.shape[1])  # raises for tiny images
        x = img.astype(np.float32)
        if self.config.channel_order == "BGR":
            x = x[:, :, ::-1]
        x = x - np.asarray(self.config.pixel_means, dtype=np.float32)
        size = (int(img.shape[0]), int(img.shape[1]))
        return Preprocessed(np.ascontiguousarray(x[None], dtype=np.float32), size, size)


class C4Backbone:
    def __init__(self, config: ModelConfig, tensors: Mapping[str, np.ndarray], backend: str):
        self.config, self.t, self.backend = config, tensors, backend

    def __call__(self, x: F32) -> F32:
        return run_base(np.asarray(x, dtype=np.float32), self.t, self.config, self.backend)


class SingleLevelRPN:
    def __init__(self, config: ModelConfig, tensors: Mapping[str, np.ndarray], backend: str):
        self.config, self.t, self.backend = config, tensors, backend
        style = "luminoth" if config.anchor_plus_one else "workshop"
        self.reference = anchors_mod.reference_anchors(
            config.anchor_base_size, config.anchor_ratios, config.anchor_scales,
            style=style, dtype=np.float32,
        )

    def head(self, features: F32) -> RPNOutput:
        return rpn_head(np.asarray(features, dtype=np.float32), self.t, self.config, self.backend)

    def anchors(self, feature_shape: tuple[int, int]) -> F32:
        return anchors_mod.grid_anchors(
            int(feature_shape[0]), int(feature_shape[1]), self.config.output_stride,
            self.reference, offset=self.config.anchor_offset,
        )

    def proposals(
        self, rpn_out: RPNOutput, anchors: npt.ArrayLike, image_size: tuple[int, int]
    ) -> Proposals:
        return generate_proposals(
            rpn_out.bbox_pred, rpn_out.cls_prob, anchors, image_size, self.config, self.backend
        )


class CropAndPool:
    def __init__(self, config: ModelConfig, backend: str):
        self.config, self.backend = config, backend

    def __call__(self, features: F32, boxes: npt.ArrayLike, image_size: tuple[int, int]) -> F32:
        return roi_pool(
            np.asarray(features, dtype=np.float32), boxes, image_size, self.config, self.backend
        )


class Block4Head:
    def __init__(self, config: ModelConfig, tensors: Mapping[str, np.ndarray], backend: str):
        self.config, self.t, self.backend = config, tensors, backend

    def __call__(self, pooled: F32) -> F32:
        if pooled.shape[0] == 0:
            return np.zeros((0, self.config.block4_channels), np.float32)
        return ops.mean(run_tail(pooled, self.t, self.config, self.backend), axis=(1, 2))


class C4Predictor:
    def __init__(self, config: ModelConfig, tensors: Mapping[str, np.ndarray], backend: str):
        self.config, self.t = config, tensors

    def __call__(self, feats: F32) -> tuple[F32, F32]:
        if feats.shape[0] == 0:
            n = self.config.num_classes
            return np.zeros((0, 4 * n), np.float32), np.zeros((0, n + 1), np.float32)
        logits = ops.dense(feats, self.t["rcnn/fc_classifier/kernel"],
                           self.t["rcnn/fc_classifier/bias"])
        bbox = ops.dense(feats, self.t["rcnn/fc_bbox/kernel"], self.t["rcnn/fc_bbox/bias"])
        return bbox, ops.softmax(logits, axis=-1)


class C4Postprocess:
    def __init__(self, config: ModelConfig, backend: str):
        self.config, self.backend = config, backend

    def __call__(
        self,
        proposals: npt.ArrayLike,
        bbox_pred: npt.ArrayLike,
        cls_prob: npt.ArrayLike,
        image_size: tuple[int, int],
        *,
        min_prob: float | None = None,
        max_detections: int | None = None,
    ) -> tuple[F32, npt.NDArray[np.int64], F32]:
        return final_detections(
            proposals, bbox_pred, cls_prob, image_size, self.config, min_prob=min_prob,
            max_detections=max_detections, backend=self.backend,
        )
