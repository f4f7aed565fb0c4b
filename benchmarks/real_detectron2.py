"""Run the real Detectron2 Faster R-CNN inference on the CPU, from source, and dump every stage.

A tool, not part of the ``npfrcnn`` package: it imports Detectron2 (a source checkout on
``PYTHONPATH``, no compiled ``detectron2._C``; the Faster R-CNN inference path is pure Python
plus torch/torchvision: ResNet with FrozenBN, FPN, RPN, ``ROIAlignV2`` and ``batched_nms``
from torchvision) and writes what each stage produced, so npfrcnn can be checked against it.

Usage::

    PYTHONPATH=/path/to/detectron2:/path/to/d2deps python benchmarks/real_detectron2.py \\
        --config COCO-Detection/faster_rcnn_R_50_FPN_3x.yaml --num-classes 5 \\
        --random-weights-out W.pkl --seed 0 \\
        --image photo.jpg --out stages.npz --keys-out keys.json

    # or with existing weights (a model-zoo .pkl, or a .pth such as DefaultTrainer writes)
    ... --weights model_final_280758.pkl --image photo.jpg --out stages.npz

    # DefaultTrainer's model_final.pth for these weights (a 2-iteration run at lr 0 on a
    # one-image dataset made from --image, so the saved weights equal --weights)
    ... --weights W.pkl --trainer-pth-out model_final.pth --image photo.jpg

    # the globals a pickle (.pkl) or a torch.save zip (.pth, its data.pkl) references
    python benchmarks/real_detectron2.py --list-globals model_final.pth

``--config`` is a path, or one relative to Detectron2's ``configs/`` folder (``--configs-dir``,
by default ``configs/`` beside the ``detectron2`` package). ``--set KEY=VALUE`` (repeatable) is
``cfg.merge_from_list([KEY, VALUE])``, e.g. ``--set MODEL.RESNETS.DEPTH=101`` or ``--set
INPUT.MIN_SIZE_TEST=600``. ``--units A,B,C,D`` replaces the number of residual blocks in
res2..res5 (for C4, the res5 built in the ROI head takes D).

The image is read with PIL, converted to RGB and flipped to BGR (what ``cv2.imread`` gives, no
EXIF rotation applied), then ``DefaultPredictor(cfg)(bgr)`` runs it, with forward hooks (which do
not change the numerics) recording, as numpy arrays in ``--out`` (``np.savez``):

* ``input`` [1,3,Hp,Wp] float32 (normalised and padded: the backbone's input), ``image_size``
  (h, w) of the resized image, ``original_size`` (H, W), ``resized_uint8`` [h,w,3] (the
  PIL-resized BGR image that DefaultPredictor gave the model);
* C4: ``res4``; FPN: ``res2``..``res5`` (the bottom-up ResNet) and ``p2``..``p6``;
* per RPN level i: ``rpn_logits/<i>`` [H*W*A], ``rpn_deltas/<i>`` [H*W*A,4] (Detectron2's
  order: (H, W, A)), ``anchors/<i>`` [H*W*A,4];
* ``proposals`` [P,4], ``proposal_logits`` [P] (the RPN's output Instances);
* ``pooled`` [P',C,S,S] (the ROI pooler's output; ``--pooled-max`` caps P' to the first
  proposals, ``pooled_rows`` says how many), ``box_features`` [P,D] (the box predictor's
  input: FPN the box head's output, C4 res5 then the spatial mean), ``cls_logits`` [P,K+1],
  ``bbox_deltas`` [P,4K];
* ``boxes_resized``, ``scores_resized``, ``classes_resized`` (the ROI heads' Instances, in
  resized-image coordinates) and ``boxes`` [D,4], ``scores``, ``classes`` (the predictor's
  output, in original-image coordinates).

``--keys-out`` writes the model's ``state_dict()`` keys, shapes and dtypes (in order) as JSON.

``--random-weights-out W.pkl`` initialises the model with random but sane weights (seeded by
``--seed``): FrozenBN statistics randomised (``running_var`` uniform(0.5, 2), ``running_mean``
N(0, 0.1), ``weight`` uniform(0.6, 1.4), but uniform(0.1, 0.35) on each block's last norm,
``bias`` N(0, 0.1)), He-scaled convolutions (the stem scaled by the pixel spread) so that
activations stay O(1) through the whole ResNet; then, when ``--image`` is given, the RPN's and
the box predictor's output layers are fitted on one inference pass over that image
(:func:`calibrate_`) so that objectness and class scores spread and vary across positions and
proposals (without it, post-ReLU inputs make a random head answer nearly the same everywhere,
and deep nets saturate the softmax). Saved in the model-zoo pkl format (``{"model": {key: float32
ndarray}, "__author__": "Detectron2 Model Zoo"}``, pickled), then loaded back through
``DetectionCheckpointer`` as ``MODEL.WEIGHTS`` like any other checkpoint.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import pickle
import pickletools
import shutil
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

# ---------------------------------------------------------------------------------------------
# config


def resolve_config(config: str, configs_dir: str | None) -> str:
    if os.path.exists(config):
        return config
    if configs_dir is None:
        import detectron2

        configs_dir = str(Path(detectron2.__file__).resolve().parents[1] / "configs")
    path = os.path.join(configs_dir, config)
    if not os.path.exists(path):
        raise SystemExit(f"config {config!r} not found (looked in {configs_dir})")
    return path


def setup_cfg(args: argparse.Namespace, weights: str | None) -> Any:
    from detectron2.config import get_cfg

    cfg = get_cfg()
    cfg.merge_from_file(resolve_config(args.config, args.configs_dir))
    cfg.MODEL.DEVICE = "cpu"
    if args.num_classes is not None:
        cfg.MODEL.ROI_HEADS.NUM_CLASSES = args.num_classes
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set wants KEY=VALUE, got {item!r}")
        cfg.merge_from_list([key, value])
    cfg.MODEL.WEIGHTS = weights or ""
    return cfg


# ---------------------------------------------------------------------------------------------
# --units: the number of residual blocks per stage


class _Units:
    """Patches ``ResNet.make_stage`` so that the k-th stage built gets ``units[min(k, 3)]`` blocks.

    ``build_resnet_backbone`` always builds res2..res5 (ResNet() drops the stages past its
    out_features), then the C4 ROI head builds its own res5: reset() before each build_model.
    """

    def __init__(self, units: tuple[int, ...] | None) -> None:
        self.units = units
        self.calls = 0
        if units is None:
            return
        if len(units) != 4 or min(units) < 1:
            raise SystemExit("--units wants 4 positive integers, e.g. 3,4,6,3")
        import inspect

        from detectron2.modeling.backbone.resnet import ResNet

        original = ResNet.make_stage
        signature = inspect.signature(original)

        def make_stage(*a: Any, **kw: Any) -> Any:
            bound = signature.bind(*a, **kw)
            n = self.units[min(self.calls, 3)]  # type: ignore[index]
            self.calls += 1
            bound.arguments["num_blocks"] = n
            extra = bound.arguments.get("kwargs", {})
            for k, v in list(extra.items()):
                if k.endswith("_per_block"):
                    extra[k] = [v[0]] + [v[-1]] * (n - 1)  # first block's, then the rest's
            return original(*bound.args, **bound.kwargs)

        ResNet.make_stage = staticmethod(make_stage)  # type: ignore[method-assign]

    def reset(self) -> None:
        self.calls = 0


# ---------------------------------------------------------------------------------------------
# random weights


def randomize_(model: torch.nn.Module, cfg: Any, seed: int) -> None:
    """Random but sane weights, in place (see the module docstring)."""
    from detectron2.layers import FrozenBatchNorm2d

    g = torch.Generator().manual_seed(seed)

    def normal(shape: Any, std: float, mean: float = 0.0) -> torch.Tensor:
        return torch.randn(shape, generator=g) * std + mean

    def uniform(shape: Any, lo: float, hi: float) -> torch.Tensor:
        return torch.rand(shape, generator=g) * (hi - lo) + lo

    # the normalised input's spread: raw pixels have std ~58 on natural images
    pixel_std = float(np.mean(cfg.MODEL.PIXEL_STD))
    input_rms = 60.0 / pixel_std
    with torch.no_grad():
        for name, m in model.named_modules():
            if isinstance(m, FrozenBatchNorm2d):
                c = m.num_features
                m.running_mean.copy_(normal(c, 0.1))
                m.running_var.copy_(uniform(c, 0.5, 2.0))
                if name.endswith("conv3.norm"):
                    # the residual branch's last norm: small, so the identity path dominates
                    # and the activations stay O(1) over 23 blocks (res4 of R101)
                    m.weight.copy_(uniform(c, 0.1, 0.35))
                else:
                    m.weight.copy_(uniform(c, 0.6, 1.4))
                m.bias.copy_(normal(c, 0.1))
            elif isinstance(m, torch.nn.Conv2d | torch.nn.Linear):
                w = m.weight
                fan_in = w[0].numel()
                bias_std = 0.02
                if name.endswith("stem.conv1"):
                    std = 1.0 / np.sqrt(fan_in) / input_rms
                elif name.endswith("objectness_logits"):
                    std = 1.5 / np.sqrt(fan_in)
                elif name.endswith("anchor_deltas"):
                    std = 0.2 / np.sqrt(fan_in)
                    bias_std = 0.0
                elif name.endswith("cls_score"):
                    std = 1.5 / np.sqrt(fan_in)
                    bias_std = 0.3
                elif name.endswith("bbox_pred"):
                    std = 1.0 / np.sqrt(fan_in)
                    bias_std = 0.0
                elif ".fpn_" in name or name.startswith("backbone.fpn_"):
                    std = 1.0 / np.sqrt(fan_in)  # no ReLU after
                else:
                    std = np.sqrt(2.0 / fan_in)  # He: ReLU after (or a post-ReLU input)
                w.copy_(normal(w.shape, float(std)))
                if m.bias is not None:
                    m.bias.copy_(normal(m.bias.shape, bias_std))


def calibrate_(model: Any, cfg: Any, bgr: np.ndarray, seed: int) -> dict[str, Any]:
    """Fit the RPN's and the box predictor's 1x1/linear outputs to the calibration image, in place.

    One inference pass, as DefaultPredictor makes it (same resize, no grad). Pre-hooks on the RPN
    head and on the box predictor see their inputs X and, before those layers run, rescale each
    output channel's weights so that X @ W.T has a set spread over the image's positions (RPN)
    or proposals (box predictor), and set the bias to centre it (the inputs are post-ReLU, so
    an uncentred random layer gives nearly the same answer everywhere): RPN objectness std 2
    mean 0, anchor deltas std 0.2 mean 0, class logits std 2 with per-class means N(0, 0.5),
    box deltas std 1 mean 0 (Box2BoxTransform weights 10,10,5,5 make that ~0.1 of a box).
    """
    import detectron2.data.transforms as T

    g = torch.Generator().manual_seed(seed + 1)
    heads = model.roi_heads
    num_outputs = heads.box_predictor.cls_score.out_features
    cls_means = torch.randn(num_outputs, generator=g) * 0.5
    info: dict[str, Any] = {}

    def fit(layer: Any, x: torch.Tensor, name: str, std: float, mean: Any) -> None:
        w = layer.weight.reshape(layer.weight.shape[0], -1).double()
        x = x.double()
        spread = (x @ w.T).std(0).clamp_min(1e-12)
        w = w * (std / spread)[:, None]
        b = torch.as_tensor(mean, dtype=torch.float64) - (x @ w.T).mean(0)
        layer.weight.copy_(w.reshape(layer.weight.shape).float())
        layer.bias.copy_(b.float())
        info[name] = {"samples": int(x.shape[0]), "old_spread_mean": float(spread.mean())}

    def on_rpn_head(mod: Any, args: Any) -> None:
        ts = [mod.conv(f) for f in args[0]]
        x = torch.cat([t.permute(0, 2, 3, 1).reshape(-1, t.shape[1]) for t in ts])
        fit(mod.objectness_logits, x, "objectness_logits", 2.0, 0.0)
        fit(mod.anchor_deltas, x, "anchor_deltas", 0.2, 0.0)

    def on_box_predictor(mod: Any, args: Any) -> None:
        x = args[0].flatten(1)
        fit(mod.cls_score, x, "cls_score", 2.0, cls_means)
        fit(mod.bbox_pred, x, "bbox_pred", 1.0, 0.0)

    handles = [
        model.proposal_generator.rpn_head.register_forward_pre_hook(on_rpn_head),
        heads.box_predictor.register_forward_pre_hook(on_box_predictor),
    ]
    was_training = model.training
    model.eval()
    try:
        aug = T.ResizeShortestEdge(
            [cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MIN_SIZE_TEST], cfg.INPUT.MAX_SIZE_TEST
        )
        image = bgr[:, :, ::-1] if cfg.INPUT.FORMAT == "RGB" else bgr
        resized = aug.get_transform(image).apply_image(image)
        tensor = torch.as_tensor(resized.astype("float32").transpose(2, 0, 1))
        with torch.no_grad():
            model([{"image": tensor, "height": bgr.shape[0], "width": bgr.shape[1]}])
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return info


def save_model_zoo_pkl(model: torch.nn.Module, path: str) -> None:
    state = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump({"model": state, "__author__": "Detectron2 Model Zoo"}, f)


def write_keys(model: torch.nn.Module, path: str, config: str) -> int:
    sd = model.state_dict()
    rows = [
        {"key": k, "shape": list(v.shape), "dtype": str(v.dtype).replace("torch.", "")}
        for k, v in sd.items()
    ]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump({"config": config, "num_keys": len(rows), "keys": rows}, f, indent=1)
    return len(rows)


# ---------------------------------------------------------------------------------------------
# the stages


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy().copy()


@contextlib.contextmanager
def recording(model: Any, pooled_max: int | None) -> Iterator[dict[str, Any]]:
    """Forward hooks on the predictor's model; yields the dict they fill."""
    from detectron2.layers import FrozenBatchNorm2d

    rec: dict[str, Any] = {}
    handles = []
    meta: dict[str, Any] = {"frozen_bn_calls": 0, "frozen_bn_requires_grad": set()}

    def on_model_pre(mod: Any, args: Any) -> None:
        batched = args[0]
        rec["resized_uint8"] = _np(batched[0]["image"]).transpose(1, 2, 0).astype(np.uint8)
        rec["original_size"] = np.array([batched[0]["height"], batched[0]["width"]])
        meta["grad_enabled"] = torch.is_grad_enabled()

    handles.append(model.register_forward_pre_hook(on_model_pre))

    def on_backbone_pre(mod: Any, args: Any) -> None:
        rec["input"] = _np(args[0])

    def on_backbone(mod: Any, args: Any, out: Any) -> None:
        for k, v in out.items():
            rec[k] = _np(v)

    handles.append(model.backbone.register_forward_pre_hook(on_backbone_pre))
    handles.append(model.backbone.register_forward_hook(on_backbone))
    if hasattr(model.backbone, "bottom_up"):
        handles.append(model.backbone.bottom_up.register_forward_hook(on_backbone))

    def on_frozen_bn(mod: Any, args: Any) -> None:
        meta["frozen_bn_calls"] += 1
        meta["frozen_bn_requires_grad"].add(bool(args[0].requires_grad))

    for m in model.modules():
        if isinstance(m, FrozenBatchNorm2d):
            handles.append(m.register_forward_pre_hook(on_frozen_bn))

    # torch.nn.functional.batch_norm, counted (FrozenBN's no-grad path calls it)
    original_bn = torch.nn.functional.batch_norm

    def counting_bn(*a: Any, **kw: Any) -> Any:
        meta["f_batch_norm_calls"] = meta.get("f_batch_norm_calls", 0) + 1
        return original_bn(*a, **kw)

    torch.nn.functional.batch_norm = counting_bn  # type: ignore[assignment]

    rpn = model.proposal_generator
    original_predict = rpn.predict_proposals

    def predict_proposals(anchors: Any, logits: Any, deltas: Any, image_sizes: Any) -> Any:
        for i, (a, lo, d) in enumerate(zip(anchors, logits, deltas, strict=True)):
            rec[f"anchors/{i}"] = _np(a.tensor)
            rec[f"rpn_logits/{i}"] = _np(lo[0])
            rec[f"rpn_deltas/{i}"] = _np(d[0])
        rec["image_size"] = np.array(image_sizes[0])
        return original_predict(anchors, logits, deltas, image_sizes)

    rpn.predict_proposals = predict_proposals

    def on_rpn(mod: Any, args: Any, out: Any) -> None:
        proposals = out[0][0]
        rec["proposals"] = _np(proposals.proposal_boxes.tensor)
        rec["proposal_logits"] = _np(proposals.objectness_logits)

    handles.append(rpn.register_forward_hook(on_rpn))

    heads = model.roi_heads
    pooler = heads.box_pooler if hasattr(heads, "box_pooler") else heads.pooler

    def on_pooler(mod: Any, args: Any, out: Any) -> None:
        n = out.shape[0] if pooled_max is None else min(pooled_max, out.shape[0])
        rec["pooled"] = _np(out[:n])
        rec["pooled_rows"] = np.array(n)

    handles.append(pooler.register_forward_hook(on_pooler))

    def on_predictor_pre(mod: Any, args: Any) -> None:
        rec["box_features"] = _np(args[0])

    def on_predictor(mod: Any, args: Any, out: Any) -> None:
        rec["cls_logits"] = _np(out[0])
        rec["bbox_deltas"] = _np(out[1])

    handles.append(heads.box_predictor.register_forward_pre_hook(on_predictor_pre))
    handles.append(heads.box_predictor.register_forward_hook(on_predictor))

    def on_heads(mod: Any, args: Any, out: Any) -> None:
        inst = out[0][0]
        rec["boxes_resized"] = _np(inst.pred_boxes.tensor)
        rec["scores_resized"] = _np(inst.scores)
        rec["classes_resized"] = _np(inst.pred_classes)

    handles.append(heads.register_forward_hook(on_heads))
    try:
        yield rec
    finally:
        for h in handles:
            h.remove()
        torch.nn.functional.batch_norm = original_bn
        rpn.predict_proposals = original_predict
        rec["_meta"] = meta


