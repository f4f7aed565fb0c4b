"""torchvision's Faster R-CNN profiles (torchvision-spec section 1.2).

==========================  ===================================================================
``torchvision-r50-fpn``     ``fasterrcnn_resnet50_fpn``: ResNet-50, FrozenBN (eps 0.0 with the
                            COCO_V1 weights, 1e-5 with ImageNet-only backbone weights;
                            ``nn.BatchNorm2d`` when built without any weights), FPN without
                            norm, one-conv RPN head, ``TwoMLPHead``
``torchvision-r50-fpn-v2``  ``fasterrcnn_resnet50_fpn_v2``: ResNet-50 with ``nn.BatchNorm2d``,
                            FPN with BN, two-conv RPN head, ``FastRCNNConvFCHead`` (4 convs
                            + BN, one fc)
``torchvision-r101-fpn``    ``FasterRCNN(resnet_fpn_backbone("resnet101", ...), num_classes)``:
                            ResNet-101 (3, 4, 23, 3), FrozenBN eps 1e-5, as v1 otherwise
==========================  ===================================================================

The norm layer and its epsilon depend on how torchvision built the model, not only on the
profile; the converter reads which from the checkpoint's keys (``num_batches_tracked`` exists
only for ``nn.BatchNorm2d``) and records it (``body_norm``, ``bn_eps``).
"""

from __future__ import annotations

from typing import Any

from npfrcnn.config.fpn import FPNConfig

__all__ = ["TORCHVISION_PROFILES", "torchvision_profile"]

_BASE: dict[str, dict[str, Any]] = {
    "torchvision-r50-fpn": dict(units_per_block=(3, 4, 6, 3), body_norm="frozen_bn", bn_eps=0.0),
    "torchvision-r50-fpn-v2": dict(
        units_per_block=(3, 4, 6, 3), body_norm="batch_norm", bn_eps=1e-5, fpn_norm="batch_norm",
        rpn_conv_depth=2, box_head="conv_fc", box_head_convs=(256, 256, 256, 256),
    ),
    "torchvision-r101-fpn": dict(
        units_per_block=(3, 4, 23, 3), body_norm="frozen_bn", bn_eps=1e-5,
    ),
}

#: Names of the torchvision profiles.
TORCHVISION_PROFILES: tuple[str, ...] = tuple(_BASE)


def torchvision_profile(name: str, num_classes: int = 90, **changes: Any) -> FPNConfig:
    """The named torchvision profile.

    Args:
        name: one of :data:`TORCHVISION_PROFILES`.
        num_classes: object classes, background excluded (torchvision's ``num_classes - 1``;
            90 for COCO's 91-entry torchvision list).
        changes: other :class:`FPNConfig` fields (inference knobs such as ``min_size``,
            ``rpn_post_nms_top_n``, ``box_score_thresh``, or a reduced test size such as
            ``units_per_block``).
    """
    try:
        base = _BASE[name]
    except KeyError:
        raise ValueError(
            f"unknown torchvision profile {name!r}; choose one of {', '.join(_BASE)}"
        ) from None
    kw: dict[str, Any] = {**base, **changes}
    return FPNConfig(name=name, num_classes=num_classes, **kw)
