"""``Detectron2Config``: every knob of Detectron2's Faster R-CNN (R-C4 and R-FPN) at test time.

Field names follow Detectron2's config keys (``detectron2/config/defaults.py``), lower-cased and
flattened, with Detectron2's defaults; the three profiles
(:mod:`npfrcnn.config.profiles.detectron2`) set what their YAML files change. What each group
feeds (:mod:`npfrcnn.modeling.detectron2`):

* input (``DefaultPredictor``): ``min_size_test``, ``max_size_test`` (``ResizeShortestEdge``,
  Pillow bilinear on the uint8 BGR image), ``pixel_mean`` and ``pixel_std`` (**BGR**, 0..255
  pixels); the padding to ``size_divisibility`` is the backbone's (FPN 32, C4 0: none), not a
  config value, as in Detectron2;
* ResNet (``MODEL.RESNETS``): ``units_per_block`` (50: (3, 4, 6, 3), 101: (3, 4, 23, 3)),
  ``stride_in_1x1`` (True for the MSRA weights of the model zoo), ``stem_out_channels`` (64),
  ``res2_out_channels`` (256; res3..res5 double it), ``width_per_group`` (64: res2's bottleneck
  width, doubled per stage), ``bn_eps``; the norm is ``FrozenBN``, which Detectron2 runs as
  ``F.batch_norm`` in eval at test time;
* FPN (``MODEL.FPN``): ``fpn_channels``;
* anchors (``MODEL.ANCHOR_GENERATOR``): ``anchor_sizes`` (one tuple per level: C4 one level of
  five sizes, FPN five levels of one), ``aspect_ratios`` (h / w), ``anchor_offset``;
* RPN (``MODEL.RPN``): ``rpn_pre_nms_topk_test`` (per level), ``rpn_post_nms_topk_test`` (per
  image), ``rpn_nms_thresh``, ``rpn_min_size`` (``PROPOSAL_GENERATOR.MIN_SIZE``),
  ``rpn_bbox_reg_weights``;
* box pooler (``MODEL.ROI_BOX_HEAD``): ``pooler_resolution``, ``pooler_sampling_ratio`` (0:
  adaptive), ROIAlignV2 (``aligned=True``); FPN's level assignment uses ``canonical_box_size``
  and ``canonical_level``;
* box head: C4 ``res5`` (three bottlenecks, stride 2 in the first) then a mean; FPN ``num_fc``
  fully connected layers of ``fc_dim``;
* outputs (``MODEL.ROI_HEADS``, ``TEST``): ``bbox_reg_weights``, ``score_thresh_test``,
  ``nms_thresh_test``, ``detections_per_image``.

``torch_cpu_capability`` names the torch run reproduced (softmax's lane sums: 16 on AVX-512, 8
on AVX2), as in :class:`npfrcnn.config.FPNConfig`.

``num_classes`` counts object classes, as Detectron2's ``ROI_HEADS.NUM_CLASSES`` does; the
classifier has ``num_classes + 1`` logits with the background **last**, and a label is the
logit's index, so npfrcnn's label and Detectron2's ``pred_classes`` are the same number.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

from npfrcnn.config._base import ConfigBase

__all__ = ["Detectron2Config", "VARIANTS"]

#: ``"c4"`` (``Res5ROIHeads`` on ``res4``) or ``"fpn"`` (``StandardROIHeads`` on ``p2..p5``).
VARIANTS = ("c4", "fpn")

_POSITIVE_INTS = (
    "num_classes", "min_size_test", "max_size_test", "stem_out_channels", "res2_out_channels",
    "width_per_group", "fpn_channels",
    "rpn_pre_nms_topk_test", "rpn_post_nms_topk_test", "pooler_resolution", "canonical_box_size",
    "num_fc", "fc_dim",
)


@dataclass(frozen=True)
class Detectron2Config(ConfigBase):
    """Every test-time setting of a Detectron2 Faster R-CNN. Immutable; JSON round-trips.

    See the module docstring for what each group of fields means.
    """

    ARCHITECTURE: ClassVar[str] = "detectron2"

    name: str = "detectron2-r50-fpn"
    architecture: str = "detectron2"
    variant: str = "fpn"
    num_classes: int = 80

    # Input (DefaultPredictor + GeneralizedRCNN.preprocess_image).
    min_size_test: int = 800
    max_size_test: int = 1333
    pixel_mean: tuple[float, float, float] = (103.530, 116.280, 123.675)
    pixel_std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    torch_cpu_capability: str = "avx512"

    # ResNet.
    units_per_block: tuple[int, int, int, int] = (3, 4, 6, 3)
    stem_out_channels: int = 64
    res2_out_channels: int = 256
    width_per_group: int = 64
    stride_in_1x1: bool = True
    bn_eps: float = 1e-5

    # FPN.
    fpn_channels: int = 256

    # Anchors.
    anchor_sizes: tuple[tuple[float, ...], ...] = ((32,), (64,), (128,), (256,), (512,))
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    anchor_offset: float = 0.0

    # RPN.
    rpn_pre_nms_topk_test: int = 1000
    rpn_post_nms_topk_test: int = 1000
    rpn_nms_thresh: float = 0.7
    rpn_min_size: float = 0.0
    rpn_bbox_reg_weights: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)

    # Box pooler.
    pooler_resolution: int = 7
    pooler_sampling_ratio: int = 0
    canonical_box_size: int = 224
    canonical_level: int = 4

    # Box head (FPN).
    num_fc: int = 2
    fc_dim: int = 1024

    # Outputs.
    bbox_reg_weights: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0)
    score_thresh_test: float = 0.05
    nms_thresh_test: float = 0.5
    detections_per_image: int = 100

    def __post_init__(self) -> None:
        for fname in (
            "pixel_mean", "pixel_std", "units_per_block", "aspect_ratios",
            "rpn_bbox_reg_weights", "bbox_reg_weights",
        ):
            v = getattr(self, fname)
            if isinstance(v, list | tuple):
                object.__setattr__(self, fname, tuple(v))
        if isinstance(self.anchor_sizes, list | tuple):
            object.__setattr__(
                self, "anchor_sizes",
                tuple(tuple(s) if isinstance(s, list | tuple) else s for s in self.anchor_sizes),
            )
        problems = self._problems()
        if problems:
            raise ValueError("invalid Detectron2Config: " + "; ".join(problems))

    def _problems(self) -> list[str]:  # noqa: C901 - one check per field
        problems: list[str] = []
        if self.architecture != self.ARCHITECTURE:
            problems.append(
                f"architecture must be {self.ARCHITECTURE!r}, got {self.architecture!r}"
            )
        if self.variant not in VARIANTS:
            problems.append(f"variant must be one of {VARIANTS}, got {self.variant!r}")
        if self.torch_cpu_capability not in ("avx512", "avx2"):
            problems.append(
                "torch_cpu_capability must be 'avx512' or 'avx2', got "
                f"{self.torch_cpu_capability!r}"
            )
        for fname in _POSITIVE_INTS:
            v = getattr(self, fname)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                problems.append(f"{fname} must be a positive int, got {v!r}")
        for fname in ("pooler_sampling_ratio", "canonical_level"):
            v = getattr(self, fname)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                problems.append(f"{fname} must be an int >= 0, got {v!r}")
        if not isinstance(self.stride_in_1x1, bool):
            problems.append(f"stride_in_1x1 must be true or false, got {self.stride_in_1x1!r}")
        units = self.units_per_block
        if len(units) != 4 or any(
            isinstance(u, bool) or not isinstance(u, int) or u < 1 for u in units
        ):
            problems.append(f"units_per_block must be 4 positive ints, got {units!r}")
        for fname in ("rpn_nms_thresh", "nms_thresh_test", "score_thresh_test"):
            v = getattr(self, fname)
            if not isinstance(v, int | float) or not 0.0 <= float(v) <= 1.0:
                problems.append(f"{fname} must be in [0, 1], got {v!r}")
        for fname in ("bn_eps", "rpn_min_size", "anchor_offset"):
            v = getattr(self, fname)
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) \
                    or v < 0:
                problems.append(f"{fname} must be a finite number >= 0, got {v!r}")
        if isinstance(self.detections_per_image, bool) or not isinstance(
            self.detections_per_image, int
        ) or self.detections_per_image < 0:
            problems.append(
                f"detections_per_image must be an int >= 0, got {self.detections_per_image!r}"
            )
        for fname in ("pixel_mean", "pixel_std"):
            v = getattr(self, fname)
            if len(v) != 3 or not all(
                isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)
                for x in v
            ):
                problems.append(f"{fname} must be 3 finite numbers, got {v!r}")
        if len(self.pixel_std) == 3 and any(s == 0 for s in self.pixel_std):
            problems.append(f"pixel_std must not contain 0, got {self.pixel_std!r}")
        levels = 1 if self.variant == "c4" else 5
        sizes = self.anchor_sizes
        if (
            len(sizes) != levels
            or not all(isinstance(s, tuple) and s for s in sizes)
            or not all(
                isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)
                and x > 0 for s in sizes if isinstance(s, tuple) for x in s
            )
        ):
            problems.append(
                f"anchor_sizes must be {levels} list(s) of positive sizes (one per "
                f"{'feature map' if levels == 1 else 'level p2..p6'}), got {sizes!r}"
            )
        if not self.aspect_ratios or not all(
            isinstance(r, int | float) and math.isfinite(r) and r > 0 for r in self.aspect_ratios
        ):
            problems.append(f"aspect_ratios must be positive numbers, got {self.aspect_ratios!r}")
        for fname in ("rpn_bbox_reg_weights", "bbox_reg_weights"):
            v = getattr(self, fname)
            if len(v) != 4 or not all(
                isinstance(w, int | float) and math.isfinite(w) and w > 0 for w in v
            ):
                problems.append(f"{fname} must be 4 positive numbers, got {v!r}")
        if (
            isinstance(self.min_size_test, int) and isinstance(self.max_size_test, int)
            and self.min_size_test > self.max_size_test
        ):
            problems.append(
                f"min_size_test ({self.min_size_test}) must not exceed max_size_test "
                f"({self.max_size_test})"
            )
        return problems

    # Derived values -----------------------------------------------------------------------

    @property
    def depth(self) -> int:
        """ResNet depth, ``3 * sum(units_per_block) + 2`` (50 for ``(3, 4, 6, 3)``)."""
        return 3 * sum(self.units_per_block) + 2

    @property
    def is_fpn(self) -> bool:
        return self.variant == "fpn"

    @property
    def size_divisibility(self) -> int:
        """The backbone's ``size_divisibility``: FPN 32 (res5's stride), C4 0 (no padding)."""
        return 32 if self.variant == "fpn" else 0

    @property
    def stage_channels(self) -> tuple[int, int, int, int]:
        """Output channels of res2..res5: ``res2_out_channels * 2**i`` (256 .. 2048)."""
        c = self.res2_out_channels
        return (c, 2 * c, 4 * c, 8 * c)

    @property
    def bottleneck_widths(self) -> tuple[int, int, int, int]:
        """Width of res2..res5's 3x3 convs: ``width_per_group * 2**i`` (64 .. 512)."""
        w = self.width_per_group
        return (w, 2 * w, 4 * w, 8 * w)

    @property
    def num_anchors(self) -> int:
        """Anchors per cell and level: ``len(sizes of a level) * len(aspect_ratios)``."""
        return len(self.anchor_sizes[0]) * len(self.aspect_ratios)

    @property
    def simd_lanes(self) -> int:
        """float32 lanes of torch's vectorised CPU kernels: 16 on AVX-512, 8 on AVX2."""
        return 16 if self.torch_cpu_capability == "avx512" else 8

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out["anchor_sizes"] = [list(s) for s in self.anchor_sizes]
        return out
