"""The workshop network in TensorFlow 2: the numerical reference for npfrcnn's NumPy model.

This re-creates, with plain TF ops in eager mode, what the workshop notebook computes with
``tf.layers`` (pipeline-spec 1.3, 1.4, 1.8): ``tf.nn.conv2d`` (explicit padding then VALID for
strided convs), non-fused ``tf.nn.batch_normalization``, ``tf.nn.max_pool2d`` (VALID pool1),
ReLU6 RPN, ``tf.nn.top_k``, ``tf.image.non_max_suppression``, ``tf.image.crop_and_resize`` and the
workshop's ``rcnn_proposals``. Weights are ``tf.Variable``s named by the workshop's TF variable
names (``weights/names.py``) and can be random (:func:`npfrcnn.weights.random_weights`) or given.

Stage methods mirror :class:`npfrcnn.FasterRCNN`'s so that each stage can be fed the same input
and diffed. Everything here imports TensorFlow lazily: this module is importable only with TF
installed and is never used by npfrcnn's inference path.

It deliberately does not import npfrcnn's anchor, box or op code: anchors, decoding, clipping and
area filtering are transcribed from the workshop here, so the parity tests compare two
independent implementations.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from npfrcnn.config import ModelConfig


@dataclass(frozen=True)
class _Unit:
    """One bottleneck unit as TF-slim's ``stack_blocks_dense`` runs it (pipeline-spec 1.4).

    Derived here from the spec, not taken from ``npfrcnn.resnet``: the oracle must not share
    the code it checks.
    """

    prefix: str
    depth_in: int
    depth: int
    stride: int
    rate: int

    @property
    def has_shortcut_conv(self) -> bool:
        return self.depth_in != self.depth


def _slim_units(config: ModelConfig) -> tuple[list[_Unit], list[_Unit]]:
    """``(block1..3 units, block4 units)``: each block's last unit has the stride (2 for
    block1..3, ``tail_stride`` for block4); once block1..3 reach ``output_stride`` (the root
    is at 4), later strides become dilation rates instead."""
    scope = f"resnet_v1_{3 * sum(config.units_per_block) + 2}"
    base: list[_Unit] = []
    current, rate, depth_in = 4, 1, config.root_depth
    for b in range(3):
        n, depth = config.units_per_block[b], 4 * config.base_depths[b]
        for k in range(1, n + 1):
            stride = 2 if k == n else 1
            prefix = f"{scope}/block{b + 1}/unit_{k}/bottleneck_v1"
            if current == config.output_stride:
                base.append(_Unit(prefix, depth_in, depth, 1, rate))
                rate *= stride
            else:
                base.append(_Unit(prefix, depth_in, depth, stride, 1))
                current *= stride
            depth_in = depth
    tail: list[_Unit] = []
    n, depth = config.units_per_block[3], 4 * config.base_depths[3]
    for k in range(1, n + 1):
        stride = config.tail_stride if k == n else 1
        prefix = f"{scope}/block4/unit_{k}/bottleneck_v1"
        tail.append(_Unit(prefix, depth_in, depth, stride, 1))
        depth_in = depth
    return base, tail

__all__ = ["TFReference", "reference_anchors", "save_checkpoint", "export_hdf5"]


def _tf() -> Any:
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    return tf


def reference_anchors(config: ModelConfig) -> np.ndarray:
    """The workshop's ``generate_anchors_reference`` + ``sort_anchors`` (spec 1.3), float64 [A, 4].

    Only the workshop's anchor convention (ratio = h/w, ratio-major, +-w/2, no +1) is written
    here; other profiles are not needed by the TF reference.
    """
    scales_grid, ratios_grid = np.meshgrid(
        np.asarray(config.anchor_scales, dtype=np.float64),
        np.asarray(config.anchor_ratios, dtype=np.float64),
    )
    base_scales = scales_grid.reshape(-1)
    base_ratios = ratios_grid.reshape(-1)
    heights = base_scales * np.sqrt(base_ratios) * config.anchor_base_size
    widths = base_scales / np.sqrt(base_ratios) * config.anchor_base_size
    anchors = np.column_stack([-widths / 2, -heights / 2, widths / 2, heights / 2])
    w = anchors[:, 2] - anchors[:, 0]
    h = anchors[:, 3] - anchors[:, 1]
    return anchors[np.lexsort((w * h, np.round(h / w, 1))), :]


class TFReference:
    """The workshop model in TF2, stage by stage.

    Args:
        config: a ``workshop``-convention configuration (any depth, widths, class count).
        tensors: name -> array for every name of ``expected_shapes(config)``.
    """

    def __init__(self, config: ModelConfig, tensors: Mapping[str, np.ndarray]) -> None:
        from npfrcnn.weights.hdf5 import WeightsError, check_tensors

        problems = check_tensors(config, tensors)
        if problems:
            raise WeightsError("TFReference", problems)
        unsupported = [
            f for f, want in (
                ("anchor_ratio_mode", "h/w"), ("anchor_order", "ratio_major"),
                ("anchor_plus_one", False), ("box_plus_one", False), ("stride_in", "3x3"),
                ("rpn_objectness", "softmax"), ("roi_op", "crop_and_resize"),
                ("background_first", True), ("rpn_variances", None), ("delta_clamp", None),
                ("anchor_offset", 0.0), ("roi_normalizer", "size"),
            ) if getattr(config, f) != want
        ]
        if unsupported:
            raise ValueError(
                f"TFReference only implements the workshop conventions; {unsupported} differ"
            )
        tf = _tf()
        self.tf = tf
        self.config = config
        self.variables = {
            name: tf.Variable(np.asarray(value, dtype=np.float32), name=name, trainable=False)
            for name, value in tensors.items()
        }

    # Building blocks ------------------------------------------------------------------------

    def _v(self, name: str) -> Any:
        return self.variables[name]

    def _bn(self, x: Any, scope: str) -> Any:
        p = scope + "/batch_normalization/"
        return self.tf.nn.batch_normalization(
            x, self._v(p + "moving_mean"), self._v(p + "moving_variance"), self._v(p + "beta"),
            self._v(p + "gamma"), self.config.bn_epsilon,
        )

    def _conv2d_same(self, x: Any, kernel: Any, stride: int, rate: int) -> Any:
        tf = self.tf
        if stride == 1:
            return tf.nn.conv2d(x, kernel, 1, "SAME", dilations=rate)
        k = int(kernel.shape[0])
        k_eff = k + (k - 1) * (rate - 1)
        beg = (k_eff - 1) // 2
        end = k_eff - 1 - beg
        x = tf.pad(x, [[0, 0], [beg, end], [beg, end], [0, 0]])
        return tf.nn.conv2d(x, kernel, stride, "VALID", dilations=rate)

    def _unit(self, x: Any, u: _Unit) -> Any:
        tf = self.tf
        p = u.prefix
        if u.has_shortcut_conv:
            sc = tf.nn.conv2d(x, self._v(p + "/shortcut/conv2d/kernel"), u.stride, "SAME")
            shortcut = self._bn(sc, p + "/shortcut")
        elif u.stride > 1:
            # slim's subsample: max_pooling2d([1, 1], strides=stride, padding='same').
            shortcut = tf.nn.max_pool2d(x, 1, u.stride, "SAME")
        else:
            shortcut = x
        r = tf.nn.conv2d(x, self._v(p + "/conv1/conv2d/kernel"), 1, "SAME")
        r = tf.nn.relu(self._bn(r, p + "/conv1"))
        r = self._conv2d_same(r, self._v(p + "/conv2/conv2d/kernel"), u.stride, u.rate)
        r = tf.nn.relu(self._bn(r, p + "/conv2"))
        r = tf.nn.conv2d(r, self._v(p + "/conv3/conv2d/kernel"), 1, "SAME")
        r = self._bn(r, p + "/conv3")
        return tf.nn.relu(shortcut + r)

    # Stages ---------------------------------------------------------------------------------

    def preprocess(self, image: np.ndarray) -> Any:
        """uint8 ``[H, W, 3]`` RGB -> float32 ``[1, H, W, 3]`` minus the RGB means."""
        tf = self.tf
        x = tf.cast(tf.convert_to_tensor(image)[None], tf.float32)
        return x - tf.constant(self.config.pixel_means, tf.float32)

    def features(self, x: Any) -> Any:
        """``run_base_network``: block3 of ResNet v1 at output stride 16."""
        tf = self.tf
        scope = self.config.scope
        net = self._conv2d_same(tf.convert_to_tensor(x), self._v(scope + "/conv1/conv2d/kernel"),
                                2, 1)
        net = tf.nn.relu(self._bn(net, scope + "/conv1"))
        net = tf.nn.max_pool2d(net, 3, 2, self.config.pool1_padding)
        for u in _slim_units(self.config)[0]:
            net = self._unit(net, u)
        return net

    def rpn(self, feature_map: Any) -> tuple[Any, Any]:
        """``run_rpn``: ``(rpn_bbox_pred [H_f*W_f*k, 4], rpn_cls_prob [H_f*W_f*k, 2])``."""
        tf = self.tf
        act = tf.nn.relu6 if self.config.rpn_activation == "relu6" else tf.nn.relu
        fm = tf.convert_to_tensor(feature_map)
        net = tf.nn.conv2d(fm, self._v("rpn/conv/kernel"), 1, "SAME") + self._v("rpn/conv/bias")
        net = act(net)
        cls = tf.nn.conv2d(net, self._v("rpn/cls_conv/kernel"), 1, "SAME") + self._v(
            "rpn/cls_conv/bias"
        )
        bbox = tf.nn.conv2d(net, self._v("rpn/bbox_conv/kernel"), 1, "SAME") + self._v(
            "rpn/bbox_conv/bias"
        )
        cls_prob = tf.nn.softmax(tf.reshape(cls, [-1, 2]))
        return tf.reshape(bbox, [-1, 4]), cls_prob

    def anchors(self, feature_map_shape: Sequence[int]) -> Any:
        """``generate_anchors``: float32 ``[H_f * W_f * k, 4]``, index ``(y * W_f + x) * k + a``."""
        tf = self.tf
        h_f, w_f = int(feature_map_shape[1]), int(feature_map_shape[2])
        ref = tf.constant(reference_anchors(self.config), tf.float32)  # [k,4]
        stride = float(self.config.output_stride)
        sx = tf.range(w_f, dtype=tf.float32) * stride
        sy = tf.range(h_f, dtype=tf.float32) * stride
        gx, gy = tf.meshgrid(sx, sy)  # [H_f,W_f]
        shifts = tf.stack([gx, gy, gx, gy], axis=-1)  # [H_f,W_f,4]
        return tf.reshape(shifts[:, :, None, :] + ref[None, None], [-1, 4])

    def _decode(self, refs: Any, deltas: Any) -> Any:
        tf = self.tf
        x1, y1, x2, y2 = tf.unstack(refs, axis=1)
        w = x2 - x1
        h = y2 - y1
        cx = x1 + 0.5 * w
        cy = y1 + 0.5 * h
        dx, dy, dw, dh = tf.unstack(deltas, axis=1)
        ncx = dx * w + cx
        ncy = dy * h + cy
        nw = tf.exp(dw) * w
        nh = tf.exp(dh) * h
        return tf.stack([ncx - 0.5 * nw, ncy - 0.5 * nh, ncx + 0.5 * nw, ncy + 0.5 * nh], axis=1)

    def _positive_area(self, boxes: Any) -> Any:
        tf = self.tf
        x1, y1, x2, y2 = tf.unstack(boxes, axis=1)
        return tf.maximum(x2 - x1, 0.0) * tf.maximum(y2 - y1, 0.0) > 0.0

    def _change_order(self, boxes: Any) -> Any:
        tf = self.tf
        x1, y1, x2, y2 = tf.unstack(boxes, axis=1)
        return tf.stack([y1, x1, y2, x2], axis=1)

    def _clip(self, boxes: Any, im_shape: Sequence[int]) -> Any:
        tf = self.tf
        height, width = float(im_shape[0]), float(im_shape[1])
        x1, y1, x2, y2 = tf.unstack(boxes, axis=1)
        x1 = tf.maximum(tf.minimum(x1, width - 1.0), 0.0)
        x2 = tf.maximum(tf.minimum(x2, width - 1.0), 0.0)
        y1 = tf.maximum(tf.minimum(y1, height - 1.0), 0.0)
        y2 = tf.maximum(tf.minimum(y2, height - 1.0), 0.0)
        return tf.stack([x1, y1, x2, y2], axis=1)

    def proposals(
        self, rpn_bbox_pred: Any, rpn_cls_prob: Any, anchors: Any
    ) -> dict[str, Any]:
        """Workshop RPN post-processing: decode -> area > 0 -> top_k -> NMS.

        Returns a dict with ``proposals`` [P, 4] and ``scores`` [P] (descending), and the
        intermediates ``decoded``, ``kept`` (indices of positive-area boxes), ``top_k`` (indices
        into the kept boxes) and ``nms`` (indices into the top-k boxes).
        """
        tf = self.tf
        c = self.config
        decoded = self._decode(tf.convert_to_tensor(anchors), tf.convert_to_tensor(rpn_bbox_pred))
        scores = tf.reshape(tf.convert_to_tensor(rpn_cls_prob)[:, 1], [-1])
        if c.rpn_clip_before_nms:
            raise ValueError("the workshop does not clip proposals before NMS")
        kept = tf.reshape(tf.where(self._positive_area(decoded)), [-1])
        boxes = tf.gather(decoded, kept)
        s = tf.gather(scores, kept)
        k = int(min(c.rpn_pre_nms_top_n, int(s.shape[0])))
        top = tf.nn.top_k(s, k=k)
        boxes = tf.gather(boxes, top.indices)
        s = top.values
        sel = tf.image.non_max_suppression(
            self._change_order(boxes), s, c.rpn_post_nms_top_n, iou_threshold=c.rpn_nms_threshold
        )
        return {
            "decoded": decoded,
            "kept": kept,
            "top_k": top.indices,
            "nms": sel,
            "proposals": tf.gather(boxes, sel),
            "scores": tf.gather(s, sel),
        }

    def normalize_boxes(self, proposals: Any, im_shape: Sequence[int]) -> Any:
        """``normalize_bboxes``: ``(y1 / H, x1 / W, y2 / H, x2 / W)`` float32, no clipping."""
        tf = self.tf
        height, width = tf.cast(im_shape[0], tf.float32), tf.cast(im_shape[1], tf.float32)
        x1, y1, x2, y2 = tf.unstack(tf.convert_to_tensor(proposals), axis=1)
        return tf.stack([y1 / height, x1 / width, y2 / height, x2 / width], axis=1)

    def roi_pool(self, feature_map: Any, proposals: Any, im_shape: Sequence[int]) -> Any:
        """``roi_pooling``: crop_and_resize 14x14 then 2x2/2 max-pool -> ``[P, 7, 7, C]``."""
        tf = self.tf
        boxes = self.normalize_boxes(proposals, im_shape)
        n = int(boxes.shape[0])
        crops = tf.image.crop_and_resize(
            tf.convert_to_tensor(feature_map), boxes, tf.zeros([n], tf.int32),
            [self.config.roi_crop_size, self.config.roi_crop_size],
        )
        return tf.nn.max_pool2d(crops, 2, 2, "VALID")

    def head(self, pooled: Any) -> tuple[Any, Any]:
        """``run_rcnn``: block4 tail, global mean, fc heads -> ``(bbox_pred, cls_prob)``."""
        tf = self.tf
        net = tf.convert_to_tensor(pooled)
        for u in _slim_units(self.config)[1]:
            net = self._unit(net, u)
        feats = tf.reduce_mean(net, [1, 2])
        logits = tf.matmul(feats, self._v("rcnn/fc_classifier/kernel")) + self._v(
            "rcnn/fc_classifier/bias"
        )
        bbox = tf.matmul(feats, self._v("rcnn/fc_bbox/kernel")) + self._v("rcnn/fc_bbox/bias")
        return bbox, tf.nn.softmax(logits)

    def detections(
        self, proposals: Any, bbox_pred: Any, cls_prob: Any, im_shape: Sequence[int]
    ) -> tuple[Any, Any, Any]:
        """The workshop's ``rcnn_proposals`` (spec 1.3): ``(boxes, labels, probs)``."""
        tf = self.tf
        c = self.config
        variances = tf.constant(c.rcnn_variances, tf.float32)
        proposals = tf.convert_to_tensor(proposals)
        bbox_pred = tf.convert_to_tensor(bbox_pred)
        cls_prob = tf.convert_to_tensor(cls_prob)
        all_boxes, all_labels, all_probs = [], [], []
        for class_id in range(c.num_classes):
            p = cls_prob[:, class_id + 1]
            d = bbox_pred[:, 4 * class_id: 4 * class_id + 4]
            boxes = self._clip(self._decode(proposals, d * variances), im_shape)
            keep = tf.logical_and(p >= c.min_prob, self._positive_area(boxes))
            boxes = tf.boolean_mask(boxes, keep)
            p = tf.boolean_mask(p, keep)
            idx = tf.image.non_max_suppression(
                self._change_order(boxes), p, c.class_max_detections,
                iou_threshold=c.class_nms_threshold,
            )
            all_boxes.append(tf.gather(boxes, idx))
            all_probs.append(tf.gather(p, idx))
            all_labels.append(tf.fill(tf.shape(idx), class_id))
        objects = tf.concat(all_boxes, 0)
        labels = tf.concat(all_labels, 0)
        probs = tf.concat(all_probs, 0)
        k = int(min(c.total_max_detections, int(probs.shape[0])))
        top = tf.nn.top_k(probs, k=k)
        return tf.gather(objects, top.indices), tf.gather(labels, top.indices), top.values

    def run(self, image: np.ndarray) -> dict[str, np.ndarray]:
        """Every stage on one uint8 ``[H, W, 3]`` image; all outputs as NumPy arrays."""
        im_shape = image.shape[:2]
        x = self.preprocess(image)
        fm = self.features(x)
        rpn_bbox, rpn_prob = self.rpn(fm)
        anchors = self.anchors(fm.shape)
        props = self.proposals(rpn_bbox, rpn_prob, anchors)
        pooled = self.roi_pool(fm, props["proposals"], im_shape)
        bbox_pred, cls_prob = self.head(pooled)
        boxes, labels, probs = self.detections(props["proposals"], bbox_pred, cls_prob, im_shape)
        out = {
            "input": x, "features": fm, "rpn_bbox_pred": rpn_bbox, "rpn_cls_prob": rpn_prob,
            "anchors": anchors, "pooled": pooled, "bbox_pred": bbox_pred, "cls_prob": cls_prob,
            "boxes": boxes, "labels": labels, "probs": probs,
        }
        out.update({f"rpn_{k}": v for k, v in props.items()})
        # np.array copies: writable, C-contiguous NumPy arrays (not views of TF buffers).
        return {k: np.array(v) for k, v in out.items()}

    def tensors(self) -> dict[str, np.ndarray]:
        """The current weights, name -> float32 array."""
        return {n: np.asarray(v.numpy()) for n, v in self.variables.items()}


