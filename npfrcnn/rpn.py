"""Region proposal network: the RPN head and proposal generation (spec 1.8, "RPN" and "Proposals").

Head (workshop ``run_rpn``): ``rpn/conv`` 3x3 SAME + bias, ReLU6; ``rpn/cls_conv`` 1x1 -> ``2k``
channels reshaped to ``[-1, 2]`` and soft-maxed (column 1 = object); ``rpn/bbox_conv`` 1x1 ->
``4k`` channels reshaped to ``[-1, 4]`` ``(dx, dy, dw, dh)``. Row ``(y * W_f + x) * k + a`` belongs
to anchor ``a`` of cell ``(y, x)``, matching :func:`npfrcnn.anchors.grid_anchors`.

Proposals (workshop notebook cells 43-62)::

    decode(anchors, deltas)                    (raw deltas; rpn_variances if a profile sets them)
    keep boxes with max(x2-x1,0)*max(y2-y1,0) > 0        (order kept)
    [clip to the image]                        (only when config.rpn_clip_before_nms)
    top_k(scores, min(pre_nms_top_n, n))       (ties: lower index first)
    nms(yxyx, scores, post_nms_top_n, iou 0.7) (tf.image.non_max_suppression semantics)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from npfrcnn import boxes as bx
from npfrcnn import ops
from npfrcnn.config import ModelConfig

__all__ = ["RPNOutput", "Proposals", "rpn_head", "generate_proposals"]

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]


@dataclass
class RPNOutput:
    """RPN head outputs for one image.

    Attributes:
        bbox_pred: float32 ``[H_f * W_f * k, 4]`` ``(dx, dy, dw, dh)``.
        cls_prob: float32 ``[H_f * W_f * k, 2]`` softmax; column 1 is "object".
        feature_shape: ``(H_f, W_f)``.
    """

    bbox_pred: F32
    cls_prob: F32
    feature_shape: tuple[int, int]


@dataclass
class Proposals:
    """RPN proposals and the intermediate index sets (for stage-by-stage diffs).

    Attributes:
        boxes: float32 ``[P, 4]`` ``(x1, y1, x2, y2)`` input pixels, in NMS selection order.
        scores: float32 ``[P]`` objectness, non-increasing.
        decoded: float32 ``[A_total, 4]`` all decoded anchors.
        kept: int64 indices into ``decoded`` of the positive-area boxes.
        top_k: int64 indices into ``decoded[kept]`` of the pre-NMS top-n, by score.
        nms: int64 indices into the top-n boxes, as NMS selected them.
    """

    boxes: F32
    scores: F32
    decoded: F32
    kept: I64
    top_k: I64
    nms: I64


def rpn_head(
    features: F32,
    tensors: Mapping[str, np.ndarray],
    config: ModelConfig,
    backend: str = "cpu",
) -> RPNOutput:
    """Run the RPN convolutions on a block3 map ``[1, H_f, W_f, C]``."""
    if features.ndim != 4 or features.shape[0] != 1:
        raise ValueError(
            f"features must be [1, H_f, W_f, C] (one image), got shape {features.shape}"
        )
    act = ops.relu6 if config.rpn_activation == "relu6" else ops.relu
    net = act(
        ops.conv2d(
            features, tensors["rpn/conv/kernel"], tensors["rpn/conv/bias"], padding="SAME",
            backend=backend,
        )
    )
    cls = ops.conv2d(
        net, tensors["rpn/cls_conv/kernel"], tensors["rpn/cls_conv/bias"], backend=backend
    )
    bbox = ops.conv2d(
        net, tensors["rpn/bbox_conv/kernel"], tensors["rpn/bbox_conv/bias"], backend=backend
    )
    cls_prob = ops.softmax(cls.reshape(-1, 2), axis=-1)  # [H_f*W_f*k,2]
    return RPNOutput(
        np.ascontiguousarray(bbox.reshape(-1, 4)), cls_prob,
        (int(features.shape[1]), int(features.shape[2])),
    )


def generate_proposals(
    bbox_pred: npt.ArrayLike,
    cls_prob: npt.ArrayLike,
    anchors: npt.ArrayLike,
    image_shape: tuple[int, int],
    config: ModelConfig,
    backend: str = "cpu",
) -> Proposals:
    """Decode, filter, top-n and NMS the RPN output (module docstring).

    Args:
        bbox_pred: float32 ``[A_total, 4]`` deltas, row-aligned with ``anchors``.
        cls_prob: float32 ``[A_total, 2]`` softmax (column 1 is used).
        anchors: float32 ``[A_total, 4]``.
        image_shape: ``(height, width)`` of the input image (used only when clipping).
        config: ``rpn_*`` fields and the box coder.

    Returns:
        :class:`Proposals`, at most ``rpn_post_nms_top_n`` boxes (fewer when NMS runs out).
    """
    deltas = np.asarray(bbox_pred, dtype=np.float32)
    probs = np.asarray(cls_prob, dtype=np.float32)
    anc = np.asarray(anchors, dtype=np.float32)
    if not (deltas.shape == anc.shape and probs.shape == (anc.shape[0], 2)):
        raise ValueError(
            f"bbox_pred {deltas.shape}, cls_prob {probs.shape} and anchors {anc.shape} must be "
            "[A, 4], [A, 2] and [A, 4] for the same A"
        )
    decoded = bx.decode(
        anc, deltas, variances=config.rpn_variances, plus_one=config.box_plus_one,
        decode_minus_one=config.decode_minus_one, clamp=config.delta_clamp,
    )  # [A,4]
    scores = np.ascontiguousarray(probs[:, 1])  # [A]
    kept = bx.filter_nonpositive(decoded)  # [K]
    b = decoded[kept]
    s = scores[kept]
    if config.rpn_clip_before_nms:
        b = bx.clip(b, image_shape, inclusive=config.clip_inclusive)
    k = min(config.rpn_pre_nms_top_n, int(s.shape[0]))
    _, top = ops.top_k(s, k)
    top = np.asarray(top, dtype=np.int64)
    b = b[top]
    s = s[top]
    sel = ops.nms(
        bx.to_yxyx(b), s, config.rpn_nms_threshold, config.rpn_post_nms_top_n, backend=backend
    )
    return Proposals(
        np.ascontiguousarray(b[sel]), np.ascontiguousarray(s[sel]), decoded, kept, top,
        np.asarray(sel, dtype=np.int64),
    )
