"""The weights name table: every tensor of the workshop model, by its TF variable name.

Names are those ``tf.layers`` gives inside the workshop's variable scopes (spec 1.4):

========================================================================  ======================
name                                                                      shape
========================================================================  ======================
``resnet_v1_101/conv1/conv2d/kernel``                                     ``(7, 7, 3, 64)`` HWIO
``resnet_v1_101/conv1/batch_normalization/{gamma,beta,moving_mean,        ``(64,)``
moving_variance}``
``resnet_v1_101/block{b}/unit_{k}/bottleneck_v1/{conv1,conv2,conv3,       1x1 / 3x3 / 1x1 HWIO
shortcut}/conv2d/kernel`` (shortcut only when the channel count changes)
``.../{conv1,conv2,conv3,shortcut}/batch_normalization/{...}``            ``(C_out,)``
``rpn/conv/{kernel,bias}``                                                ``(3, 3, 1024, 512)``
``rpn/cls_conv/{kernel,bias}``                                            ``(1, 1, 512, 2k)``
``rpn/bbox_conv/{kernel,bias}``                                           ``(1, 1, 512, 4k)``
``rcnn/fc_classifier/{kernel,bias}``                                      ``(2048, 81)``
``rcnn/fc_bbox/{kernel,bias}``                                            ``(2048, 320)``
========================================================================  ======================

The scope is ``resnet_v1_{depth}``. Conv kernels are HWIO and dense kernels ``(in, out)``, as TF
stores them, so a TF checkpoint needs no transposition. All tensors are float32.
"""

from __future__ import annotations

from npfrcnn.config import Detectron2Config, FPNConfig, ModelConfig
from npfrcnn.resnet import BN_PARAMS, backbone_units, tail_units

__all__ = ["expected_shapes", "conv_names"]


def _conv_bn(out: dict[str, tuple[int, ...]], scope: str, kernel: tuple[int, ...]) -> None:
    out[f"{scope}/conv2d/kernel"] = kernel
    for p in BN_PARAMS:
        out[f"{scope}/batch_normalization/{p}"] = (kernel[-1],)


def expected_shapes(
    config: ModelConfig | FPNConfig | Detectron2Config,
) -> dict[str, tuple[int, ...]]:
    """Every tensor the model needs, name -> shape, in network order.

    C4 configs use the workshop's TF names (this module); FPN configs torchvision's state-dict
    keys (:mod:`npfrcnn.weights.torchvision_names`); Detectron2 configs Detectron2's
    (:mod:`npfrcnn.weights.detectron2_names`).
    """
    if isinstance(config, Detectron2Config):
        from npfrcnn.weights.detectron2_names import expected_shapes as d2_shapes

        return d2_shapes(config)
    if isinstance(config, FPNConfig):
        from npfrcnn.weights.torchvision_names import expected_shapes as fpn_shapes

        return fpn_shapes(config)
    out: dict[str, tuple[int, ...]] = {}
    scope = config.scope
    _conv_bn(out, f"{scope}/conv1", (7, 7, 3, config.root_depth))
    for u in [*backbone_units(config), *tail_units(config)]:
        if u.has_shortcut_conv:
            _conv_bn(out, f"{u.prefix}/shortcut", (1, 1, u.depth_in, u.depth))
        _conv_bn(out, f"{u.prefix}/conv1", (1, 1, u.depth_in, u.depth_bottleneck))
        _conv_bn(out, f"{u.prefix}/conv2", (3, 3, u.depth_bottleneck, u.depth_bottleneck))
        _conv_bn(out, f"{u.prefix}/conv3", (1, 1, u.depth_bottleneck, u.depth))
    k = config.num_anchors
    c3, c4, r = config.block3_channels, config.block4_channels, config.rpn_depth
    out["rpn/conv/kernel"] = (3, 3, c3, r)
    out["rpn/conv/bias"] = (r,)
    out["rpn/cls_conv/kernel"] = (1, 1, r, 2 * k)
    out["rpn/cls_conv/bias"] = (2 * k,)
    out["rpn/bbox_conv/kernel"] = (1, 1, r, 4 * k)
    out["rpn/bbox_conv/bias"] = (4 * k,)
    n = config.num_classes
    out["rcnn/fc_classifier/kernel"] = (c4, n + 1)
    out["rcnn/fc_classifier/bias"] = (n + 1,)
    out["rcnn/fc_bbox/kernel"] = (c4, 4 * n)
    out["rcnn/fc_bbox/bias"] = (4 * n,)
    return out


def conv_names(config: ModelConfig) -> list[str]:
    """Names of the conv kernels that are followed by batch norm (their scopes end in a conv)."""
    return [n for n in expected_shapes(config) if n.endswith("/conv2d/kernel")]
