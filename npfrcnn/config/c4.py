"""``ModelConfig``: every knob of a ResNet-C4 Faster R-CNN, and the named profiles.

A profile is a frozen :class:`ModelConfig`. ``workshop`` (the default) reproduces the Tryolabs
workshop notebook exactly (pipeline-spec sections 1.3, 1.4 and 1.8):

* input: RGB uint8 at native size, minus the RGB means ``(123.68, 116.78, 103.94)``;
* backbone: ResNet v1 (stride in the 3x3 of each block's last unit, explicit padding for strided
  convs, pool1 a VALID 3x3/2 max-pool, BN epsilon 1e-5), block3 at output stride 16;
* anchors: base 256, ratios ``(0.5, 1, 2)`` as height/width, scales ``(0.125 .. 2)``,
  ratio-major order, ``+-w/2`` (no +1), centres at ``k * 16``;
* RPN: 3x3x512 conv with ReLU6, softmax objectness (column 1 = object), raw deltas;
  decode -> area > 0 -> top 12,000 -> NMS 0.7 -> 2,000, no clipping;
* RoI: ``crop_and_resize`` 14x14 with boxes divided by W and H, then a 2x2 max-pool;
* head: block4 at stride 1 on the 7x7 crops, global mean, fc 81 (background column 0) and 320;
* final: deltas times ``(0.1, 0.1, 0.2, 0.2)``, clip to ``[0, W-1]``, per-class NMS 0.5,
  100 per class, top 300, min probability 0.

Other profiles (Luminoth, TF OD API, Detectron2) come in a later issue; the fields that they need
are already here so that a profile is pure data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from npfrcnn.config._base import ConfigBase

__all__ = ["ModelConfig", "STANDARD_UNITS", "workshop"]

#: Units per block of the standard ResNet v1 depths (depth = 3 * sum(units) + 2).
STANDARD_UNITS: dict[int, tuple[int, int, int, int]] = {
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
}

_CHOICES: dict[str, tuple[Any, ...]] = {
    "anchor_ratio_mode": ("h/w", "w/h"),
    "anchor_order": ("ratio_major", "scale_major"),
    "stride_in": ("3x3", "1x1"),
    "pool1_padding": ("VALID", "SAME"),
    "rpn_activation": ("relu6", "relu"),
    "rpn_objectness": ("softmax", "sigmoid"),
    "roi_op": ("crop_and_resize", "roi_align"),
    "roi_normalizer": ("size", "size_minus_one"),
    "channel_order": ("RGB", "BGR"),
}


@dataclass(frozen=True)
class ModelConfig(ConfigBase):
    """Every setting of the network and of its pre/post-processing. Immutable; JSON round-trips.

    Attributes are grouped as DESIGN.md "Profiles" lists them. Defaults are the ``workshop``
    profile at ResNet-101 depth with the 80 COCO classes.
    """

    name: str = "workshop"
    num_classes: int = 80

    # Preprocessing.
    channel_order: str = "RGB"
    pixel_means: tuple[float, float, float] = (123.68, 116.78, 103.94)
    resize_min: int | None = None  # shorter side; None = native size (workshop)
    resize_max: int | None = None  # longer side cap; None = no cap

    # Backbone (ResNet v1).
    units_per_block: tuple[int, int, int, int] = STANDARD_UNITS[101]
    root_depth: int = 64  # conv1 output channels
    base_depths: tuple[int, int, int, int] = (64, 128, 256, 512)  # bottleneck widths per block
    stride_in: str = "3x3"  # which conv of the strided unit carries the stride
    pool1_padding: str = "VALID"
    bn_epsilon: float = 1e-5
    output_stride: int = 16

    # Anchors.
    anchor_base_size: float = 256.0
    anchor_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    anchor_ratio_mode: str = "h/w"  # ratio means height / width ("h/w") or width / height
    anchor_scales: tuple[float, ...] = (0.125, 0.25, 0.5, 1.0, 2.0)
    anchor_order: str = "ratio_major"
    anchor_offset: float = 0.0  # anchor centre = k * stride + offset
    anchor_plus_one: bool = False  # Luminoth +-(w-1)/2 instead of +-w/2

    # Box coder.
    box_plus_one: bool = False  # widths x2 - x1 + 1
    decode_minus_one: bool | None = None  # None: same as box_plus_one
    rpn_variances: tuple[float, float, float, float] | None = None  # None: raw deltas
    rcnn_variances: tuple[float, float, float, float] = (0.1, 0.1, 0.2, 0.2)
    delta_clamp: float | None = None  # clamp dw, dh before exp; None = no clamp

    # RPN.
    rpn_depth: int = 512
    rpn_activation: str = "relu6"
    rpn_objectness: str = "softmax"
    rpn_clip_before_nms: bool = False
    rpn_pre_nms_top_n: int = 12000
    rpn_post_nms_top_n: int = 2000
    rpn_nms_threshold: float = 0.7

    # RoI op.
    roi_op: str = "crop_and_resize"
    roi_crop_size: int = 14  # crop_and_resize size before the 2x2 max-pool
    roi_pool_size: int = 7  # pooled size after the max-pool
    roi_normalizer: str = "size"  # boxes divided by (W, H) ("size") or (W - 1, H - 1)

    # Head.
    tail_stride: int = 1
    background_first: bool = True

    # Final detections.
    clip_inclusive: bool = True  # clip to [0, W - 1] (True) or [0, W]
    class_nms_threshold: float = 0.5
    class_max_detections: int = 100
    total_max_detections: int = 300
    min_prob: float = 0.0

    def __post_init__(self) -> None:
        problems: list[str] = []
        units = tuple(int(u) for u in self.units_per_block)
        if len(units) != 4 or min(units) < 1:
            problems.append(
                f"units_per_block must be 4 positive ints, got {self.units_per_block!r}"
            )
        if len(tuple(self.base_depths)) != 4 or min(self.base_depths) < 1:
            problems.append(f"base_depths must be 4 positive ints, got {self.base_depths!r}")
        for fname, allowed in _CHOICES.items():
            if getattr(self, fname) not in allowed:
                problems.append(
                    f"{fname} must be one of {allowed}, got {getattr(self, fname)!r}"
                )
        for fname in ("rpn_nms_threshold", "class_nms_threshold", "min_prob"):
            v = getattr(self, fname)
            if not 0.0 <= float(v) <= 1.0:
                problems.append(f"{fname} must be in [0, 1], got {v!r}")
        for fname in (
            "num_classes", "root_depth", "rpn_depth", "rpn_pre_nms_top_n",
            "rpn_post_nms_top_n", "roi_crop_size", "roi_pool_size", "class_max_detections",
            "total_max_detections", "output_stride", "tail_stride",
        ):
            v = getattr(self, fname)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                problems.append(f"{fname} must be a positive int, got {v!r}")
        if self.output_stride not in (8, 16, 32):
            problems.append(f"output_stride must be 8, 16 or 32, got {self.output_stride!r}")
        if self.roi_crop_size != 2 * self.roi_pool_size and self.roi_op == "crop_and_resize":
            problems.append(
                "roi_crop_size must be 2 * roi_pool_size (a 2x2 max-pool follows the crop), "
                f"got {self.roi_crop_size} and {self.roi_pool_size}"
            )
        if not self.bn_epsilon > 0:
            problems.append(f"bn_epsilon must be positive, got {self.bn_epsilon!r}")
        if len(tuple(self.pixel_means)) != 3:
            problems.append(f"pixel_means must have 3 values, got {self.pixel_means!r}")
        if not self.anchor_ratios or not self.anchor_scales:
            problems.append("anchor_ratios and anchor_scales must not be empty")
        if problems:
            raise ValueError("invalid ModelConfig: " + "; ".join(problems))
        # Normalise sequences to tuples so equality and hashing work after JSON round trips.
        for fname in (
            "units_per_block", "base_depths", "pixel_means", "anchor_ratios", "anchor_scales",
            "rpn_variances", "rcnn_variances",
        ):
            v = getattr(self, fname)
            if v is not None:
                object.__setattr__(self, fname, tuple(v))

    # Derived values -----------------------------------------------------------------------

    @property
    def depth(self) -> int:
        """ResNet depth, ``3 * sum(units_per_block) + 2`` (101 for ``(3, 4, 23, 3)``)."""
        return 3 * sum(self.units_per_block) + 2

    @property
    def scope(self) -> str:
        """Top variable scope of the backbone, ``resnet_v1_{depth}`` (e.g. ``resnet_v1_101``)."""
        return f"resnet_v1_{self.depth}"

    @property
    def num_anchors(self) -> int:
        """Anchors per feature-map cell, ``len(ratios) * len(scales)`` (15 for the workshop)."""
        return len(self.anchor_ratios) * len(self.anchor_scales)

    @property
    def block3_channels(self) -> int:
        return 4 * self.base_depths[2]

    @property
    def block4_channels(self) -> int:
        return 4 * self.base_depths[3]


def workshop(
    depth: int = 101,
    num_classes: int = 80,
    *,
    units_per_block: tuple[int, int, int, int] | None = None,
    **changes: Any,
) -> ModelConfig:
    """The ``workshop`` profile.

    Args:
        depth: 50, 101 or 152 (standard units per block). Ignored when ``units_per_block`` is
            given (a small test depth, e.g. ``(1, 1, 1, 1)`` = ResNet-14).
        num_classes: object classes, background excluded.
        units_per_block: units in block1..block4.
        changes: other fields to override (e.g. ``base_depths`` for narrow test networks).
    """
    if units_per_block is None:
        if depth not in STANDARD_UNITS:
            raise ValueError(
                f"depth must be one of {sorted(STANDARD_UNITS)}, got {depth!r}; "
                "for a small test network pass units_per_block=(1, 1, 1, 1)"
            )
        units_per_block = STANDARD_UNITS[depth]
    return ModelConfig(
        name="workshop", num_classes=num_classes, units_per_block=units_per_block, **changes
    )
