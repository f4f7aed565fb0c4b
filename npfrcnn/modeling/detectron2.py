"""Detectron2's Faster R-CNN at test time (``DefaultPredictor``), C4 and FPN, NHWC.

Each part is what Detectron2 runs (``detectron2/`` paths; the config fields are
:class:`npfrcnn.config.Detectron2Config`'s)::

    image uint8 RGB -> BGR (DefaultPredictor's input format)
    ResizeShortestEdge   size = get_output_shape(h, w, min_size_test, max_size_test):
                         scale in float64, int(x + 0.5); Pillow BILINEAR on the uint8 image
                         (data/transforms/transform.py ResizeTransform)
    preprocess_image     x = (float32(pixels) - pixel_mean) / pixel_std, zero-padded
                         bottom/right to the backbone's size_divisibility (FPN 32, C4 none)
    ResNet (MSRA)        stem 7x7/2 + norm + ReLU + max_pool(3, 2, pad 1); BottleneckBlock with
                         the stride in the first 1x1 (stride_in_1x1), shortcut = 1x1 conv + norm
                         when in != out; FrozenBN at test time is F.batch_norm in eval
    FPN                  lateral 1x1, top-down nearest x2 (lateral + top-down), output 3x3;
                         p6 = max_pool(k=1, s=2) of p5
    RPN head             3x3 conv + ReLU; objectness 1x1 (A logits), deltas 1x1 (4A), (y, x, a)
    anchors              cells in float64 (size-major, then ratio: w = sqrt(size^2 / ar),
                         h = ar * w, (-w/2, -h/2, w/2, h/2)) rounded to float32 once, plus
                         shifts arange(offset * stride, W * stride, stride); no rounding
    proposals            decode every anchor (weights rpn_bbox_reg_weights, dw/dh clamp
                         log(1000/16)); per level topk of the logits; drop non-finite; clip to
                         the resized image; keep sides > rpn_min_size; batched_nms by level on
                         the **logits**; the first rpn_post_nms_topk_test
    pooler               ROIAlignV2 (aligned=True, sampling ratio 0 = adaptive); FPN level
                         floor(canonical_level + log2(sqrt(area) / canonical_box_size + 1e-8))
                         clamped to p2..p5
    box head             C4: res5 (stride 2 in its first block) then the mean over 7x7;
                         FPN: flatten, fc1 + ReLU, fc2 + ReLU
    predictor            cls_score (num_classes + 1, background last), bbox_pred (4 per class)
    inference            softmax; decode per class with bbox_reg_weights; drop non-finite rows;
                         scores[:, :-1]; clip; score > score_thresh_test (proposal-major);
                         batched_nms by class; the first detections_per_image
    detector_postprocess boxes * f32(W / w) and f32(H / h) (the ratio in float64); clip to the
                         original image; drop empty boxes

Stand-ins, as for torchvision (:mod:`npfrcnn.modeling.rpn`): ``exp`` in the box decode is the
float64 ``exp`` rounded once (torch uses MKL VML), and ``log2`` in the level assignment is
:func:`npfrcnn.ops.torch_math.torch_log2`. The conv and fc arithmetic is BLAS, equal to
torch's up to summation order.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from npfrcnn import boxes as bx
from npfrcnn import ops
from npfrcnn.config.detectron2 import Detectron2Config
from npfrcnn.modeling.backbone import Norm
from npfrcnn.modeling.poolers import PooledRoIs
from npfrcnn.modeling.rpn import BBOX_XFORM_CLIP, LevelOutput, MultiLevelRPNOutput
from npfrcnn.modeling.transform import Preprocessed, check_image
from npfrcnn.ops.layers import affine_epilogue_, max_pool_3x3_s2_p1
from npfrcnn.ops.resize import resize_nearest
from npfrcnn.ops.torch_math import torch_log2, torch_softmax, torch_sqrt
from npfrcnn.ops.torch_sort import torch_topk
from npfrcnn.ops.tv_nms import torchvision_batched_nms
from npfrcnn.weights.detectron2_names import BlockSpec, resnet_prefix, stage_blocks

__all__ = [
    "D2Transform", "D2Backbone", "D2RPN", "D2Proposals", "D2Pooler", "Res5Head", "FCHead",
    "D2Predictor", "D2Postprocess", "D2Detections", "resize_shortest_edge_size",
    "cell_anchors", "apply_deltas", "FPN_LEVELS",
]

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]

#: FPN output names, highest resolution first, and their strides.
FPN_LEVELS = ("p2", "p3", "p4", "p5", "p6")
FPN_STRIDES = (4, 8, 16, 32, 64)


# Input ---------------------------------------------------------------------------------------


def resize_shortest_edge_size(h: int, w: int, short: int, max_size: int) -> tuple[int, int]:
    """``ResizeShortestEdge.get_output_shape``: ``(new_h, new_w)``, float64, ``int(x + 0.5)``."""
    size = short * 1.0
    scale = size / min(h, w)
    if h < w:
        newh, neww = size, scale * w
    else:
        newh, neww = scale * h, size
    if max(newh, neww) > max_size:
        scale = max_size * 1.0 / max(newh, neww)
        newh = newh * scale
        neww = neww * scale
    return int(newh + 0.5), int(neww + 0.5)


class D2Transform:
    """``DefaultPredictor``'s resize and ``GeneralizedRCNN.preprocess_image``, one image.

    ``__call__(RGB uint8 [H, W, 3]) -> Preprocessed`` whose ``x`` is float32 ``[1, Hp, Wp, 3]``
    in **BGR** order, ``(pixels - pixel_mean) / pixel_std``, zero-padded.
    """

    def __init__(self, config: Detectron2Config, backend: str):
        self.config = config
        self.backend = backend

    def resized_size(self, height: int, width: int) -> tuple[int, int]:
        c = self.config
        return resize_shortest_edge_size(height, width, c.min_size_test, c.max_size_test)

    def padded_size(self, height: int, width: int) -> tuple[int, int]:
        h, w = self.resized_size(height, width)
        d = self.config.size_divisibility
        if d > 1:
            return -(-h // d) * d, -(-w // d) * d
        return h, w

    def resize(self, bgr: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
        """Pillow's bilinear resize of the uint8 image, as ``ResizeTransform.apply_image``."""
        from PIL import Image

        oh, ow = self.resized_size(int(bgr.shape[0]), int(bgr.shape[1]))
        pil = Image.fromarray(np.ascontiguousarray(bgr))
        return np.asarray(pil.resize((ow, oh), Image.Resampling.BILINEAR))

    def __call__(self, image: npt.ArrayLike) -> Preprocessed:
        img = check_image(image)
        if img.dtype != np.uint8:
            raise ValueError(
                f"Detectron2 profiles take uint8 images (DefaultPredictor resizes them with "
                f"Pillow), got {img.dtype}; load it with npfrcnn.image.load or convert with "
                "np.clip(a, 0, 255).astype(np.uint8)"
            )
        h0, w0 = int(img.shape[0]), int(img.shape[1])
        # DefaultPredictor resizes the BGR image; Pillow's bilinear treats each channel alike,
        # so resizing the RGB image and then reversing the channels gives the same bytes
        # without copying the full-size image first.
        resized = self.resize(img.astype(np.uint8, copy=False))[:, :, ::-1]
        oh, ow = int(resized.shape[0]), int(resized.shape[1])
        mean = np.asarray(self.config.pixel_mean, dtype=np.float32)
        std = np.asarray(self.config.pixel_std, dtype=np.float32)
        hp, wp = self.padded_size(h0, w0)
        out = np.zeros((1, hp, wp, 3), dtype=np.float32)
        out[0, :oh, :ow] = (resized.astype(np.float32) - mean) / std
        return Preprocessed(out, (oh, ow), (h0, w0))


