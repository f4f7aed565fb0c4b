"""Trace a real torchvision Faster R-CNN: its own forward pass, observed stage by stage.

:func:`from_torchvision` runs ``model([to_tensor(image)])`` (the model's own ``forward``, one
image per call) and records every stage of the trace schema (:mod:`npfrcnn.trace.schema`) as
torchvision computes it, writing each one to the file as soon as it exists. Nothing is
recomputed here: every array is a tensor that torchvision's code produced on that run.

* Module outputs, by forward hooks (``register_forward_hook``): ``model.transform`` (``input``
  and the image sizes), ``backbone.body`` (``body/*``), ``backbone.fpn`` (``features/*``; a
  backbone without ``body``/``fpn`` is hooked as a whole for ``features/*``), ``rpn.head``
  (``rpn/objectness/*``, ``rpn/deltas/*``), ``rpn.anchor_generator`` (``anchors/*``),
  ``roi_heads.box_roi_pool`` (``pooled``), ``roi_heads.box_head`` (``box_head``) and
  ``roi_heads.box_predictor`` (``head/cls``, ``head/bbox``).
* Intermediates that are not module outputs, by wrapping torchvision's own functions for the
  duration of the call (each wrapper calls the original with the same arguments and returns its
  result unchanged):

  - ``model.rpn.box_coder.decode`` (instance attribute): ``proposals/decoded``;
  - ``model.rpn._get_top_n_idx`` (instance attribute): ``proposals/topk``;
  - ``model.rpn.filter_proposals`` (instance attribute): ``proposals/boxes``,
    ``proposals/scores``; while it runs, a ``TorchFunctionMode`` observes its
    ``torch.sigmoid`` (``proposals/candidate_scores``), and the functions of
    ``torchvision.ops.boxes`` that it calls through ``box_ops`` are observed:
    ``clip_boxes_to_image`` (``proposals/candidates``), ``remove_small_boxes`` and
    ``batched_nms`` (``proposals/keep``, below);
  - ``torchvision.ops.poolers._multiscale_roi_align`` while ``box_roi_pool`` runs: it is
    handed a proxy of the pool's own level mapper that records what the mapper returns
    (``roi_levels``); the pool's ``map_levels`` attribute is not touched;
  - ``model.roi_heads.postprocess_detections`` (instance attribute): while it runs,
    ``batched_nms``'s inputs are ``detections/candidates``, ``candidate_scores`` and
    ``candidate_labels`` (the boxes that passed the score and size filters) and its output
    is ``detections/keep``;
  - the final ``detections/*`` are the forward's return value (labels minus 1: the schema's
    labels are 0-based, background excluded).

``proposals/keep`` (indices into ``proposals/candidates``) is ``small[score][nms]``: ``small`` is
``remove_small_boxes``'s output, ``nms`` is ``batched_nms``'s, and ``score`` (the RPN's
``scores >= score_thresh`` filter, a ``torch.where`` inside ``filter_proposals``) is recovered as
the positions of ``batched_nms``'s input scores within the size-filtered candidate scores: that
filter depends on the score alone, so equal scores are kept or dropped together and the greedy
match is exact; the recovered indices are then checked bitwise against ``batched_nms``'s input
boxes and scores (an error if they differ, never a guess).

The function patches (instance attributes, ``torchvision.ops.boxes`` and
``torchvision.ops.poolers`` attributes) and hooks are removed when the call ends, also on an
error; the model's parameters, buffers and outputs are unchanged (the only state a forward
writes, ``MultiScaleRoIAlign``'s cached scales, is written by torchvision's own code as in any
forward). The module-level patches are process-wide while the call runs; they record only calls
made by the calling thread inside the traced forward, and pass every other call through.

torch and torchvision are imported only when :func:`from_torchvision` is called.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from npfrcnn.trace.io import (
    ImageWriter,
    TraceError,
    TraceWriter,
    file_meta,
    images_and_names,
    pixels_sha256,
)

__all__ = ["from_torchvision"]

_MISSING = object()


@contextlib.contextmanager
def _patched(obj: Any, name: str, new: Any) -> Iterator[None]:
    """Set ``obj.name = new`` for the block; restore exactly what was there (also on error)."""
    had = name in vars(obj)
    old = vars(obj)[name] if had else _MISSING
    setattr(obj, name, new)
    try:
        yield
    finally:
        if had:
            setattr(obj, name, old)
        else:
            delattr(obj, name)


def _num_classes(model: Any) -> int:
    pred = getattr(model.roi_heads, "box_predictor", None)
    cls = getattr(pred, "cls_score", None)
    n = getattr(cls, "out_features", None)
    if not isinstance(n, int) or n < 2:
        raise ValueError(
            "cannot tell the number of classes: model.roi_heads.box_predictor.cls_score must be "
            "a Linear layer with background + object classes as outputs"
        )
    return n - 1


def _subsequence(s1: np.ndarray, s2: np.ndarray) -> np.ndarray:
    """Positions of ``s2``'s elements in ``s1``, matched greedily in order. ``s2`` is ``s1``
    filtered by a condition on the values alone, so equal values are kept or dropped together
    and the greedy match is the filter's own selection."""
    pos = np.empty(len(s2), np.int64)
    j = 0
    for k, s in enumerate(s2):
        while j < len(s1) and not s1[j] == s:
            j += 1
        if j == len(s1):
            raise TraceError("cannot trace proposals/keep: batched_nms's input scores are not "
                             "a subsequence of the candidates' scores")
        pos[k] = j
        j += 1
    return pos


