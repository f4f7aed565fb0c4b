"""Seeded random-weight torchvision Faster R-CNN models (the oracle), and torch's own stages.

Only torch and torchvision are used here: nothing from npfrcnn, so the oracle shares no code
with what it checks.

``build(variant, small=True)`` returns a torchvision ``FasterRCNN`` in eval mode:

* ``r50-frozen0``: ``torchvision-r50-fpn`` as ``fasterrcnn_resnet50_fpn(weights=COCO_V1)``
  builds it (FrozenBatchNorm2d, then ``overwrite_eps(model, 0.0)``);
* ``r50-bn``: ``fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None)`` (BatchNorm2d);
* ``v2``: ``fasterrcnn_resnet50_fpn_v2`` (BatchNorm2d body, BN FPN, 2-conv RPN, conv+fc head);
* ``r101``: ``FasterRCNN(resnet_fpn_backbone("resnet101", ...))`` (FrozenBatchNorm2d eps 1e-5).

``small=True`` keeps each architecture's structure (every part and branch) at a reduced size so
CI stays fast: one bottleneck per layer (``r101``: (1, 1, 2, 1), so layer3 has more blocks
than layer1 as in ResNet-101), bottleneck width 16 per group, FPN width 32, representation 64,
5 object classes, images resized to min 160 / max 256. ``small=False`` is the full-size model
(91 classes, 800/1333) built by torchvision's own builder functions.

Norm buffers and every bias are randomised (seeded), so that BN is not the identity and the
RPN and heads produce varied scores.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn
from torchvision.models import resnet
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection import faster_rcnn as frc
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.rpn import RPNHead, concat_box_prediction_layers
from torchvision.ops import misc as misc_nn_ops

VARIANTS = {
    "r50-frozen0": ("torchvision-r50-fpn", 0.0),
    "r50-bn": ("torchvision-r50-fpn", 1e-5),
    "v2": ("torchvision-r50-fpn-v2", 1e-5),
    "r101": ("torchvision-r101-fpn", 1e-5),
}

SMALL = dict(min_size=160, max_size=256, fpn=32, rep=64, classes=5, wpg=16)


def _randomise(model: nn.Module, seed: int, small: bool) -> None:
    """Seeded norm buffers and biases. The full-size nets get smaller BN gains so that 16 to 33
    residual blocks do not grow the activations into saturated logits and degenerate boxes."""
    g = torch.Generator().manual_seed(seed)
    gain = (0.5, 1.0) if small else (0.2, 0.3)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, nn.BatchNorm2d | misc_nn_ops.FrozenBatchNorm2d):
                c = mod.weight.shape[0]
                mod.weight.copy_(gain[0] + gain[1] * torch.rand(c, generator=g))
                mod.bias.copy_(0.2 * torch.randn(c, generator=g))
                mod.running_mean.copy_(0.2 * torch.randn(c, generator=g))
                mod.running_var.copy_(0.5 + torch.rand(c, generator=g))
            elif isinstance(mod, nn.Conv2d | nn.Linear) and mod.bias is not None:
                mod.bias.copy_(0.05 * torch.randn(mod.bias.shape, generator=g))
        # Spread the RPN logits and class scores so that top-k, NMS and the score threshold
        # have something to choose from.
        head = model.rpn.head
        head.cls_logits.weight.mul_(20.0)
        head.bbox_pred.weight.mul_(5.0)
        pred = model.roi_heads.box_predictor
        pred.cls_score.weight.mul_(10.0 if small else 60.0)
        pred.bbox_pred.weight.mul_(5.0)


def _small(variant: str, seed: int) -> FasterRCNN:
    s = SMALL
    if variant == "v2":
        norm: Any = nn.BatchNorm2d
    elif variant == "r50-bn":
        norm = nn.BatchNorm2d
    else:
        norm = misc_nn_ops.FrozenBatchNorm2d
    layers = [1, 1, 2, 1] if variant == "r101" else [1, 1, 1, 1]
    body = resnet.ResNet(resnet.Bottleneck, layers, width_per_group=s["wpg"], norm_layer=norm)
    return_layers = {f"layer{k}": str(v) for v, k in enumerate([1, 2, 3, 4])}
    fpn_norm = nn.BatchNorm2d if variant == "v2" else None
    backbone = BackboneWithFPN(
        body, return_layers, [256, 512, 1024, 2048], s["fpn"], norm_layer=fpn_norm
    )
    if variant == "v2":
        rpn_head = RPNHead(s["fpn"], 3, conv_depth=2)
        box_head: nn.Module = frc.FastRCNNConvFCHead(
            (s["fpn"], 7, 7), [s["fpn"]] * 4, [s["rep"]], norm_layer=nn.BatchNorm2d
        )
    else:
        rpn_head = RPNHead(s["fpn"], 3)
        box_head = frc.TwoMLPHead(s["fpn"] * 49, s["rep"])
    model = FasterRCNN(
        backbone, None, min_size=s["min_size"], max_size=s["max_size"], rpn_head=rpn_head,
        box_head=box_head, box_predictor=frc.FastRCNNPredictor(s["rep"], s["classes"] + 1),
    )
    if variant == "r50-frozen0":
        frc.overwrite_eps(model, 0.0)
    return model


def _full(variant: str) -> FasterRCNN:
    if variant == "r50-bn":
        return frc.fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None)
    if variant == "v2":
        return frc.fasterrcnn_resnet50_fpn_v2(weights=None, weights_backbone=None)
    if variant == "r50-frozen0":
        body = resnet.resnet50(weights=None, norm_layer=misc_nn_ops.FrozenBatchNorm2d)
        backbone = frc._resnet_fpn_extractor(body, 3)
        model = FasterRCNN(backbone, num_classes=91)
        frc.overwrite_eps(model, 0.0)
        return model
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

    return FasterRCNN(resnet_fpn_backbone(backbone_name="resnet101", weights=None), 91)


def build(variant: str, small: bool = True, seed: int = 0) -> FasterRCNN:
    torch.manual_seed(seed)
    model = _small(variant, seed) if small else _full(variant)
    _randomise(model, seed + 1, small)
    return model.eval()


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 HWC -> float CHW in [0, 1], as ``torchvision.transforms.functional.to_tensor``."""
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float().div(255)


