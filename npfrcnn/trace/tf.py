"""Trace the TensorFlow reference of the workshop profile (``weights/tf_reference.py``).

:func:`from_tf` runs :class:`npfrcnn.weights.tf_reference.TFReference` stage by stage on one or
more images and streams every stage of the ``c4`` family (:mod:`npfrcnn.trace.schema`) to a
trace file, so that ``npfrcnn compare`` can set npfrcnn's own trace (:func:`npfrcnn.trace.
trace_images`) against TensorFlow's.

Every array is computed by TensorFlow: the reference's stage methods, plus a few TF ops here
for the intermediates the reference computes but does not return by the schema's names (the
top-k as indices into all anchors, the candidates, block4's spatial mean). No npfrcnn numerics
code is used; npfrcnn provides only the configuration, the weights reader and the trace writer.

What the file declares (all true of what the reference computes, nothing is converted):

* ``layout`` NHWC (TF's), ``box_format`` xyxy: the reference keeps boxes and deltas as
  ``(x1, y1, x2, y2)`` and ``(dx, dy, dw, dh)``; it reorders to ``(y1, x1, y2, x2)`` only
  inside, for ``tf.image.non_max_suppression`` and ``crop_and_resize``, and no such array is
  written.
* ``boxes_normalized`` false: pixels of the image (C4 runs at the image's own size, so the
  original, resized and input sizes are one).
* ``background`` first: ``head/cls`` is the softmax with background in column 0;
  ``head/bbox`` holds ``4 * num_classes`` deltas (no background deltas).

Stage by stage (``T`` = TFReference method, ``+`` = TF ops in this module):

=========================== ==================================================================
``image``                   the uint8 image as given
``input``                   T ``preprocess``
``features/0``              T ``features``
``rpn/objectness/0``        T ``rpn`` (``rpn_cls_prob``, softmax [A, 2])
``rpn/deltas/0``            T ``rpn`` (``rpn_bbox_pred``)
``anchors/0``               T ``anchors``
``proposals/decoded``       T ``proposals`` (``decoded``)
``proposals/topk``          + ``tf.gather(kept, top_k)``: the reference's top-k indexes the
                            positive-area boxes; the schema indexes all anchors
``proposals/candidates``    + ``tf.gather(decoded, topk)`` (the workshop does not clip)
``proposals/candidate_scores`` + ``tf.gather(rpn_cls_prob[:, 1], topk)``
``proposals/keep``          T ``proposals`` (``nms``: indices into the candidates)
``proposals/boxes``         T ``proposals`` (``proposals``)
``proposals/scores``        T ``proposals`` (``scores``)
``pooled``                  T ``roi_pool``
``box_head``                + block4 and the spatial mean, with the reference's own unit
                            (``TFReference._unit`` over ``tf_reference._slim_units``): ``head``
                            does not return its representation
``head/cls``, ``head/bbox`` + the two fc layers of ``TFReference.head`` on that representation
                            (the same ops on the same tensors, so bitwise ``head``'s outputs;
                            block4 is not run twice)
``detections/*``            T ``detections`` (boxes xyxy in the image's pixels, 0-based labels)
=========================== ==================================================================
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from npfrcnn.trace.io import (
    ImageWriter,
    TraceWriter,
    file_meta,
    images_and_names,
    pixels_sha256,
)

__all__ = ["from_tf"]


def _import_tf() -> Any:
    # As the reference does (weights/tf_reference.py): oneDNN's reordered arithmetic off, quiet.
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        import tensorflow as tf
    except ImportError as e:
        raise ImportError(
            "npfrcnn.trace.from_tf needs TensorFlow, which is not installed "
            f"({e}); install it with `pip install tensorflow-cpu`"
        ) from e
    return tf


def _np(t: Any) -> np.ndarray:
    """A TF tensor as a NumPy array (a copy, not a view of TF's buffer)."""
    return np.array(t)


def _box_head(reference: Any, pooled: Any) -> tuple[Any, Any, Any]:
    """``TFReference.head``, keeping its representation: ``(feats, bbox_pred, cls_prob)``.

    The same TF ops as ``head`` (block4 with the reference's ``_unit``, ``reduce_mean`` over
    the spatial axes, the fc layers), so ``bbox_pred`` and ``cls_prob`` are ``head``'s.
    """
    from npfrcnn.weights.tf_reference import _slim_units

    tf = reference.tf
    net = tf.convert_to_tensor(pooled)
    for u in _slim_units(reference.config)[1]:
        net = reference._unit(net, u)
    feats = tf.reduce_mean(net, [1, 2])
    v = reference.variables
    logits = tf.matmul(feats, v["rcnn/fc_classifier/kernel"]) + v["rcnn/fc_classifier/bias"]
    bbox = tf.matmul(feats, v["rcnn/fc_bbox/kernel"]) + v["rcnn/fc_bbox/bias"]
    return feats, bbox, tf.nn.softmax(logits)


def _trace_one(
    reference: Any, image: np.ndarray, writer: TraceWriter, name: str
) -> ImageWriter:
    tf = reference.tf
    im_shape = (int(image.shape[0]), int(image.shape[1]))
    x = reference.preprocess(image)
    img = writer.image({
        "name": name, "sha256": pixels_sha256(image), "original_size": im_shape,
        "image_size": im_shape, "input_size": (int(x.shape[1]), int(x.shape[2])),
    })
    img.put("image", image)
    img.put("input", _np(x))
    fm = reference.features(x)
    del x
    img.put("features/0", _np(fm))
    rpn_bbox, rpn_prob = reference.rpn(fm)
    img.put("rpn/objectness/0", _np(rpn_prob))
    img.put("rpn/deltas/0", _np(rpn_bbox))
    anchors = reference.anchors(fm.shape)
    img.put("anchors/0", _np(anchors))
    props = reference.proposals(rpn_bbox, rpn_prob, anchors)
    del rpn_bbox, anchors
    decoded = props["decoded"]
    img.put("proposals/decoded", _np(decoded))
    topk = tf.gather(props["kept"], props["top_k"])
    img.put("proposals/topk", _np(topk))
    img.put("proposals/candidates", _np(tf.gather(decoded, topk)))
    img.put("proposals/candidate_scores", _np(tf.gather(rpn_prob[:, 1], topk)))
    img.put("proposals/keep", _np(props["nms"]))
    del decoded, topk, rpn_prob
    proposals = props["proposals"]
    img.put("proposals/boxes", _np(proposals))
    img.put("proposals/scores", _np(props["scores"]))
    del props
    pooled = reference.roi_pool(fm, proposals, im_shape)
    del fm
    img.put("pooled", _np(pooled))
    feats, bbox_pred, cls_prob = _box_head(reference, pooled)
    del pooled
    img.put("box_head", _np(feats))
    img.put("head/cls", _np(cls_prob))
    img.put("head/bbox", _np(bbox_pred))
    boxes, labels, probs = reference.detections(proposals, bbox_pred, cls_prob, im_shape)
    img.put("detections/boxes", _np(boxes))
    img.put("detections/scores", _np(probs))
    img.put("detections/labels", _np(labels))
    return img


def from_tf(
    reference: Any,
    images: npt.ArrayLike | Sequence[npt.ArrayLike],
    out: str | os.PathLike[str],
    *,
    names: str | Sequence[str] | None = None,
    weights_sha256: str = "",
    classes: Sequence[str] | None = None,
) -> Path:
    """Trace the TensorFlow reference on ``images`` into ``out`` (HDF5, or ``.npz``).

    Args:
        reference: a :class:`npfrcnn.weights.tf_reference.TFReference`, or the path of an
            npfrcnn HDF5 weights file (:func:`npfrcnn.weights.read`) from which one is built.
        images: one uint8 ``[H, W, 3]`` RGB image or a sequence of them.
        out: the trace file to write (published only if every image is traced).
        names: the images' names (``image_0``, ``image_1``, ... when not given).
        weights_sha256: sha256 of the weights file; for a path, that file's hash when empty.
        classes: the class names to record (a path's own names when not given).

    Returns:
        ``Path(out)``.
    """
    tf = _import_tf()
    images_ = images_and_names(images, names, "from_tf")
    if isinstance(reference, (str, os.PathLike)):
        from npfrcnn.config import ModelConfig
        from npfrcnn.trace._npfrcnn import file_sha256
        from npfrcnn.weights import read
        from npfrcnn.weights.tf_reference import TFReference

        wf = read(reference)
        if not isinstance(wf.config, ModelConfig):
            raise ValueError(
                f"{os.fspath(reference)}: the TensorFlow reference implements the workshop "
                f"(c4) profile only; this file is {type(wf.config).__name__}"
            )
        weights_sha256 = weights_sha256 or file_sha256(reference)
        if classes is None:
            classes = list(wf.classes)
        reference = TFReference(wf.config, wf.tensors)
    config = reference.config
    if classes is not None and len(classes) != int(config.num_classes):
        raise ValueError(f"{len(classes)} class names for {config.num_classes} classes")
    meta = file_meta(
        "c4", profile=str(getattr(config, "name", "") or "workshop"),
        producer=f"tensorflow {tf.__version__}", num_classes=int(config.num_classes),
        weights_sha256=weights_sha256, layout="NHWC", box_format="xyxy",
        boxes_normalized=False, background="first",
        classes=None if classes is None else list(classes),
    )
    with TraceWriter(out, meta) as w:
        for name, image in images_:
            _trace_one(reference, image, w, name)
    return Path(out)
