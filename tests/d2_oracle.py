"""A pure-torch oracle of Detectron2's Faster R-CNN at inference (no Detectron2, no npfrcnn).

Detectron2 is not on PyPI, so CI checks npfrcnn's Detectron2 profiles against this module: a
re-implementation, written from Detectron2's rules (v0.6 source), of ``DefaultPredictor`` +
``GeneralizedRCNN.inference`` for three model-zoo models:

* ``D2Oracle("c4", units=(3, 4, 23, 3))``: ``COCO-Detection/faster_rcnn_R_101_C4_3x``
  (``Res5ROIHeads``: the backbone is stem + res2..res4, res5 runs per RoI in ``roi_heads``);
* ``D2Oracle("fpn", units=(3, 4, 6, 3))`` / ``units=(3, 4, 23, 3)``:
  ``faster_rcnn_R_50_FPN_3x`` / ``faster_rcnn_R_101_FPN_3x`` (``StandardROIHeads``, 2-fc head).

It shares no code with npfrcnn and only uses torch, torchvision (``roi_align``,
``batched_nms``), NumPy and Pillow. The module tree mirrors Detectron2's, so ``state_dict()``
has exactly Detectron2's keys, in Detectron2's order (and ``FrozenBatchNorm2d``'s version 3 in
the state dict's ``_metadata``); ``tests/test_d2_oracle.py`` counts them against Detectron2's
structure.

Every stage is its own method, taking torch tensors (NumPy arrays are accepted too), so a test
can feed any stage the other system's input:

``preprocess`` -> ``backbone`` -> ``rpn_head`` / ``anchors`` -> ``proposals`` -> ``pool`` ->
``box_head`` -> ``predictor`` -> ``postprocess``; ``forward`` runs them all (under
``torch.no_grad()``) and returns every intermediate as NumPy.

Detectron2 facts reproduced (file names are Detectron2's):

* ``DefaultPredictor``: ``ResizeShortestEdge([800, 800], 1333)`` (``get_output_shape``: Python
  float arithmetic, ``int(x + 0.5)``), Pillow ``BILINEAR`` on the uint8 BGR array as if it were
  RGB, ``astype(float32)``, ``(x - mean) / std`` with float32 ``pixel_mean``/``pixel_std``
  tensors, zero padding bottom/right to ``size_divisibility`` (FPN 32, C4 none) after the
  normalisation (``ImageList.from_tensors``).
* ResNet (``resnet.py``): MSRA style, stride in the first 1x1 conv (``STRIDE_IN_1X1``), the
  shortcut conv only where channels change, ``FrozenBatchNorm2d`` (eps 1e-5, run as
  ``F.batch_norm(training=False)``), stem 7x7/2 pad 3 + norm + ReLU + ``max_pool2d(3, 2, 1)``.
* FPN (``fpn.py``): lateral 1x1 and output 3x3 convs with bias, top-down nearest
  ``interpolate(scale_factor=2.0)`` of the *pre-output-conv* sum, ``lateral + top_down``;
  P6 = ``max_pool2d(P5, kernel_size=1, stride=2)``.
* RPN (``rpn.py``): 3x3 conv + ReLU, 1x1 objectness (A) and deltas (4A) convs; flattened to
  ``(y, x, a)`` order, deltas channel ``a * 4 + k``; all anchors decoded (``Box2BoxTransform``
  weights (1, 1, 1, 1), clamp ``log(1000 / 16)``), then per level ``topk`` of the logits
  (``k = min(n, pre_nms_topk)``), levels concatenated, ``isfinite`` filter, clip to the
  (unpadded) image size, ``nonempty(threshold=min_size)`` (strict ``>``),
  ``torchvision.ops.batched_nms`` on the *logits* with the level as the group id, first
  ``post_nms_topk`` kept (``proposal_utils.find_top_rpn_proposals``).
* Anchors (``anchor_generator.py``): cell anchors in Python float64, size-major then ratio,
  ``w = sqrt(size**2 / ratio)``, ``h = ratio * w``, corners ``(-w/2, -h/2, w/2, h/2)``, made a
  float32 tensor; shifts ``arange(offset * stride, W * stride, stride, dtype=float32)``; anchor
  ``(y, x, a)`` = shift + cell anchor in float32. OFFSET is 0.0 in these configs.
* ROIPooler (``poolers.py``): ROIAlignV2 = ``torchvision.ops.roi_align(aligned=True,
  sampling_ratio=0)``; C4 one level at 1/16 with 14x14 output; FPN 7x7 on P2..P5, level
  ``floor(4 + log2(sqrt(area) / 224 + 1e-8))`` clamped to [2, 5] in float32, pooled level by
  level into a zero tensor (``index_put_``).
* Box head: C4 ``res5`` (3 bottlenecks, the first with stride 2 and a shortcut) then
  ``mean(dim=[2, 3])``; FPN flatten, fc1 + ReLU, fc2 + ReLU (1024).
* ``FastRCNNOutputLayers``: ``cls_score`` K+1 logits with background *last*, ``bbox_pred``
  class-specific 4K deltas (no background); softmax; ``Box2BoxTransform`` (10, 10, 5, 5).
* ``fast_rcnn_inference_single_image``: ``isfinite`` filter, drop the background column, clip
  to the image size, ``scores > score_thresh``, candidates in proposal-major order
  (``nonzero``/boolean mask), ``batched_nms`` by class, first ``detections_per_image``.
* ``detector_postprocess``: ``scale_x = W / w`` (Python floats), ``boxes[:, 0::2] *= scale_x``
  in place on the float32 tensor, same for y, clip to the original size, drop empty boxes.

The weights: Detectron2's own init (MSRA fill, FrozenBN identity) gives a net whose outputs are
near-constant, so :meth:`D2Oracle.randomize_` fills every tensor with seeded random values
chosen so that activations keep their scale through 101 layers and the RPN and class scores
spread (see its docstring).

``save_model_zoo_pkl`` and ``save_model_final_pth`` write a state dict the way Detectron2's model
zoo ``.pkl`` files and ``DefaultTrainer``'s ``model_final.pth`` hold it.
"""

from __future__ import annotations

import math
import pickle
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image
from torch import nn

VARIANTS = ("c4", "fpn")