def read_bgr(path: str) -> np.ndarray:
    rgb = np.asarray(Image.open(path).convert("RGB"))
    return np.ascontiguousarray(rgb[:, :, ::-1])  # what cv2.imread gives


# ---------------------------------------------------------------------------------------------
# DefaultTrainer's checkpoint


def trainer_checkpoint(cfg: Any, image: str, out: str, iters: int, lr: float) -> dict[str, Any]:
    """Run DefaultTrainer for ``iters`` iterations on a one-image dataset; copy model_final.pth.

    Everything is Detectron2's own (DefaultTrainer, its hooks, PeriodicCheckpointer and
    DetectionCheckpointer), except build_writers (no event writers: TensorboardXWriter would
    need the tensorboard package; writers keep no checkpointed state).
    """
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.engine import DefaultTrainer
    from detectron2.structures import BoxMode

    h, w = np.asarray(Image.open(image).convert("RGB")).shape[:2]
    name = "npfrcnn_one_image"
    if name not in DatasetCatalog.list():
        record = {
            "file_name": os.path.abspath(image), "image_id": 0, "height": h, "width": w,
            "annotations": [{
                "bbox": [w * 0.25, h * 0.25, w * 0.5, h * 0.5], "bbox_mode": BoxMode.XYWH_ABS,
                "category_id": 0, "iscrowd": 0,
            }],
        }
        DatasetCatalog.register(name, lambda: [dict(record)])
        MetadataCatalog.get(name).thing_classes = [
            f"class{i}" for i in range(cfg.MODEL.ROI_HEADS.NUM_CLASSES)
        ]
    cfg = cfg.clone()
    cfg.DATASETS.TRAIN = (name,)
    cfg.DATASETS.TEST = ()
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.SOLVER.IMS_PER_BATCH = 1
    cfg.SOLVER.BASE_LR = lr
    cfg.SOLVER.MAX_ITER = iters
    cfg.SOLVER.STEPS = ()
    cfg.SOLVER.CHECKPOINT_PERIOD = 100000
    cfg.TEST.EVAL_PERIOD = 0
    cfg.INPUT.MIN_SIZE_TRAIN = (320,)
    cfg.INPUT.MAX_SIZE_TRAIN = 512
    tmp = tempfile.mkdtemp(prefix="d2train-")
    cfg.OUTPUT_DIR = tmp

    class Trainer(DefaultTrainer):
        def build_writers(self) -> list[Any]:
            return []

    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    shutil.copyfile(os.path.join(tmp, "model_final.pth"), out)
    listing = sorted(os.listdir(tmp))
    shutil.rmtree(tmp)
    return {"output_dir_files": listing}