class _Run:
    """The state of one image's traced forward pass: where each captured stage goes."""

    def __init__(self, writer: TraceWriter, name: str, image: npt.NDArray[np.uint8]):
        self.writer, self.name, self.image = writer, name, image
        self.img: ImageWriter | None = None
        self.levels: list[str] = []
        self.counts: list[int] = []
        self.context = ""  # "rpn" inside filter_proposals, "post" inside postprocess_detections
        self.in_pool = False
        # filter_proposals's candidates (top-n, clipped), their scores, and the indices that
        # remove_small_boxes keeps: what proposals/keep is recovered from
        self.candidates: np.ndarray | None = None
        self.cand_scores: np.ndarray | None = None
        self.small_keep: np.ndarray | None = None

    def put(self, stage: str, array: Any) -> None:
        if self.img is None:
            raise TraceError(f"{stage!r} was produced before the model's transform ran")
        self.img.put(stage, _numpy(array))


def _numpy(t: Any) -> np.ndarray:
    if hasattr(t, "detach"):
        return np.asarray(t.detach().cpu().numpy())
    return np.asarray(t)


def from_torchvision(
    model: Any,
    images: npt.NDArray[np.uint8] | Sequence[npt.NDArray[np.uint8]],
    out: str | os.PathLike[str],
    *,
    names: Sequence[str] | None = None,
    weights_sha256: str = "",
    profile: str = "torchvision-r50-fpn",
) -> Path:
    """Trace a torchvision ``FasterRCNN`` (eval mode) on one or more images into ``out``.

    Args:
        model: a ``torchvision.models.detection.FasterRCNN`` in eval mode (FPN backbone).
        images: one uint8 ``[H, W, 3]`` RGB image or a sequence of them; each is run on its
            own, ``model([to_tensor(image)])``, and becomes one image group of the trace.
        out: the trace file (``.npz`` or else HDF5), published atomically when all is done.
        names: the images' names (default ``image-0``, ``image-1``, ...).
        weights_sha256: sha256 of the weights the model was loaded from (metadata).
        profile: the profile name written to the metadata.

    Returns:
        ``Path(out)``.
    """
    try:
        import torch
        import torchvision
        from torchvision.models.detection import FasterRCNN
        from torchvision.ops import boxes as box_ops
        from torchvision.ops import poolers
        from torchvision.transforms.functional import to_tensor
    except ImportError as e:
        raise ImportError(
            "npfrcnn.trace.from_torchvision needs torch and torchvision "
            f"(pip install torch torchvision): {e}"
        ) from e

    if not isinstance(model, FasterRCNN):
        raise TypeError(
            f"model must be a torchvision.models.detection.FasterRCNN, got {type(model).__name__}"
        )
    if model.training:
        raise ValueError("model must be in eval mode (model.eval()): training mode returns losses")
    pairs = images_and_names(images, names, "from_torchvision")

    meta = file_meta(
        "fpn", profile=profile,
        producer=f"torchvision {torchvision.__version__} (torch {torch.__version__})",
        num_classes=_num_classes(model), weights_sha256=weights_sha256, layout="NCHW",
        box_format="xyxy", background="first",
    )
    rpn, heads = model.rpn, model.roi_heads
    state: list[_Run] = []  # the run in progress (one at a time)
    thread = threading.get_ident()

    def run() -> _Run:
        return state[-1]

    def tracing(context: str) -> bool:
        """Whether a call to a module-level function belongs to the traced forward's context."""
        return bool(state) and threading.get_ident() == thread and state[-1].context == context

    # -- forward hooks ---------------------------------------------------------------------
    def on_transform(mod: Any, args: Any, output: Any) -> None:
        r = run()
        image_list = output[0]
        x = image_list.tensors
        h, w = (int(v) for v in image_list.image_sizes[0])
        r.img = r.writer.image({
            "name": r.name, "sha256": pixels_sha256(r.image),
            "original_size": [int(r.image.shape[0]), int(r.image.shape[1])],
            "image_size": [h, w], "input_size": [int(x.shape[-2]), int(x.shape[-1])],
        })
        r.put("image", r.image)
        r.put("input", x)

    def on_body(mod: Any, args: Any, output: Any) -> None:
        for i, t in enumerate(output.values()):
            run().put(f"body/{i}", t)

    def on_features(mod: Any, args: Any, output: Any) -> None:
        r = run()
        if isinstance(output, torch.Tensor):
            output = {"0": output}
        r.levels = [str(k) for k in output]
        for k, t in output.items():
            r.put(f"features/{k}", t)

    def on_rpn_head(mod: Any, args: Any, output: Any) -> None:
        r = run()
        objectness, deltas = output
        if len(objectness) != len(r.levels):
            raise TraceError(f"the RPN head gave {len(objectness)} levels for {r.levels}")
        r.counts = []
        for lvl, o, d in zip(r.levels, objectness, deltas, strict=True):
            # torch's [1, A, H, W] / [1, 4A, H, W] as the schema's (y, x, anchor) rows: the
            # order concat_box_prediction_layers gives them (a layout change, no arithmetic)
            _, a, h, w = o.shape
            r.counts.append(int(a * h * w))
            r.put(f"rpn/objectness/{lvl}", o[0].permute(1, 2, 0).reshape(-1))
            r.put(f"rpn/deltas/{lvl}", d[0].view(a, 4, h, w).permute(2, 3, 0, 1).reshape(-1, 4))

    def on_anchors(mod: Any, args: Any, output: Any) -> None:
        r = run()
        for lvl, a in zip(r.levels, output[0].split(r.counts, 0), strict=True):
            r.put(f"anchors/{lvl}", a)

    def on_pool_start(mod: Any, args: Any) -> None:
        run().in_pool = True

    def on_pool(mod: Any, args: Any, output: Any) -> None:
        r = run()
        r.in_pool = False
        r.put("pooled", output)

    def on_box_head(mod: Any, args: Any, output: Any) -> None:
        run().put("box_head", output)

    def on_predictor(mod: Any, args: Any, output: Any) -> None:
        cls, bbox = output
        run().put("head/cls", cls)
        run().put("head/bbox", bbox)

    # -- wrapped functions -------------------------------------------------------------------
    orig_decode = rpn.box_coder.decode
    orig_top_n = rpn._get_top_n_idx
    orig_filter = rpn.filter_proposals
    orig_post = heads.postprocess_detections
    orig_clip = box_ops.clip_boxes_to_image
    orig_small = box_ops.remove_small_boxes
    orig_nms = box_ops.batched_nms
    orig_msra = poolers._multiscale_roi_align

    def decode(*args: Any, **kwargs: Any) -> Any:
        out = orig_decode(*args, **kwargs)
        run().put("proposals/decoded", out.reshape(-1, 4))
        return out

    def top_n(*args: Any, **kwargs: Any) -> Any:
        out = orig_top_n(*args, **kwargs)
        run().put("proposals/topk", out.reshape(-1))
        return out

    class SigmoidSpy(torch.overrides.TorchFunctionMode):
        """Observes filter_proposals's sigmoid (the top-n objectness probabilities)."""

        def __torch_function__(
            self, func: Any, types: Any, args: Any = (), kwargs: Any = None
        ) -> Any:
            out = func(*args, **(kwargs or {}))
            if (func is torch.sigmoid or func is torch.Tensor.sigmoid) and tracing("rpn"):
                r = run()
                if r.cand_scores is None:
                    r.cand_scores = _numpy(out).reshape(-1)
                    r.put("proposals/candidate_scores", r.cand_scores)
            return out

    def filter_proposals(*args: Any, **kwargs: Any) -> Any:
        r = run()
        r.context = "rpn"
        try:
            with SigmoidSpy():
                boxes, scores = orig_filter(*args, **kwargs)
        finally:
            r.context = ""
        r.put("proposals/boxes", boxes[0])
        r.put("proposals/scores", scores[0])
        return boxes, scores

    def postprocess(*args: Any, **kwargs: Any) -> Any:
        r = run()
        r.context = "post"
        try:
            return orig_post(*args, **kwargs)
        finally:
            r.context = ""

    def clip(boxes: Any, *args: Any, **kwargs: Any) -> Any:
        out = orig_clip(boxes, *args, **kwargs)
        if tracing("rpn"):
            r = run()
            r.candidates = _numpy(out)
            r.put("proposals/candidates", r.candidates)
        return out

    def small(*args: Any, **kwargs: Any) -> Any:
        keep = orig_small(*args, **kwargs)
        if tracing("rpn"):
            run().small_keep = _numpy(keep)
        return keep

    def nms(boxes: Any, scores: Any, idxs: Any, *args: Any, **kwargs: Any) -> Any:
        keep = orig_nms(boxes, scores, idxs, *args, **kwargs)
        if tracing("rpn"):
            run().put("proposals/keep", _rpn_keep(run(), boxes, scores, keep))
        elif tracing("post"):
            r = run()
            r.put("detections/candidates", boxes)
            r.put("detections/candidate_scores", scores)
            r.put("detections/candidate_labels", _numpy(idxs) - 1)
            r.put("detections/keep", keep)
        return keep

    def _rpn_keep(r: _Run, boxes: Any, scores: Any, keep: Any) -> np.ndarray:
        """proposals/keep: indices into the candidates (module docstring)."""
        if r.small_keep is None or r.cand_scores is None or r.candidates is None:
            raise TraceError(
                "cannot trace proposals/keep: filter_proposals did not call sigmoid, "
                "clip_boxes_to_image and remove_small_boxes before batched_nms as expected"
            )
        small_keep = r.small_keep
        s1 = r.cand_scores[small_keep]
        s2 = _numpy(scores)
        if np.array_equal(s1, s2):  # the score filter dropped nothing (the usual case)
            pos = np.arange(len(s2), dtype=np.int64)
        else:
            pos = _subsequence(s1, s2)
        filtered = small_keep[pos]
        if not (np.array_equal(r.candidates[filtered], _numpy(boxes))
                and np.array_equal(r.cand_scores[filtered], s2)):
            raise TraceError("cannot trace proposals/keep: the recovered indices do not give "
                             "batched_nms's input boxes and scores")
        return filtered[_numpy(keep)]

    class LevelSpy:
        """Stands in for the pool's level mapper for one call, recording what it returns."""

        def __init__(self, mapper: Any):
            self.mapper = mapper

        def __call__(self, boxlists: Any) -> Any:
            levels = self.mapper(boxlists)
            run().put("roi_levels", levels)
            return levels

    def msra(x: Any, boxes: Any, output_size: Any, sampling_ratio: Any, scales: Any,
             mapper: Any) -> Any:
        if tracing("") and run().in_pool and mapper is not None:
            mapper = LevelSpy(mapper)
        return orig_msra(x, boxes, output_size, sampling_ratio, scales, mapper)

    hooks: list[tuple[Any, Callable[..., Any]]] = [(model.transform, on_transform)]
    backbone = model.backbone
    if hasattr(backbone, "body") and hasattr(backbone, "fpn"):
        hooks += [(backbone.body, on_body), (backbone.fpn, on_features)]
    else:
        hooks.append((backbone, on_features))
    hooks += [
        (rpn.head, on_rpn_head), (rpn.anchor_generator, on_anchors),
        (heads.box_roi_pool, on_pool), (heads.box_head, on_box_head),
        (heads.box_predictor, on_predictor),
    ]

    path = Path(out)
    with contextlib.ExitStack() as stack:
        for mod, fn in hooks:
            stack.callback(mod.register_forward_hook(fn).remove)
        stack.callback(heads.box_roi_pool.register_forward_pre_hook(on_pool_start).remove)
        stack.enter_context(_patched(rpn.box_coder, "decode", decode))
        stack.enter_context(_patched(rpn, "_get_top_n_idx", top_n))
        stack.enter_context(_patched(rpn, "filter_proposals", filter_proposals))
        stack.enter_context(_patched(heads, "postprocess_detections", postprocess))
        stack.enter_context(_patched(box_ops, "clip_boxes_to_image", clip))
        stack.enter_context(_patched(box_ops, "remove_small_boxes", small))
        stack.enter_context(_patched(box_ops, "batched_nms", nms))
        stack.enter_context(_patched(poolers, "_multiscale_roi_align", msra))
        writer = stack.enter_context(TraceWriter(path, meta))
        device = next(iter(model.parameters())).device
        for name, image in pairs:
            r = _Run(writer, name, image)
            state.append(r)
            try:
                with torch.no_grad():
                    dets = model([to_tensor(image).to(device)])[0]
            finally:
                state.pop()
            if r.img is None:
                raise TraceError("the model's transform did not run (no forward hook fired)")
            r.put("detections/boxes", dets["boxes"])
            r.put("detections/scores", dets["scores"])
            r.put("detections/labels", _numpy(dets["labels"]) - 1)
    return path