# Backbone ------------------------------------------------------------------------------------


class D2ResNet:
    """Detectron2's ``ResNet`` (MSRA bottlenecks) on NHWC input: the stem and the stages
    ``res2..res4`` (C4) or ``res2..res5`` (FPN); also runs ``res5`` for the C4 head."""

    def __init__(self, config: Detectron2Config, tensors: Mapping[str, np.ndarray], backend: str):
        self.config = config
        self.backend = backend
        self.t = tensors
        self.stages = stage_blocks(config)
        self.stem_prefix = resnet_prefix(config) + "stem.conv1."
        self.norms: dict[str, Norm] = {}
        prefixes = [self.stem_prefix]
        for blocks in self.stages.values():
            for blk in blocks:
                prefixes += [blk.prefix + f"conv{k}." for k in (1, 2, 3)]
                if blk.shortcut:
                    prefixes.append(blk.prefix + "shortcut.")
        for p in prefixes:
            if p + "norm.weight" in tensors:
                self.norms[p] = Norm("batch_norm", tensors, p + "norm.", config.bn_eps)

    def _conv_norm(
        self, x: F32, p: str, stride: int, pad: int, residual: F32 | None = None,
        relu: bool = True,
    ) -> F32:
        out = ops.conv2d(
            x, self.t[p + "weight"], strides=stride, padding=((pad, pad), (pad, pad)),
            backend=self.backend,
        )
        return self.norms[p].fused_(out, self.backend, residual=residual, relu=relu)

    def block(self, x: F32, blk: BlockSpec) -> F32:
        """``BottleneckBlock.forward``: relu(conv3(relu(conv2(relu(conv1(x))))) + shortcut)."""
        p = blk.prefix
        s1, s3 = (blk.stride, 1) if self.config.stride_in_1x1 else (1, blk.stride)
        out = self._conv_norm(x, p + "conv1.", s1, 0)
        out = self._conv_norm(out, p + "conv2.", s3, 1)
        if blk.shortcut:
            sc = self._conv_norm(x, p + "shortcut.", blk.stride, 0, relu=False)
        else:
            sc = x
        return self._conv_norm(out, p + "conv3.", 1, 0, residual=sc, relu=True)

    def stage(self, x: F32, name: str) -> F32:
        for blk in self.stages[name]:
            x = self.block(x, blk)
        return x

    def stem(self, x: F32) -> F32:
        """``BasicStem``: conv1 7x7/2 pad 3 + norm + ReLU, ``max_pool2d(3, 2, padding=1)``."""
        net = self._conv_norm(x, self.stem_prefix, 2, 3)
        return max_pool_3x3_s2_p1(net, backend=self.backend)

    def __call__(self, x: F32) -> dict[str, F32]:
        net = self.stem(x)
        outs: dict[str, F32] = {}
        names = ("res2", "res3", "res4", "res5") if self.config.is_fpn else ("res2", "res3",
                                                                              "res4")
        for name in names:
            net = self.stage(net, name)
            outs[name] = net
        return outs