def save_checkpoint(
    prefix: str | os.PathLike[str],
    tensors: Mapping[str, np.ndarray],
    extra: Mapping[str, np.ndarray] | None = None,
) -> str:
    """Write a TF1 name-based checkpoint (``tf.compat.v1.train.Saver``), as the notebook restores.

    Each tensor is saved under exactly its name (``resnet_v1_101/conv1/conv2d/kernel``), which is
    what ``tfe.restore_variables_on_create('checkpoint/fasterrcnn')`` matches by. ``extra`` adds
    more variables (e.g. ``global_step`` or optimizer slots, as a training run would leave).
    Returns the prefix written.
    """
    tf = _tf()
    items = dict(tensors)
    items.update(extra or {})
    graph = tf.Graph()
    with graph.as_default():
        var_list = {
            name: tf.compat.v1.Variable(np.asarray(value), name=name.replace(":", "_"))
            for name, value in items.items()
        }
        saver = tf.compat.v1.train.Saver(var_list=var_list)
        with tf.compat.v1.Session(graph=graph) as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            saver.save(sess, os.fspath(prefix), write_meta_graph=False)
    return os.fspath(prefix)


def export_hdf5(
    path: str | os.PathLike[str],
    reference: TFReference,
    classes: Sequence[str],
    provenance: Mapping[str, Any] | None = None,
) -> str:
    """Export a :class:`TFReference`'s variables (and config) to an npfrcnn HDF5 weights file."""
    from npfrcnn.weights.hdf5 import write

    prov = {"source": "npfrcnn.weights.tf_reference.TFReference", "source_sha256": None}
    prov.update(provenance or {})
    write(path, reference.config, classes, reference.tensors(), prov)
    return os.fspath(path)
