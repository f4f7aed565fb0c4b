"""Detectron2's Faster R-CNN profiles (``configs/COCO-Detection/*.yaml`` of Detectron2).

=========================  ====================================================================
``detectron2-r101-c4``     ``faster_rcnn_R_101_C4_3x.yaml``: ResNet-101 to ``res4``, one RPN
                           level (15 anchors per cell, stride 16, pre-NMS top 6000),
                           ``Res5ROIHeads`` on ROIAlignV2 14x14 crops, no padding
``detectron2-r50-fpn``     ``faster_rcnn_R_50_FPN_3x.yaml``: ResNet-50 + FPN (p2..p6), RPN
                           pre-NMS top 1000 per level, ROIAlignV2 7x7 by level, two fc of 1024,
                           padding to 32
``detectron2-r101-fpn``    ``faster_rcnn_R_101_FPN_3x.yaml``: as R50-FPN with ResNet-101
=========================  ====================================================================

Every other value is Detectron2's default (``detectron2/config/defaults.py``).
"""

from __future__ import annotations

from typing import Any

from npfrcnn.config.detectron2 import Detectron2Config

__all__ = ["DETECTRON2_PROFILES", "detectron2_profile"]

_C4: dict[str, Any] = dict(
    variant="c4", anchor_sizes=((32, 64, 128, 256, 512),),
    rpn_pre_nms_topk_test=6000, rpn_post_nms_topk_test=1000, pooler_resolution=14,
)
_FPN: dict[str, Any] = dict(
    variant="fpn", anchor_sizes=((32,), (64,), (128,), (256,), (512,)),
    rpn_pre_nms_topk_test=1000, rpn_post_nms_topk_test=1000, pooler_resolution=7,
)

_BASE: dict[str, dict[str, Any]] = {
    "detectron2-r101-c4": dict(_C4, units_per_block=(3, 4, 23, 3)),
    "detectron2-r50-fpn": dict(_FPN, units_per_block=(3, 4, 6, 3)),
    "detectron2-r101-fpn": dict(_FPN, units_per_block=(3, 4, 23, 3)),
}

#: Names of the Detectron2 profiles.
DETECTRON2_PROFILES: tuple[str, ...] = tuple(_BASE)


def detectron2_profile(name: str, num_classes: int = 80, **changes: Any) -> Detectron2Config:
    """The named Detectron2 profile.

    Args:
        name: one of :data:`DETECTRON2_PROFILES`.
        num_classes: ``MODEL.ROI_HEADS.NUM_CLASSES`` (80 for COCO).
        changes: other :class:`Detectron2Config` fields (test-time knobs such as
            ``min_size_test``, ``rpn_post_nms_topk_test``, ``score_thresh_test``, or a reduced
            test size such as ``units_per_block``).
    """
    try:
        base = _BASE[name]
    except KeyError:
        raise ValueError(
            f"unknown Detectron2 profile {name!r}; choose one of {', '.join(_BASE)}"
        ) from None
    return Detectron2Config(name=name, num_classes=num_classes, **{**base, **changes})
