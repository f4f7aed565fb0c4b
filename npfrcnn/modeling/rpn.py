"""torchvision's multi-level RPN: head, anchors and proposal filtering (torchvision-spec 4 to 6).

Head (``RPNHead``): the same weights on every level: ``rpn_conv_depth`` 3x3 convs (bias, pad 1)
each followed by ReLU, then a 1x1 ``cls_logits`` conv (``A`` channels) and a 1x1 ``bbox_pred``
conv (``4A`` channels, anchor ``a``'s coordinate ``k`` in channel ``4a + k``). In NHWC the
flattened order ``(y, x, a)`` is already torchvision's ``permute_and_flatten`` order.

Anchors (``AnchorGenerator``), per level: cell anchors ``round([-w, -h, w, h] / 2)`` (round half
to even) with ``h_ratio = sqrt(ar)``, ``w_ratio = 1 / h_ratio``, ``w = w_ratio * size``, all in
float32; shifts ``arange(f) * (padded // f)`` (integer strides, not always powers of two), in
(y, x, anchor) order.

Proposals (``RegionProposalNetwork.filter_proposals``), one image:

1. decode all anchors with weights (1, 1, 1, 1) and ``dw, dh <= log(1000 / 16)``;
2. per level, ``torch.topk`` of the **logits**, ``k = min(pre_nms_top_n, n_level)``, in torch's
   own tie order (:func:`npfrcnn.ops.torch_topk`);
3. ``sigmoid`` (torch's float32 algorithm, :func:`npfrcnn.ops.torch_sigmoid`);
4. clip to ``[0, w] x [0, h]`` of the resized image, keep sides ``>= f32(min_size)``, keep
   ``prob >= f32(score_thresh)``;
5. ``batched_nms`` by level at ``nms_thresh`` (torchvision's branch rule,
   :func:`npfrcnn.ops.torchvision_batched_nms`), then the first ``post_nms_top_n``.

The only stand-in is ``exp`` in the decode: torch uses MKL VML (CPU dependent, not reproducible);
npfrcnn rounds the float64 ``exp`` once (``exp="float64"`` in :func:`npfrcnn.boxes.decode`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from npfrcnn import boxes as bx
from npfrcnn import ops
from npfrcnn.config.fpn import FPNConfig
from npfrcnn.modeling.backbone import LEVELS
from npfrcnn.ops.layers import affine_epilogue_
from npfrcnn.ops.torch_math import torch_sigmoid
from npfrcnn.ops.torch_sort import torch_topk
from npfrcnn.ops.tv_nms import torchvision_batched_nms

__all__ = [
    "BBOX_XFORM_CLIP",
    "LevelOutput",
    "MultiLevelRPNOutput",
    "MultiLevelProposals",
    "MultiLevelRPN",
    "cell_anchors",
    "grid_anchors",
    "remove_small_boxes",
]

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]

#: ``math.log(1000.0 / 16)`` as torch compares with it (a Python float cast to float32).
BBOX_XFORM_CLIP = math.log(1000.0 / 16)


@dataclass
class LevelOutput:
    """The RPN head's output on one level: ``logits [H*W*A]``, ``deltas [H*W*A, 4]``."""

    logits: F32
    deltas: F32
    shape: tuple[int, int]


@dataclass
class MultiLevelRPNOutput:
    """The RPN head's outputs per level (``'0' .. 'pool'``), and the padded input size."""

    levels: dict[str, LevelOutput]
    input_shape: tuple[int, int]

    @property
    def logits(self) -> F32:
        """All levels' logits concatenated, float32 ``[sum A_l]``."""
        return np.concatenate([lv.logits for lv in self.levels.values()])

    @property
    def deltas(self) -> F32:
        """All levels' deltas concatenated, float32 ``[sum A_l, 4]``."""
        return np.concatenate([lv.deltas for lv in self.levels.values()])


