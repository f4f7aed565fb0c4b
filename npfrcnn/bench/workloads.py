"""Inputs to time: synthetic sweeps, and proposals and RoIs recorded from a real model run.

Synthetic (seeded; :func:`synthetic`):

* NMS ops, on a 600x1000 image: ``clustered`` (RPN-like: ``n / 20`` objects of anchor-like
  sizes 32 to 512 px, each with about 20 jittered boxes, so most boxes overlap several others;
  for batched NMS each object has one of 20 classes), ``uniform`` (positions uniform, sizes
  log-uniform 16 to 256 px, classes uniform), ``ties`` (``clustered`` with scores from 16
  values, so almost every score is tied). Scores are otherwise uniform in (0, 1).
* RoI ops (:class:`RoiConfig`: a ``1 x H x W x C`` map, ``N(0, 1)`` seeded features, stride 16
  by default): ``clustered`` (RoIs like post-NMS proposals around objects) or ``uniform``
  (positions uniform, sides log-uniform 16 to 500 px). ``crop-and-resize`` / ``crop-and-pool``
  get the same RoIs normalized by the image size, ``(y1 / H, x1 / W, y2 / H, x2 / W)``.

Recorded (:func:`save` writes them, ``npfrcnn bench --save-workload``): one ``.npz`` per model
run, with what the model's NMS and RoI stages were given (format in :data:`FORMAT`). The
default sweep adds the files shipped in ``npfrcnn/bench/data/`` (:func:`shipped`).
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from npfrcnn.bench import specs

__all__ = [
    "FORMAT",
    "LAYOUTS",
    "RoiConfig",
    "Workload",
    "from_file",
    "load",
    "save",
    "shipped",
    "synthetic",
]

DATA = Path(__file__).resolve().parent / "data"
IMAGE_H, IMAGE_W = 600, 1000
LAYOUTS = {"nms": ("clustered", "uniform", "ties"), "roi": ("clustered", "uniform")}

FORMAT = """\
npfrcnn bench workload (.npz, format 1). Every key is optional except format/source; an op
whose keys are missing is not run on the file.
  format                 'npfrcnn-bench-workload/1'
  source                 JSON: weights file, profile, image, image size, config changes
  nms_boxes   [N, 4]     float32 (x1, y1, x2, y2) pixels: the RPN's NMS input, in its order
  nms_scores  [N]        float32 objectness
  nms_iou_threshold      the model's RPN NMS threshold
  nms_classes [N]        int64 batched-NMS groups (FPN: the pyramid level of each box)
  batched_boxes, batched_scores, batched_classes, batched_iou_threshold
                         the detection stage's per-class NMS input (C4), when there is one
  roi_features [1,H,W,C] float32 NHWC feature map the RoIs are pooled from
  roi_rois    [K, 5]     float32 (0, x1, y1, x2, y2) pixels: the proposals
  roi_spatial_scale, roi_output_size (2,), roi_sampling_ratio, roi_aligned
  crop_boxes  [K, 4]     float32 normalized (y1, x1, y2, x2) as the model normalizes them
  crop_size   (2,)       the crop size before the 2x2 pool
"""
_FORMAT_TAG = "npfrcnn-bench-workload/1"


@dataclass(frozen=True)
class RoiConfig:
    """The synthetic RoI workload's map and pooling parameters."""

    height: int = 38
    width: int = 63
    channels: int = 256
    stride: int = 16
    output_size: tuple[int, int] = (7, 7)
    sampling_ratio: int = 2
    aligned: bool = False
    crop_size: tuple[int, int] = (14, 14)


@dataclass
class Workload:
    """One input to time: its name (``synthetic-clustered``, a file's stem), op and inputs."""

    name: str
    op: str
    inputs: specs.Inputs
    recorded: bool = False

    @property
    def size(self) -> int:
        return specs.size_of(self.op, self.inputs)

    @property
    def params(self) -> str:
        """The op's parameters on this workload, for the table (``IoU 0.7``, ``7x7, sr 2``)."""
        i = self.inputs
        if self.op in ("nms", "batched-nms"):
            return f"IoU {i['iou_threshold']:g}"
        if self.op == "soft-nms":
            return f"sigma {i['sigma']:g}, score > {i['score_threshold']:g}"
        if self.op in ("crop-and-resize", "crop-and-pool"):
            h, w = i["crop_size"]
            fmap = "x".join(str(v) for v in i["image"].shape[1:])
            return f"crop {h}x{w}" + (", pool 2x2" if self.op == "crop-and-pool" else "") + (
                f", map {fmap}"
            )
        h, w = i["output_size"]
        fmap = "x".join(str(v) for v in i["features"].shape[1:])
        if self.op == "roi-pool":
            return f"{h}x{w}, map {fmap}"
        return f"{h}x{w}, sr {i['sampling_ratio']}" + (", aligned" if i["aligned"] else "") + (
            f", map {fmap}"
        )