class D2Backbone:
    """C4: ``{"res4": ...}``. FPN: ``{"p2", .., "p6"}`` (``backbone.fpn_*``); the ResNet's
    outputs of the last call are kept in ``last_body`` (``res2..res5``) for diffs."""

    def __init__(self, config: Detectron2Config, tensors: Mapping[str, np.ndarray], backend: str):
        self.config = config
        self.backend = backend
        self.t = tensors
        self.resnet = D2ResNet(config, tensors, backend)
        self.last_body: dict[str, F32] = {}

    def _conv(self, x: F32, name: str, pad: int) -> F32:
        return ops.conv2d(
            x, self.t[name + ".weight"], self.t[name + ".bias"], padding=((pad, pad), (pad, pad)),
            backend=self.backend,
        )

    def fpn(self, body: Mapping[str, F32]) -> dict[str, F32]:
        """``FPN.forward`` with ``LastLevelMaxPool`` on ``res2..res5``."""
        prev = self._conv(body["res5"], "backbone.fpn_lateral5", 0)
        results = [self._conv(prev, "backbone.fpn_output5", 1)]
        for lvl in (4, 3, 2):
            lateral = self._conv(body[f"res{lvl}"], f"backbone.fpn_lateral{lvl}", 0)
            h, w = int(prev.shape[1]), int(prev.shape[2])
            top_down = resize_nearest(prev, 2 * h, 2 * w, backend=self.backend)
            if top_down.shape != lateral.shape:
                raise ValueError(
                    f"FPN: res{lvl} is {lateral.shape[1:3]} but the top-down map is "
                    f"{top_down.shape[1:3]}; the input must be padded to a multiple of 32"
                )
            prev = affine_epilogue_(lateral, "none", residual=top_down, backend=self.backend)
            results.insert(0, self._conv(prev, f"backbone.fpn_output{lvl}", 1))
        results.append(np.ascontiguousarray(results[-1][:, ::2, ::2]))  # max_pool2d(k=1, s=2)
        return dict(zip(FPN_LEVELS, results, strict=True))

    def __call__(self, x: F32) -> dict[str, F32]:
        body = self.resnet(x)
        self.last_body = body
        if not self.config.is_fpn:
            return {"res4": body["res4"]}
        return self.fpn(body)