@dataclass
class MultiLevelProposals:
    """Proposals of one image and every intermediate of their filtering (for diffs).

    Attributes:
        boxes: float32 ``[P, 4]`` ``(x1, y1, x2, y2)`` in resized-image pixels, by descending
            objectness.
        scores: float32 ``[P]`` sigmoid objectness of ``boxes``.
        decoded: float32 ``[A, 4]`` every anchor decoded (all levels).
        top_k: int64 ``[T]`` indices into ``decoded`` of the per-level top-n, levels in order.
        levels: int64 ``[T]`` level (0..4) of each ``top_k`` candidate.
        probs: float32 ``[T]`` sigmoid of the candidates' logits.
        kept: int64 indices into the ``T`` candidates that survive clipping, the min-size and
            the score filters.
        nms: int64 indices into ``kept`` as batched NMS returned them (before the top-n cut).
    """

    boxes: F32
    scores: F32
    decoded: F32
    top_k: I64
    levels: I64
    probs: F32
    kept: I64
    nms: I64
    clipped: F32 = field(default_factory=lambda: np.zeros((0, 4), np.float32))


def cell_anchors(size: float, aspect_ratios: tuple[float, ...]) -> F32:
    """``AnchorGenerator.generate_anchors`` for one size: float32 ``[len(ratios), 4]``."""
    ar = np.asarray(aspect_ratios, dtype=np.float32)
    s = np.float32(size)
    h_ratio = np.sqrt(ar)
    w_ratio = np.float32(1.0) / h_ratio
    ws = w_ratio * s
    hs = h_ratio * s
    base = np.stack([-ws, -hs, ws, hs], axis=1) / np.float32(2.0)
    return np.round(base).astype(np.float32)  # numpy rounds half to even, as torch.round


def grid_anchors(
    cell: F32, feature_shape: tuple[int, int], input_shape: tuple[int, int]
) -> F32:
    """Anchors of one level: float32 ``[fh * fw * A, 4]`` in (y, x, anchor) order.

    The stride is ``input // feature`` per axis (integer division of the padded input size).
    """
    fh, fw = feature_shape
    sh, sw = input_shape[0] // fh, input_shape[1] // fw
    shift_x = np.arange(fw, dtype=np.int64) * sw
    shift_y = np.arange(fh, dtype=np.int64) * sh
    sy, sx = np.meshgrid(shift_y, shift_x, indexing="ij")
    shifts = np.stack([sx.ravel(), sy.ravel(), sx.ravel(), sy.ravel()], axis=1)  # [fh*fw,4]
    out = shifts[:, None, :].astype(np.float32) + cell[None, :, :]
    return np.ascontiguousarray(out.reshape(-1, 4), dtype=np.float32)


def remove_small_boxes(boxes: F32, min_size: float) -> I64:
    """``torchvision.ops.remove_small_boxes``: both sides ``>= f32(min_size)`` (non-strict)."""
    ws = boxes[:, 2] - boxes[:, 0]
    hs = boxes[:, 3] - boxes[:, 1]
    m = np.float32(min_size)
    return np.flatnonzero((ws >= m) & (hs >= m)).astype(np.int64)


def clip_to_image(boxes: F32, image_size: tuple[int, int]) -> F32:
    """``clip_boxes_to_image``: x to ``[0, w]``, y to ``[0, h]`` (``clamp(min=0, max=w)``)."""
    h, w = image_size
    out = np.empty_like(boxes)
    out[:, 0::2] = np.minimum(np.maximum(boxes[:, 0::2], np.float32(0)), np.float32(w))
    out[:, 1::2] = np.minimum(np.maximum(boxes[:, 1::2], np.float32(0)), np.float32(h))
    return out


def decode_torchvision(
    references: F32, deltas: F32, weights: tuple[float, float, float, float]
) -> F32:
    """``BoxCoder.decode_single`` with ``weights`` and the ``log(1000/16)`` clamp (spec 5.3)."""
    return bx.decode(
        references, deltas, scale_factors=weights, clamp=BBOX_XFORM_CLIP, exp="float64"
    ).astype(np.float32)


