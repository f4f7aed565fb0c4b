"""``FasterRCNN``: the whole pipeline, stage by stage (``Detections``, ``Prediction``: results).

Stages (each a public method, so a port can be diffed against any of them)::

    image uint8 [H, W, 3] RGB
      preprocess  -> x         float32 [1, H, W, 3]        RGB minus the profile's means
      features    -> fm        float32 [1, H_f, W_f, C3]   ResNet block1..3 (npfrcnn.resnet)
      rpn         -> RPNOutput bbox_pred [A, 4], cls_prob [A, 2], A = H_f * W_f * k
      anchors     -> float32 [A, 4]                         npfrcnn.anchors, order (y, x, a)
      proposals   -> Proposals boxes [P, 4], scores [P]     decode, area > 0, top-n, NMS
      pool_rois   -> float32 [P, 7, 7, C3]                  crop_and_resize 14x14 + max-pool 2x2
      head        -> (bbox_pred [P, 4n], cls_prob [P, n+1]) block4, mean, fc heads
      detections  -> Detections                             per-class NMS, top 300

Those are the C4 (workshop) shapes; the torchvision FPN and Detectron2 profiles run the same
stages with their own parts (``build_parts``; ``npfrcnn.modeling``), features as a dict of
levels. ``detect(image)`` runs them all on one uint8 array; ``predict(inputs)`` takes paths,
arrays or PIL images (one or a list), checks them all first and returns one
:class:`npfrcnn.results.Prediction` per input. The ``backend`` (``"numpy"`` or ``"cpu"``) is
passed to the ops that have one (convolutions, NMS, crop-and-resize); the others are NumPy/BLAS
for both.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, overload

import numpy as np
import numpy.typing as npt

from npfrcnn._validate import check_backend
from npfrcnn.config import AnyConfig, Detectron2Config, FPNConfig
from npfrcnn.modeling.transform import Preprocessed
from npfrcnn.rcnn import HEAD_CHUNK
from npfrcnn.resnet import feature_map_shape
from npfrcnn.results import (
    Detections,
    InputError,
    PredictInput,
    Prediction,
    check_input,
    check_score,
    default_image_ids,
    load_input,
    load_problem,
    split_inputs,
)

__all__ = ["FasterRCNN", "Detections", "Parts", "build_parts"]

F32 = npt.NDArray[np.float32]

#: Keys of the ``timings`` dict filled by :meth:`FasterRCNN.detect`.
STAGES = ("preprocess", "features", "rpn", "proposals", "roi_pool", "head", "detections")


def _unsupported(config: AnyConfig) -> list[str]:
    """Config values the parts cannot run (other profiles come later)."""
    out: list[str] = []
    if isinstance(config, FPNConfig | Detectron2Config):
        return out
    if config.rpn_objectness != "softmax":
        out.append("rpn_objectness='sigmoid'")
    if config.roi_op != "crop_and_resize":
        out.append(f"roi_op={config.roi_op!r}")
    if config.resize_min is not None or config.resize_max is not None:
        out.append("resize_min/resize_max (resizing)")
    if config.anchor_ratio_mode != "h/w" or config.anchor_order != "ratio_major":
        out.append("anchor_ratio_mode/anchor_order other than the workshop's")
    return out


@dataclass
class Parts:
    """The parts a profile is made of (``build_parts`` chooses them from the config)."""

    transform: Any
    backbone: Any
    rpn: Any
    pooler: Any
    box_head: Any
    predictor: Any
    postprocess: Any


def build_parts(config: AnyConfig, tensors: Mapping[str, np.ndarray], backend: str) -> Parts:
    """Pick every part for ``config``: C4 (workshop), ResNet + FPN (torchvision) or Detectron2."""
    if isinstance(config, Detectron2Config):
        from npfrcnn.modeling.detectron2 import build_parts as d2_parts

        return Parts(**d2_parts(config, tensors, backend))
    if isinstance(config, FPNConfig):
        from npfrcnn.modeling.backbone import FPN, ResNetBody
        from npfrcnn.modeling.heads import FastRCNNPredictor, build_box_head
        from npfrcnn.modeling.poolers import MultiScaleRoIAlign
        from npfrcnn.modeling.postprocess import TorchvisionPostprocess
        from npfrcnn.modeling.rpn import MultiLevelRPN
        from npfrcnn.modeling.transform import TorchvisionTransform

        return Parts(
            TorchvisionTransform(config, backend),
            _FPNBackbone(ResNetBody(config, tensors, backend), FPN(config, tensors, backend)),
            MultiLevelRPN(config, tensors, backend),
            MultiScaleRoIAlign(config, backend),
            build_box_head(config, tensors, backend),
            FastRCNNPredictor(config, tensors, backend),
            TorchvisionPostprocess(config, backend),
        )
    from npfrcnn.modeling import c4

    return Parts(
        c4.WorkshopTransform(config, backend),
        c4.C4Backbone(config, tensors, backend),
        c4.SingleLevelRPN(config, tensors, backend),
        c4.CropAndPool(config, backend),
        c4.Block4Head(config, tensors, backend),
        c4.C4Predictor(config, tensors, backend),
        c4.C4Postprocess(config, backend),
    )


def _pooled_array(pooled: Any) -> F32:
    """The pooled RoIs as an array: C4 poolers return one, MultiScaleRoIAlign a ``PooledRoIs``."""
    from npfrcnn.modeling.poolers import PooledRoIs

    feats = pooled.features if isinstance(pooled, PooledRoIs) else pooled
    return np.asarray(feats, dtype=np.float32)


class _FPNBackbone:
    """ResNet body then FPN; keeps the body's outputs of the last call for ``run_stages``."""

    def __init__(self, body: Any, fpn: Any):
        self.body, self.fpn = body, fpn
        self.last_body: list[F32] = []

    def __call__(self, x: F32) -> dict[str, F32]:
        self.last_body = self.body(x)
        return self.fpn(self.last_body)


