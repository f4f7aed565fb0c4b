"""Train an npfrcnn Faster R-CNN end to end (optional extra ``train``: needs TensorFlow).

The network is :class:`npfrcnn.weights.tf_reference.TFReference` (the workshop network in TF2,
with the same variable names as the HDF5 file), run in eager mode under ``tf.GradientTape``.
Targets and losses are npfrcnn's own NumPy code:

1. features and RPN outputs (logits ``[A, 2]``, deltas ``[A, 4]``) in TF;
2. :func:`npfrcnn.targets.anchor_targets` (Luminoth preset, with the workshop's box
   convention: no ``+1``, raw RPN deltas; ``TrainConfig.anchor_border`` can admit anchors that
   straddle the image border) on NumPy copies; RPN losses and their gradients from
   :func:`npfrcnn.losses.softmax_cross_entropy` and :func:`npfrcnn.losses.smooth_l1_loss`
   (``sigma = 3``);
3. proposals with the workshop's own post-processing (TF ``top_k`` and NMS on the current RPN
   output); they are constants for the gradient, as in Luminoth. The ground-truth boxes are
   appended to the proposals (py-faster-rcnn's practice; it gives the head foreground examples
   from the first step) and :func:`npfrcnn.targets.proposal_targets` (Luminoth preset, no
   ``+1``, variances ``(0.1, 0.2)``, the inverse of the model's ``rcnn_variances``) samples the
   RoI minibatch;
4. ``crop_and_resize`` of the sampled RoIs (differentiable w.r.t. the feature map), the head in
   TF; R-CNN losses and gradients from :func:`npfrcnn.losses.softmax_cross_entropy` and
   :func:`npfrcnn.losses.rcnn_box_loss`;
5. the four loss gradients (w.r.t. the four prediction tensors) go back into TF with
   ``tape.gradient(predictions, variables, output_gradients=grads)``; L2 weight decay on
   kernels is added there; Adam (written out below, so that its state checkpoints exactly).

Batch normalisation. The workshop network only has inference-mode BN (moving statistics).
Training from scratch here uses a data-dependent initialisation: before the first step, one
forward pass over a few training images sets every layer's ``moving_mean`` and
``moving_variance`` to the batch statistics of its input, layer after layer (so every layer
starts with zero-mean, unit-variance outputs); the statistics are then frozen and only
``gamma`` and ``beta`` (with the convs and heads) are trained. The exported file is therefore
exactly the network that was trained: no train/inference BN mismatch.

Dilated convolutions (``output_stride`` 8): TF's CPU kernels cannot back-propagate
``conv2d(dilations > 1)`` to the filter, so while training those convs run as
``tf.nn.atrous_conv2d`` (the same SAME dilated convolution via space-to-batch); the exported
network is run by npfrcnn and by the TF reference with ordinary dilated convolutions.

Checkpoints (``out + ".ckpt.npz"``, written atomically every ``checkpoint_every`` steps, at
the end, and on ``KeyboardInterrupt`` between steps) hold the weights, the Adam moments and
the step; :func:`train` with ``resume=True`` continues from there. The data order,
augmentation and target sampling of step ``s`` depend only on ``(seed, s)``, and TF op
determinism is on by default, so a resumed run reproduces an uninterrupted one bit for bit.
A fresh run (``resume=False``) refuses to replace an existing checkpoint unless
``overwrite=True``: that checkpoint may be hours of work.

Metrics (``metrics=``, the CLI's ``OUT.metrics.jsonl``): JSON Lines, one object per logged
step (every ``log_every`` steps and the last), appended and fsynced as the step ends, so a
killed run keeps every finished line::

    {"step": 120, "losses": {"rpn_cls": ..., "rpn_box": ..., "cls": ..., "box": ...,
     "total": ...}, "lr": 0.00099, "time": 1718000000.123, "elapsed_s": 61.2, "step_s": 0.48}

``step`` counts the steps done (1-based, as the checkpoint's step), ``losses`` are that step's
own (not smoothed), ``lr`` the learning rate it used, ``time`` the Unix time it ended,
``elapsed_s`` the seconds since this call started and ``step_s`` the step's duration. A fresh
run starts the file empty; a resumed run keeps the lines up to the checkpoint's step (steps
past it are redone, so their old lines are dropped, atomically) and appends after them.

Everything a user can get wrong raises :class:`TrainError` or
:class:`npfrcnn.data.DataError` (both ``ValueError``) with the fix in the message.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from npfrcnn import losses as L
from npfrcnn._io import atomic_write
from npfrcnn.config import STANDARD_UNITS, ModelConfig, workshop
from npfrcnn.data import (
    DataError,
    Dataset,
    Sample,
    check_image_size,
    dataset_sha256,
    load_image,
    same_file,
)
from npfrcnn.targets import (
    AnchorTargetConfig,
    ProposalTargetConfig,
    anchor_targets,
    proposal_targets,
)

__all__ = [
    "TrainError",
    "TrainConfig",
    "units_for_depth",
    "small_config",
    "Trainer",
    "train",
]


class TrainError(ValueError):
    """A training run cannot start or go on (bad settings, a checkpoint that does not fit,
    an output that would overwrite an input, a non-finite loss); the message says why and
    what to do."""


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings.

    Attributes:
        steps: optimiser steps (one image per step).
        learning_rate: Adam peak learning rate; linear warm-up over ``warmup`` steps, then
            cosine decay to ``learning_rate * final_lr_fraction``.
        weight_decay: L2 coefficient on conv and fc kernels (added to the gradient).
        seed: data order, flips and target sampling.
        checkpoint_every: steps between checkpoints.
        rpn_minibatch, rcnn_minibatch: anchors and RoIs sampled per image.
        flip: random horizontal flips.
        calibration_images: images for the BN data-dependent initialisation.
        anchor_border: anchors straddling the image by up to this many pixels take part in
            the RPN minibatch (Luminoth's ``allowed_border``: 0; Detectron2 disables the check).
            On small images most large anchors straddle the border; a large value trains them.
        deterministic: ``tf.config.experimental.enable_op_determinism()`` (process-wide), so
            that a run, and a resumed run, reproduce bit for bit; without it TF's threaded CPU
            reductions differ between runs in the last bits.

    Raises:
        TrainError: a count below 1 (``steps``, ``checkpoint_every``, the minibatches,
            ``calibration_images``), a negative ``warmup`` or ``seed``, a learning rate that is
            not a finite positive number, a negative or non-finite ``weight_decay`` or
            ``anchor_border``, or ``final_lr_fraction`` outside [0, 1]; all at once.
    """

    steps: int = 1000
    learning_rate: float = 1e-3
    warmup: int = 200
    final_lr_fraction: float = 0.02
    weight_decay: float = 1e-4
    seed: int = 0
    checkpoint_every: int = 500
    rpn_minibatch: int = 256
    rcnn_minibatch: int = 64
    flip: bool = True
    calibration_images: int = 8
    anchor_border: float = 0.0
    deterministic: bool = True

    def __post_init__(self) -> None:
        problems = []
        for name in ("steps", "checkpoint_every", "rpn_minibatch", "rcnn_minibatch",
                     "calibration_images"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                problems.append(f"{name} must be a positive integer, got {v!r}")
        for name in ("warmup", "seed"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
                problems.append(f"{name} must be an integer >= 0, got {v!r}")

        def number(name: str) -> float | None:
            v = getattr(self, name)
            try:
                f = float(v)
            except (TypeError, ValueError):
                problems.append(f"{name} must be a number, got {v!r}")
                return None
            if not math.isfinite(f):
                problems.append(f"{name} must be finite, got {v!r}")
                return None
            return f

        lr = number("learning_rate")
        if lr is not None and lr <= 0:
            problems.append(f"learning_rate must be positive, got {self.learning_rate!r}")
        for name in ("weight_decay", "anchor_border"):
            v = number(name)
            if v is not None and v < 0:
                problems.append(f"{name} must be >= 0, got {getattr(self, name)!r}")
        f = number("final_lr_fraction")
        if f is not None and not 0 <= f <= 1:
            problems.append(f"final_lr_fraction must be in [0, 1], got {f!r}")
        if problems:
            raise TrainError("TrainConfig: " + "; ".join(problems))

    def lr(self, step: int) -> float:
        """Learning rate of 0-based ``step``."""
        if step < self.warmup:
            return self.learning_rate * (step + 1) / self.warmup
        t = (step - self.warmup) / max(1, self.steps - self.warmup)
        f = self.final_lr_fraction
        return self.learning_rate * (f + (1 - f) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0))))


