"""Trace a torchvision Faster R-CNN through ONNX: export it with every stage as a graph output,
then run the ONNX file in ONNX Runtime and write a trace (:mod:`npfrcnn.trace.schema`).

* :func:`export_torchvision` wraps a torchvision ``FasterRCNN`` in :class:`_StagedFasterRCNN`,
  an ``nn.Module`` whose ``forward`` calls the model's own parts in the order
  ``GeneralizedRCNN.forward`` does (transform, backbone body, FPN, RPN head, anchor generator,
  box coder, ``filter_proposals``, ``box_roi_pool``, ``box_head``, ``box_predictor``,
  ``postprocess_detections``, ``transform.postprocess``) and returns the stages, and exports it
  with torch's TorchScript-based exporter (``torch.onnx.export(..., dynamo=False)``) for one
  fixed image size. The graph outputs are named by their schema stage names (``features/0``,
  ``proposals/boxes``, ``detections/labels``, ...); what the trace declares (layout ``NCHW``,
  ``xyxy`` pixels, background first, family, profile, classes) is stored in the ONNX model's
  ``metadata_props``, with the keys of :func:`npfrcnn.trace.io.file_meta`.
* :func:`from_onnxruntime` runs such a file in ONNX Runtime on uint8 RGB images and writes a
  trace of every graph output that is a schema stage (other outputs are ignored), with the
  metadata read from the model, nothing guessed.

Besides the stages, the graph has one output ``image_size`` (int64 ``[2]``): the resized
image's size as the graph computes it, written as each image's ``image_size``. It can differ
from eager torchvision's by a pixel (:func:`traced_image_size`); the export warns when it does.

Why the TorchScript exporter: torchvision's detection code has explicit ONNX paths that are
taken only under the TorchScript tracer (``torchvision._is_tracing()`` is
``torch._C._get_tracing_state()``): the resize scale as a tensor, ``_onnx_batch_images``,
``_onnx_merge_levels`` in the pooler, and ``batched_nms``'s coordinate trick scripted with
``_script_if_tracing``; ``torchvision.ops.nms`` and ``roi_align`` have registered TorchScript
symbolics (``NonMaxSuppression``, ``RoiAlign``). Under ``torch.export`` (``dynamo=True``) none of
these branches are taken and the eager code's data-dependent control flow has to be traced
symbolically: with torch 2.14.1, ``torch.onnx.export(dynamo=True)`` of this wrapper fails in
``torch.export`` at ``batched_nms``'s ``boxes.numel() > 4000`` branch (a guard on the
data-dependent size left by ``remove_small_boxes``' boolean indexing).

Stages that torchvision computes inside one function without returning them
(``proposals/topk``, ``proposals/candidates``, ``proposals/candidate_scores``,
``proposals/keep``, ``roi_levels``, ``detections/candidates``, ``detections/candidate_scores``,
``detections/candidate_labels``, ``detections/keep``) are obtained by calling the same
torchvision functions and model attributes on the same tensors inside the wrapper
(``rpn._get_top_n_idx``, ``box_ops.clip_boxes_to_image``, ``remove_small_boxes``,
``batched_nms``, ``box_roi_pool.map_levels``, ``roi_heads.box_coder``, ...), a second time
beside the model's own calls, whose results are the ``proposals/boxes`` and
``detections/boxes`` outputs.

Only torch/torchvision (export) and onnxruntime (run) are imported, and only inside the
functions: ``import npfrcnn.trace.onnx`` needs neither.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from npfrcnn.trace.io import (
    TraceError,
    TraceWriter,
    file_meta,
    images_and_names,
    pixels_sha256,
)
from npfrcnn.trace.schema import FPN_LEVELS, POOLED_LEVELS, stage_info

__all__ = ["export_torchvision", "from_onnxruntime", "read_onnx_meta", "traced_image_size",
           "OnnxTraceError", "DEFAULT_OPSET", "META_PREFIX", "IMAGE_SIZE_OUTPUT"]

#: The opset used when ``opset`` is None: RoiAlign's ``coordinate_transformation_mode``
#: (``output_half_pixel`` = torchvision's ``aligned=False``) exists from opset 16.
DEFAULT_OPSET = 17
MIN_OPSET = 16
#: Keys of the exporter's own facts in ``metadata_props`` (beside the schema's file keys).
META_PREFIX = "npfrcnn."
#: The schema's file-metadata keys stored in ``metadata_props``, and their types.
_META_KEYS: dict[str, type] = {
    "family": str, "profile": str, "layout": str, "box_format": str, "boxes_normalized": bool,
    "background": str, "num_classes": int, "classes": list,
}


class OnnxTraceError(RuntimeError):
    """An export or an ONNX Runtime run that cannot produce a trace; the message says why."""


# Export ----------------------------------------------------------------------------------------


def _stage_names() -> list[str]:
    """The graph outputs of the export, in pipeline order (all schema stage names)."""
    out = ["input"]
    out += [f"body/{lvl}" for lvl in POOLED_LEVELS]
    out += [f"features/{lvl}" for lvl in FPN_LEVELS]
    for lvl in FPN_LEVELS:
        out += [f"rpn/objectness/{lvl}", f"rpn/deltas/{lvl}"]
    out += [f"anchors/{lvl}" for lvl in FPN_LEVELS]
    out += [
        "proposals/decoded", "proposals/topk", "proposals/candidates",
        "proposals/candidate_scores", "proposals/keep", "proposals/boxes", "proposals/scores",
        "roi_levels", "pooled", "box_head", "head/cls", "head/bbox",
        "detections/candidates", "detections/candidate_scores", "detections/candidate_labels",
        "detections/keep", "detections/boxes", "detections/scores", "detections/labels",
    ]
    for name in out:
        stage_info(name)  # every output is a schema stage
    return out


#: The graph's one output that is not a stage: the resized image's [h, w] as the graph computes
#: it (int64 [2]), which from_onnxruntime writes as the image's ``image_size``.
IMAGE_SIZE_OUTPUT = "image_size"


def traced_image_size(model: Any, height: int, width: int) -> tuple[int, int]:
    """The resized size of a ``height x width`` image under the TorchScript tracer.

    It can differ from eager torchvision's by a pixel: under tracing,
    ``GeneralizedRCNNTransform`` computes the scale in float32 (``min_size / min(h, w)`` as
    ``reciprocal() * min_size``, ``_fake_cast_onnx``) and the output size as
    ``floor(float32(h) * scale)``; eager torchvision computes both in Python doubles. For
    example with min/max size 160/256, 100x150 becomes 159x239 in the export, 160x240 eagerly.
    """
    import torch

    class _Probe(torch.nn.Module):
        def __init__(self, transform: Any) -> None:
            super().__init__()
            self.transform = transform

        def forward(self, image: torch.Tensor) -> torch.Tensor:
            images, _ = self.transform([image])
            return torch.stack([torch.as_tensor(v, dtype=torch.int64)
                                for v in images.image_sizes[0]])

    example = torch.zeros(3, height, width, dtype=torch.float32)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(_Probe(model.transform), (example,), check_trace=False)
        size = traced(example)
    return int(size[0]), int(size[1])


def _staged_module(model: Any, original_size: tuple[int, int]) -> Any:
    """``model`` wrapped so that ``forward(image [3, H, W])`` returns :func:`_stage_names`."""
    import torch
    from torchvision.models.detection.rpn import concat_box_prediction_layers
    from torchvision.ops import boxes as box_ops

    class _StagedFasterRCNN(torch.nn.Module):
        """torchvision's ``GeneralizedRCNN.forward`` (eval, one image), every stage returned."""

        def __init__(self, model: Any) -> None:
            super().__init__()
            self.model = model

        def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
            m = self.model
            rpn, heads = m.rpn, m.roi_heads
            images, _ = m.transform([image])
            x = images.tensors
            # GeneralizedRCNN: features = self.backbone(images.tensors), BackboneWithFPN's parts
            body = m.backbone.body(x)
            features = m.backbone.fpn(body)
            # RegionProposalNetwork.forward
            feats = list(features.values())
            objectness, pred_bbox_deltas = rpn.head(feats)
            anchors = rpn.anchor_generator(images, feats)
            num_per_level = [s[0] * s[1] * s[2] for s in (o[0].shape for o in objectness)]
            obj_flat, deltas_flat = concat_box_prediction_layers(objectness, pred_bbox_deltas)
            decoded = rpn.box_coder.decode(deltas_flat.detach(), anchors).view(1, -1, 4)
            boxes, scores = rpn.filter_proposals(
                decoded, obj_flat, images.image_sizes, num_per_level
            )
            # filter_proposals' intermediates: its own calls again, on the same tensors
            image_size = images.image_sizes[0]
            obj = obj_flat.detach().reshape(1, -1)
            top = rpn._get_top_n_idx(obj, num_per_level)
            levels = torch.cat([
                torch.full((int(n),), i, dtype=torch.int64) for i, n in enumerate(num_per_level)
            ])
            cand = box_ops.clip_boxes_to_image(decoded[0][top[0]], image_size)
            cand_scores = torch.sigmoid(obj[0][top[0]])
            k = box_ops.remove_small_boxes(cand, rpn.min_size)
            k = k[torch.where(cand_scores[k] >= rpn.score_thresh)[0]]
            k = k[box_ops.batched_nms(cand[k], cand_scores[k], levels[top[0]][k],
                                      rpn.nms_thresh)]
            # RoIHeads.forward (eval)
            pool = heads.box_roi_pool
            box_features = pool(features, boxes, images.image_sizes)
            roi_levels = pool.map_levels(boxes)
            head = heads.box_head(box_features)
            class_logits, box_regression = heads.box_predictor(head)
            det_boxes, det_scores, det_labels = heads.postprocess_detections(
                class_logits, box_regression, boxes, images.image_sizes
            )
            # postprocess_detections' intermediates: its own calls again
            pred = box_ops.clip_boxes_to_image(
                heads.box_coder.decode(box_regression, boxes), image_size
            )
            probs = torch.softmax(class_logits, -1)
            labels = torch.arange(probs.shape[-1]).view(1, -1).expand_as(probs)
            pred = pred[:, 1:].reshape(-1, 4)
            probs, labels = probs[:, 1:].reshape(-1), labels[:, 1:].reshape(-1)
            inds = torch.where(probs > heads.score_thresh)[0]
            pred, probs, labels = pred[inds], probs[inds], labels[inds]
            inds = box_ops.remove_small_boxes(pred, min_size=1e-2)
            pred, probs, labels = pred[inds], probs[inds], labels[inds]
            det_keep = box_ops.batched_nms(pred, probs, labels, heads.nms_thresh)
            # GeneralizedRCNNTransform.postprocess: back to the original image
            dets = m.transform.postprocess(
                [{"boxes": det_boxes[0], "scores": det_scores[0], "labels": det_labels[0]}],
                images.image_sizes, [original_size],
            )[0]
            return (
                x, *body.values(), *features.values(),
                *(t for pair in zip(obj_flat.reshape(-1).split(num_per_level),
                                    deltas_flat.split(num_per_level), strict=True)
                  for t in pair),
                *anchors[0].split(num_per_level),
                decoded[0], top[0], cand, cand_scores, k, boxes[0], scores[0],
                roi_levels, box_features, head, class_logits, box_regression,
                pred, probs, labels - 1, det_keep,
                dets["boxes"], dets["scores"], dets["labels"] - 1,
                torch.stack([torch.as_tensor(v, dtype=torch.int64) for v in image_size]),
            )

    return _StagedFasterRCNN(model)


