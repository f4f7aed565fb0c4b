"""``FPNConfig``: every knob of torchvision's ResNet + FPN Faster R-CNN at inference.

Defaults are ``torchvision.models.detection.fasterrcnn_resnet50_fpn`` (v1) with torchvision's
own defaults (torchvision-spec section 1.1). Field groups follow the parts that read them:

* transform (``npfrcnn.modeling.transform.TorchvisionTransform``): ``min_size``, ``max_size``,
  ``image_mean``, ``image_std``, ``size_divisible``; ``torch_threads`` and
  ``torch_cpu_capability`` name the torch run to reproduce (``torch.get_num_threads()``,
  ``torch.backends.cpu.get_cpu_capability()``), because torch's CPU code paths depend on them
  (spec 2.2, 10.2, 10.4): the bilinear resize takes a channels-first FMA kernel with more than
  one thread and a channels-last one with one thread or when ``out_h + out_w <= 128``
  (:func:`npfrcnn.ops.torch_bilinear_formula`); sigmoid's tail and softmax's lane sum use 16
  lanes on AVX-512 and 8 on AVX2; sigmoid splits inputs above 32,768 values between threads;
* body (``modeling.backbone.ResNetBody``): ``units_per_block``, ``width_per_group`` (bottleneck
  width ``planes * width_per_group / 64``), ``body_norm`` (``"frozen_bn"``:
  ``FrozenBatchNorm2d``; ``"batch_norm"``: ``nn.BatchNorm2d`` in eval) and ``bn_eps`` (0.0 for
  v1 with the COCO_V1 weights, which ``overwrite_eps`` sets);
* FPN (``modeling.backbone.FPN``): ``fpn_channels``, ``fpn_norm`` (``"none"``: convs with bias;
  ``"batch_norm"``: convs without bias then BN, v2);
* anchors and RPN (``modeling.rpn.MultiLevelRPN``): one anchor size per level
  (``anchor_sizes``), ``aspect_ratios`` (h / w), ``rpn_conv_depth`` (1, v2: 2), the
  ``rpn_*`` inference thresholds;
* pooler (``modeling.poolers.MultiScaleRoIAlign``): ``roi_output_size``, ``sampling_ratio``,
  ``canonical_scale``, ``canonical_level``;
* box head and predictor (``modeling.heads``): ``box_head`` (``"two_mlp"`` or ``"conv_fc"``),
  ``box_head_convs`` (v2: four 256-channel 3x3 convs), ``representation_size``;
* post-processing (``modeling.postprocess.TorchvisionPostprocess``): ``bbox_reg_weights``,
  ``box_score_thresh``, ``box_nms_thresh``, ``box_detections_per_img``.

``num_classes`` counts object classes, background excluded, as everywhere in npfrcnn:
torchvision's ``num_classes`` is ``num_classes + 1`` (its class 0 is the background), and a
torchvision label ``l`` is npfrcnn's label ``l - 1``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

from npfrcnn.config._base import ConfigBase

__all__ = ["FPNConfig"]

_CHOICES: dict[str, tuple[Any, ...]] = {
    "torch_cpu_capability": ("avx512", "avx2"),
    "body_norm": ("frozen_bn", "batch_norm"),
    "fpn_norm": ("none", "batch_norm"),
    "box_head": ("two_mlp", "conv_fc"),
}

_POSITIVE_INTS = (
    "num_classes", "torch_threads", "min_size", "max_size", "size_divisible", "width_per_group",
    "fpn_channels",
    "rpn_conv_depth", "rpn_pre_nms_top_n", "rpn_post_nms_top_n", "roi_output_size",
    "sampling_ratio", "canonical_scale", "representation_size", "box_detections_per_img",
)


@dataclass(frozen=True)
class FPNConfig(ConfigBase):
    """Every setting of a torchvision-style ResNet-FPN Faster R-CNN. Immutable; JSON round-trips.

    See the module docstring for what each group of fields means.
    """

    ARCHITECTURE: ClassVar[str] = "resnet_fpn"

    name: str = "torchvision-r50-fpn"
    architecture: str = "resnet_fpn"
    num_classes: int = 90

    # Transform.
    min_size: int = 800
    max_size: int = 1333
    image_mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    image_std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    size_divisible: int = 32
    torch_threads: int = 2
    torch_cpu_capability: str = "avx512"

    # ResNet body.
    units_per_block: tuple[int, int, int, int] = (3, 4, 6, 3)
    width_per_group: int = 64
    body_norm: str = "frozen_bn"
    bn_eps: float = 1e-5

    # FPN.
    fpn_channels: int = 256
    fpn_norm: str = "none"

    # Anchors and RPN.
    anchor_sizes: tuple[int, ...] = (32, 64, 128, 256, 512)
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    rpn_conv_depth: int = 1
    rpn_pre_nms_top_n: int = 1000
    rpn_post_nms_top_n: int = 1000
    rpn_nms_thresh: float = 0.7
    rpn_score_thresh: float = 0.0
    rpn_min_size: float = 1e-3

    # MultiScaleRoIAlign.
    roi_output_size: int = 7
    sampling_ratio: int = 2
    canonical_scale: int = 224
    canonical_level: int = 4

    # Box head.
    box_head: str = "two_mlp"
    box_head_convs: tuple[int, ...] = ()
    representation_size: int = 1024

    # Post-processing.
    bbox_reg_weights: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0)
    box_score_thresh: float = 0.05
    box_nms_thresh: float = 0.5
    box_detections_per_img: int = 100

    def __post_init__(self) -> None:
        for fname in (
            "image_mean", "image_std", "units_per_block", "anchor_sizes", "aspect_ratios",
            "box_head_convs", "bbox_reg_weights",
        ):
            v = getattr(self, fname)
            if isinstance(v, list | tuple):
                object.__setattr__(self, fname, tuple(v))
        problems = self._problems()
        if problems:
            raise ValueError("invalid FPNConfig: " + "; ".join(problems))

    def _problems(self) -> list[str]:
        problems: list[str] = []
        if self.architecture != self.ARCHITECTURE:
            problems.append(
                f"architecture must be {self.ARCHITECTURE!r}, got {self.architecture!r}"
            )
        for fname, allowed in _CHOICES.items():
            if getattr(self, fname) not in allowed:
                problems.append(f"{fname} must be one of {allowed}, got {getattr(self, fname)!r}")
        for fname in _POSITIVE_INTS:
            v = getattr(self, fname)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                problems.append(f"{fname} must be a positive int, got {v!r}")
        units = self.units_per_block
        if len(units) != 4 or any(
            isinstance(u, bool) or not isinstance(u, int) or u < 1 for u in units
        ):
            problems.append(f"units_per_block must be 4 positive ints, got {units!r}")
        for fname in ("rpn_nms_thresh", "box_nms_thresh", "box_score_thresh", "rpn_score_thresh"):
            v = getattr(self, fname)
            if not isinstance(v, int | float) or not 0.0 <= float(v) <= 1.0:
                problems.append(f"{fname} must be in [0, 1], got {v!r}")
        for fname in ("bn_eps", "rpn_min_size"):
            v = getattr(self, fname)
            if not isinstance(v, int | float) or not math.isfinite(v) or v < 0:
                problems.append(f"{fname} must be a finite number >= 0, got {v!r}")
        for fname in ("image_mean", "image_std"):
            v = getattr(self, fname)
            if len(v) != 3 or not all(isinstance(x, int | float) and math.isfinite(x) for x in v):
                problems.append(f"{fname} must be 3 finite numbers, got {v!r}")
        if len(self.image_std) == 3 and any(s == 0 for s in self.image_std):
            problems.append(f"image_std must not contain 0, got {self.image_std!r}")
        if len(self.anchor_sizes) != 5:
            problems.append(
                "anchor_sizes must hold one size per FPN level ('0', '1', '2', '3', 'pool'), "
                f"5 values, got {self.anchor_sizes!r}"
            )
        if not self.aspect_ratios or not all(
            isinstance(r, int | float) and math.isfinite(r) and r > 0 for r in self.aspect_ratios
        ):
            problems.append(f"aspect_ratios must be positive numbers, got {self.aspect_ratios!r}")
        if not all(isinstance(s, int | float) and s > 0 for s in self.anchor_sizes):
            problems.append(f"anchor_sizes must be positive, got {self.anchor_sizes!r}")
        if len(self.bbox_reg_weights) != 4 or not all(
            isinstance(w, int | float) and math.isfinite(w) and w > 0
            for w in self.bbox_reg_weights
        ):
            problems.append(
                f"bbox_reg_weights must be 4 positive numbers, got {self.bbox_reg_weights!r}"
            )
        if self.box_head == "conv_fc" and not self.box_head_convs:
            problems.append("box_head 'conv_fc' needs box_head_convs (v2: (256, 256, 256, 256))")
        if self.box_head == "two_mlp" and self.box_head_convs:
            problems.append("box_head 'two_mlp' takes no box_head_convs")
        if any(isinstance(c, bool) or not isinstance(c, int) or c < 1
               for c in self.box_head_convs):
            problems.append(f"box_head_convs must be positive ints, got {self.box_head_convs!r}")
        if self.min_size > self.max_size and isinstance(self.min_size, int):
            problems.append(
                f"min_size ({self.min_size}) must not exceed max_size ({self.max_size})"
            )
        return problems

    # Derived values -----------------------------------------------------------------------

    @property
    def depth(self) -> int:
        """ResNet depth, ``3 * sum(units_per_block) + 2`` (50 for ``(3, 4, 6, 3)``)."""
        return 3 * sum(self.units_per_block) + 2

    @property
    def body_channels(self) -> tuple[int, int, int, int]:
        """Output channels of layer1..layer4: ``64 * 4 * 2**i`` (256, 512, 1024, 2048)."""
        return (256, 512, 1024, 2048)

    @property
    def bottleneck_widths(self) -> tuple[int, int, int, int]:
        """Width of each layer's 3x3 conv: ``int(planes * width_per_group / 64)``."""
        w = [int(p * (self.width_per_group / 64.0)) for p in (64, 128, 256, 512)]
        return (w[0], w[1], w[2], w[3])

    @property
    def simd_lanes(self) -> int:
        """float32 lanes of torch's vectorised CPU kernels: 16 on AVX-512, 8 on AVX2."""
        return 16 if self.torch_cpu_capability == "avx512" else 8

    @property
    def num_anchors(self) -> int:
        """Anchors per feature-map cell and level (one size per level): ``len(aspect_ratios)``."""
        return len(self.aspect_ratios)