@torch.no_grad()
def stages(model: FasterRCNN, image: np.ndarray) -> dict[str, Any]:
    """torch's own intermediates for one image, by calling the model's parts in its order."""
    torch.set_num_threads(2)
    img = to_tensor(image)
    images, _ = model.transform([img])
    body = model.backbone.body(images.tensors)
    features = model.backbone.fpn(body)
    feats = list(features.values())
    objectness, deltas = model.rpn.head(feats)
    anchors = model.rpn.anchor_generator(images, feats)
    num_per_level = [int(o[0].numel()) for o in objectness]
    obj_flat, deltas_flat = concat_box_prediction_layers(objectness, deltas)
    decoded = model.rpn.box_coder.decode(deltas_flat.detach(), anchors).view(1, -1, 4)
    boxes, scores = model.rpn.filter_proposals(
        decoded, obj_flat, images.image_sizes, num_per_level
    )
    box_features = model.roi_heads.box_roi_pool(features, boxes, images.image_sizes)
    head_out = model.roi_heads.box_head(box_features)
    class_logits, box_regression = model.roi_heads.box_predictor(head_out)
    b, s, lab = model.roi_heads.postprocess_detections(
        class_logits, box_regression, boxes, images.image_sizes
    )
    dets = model.transform.postprocess(
        [{"boxes": b[0], "scores": s[0], "labels": lab[0]}], images.image_sizes,
        [tuple(image.shape[:2])],
    )[0]
    return {
        "input": images.tensors, "image_size": tuple(images.image_sizes[0]),
        "body": list(body.values()), "features": features, "objectness": objectness,
        "deltas": deltas, "anchors": anchors[0], "decoded": decoded[0],
        "proposals": boxes[0], "proposal_scores": scores[0], "pooled": box_features,
        "box_head": head_out, "class_logits": class_logits, "box_regression": box_regression,
        "post_boxes": b[0], "post_scores": s[0], "post_labels": lab[0], "detections": dets,
    }


def nhwc(t: torch.Tensor) -> np.ndarray:
    """``[N, C, H, W]`` torch -> ``[N, H, W, C]`` float32 numpy."""
    return np.ascontiguousarray(t.detach().permute(0, 2, 3, 1).numpy())