def _profile(model: Any) -> str:
    from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead

    if isinstance(model.roi_heads.box_head, FastRCNNConvFCHead):
        return "torchvision-r50-fpn-v2"
    layer3 = getattr(model.backbone.body, "layer3", None)
    if layer3 is not None and len(layer3) == 23:
        return "torchvision-r101-fpn"
    return "torchvision-r50-fpn"


def _check_model(model: Any, height: int, width: int, opset: int) -> None:
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.backbone_utils import BackboneWithFPN
    from torchvision.ops import MultiScaleRoIAlign

    if not isinstance(model, FasterRCNN):
        raise TypeError(
            f"export_torchvision needs a torchvision.models.detection.FasterRCNN, got "
            f"{type(model).__name__}"
        )
    if model.training:
        raise ValueError("export_torchvision: the model is in training mode; call model.eval()")
    if not isinstance(model.backbone, BackboneWithFPN):
        raise ValueError(
            f"export_torchvision: the trace schema's 'fpn' family needs a BackboneWithFPN (a body "
            f"and an FPN), got {type(model.backbone).__name__}"
        )
    if not isinstance(model.roi_heads.box_roi_pool, MultiScaleRoIAlign):
        raise ValueError(
            "export_torchvision: box_roi_pool must be torchvision's MultiScaleRoIAlign, got "
            f"{type(model.roi_heads.box_roi_pool).__name__}"
        )
    if model.roi_heads.has_mask() or model.roi_heads.has_keypoint():
        warnings.warn("export_torchvision: the mask/keypoint branches are not exported (the "
                      "trace schema has box stages only)", stacklevel=3)
    if not (isinstance(height, int) and isinstance(width, int) and height > 0 and width > 0):
        raise ValueError(f"export_torchvision: height and width must be positive ints, got "
                         f"{height!r} x {width!r}")
    if opset < MIN_OPSET:
        raise ValueError(
            f"export_torchvision: opset {opset} is too old: torchvision's roi_align(aligned=False) "
            f"needs RoiAlign's coordinate_transformation_mode='output_half_pixel' (opset >= "
            f"{MIN_OPSET})"
        )