class MultiLevelRPN:
    """torchvision's ``RegionProposalNetwork`` at inference (module docstring)."""

    def __init__(self, config: FPNConfig, tensors: Mapping[str, np.ndarray], backend: str):
        self.config = config
        self.t = tensors
        self.backend = backend
        self.cells = [cell_anchors(s, config.aspect_ratios) for s in config.anchor_sizes]

    def head(self, features: Mapping[str, F32]) -> MultiLevelRPNOutput:
        """The head on every level: ``RPNHead.forward``."""
        levels: dict[str, LevelOutput] = {}
        input_shape = (0, 0)
        for name in LEVELS:
            f = features[name]
            net = f
            for i in range(self.config.rpn_conv_depth):
                p = f"rpn.head.conv.{i}.0."
                net = ops.conv2d(
                    net, self.t[p + "weight"], padding=((1, 1), (1, 1)), backend=self.backend
                )
                # + bias, ReLU (one pass on the cpu backend; the same bits as two)
                affine_epilogue_(
                    net, "bias", b=self.t[p + "bias"], relu=True, backend=self.backend
                )
            logits = ops.conv2d(
                net, self.t["rpn.head.cls_logits.weight"], self.t["rpn.head.cls_logits.bias"],
                backend=self.backend,
            )
            deltas = ops.conv2d(
                net, self.t["rpn.head.bbox_pred.weight"], self.t["rpn.head.bbox_pred.bias"],
                backend=self.backend,
            )
            levels[name] = LevelOutput(
                np.ascontiguousarray(logits.reshape(-1)),
                np.ascontiguousarray(deltas.reshape(-1, 4)),
                (int(f.shape[1]), int(f.shape[2])),
            )
        return MultiLevelRPNOutput(levels, input_shape)

    def anchors(
        self, rpn_out: MultiLevelRPNOutput, input_shape: tuple[int, int]
    ) -> dict[str, F32]:
        """Per-level anchors for a padded input of ``input_shape`` (``AnchorGenerator``)."""
        return {
            name: grid_anchors(self.cells[i], lv.shape, input_shape)
            for i, (name, lv) in enumerate(rpn_out.levels.items())
        }

    def proposals(
        self,
        rpn_out: MultiLevelRPNOutput,
        anchors: Mapping[str, F32],
        image_size: tuple[int, int],
    ) -> MultiLevelProposals:
        """``filter_proposals`` for one image of resized size ``image_size = (h, w)``."""
        cfg = self.config
        anc = np.concatenate([anchors[n] for n in rpn_out.levels])
        deltas = rpn_out.deltas
        decoded = decode_torchvision(anc, deltas, (1.0, 1.0, 1.0, 1.0))
        tops, lvls = [], []
        offset = 0
        for li, lv in enumerate(rpn_out.levels.values()):
            n = lv.logits.shape[0]
            k = min(cfg.rpn_pre_nms_top_n, n)
            _, idx = torch_topk(lv.logits, k, backend=self.backend)
            tops.append(np.asarray(idx, dtype=np.int64) + offset)
            lvls.append(np.full(k, li, dtype=np.int64))
            offset += n
        top = np.concatenate(tops)
        levels = np.concatenate(lvls)
        logits = np.concatenate([lv.logits for lv in rpn_out.levels.values()])[top]
        probs = torch_sigmoid(logits, lanes=cfg.simd_lanes, num_threads=cfg.torch_threads)
        boxes = clip_to_image(decoded[top], image_size)
        keep, sel = self.select(boxes, probs, levels)
        final = keep[sel[: cfg.rpn_post_nms_top_n]]
        return MultiLevelProposals(
            np.ascontiguousarray(boxes[final]), np.ascontiguousarray(probs[final]), decoded,
            top, levels, probs, keep, sel, boxes,
        )

    def select(self, boxes: F32, probs: F32, levels: I64) -> tuple[I64, I64]:
        """Steps 4 and 5 on the clipped top-n candidates: ``(kept, nms)``, the candidates that
        pass the min-size and score filters and the batched-NMS order (indices into kept),
        before the ``post_nms_top_n`` cut."""
        cfg = self.config
        keep = remove_small_boxes(boxes, cfg.rpn_min_size)
        keep = keep[probs[keep] >= np.float32(cfg.rpn_score_thresh)]
        sel = torchvision_batched_nms(
            boxes[keep], probs[keep], levels[keep], cfg.rpn_nms_thresh, backend=self.backend
        )
        return keep, np.asarray(sel, dtype=np.int64)