# RPN -----------------------------------------------------------------------------------------


def cell_anchors(sizes: tuple[float, ...], aspect_ratios: tuple[float, ...]) -> F32:
    """``DefaultAnchorGenerator.generate_cell_anchors``: float64 arithmetic, float32 result."""
    out = []
    for size in sizes:
        area = float(size) ** 2.0
        for ar in aspect_ratios:
            w = math.sqrt(area / float(ar))
            h = float(ar) * w
            out.append([-w / 2.0, -h / 2.0, w / 2.0, h / 2.0])
    return np.asarray(out, dtype=np.float64).astype(np.float32)


def grid_anchors(cell: F32, feature_shape: tuple[int, int], stride: int, offset: float) -> F32:
    """One level's anchors, float32 ``[fh * fw * A, 4]`` in (y, x, anchor) order."""
    fh, fw = feature_shape
    # torch.arange(offset * stride, W * stride, stride, dtype=float32): start + i * step in
    # float64, rounded once.
    xs = (offset * stride + np.arange(fw, dtype=np.float64) * stride).astype(np.float32)
    ys = (offset * stride + np.arange(fh, dtype=np.float64) * stride).astype(np.float32)
    sy, sx = np.meshgrid(ys, xs, indexing="ij")
    shifts = np.stack([sx.ravel(), sy.ravel(), sx.ravel(), sy.ravel()], axis=1)
    out = shifts[:, None, :] + cell[None, :, :]
    return np.ascontiguousarray(out.reshape(-1, 4), dtype=np.float32)


def apply_deltas(
    deltas: F32, boxes: F32, weights: tuple[float, float, float, float]
) -> F32:
    """``Box2BoxTransform.apply_deltas`` for ``deltas [N, 4k]`` and ``boxes [N, 4]`` (float32,
    dw and dh clamped to ``log(1000 / 16)``): float32 ``[N, 4k]``."""
    d = np.asarray(deltas, np.float32)
    b = np.asarray(boxes, np.float32)
    k = d.shape[1] // 4
    refs = np.repeat(b, k, axis=0) if k != 1 else b
    out = bx.decode(
        refs, d.reshape(-1, 4), scale_factors=weights, clamp=BBOX_XFORM_CLIP, exp="float64"
    )
    return np.ascontiguousarray(out.astype(np.float32).reshape(d.shape))