def export_torchvision(
    model: Any,
    path: str | os.PathLike[str],
    height: int,
    width: int,
    *,
    opset: int | None = None,
    profile: str | None = None,
    classes: Sequence[str] | None = None,
) -> Path:
    """Export a torchvision ``FasterRCNN`` (eval mode) to ONNX with every stage as an output.

    The graph's one input, ``image``, is a float32 ``[3, height, width]`` image in [0, 1]
    (``to_tensor`` of the uint8 RGB image); the size is fixed at export. The outputs are the
    schema stages named by their stage names, in torch's layout (``NCHW`` image-like stages,
    ``xyxy`` pixels, background column first, labels 0-based), plus ``image_size`` (the
    resized size the graph computes); ``metadata_props`` hold the trace's file metadata
    (``family``, ``profile``, ``layout``, ...) and the sizes (``npfrcnn.original_size``,
    ``npfrcnn.image_size``, ``npfrcnn.eager_image_size``, ``npfrcnn.input_size``). Warns when
    the export's resized size differs from eager torchvision's (:func:`traced_image_size`).

    ``profile`` defaults to one derived from the model (``torchvision-r50-fpn``,
    ``-r101-fpn``, ``-r50-fpn-v2``); ``classes`` optionally names the object classes. Uses the
    TorchScript exporter (``dynamo=False``; see the module's docstring). Returns ``path``.
    """
    try:
        import onnx
        import torch
    except ImportError as e:
        raise ImportError(
            f"export_torchvision needs torch, torchvision and onnx ({e}); "
            "pip install torch torchvision onnx"
        ) from None
    opset = DEFAULT_OPSET if opset is None else int(opset)
    _check_model(model, height, width, opset)
    path = Path(path)
    names = [*_stage_names(), IMAGE_SIZE_OUTPUT]
    example = torch.zeros(3, height, width, dtype=torch.float32)
    with torch.no_grad():
        # one eager run: checks the structure, sets box_roi_pool's scales, measures the sizes
        images, _ = model.transform([example])
        body = model.backbone.body(images.tensors)
        fpn = model.backbone.fpn(body)
        model.roi_heads.box_roi_pool(fpn, [torch.zeros(0, 4)], images.image_sizes)
    if len(body) != len(POOLED_LEVELS) or tuple(fpn) != FPN_LEVELS:
        raise ValueError(
            f"export_torchvision: the trace schema's 'fpn' family has body levels "
            f"{list(POOLED_LEVELS)} and FPN levels {list(FPN_LEVELS)}; this model has "
            f"{len(body)} body outputs and FPN levels {list(fpn)}"
        )
    num_classes = int(model.roi_heads.box_predictor.cls_score.out_features) - 1
    if classes is not None and len(classes) != num_classes:
        raise ValueError(f"export_torchvision: {len(classes)} class names for {num_classes} "
                         "object classes")
    meta = file_meta(
        "fpn", profile=profile or _profile(model), producer="", num_classes=num_classes,
        layout="NCHW", box_format="xyxy", boxes_normalized=False, background="first",
        classes=list(classes) if classes is not None else None,
    )
    eager_size = [int(v) for v in images.image_sizes[0]]
    traced_size = list(traced_image_size(model, height, width))
    if traced_size != eager_size:
        warnings.warn(
            f"export_torchvision: torchvision's ONNX (tracing) path resizes a {height}x{width} "
            f"image to {traced_size[0]}x{traced_size[1]}, eager torchvision to "
            f"{eager_size[0]}x{eager_size[1]} (GeneralizedRCNNTransform computes the scale and "
            "the size in float32 when traced, in float64 eagerly): the exported model does not "
            "reproduce torchvision at this image size; every stage from 'input' on differs",
            stacklevel=2,
        )
    sizes = {
        "original_size": [height, width], "image_size": traced_size,
        "eager_image_size": eager_size,
        "input_size": [int(v) for v in images.tensors.shape[-2:]],
    }
    wrapper = _staged_module(model, (height, width)).eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    t0 = time.perf_counter()
    try:
        with warnings.catch_warnings():
            # the legacy exporter's and the tracer's notices (a fixed-size trace is intended);
            # other warnings, e.g. about RoIAlign's sampling ratio, are let through
            for category in (DeprecationWarning, FutureWarning, torch.jit.TracerWarning):
                warnings.simplefilter("ignore", category=category)
            for message in ("To copy construct from a tensor", "Exporting aten::index"):
                warnings.filterwarnings("ignore", message=message, category=UserWarning)
            with torch.no_grad():
                torch.onnx.export(
                    wrapper, (example,), str(tmp), dynamo=False, opset_version=opset,
                    input_names=["image"], output_names=names, do_constant_folding=True,
                )
    except Exception as e:
        tmp.unlink(missing_ok=True)
        raise OnnxTraceError(
            f"export_torchvision: torch.onnx.export (TorchScript exporter, opset {opset}) failed "
            f"for a {height}x{width} input: {type(e).__name__}: {e}"
        ) from e
    seconds = time.perf_counter() - t0
    proto = onnx.load(str(tmp))
    got = [o.name for o in proto.graph.output]
    if got != names:
        tmp.unlink(missing_ok=True)
        raise OnnxTraceError(
            f"export_torchvision: the exported graph's outputs are {got}, expected {names} "
            "(an output that is the same tensor as another, or a folded constant, is renamed)"
        )
    props = {k: _meta_text(meta[k]) for k in _META_KEYS if k in meta}
    props.update({f"{META_PREFIX}{k}": json.dumps(v) for k, v in sizes.items()})
    props[f"{META_PREFIX}exporter"] = (
        f"torch {torch.__version__} torch.onnx.export(dynamo=False), opset {opset}"
    )
    props[f"{META_PREFIX}export_seconds"] = f"{seconds:.3f}"
    onnx.helper.set_model_props(proto, props)
    onnx.save(proto, str(tmp))
    os.replace(tmp, path)
    return path