def units_for_depth(depth: int) -> tuple[int, int, int, int]:
    """Units per block: the standard ones for 50/101/152; else ``depth = 12 * u + 2`` equal."""
    if depth in STANDARD_UNITS:
        return STANDARD_UNITS[depth]
    if depth >= 14 and (depth - 2) % 12 == 0:
        u = (depth - 2) // 12
        return (u, u, u, u)
    raise TrainError(
        f"depth must be 50, 101, 152 or 12 * u + 2 (14, 26, 38, ...), got {depth!r}"
    )


def small_config(
    num_classes: int,
    depth: int = 14,
    width: int = 16,
    *,
    output_stride: int = 16,
    image_size: int = 128,
    anchor_base_size: float = 32.0,
    anchor_scales: tuple[float, ...] = (0.5, 1.0, 2.0),
    anchor_ratios: tuple[float, ...] = (0.5, 1.0, 2.0),
) -> ModelConfig:
    """A small ``workshop``-convention network for small images (the demo model's shape).

    ResNet of ``depth`` with bottleneck widths ``(w, 2w, 4w, 8w)`` (``root_depth = w``), RPN
    depth ``8w``: the meaning of ``npfrcnn random-model --width`` (``w = 64`` is the standard
    ResNet); by default anchors of 16, 32 and 64 pixels (base 32, scales 0.5..2, ratios
    0.5..2, height / width) for objects of 14..60 pixels: set ``anchor_base_size`` (pixels),
    ``anchor_scales`` and ``anchor_ratios`` for other object sizes (the Kaggle wheat heads,
    20..150 pixels on 1,024-pixel photos, suit base 64 with scales 0.5..2, i.e. 32..128 pixels);
    1,000 pre-NMS and 100 post-NMS proposals; 100 detections.
    ``output_stride`` 8 runs block2's last unit and block3 at stride 1 with dilated 3x3s
    (finer anchors and features for small objects). ``image_size`` is informational (anchors
    suit images of about 128 pixels).
    """
    del image_size
    w = int(width)
    return workshop(
        num_classes=num_classes,
        units_per_block=units_for_depth(depth),
        root_depth=w,
        base_depths=(w, 2 * w, 4 * w, 8 * w),
        rpn_depth=8 * w,
        anchor_base_size=float(anchor_base_size),
        anchor_scales=tuple(float(v) for v in anchor_scales),
        anchor_ratios=tuple(float(v) for v in anchor_ratios),
        rpn_pre_nms_top_n=1000,
        rpn_post_nms_top_n=100,
        class_max_detections=100,
        total_max_detections=100,
        output_stride=output_stride,
    )