def clip_boxes(boxes: F32, size: tuple[int, int]) -> F32:
    """``Boxes.clip((h, w))``: x to ``[0, w]``, y to ``[0, h]``."""
    h, w = size
    out = np.empty_like(boxes)
    out[:, 0::2] = np.minimum(np.maximum(boxes[:, 0::2], np.float32(0)), np.float32(w))
    out[:, 1::2] = np.minimum(np.maximum(boxes[:, 1::2], np.float32(0)), np.float32(h))
    return out


def nonempty(boxes: F32, threshold: float = 0.0) -> npt.NDArray[np.bool_]:
    """``Boxes.nonempty``: both sides strictly greater than ``threshold``."""
    t = np.float32(threshold)
    return ((boxes[:, 2] - boxes[:, 0]) > t) & ((boxes[:, 3] - boxes[:, 1]) > t)


@dataclass
class D2Proposals:
    """Proposals of one image and every intermediate (for diffs).

    Attributes:
        boxes: float32 ``[P, 4]`` ``(x1, y1, x2, y2)`` in resized-image pixels, by descending
            objectness (the proposal ``Instances.proposal_boxes``).
        scores: float32 ``[P]`` their objectness **logits** (Detectron2 keeps logits).
        decoded: float32 ``[A, 4]`` every anchor decoded (all levels, in order).
        top_k: int64 ``[T]`` indices into ``decoded`` of the per-level top-k, levels in order.
        levels: int64 ``[T]`` level of each candidate.
        logits: float32 ``[T]`` the candidates' logits.
        clipped: float32 ``[T, 4]`` the candidates' boxes clipped to the image.
        kept: int64 indices into the ``T`` candidates that are finite and non-empty.
        nms: int64 indices into ``kept`` as batched NMS returned them (before the cut).
    """

    boxes: F32
    scores: F32
    decoded: F32
    top_k: I64
    levels: I64
    logits: F32
    clipped: F32
    kept: I64
    nms: I64