def _meta_text(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, list):
        return json.dumps(v)
    return str(v)


def _meta_value(key: str, text: str, where: str) -> Any:
    kind = _META_KEYS[key]
    try:
        if kind is bool:
            if text not in ("true", "false"):
                raise ValueError(text)
            return text == "true"
        if kind is int:
            return int(text)
        if kind is list:
            v = json.loads(text)
            if not isinstance(v, list):
                raise ValueError(text)
            return v
    except ValueError:
        raise OnnxTraceError(f"{where}: metadata_props {key!r} is not a {kind.__name__}: "
                             f"{text!r}") from None
    return text


def read_onnx_meta(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The trace metadata an ONNX file declares (``metadata_props``), without running it.

    Returns the schema keys (``family``, ``layout``, ``num_classes``, ...) and, without their
    ``npfrcnn.`` prefix, the exporter's own (``original_size``, ``image_size``,
    ``input_size``, ``exporter``); raises :class:`OnnxTraceError` when a required key is
    missing.
    """
    try:
        import onnx
    except ImportError:
        raise ImportError("read_onnx_meta needs onnx: pip install onnx") from None
    proto = onnx.load(str(path), load_external_data=False)
    return _parse_props({p.key: p.value for p in proto.metadata_props}, str(path))


def _parse_props(props: dict[str, str], where: str) -> dict[str, Any]:
    required = [k for k in _META_KEYS if k != "classes"]
    missing = [k for k in required if k not in props]
    if missing:
        raise OnnxTraceError(
            f"{where}: the ONNX model's metadata_props lack {missing}: a trace declares its "
            "layout, box format and background, nothing is guessed (export it with "
            "npfrcnn.trace.onnx.export_torchvision, or set these keys with "
            "onnx.helper.set_model_props)"
        )
    out: dict[str, Any] = {k: _meta_value(k, props[k], where) for k in _META_KEYS if k in props}
    for k, v in props.items():
        if k.startswith(META_PREFIX):
            key = k[len(META_PREFIX):]
            try:
                out[key] = json.loads(v) if key.endswith("_size") else v
            except json.JSONDecodeError:
                raise OnnxTraceError(f"{where}: metadata_props {k!r} is not JSON: {v!r}") from None
    return out


# Running ---------------------------------------------------------------------------------------


def from_onnxruntime(
    path: str | os.PathLike[str],
    images: npt.NDArray[np.uint8] | Sequence[npt.NDArray[np.uint8]],
    out: str | os.PathLike[str],
    *,
    names: Sequence[str] | None = None,
    weights_sha256: str = "",
    providers: Sequence[str] = ("CPUExecutionProvider",),
) -> Path:
    """Run the ONNX file ``path`` in ONNX Runtime on each image; write the trace ``out``.

    ``images``: one uint8 ``[H, W, 3]`` RGB array or a sequence of them, each of the size the
    model was exported for. Each is fed as ``to_tensor`` would make it (float32 ``[3, H, W]``,
    divided by 255). Every graph output named by a schema stage is written, plus the ``image``
    stage; other outputs are ignored. The file metadata come from the model's
    ``metadata_props`` (:func:`read_onnx_meta`), ``producer`` is ``onnxruntime <version>``.
    ``out`` ending in ``.npz`` writes an npz, else HDF5. Returns ``out``.
    """
    try:
        import onnxruntime as ort
    except ImportError:
        raise ImportError(
            "from_onnxruntime needs ONNX Runtime: pip install onnxruntime"
        ) from None
    where = str(path)
    if not Path(path).is_file():
        raise FileNotFoundError(f"from_onnxruntime: no such ONNX file: {where}")
    pairs = images_and_names(images, names, "from_onnxruntime")
    imgs = [a for _, a in pairs]
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    try:
        sess = ort.InferenceSession(where, sess_options=opts, providers=list(providers))
    except Exception as e:
        raise OnnxTraceError(f"from_onnxruntime: ONNX Runtime cannot load {where}: {e}") from e
    props = dict(sess.get_modelmeta().custom_metadata_map)
    declared = _parse_props(props, where)
    inputs = sess.get_inputs()
    if len(inputs) != 1:
        raise OnnxTraceError(f"{where}: the graph must have one input (the image), has "
                             f"{[i.name for i in inputs]}")
    shape = inputs[0].shape
    if len(shape) != 3 or shape[0] != 3 or not all(isinstance(s, int) for s in shape[1:]):
        raise OnnxTraceError(
            f"{where}: the graph's input {inputs[0].name!r} must be a float [3, H, W] image of "
            f"a fixed size, got shape {shape}"
        )
    size = (int(shape[1]), int(shape[2]))
    outputs = []
    for o in sess.get_outputs():
        try:
            stage_info(o.name)
        except KeyError:
            continue  # not a schema stage: ignored
        outputs.append(o.name)
    stage_outputs = list(outputs)
    size_output = any(o.name == IMAGE_SIZE_OUTPUT for o in sess.get_outputs())
    if size_output:
        outputs.append(IMAGE_SIZE_OUTPUT)
    meta = file_meta(
        declared["family"], profile=declared["profile"],
        producer=f"onnxruntime {ort.__version__}", num_classes=declared["num_classes"],
        weights_sha256=weights_sha256, layout=declared["layout"],
        box_format=declared["box_format"], boxes_normalized=declared["boxes_normalized"],
        background=declared["background"], classes=declared.get("classes"),
    )
    for i, im in enumerate(imgs):
        if im.shape[:2] != size:
            raise ValueError(
                f"from_onnxruntime: image {i} is {im.shape[0]}x{im.shape[1]}, but {where} was "
                f"exported for {size[0]}x{size[1]} images (export_torchvision fixes the size; "
                "export one per size, or resize the image first)"
            )
    with TraceWriter(out, meta) as w:
        for i, im in enumerate(imgs):
            x = np.ascontiguousarray(im.transpose(2, 0, 1)).astype(np.float32) / np.float32(255)
            try:
                res = sess.run(outputs, {inputs[0].name: x})
            except Exception as e:
                raise OnnxTraceError(f"from_onnxruntime: {where} failed on image {i}: {e}") \
                    from e
            stages = dict(zip(stage_outputs, res[:len(stage_outputs)], strict=True))
            if size_output:
                image_size = [int(v) for v in res[-1]]
            elif "image_size" in declared:
                image_size = declared["image_size"]
            else:
                raise OnnxTraceError(
                    f"{where}: neither an {IMAGE_SIZE_OUTPUT!r} output nor metadata_props "
                    f"{META_PREFIX}image_size give the resized image's [h, w] inside the input"
                )
            if "input" in stages:
                input_size = [int(v) for v in stages["input"].shape[-2:]]
            elif "input_size" in declared:
                input_size = declared["input_size"]
            else:
                raise OnnxTraceError(f"{where}: neither an 'input' output nor metadata_props "
                                     f"{META_PREFIX}input_size give the network input's size")
            img = w.image({
                "name": pairs[i][0],
                "sha256": pixels_sha256(im), "original_size": list(im.shape[:2]),
                "image_size": image_size, "input_size": input_size,
            })
            img.put("image", im)
            for name, a in stages.items():
                if name == "image":
                    continue
                try:
                    img.put(name, a)
                except TraceError as e:
                    raise OnnxTraceError(f"{where}: output {name!r}: {e}") from None
    return Path(out)