#: Test-time config values and their Detectron2 defaults (``config/defaults.py`` and the
#: ``Base-RCNN-C4`` / ``Base-RCNN-FPN`` configs). ``None`` means "depends on the variant".
DEFAULT_KNOBS: dict[str, Any] = {
    "min_size_test": 800,  # INPUT.MIN_SIZE_TEST
    "max_size_test": 1333,  # INPUT.MAX_SIZE_TEST
    "pixel_mean": (103.530, 116.280, 123.675),  # MODEL.PIXEL_MEAN (BGR)
    "pixel_std": (1.0, 1.0, 1.0),  # MODEL.PIXEL_STD
    "size_divisibility": None,  # FPN: 32 (the stride of res5); C4: 0 (Backbone default)
    "rpn_pre_nms_topk_test": None,  # RPN.PRE_NMS_TOPK_TEST: C4 6000, FPN 1000 (per level)
    "rpn_post_nms_topk_test": 1000,  # RPN.POST_NMS_TOPK_TEST
    "rpn_nms_thresh": 0.7,  # RPN.NMS_THRESH
    "rpn_min_size": 0.0,  # PROPOSAL_GENERATOR.MIN_SIZE
    "score_thresh_test": 0.05,  # ROI_HEADS.SCORE_THRESH_TEST
    "nms_thresh_test": 0.5,  # ROI_HEADS.NMS_THRESH_TEST
    "detections_per_image": 100,  # TEST.DETECTIONS_PER_IMAGE
    "anchor_sizes": None,  # C4 ((32, 64, 128, 256, 512),); FPN ((32,), (64,), ..., (512,))
    "aspect_ratios": ((0.5, 1.0, 2.0),),  # ANCHOR_GENERATOR.ASPECT_RATIOS
    "anchor_offset": 0.0,  # ANCHOR_GENERATOR.OFFSET
    "rpn_bbox_reg_weights": (1.0, 1.0, 1.0, 1.0),  # RPN.BBOX_REG_WEIGHTS
    "bbox_reg_weights": (10.0, 10.0, 5.0, 5.0),  # ROI_BOX_HEAD.BBOX_REG_WEIGHTS
    "scale_clamp": math.log(1000.0 / 16),  # box_regression._DEFAULT_SCALE_CLAMP
    "pooler_resolution": None,  # ROI_BOX_HEAD.POOLER_RESOLUTION: C4 14, FPN 7
    "sampling_ratio": 0,  # ROI_BOX_HEAD.POOLER_SAMPLING_RATIO (ROIAlignV2)
    "canonical_box_size": 224,  # ROIPooler default
    "canonical_level": 4,  # ROIPooler default
    # widths (RESNETS.STEM_OUT_CHANNELS, RES2_OUT_CHANNELS, WIDTH_PER_GROUP, FPN.OUT_CHANNELS,
    # ROI_BOX_HEAD.FC_DIM): the model-zoo values; smaller ones make fast tests
    "stem_channels": 64,
    "res2_channels": 256,
    "width_per_group": 64,
    "fpn_channels": 256,
    "fc_dim": 1024,
}

_VARIANT_KNOBS = {
    "c4": {
        "size_divisibility": 0,
        "rpn_pre_nms_topk_test": 6000,
        "anchor_sizes": ((32, 64, 128, 256, 512),),
        "pooler_resolution": 14,
    },
    "fpn": {
        "size_divisibility": 32,
        "rpn_pre_nms_topk_test": 1000,
        "anchor_sizes": ((32,), (64,), (128,), (256,), (512,)),
        "pooler_resolution": 7,
    },
}


def _t(x: Any) -> torch.Tensor:
    """A float32/int tensor from a tensor or NumPy array (tensors pass through)."""
    if isinstance(x, torch.Tensor):
        return x
    return torch.from_numpy(np.ascontiguousarray(x))


def to_numpy(obj: Any) -> Any:
    """Tensors (also inside dicts, lists and tuples) to NumPy arrays."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().numpy()
    if isinstance(obj, Mapping):
        return {k: to_numpy(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(to_numpy(v) for v in obj)
    return obj


# ---------------------------------------------------------------------------------------------
# stand-alone rules


def get_output_shape(oldh: int, oldw: int, short_edge_length: int, max_size: int) -> tuple:
    """``ResizeShortestEdge.get_output_shape``: (new_h, new_w), Python float arithmetic."""
    short = short_edge_length * 1.0
    scale = short / min(oldh, oldw)
    if oldh < oldw:
        newh, neww = short, scale * oldw
    else:
        newh, neww = scale * oldh, short
    longest = max(newh, neww)
    if longest > max_size:
        scale = max_size * 1.0 / longest
        newh = newh * scale
        neww = neww * scale
    return int(newh + 0.5), int(neww + 0.5)


def cell_anchors(sizes: Sequence[float], ratios: Sequence[float]) -> torch.Tensor:
    """``DefaultAnchorGenerator.generate_cell_anchors``: [len(sizes) * len(ratios), 4] float32,
    size-major; computed in Python float64, then one rounding to float32."""
    rows = []
    for size in sizes:
        area = size**2.0
        for ratio in ratios:
            w = math.sqrt(area / ratio)
            h = ratio * w
            rows.append([-w / 2.0, -h / 2.0, w / 2.0, h / 2.0])
    return torch.tensor(rows, dtype=torch.float32)


def grid_anchors(base: torch.Tensor, height: int, width: int, stride: int, offset: float):
    """All anchors of an HxW map, [H * W * A, 4] float32 in (y, x, a) order."""
    xs = torch.arange(offset * stride, width * stride, step=stride, dtype=torch.float32)
    ys = torch.arange(offset * stride, height * stride, step=stride, dtype=torch.float32)
    sy, sx = torch.meshgrid(ys, xs, indexing="ij")
    sx, sy = sx.reshape(-1), sy.reshape(-1)
    shifts = torch.stack((sx, sy, sx, sy), dim=1)
    return (shifts.view(-1, 1, 4) + base.view(1, -1, 4)).reshape(-1, 4)


def apply_deltas(
    deltas: torch.Tensor, boxes: torch.Tensor, weights: Sequence[float], scale_clamp: float
) -> torch.Tensor:
    """``Box2BoxTransform.apply_deltas``: deltas [N, 4k] on boxes [N, 4] -> [N, 4k], float32,
    in Detectron2's op order (divide by the weights, clamp dw/dh above, centre + d * size,
    ``exp(d) * size``, corners ``centre -/+ 0.5 * size``)."""
    deltas = deltas.float()
    boxes = boxes.to(deltas.dtype)
    widths = boxes[:, 2] - boxes[:, 0]
    heights = boxes[:, 3] - boxes[:, 1]
    cx = boxes[:, 0] + 0.5 * widths
    cy = boxes[:, 1] + 0.5 * heights
    wx, wy, ww, wh = (float(w) for w in weights)
    dx = deltas[:, 0::4] / wx
    dy = deltas[:, 1::4] / wy
    dw = torch.clamp(deltas[:, 2::4] / ww, max=scale_clamp)
    dh = torch.clamp(deltas[:, 3::4] / wh, max=scale_clamp)
    pcx = dx * widths[:, None] + cx[:, None]
    pcy = dy * heights[:, None] + cy[:, None]
    pw = torch.exp(dw) * widths[:, None]
    ph = torch.exp(dh) * heights[:, None]
    out = torch.stack((pcx - 0.5 * pw, pcy - 0.5 * ph, pcx + 0.5 * pw, pcy + 0.5 * ph), dim=-1)
    return out.reshape(deltas.shape)


def clip_boxes(boxes: torch.Tensor, size: tuple) -> torch.Tensor:
    """``Boxes.clip``: x to [0, w], y to [0, h] (size = (h, w))."""
    h, w = size
    return torch.stack(
        (
            boxes[:, 0].clamp(min=0, max=w),
            boxes[:, 1].clamp(min=0, max=h),
            boxes[:, 2].clamp(min=0, max=w),
            boxes[:, 3].clamp(min=0, max=h),
        ),
        dim=-1,
    )


def nonempty(boxes: torch.Tensor, threshold: float = 0.0) -> torch.Tensor:
    """``Boxes.nonempty``: both sides strictly larger than ``threshold``."""
    return ((boxes[:, 2] - boxes[:, 0]) > threshold) & ((boxes[:, 3] - boxes[:, 1]) > threshold)


def assign_levels(
    boxes: torch.Tensor, min_level: int, max_level: int, canonical_size: int, canonical_level: int
) -> torch.Tensor:
    """``poolers.assign_boxes_to_levels``, returned as the pyramid level (not the offset)."""
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    lvl = torch.floor(canonical_level + torch.log2(torch.sqrt(area) / canonical_size + 1e-8))
    return torch.clamp(lvl, min=min_level, max=max_level).to(torch.int64)


# ---------------------------------------------------------------------------------------------
# modules (named as Detectron2 names them, so the state dict keys are Detectron2's)


class FrozenBN(nn.Module):
    """``FrozenBatchNorm2d``: four buffers (no parameters), ``F.batch_norm(training=False)``."""

    _version = 3  # Detectron2's FrozenBatchNorm2d._version (shows in state_dict()._metadata)

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(channels))
        self.register_buffer("bias", torch.zeros(channels))
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels) - eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(
            x,
            self.running_mean,
            self.running_var,
            self.weight,
            self.bias,
            training=False,
            eps=self.eps,
        )


class Conv(nn.Conv2d):
    """Detectron2's ``layers.Conv2d``: conv, then the optional ``norm``, then ``activation``."""

    def __init__(self, cin, cout, k, stride=1, padding=0, bias=True, norm=False, act=False):
        super().__init__(cin, cout, k, stride=stride, padding=padding, bias=bias)
        self.norm = FrozenBN(cout) if norm else None
        self.activation = nn.ReLU() if act else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.conv2d(x, self.weight, self.bias, self.stride, self.padding)
        if self.norm is not None:
            x = self.norm(x)
        if self.activation is not None:
            x = self.activation(x)
        return x