def _he_init(config: ModelConfig, seed: int) -> dict[str, np.ndarray]:
    """Initial weights: He-normal convs, BN identity (calibrated later), small heads."""
    from npfrcnn.weights.names import expected_shapes

    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for name, shape in expected_shapes(config).items():
        leaf = name.rsplit("/", 1)[1]
        if leaf == "kernel" and name.startswith("rcnn/fc_bbox"):
            a = 0.001 * rng.standard_normal(shape)
        elif leaf == "kernel" and (name.startswith("rcnn/") or "cls_conv" in name
                                   or "bbox_conv" in name):
            a = 0.01 * rng.standard_normal(shape)
        elif leaf == "kernel":
            a = rng.standard_normal(shape) * np.sqrt(2.0 / np.prod(shape[:-1]))
        elif leaf in ("gamma", "moving_variance"):
            a = np.ones(shape)
        else:  # beta, moving_mean, bias
            a = np.zeros(shape)
        out[name] = np.asarray(a, dtype=np.float32)
    return out


def _atomic_savez(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """``np.savez`` into :func:`npfrcnn._io.atomic_write` (the folder must exist)."""
    with atomic_write(path, "wb") as f:
        np.savez(f, **arrays)  # type: ignore[arg-type]


class Trainer:
    """Holds the TF network, the Adam state and the step; one :meth:`step` per image.

    Args:
        config: model configuration (workshop conventions).
        classes: class names (``config.num_classes``).
        train_config: :class:`TrainConfig`.
        tensors: initial weights; default He initialisation (then BN calibration).
    """

    def __init__(
        self,
        config: ModelConfig,
        classes: Sequence[str],
        train_config: TrainConfig,
        tensors: dict[str, np.ndarray] | None = None,
    ) -> None:
        from npfrcnn.weights.tf_reference import TFReference

        self.config = config
        self.classes = [str(c) for c in classes]
        self.tc = train_config
        init = tensors if tensors is not None else _he_init(config, train_config.seed)
        self.net = TFReference(config, init)
        tf = self.net.tf
        self.tf = tf
        if train_config.deterministic:
            tf.config.experimental.enable_op_determinism()
        # Trainable copies: everything but the frozen BN statistics.
        self.trainable: list[str] = []
        for name in list(self.net.variables):
            if name.endswith("moving_mean") or name.endswith("moving_variance"):
                continue
            self.net.variables[name] = tf.Variable(
                self.net.variables[name].numpy(), name=name, trainable=True
            )
            self.trainable.append(name)
        self.m = {n: tf.Variable(tf.zeros_like(self.net.variables[n])) for n in self.trainable}
        self.v = {n: tf.Variable(tf.zeros_like(self.net.variables[n])) for n in self.trainable}
        self.step_count = 0
        self.calibrated = tensors is not None
        self.anchor_cfg = AnchorTargetConfig.luminoth().replace(
            plus_one=False, minibatch_size=train_config.rpn_minibatch,
            allowed_border=train_config.anchor_border,
        )
        self.proposal_cfg = ProposalTargetConfig.luminoth().replace(
            plus_one=False,
            minibatch_size=train_config.rcnn_minibatch,
            variances=(config.rcnn_variances[0], config.rcnn_variances[2]),
        )
        self._calibrating = False
        self._adam_fn: Any = None
        self.updating = False
        self._compiled: dict[str, Any] = {}
        original_bn = self.net._bn

        def bn(x: Any, scope: str) -> Any:
            if self._calibrating:
                p = scope + "/batch_normalization/"
                mean, var = tf.nn.moments(x, axes=[0, 1, 2])
                self.net.variables[p + "moving_mean"].assign(mean)
                self.net.variables[p + "moving_variance"].assign(var)
            return original_bn(x, scope)

        self.net._bn = bn  # type: ignore[method-assign]  # the trainer's calibrating BN
        original_conv = self.net._conv2d_same

        def conv(x: Any, kernel: Any, stride: int, rate: int) -> Any:
            # TF's CPU Conv2DBackpropFilter has no dilations; atrous_conv2d (space_to_batch,
            # conv, batch_to_space) computes the same dilated SAME convolution and trains.
            if stride == 1 and rate > 1:
                return tf.nn.atrous_conv2d(x, kernel, rate, "SAME")
            return original_conv(x, kernel, stride, rate)

        self.net._conv2d_same = conv  # type: ignore[method-assign]  # trainable dilation

    # Network pieces that return logits (TFReference returns probabilities) ------------------

    def _rpn_logits(self, fm: Any) -> tuple[Any, Any]:
        tf, v = self.tf, self.net.variables
        act = tf.nn.relu6 if self.config.rpn_activation == "relu6" else tf.nn.relu
        net = act(tf.nn.conv2d(fm, v["rpn/conv/kernel"], 1, "SAME") + v["rpn/conv/bias"])
        cls = tf.nn.conv2d(net, v["rpn/cls_conv/kernel"], 1, "SAME") + v["rpn/cls_conv/bias"]
        bbox = tf.nn.conv2d(net, v["rpn/bbox_conv/kernel"], 1, "SAME") + v["rpn/bbox_conv/bias"]
        return tf.reshape(cls, [-1, 2]), tf.reshape(bbox, [-1, 4])

    def _head_logits(self, pooled: Any) -> tuple[Any, Any]:
        from npfrcnn.weights.tf_reference import _slim_units

        tf, v = self.tf, self.net.variables
        net = pooled
        for u in _slim_units(self.config)[1]:  # block4, as the TF network defines it
            net = self.net._unit(net, u)
        feats = tf.reduce_mean(net, [1, 2])
        logits = tf.matmul(feats, v["rcnn/fc_classifier/kernel"]) + v["rcnn/fc_classifier/bias"]
        bbox = tf.matmul(feats, v["rcnn/fc_bbox/kernel"]) + v["rcnn/fc_bbox/bias"]
        return logits, bbox

    def _trunk(self, x: Any) -> tuple[Any, Any, Any]:
        fm = self.net.features(x)
        return (fm, *self._rpn_logits(fm))

    def _fn(self, which: str) -> Any:
        """Compiled (``tf.function``) trunk or head; gradients flow through them as usual."""
        if which not in self._compiled:
            tf = self.tf
            if which == "trunk":
                self._compiled[which] = tf.function(self._trunk, reduce_retracing=True)
            else:
                c = self.config.block3_channels
                p = self.config.roi_pool_size
                sig = [tf.TensorSpec([None, p, p, c], tf.float32)]
                self._compiled[which] = tf.function(self._head_logits, input_signature=sig)
        return self._compiled[which]

    # Data -------------------------------------------------------------------------------------

    def example(
        self, dataset: Dataset, step: int
    ) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.float32], npt.NDArray[np.int64]]:
        """Image, boxes and classes of ``step``: epoch-wise permutation by ``(seed, epoch)``,
        flip by ``(seed, step)``. Images without boxes are skipped by the permutation."""
        usable = [i for i, s in enumerate(dataset.samples) if s.boxes.shape[0] > 0]
        if not usable:
            raise DataError("the training set has no image with a box; annotate some images")
        epoch, k = divmod(step, len(usable))
        order = np.random.default_rng([self.tc.seed, 1, epoch]).permutation(len(usable))
        s: Sample = dataset.samples[usable[int(order[k])]]
        image = load_image(s.path)
        check_image_size(image, s)
        boxes = s.boxes.copy()
        if self.tc.flip and np.random.default_rng([self.tc.seed, 2, step]).random() < 0.5:
            image = image[:, ::-1].copy()
            boxes = np.stack(
                [s.width - boxes[:, 2], boxes[:, 1], s.width - boxes[:, 0], boxes[:, 3]], axis=1
            ).astype(np.float32)
        return image, boxes, s.classes

    def calibrate(self, dataset: Dataset) -> None:
        """BN data-dependent initialisation (module docstring) on ``calibration_images``."""
        tf = self.tf
        images, rois = [], []
        for i in range(min(self.tc.calibration_images, len(dataset))):
            image, boxes, _ = self.example(dataset, i)
            images.append(image)
            rois.append(boxes)
        shapes = {im.shape for im in images}
        if len(shapes) == 1:
            x = tf.concat([self.net.preprocess(im) for im in images], 0)
            self._calibrating = True
            try:
                fm = self.net.features(x)
                pooled = [
                    self.net.roi_pool(fm[j:j + 1], b, images[j].shape[:2])
                    for j, b in enumerate(rois)
                ]
                self._head_logits(tf.concat(pooled, 0))
            finally:
                self._calibrating = False
        else:  # mixed sizes: calibrate on the first image only
            self._calibrating = True
            try:
                fm = self.net.features(self.net.preprocess(images[0]))
                self._head_logits(self.net.roi_pool(fm, rois[0], images[0].shape[:2]))
            finally:
                self._calibrating = False
        self.calibrated = True

    # One step -----------------------------------------------------------------------------------

    def step(
        self, image: npt.NDArray[np.uint8], gt_boxes: np.ndarray, gt_classes: np.ndarray
    ) -> dict[str, float]:
        """One Adam step on one image; returns the four losses and their total."""
        losses, grads = self.losses_and_gradients(
            image, gt_boxes, gt_classes, np.random.default_rng([self.tc.seed, 3, self.step_count])
        )
        self._apply(grads)
        return losses

    def losses_and_gradients(
        self,
        image: npt.NDArray[np.uint8],
        gt_boxes: np.ndarray,
        gt_classes: np.ndarray,
        rng: np.random.Generator,
    ) -> tuple[dict[str, float], list[Any]]:
        """The losses on one image (targets sampled with ``rng``) and the gradient of their sum
        with respect to every trainable variable (``None`` where a variable has no effect).
        Nothing is updated."""
        tf = self.tf
        im_shape = image.shape[:2]
        x = self.net.preprocess(image)
        variables = [self.net.variables[n] for n in self.trainable]
        with tf.GradientTape() as tape:
            fm, rpn_logits, rpn_bbox = self._fn("trunk")(x)
            anchors = self.net.anchors(fm.shape)
            at = anchor_targets(anchors.numpy(), gt_boxes, im_shape, self.anchor_cfg, rng)
            props = self.net.proposals(
                tf.stop_gradient(rpn_bbox), tf.nn.softmax(tf.stop_gradient(rpn_logits)), anchors
            )["proposals"].numpy()
            candidates = np.concatenate([props, gt_boxes.astype(np.float32)], 0)
            pt = proposal_targets(candidates, gt_boxes, gt_classes, self.proposal_cfg, rng)
            keep = np.flatnonzero(pt.labels >= 0)
            rois = candidates[keep]
            pooled = self.net.roi_pool(fm, tf.constant(rois), im_shape)
            cls_logits, bbox_pred = self._fn("head")(pooled)
        l_rpn_cls, g_rpn_cls = L.softmax_cross_entropy(rpn_logits.numpy(), at.labels)
        l_rpn_box, g_rpn_box = L.smooth_l1_loss(
            rpn_bbox.numpy(), at.box_targets, sigma=3.0, mask=at.labels == 1
        )
        labels = pt.labels[keep]
        l_cls, g_cls = L.softmax_cross_entropy(cls_logits.numpy(), labels)
        l_box, g_box = L.rcnn_box_loss(bbox_pred.numpy(), labels, pt.box_targets[keep], sigma=1.0)
        grads = tape.gradient(
            [rpn_logits, rpn_bbox, cls_logits, bbox_pred],
            variables,
            output_gradients=[
                tf.constant(g, tf.float32) for g in (g_rpn_cls, g_rpn_box, g_cls, g_box)
            ],
        )
        losses = {"rpn_cls": l_rpn_cls, "rpn_box": l_rpn_box, "cls": l_cls, "box": l_box}
        losses["total"] = float(sum(losses.values()))
        return losses, list(grads)

    def _adam(self, grads: Sequence[Any], step_size: Any) -> None:
        """Adam (beta1 0.9, beta2 0.999, eps 1e-8) with L2 decay on kernels; ``step_size`` is
        the learning rate times Adam's bias correction."""
        tf = self.tf
        b1, b2 = 0.9, 0.999
        for name, g in zip(self.trainable, grads, strict=True):
            var = self.net.variables[name]
            if name.endswith("kernel"):
                g = g + self.tc.weight_decay * var
            m, v = self.m[name], self.v[name]
            m.assign(b1 * m + (1 - b1) * g)
            v.assign(b2 * v + (1 - b2) * tf.square(g))
            var.assign_sub(step_size * m / (tf.sqrt(v) + 1e-8))

    def _apply(self, grads: Sequence[Any]) -> None:
        tf = self.tf
        t = self.step_count + 1
        corr = math.sqrt(1 - 0.999**t) / (1 - 0.9**t)
        if self._adam_fn is None:
            self._adam_fn = tf.function(self._adam)
        grads = [tf.zeros_like(self.net.variables[n]) if g is None else g
                 for n, g in zip(self.trainable, grads, strict=True)]
        self.updating = True  # weights and step disagree until the step is counted
        self._adam_fn(grads, tf.constant(self.tc.lr(self.step_count) * corr, tf.float32))
        self.step_count += 1
        self.updating = False

    # State ----------------------------------------------------------------------------------

    def tensors(self) -> dict[str, np.ndarray]:
        """The current weights, name -> float32 array."""
        return self.net.tensors()

    def save_checkpoint(self, path: str | os.PathLike[str], extra: dict[str, Any]) -> None:
        """Weights, Adam moments, step and ``extra`` (JSON) to ``path`` atomically."""
        arrays = {f"w:{n}": a for n, a in self.tensors().items()}
        arrays.update({f"m:{n}": v.numpy() for n, v in self.m.items()})
        arrays.update({f"v:{n}": v.numpy() for n, v in self.v.items()})
        arrays["step"] = np.asarray(self.step_count, np.int64)
        arrays["meta"] = np.asarray(json.dumps(extra, sort_keys=True))
        _atomic_savez(Path(path), arrays)

    def load_checkpoint(self, path: str | os.PathLike[str]) -> dict[str, Any]:
        """Restore what :meth:`save_checkpoint` wrote; returns its ``extra``.

        Raises:
            TrainError: the file is not such a checkpoint, is damaged, or holds tensors of
                other names or shapes than this network's (nothing is half-restored: every
                tensor is checked before any is assigned).
        """
        fix = "start afresh without --resume (with --overwrite), or give the right --out"
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except (OSError, ValueError, EOFError, KeyError) as e:
            raise TrainError(f"checkpoint {str(path)!r} cannot be read ({e}); {fix}") from None
        meta = _meta_of(arrays, path)
        if "step" not in arrays:
            raise TrainError(f"checkpoint {str(path)!r} has no step; {fix}")
        slots = {"w": self.net.variables, "m": self.m, "v": self.v}
        problems = []
        for key, a in arrays.items():
            kind, _, name = key.partition(":")
            if kind not in slots:
                continue
            target = slots[kind].get(name)
            if target is None:
                problems.append(f"unknown tensor {key}")
            elif tuple(a.shape) != tuple(target.shape):
                problems.append(f"{key} has shape {list(a.shape)}, the network {target.shape}")
        missing = [f"{k}:{n}" for k in ("w", "m", "v")
                   for n in (self.trainable if k != "w" else self.net.variables)
                   if f"{k}:{n}" not in arrays]
        if missing:
            problems.append(f"{len(missing)} tensor(s) missing, e.g. {missing[0]}")
        if problems:
            raise TrainError(
                f"checkpoint {str(path)!r} does not fit this network ({'; '.join(problems[:5])}"
                f"); {fix}"
            )
        for key, a in arrays.items():
            kind, _, name = key.partition(":")
            if kind in slots:
                slots[kind][name].assign(a)
        self.step_count = int(arrays["step"])
        self.calibrated = True
        return meta