# ---------------------------------------------------------------------------------------------
# pickle globals


class _Anything:
    """Stands in for every global while a pickle is walked: built, called, filled, never run."""

    def __new__(cls, *a: Any, **kw: Any) -> _Anything:
        return super().__new__(cls)

    def __init__(self, *a: Any, **kw: Any) -> None:
        pass

    def __call__(self, *a: Any, **kw: Any) -> _Anything:
        return _Anything()

    def __setitem__(self, key: Any, value: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass

    def append(self, item: Any) -> None:
        pass

    def extend(self, items: Any) -> None:
        pass


class _GlobalsUnpickler(pickle.Unpickler):
    def __init__(self, f: Any) -> None:
        super().__init__(f, encoding="latin1")
        self.found: set[str] = set()
        self.persistent_ids: set[str] = set()

    def find_class(self, module: str, name: str) -> Any:
        self.found.add(f"{module}.{name}")
        return type(name, (_Anything,), {})

    def persistent_load(self, pid: Any) -> Any:
        # torch.save: ('storage', <storage type global>, key, location, numel)
        if isinstance(pid, tuple) and pid:
            self.persistent_ids.add(str(pid[0]))
        return _Anything()


def pickle_globals(path: str) -> dict[str, Any]:
    """The globals a pickle references (or each .pkl inside a torch.save zip), none of them run.

    Also the pickle protocol, and the kinds of persistent ids (torch's storages).
    """
    blobs: dict[str, bytes] = {}
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            for n in z.namelist():
                if n.endswith(".pkl"):
                    blobs[n] = z.read(n)
    else:
        with open(path, "rb") as f:
            blobs[os.path.basename(path)] = f.read()
    result: dict[str, Any] = {}
    for member, data in blobs.items():
        u = _GlobalsUnpickler(io.BytesIO(data))
        u.load()
        protocol = next(pickletools.genops(io.BytesIO(data)))
        result[member] = {
            "globals": sorted(u.found),
            "persistent_ids": sorted(u.persistent_ids),
            "protocol": protocol[1] if protocol[0].name == "PROTO" else None,
        }
    return result


# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--config", help="a Detectron2 yaml (path, or relative to --configs-dir)")
    p.add_argument("--configs-dir", default=None)
    p.add_argument("--weights", default=None, help="model-zoo .pkl or a .pth checkpoint")
    p.add_argument("--num-classes", type=int, default=None)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--image", default=None)
    p.add_argument("--out", default=None, help="stages .npz")
    p.add_argument("--keys-out", default=None, help="state_dict keys and shapes .json")
    p.add_argument("--random-weights-out", default=None, metavar="W.pkl")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--units", default=None, metavar="A,B,C,D")
    p.add_argument("--pooled-max", type=int, default=None,
                   help="record the pooled features of the first N proposals only")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--trainer-pth-out", default=None, metavar="model_final.pth")
    p.add_argument("--trainer-iters", type=int, default=2)
    p.add_argument("--trainer-lr", type=float, default=0.0)
    p.add_argument("--list-globals", default=None, metavar="FILE")
    p.add_argument("--summary-out", default=None, help="also write the printed summary (JSON)")
    args = p.parse_args(argv)

    def report(summary: dict[str, Any]) -> int:
        text = json.dumps(summary, indent=1)
        print(text)
        if args.summary_out:
            with open(args.summary_out, "w") as f:
                f.write(text + "\n")
        return 0

    if args.list_globals:
        return report(pickle_globals(args.list_globals))
    if not args.config:
        p.error("--config is required")
    if args.threads:
        torch.set_num_threads(args.threads)

    from detectron2.engine.defaults import DefaultPredictor
    from detectron2.modeling import build_model

    units = _Units(tuple(int(u) for u in args.units.split(",")) if args.units else None)
    summary: dict[str, Any] = {"config": args.config, "torch": torch.__version__}
    weights = args.weights
    if args.random_weights_out:
        cfg = setup_cfg(args, None)
        torch.manual_seed(args.seed)
        units.reset()
        model = build_model(cfg)
        randomize_(model, cfg, args.seed)
        if args.image:  # else: He scaling only
            summary["calibrated_on"] = args.image
            summary["calibration"] = calibrate_(model, cfg, read_bgr(args.image), args.seed)
        save_model_zoo_pkl(model, args.random_weights_out)
        weights = args.random_weights_out
        summary["random_weights"] = args.random_weights_out
        del model
    if not weights:
        p.error("--weights or --random-weights-out is required")
    cfg = setup_cfg(args, weights)

    if args.trainer_pth_out:
        if not args.image:
            p.error("--trainer-pth-out needs --image (the one-image training set)")
        units.reset()
        t0 = time.perf_counter()
        summary["trainer"] = trainer_checkpoint(
            cfg, args.image, args.trainer_pth_out, args.trainer_iters, args.trainer_lr
        )
        summary["trainer"]["wall_s"] = round(time.perf_counter() - t0, 2)
        summary["trainer"]["pth"] = args.trainer_pth_out
        if not args.out:
            return report(summary)

    units.reset()
    t0 = time.perf_counter()
    predictor = DefaultPredictor(cfg)
    summary["build_and_load_s"] = round(time.perf_counter() - t0, 2)
    model = predictor.model
    if args.random_weights_out:  # the pkl round trip is exact
        with open(weights, "rb") as f:
            saved = pickle.load(f)["model"]
        sd = model.state_dict()
        assert list(saved) == list(sd), "pkl keys differ from the model's"
        assert all(np.array_equal(saved[k], sd[k].numpy()) for k in sd), "pkl values differ"
    if args.keys_out:
        summary["num_keys"] = write_keys(model, args.keys_out, args.config)
    if not args.out:
        return report(summary)
    if not args.image:
        p.error("--out needs --image")

    bgr = read_bgr(args.image)
    with recording(model, args.pooled_max) as rec:
        t0 = time.perf_counter()
        outputs = predictor(bgr)
        summary["predict_s"] = round(time.perf_counter() - t0, 2)
    inst = outputs["instances"]
    rec["boxes"] = _np(inst.pred_boxes.tensor)
    rec["scores"] = _np(inst.scores)
    rec["classes"] = _np(inst.pred_classes)
    meta = rec.pop("_meta")
    assert tuple(rec["original_size"]) == bgr.shape[:2]
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    np.savez(args.out, **rec)

    summary.update({
        "image": args.image,
        "original_size": [int(x) for x in rec["original_size"]],
        "image_size": [int(x) for x in rec["image_size"]],
        "input_shape": list(rec["input"].shape),
        "num_proposals": int(rec["proposals"].shape[0]),
        "num_detections_resized": int(rec["boxes_resized"].shape[0]),
        "num_detections": int(rec["boxes"].shape[0]),
        "max_score": float(rec["scores"].max()) if len(rec["scores"]) else None,
        "grad_enabled_in_predictor": meta["grad_enabled"],
        "frozen_bn_calls": meta["frozen_bn_calls"],
        "frozen_bn_input_requires_grad": sorted(meta["frozen_bn_requires_grad"]),
        "f_batch_norm_calls": meta.get("f_batch_norm_calls", 0),
        "stages": {k: [list(v.shape), str(v.dtype)] for k, v in rec.items()},
        "stage_rms": {
            k: round(float(np.sqrt(np.mean(np.square(v, dtype=np.float64)))), 4)
            for k, v in rec.items()
            if k in ("input", "res2", "res3", "res4", "res5", "p2", "p3", "p4", "p5", "p6",
                     "pooled", "box_features")
        },
    })
    return report(summary)


if __name__ == "__main__":
    sys.exit(main())
