"""The name table of Detectron2's Faster R-CNN: state-dict key -> npfrcnn tensor.

Datasets in the HDF5 file keep Detectron2's state-dict keys (``backbone.bottom_up.res2.0.conv1.
weight``, ``proposal_generator.rpn_head.objectness_logits.weight``, ``roi_heads.res5.0.shortcut.
norm.running_var``, ...); only the layouts change, once, at conversion (:func:`to_npfrcnn`), as for
torchvision (:mod:`npfrcnn.weights.torchvision_names`):

=========================================  ==========================  ======================
Detectron2 tensor                          npfrcnn                     why
=========================================  ==========================  ======================
conv ``weight [O, I, kh, kw]`` (OIHW)      ``[kh, kw, I, O]`` (HWIO)    NHWC convolutions
``Linear.weight [out, in]``                ``[in, out]``                ``x @ kernel``
FPN ``roi_heads.box_head.fc1.weight``      rows permuted (C, H, W) ->   torch flattens
                                           (H, W, C), then ``[in,out]``  ``[P, 256, 7, 7]``
``FrozenBatchNorm2d`` ``weight, bias,      unchanged ``[C]``
running_mean, running_var``
=========================================  ==========================  ======================

Key layout (Detectron2's module paths): the ResNet is ``backbone.`` (C4) or
``backbone.bottom_up.`` (FPN) + ``stem.conv1``, ``res{2..5}.{i}.{conv1,conv2,conv3,shortcut}``
with ``.norm.*`` (``shortcut`` in the first block of each stage; C4 builds res5 in
``roi_heads.res5.{i}``); FPN ``backbone.fpn_lateral{2..5}``, ``backbone.fpn_output{2..5}`` (with
bias); ``proposal_generator.rpn_head.{conv,objectness_logits,anchor_deltas}``; FPN
``roi_heads.box_head.fc{1,2}``; ``roi_heads.box_predictor.{cls_score,bbox_pred}``.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from npfrcnn.config.detectron2 import Detectron2Config
from npfrcnn.weights.torchvision_names import convert_layouts, convert_shape

__all__ = [
    "NORM_KEYS", "BlockSpec", "expected_shapes", "first_linear", "resnet_prefix", "stage_blocks",
    "to_npfrcnn", "torch_shapes",
]

NORM_KEYS = ("weight", "bias", "running_mean", "running_var")


class BlockSpec:
    """One ``BottleneckBlock``: its key prefix, widths and stride (shortcut when in != out)."""

    __slots__ = ("prefix", "c_in", "width", "c_out", "stride")

    def __init__(self, prefix: str, c_in: int, width: int, c_out: int, stride: int):
        self.prefix, self.c_in, self.width, self.c_out, self.stride = (
            prefix, c_in, width, c_out, stride,
        )

    @property
    def shortcut(self) -> bool:
        return self.c_in != self.c_out


def resnet_prefix(config: Detectron2Config) -> str:
    """``backbone.`` (C4) or ``backbone.bottom_up.`` (FPN)."""
    return "backbone.bottom_up." if config.is_fpn else "backbone."


def stage_blocks(config: Detectron2Config) -> dict[str, list[BlockSpec]]:
    """``res2..res5``'s blocks as ``build_resnet_backbone`` makes them (C4: res5 in the head).

    The first block of each stage has the stride (res2: 1, others: 2) and, since its input
    width differs from its output, a 1x1 shortcut conv with the same stride.
    """
    out: dict[str, list[BlockSpec]] = {}
    c_in = config.stem_out_channels
    for i, (n, width, c_out) in enumerate(
        zip(config.units_per_block, config.bottleneck_widths, config.stage_channels, strict=True)
    ):
        name = f"res{i + 2}"
        base = "roi_heads.res5." if (name == "res5" and not config.is_fpn) else (
            resnet_prefix(config) + name + "."
        )
        blocks = []
        for b in range(n):
            blocks.append(BlockSpec(f"{base}{b}.", c_in, width, c_out, (1 if i == 0 else 2)
                                    if b == 0 else 1))
            c_in = c_out
        out[name] = blocks
    return out


def _conv_norm(out: dict[str, tuple[int, ...]], prefix: str, shape: tuple[int, ...]) -> None:
    out[prefix + "weight"] = shape
    for k in NORM_KEYS:
        out[f"{prefix}norm.{k}"] = (shape[0],)


def first_linear(config: Detectron2Config) -> str | None:
    """The key prefix of the first Linear after the pooler (FPN ``fc1``), or None (C4)."""
    return "roi_heads.box_head.fc1." if config.is_fpn else None


def torch_shapes(config: Detectron2Config) -> dict[str, tuple[int, ...]]:
    """Every tensor of the Detectron2 model, key -> shape as Detectron2 stores it, in order."""
    out: dict[str, tuple[int, ...]] = {}
    rp = resnet_prefix(config)
    _conv_norm(out, rp + "stem.conv1.", (config.stem_out_channels, 3, 7, 7))
    stages = stage_blocks(config)
    for name in ("res2", "res3", "res4", "res5"):
        if name == "res5" and not config.is_fpn:
            continue
        _blocks(out, stages[name])
    if config.is_fpn:
        f = config.fpn_channels
        for lvl, c in zip((2, 3, 4, 5), config.stage_channels, strict=True):
            out[f"backbone.fpn_lateral{lvl}.weight"] = (f, c, 1, 1)
            out[f"backbone.fpn_lateral{lvl}.bias"] = (f,)
            out[f"backbone.fpn_output{lvl}.weight"] = (f, f, 3, 3)
            out[f"backbone.fpn_output{lvl}.bias"] = (f,)
        c_rpn = f
    else:
        c_rpn = config.stage_channels[2]
    a = config.num_anchors
    p = "proposal_generator.rpn_head."
    out[p + "conv.weight"] = (c_rpn, c_rpn, 3, 3)
    out[p + "conv.bias"] = (c_rpn,)
    out[p + "objectness_logits.weight"] = (a, c_rpn, 1, 1)
    out[p + "objectness_logits.bias"] = (a,)
    out[p + "anchor_deltas.weight"] = (4 * a, c_rpn, 1, 1)
    out[p + "anchor_deltas.bias"] = (4 * a,)
    if config.is_fpn:
        s = config.pooler_resolution
        d_in = config.fpn_channels * s * s
        for k in range(1, config.num_fc + 1):
            out[f"roi_heads.box_head.fc{k}.weight"] = (config.fc_dim, d_in)
            out[f"roi_heads.box_head.fc{k}.bias"] = (config.fc_dim,)
            d_in = config.fc_dim
        d = config.fc_dim
    else:
        _blocks(out, stages["res5"])
        d = config.stage_channels[3]
    n = config.num_classes
    out["roi_heads.box_predictor.cls_score.weight"] = (n + 1, d)
    out["roi_heads.box_predictor.cls_score.bias"] = (n + 1,)
    out["roi_heads.box_predictor.bbox_pred.weight"] = (4 * n, d)
    out["roi_heads.box_predictor.bbox_pred.bias"] = (4 * n,)
    return out


def _blocks(out: dict[str, tuple[int, ...]], blocks: list[BlockSpec]) -> None:
    for blk in blocks:
        p = blk.prefix
        if blk.shortcut:
            _conv_norm(out, p + "shortcut.", (blk.c_out, blk.c_in, 1, 1))
        _conv_norm(out, p + "conv1.", (blk.width, blk.c_in, 1, 1))
        _conv_norm(out, p + "conv2.", (blk.width, blk.width, 3, 3))
        _conv_norm(out, p + "conv3.", (blk.c_out, blk.width, 1, 1))


def expected_shapes(config: Detectron2Config) -> dict[str, tuple[int, ...]]:
    """Every tensor npfrcnn's Detectron2 model needs, key -> npfrcnn shape (HWIO, (in, out))."""
    return {n: convert_shape(s) for n, s in torch_shapes(config).items()}


def to_npfrcnn(
    config: Detectron2Config, tensors: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Detectron2 layouts -> npfrcnn layouts for the keys of :func:`torch_shapes` (module table).

    ``tensors`` must already have Detectron2's shapes (the converter checks them first).
    """
    lin = first_linear(config)
    return convert_layouts(
        torch_shapes(config), tensors, None if lin is None else lin + "weight",
        config.pooler_resolution,
    )