def _meta_of(arrays: dict[str, np.ndarray], path: str | os.PathLike[str]) -> dict[str, Any]:
    try:
        meta = json.loads(str(arrays["meta"]))
    except (KeyError, ValueError):
        raise TrainError(
            f"{str(path)!r} is not an npfrcnn training checkpoint (no readable 'meta'); start "
            "afresh without --resume, or give the right --out"
        ) from None
    if not isinstance(meta, dict):
        raise TrainError(f"{str(path)!r}: its 'meta' is not a JSON object")
    return dict(meta)


def checkpoint_meta(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``extra`` a checkpoint was saved with (dataset hash, train and model config), and
    its ``step``. ``TrainError`` if it is not a readable checkpoint."""
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in ("meta", "step") if k in z.files}
    except (OSError, ValueError, EOFError) as e:
        raise TrainError(
            f"checkpoint {str(path)!r} cannot be read ({e}); start afresh without --resume "
            "(with --overwrite)"
        ) from None
    meta = _meta_of(arrays, path)
    if "step" in arrays:
        meta.setdefault("step", int(arrays["step"]))
    return meta


def _columns(stream: Any) -> int:
    """Columns of the terminal ``stream`` writes to (80 if unknown)."""
    try:
        return max(20, os.get_terminal_size(stream.fileno()).columns)
    except (AttributeError, OSError, ValueError):
        return max(20, shutil.get_terminal_size((80, 24)).columns)


class _Progress:
    """A one-line progress bar on a TTY, cut to the terminal's width (one column left free,
    so no terminal wraps it); elsewhere a line per ``every`` steps."""

    def __init__(self, total: int, start: int, stream: Any = None, every: int = 50) -> None:
        self.total, self.start = total, start
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.every = every
        self.t0 = time.perf_counter()
        self.avg: dict[str, float] = {}

    def line(self, step: int, columns: int | None = None) -> str:
        """The status line of ``step``; at most ``columns - 1`` characters when given."""
        done = step - self.start
        rate = done / max(time.perf_counter() - self.t0, 1e-9)
        eta = (self.total - step) / max(rate, 1e-9)
        stats = (f"step {step}/{self.total} {rate:.1f} it/s eta {int(eta) // 60}m"
                 f"{int(eta) % 60:02d}s")
        losses = " ".join(f"{k} {v:.3f}" for k, v in self.avg.items())
        if columns is None:
            return f"{stats} {losses}"
        room = columns - 1
        width = max(0, min(24, room - len(stats) - 3 - 20))
        fill = int(width * step / max(self.total, 1))
        bar = f" [{'#' * fill}{'.' * (width - fill)}]" if width else ""
        text = stats + bar
        if len(text) + 1 + len(losses) <= room:
            text += " " + losses
        elif "total" in self.avg and len(text) + 12 <= room:
            text += f" total {self.avg['total']:.3f}"
        return text[:room]

    def update(self, step: int, losses: dict[str, float]) -> None:
        for k, v in losses.items():
            self.avg[k] = v if k not in self.avg else 0.95 * self.avg[k] + 0.05 * v
        if not self.tty and step % self.every and step != self.total:
            return
        if self.tty:
            self.stream.write("\r\x1b[K" + self.line(step, _columns(self.stream)))
            if step == self.total:
                self.stream.write("\n")
        else:
            self.stream.write(self.line(step) + "\n")
        self.stream.flush()

    def close(self) -> None:
        """End the bar's line (on a TTY) so that a message after it starts on its own."""
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