class D2RPN:
    """``RPN`` at test time: ``StandardRPNHead``, ``DefaultAnchorGenerator``,
    ``find_top_rpn_proposals``."""

    def __init__(self, config: Detectron2Config, tensors: Mapping[str, np.ndarray], backend: str):
        self.config = config
        self.t = tensors
        self.backend = backend
        self.cells = [cell_anchors(s, config.aspect_ratios) for s in config.anchor_sizes]
        self.strides = FPN_STRIDES if config.is_fpn else (16,)

    def head(self, features: Mapping[str, F32]) -> MultiLevelRPNOutput:
        """``StandardRPNHead`` on each level: ``(y, x, a)`` logits and ``[.., 4]`` deltas."""
        p = "proposal_generator.rpn_head."
        names = FPN_LEVELS if self.config.is_fpn else ("res4",)
        levels: dict[str, LevelOutput] = {}
        for name in names:
            f = features[name]
            net = ops.conv2d(f, self.t[p + "conv.weight"], padding=((1, 1), (1, 1)),
                             backend=self.backend)
            affine_epilogue_(net, "bias", b=self.t[p + "conv.bias"], relu=True,
                             backend=self.backend)
            logits = ops.conv2d(net, self.t[p + "objectness_logits.weight"],
                                self.t[p + "objectness_logits.bias"], backend=self.backend)
            deltas = ops.conv2d(net, self.t[p + "anchor_deltas.weight"],
                                self.t[p + "anchor_deltas.bias"], backend=self.backend)
            levels[name] = LevelOutput(
                np.ascontiguousarray(logits.reshape(-1)),
                np.ascontiguousarray(deltas.reshape(-1, 4)),
                (int(f.shape[1]), int(f.shape[2])),
            )
        return MultiLevelRPNOutput(levels, (0, 0))

    def anchors(
        self, rpn_out: MultiLevelRPNOutput, input_shape: tuple[int, int] | None = None
    ) -> dict[str, F32]:
        """Per-level anchors (they depend on the feature sizes only, not on the input size)."""
        return {
            name: grid_anchors(self.cells[i], lv.shape, self.strides[i], self.config.anchor_offset)
            for i, (name, lv) in enumerate(rpn_out.levels.items())
        }

    def proposals(
        self,
        rpn_out: MultiLevelRPNOutput,
        anchors: Mapping[str, F32],
        image_size: tuple[int, int],
    ) -> D2Proposals:
        """``predict_proposals`` + ``find_top_rpn_proposals`` for one image of resized size
        ``image_size = (h, w)``."""
        cfg = self.config
        decoded_parts, tops, lvls = [], [], []
        offset = 0
        for li, (name, lv) in enumerate(rpn_out.levels.items()):
            decoded_parts.append(apply_deltas(lv.deltas, anchors[name], cfg.rpn_bbox_reg_weights))
            n = lv.logits.shape[0]
            k = min(n, cfg.rpn_pre_nms_topk_test)
            _, idx = torch_topk(lv.logits, k, backend=self.backend)
            tops.append(np.asarray(idx, dtype=np.int64) + offset)
            lvls.append(np.full(k, li, dtype=np.int64))
            offset += n
        decoded = np.concatenate(decoded_parts)
        top = np.concatenate(tops)
        levels = np.concatenate(lvls)
        logits = rpn_out.logits[top]
        cand = decoded[top]
        finite = np.isfinite(cand).all(axis=1) & np.isfinite(logits)
        idx = np.flatnonzero(finite)
        clipped = np.zeros_like(cand)
        clipped[idx] = clip_boxes(cand[idx], image_size)
        kept, sel = self.select(clipped[idx], logits[idx], levels[idx])
        keep = idx[kept]
        final = keep[sel[: cfg.rpn_post_nms_topk_test]]
        return D2Proposals(
            np.ascontiguousarray(clipped[final]), np.ascontiguousarray(logits[final]), decoded,
            top, levels, logits, clipped, keep, sel,
        )


    def select(self, boxes: F32, logits: F32, levels: I64) -> tuple[I64, I64]:
        """The last steps on finite, clipped candidates: ``(kept, nms)``, the candidates that
        are non-empty and the batched-NMS order (indices into ``kept``, on the logits, by
        level), before the ``rpn_post_nms_topk_test`` cut."""
        cfg = self.config
        kept = np.flatnonzero(nonempty(boxes, cfg.rpn_min_size)).astype(np.int64)
        sel = torchvision_batched_nms(
            boxes[kept], logits[kept], levels[kept], cfg.rpn_nms_thresh, backend=self.backend
        )
        return kept, np.asarray(sel, dtype=np.int64)


# RoI heads -----------------------------------------------------------------------------------


class D2Pooler:
    """``ROIPooler`` with ``ROIAlignV2``: one level (C4, ``res4`` at 1/16) or ``p2..p5``."""

    def __init__(self, config: Detectron2Config, backend: str):
        self.config = config
        self.backend = backend

    def levels(self, boxes: F32) -> I64:
        """``assign_boxes_to_levels`` (0 = p2): float32 arithmetic, as torch computes it."""
        cfg = self.config
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        sizes = torch_sqrt(area)
        lg = torch_log2(sizes / np.float32(cfg.canonical_box_size) + np.float32(1e-8))
        lvl = np.floor(np.float32(cfg.canonical_level) + lg)
        lvl = np.clip(lvl, np.float32(2), np.float32(5))
        return lvl.astype(np.int64) - 2

    def __call__(
        self, features: Mapping[str, F32], boxes: npt.ArrayLike, image_size: tuple[int, int]
    ) -> PooledRoIs:
        cfg = self.config
        b = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        rois = np.concatenate([np.zeros((b.shape[0], 1), np.float32), b], axis=1)
        s, sr = cfg.pooler_resolution, cfg.pooler_sampling_ratio
        if not cfg.is_fpn:
            out = ops.roi_align(features["res4"], rois, s, 1.0 / 16, sr, aligned=True,
                                backend=self.backend)
            return PooledRoIs(out, np.zeros(b.shape[0], np.int64), (1.0 / 16,))
        levels = self.levels(b)
        scales = (1 / 4, 1 / 8, 1 / 16, 1 / 32)
        c = int(features["p2"].shape[3])
        out = np.zeros((b.shape[0], s, s, c), dtype=np.float32)
        for li, name in enumerate(FPN_LEVELS[:4]):
            idx = np.flatnonzero(levels == li)
            if idx.size:
                out[idx] = ops.roi_align(features[name], rois[idx], s, scales[li], sr,
                                         aligned=True, backend=self.backend)
        return PooledRoIs(out, levels, scales)