class FasterRCNN:
    """A Faster R-CNN in NumPy, any profile: its parts are chosen by the config.

    Args:
        config: the model configuration (:mod:`npfrcnn.config`): a :class:`ModelConfig` (C4,
            workshop), an :class:`FPNConfig` (torchvision) or a :class:`Detectron2Config`.
        classes: ``config.num_classes`` class names.
        tensors: name -> float32 array for every name of
            ``npfrcnn.weights.expected_shapes(config)``; validated here (one error listing every
            problem).
        backend: ``"cpu"`` (Numba kernels, default) or ``"numpy"`` (reference ops).
    """

    def __init__(
        self,
        config: AnyConfig,
        classes: Sequence[str],
        tensors: Mapping[str, np.ndarray],
        backend: str = "cpu",
    ) -> None:
        from npfrcnn.weights.hdf5 import WeightsError, check_tensors

        check_backend(backend, ("numpy", "cpu"))
        missing = _unsupported(config)
        if missing:
            raise NotImplementedError(
                f"this npfrcnn does not implement {', '.join(missing)} yet; use the workshop "
                "profile's values"
            )
        arrays = {n: np.asarray(a) for n, a in tensors.items()}
        problems = check_tensors(config, arrays)
        if len(classes) != config.num_classes:
            problems.append(
                f"{len(classes)} class names given but config.num_classes is {config.num_classes}"
            )
        if problems:
            raise WeightsError("FasterRCNN", problems)
        self.config = config
        self.classes = [str(c) for c in classes]
        self.tensors = {n: np.ascontiguousarray(a, dtype=np.float32) for n, a in arrays.items()}
        self.backend = backend
        self.parts = build_parts(config, self.tensors, backend)

    @property
    def is_fpn(self) -> bool:
        """A torchvision ResNet-FPN profile."""
        return isinstance(self.config, FPNConfig)

    @property
    def is_detectron2(self) -> bool:
        """A Detectron2 profile (C4 or FPN)."""
        return isinstance(self.config, Detectron2Config)

    @property
    def _multilevel(self) -> bool:
        return isinstance(self.config, FPNConfig | Detectron2Config)

    @classmethod
    def from_hdf5(cls, path: str | os.PathLike[str], backend: str = "cpu") -> FasterRCNN:
        """Load a weights file (``npfrcnn.weights.read`` validates it completely)."""
        from npfrcnn.weights.hdf5 import read

        wf = read(path)
        return cls(wf.config, wf.classes, wf.tensors, backend=backend)

    # Sizes ----------------------------------------------------------------------------------

    def feature_map_shape(self, height: int, width: int) -> tuple[int, int]:
        """``(H_f, W_f)`` of the (C4) block3 / res4 map, or of FPN level '0' / p2, for an image
        (no compute)."""
        if isinstance(self.config, Detectron2Config):
            hp, wp = self.parts.transform.padded_size(height, width)
            if self.config.is_fpn:
                return hp // 4, wp // 4
            for _ in range(4):  # conv1, max-pool, res3 and res4: each (n - 1) // 2 + 1
                hp, wp = (hp - 1) // 2 + 1, (wp - 1) // 2 + 1
            return hp, wp
        if isinstance(self.config, FPNConfig):
            hp, wp = self.parts.transform.padded_size(height, width)
            return hp // 4, wp // 4
        return feature_map_shape(self.config, height, width)

    def num_anchors(self, height: int, width: int) -> int:
        """Anchors for an image: ``H_f * W_f * k`` (C4), summed over the levels (FPN)."""
        if isinstance(self.config, Detectron2Config) and self.config.is_fpn:
            fh, fw = self.feature_map_shape(height, width)
            total = 0
            for _ in range(5):  # p2..p5 halve exactly; p6 = max_pool(k=1, s=2) of p5
                total += fh * fw
                fh, fw = (fh - 1) // 2 + 1, (fw - 1) // 2 + 1
            return total * self.config.num_anchors
        if isinstance(self.config, FPNConfig):
            hp, wp = self.parts.transform.padded_size(height, width)
            total, fh, fw = 0, hp // 4, wp // 4
            for _ in range(4):
                total += fh * fw
                fh, fw = fh // 2, fw // 2
            pool = (-(-(hp // 32) // 2), -(-(wp // 32) // 2))
            return (total + pool[0] * pool[1]) * self.config.num_anchors
        h_f, w_f = self.feature_map_shape(height, width)
        return h_f * w_f * self.config.num_anchors

    # Stages ---------------------------------------------------------------------------------

    def transform(self, image: npt.ArrayLike) -> Preprocessed:
        """The network input and the image sizes (:class:`npfrcnn.modeling.transform.Preprocessed`).

        C4: RGB minus the means at native size. FPN: torchvision's normalise, resize, pad.
        """
        return self.parts.transform(image)

    def preprocess(self, image: npt.ArrayLike) -> F32:
        """uint8 ``[H, W, 3]`` RGB -> float32 ``[1, H', W', 3]`` network input (:meth:`transform`).

        Other real dtypes are accepted and converted to float32 first.
        """
        return self.transform(image).x

    def features(self, x: F32) -> Any:
        """The backbone: C4 block3 map ``[1, H_f, W_f, C3]``; FPN: ``{'0': .., 'pool': ..}``."""
        return self.parts.backbone(np.asarray(x, dtype=np.float32))

    def rpn(self, features: Any) -> Any:
        """RPN head outputs (C4 :class:`npfrcnn.rpn.RPNOutput`; FPN per level)."""
        return self.parts.rpn.head(features)

    def anchors(self, feature_shape: Any, input_shape: tuple[int, int] | None = None) -> Any:
        """C4: float32 ``[H_f * W_f * k, 4]`` for ``feature_shape = (H_f, W_f)``, row
        ``(y * W_f + x) * k + a``. FPN: per-level anchors for ``feature_shape`` = the RPN output
        and ``input_shape`` = the padded input ``(Hp, Wp)``."""
        if isinstance(self.config, Detectron2Config):
            return self.parts.rpn.anchors(feature_shape)
        if isinstance(self.config, FPNConfig):
            if input_shape is None:
                raise ValueError("FPN anchors need input_shape, the padded input (Hp, Wp)")
            return self.parts.rpn.anchors(feature_shape, input_shape)
        return self.parts.rpn.anchors(feature_shape)

    def proposals(
        self,
        rpn_out: Any,
        image_shape: tuple[int, int],
        anchors: Any = None,
        input_shape: tuple[int, int] | None = None,
    ) -> Any:
        """Proposals from the RPN output; ``anchors`` default to :meth:`anchors`.

        ``image_shape`` is the (resized) image's ``(h, w)``; FPN profiles also need the padded
        ``input_shape`` when ``anchors`` is not given.
        """
        if anchors is None:
            if self._multilevel:
                anchors = self.anchors(rpn_out, input_shape)
            else:
                anchors = self.anchors(rpn_out.feature_shape)
        return self.parts.rpn.proposals(rpn_out, anchors, image_shape)

    def pool_rois(
        self, features: Any, proposals: npt.ArrayLike, image_shape: tuple[int, int]
    ) -> Any:
        """Pooled RoIs: C4 float32 ``[P, 7, 7, C3]``; FPN :class:`PooledRoIs` (features, levels)."""
        return self.parts.pooler(features, proposals, image_shape)

    def head(self, pooled: Any) -> tuple[F32, F32]:
        """C4: ``(bbox_pred [P, 4n], cls_prob [P, n + 1])``; FPN: ``(box_regression
        [P, 4 (n + 1)], class_logits [P, n + 1])`` (softmax comes in :meth:`detections`)."""
        feats = _pooled_array(pooled)
        parts = [
            self.parts.box_head(feats[i : i + HEAD_CHUNK])
            for i in range(0, max(feats.shape[0], 1), HEAD_CHUNK)
        ]
        return self.parts.predictor(np.concatenate(parts))

    def detections(
        self,
        proposals: npt.ArrayLike,
        bbox_pred: npt.ArrayLike,
        cls_prob: npt.ArrayLike,
        image_shape: tuple[int, int],
        *,
        min_prob: float | None = None,
        max_detections: int | None = None,
        original_size: tuple[int, int] | None = None,
    ) -> Detections:
        """Final :class:`Detections` in the original image's pixels.

        C4: :func:`npfrcnn.rcnn.final_detections`. FPN: torchvision's
        ``postprocess_detections`` in the resized image (``image_shape``), then boxes scaled to
        ``original_size`` (default: ``image_shape``, no scaling). Detectron2: its
        ``fast_rcnn_inference_single_image`` then ``detector_postprocess``. ``min_prob``
        overrides the profile's score threshold (C4 keeps ``p >= min_prob``, torchvision and
        Detectron2 ``p > min_prob``).
        """
        if min_prob is not None and not 0.0 <= float(min_prob) <= 1.0:
            raise ValueError(f"min_prob must be in [0, 1], got {min_prob!r}")
        if max_detections is not None and (
            isinstance(max_detections, bool) or int(max_detections) < 0
        ):
            raise ValueError(
                f"max_detections must be a non-negative int, got {max_detections!r}"
            )
        if isinstance(self.config, Detectron2Config):
            d2 = self.parts.postprocess(
                proposals, bbox_pred, cls_prob, image_shape, original_size or image_shape,
                score_thresh=min_prob, detections_per_image=max_detections,
            )
            return Detections(
                d2.boxes, d2.labels, d2.scores, [self.classes[int(i)] for i in d2.labels]
            )
        if isinstance(self.config, FPNConfig):
            from npfrcnn.modeling.postprocess import resize_boxes

            out = self.parts.postprocess(
                proposals, bbox_pred, cls_prob, image_shape, score_thresh=min_prob,
                detections_per_img=max_detections,
            )
            boxes = resize_boxes(out.boxes, image_shape, original_size or image_shape)
            labels = out.labels - 1
            return Detections(
                boxes, labels, out.scores, [self.classes[int(i)] for i in labels]
            )
        boxes, labels, scores = self.parts.postprocess(
            proposals, bbox_pred, cls_prob, image_shape, min_prob=min_prob,
            max_detections=max_detections,
        )
        return Detections(boxes, labels, scores, [self.classes[int(i)] for i in labels])

    def detect(
        self,
        image: npt.ArrayLike,
        *,
        min_prob: float | None = None,
        max_detections: int | None = None,
        timings: dict[str, float] | None = None,
    ) -> Detections:
        """Detect objects in one uint8 ``[H, W, 3]`` RGB image.

        Args:
            image: as :func:`npfrcnn.image.load` returns.
            min_prob: the score threshold (default the profile's).
            max_detections: at most this many (default the profile's).
            timings: if a dict, receives seconds per stage under the keys
                ``"preprocess", "features", "rpn", "proposals", "roi_pool", "head",
                "detections"``.

        Returns:
            :class:`Detections` in input-image pixels.
        """
        clock: dict[str, float] = {}
        t0 = time.perf_counter()

        def lap(name: str) -> None:
            nonlocal t0
            t1 = time.perf_counter()
            clock[name] = t1 - t0
            t0 = t1

        pre = self.transform(image)
        x = pre.x
        lap("preprocess")
        fm = self.features(x)
        lap("features")
        rpn_out = self.rpn(fm)
        lap("rpn")
        props = self.proposals(
            rpn_out, pre.image_size, input_shape=(int(x.shape[1]), int(x.shape[2]))
        )
        lap("proposals")
        # RoI pooling and the head are streamed over chunks of proposals, so the pooled RoIs
        # ([P, 7, 7, C]) and the head's activations are never held for all P at once.
        clock["roi_pool"] = clock["head"] = 0.0
        feat_parts = []
        for start in range(0, max(len(props.boxes), 1), HEAD_CHUNK):
            t1 = time.perf_counter()
            pooled = self.pool_rois(fm, props.boxes[start : start + HEAD_CHUNK], pre.image_size)
            t2 = time.perf_counter()
            feat_parts.append(self.parts.box_head(_pooled_array(pooled)))
            t0 = time.perf_counter()
            clock["roi_pool"] += t2 - t1
            clock["head"] += t0 - t2
        bbox_pred, cls_out = self.parts.predictor(np.concatenate(feat_parts))
        t1 = time.perf_counter()
        clock["head"] += t1 - t0
        t0 = t1
        dets = self.detections(
            props.boxes, bbox_pred, cls_out, pre.image_size, min_prob=min_prob,
            max_detections=max_detections, original_size=pre.original_size,
        )
        lap("detections")
        if timings is not None:
            timings.update(clock)
        return dets

    @overload
    def predict(
        self, inputs: Any, *, min_score: float | None = ..., max_detections: int | None = ...,
        stream: Literal[False] = ...,
    ) -> list[Prediction]: ...

    @overload
    def predict(
        self, inputs: Any, *, min_score: float | None = ..., max_detections: int | None = ...,
        stream: Literal[True],
    ) -> Iterator[Prediction]: ...

    def predict(
        self,
        inputs: Any,
        *,
        min_score: float | None = None,
        max_detections: int | None = None,
        stream: bool = False,
    ) -> list[Prediction] | Iterator[Prediction]:
        """Detect objects in images given as paths, arrays or PIL images.

        Args:
            inputs: one image or a list (or tuple) of them. An image is a path (``str`` or
                ``os.PathLike``, read by :func:`npfrcnn.image.load`: EXIF orientation applied,
                any mode converted to RGB, the decompression-bomb guard), a uint8
                ``[H, W, 3]`` RGB numpy array (OpenCV's BGR needs ``a[..., ::-1]``), or a PIL
                image (EXIF orientation and the modes as for a file). A uint8
                ``[N, H, W, 3]`` array is ``N`` images.
            min_score: the model's score threshold (``detect``'s ``min_prob``; default the
                profile's; C4 keeps ``p >= min_score``, torchvision ``p > min_score``), applied
                before the per-class NMS and the detection cap. To filter finished results use
                :meth:`Prediction.filter` (``score >= t``).
            max_detections: at most this many per image (default the profile's).
            stream: ``False``: a list, every image read before the first detection. ``True``:
                an iterator that reads and detects one image at a time (for long lists: only
                one image is held unless you keep the predictions).

        Returns:
            Always one :class:`npfrcnn.results.Prediction` per image, in input order, in a
            list (``stream=True``: an iterator), even for a single input: ``[pred] =
            model.predict("a.jpg")``. ``predict([])`` is ``[]``. Each prediction's detections
            are exactly ``detect(image, min_prob=min_score, max_detections=...)``.

        Raises:
            ValueError: ``min_score`` outside ``[0, 1]`` or a negative ``max_detections``.
            npfrcnn.results.InputError: (a ``ValueError``) every unusable input at once, each
                named with the fix: a wrong type, an array of the wrong shape or dtype, a
                missing path or a folder (all checked before anything runs), and (for
                ``stream=False`` also before anything runs) a file that cannot be decoded.
                With ``stream=True`` an undecodable file raises when the iterator reaches it.
        """
        if min_score is not None:
            check_score(min_score, "min_score")
        if max_detections is not None and (
            isinstance(max_detections, bool) or not isinstance(max_detections, int | np.integer)
            or max_detections < 0
        ):
            raise ValueError(
                f"max_detections must be a non-negative int, got {max_detections!r}; "
                "e.g. max_detections=100"
            )
        objs, problems = split_inputs(inputs)
        if problems:
            raise InputError(problems, 1)
        items: list[PredictInput] = []
        for i, obj in enumerate(objs):
            item, problem = check_input(i, obj)
            if problem is not None:
                problems.append(problem)
            elif item is not None:
                items.append(item)
        if problems:
            raise InputError(problems, len(objs))
        ids = default_image_ids([it.source for it in items])
        kw: dict[str, Any] = {"min_prob": min_score, "max_detections": max_detections}
        if stream:
            return self._predict_stream(items, ids, kw)
        images: list[tuple[npt.NDArray[np.uint8], float]] = []
        for item in items:
            t = time.perf_counter()
            try:
                images.append((load_input(item), time.perf_counter() - t))
            except ValueError as e:  # ImageError: the message names the file and the fix
                problems.append(load_problem(item, e))
        if problems:
            raise InputError(problems, len(items))
        return [
            self._predict_one(item, image, load_s, image_id, kw)
            for item, (image, load_s), image_id in zip(items, images, ids, strict=True)
        ]

    def _predict_stream(
        self, items: list[PredictInput], ids: list[int], kw: dict[str, Any]
    ) -> Iterator[Prediction]:
        for item, image_id in zip(items, ids, strict=True):
            t = time.perf_counter()
            try:
                image = load_input(item)
            except ValueError as e:
                raise InputError(
                    [load_problem(item, e)], len(items),
                    f"{item.index} earlier input{'' if item.index == 1 else 's'} "
                    f"{'was' if item.index == 1 else 'were'} processed",
                ) from None
            yield self._predict_one(item, image, time.perf_counter() - t, image_id, kw)

    def _predict_one(
        self, item: PredictInput, image: npt.NDArray[np.uint8], load_s: float, image_id: int,
        kw: dict[str, Any],
    ) -> Prediction:
        stages: dict[str, float] = {}
        t = time.perf_counter()
        dets = self.detect(image, timings=stages, **kw)
        detect_s = time.perf_counter() - t
        timings = {"load": load_s, **stages, "detect": detect_s}
        return Prediction(
            dets, item.source, int(image.shape[1]), int(image.shape[0]), image_id, timings,
            image,
        )

    def run_stages(self, image: npt.ArrayLike) -> dict[str, Any]:
        """Every stage's output for one image (for diffs): a dict of arrays and dataclasses.

        Keys: ``input``, ``features``, ``rpn``, ``anchors``, ``proposals``, ``pooled``,
        ``bbox_pred``, ``cls_prob`` (C4; FPN and Detectron2: the class logits),
        ``detections``; FPN profiles add ``body`` (``[C2, C3, C4, C5]``), ``image_size`` and
        ``original_size``; Detectron2 profiles ``body`` (``{"res2": .., ..}``, the ResNet's
        outputs), ``image_size`` and ``original_size``.
        """
        pre = self.transform(image)
        x = pre.x
        fm = self.features(x)
        rpn_out = self.rpn(fm)
        if self._multilevel:
            anc = self.anchors(rpn_out, (int(x.shape[1]), int(x.shape[2])))
        else:
            anc = self.anchors(rpn_out.feature_shape)
        props = self.proposals(rpn_out, pre.image_size, anc)
        pooled = self.pool_rois(fm, props.boxes, pre.image_size)
        bbox_pred, cls_prob = self.head(pooled)
        dets = self.detections(
            props.boxes, bbox_pred, cls_prob, pre.image_size, original_size=pre.original_size
        )
        out: dict[str, Any] = {
            "input": x, "features": fm, "rpn": rpn_out, "anchors": anc, "proposals": props,
            "pooled": pooled, "bbox_pred": bbox_pred, "cls_prob": cls_prob, "detections": dets,
        }
        if isinstance(self.config, Detectron2Config):
            out["body"] = dict(self.parts.backbone.last_body)
            out["image_size"] = pre.image_size
            out["original_size"] = pre.original_size
        if isinstance(self.config, FPNConfig):
            out["body"] = list(self.parts.backbone.last_body)
            out["image_size"] = pre.image_size
            out["original_size"] = pre.original_size
        return out