def _refuse_overwriting_inputs(dataset: Dataset, outputs: dict[str, Path]) -> None:
    """``TrainError`` if an output would replace one of the dataset's files."""
    inputs = [*dataset.files, *(s.path for s in dataset.samples)]
    for what, out in outputs.items():
        for p in inputs:
            if same_file(out, p):
                raise TrainError(
                    f"{what} {str(out)!r} is the dataset's file {str(p)!r}: writing it would "
                    "destroy an input; choose another --out"
                )
    names = list(outputs.items())
    for i, (wa, a) in enumerate(names):
        for wb, b in names[i + 1:]:
            if same_file(a, b):
                raise TrainError(f"{wa} and {wb} are the same file {str(a)!r}; give another one")


def _metrics_lines(path: Path, upto: int) -> list[str]:
    """The complete lines of an earlier metrics file whose ``step`` is at most ``upto``."""
    from npfrcnn._io import read_lines

    lines, _, _ = read_lines(path)
    kept = []
    for line in lines:
        try:
            step = json.loads(line).get("step")
        except (ValueError, AttributeError):
            continue  # not a record of ours: dropped
        if isinstance(step, int) and step <= upto:
            kept.append(line)
    return kept


def train(
    dataset: Dataset,
    out: str | os.PathLike[str],
    *,
    config: ModelConfig | None = None,
    train_config: TrainConfig | None = None,
    resume: bool = False,
    overwrite: bool = False,
    command: str | None = None,
    progress: bool = True,
    stream: Any = None,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
    metrics: str | os.PathLike[str] | None = None,
    log_every: int = 1,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Train on ``dataset`` and export ``out`` (an npfrcnn HDF5 file).

    Args:
        dataset: from :mod:`npfrcnn.data` (boxes and 0-based classes).
        out: destination ``.h5``; the checkpoint is ``out + ".ckpt.npz"``. Its folder must
            exist.
        config: model configuration; default :func:`small_config` for the dataset's classes.
        train_config: :class:`TrainConfig`.
        resume: continue from the checkpoint (``TrainError`` if there is none, if it was
            trained with another model configuration or dataset, or if it is past
            ``train_config.steps``).
        overwrite: a fresh run may replace an existing checkpoint (default: refused).
        command: the command line recorded in the provenance.
        progress: progress bar on ``stream`` (default stderr).
        on_step: called with ``(step, losses)`` after every step.
        metrics: JSON Lines metrics file (module docstring); None: none.
        log_every: a metrics line every this many steps (and at the last step).
        log: called with one-line messages (the step resumed from); default: none.

    Returns:
        A summary: ``steps``, ``losses`` (one dict per step run in this call), ``out``,
        ``provenance``, ``resumed_from`` (the checkpoint's step, or None).

    Raises:
        TrainError: see ``resume`` and ``overwrite``; an output that is one of the dataset's
            files (annotations, images); a non-finite loss (the last checkpoint is kept).
        DataError: an empty dataset, no image with a box, an image whose size disagrees
            with its annotation.
    """
    tc = train_config if train_config is not None else TrainConfig()
    cfg = config if config is not None else small_config(len(dataset.classes))
    say = log if log is not None else (lambda msg: None)
    if cfg.num_classes != len(dataset.classes):
        raise TrainError(
            f"config.num_classes is {cfg.num_classes} but the dataset has "
            f"{len(dataset.classes)} classes {dataset.classes}"
        )
    if len(dataset) == 0:
        raise DataError(f"the dataset {str(dataset.root)!r} has no image")
    if not any(s.boxes.shape[0] for s in dataset.samples):
        raise DataError(
            f"the dataset {str(dataset.root)!r} has no image with a box; nothing to train on"
        )
    if isinstance(log_every, bool) or not isinstance(log_every, int) or log_every < 1:
        raise TrainError(f"log_every must be a positive integer, got {log_every!r}")
    out = Path(out)
    ckpt = Path(str(out) + ".ckpt.npz")
    metrics_path = Path(metrics) if metrics is not None else None
    outputs = {"the model (--out)": out, "the checkpoint": ckpt}
    if metrics_path is not None:
        outputs["the metrics file"] = metrics_path
    _refuse_overwriting_inputs(dataset, outputs)
    saved_meta: dict[str, Any] = {}
    if resume:
        if not ckpt.is_file():
            raise TrainError(
                f"--resume: no checkpoint {str(ckpt)!r} to resume from; start without --resume"
            )
        saved_meta = checkpoint_meta(ckpt)
        saved: dict[str, Any] = saved_meta.get("config") or {}
        now = cfg.to_dict()
        changed = [k for k in sorted(now) if saved and saved.get(k) != now[k]]
        if changed:
            diff = "; ".join(f"{k} was {saved.get(k)!r}, now {now[k]!r}" for k in changed)
            raise TrainError(
                f"--resume: checkpoint {str(ckpt)!r} was trained with another model "
                f"configuration ({diff}); resume with the options the run started with, or "
                "start afresh without --resume"
            )
        at = int(saved_meta.get("step", 0))
        if at > tc.steps:
            raise TrainError(
                f"--resume: checkpoint {str(ckpt)!r} is at step {at}, past --steps {tc.steps}; "
                f"give --steps {at} or more"
            )
    elif ckpt.exists() and not overwrite:
        raise TrainError(
            f"checkpoint {str(ckpt)!r} of an earlier run exists: continue it with --resume, or "
            "start afresh with --overwrite (which replaces it)"
        )
    trainer = Trainer(cfg, dataset.classes, tc)
    sha = dataset_sha256(dataset)
    resumed_from: int | None = None
    if resume:
        if saved_meta.get("dataset_sha256") != sha:
            raise TrainError(
                f"--resume: checkpoint {str(ckpt)!r} was trained on another dataset "
                f"(sha256 {saved_meta.get('dataset_sha256')}, this one {sha}); resume on the "
                "dataset the run started with, or start afresh without --resume"
            )
        trainer.load_checkpoint(ckpt)
        resumed_from = trainer.step_count
        before = saved_meta.get("train_config") or {}
        now_tc = asdict(tc)
        differ = [f"{k} {before[k]!r} -> {now_tc[k]!r}" for k in sorted(now_tc)
                  if k in before and before[k] != now_tc[k]]
        say(f"resumed from step {resumed_from} of {tc.steps} (checkpoint {ckpt})"
            + (f"; training settings changed: {', '.join(differ)}" if differ else ""))
    else:
        trainer.calibrate(dataset)
    sink = None
    if metrics_path is not None:
        from npfrcnn._io import LineLog

        if resume and metrics_path.is_file():
            kept = _metrics_lines(metrics_path, trainer.step_count)
            with atomic_write(metrics_path, "w") as f:
                f.write("".join(line + "\n" for line in kept))
            sink = LineLog(metrics_path, truncate=False)
        else:
            sink = LineLog(metrics_path, truncate=True)
    ckpt_meta = {"dataset_sha256": sha, "train_config": asdict(tc), "config": cfg.to_dict()}
    bar = _Progress(tc.steps, trainer.step_count, stream) if progress else None
    history = []
    t_start = time.perf_counter()
    try:
        while trainer.step_count < tc.steps:
            t_step = time.perf_counter()
            lr = tc.lr(trainer.step_count)
            image, boxes, classes = trainer.example(dataset, trainer.step_count)
            losses = trainer.step(image, boxes, classes)
            if not all(math.isfinite(v) for v in losses.values()):
                raise TrainError(
                    f"non-finite loss at step {trainer.step_count}: {losses}; the last "
                    f"checkpoint {str(ckpt)!r} is intact: resume from it with a lower --lr"
                )
            history.append(losses)
            if trainer.step_count % tc.checkpoint_every == 0 or trainer.step_count == tc.steps:
                trainer.save_checkpoint(ckpt, ckpt_meta)
            t_end = time.perf_counter()
            if sink is not None and (
                trainer.step_count % log_every == 0 or trainer.step_count == tc.steps
            ):
                sink.write(json.dumps({
                    "step": trainer.step_count, "losses": losses, "lr": lr,
                    "time": round(time.time(), 3), "elapsed_s": round(t_end - t_start, 4),
                    "step_s": round(t_end - t_step, 4),
                }))
            if bar is not None:
                bar.update(trainer.step_count, losses)
            if on_step is not None:
                on_step(trainer.step_count, losses)
    except KeyboardInterrupt:
        # Ctrl-C: keep every completed step (unless it struck inside an update, where the
        # weights are half-updated; then the previous checkpoint stands).
        if bar is not None:
            bar.close()
        if not trainer.updating and trainer.step_count > 0:
            trainer.save_checkpoint(ckpt, ckpt_meta)
        raise
    except BaseException:
        if bar is not None:
            bar.close()
        raise
    finally:
        if sink is not None:
            sink.close()
    provenance = {
        "source": "npfrcnn train (npfrcnn.train, TF reference network, npfrcnn targets/losses)",
        "source_sha256": None,
        "command": command if command is not None else " ".join(sys.argv),
        "data_dir": str(dataset.root),
        "data_format": dataset.format,
        "data_seed": dataset.meta.get("seed"),
        "data_images": len(dataset),
        "dataset_sha256": sha,
        "steps": trainer.step_count,
        "train_seed": tc.seed,
        "train_config": asdict(tc),
        "bn": "data-dependent init of moving statistics, then frozen; gamma/beta trained",
    }
    if resumed_from is not None:
        provenance["resumed_from_step"] = resumed_from
    from npfrcnn.weights.hdf5 import write

    # weights.hdf5.write writes atomically itself (temporary file, then rename).
    write(out, cfg, dataset.classes, trainer.tensors(), provenance)
    return {"steps": trainer.step_count, "losses": history, "out": str(out),
            "provenance": provenance, "resumed_from": resumed_from}