class Res5Head:
    """C4's box head: ``res5`` on the 14x14 crops (7x7 out), then ``mean(dim=[2, 3])``."""

    def __init__(self, resnet: D2ResNet):
        self.resnet = resnet

    def __call__(self, pooled: F32) -> F32:
        x = self.resnet.stage(np.ascontiguousarray(pooled, dtype=np.float32), "res5")
        # torch sums each 7x7 plane then divides; the float64 sum rounded once is within an
        # ulp or two of it (the summation order differs).
        return (x.sum(axis=(1, 2), dtype=np.float64) / (x.shape[1] * x.shape[2])).astype(
            np.float32
        )


class FCHead:
    """FPN's ``FastRCNNConvFCHead`` with ``num_fc`` fc layers: flatten, (fc + ReLU) x n."""

    def __init__(self, config: Detectron2Config, tensors: Mapping[str, np.ndarray]):
        self.config = config
        self.t = tensors

    def __call__(self, pooled: F32) -> F32:
        x = pooled.reshape(pooled.shape[0], int(np.prod(pooled.shape[1:])))
        for k in range(1, self.config.num_fc + 1):
            p = f"roi_heads.box_head.fc{k}."
            x = ops.dense(x, self.t[p + "weight"], self.t[p + "bias"])
            np.maximum(x, np.float32(0), out=x)
        return x


class D2Predictor:
    """``FastRCNNOutputLayers``: ``(bbox_pred [P, 4 n], cls_logits [P, n + 1])``."""

    def __init__(self, config: Detectron2Config, tensors: Mapping[str, np.ndarray]):
        self.t = tensors

    def __call__(self, x: F32) -> tuple[F32, F32]:
        p = "roi_heads.box_predictor."
        logits = ops.dense(x, self.t[p + "cls_score.weight"], self.t[p + "cls_score.bias"])
        bbox = ops.dense(x, self.t[p + "bbox_pred.weight"], self.t[p + "bbox_pred.bias"])
        return bbox, logits


@dataclass
class D2Detections:
    """Final detections of one image and the candidates they were chosen from.

    Attributes:
        boxes: float32 ``[D, 4]`` in the original image (after ``detector_postprocess``).
        labels: int64 ``[D]`` class ids (0..num_classes - 1; Detectron2's ``pred_classes``).
        scores: float32 ``[D]``.
        resized_boxes: float32 ``[D', 4]`` the boxes in the resized image, before the rescale
            and the empty-box filter (``D' >= D``).
        candidates: int64 ``[M]`` flat indices ``p * num_classes + c`` of the candidates that
            passed the score threshold, in that order (proposal-major).
        nms: int64 indices into ``candidates`` as batched NMS kept them (before the cut).
        candidate_boxes / candidate_scores / candidate_labels: the candidates themselves.
    """

    boxes: F32
    labels: I64
    scores: F32
    resized_boxes: F32
    candidates: I64
    nms: I64
    candidate_boxes: F32 = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    candidate_scores: F32 = field(default_factory=lambda: np.zeros(0, np.float32))
    candidate_labels: I64 = field(default_factory=lambda: np.zeros(0, np.int64))


