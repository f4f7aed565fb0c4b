"""Box heads and the predictor of torchvision's Faster R-CNN (torchvision-spec section 8).

* :class:`TwoMLPHead` (v1, R101): flatten -> ``fc6`` -> ReLU -> ``fc7`` -> ReLU;
* :class:`ConvFCHead` (v2 ``FastRCNNConvFCHead``): ``len(box_head_convs)`` x (3x3 conv pad 1,
  no bias -> ``BatchNorm2d`` -> ReLU) -> flatten -> Linear -> ReLU;
* :class:`FastRCNNPredictor`: ``cls_score`` (``num_classes + 1`` logits, background 0) and
  ``bbox_pred`` (4 deltas per class, background included).

torch flattens ``[P, C, 7, 7]`` in (C, H, W) order; npfrcnn's pooled RoIs are NHWC, flattened in
(H, W, C) order. The converter permutes the first Linear layer's input axis once
(:mod:`npfrcnn.weights.torchvision_names`), so no activation is ever transposed.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import numpy.typing as npt

from npfrcnn import ops
from npfrcnn.config.fpn import FPNConfig
from npfrcnn.modeling.backbone import Norm

__all__ = ["TwoMLPHead", "ConvFCHead", "FastRCNNPredictor", "build_box_head"]

F32 = npt.NDArray[np.float32]


def _linear_relu(x: F32, tensors: Mapping[str, np.ndarray], prefix: str) -> F32:
    out = ops.dense(x, tensors[prefix + "weight"], tensors[prefix + "bias"])
    np.maximum(out, np.float32(0), out=out)
    return out


class TwoMLPHead:
    """``TwoMLPHead``: ``[P, S, S, C] -> [P, representation_size]``."""

    def __init__(self, config: FPNConfig, tensors: Mapping[str, np.ndarray], backend: str):
        self.t = tensors

    def __call__(self, pooled: F32) -> F32:
        x = pooled.reshape(pooled.shape[0], int(np.prod(pooled.shape[1:])))
        x = _linear_relu(x, self.t, "roi_heads.box_head.fc6.")
        return _linear_relu(x, self.t, "roi_heads.box_head.fc7.")


class ConvFCHead:
    """``FastRCNNConvFCHead`` (v2): convs + BN + ReLU, then one Linear + ReLU."""

    def __init__(self, config: FPNConfig, tensors: Mapping[str, np.ndarray], backend: str):
        self.t = tensors
        self.backend = backend
        self.n_convs = len(config.box_head_convs)
        self.norms = [
            Norm("batch_norm", tensors, f"roi_heads.box_head.{k}.1.", 1e-5)
            for k in range(self.n_convs)
        ]

    def __call__(self, pooled: F32) -> F32:
        x = pooled
        for k in range(self.n_convs):
            x = ops.conv2d(
                x, self.t[f"roi_heads.box_head.{k}.0.weight"], padding=((1, 1), (1, 1)),
                backend=self.backend,
            )
            x = self.norms[k](x)
            np.maximum(x, np.float32(0), out=x)
        x = x.reshape(x.shape[0], int(np.prod(x.shape[1:])))
        return _linear_relu(x, self.t, f"roi_heads.box_head.{self.n_convs + 1}.")


class FastRCNNPredictor:
    """``FastRCNNPredictor``: ``[P, R] -> (bbox_pred [P, 4 (n + 1)], class_logits [P, n + 1])``."""

    def __init__(self, config: FPNConfig, tensors: Mapping[str, np.ndarray], backend: str):
        self.t = tensors

    def __call__(self, x: F32) -> tuple[F32, F32]:
        p = "roi_heads.box_predictor."
        logits = ops.dense(x, self.t[p + "cls_score.weight"], self.t[p + "cls_score.bias"])
        bbox = ops.dense(x, self.t[p + "bbox_pred.weight"], self.t[p + "bbox_pred.bias"])
        return bbox, logits


def build_box_head(
    config: FPNConfig, tensors: Mapping[str, np.ndarray], backend: str
) -> TwoMLPHead | ConvFCHead:
    if config.box_head == "two_mlp":
        return TwoMLPHead(config, tensors, backend)
    return ConvFCHead(config, tensors, backend)
