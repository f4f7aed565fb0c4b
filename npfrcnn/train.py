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
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from npfrcnn import losses as L
from npfrcnn.config import STANDARD_UNITS, ModelConfig, workshop
from npfrcnn.data import Dataset, Sample, dataset_sha256, load_image
from npfrcnn.targets import (
    AnchorTargetConfig,
    ProposalTargetConfig,
    anchor_targets,
    proposal_targets,
)

__all__ = [
    "TrainConfig",
    "units_for_depth",
    "small_config",
    "Trainer",
    "train",
]


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
    raise ValueError(
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

    ResNet of ``depth`` with widths ``(w, 2w, 4w, 4w)`` (``root_depth = w``), RPN depth
    ``8w``; by default anchors of 16, 32 and 64 pixels (base 32, scales 0.5..2, ratios
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
        base_depths=(w, 2 * w, 4 * w, 4 * w),
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
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)  # type: ignore[arg-type]
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


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

        self.net._bn = bn
        original_conv = self.net._conv2d_same

        def conv(x: Any, kernel: Any, stride: int, rate: int) -> Any:
            # TF's CPU Conv2DBackpropFilter has no dilations; atrous_conv2d (space_to_batch,
            # conv, batch_to_space) computes the same dilated SAME convolution and trains.
            if stride == 1 and rate > 1:
                return tf.nn.atrous_conv2d(x, kernel, rate, "SAME")
            return original_conv(x, kernel, stride, rate)

        self.net._conv2d_same = conv

    # Network pieces that return logits (TFReference returns probabilities) ------------------

    def _rpn_logits(self, fm: Any) -> tuple[Any, Any]:
        tf, v = self.tf, self.net.variables
        act = tf.nn.relu6 if self.config.rpn_activation == "relu6" else tf.nn.relu
        net = act(tf.nn.conv2d(fm, v["rpn/conv/kernel"], 1, "SAME") + v["rpn/conv/bias"])
        cls = tf.nn.conv2d(net, v["rpn/cls_conv/kernel"], 1, "SAME") + v["rpn/cls_conv/bias"]
        bbox = tf.nn.conv2d(net, v["rpn/bbox_conv/kernel"], 1, "SAME") + v["rpn/bbox_conv/bias"]
        return tf.reshape(cls, [-1, 2]), tf.reshape(bbox, [-1, 4])

    def _head_logits(self, pooled: Any) -> tuple[Any, Any]:
        from npfrcnn.resnet import tail_units

        tf, v = self.tf, self.net.variables
        net = pooled
        for u in tail_units(self.config):
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
            raise ValueError("the training set has no image with a box")
        epoch, k = divmod(step, len(usable))
        order = np.random.default_rng([self.tc.seed, 1, epoch]).permutation(len(usable))
        s: Sample = dataset.samples[usable[int(order[k])]]
        image = load_image(s.path)
        if image.shape[:2] != (s.height, s.width):
            raise ValueError(
                f"image {str(s.path)!r} is {image.shape[1]}x{image.shape[0]} but its annotation "
                f"says {s.width}x{s.height}"
            )
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
        """Restore what :meth:`save_checkpoint` wrote; returns its ``extra``."""
        with np.load(path) as z:
            for key in z.files:
                kind, _, name = key.partition(":")
                if kind == "w":
                    self.net.variables[name].assign(z[key])
                elif kind == "m":
                    self.m[name].assign(z[key])
                elif kind == "v":
                    self.v[name].assign(z[key])
            self.step_count = int(z["step"])
            meta = json.loads(str(z["meta"]))
        self.calibrated = True
        return dict(meta)


def checkpoint_meta(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``extra`` a checkpoint was saved with (dataset hash, train and model config)."""
    with np.load(path) as z:
        return dict(json.loads(str(z["meta"])))


class _Progress:
    """A one-line progress bar on a stream (a line per ``every`` steps when not a TTY)."""

    def __init__(self, total: int, start: int, stream: Any = None, every: int = 50) -> None:
        self.total, self.start = total, start
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.every = every
        self.t0 = time.perf_counter()
        self.avg: dict[str, float] = {}

    def update(self, step: int, losses: dict[str, float]) -> None:
        for k, v in losses.items():
            self.avg[k] = v if k not in self.avg else 0.95 * self.avg[k] + 0.05 * v
        done = step - self.start
        if not self.tty and step % self.every and step != self.total:
            return
        rate = done / max(time.perf_counter() - self.t0, 1e-9)
        eta = (self.total - step) / max(rate, 1e-9)
        width = 24
        fill = int(width * step / max(self.total, 1))
        parts = " ".join(f"{k} {v:.3f}" for k, v in self.avg.items())
        line = (
            f"step {step}/{self.total} [{'#' * fill}{'.' * (width - fill)}] {parts} "
            f"{rate:.1f} it/s eta {int(eta) // 60}m{int(eta) % 60:02d}s"
        )
        if self.tty:
            self.stream.write("\r" + line)
            if step == self.total:
                self.stream.write("\n")
        else:
            self.stream.write(line + "\n")
        self.stream.flush()


def train(
    dataset: Dataset,
    out: str | os.PathLike[str],
    *,
    config: ModelConfig | None = None,
    train_config: TrainConfig | None = None,
    resume: bool = False,
    command: str | None = None,
    progress: bool = True,
    stream: Any = None,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
) -> dict[str, Any]:
    """Train on ``dataset`` and export ``out`` (an npfrcnn HDF5 file).

    Args:
        dataset: from :mod:`npfrcnn.data` (boxes and 0-based classes).
        out: destination ``.h5``; the checkpoint is ``out + ".ckpt.npz"``.
        config: model configuration; default :func:`small_config` for the dataset's classes.
        train_config: :class:`TrainConfig`.
        resume: continue from the checkpoint (``FileNotFoundError`` if there is none).
        command: the command line recorded in the provenance.
        progress: progress bar on ``stream`` (default stderr).
        on_step: called with ``(step, losses)`` after every step.

    Returns:
        A summary: ``steps``, ``losses`` (one dict per step run in this call), ``out``,
        ``provenance``.
    """
    tc = train_config if train_config is not None else TrainConfig()
    cfg = config if config is not None else small_config(len(dataset.classes))
    if cfg.num_classes != len(dataset.classes):
        raise ValueError(
            f"config.num_classes is {cfg.num_classes} but the dataset has "
            f"{len(dataset.classes)} classes {dataset.classes}"
        )
    out = Path(out)
    ckpt = Path(str(out) + ".ckpt.npz")
    trainer = Trainer(cfg, dataset.classes, tc)
    sha = dataset_sha256(dataset)
    if resume:
        if not ckpt.is_file():
            raise FileNotFoundError(f"--resume: no checkpoint {str(ckpt)!r} to resume from")
        saved: dict[str, Any] = checkpoint_meta(ckpt).get("config") or {}
        now = cfg.to_dict()
        changed = [k for k in sorted(now) if saved and saved.get(k) != now[k]]
        if changed:
            diff = "; ".join(f"{k} was {saved.get(k)!r}, now {now[k]!r}" for k in changed)
            raise ValueError(
                f"--resume: checkpoint {str(ckpt)!r} was trained with another model "
                f"configuration ({diff}); resume with the options the run started with, or "
                "start afresh without --resume"
            )
        meta = trainer.load_checkpoint(ckpt)
        if meta.get("dataset_sha256") != sha:
            raise ValueError(
                f"--resume: checkpoint {str(ckpt)!r} was trained on another dataset "
                f"(sha256 {meta.get('dataset_sha256')}, this one {sha})"
            )
    else:
        trainer.calibrate(dataset)
    ckpt_meta = {"dataset_sha256": sha, "train_config": asdict(tc), "config": cfg.to_dict()}
    bar = _Progress(tc.steps, trainer.step_count, stream) if progress else None
    history = []
    try:
        while trainer.step_count < tc.steps:
            image, boxes, classes = trainer.example(dataset, trainer.step_count)
            losses = trainer.step(image, boxes, classes)
            if not all(math.isfinite(v) for v in losses.values()):
                raise FloatingPointError(
                    f"non-finite loss at step {trainer.step_count}: {losses}; the last "
                    f"checkpoint {str(ckpt)!r} is intact"
                )
            history.append(losses)
            if trainer.step_count % tc.checkpoint_every == 0 or trainer.step_count == tc.steps:
                trainer.save_checkpoint(ckpt, ckpt_meta)
            if bar is not None:
                bar.update(trainer.step_count, losses)
            if on_step is not None:
                on_step(trainer.step_count, losses)
    except KeyboardInterrupt:
        # Ctrl-C: keep every completed step (unless it struck inside an update, where the
        # weights are half-updated; then the previous checkpoint stands).
        if not trainer.updating and trainer.step_count > 0:
            trainer.save_checkpoint(ckpt, ckpt_meta)
        raise
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
    from npfrcnn.weights.hdf5 import write

    write(out, cfg, dataset.classes, trainer.tensors(), provenance)
    return {"steps": trainer.step_count, "losses": history, "out": str(out),
            "provenance": provenance}