class D2Postprocess:
    """``FastRCNNOutputLayers.inference`` + ``detector_postprocess`` for one image."""

    def __init__(self, config: Detectron2Config, backend: str):
        self.config = config
        self.backend = backend

    def scores(self, cls_logits: F32) -> F32:
        """``F.softmax(scores, dim=-1)`` as torch's CPU kernel computes it."""
        return torch_softmax(np.asarray(cls_logits, np.float32), lanes=self.config.simd_lanes)

    def __call__(
        self,
        proposals: npt.ArrayLike,
        bbox_pred: npt.ArrayLike,
        cls_logits: npt.ArrayLike,
        image_size: tuple[int, int],
        original_size: tuple[int, int],
        *,
        score_thresh: float | None = None,
        detections_per_image: int | None = None,
    ) -> D2Detections:
        cfg = self.config
        n = cfg.num_classes
        props = np.asarray(proposals, np.float32).reshape(-1, 4)
        reg = np.asarray(bbox_pred, np.float32)
        logits = np.asarray(cls_logits, np.float32)
        p = props.shape[0]
        if reg.shape != (p, 4 * n) or logits.shape != (p, n + 1):
            raise ValueError(
                f"bbox_pred {reg.shape} and cls_logits {logits.shape} must be [P, {4 * n}] and "
                f"[P, {n + 1}] for {p} proposals"
            )
        boxes = apply_deltas(reg, props, cfg.bbox_reg_weights)  # [P, 4n]
        scores = self.scores(logits) if p else np.zeros((0, n + 1), np.float32)
        valid = np.isfinite(boxes).all(axis=1) & np.isfinite(scores).all(axis=1)
        rows = np.flatnonzero(valid)  # the proposals that remain (all, unless non-finite)
        boxes, scores = boxes[rows], scores[rows, :-1]
        boxes = clip_boxes(boxes.reshape(-1, 4), image_size).reshape(-1, n, 4)
        thr = cfg.score_thresh_test if score_thresh is None else score_thresh
        mask = scores > np.float32(thr)
        r, c = np.nonzero(mask)  # row-major: proposal-major, class-minor
        b = np.ascontiguousarray(boxes[r, c])
        s = np.ascontiguousarray(scores[r, c])
        lab = c.astype(np.int64)
        keep = np.asarray(
            torchvision_batched_nms(b, s, lab, cfg.nms_thresh_test, backend=self.backend),
            dtype=np.int64,
        )
        limit = cfg.detections_per_image if detections_per_image is None else detections_per_image
        if limit >= 0:
            keep_cut = keep[:limit]
        else:
            keep_cut = keep
        rb, rs, rl = b[keep_cut], s[keep_cut], lab[keep_cut]
        # detector_postprocess: Boxes.scale by the float64 ratios (cast to float32 by torch),
        # clip to the original image, drop empty boxes.
        (h0, w0), (h, w) = original_size, image_size
        out = rb.copy()
        out[:, 0::2] *= np.float32(w0 / w)
        out[:, 1::2] *= np.float32(h0 / h)
        out = clip_boxes(out, (h0, w0))
        ok = nonempty(out)
        flat = (rows[r] * n + c).astype(np.int64)
        return D2Detections(
            np.ascontiguousarray(out[ok]), rl[ok], np.ascontiguousarray(rs[ok]), rb, flat, keep,
            b, s, lab,
        )


def build_parts(config: Detectron2Config, tensors: Mapping[str, np.ndarray], backend: str) -> dict:
    """The parts of a Detectron2 profile, by role (``npfrcnn.model.Parts`` fields)."""
    backbone = D2Backbone(config, tensors, backend)
    head: Res5Head | FCHead = (
        FCHead(config, tensors) if config.is_fpn else Res5Head(backbone.resnet)
    )
    return dict(
        transform=D2Transform(config, backend), backbone=backbone,
        rpn=D2RPN(config, tensors, backend), pooler=D2Pooler(config, backend), box_head=head,
        predictor=D2Predictor(config, tensors), postprocess=D2Postprocess(config, backend),
    )