class Bottleneck(nn.Module):
    """``BottleneckBlock`` with ``stride_in_1x1=True`` (the stride is in conv1)."""

    def __init__(self, cin: int, cout: int, mid: int, stride: int):
        super().__init__()
        # registered first, as in Detectron2 (so shortcut.* leads the block's keys)
        self.shortcut = Conv(cin, cout, 1, stride, bias=False, norm=True) if cin != cout else None
        self.conv1 = Conv(cin, mid, 1, stride, bias=False, norm=True)
        self.conv2 = Conv(mid, mid, 3, 1, padding=1, bias=False, norm=True)
        self.conv3 = Conv(mid, cout, 1, 1, bias=False, norm=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu_(self.conv1(x))
        y = F.relu_(self.conv2(y))
        y = self.conv3(y)
        y += self.shortcut(x) if self.shortcut is not None else x
        return F.relu_(y)


class Stem(nn.Module):
    """``BasicStem``: 7x7/2 conv (no bias) + FrozenBN + ReLU + 3x3/2 max pool, padding 1."""

    def __init__(self, cout: int):
        super().__init__()
        self.conv1 = Conv(3, cout, 7, 2, padding=3, bias=False, norm=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(F.relu_(self.conv1(x)), kernel_size=3, stride=2, padding=1)


def make_stage(n: int, cin: int, cout: int, mid: int, first_stride: int) -> nn.Sequential:
    blocks = []
    for i in range(n):
        blocks.append(Bottleneck(cin if i == 0 else cout, cout, mid, first_stride if i == 0 else 1))
    return nn.Sequential(*blocks)


class ResNet(nn.Module):
    """The ResNet body: ``stem``, ``res2``..``res<last>``; returns every stage's output."""

    def __init__(self, units: Sequence[int], stem_ch: int, res2_ch: int, mid: int):
        super().__init__()
        self.stem = Stem(stem_ch)
        self.stage_names = []
        cin, cout = stem_ch, res2_ch
        for i, n in enumerate(units):
            name = f"res{i + 2}"
            self.add_module(name, make_stage(n, cin, cout, mid, 1 if i == 0 else 2))
            self.stage_names.append(name)
            cin, cout, mid = cout, cout * 2, mid * 2
        self.out_channels = cin

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {}
        x = self.stem(x)
        for name in self.stage_names:
            x = getattr(self, name)(x)
            out[name] = x
        return out


class LastLevelMaxPool(nn.Module):
    """P6 = max_pool2d(P5, kernel_size=1, stride=2) (parameter-free; ``backbone.top_block``)."""

    def forward(self, p5: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(p5, kernel_size=1, stride=2, padding=0)


class FPN(nn.Module):
    """``FPN`` on res2..res5 with ``LastLevelMaxPool``: returns res2..res5 and p2..p6."""

    def __init__(self, bottom_up: ResNet, channels: int):
        super().__init__()
        cin = [bottom_up.out_channels // 8 * 2**i for i in range(4)]  # res2..res5 widths
        for lvl, c in zip(range(2, 6), cin, strict=True):
            self.add_module(f"fpn_lateral{lvl}", nn.Conv2d(c, channels, 1))
            self.add_module(f"fpn_output{lvl}", nn.Conv2d(channels, channels, 3, padding=1))
        self.top_block = LastLevelMaxPool()
        self.bottom_up = bottom_up

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = self.bottom_up(x)
        prev = self.fpn_lateral5(feats["res5"])
        outs = {"p5": self.fpn_output5(prev)}
        for lvl in (4, 3, 2):
            top_down = F.interpolate(prev, scale_factor=2.0, mode="nearest")
            prev = getattr(self, f"fpn_lateral{lvl}")(feats[f"res{lvl}"]) + top_down
            outs[f"p{lvl}"] = getattr(self, f"fpn_output{lvl}")(prev)
        outs["p6"] = self.top_block(outs["p5"])
        return {**feats, **{f"p{i}": outs[f"p{i}"] for i in range(2, 7)}}


class RPNHead(nn.Module):
    """``StandardRPNHead``: conv 3x3 + ReLU, objectness_logits (A), anchor_deltas (4A)."""

    def __init__(self, channels: int, num_anchors: int):
        super().__init__()
        self.conv = Conv(channels, channels, 3, 1, padding=1, bias=True, act=True)
        self.objectness_logits = nn.Conv2d(channels, num_anchors, 1)
        self.anchor_deltas = nn.Conv2d(channels, num_anchors * 4, 1)


class _BufferList(nn.Module):
    def __init__(self, buffers: Sequence[torch.Tensor]):
        super().__init__()
        for i, b in enumerate(buffers):
            self.register_buffer(str(i), b, persistent=False)


def _probe_image(g: torch.Generator, h: int = 96, w: int = 128, contrast: float = 25.0):
    """A smooth seeded random image, pixel - mean scale (sum of upsampled noise fields)."""
    img = torch.zeros((1, 3, h, w))
    for cells in (2, 4, 8, 16, 64):
        noise = torch.randn((1, 3, cells, cells * w // h), generator=g)
        img += F.interpolate(noise, size=(h, w), mode="bilinear", align_corners=False)
    return img * contrast


def _broadcast(params, n: int) -> list:
    """``anchor_generator._broadcast_params``: a flat list or a one-element list of lists is
    used for every level."""
    if not isinstance(params[0], Sequence):
        return [list(params)] * n
    if len(params) == 1:
        return [list(params[0])] * n
    return [list(p) for p in params]


class AnchorGenerator(nn.Module):
    """``DefaultAnchorGenerator`` (its cell anchors are non-persistent buffers)."""

    def __init__(self, sizes, ratios, strides, offset):
        super().__init__()
        sizes, ratios = _broadcast(sizes, len(strides)), _broadcast(ratios, len(strides))
        assert len(sizes) == len(ratios) == len(strides), (sizes, ratios, strides)
        self.strides = list(strides)
        self.offset = float(offset)
        self.cell_anchors = _BufferList(
            [cell_anchors(s, r) for s, r in zip(sizes, ratios, strict=True)]
        )

    def bases(self) -> list[torch.Tensor]:
        return [b for _, b in self.cell_anchors.named_buffers()]


class ProposalGenerator(nn.Module):
    def __init__(self, head: RPNHead, anchor_generator: AnchorGenerator):
        super().__init__()
        self.rpn_head = head
        self.anchor_generator = anchor_generator


class _ROIAlign(nn.Module):
    """Parameter-free placeholder for ``ROIPooler.level_poolers[i]`` (module-tree fidelity)."""

    def __init__(self, scale: float):
        super().__init__()
        self.spatial_scale = scale


class ROIPooler(nn.Module):
    def __init__(self, scales: Sequence[float]):
        super().__init__()
        self.level_poolers = nn.ModuleList(_ROIAlign(s) for s in scales)


class BoxPredictor(nn.Module):
    """``FastRCNNOutputLayers``: cls_score (K + 1, background last), bbox_pred (4K)."""

    def __init__(self, dim: int, num_classes: int):
        super().__init__()
        self.cls_score = nn.Linear(dim, num_classes + 1)
        self.bbox_pred = nn.Linear(dim, num_classes * 4)


class Res5ROIHeads(nn.Module):
    def __init__(self, scales, res5: nn.Sequential, predictor: BoxPredictor):
        super().__init__()
        self.pooler = ROIPooler(scales)
        self.res5 = res5
        self.box_predictor = predictor


class StandardROIHeads(nn.Module):
    def __init__(self, scales, box_head: nn.Sequential, predictor: BoxPredictor):
        super().__init__()
        self.box_pooler = ROIPooler(scales)
        self.box_head = box_head
        self.box_predictor = predictor


# ---------------------------------------------------------------------------------------------
# the model


class D2Oracle(nn.Module):
    """Detectron2's ``GeneralizedRCNN`` (Faster R-CNN, C4 or FPN) at inference, stage by stage.

    ``units``: bottleneck blocks of res2..res5 ((3, 4, 6, 3) R50, (3, 4, 23, 3) R101; for C4
    ``units[3]`` is the depth of ``roi_heads.res5``, 3 in Detectron2). ``knobs``: see
    :data:`DEFAULT_KNOBS` (unknown names raise ``TypeError``).
    """

    def __init__(
        self, variant: str, units: Sequence[int] = (3, 4, 6, 3), num_classes: int = 80, **knobs
    ):
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, not {variant!r}")
        unknown = set(knobs) - set(DEFAULT_KNOBS)
        if unknown:
            raise TypeError(f"unknown knobs: {sorted(unknown)}")
        if len(units) != 4 or min(units) < 1:
            raise ValueError(f"units must be 4 positive block counts, not {units!r}")
        cfg = dict(DEFAULT_KNOBS)
        cfg.update(_VARIANT_KNOBS[variant])
        cfg.update(knobs)
        self.variant = variant
        self.units = tuple(int(u) for u in units)
        self.num_classes = int(num_classes)
        self.cfg = cfg

        mid = cfg["width_per_group"]  # NUM_GROUPS 1: bottleneck width of res2
        res2 = cfg["res2_channels"]
        nlev = 1 if variant == "c4" else 5
        nanchors = len(_broadcast(cfg["anchor_sizes"], nlev)[0]) * len(
            _broadcast(cfg["aspect_ratios"], nlev)[0]
        )
        # the backbone module is registered as "backbone" (state-dict prefix) but reached through
        # _modules (add_module refuses a name the class already has: the backbone() method)
        if variant == "c4":
            self._modules["backbone"] = ResNet(self.units[:3], cfg["stem_channels"], res2, mid)
            self.rpn_in_features = ["res4"]
            strides = [16]
            rpn_ch = res2 * 4
            res5 = make_stage(self.units[3], res2 * 4, res2 * 8, mid * 8, 2)
            self.pool_scales = (1.0 / 16,)
            self.roi_in_features = ["res4"]
            heads: nn.Module = Res5ROIHeads(
                self.pool_scales, res5, BoxPredictor(res2 * 8, self.num_classes)
            )
        else:
            body = ResNet(self.units, cfg["stem_channels"], res2, mid)
            self._modules["backbone"] = FPN(body, cfg["fpn_channels"])
            self.rpn_in_features = ["p2", "p3", "p4", "p5", "p6"]
            strides = [4, 8, 16, 32, 64]
            rpn_ch = cfg["fpn_channels"]
            self.pool_scales = tuple(1.0 / s for s in (4, 8, 16, 32))
            self.roi_in_features = ["p2", "p3", "p4", "p5"]
            res = cfg["pooler_resolution"]
            fc = cfg["fc_dim"]
            box_head = nn.Sequential()
            box_head.add_module("flatten", nn.Flatten())
            box_head.add_module("fc1", nn.Linear(rpn_ch * res * res, fc))
            box_head.add_module("fc_relu1", nn.ReLU())
            box_head.add_module("fc2", nn.Linear(fc, fc))
            box_head.add_module("fc_relu2", nn.ReLU())
            heads = StandardROIHeads(self.pool_scales, box_head, BoxPredictor(fc, self.num_classes))
        self.strides = strides
        anchor_gen = AnchorGenerator(
            cfg["anchor_sizes"], cfg["aspect_ratios"], strides, cfg["anchor_offset"]
        )
        self.proposal_generator = ProposalGenerator(RPNHead(rpn_ch, nanchors), anchor_gen)
        self.roi_heads = heads
        self.register_buffer(
            "pixel_mean", torch.tensor(cfg["pixel_mean"]).view(-1, 1, 1), persistent=False
        )
        self.register_buffer(
            "pixel_std", torch.tensor(cfg["pixel_std"]).view(-1, 1, 1), persistent=False
        )
        self.eval()

    # ---- weights -----------------------------------------------------------------------------

    @torch.no_grad()
    def randomize_(self, seed: int = 0) -> D2Oracle:
        """Fill every weight and buffer with seeded random values (one ``torch.Generator``,
        modules in ``named_modules()`` order) so that the net is "sane": activations keep an
        O(1) scale through 101 layers, RPN logits spread by a few units, several classes of
        many proposals pass the 0.05 threshold, and boxes move by a fraction of their size.

        * backbone / res5 convs, fc1 / fc2, the RPN conv: He normal, ``std = sqrt(2 / fan_in)``
          (the stem conv also divided by 64: its input is ``pixel - mean``, tens of units);
          biases ``0.05 N(0, 1)``;
        * FPN lateral / output convs: ``std = sqrt(1 / fan_in)`` (no ReLU after them);
        * FrozenBN: ``running_mean ~ 0.1 N``, ``running_var ~ U(0.5, 2)``, ``bias ~ 0.1 N``,
          ``weight ~ U(0.5, 1.5)``, except the last norm of each residual branch
          (``conv3.norm``), ``U(0.1, 0.3)``: a block adds a small branch to the identity, so
          the residual stream grows by x2..3 over R101's res4 (measured) instead of
          exploding, and every conv sees inputs of a sane scale;
        * the four head layers (``objectness_logits``, ``anchor_deltas``, ``cls_score``,
          ``bbox_pred``) are calibrated on three seeded probe images (smooth noise, 96x128,
          contrasts 12 / 25 / 50; 32 random boxes each for the box head): W ~ N(0, 1), minus
          its projection on the span of the three probes' mean input features (so a change of
          image contrast or content, which mostly moves that mean, shifts the outputs little),
          scaled so the outputs' within-image std is ``spread``, and ``bias = -W @ mean +
          N(0, b)``: objectness spread 3 (b 0.5), anchor deltas 0.15 (b 0.02), class logits 3
          (b 0.5), box deltas 1.5 (b 0.05; divided by the (10, 10, 5, 5) weights when decoded).

        Measured (R101 C4 / FPN, 80 classes, 160-px synthetic and photo images): RPN logit std
        1.8..4, 11..34 classes among the detections, no saturated softmax; with one block per
        stage and 3 classes the spread is similar.
        """
        g = torch.Generator().manual_seed(int(seed))

        def normal(t: torch.Tensor, std: float) -> None:
            t.copy_(torch.randn(t.shape, generator=g) * std)

        def uniform(t: torch.Tensor, lo: float, hi: float) -> None:
            t.copy_(lo + (hi - lo) * torch.rand(t.shape, generator=g))

        def fan_in(w: torch.Tensor) -> int:
            return int(np.prod(w.shape[1:]))

        head_mods = {
            id(self.proposal_generator.rpn_head.objectness_logits),
            id(self.proposal_generator.rpn_head.anchor_deltas),
            id(self.roi_heads.box_predictor.cls_score),
            id(self.roi_heads.box_predictor.bbox_pred),
        }
        stem_conv = self._body().stem.conv1
        for name, mod in self.named_modules():
            if isinstance(mod, FrozenBN):
                c = mod.weight.shape[0]
                last = name.endswith("conv3.norm")
                uniform(mod.weight, *((0.1, 0.3) if last else (0.5, 1.5)))
                normal(mod.bias, 0.1)
                normal(mod.running_mean, 0.1)
                uniform(mod.running_var, 0.5, 2.0)
                assert mod.weight.shape == (c,)
            elif isinstance(mod, nn.Conv2d | nn.Linear) and id(mod) not in head_mods:
                fpn = name.startswith("backbone.fpn_")
                gain = 1.0 if fpn else 2.0
                std = math.sqrt(gain / fan_in(mod.weight))
                if mod is stem_conv:
                    std /= 64.0
                normal(mod.weight, std)
                if mod.bias is not None:
                    normal(mod.bias, 0.05)
        # The heads, calibrated on a probe image: weights ~ N(0, spread / sqrt(fan_in)) / sd,
        # bias = -W @ mu + N(0, b), with mu / sd the mean / centred RMS of the head's input
        # features (RPN: every position of every level; box predictor: 48 probe boxes), so the
        # outputs vary by +-spread from anchor to anchor and box to box.
        head = self.proposal_generator.rpn_head
        pred = self.roi_heads.box_predictor
        rpn_in, box_in = [], []
        for contrast in (12.0, 25.0, 50.0):  # three probe images
            probe = _probe_image(g, contrast=contrast)
            feats = self.backbone(probe)
            rpn_in.append(
                torch.cat(
                    [
                        head.conv(feats[f]).permute(0, 2, 3, 1).reshape(-1, head.conv.out_channels)
                        for f in self.rpn_in_features
                    ]
                )
            )
            ih, iw = probe.shape[-2:]
            n = 32
            sizes = torch.exp(torch.empty(n).uniform_(math.log(12.0), math.log(120.0), generator=g))
            aspect = torch.exp(torch.empty(n).uniform_(-0.7, 0.7, generator=g))
            bw, bh = sizes * aspect.sqrt(), sizes / aspect.sqrt()
            cx, cy = torch.rand(n, generator=g) * iw, torch.rand(n, generator=g) * ih
            boxes = clip_boxes(
                torch.stack((cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2), 1), (ih, iw)
            )
            box_in.append(self.box_head(self.pool(feats, boxes)[0]))
        for mod, xs, spread, b in (
            (head.objectness_logits, rpn_in, 3.0, 0.5),
            (head.anchor_deltas, rpn_in, 0.15, 0.02),
            (pred.cls_score, box_in, 3.0, 0.5),
            (pred.bbox_pred, box_in, 1.5, 0.05),
        ):
            # project out the span of the per-probe mean features (image-level shifts), then
            # scale so the outputs' within-image std is `spread`, and centre them
            mus = torch.stack([x.mean(dim=0) for x in xs])
            basis = torch.linalg.qr(mus.T).Q  # [in, 3], orthonormal
            w = torch.randn((len(mod.bias), mus.shape[1]), generator=g)
            w -= (w @ basis) @ basis.T
            z = torch.cat([(x - x.mean(dim=0)) @ w.T for x in xs])
            w *= spread / max(float(z.std(dim=0).mean()), 1e-12)
            mod.weight.copy_(w.reshape(mod.weight.shape))
            normal(mod.bias, b)
            mod.bias.sub_(w @ mus.mean(dim=0))
        return self

    def _body(self) -> ResNet:
        bb = self._modules["backbone"]
        return bb.bottom_up if self.variant == "fpn" else bb  # type: ignore[return-value]

    # ---- stages ------------------------------------------------------------------------------

    def preprocess(self, image_bgr_uint8_hwc: np.ndarray) -> dict[str, Any]:
        """``DefaultPredictor`` + ``GeneralizedRCNN.preprocess_image`` for one BGR uint8 image."""
        img = np.asarray(image_bgr_uint8_hwc)
        if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(f"expected an HxWx3 uint8 image, got {img.dtype} {img.shape}")
        h0, w0 = img.shape[:2]
        size = self.cfg["min_size_test"]
        if size == 0:
            resized = img
        else:
            nh, nw = get_output_shape(h0, w0, size, self.cfg["max_size_test"])
            pil = Image.fromarray(img).resize((nw, nh), Image.BILINEAR)
            resized = np.asarray(pil)
        x = torch.as_tensor(resized.astype("float32").transpose(2, 0, 1))
        x = (x - self.pixel_mean) / self.pixel_std
        h, w = int(x.shape[-2]), int(x.shape[-1])
        div = self.cfg["size_divisibility"]
        hp, wp = h, w
        if div > 1:
            hp, wp = (h + div - 1) // div * div, (w + div - 1) // div * div
        x = F.pad(x, [0, wp - w, 0, hp - h], value=0.0).unsqueeze_(0).contiguous()
        return {
            "resized_uint8": resized,
            "input": x,
            "image_size": (h, w),
            "original_size": (h0, w0),
        }

    def backbone(self, x) -> dict[str, torch.Tensor]:  # type: ignore[override]
        """C4: {"res4"}; FPN: {"res2".."res5", "p2".."p6"} (NCHW float32).

        (The ``backbone`` *module*, Detectron2's ``model.backbone``, is
        ``self._modules["backbone"]``; this method shadows the attribute.)"""
        return self._modules["backbone"](_t(x))

    def _levels(self, features, names: Sequence[str]) -> list[torch.Tensor]:
        if isinstance(features, Mapping):
            return [_t(features[n]) for n in names]
        feats = [_t(f) for f in features]
        if len(feats) != len(names):
            raise ValueError(f"expected {len(names)} feature maps ({names}), got {len(feats)}")
        return feats

    def rpn_head(self, features) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per RPN level: objectness logits [H*W*A] and deltas [H*W*A, 4], (y, x, a) order."""
        head = self.proposal_generator.rpn_head
        logits, deltas = [], []
        for f in self._levels(features, self.rpn_in_features):
            t = head.conv(f)
            lg = head.objectness_logits(t)
            dl = head.anchor_deltas(t)
            n, _, hh, ww = dl.shape
            logits.append(lg.permute(0, 2, 3, 1).flatten(1)[0])
            deltas.append(dl.view(n, -1, 4, hh, ww).permute(0, 3, 4, 1, 2).flatten(1, -2)[0])
        return logits, deltas

    def anchors(self, features) -> list[torch.Tensor]:
        """Per RPN level: [H*W*A, 4] float32 anchors (x1, y1, x2, y2)."""
        gen = self.proposal_generator.anchor_generator
        out = []
        for f, stride, base in zip(
            self._levels(features, self.rpn_in_features), gen.strides, gen.bases(), strict=True
        ):
            out.append(grid_anchors(base, int(f.shape[-2]), int(f.shape[-1]), stride, gen.offset))
        return out

    def proposals(self, logits, deltas, anchors, image_size) -> dict[str, Any]:
        """``RPN.predict_proposals`` + ``find_top_rpn_proposals`` for one image.

        Returns ``decoded`` (per level, every anchor decoded, [H*W*A, 4]), ``topk_idx`` (per
        level, indices into that level's anchors, in top-k order), ``topk_logits``,
        ``level_ids`` and ``candidates`` (the concatenated top-k boxes, unclipped),
        ``valid`` (the isfinite mask over the candidates), ``clipped`` (the valid candidates
        clipped), ``nonempty`` (mask over ``clipped``), ``nms_keep`` (indices into the
        nonempty candidates, after the ``post_nms_topk`` cut), ``candidate_index`` (each final
        proposal's index into ``candidates``), ``boxes`` [P, 4], ``logits`` [P], ``levels`` [P]
        (RPN level index).
        """
        cfg = self.cfg
        logits = [_t(v).reshape(-1) for v in logits]
        deltas = [_t(v).reshape(-1, 4) for v in deltas]
        anchors = [_t(v).reshape(-1, 4) for v in anchors]
        decoded = [
            apply_deltas(d, a, cfg["rpn_bbox_reg_weights"], cfg["scale_clamp"])
            for d, a in zip(deltas, anchors, strict=True)
        ]
        pre = int(cfg["rpn_pre_nms_topk_test"])
        topk_idx, topk_scores, topk_boxes, level_ids = [], [], [], []
        for lvl, (boxes_i, logits_i) in enumerate(zip(decoded, logits, strict=True)):
            k = min(int(logits_i.shape[0]), pre)
            scores_i, idx = logits_i[None].topk(k, dim=1)  # batch dim 1, as Detectron2
            topk_idx.append(idx[0])
            topk_scores.append(scores_i[0])
            topk_boxes.append(boxes_i[idx[0]])
            level_ids.append(torch.full((k,), lvl, dtype=torch.int64))
        scores = torch.cat(topk_scores)
        cands = torch.cat(topk_boxes)
        lvl = torch.cat(level_ids)
        index = torch.arange(len(scores))
        valid = torch.isfinite(cands).all(dim=1) & torch.isfinite(scores)
        boxes, sc, lv, index = cands[valid], scores[valid], lvl[valid], index[valid]
        h, w = image_size
        boxes = clip_boxes(boxes, (int(h), int(w)))
        clipped = boxes
        keep_ne = nonempty(boxes, float(cfg["rpn_min_size"]))
        boxes, sc, lv, index = boxes[keep_ne], sc[keep_ne], lv[keep_ne], index[keep_ne]
        keep = torchvision.ops.batched_nms(boxes.float(), sc, lv, float(cfg["rpn_nms_thresh"]))
        keep = keep[: int(cfg["rpn_post_nms_topk_test"])]
        return {
            "decoded": decoded,
            "topk_idx": topk_idx,
            "topk_logits": topk_scores,
            "level_ids": lvl,
            "candidates": cands,
            "valid": valid,
            "clipped": clipped,
            "nonempty": keep_ne,
            "nms_keep": keep,
            "candidate_index": index[keep],
            "boxes": boxes[keep],
            "logits": sc[keep],
            "levels": lv[keep],
        }

    def pool(self, features, boxes) -> tuple[torch.Tensor, torch.Tensor]:
        """ROIPooler (ROIAlignV2): ([P, C, S, S], pyramid level of each box (C4: all 4))."""
        feats = self._levels(features, self.roi_in_features)
        boxes = _t(boxes).reshape(-1, 4)
        res = int(self.cfg["pooler_resolution"])
        out_size = (res, res)
        sr = int(self.cfg["sampling_ratio"])
        rois = torch.cat([torch.zeros((len(boxes), 1), dtype=boxes.dtype), boxes], dim=1)
        if len(feats) == 1:
            x = feats[0]
            lvl = torch.full(
                (len(boxes),), round(-math.log2(self.pool_scales[0])), dtype=torch.int64
            )
            pooled = torchvision.ops.roi_align(
                x, rois.to(x.dtype), out_size, self.pool_scales[0], sr, True
            )
            return pooled, lvl
        lo = round(-math.log2(self.pool_scales[0]))
        hi = round(-math.log2(self.pool_scales[-1]))
        lvl = assign_levels(
            boxes, lo, hi, int(self.cfg["canonical_box_size"]), int(self.cfg["canonical_level"])
        )
        c = feats[0].shape[1]
        out = torch.zeros((len(boxes), c, res, res), dtype=feats[0].dtype)
        for i, (x, scale) in enumerate(zip(feats, self.pool_scales, strict=True)):
            inds = torch.nonzero(lvl - lo == i, as_tuple=True)[0]
            part = torchvision.ops.roi_align(x, rois[inds].to(x.dtype), out_size, scale, sr, True)
            out.index_put_((inds,), part)
        return out, lvl

    def box_head(self, pooled) -> torch.Tensor:
        """C4: res5 then the mean over H, W ([P, 2048]); FPN: flatten, fc1+ReLU, fc2+ReLU."""
        x = _t(pooled)
        if self.variant == "c4":
            return self.roi_heads.res5(x).mean(dim=[2, 3])
        return self.roi_heads.box_head(x)

    def predictor(self, x) -> tuple[torch.Tensor, torch.Tensor]:
        """(class logits [P, K + 1] with background last, class-specific deltas [P, 4K])."""
        x = _t(x)
        if x.dim() > 2:
            x = torch.flatten(x, start_dim=1)
        pred = self.roi_heads.box_predictor
        return pred.cls_score(x), pred.bbox_pred(x)

    def postprocess(self, boxes, cls_logits, deltas, image_size, original_size) -> dict[str, Any]:
        """``FastRCNNOutputLayers.inference`` (one image) + ``detector_postprocess``.

        Returns ``probs`` [P, K + 1], ``decoded`` [P, 4K], ``valid`` (isfinite mask over the
        proposals), ``cand_boxes`` / ``cand_scores`` / ``cand_classes`` / ``cand_proposal``
        (the candidates above the threshold, proposal-major, clipped, in the resized image),
        ``nms_keep_all`` (batched_nms output) and ``nms_keep`` (after the per-image cut),
        ``resized_boxes`` (the kept boxes in the resized image, before rescaling), and the final
        ``boxes`` / ``scores`` / ``classes`` / ``proposal_indices`` in the original image (empty
        boxes dropped). ``proposal_indices`` index the proposals (Detectron2 indexes the
        isfinite-filtered ones; with every proposal finite they coincide).
        """
        cfg = self.cfg
        proposals = _t(boxes).reshape(-1, 4)
        cls_logits = _t(cls_logits)
        deltas = _t(deltas)
        decoded = apply_deltas(deltas, proposals, cfg["bbox_reg_weights"], cfg["scale_clamp"])
        probs = F.softmax(cls_logits, dim=-1)
        # fast_rcnn_inference_single_image
        valid = torch.isfinite(decoded).all(dim=1) & torch.isfinite(probs).all(dim=1)
        index = torch.arange(len(proposals))
        b, s, index = decoded[valid], probs[valid], index[valid]
        s = s[:, :-1]
        k = b.shape[1] // 4
        h, w = image_size
        b = clip_boxes(b.reshape(-1, 4), (int(h), int(w))).view(-1, k, 4)
        mask = s > float(cfg["score_thresh_test"])
        inds = mask.nonzero()
        cand_boxes = b[inds[:, 0], 0] if k == 1 else b[mask]
        cand_scores = s[mask]
        keep_all = torchvision.ops.batched_nms(
            cand_boxes.float(), cand_scores, inds[:, 1], float(cfg["nms_thresh_test"])
        )
        topk = int(cfg["detections_per_image"])
        keep = keep_all[:topk] if topk >= 0 else keep_all
        det_boxes = cand_boxes[keep]
        det_scores = cand_scores[keep]
        det_classes = inds[keep, 1]
        det_props = index[inds[keep, 0]]
        # detector_postprocess
        oh, ow = original_size
        scale_x, scale_y = ow / int(w), oh / int(h)
        out = det_boxes.clone()
        out[:, 0::2] *= scale_x
        out[:, 1::2] *= scale_y
        out = clip_boxes(out, (oh, ow))
        ne = nonempty(out)
        return {
            "probs": probs,
            "decoded": decoded,
            "valid": valid,
            "cand_boxes": cand_boxes,
            "cand_scores": cand_scores,
            "cand_classes": inds[:, 1],
            "cand_proposal": index[inds[:, 0]],
            "nms_keep_all": keep_all,
            "nms_keep": keep,
            "resized_boxes": det_boxes,
            "boxes": out[ne],
            "scores": det_scores[ne],
            "classes": det_classes[ne],
            "proposal_indices": det_props[ne],
        }

    def forward(self, image_bgr_uint8: np.ndarray) -> dict[str, Any]:
        """Every stage on one BGR uint8 HxWx3 image; all tensors returned as NumPy arrays."""
        with torch.no_grad():
            pre = self.preprocess(image_bgr_uint8)
            feats = self.backbone(pre["input"])
            logits, deltas = self.rpn_head(feats)
            anchors = self.anchors(feats)
            props = self.proposals(logits, deltas, anchors, pre["image_size"])
            pooled, levels = self.pool(feats, props["boxes"])
            x = self.box_head(pooled)
            cls_logits, box_deltas = self.predictor(x)
            post = self.postprocess(
                props["boxes"], cls_logits, box_deltas, pre["image_size"], pre["original_size"]
            )
        return to_numpy(
            {
                "preprocess": pre,
                "features": feats,
                "rpn_logits": logits,
                "rpn_deltas": deltas,
                "anchors": anchors,
                "proposals": props,
                "pooled": pooled,
                "pool_levels": levels,
                "box_features": x,
                "cls_logits": cls_logits,
                "box_deltas": box_deltas,
                "postprocess": post,
            }
        )


# ---------------------------------------------------------------------------------------------
# files


class _LegacyNumpyPickler(pickle._Pickler):  # type: ignore[name-defined]
    """Writes NumPy 2's ``numpy._core.*`` globals under their NumPy 1 names (``numpy.core.*``),
    as pickles written before NumPy 2 (the published model-zoo files) name them."""

    def save_global(self, obj, name=None):
        module = getattr(obj, "__module__", None) or ""
        if module.startswith("numpy._core"):
            legacy = "numpy.core" + module[len("numpy._core") :]
            qual = name or obj.__qualname__
            if self.proto >= 4:
                self.save(legacy)
                self.save(qual)
                self.write(pickle.STACK_GLOBAL)
            else:
                self.write(pickle.GLOBAL + f"{legacy}\n{qual}\n".encode())
            self.memoize(obj)
            return
        super().save_global(obj, name)


def save_model_zoo_pkl(
    state_dict: Mapping[str, torch.Tensor],
    path,
    *,
    protocol: int = pickle.DEFAULT_PROTOCOL,
    numpy1_names: bool = False,
) -> None:
    """A Detectron2 model-zoo ``.pkl``: ``{"model": {key: float32 ndarray}, "__author__":
    "Detectron2 Model Zoo"}`` (what ``DetectionCheckpointer._load_file`` recognises by its
    "model" and "__author__" keys). ``numpy1_names`` names the arrays' reconstructors as
    NumPy 1 did (``numpy.core.multiarray._reconstruct``)."""
    data = {
        "model": {k: v.detach().cpu().numpy() for k, v in state_dict.items()},
        "__author__": "Detectron2 Model Zoo",
    }
    with open(path, "wb") as f:
        if numpy1_names:
            _LegacyNumpyPickler(f, protocol=protocol).dump(data)
        else:
            pickle.dump(data, f, protocol=protocol)


def trainable_parameters(model: nn.Module, freeze_at: int = 2) -> list[tuple[str, nn.Parameter]]:
    """The parameters Detectron2's ``build_optimizer`` hands to SGD: ``named_modules()`` order,
    de-duplicated, without those ``ResNet.freeze(freeze_at)`` froze (``BACKBONE.FREEZE_AT`` 2:
    the stem and res2)."""
    frozen = []
    if freeze_at >= 1:
        frozen.append("stem")
    frozen += [f"res{i}" for i in range(2, freeze_at + 1)]
    body = "backbone.bottom_up." if getattr(model, "variant", "fpn") == "fpn" else "backbone."
    prefixes = tuple(body + f + "." for f in frozen)
    seen: set[int] = set()
    out = []
    for mname, mod in model.named_modules():
        for pname, p in mod.named_parameters(recurse=False):
            full = f"{mname}.{pname}" if mname else pname
            if id(p) in seen or full.startswith(prefixes):
                continue
            seen.add(id(p))
            out.append((full, p))
    return out


def save_model_final_pth(
    model: nn.Module,
    path,
    *,
    base_lr: float = 0.02,
    max_iter: int = 10,
    freeze_at: int = 2,
    layout: str = "trainer",
    seed: int = 0,
) -> dict[str, Any]:
    """What ``DefaultTrainer`` leaves in ``OUTPUT_DIR/model_final.pth``; returns the saved dict.

    fvcore's ``Checkpointer.save`` writes ``{"model": model.state_dict(), <name>:
    <checkpointable>.state_dict() for each checkpointable, **extra}`` with ``torch.save``;
    ``PeriodicCheckpointer`` saves ``model_final`` at ``iteration == max_iter - 1`` with the
    extra ``{"iteration": max_iter - 1}``. Detectron2 v0.6's ``DefaultTrainer`` registers one
    checkpointable, ``trainer=self``, whose ``state_dict()`` is ``TrainerBase``'s
    ``{"iteration", "hooks": {"LRScheduler": {"base_lrs", "last_epoch"}}}`` plus
    ``"_trainer": SimpleTrainer.state_dict() = {"iteration", "optimizer"}`` (the other default
    hooks have empty state). So ``layout="trainer"`` (v0.6) writes::

        {"model": ..., "trainer": {"iteration": 9, "hooks": {"LRScheduler": {"base_lrs":
         [0.02], "last_epoch": 10}}, "_trainer": {"iteration": 9, "optimizer": {...}}},
         "iteration": 9}

    ``layout="legacy"`` writes the older form with ``optimizer=`` and ``scheduler=``
    checkpointables at the top level: ``{"model", "optimizer", "scheduler", "iteration"}``
    (the scheduler entry reduced to ``base_lrs`` / ``last_epoch``).

    The optimizer is ``torch.optim.SGD`` as ``build_optimizer`` makes it (one parameter group,
    lr ``base_lr``, momentum 0.9, weight decay 1e-4, ``foreach=True``, plus the
    ``initial_lr`` the LR scheduler adds), over :func:`trainable_parameters` (copies: the model
    is not touched), after one step on seeded random gradients, so every momentum buffer
    exists. ``LRMultiplier`` starts at ``last_epoch`` 0 and steps once per iteration.
    """
    if layout not in ("trainer", "legacy"):
        raise ValueError(f"layout must be 'trainer' or 'legacy', not {layout!r}")
    g = torch.Generator().manual_seed(seed)
    params = [
        p.detach().clone().requires_grad_(True) for _, p in trainable_parameters(model, freeze_at)
    ]
    opt = torch.optim.SGD(
        [{"params": params, "lr": base_lr}],
        lr=base_lr,
        momentum=0.9,
        nesterov=False,
        weight_decay=1e-4,
        foreach=True,
    )
    for group in opt.param_groups:
        group.setdefault("initial_lr", group["lr"])
    for p in params:
        p.grad = torch.randn(p.shape, generator=g) * 1e-3
    opt.step()
    it = max_iter - 1
    sched = {"base_lrs": [base_lr], "last_epoch": max_iter}
    if layout == "trainer":
        data = {
            "model": model.state_dict(),
            "trainer": {
                "iteration": it,
                "hooks": {"LRScheduler": sched},
                "_trainer": {"iteration": it, "optimizer": opt.state_dict()},
            },
            "iteration": it,
        }
    else:
        data = {
            "model": model.state_dict(),
            "optimizer": opt.state_dict(),
            "scheduler": sched,
            "iteration": it,
        }
    torch.save(data, path)
    return data