def _family(op: str) -> str:
    return "nms" if op in ("nms", "soft-nms", "batched-nms") else "roi"


def check_layout(op: str, layout: str) -> None:
    allowed = LAYOUTS[_family(op)]
    if layout not in allowed:
        raise ValueError(
            f"synthetic layout {layout!r} does not apply to {op}; choose from "
            f"{', '.join(allowed)}"
        )


# --------------------------------------------------------------------------------------------
# Synthetic
# --------------------------------------------------------------------------------------------


def _clustered_boxes(
    n: int, rng: np.random.Generator, img_h: float = IMAGE_H, img_w: float = IMAGE_W
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` RPN-like boxes ``(x1, y1, x2, y2)`` and each one's object."""
    objects = max(1, n // 20)
    centre = rng.uniform([0, 0], [img_w, img_h], (objects, 2))
    side = rng.choice([32.0, 64.0, 128.0, 256.0, 512.0], objects)[:, None]
    ratio = rng.choice([0.5, 1.0, 2.0], (objects, 1))
    shape = side * np.concatenate([1 / np.sqrt(ratio), np.sqrt(ratio)], axis=1)  # [O, 2] w, h
    who = rng.integers(0, objects, n)
    c = centre[who] + rng.normal(0, 0.1, (n, 2)) * shape[who]
    wh = shape[who] * np.exp(rng.normal(0, 0.1, (n, 2)))
    boxes = np.concatenate([c - wh / 2, c + wh / 2], axis=1)
    return boxes.astype(np.float32), who


def _uniform_boxes(
    n: int, rng: np.random.Generator, lo: float, hi: float, img_h: float, img_w: float
) -> np.ndarray:
    wh = np.exp(rng.uniform(np.log(lo), np.log(hi), (n, 2)))
    x1 = rng.uniform(0, img_w - np.minimum(wh[:, 0], img_w - 1))
    y1 = rng.uniform(0, img_h - np.minimum(wh[:, 1], img_h - 1))
    x2 = np.minimum(x1 + wh[:, 0], img_w)
    y2 = np.minimum(y1 + wh[:, 1], img_h)
    return np.stack([x1, y1, x2, y2], axis=1).astype(np.float32)


def _nms_synthetic(
    op: str, n: int, layout: str, rng: np.random.Generator, iou_threshold: float
) -> specs.Inputs:
    if layout == "uniform":
        boxes = _uniform_boxes(n, rng, 16, 256, IMAGE_H, IMAGE_W)
        classes = rng.integers(0, 20, n)
    else:
        boxes, who = _clustered_boxes(n, rng)
        classes = rng.integers(0, 20, int(who.max()) + 1)[who]
    if layout == "ties":
        scores = (rng.integers(1, 17, n) / 16.0).astype(np.float32)
    else:
        scores = rng.random(n, dtype=np.float32)
    inputs: specs.Inputs = {
        "boxes": boxes, "scores": scores, "iou_threshold": float(iou_threshold),
        "max_output_size": None, "score_threshold": float("-inf"),
    }
    if op == "soft-nms":
        inputs["sigma"] = 0.5
        inputs["score_threshold"] = 0.05  # soft-NMS keeps decaying boxes: stop somewhere
    if op == "batched-nms":
        inputs["classes"] = classes.astype(np.int64)
    return inputs


def _roi_inputs(
    op: str, rois_xyxy: np.ndarray, features: np.ndarray, cfg: RoiConfig,
    crop_boxes: np.ndarray | None = None, image_size: tuple[int, int] | None = None,
) -> specs.Inputs:
    k = rois_xyxy.shape[0]
    if op in ("crop-and-resize", "crop-and-pool"):
        if crop_boxes is None:
            h, w = image_size or (cfg.height * cfg.stride, cfg.width * cfg.stride)
            b = rois_xyxy
            crop_boxes = np.stack([b[:, 1] / h, b[:, 0] / w, b[:, 3] / h, b[:, 2] / w], axis=1)
        out: specs.Inputs = {
            "image": features, "boxes": np.ascontiguousarray(crop_boxes, dtype=np.float32),
            "box_indices": np.zeros(k, np.int32), "crop_size": tuple(cfg.crop_size),
            "extrapolation_value": 0.0,
        }
        if op == "crop-and-resize":
            out["method"] = "bilinear"
        return out
    rois = np.concatenate([np.zeros((k, 1), np.float32), rois_xyxy], axis=1)
    out = {
        "features": features, "rois": np.ascontiguousarray(rois, dtype=np.float32),
        "output_size": tuple(cfg.output_size), "spatial_scale": 1.0 / cfg.stride,
    }
    if op == "roi-align":
        out["sampling_ratio"] = int(cfg.sampling_ratio)
        out["aligned"] = bool(cfg.aligned)
    return out


_FEATURES: dict[tuple[int, int, int, int], np.ndarray] = {}


def _features(cfg: RoiConfig, seed: int) -> np.ndarray:
    key = (cfg.height, cfg.width, cfg.channels, seed)
    if key not in _FEATURES:  # one map per sweep, shared by every size
        rng = np.random.default_rng(seed + 7919)
        _FEATURES.clear()
        _FEATURES[key] = rng.standard_normal(
            (1, cfg.height, cfg.width, cfg.channels), dtype=np.float32
        )
    return _FEATURES[key]


def synthetic(
    op: str,
    size: int,
    layout: str = "clustered",
    *,
    seed: int = 0,
    iou_threshold: float = 0.7,
    roi: RoiConfig | None = None,
) -> Workload:
    """A seeded synthetic workload of ``size`` boxes or RoIs (module docstring)."""
    check_layout(op, layout)
    rng = np.random.default_rng([seed, size, LAYOUTS[_family(op)].index(layout)])
    if _family(op) == "nms":
        inputs = _nms_synthetic(op, size, layout, rng, iou_threshold)
    else:
        cfg = roi or RoiConfig()
        img_h, img_w = cfg.height * cfg.stride, cfg.width * cfg.stride
        if layout == "uniform":
            rois = _uniform_boxes(size, rng, 16, 500, img_h, img_w)
        else:
            rois = np.clip(_clustered_boxes(size, rng, img_h, img_w)[0], 0, [img_w, img_h] * 2)
            rois = rois.astype(np.float32)
        inputs = _roi_inputs(op, rois, _features(cfg, seed), cfg)
    return Workload(f"synthetic-{layout}", op, inputs)


# --------------------------------------------------------------------------------------------
# Recorded: files
# --------------------------------------------------------------------------------------------


def shipped() -> list[Path]:
    """The workload files shipped with npfrcnn (``npfrcnn/bench/data/*.npz``)."""
    return sorted(DATA.glob("*.npz"))


def load(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A workload file's arrays, checked (``ValueError`` naming the problem)."""
    p = Path(path)
    try:
        with np.load(p, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise ValueError(f"{p}: no such workload file") from None
    except Exception as e:
        raise ValueError(f"{p}: not a readable .npz workload ({type(e).__name__}: {e})") from None
    if str(data.get("format", "")) != _FORMAT_TAG:
        raise ValueError(
            f"{p}: not an npfrcnn bench workload (format {data.get('format')!r}, expected "
            f"{_FORMAT_TAG!r}); write one with npfrcnn bench --save-workload"
        )
    problems = []
    pairs = [("nms_boxes", "nms_scores", "nms_classes"),
             ("batched_boxes", "batched_scores", "batched_classes")]
    for boxes, scores, classes in pairs:
        if boxes in data:
            n = data[boxes].shape[0] if data[boxes].ndim == 2 else -1
            if data[boxes].shape != (n, 4) or data.get(scores, np.zeros(0)).shape != (n,):
                problems.append(f"{boxes} / {scores} must be [N, 4] and [N]")
            if classes in data and data[classes].shape != (n,):
                problems.append(f"{classes} must be [N]")
    if "roi_rois" in data:
        if data["roi_rois"].ndim != 2 or data["roi_rois"].shape[1] != 5:
            problems.append("roi_rois must be [K, 5]")
        if data.get("roi_features", np.zeros(0)).ndim != 4:
            problems.append("roi_features must be [1, H, W, C]")
    if problems:
        raise ValueError(f"{p}: " + "; ".join(problems))
    return data


def from_file(op: str, path: str | os.PathLike[str]) -> Workload | None:
    """The workload of ``op`` in a file, or ``None`` when the file has none for it."""
    data = load(path)
    name = Path(path).stem
    if op in ("nms", "soft-nms"):
        if "nms_boxes" not in data:
            return None
        inputs: specs.Inputs = {
            "boxes": data["nms_boxes"].astype(np.float32),
            "scores": data["nms_scores"].astype(np.float32),
            "iou_threshold": float(data["nms_iou_threshold"]), "max_output_size": None,
            "score_threshold": float("-inf"),
        }
        if op == "soft-nms":
            inputs.update(sigma=0.5, score_threshold=0.05)
        return Workload(name, op, inputs, recorded=True)
    if op == "batched-nms":
        prefix = "batched" if "batched_boxes" in data else "nms"
        if f"{prefix}_classes" not in data:
            return None
        inputs = {
            "boxes": data[f"{prefix}_boxes"].astype(np.float32),
            "scores": data[f"{prefix}_scores"].astype(np.float32),
            "classes": data[f"{prefix}_classes"].astype(np.int64),
            "iou_threshold": float(data[f"{prefix}_iou_threshold"]), "max_output_size": None,
            "score_threshold": float("-inf"),
        }
        return Workload(name, op, inputs, recorded=True)
    if "roi_rois" not in data:
        return None
    size = tuple(int(v) for v in data["roi_output_size"])
    crop = tuple(int(v) for v in data["crop_size"]) if "crop_size" in data else (14, 14)
    cfg = RoiConfig(
        output_size=(size[0], size[1]), sampling_ratio=int(data["roi_sampling_ratio"]),
        aligned=bool(data["roi_aligned"]), crop_size=(crop[0], crop[1]),
    )
    features = data["roi_features"].astype(np.float32)
    inputs = _roi_inputs(op, data["roi_rois"][:, 1:].astype(np.float32), features, cfg,
                         crop_boxes=data.get("crop_boxes"))
    if "spatial_scale" in inputs:
        inputs["spatial_scale"] = float(data["roi_spatial_scale"])
    return Workload(name, op, inputs, recorded=True)


# --------------------------------------------------------------------------------------------
# Recorded: from a model run
# --------------------------------------------------------------------------------------------


def _c4_arrays(model: Any, stages: dict[str, Any]) -> dict[str, Any]:
    from npfrcnn import boxes as bx
    from npfrcnn.rcnn import normalize_boxes

    cfg = model.config
    props, rpn = stages["proposals"], stages["rpn"]
    image_size = (int(stages["input"].shape[1]), int(stages["input"].shape[2]))
    # generate_proposals: decode -> positive area (kept) -> [clip] -> top-n (top_k) -> NMS
    pre = props.decoded[props.kept]
    if cfg.rpn_clip_before_nms:
        pre = bx.clip(pre, image_size, inclusive=cfg.clip_inclusive)
    scores = np.ascontiguousarray(rpn.cls_prob[:, 1])[props.kept][props.top_k]
    out: dict[str, Any] = {
        "nms_boxes": np.ascontiguousarray(pre[props.top_k], dtype=np.float32),
        "nms_scores": scores.astype(np.float32),
        "nms_iou_threshold": np.float64(cfg.rpn_nms_threshold),
    }
    # final_detections: per class decode -> clip -> positive area and p >= min_prob -> NMS
    n = cfg.num_classes
    first = 1 if cfg.background_first else 0
    deltas, probs = stages["bbox_pred"], stages["cls_prob"]
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for c in range(n):
        p = probs[:, c + first]
        b = bx.decode(
            props.boxes, deltas[:, 4 * c : 4 * c + 4], variances=cfg.rcnn_variances,
            plus_one=cfg.box_plus_one, decode_minus_one=cfg.decode_minus_one,
            clamp=cfg.delta_clamp,
        )
        b = bx.clip(b, image_size, inclusive=cfg.clip_inclusive)
        pos = np.zeros(b.shape[0], dtype=bool)
        pos[bx.filter_nonpositive(b)] = True
        keep = np.flatnonzero((p >= np.float32(cfg.min_prob)) & pos)
        parts.append((b[keep], p[keep], np.full(keep.size, c, np.int64)))
    out["batched_boxes"] = np.concatenate([q[0] for q in parts]).astype(np.float32)
    out["batched_scores"] = np.concatenate([q[1] for q in parts]).astype(np.float32)
    out["batched_classes"] = np.concatenate([q[2] for q in parts])
    out["batched_iou_threshold"] = np.float64(cfg.class_nms_threshold)
    # the RoI step: crop_and_resize of the normalized proposals (then the 2x2 pool); the
    # RoIAlign variant gets Detectron2's C4 pooler parameters (14x14, adaptive, aligned)
    features = np.asarray(stages["features"], dtype=np.float32)
    k = props.boxes.shape[0]
    out["roi_features"] = features
    out["roi_rois"] = np.concatenate(
        [np.zeros((k, 1), np.float32), props.boxes.astype(np.float32)], axis=1
    )
    out["roi_spatial_scale"] = np.float64(1.0 / cfg.output_stride)
    out["roi_output_size"] = np.asarray([cfg.roi_crop_size, cfg.roi_crop_size], np.int64)
    out["roi_sampling_ratio"] = np.int64(0)
    out["roi_aligned"] = np.bool_(True)
    out["crop_boxes"] = normalize_boxes(props.boxes, image_size, cfg).astype(np.float32)
    out["crop_size"] = np.asarray([cfg.roi_crop_size, cfg.roi_crop_size], np.int64)
    return out


def _fpn_arrays(model: Any, stages: dict[str, Any]) -> dict[str, Any]:
    from npfrcnn.modeling.poolers import POOLED_LEVELS

    cfg = model.config
    props = stages["proposals"]
    out: dict[str, Any] = {
        # batched NMS by pyramid level on the clipped, filtered top-n candidates
        "nms_boxes": np.ascontiguousarray(props.clipped[props.kept], dtype=np.float32),
        "nms_scores": np.ascontiguousarray(props.probs[props.kept], dtype=np.float32),
        "nms_classes": np.ascontiguousarray(props.levels[props.kept], dtype=np.int64),
        "nms_iou_threshold": np.float64(cfg.rpn_nms_thresh),
    }
    # MultiScaleRoIAlign: the level most RoIs go to, with its RoIs and scale
    pooler = model.parts.pooler
    features = stages["features"]
    image_size = stages["image_size"]
    scales = pooler.scales(features, image_size)
    levels = pooler.levels(props.boxes.astype(np.float32), scales)
    best = int(np.bincount(levels, minlength=len(POOLED_LEVELS)).argmax()) if levels.size else 0
    mine = props.boxes[levels == best].astype(np.float32)
    fmap = np.asarray(features[POOLED_LEVELS[best]], dtype=np.float32)
    out["roi_features"] = fmap
    out["roi_rois"] = np.concatenate([np.zeros((mine.shape[0], 1), np.float32), mine], axis=1)
    out["roi_spatial_scale"] = np.float64(scales[best])
    out["roi_output_size"] = np.asarray([cfg.roi_output_size] * 2, np.int64)
    out["roi_sampling_ratio"] = np.int64(cfg.sampling_ratio)
    out["roi_aligned"] = np.bool_(False)
    h, w = image_size
    out["crop_boxes"] = np.stack(
        [mine[:, 1] / h, mine[:, 0] / w, mine[:, 3] / h, mine[:, 2] / w], axis=1
    ).astype(np.float32)
    out["crop_size"] = np.asarray([2 * cfg.roi_output_size] * 2, np.int64)
    return out


def record(model: Any, image: np.ndarray) -> dict[str, Any]:
    """The NMS and RoI inputs of one ``model.run_stages(image)``, as workload arrays."""
    from npfrcnn.config import Detectron2Config, FPNConfig

    if isinstance(model.config, Detectron2Config):
        raise ValueError(
            f"recording kernel workloads from {model.config.name} is not supported; record "
            "them from a workshop or torchvision model"
        )
    stages = model.run_stages(image)
    if isinstance(model.config, FPNConfig):
        return _fpn_arrays(model, stages)
    return _c4_arrays(model, stages)


def save(
    path: str | os.PathLike[str], model: Any, image: np.ndarray, source: dict[str, Any]
) -> dict[str, Any]:
    """Run ``model`` on ``image`` and write the workload file ``path`` atomically (compressed).

    ``source`` (weights file, image, config changes) is stored as JSON. Returns the arrays.
    """
    from npfrcnn._io import atomic_write

    arrays = record(model, image)
    arrays["format"] = np.asarray(_FORMAT_TAG)
    arrays["source"] = np.asarray(json.dumps(source, sort_keys=True))
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    with atomic_write(path, "wb") as f:
        f.write(buf.getvalue())
    return arrays


def config_with(config: Any, changes: dict[str, Any]) -> Any:
    """``config`` with ``changes`` (``--set``): unknown keys are a ``ValueError``."""
    fields = {f.name for f in dataclasses.fields(config)}
    unknown = sorted(set(changes) - fields)
    if unknown:
        raise ValueError(
            f"unknown config key(s) {', '.join(unknown)} for {type(config).__name__}; "
            f"known: {', '.join(sorted(fields))}"
        )
    typed = {}
    for k, v in changes.items():
        current = getattr(config, k)
        typed[k] = type(current)(v) if isinstance(current, (int, float)) and not isinstance(
            current, bool
        ) else v
    return dataclasses.replace(config, **typed)
