"""The name table of torchvision's ResNet-FPN Faster R-CNN: state-dict key -> npfrcnn tensor.

Datasets in the HDF5 file keep torchvision's state-dict keys (``backbone.body.layer1.0.conv1.
weight``, ``rpn.head.cls_logits.weight``, ``roi_heads.box_predictor.bbox_pred.weight``, ...);
only the layouts change, once, at conversion (:func:`to_npfrcnn`):

=========================================  ==========================  ======================
torch tensor                               npfrcnn                     why
=========================================  ==========================  ======================
conv ``weight [O, I, kh, kw]`` (OIHW)      ``[kh, kw, I, O]`` (HWIO)    npfrcnn convolves NHWC
                                                                        with HWIO kernels
``Linear.weight [out, in]``                ``[in, out]``                ``x @ kernel``
first Linear after the RoI pooler          rows permuted (C, H, W) ->   torch flattens
(``box_head.fc6`` / v2 ``box_head.5``)     (H, W, C), then ``[in,out]``  ``[P, C, 7, 7]``; npfrcnn
                                                                        flattens ``[P, 7, 7, C]``
norm ``weight, bias, running_mean,         unchanged ``[C]``
running_var``
``num_batches_tracked``                    dropped                      unused at inference
=========================================  ==========================  ======================

Every tensor is stored as float32 (torch checkpoints of these models are float32; float16 and
bfloat16 are widened exactly).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

from npfrcnn.config.fpn import FPNConfig

__all__ = [
    "expected_shapes", "to_npfrcnn", "torch_shapes", "NORM_KEYS", "first_linear",
    "convert_layouts", "convert_shape",
]

NORM_KEYS = ("weight", "bias", "running_mean", "running_var")


def _norm(out: dict[str, tuple[int, ...]], prefix: str, c: int) -> None:
    for k in NORM_KEYS:
        out[prefix + k] = (c,)


def first_linear(config: FPNConfig) -> str:
    """The key prefix of the first Linear layer after the pooler (its input is permuted)."""
    if config.box_head == "two_mlp":
        return "roi_heads.box_head.fc6."
    return f"roi_heads.box_head.{len(config.box_head_convs) + 1}."


def torch_shapes(config: FPNConfig) -> dict[str, tuple[int, ...]]:
    """Every inference tensor of the torchvision model, key -> torch shape, in network order.

    ``num_batches_tracked`` buffers are not listed (the converter drops them).
    """
    out: dict[str, tuple[int, ...]] = {}
    out["backbone.body.conv1.weight"] = (64, 3, 7, 7)
    _norm(out, "backbone.body.bn1.", 64)
    c_in = 64
    for i, (n, w, c_out) in enumerate(
        zip(config.units_per_block, config.bottleneck_widths, config.body_channels, strict=True)
    ):
        for b in range(n):
            p = f"backbone.body.layer{i + 1}.{b}."
            out[p + "conv1.weight"] = (w, c_in, 1, 1)
            _norm(out, p + "bn1.", w)
            out[p + "conv2.weight"] = (w, w, 3, 3)
            _norm(out, p + "bn2.", w)
            out[p + "conv3.weight"] = (c_out, w, 1, 1)
            _norm(out, p + "bn3.", c_out)
            if b == 0:
                out[p + "downsample.0.weight"] = (c_out, c_in, 1, 1)
                _norm(out, p + "downsample.1.", c_out)
            c_in = c_out
    f = config.fpn_channels
    for i, c in enumerate(config.body_channels):
        for kind, shape in (("inner_blocks", (f, c, 1, 1)), ("layer_blocks", (f, f, 3, 3))):
            p = f"backbone.fpn.{kind}.{i}."
            out[p + "0.weight"] = shape
            if config.fpn_norm == "none":
                out[p + "0.bias"] = (f,)
            else:
                _norm(out, p + "1.", f)
    for i in range(config.rpn_conv_depth):
        out[f"rpn.head.conv.{i}.0.weight"] = (f, f, 3, 3)
        out[f"rpn.head.conv.{i}.0.bias"] = (f,)
    a = config.num_anchors
    out["rpn.head.cls_logits.weight"] = (a, f, 1, 1)
    out["rpn.head.cls_logits.bias"] = (a,)
    out["rpn.head.bbox_pred.weight"] = (4 * a, f, 1, 1)
    out["rpn.head.bbox_pred.bias"] = (4 * a,)
    s = config.roi_output_size
    r = config.representation_size
    if config.box_head == "two_mlp":
        out["roi_heads.box_head.fc6.weight"] = (r, f * s * s)
        out["roi_heads.box_head.fc6.bias"] = (r,)
        out["roi_heads.box_head.fc7.weight"] = (r, r)
        out["roi_heads.box_head.fc7.bias"] = (r,)
    else:
        c = f
        for k, width in enumerate(config.box_head_convs):
            out[f"roi_heads.box_head.{k}.0.weight"] = (width, c, 3, 3)
            _norm(out, f"roi_heads.box_head.{k}.1.", width)
            c = width
        p = first_linear(config)
        out[p + "weight"] = (r, c * s * s)
        out[p + "bias"] = (r,)
    k = config.num_classes + 1
    out["roi_heads.box_predictor.cls_score.weight"] = (k, r)
    out["roi_heads.box_predictor.cls_score.bias"] = (k,)
    out["roi_heads.box_predictor.bbox_pred.weight"] = (4 * k, r)
    out["roi_heads.box_predictor.bbox_pred.bias"] = (4 * k,)
    return out


def convert_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """A torch tensor shape in npfrcnn's layout: OIHW -> HWIO, ``(out, in)`` -> ``(in, out)``."""
    if len(shape) == 4:
        o, i, kh, kw = shape
        return (kh, kw, i, o)
    if len(shape) == 2:
        return (shape[1], shape[0])
    return shape


def expected_shapes(config: FPNConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor npfrcnn's FPN model needs, key -> npfrcnn shape (HWIO, ``(in, out)``)."""
    return {n: convert_shape(s) for n, s in torch_shapes(config).items()}


def to_npfrcnn(config: FPNConfig, tensors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """torch layouts -> npfrcnn layouts for the keys of :func:`torch_shapes` (module table).

    ``tensors`` must already have the torch shapes (the converter checks them first).
    """
    return convert_layouts(
        torch_shapes(config), tensors, first_linear(config) + "weight", config.roi_output_size
    )


def convert_layouts(
    names: Iterable[str], tensors: Mapping[str, np.ndarray], pooled_linear: str | None, s: int
) -> dict[str, np.ndarray]:
    """torch layouts -> npfrcnn layouts (module table) for ``names``: OIHW -> HWIO, Linear
    transposed, and the rows of ``pooled_linear`` (the first Linear after an ``s x s`` RoI
    pooler, or None) permuted from torch's (C, H, W) flatten to NHWC's (H, W, C). Shared with
    :mod:`npfrcnn.weights.detectron2_names`."""
    out: dict[str, np.ndarray] = {}
    for name in names:
        a = np.asarray(tensors[name]).astype(np.float32)
        if name == pooled_linear:
            # [out, C*S*S] in torch's (C, H, W) flatten order -> [S*S*C, out] in NHWC order.
            r = a.shape[0]
            c = a.shape[1] // (s * s)
            a = a.reshape(r, c, s, s).transpose(2, 3, 1, 0).reshape(s * s * c, r)
        elif a.ndim == 4:
            a = a.transpose(2, 3, 1, 0)  # OIHW -> HWIO
        elif a.ndim == 2:
            a = a.T  # (out, in) -> (in, out)
        out[name] = np.ascontiguousarray(a, dtype=np.float32)
    return out
