"""Convert a torchvision Faster R-CNN checkpoint to an npfrcnn weights file, without torch.

``torchvision_to_hdf5(checkpoint, out, profile)``:

1. reads the checkpoint with :func:`npfrcnn.weights.torch_checkpoint.read_checkpoint` (the zip
   ``torch.save`` writes, a bare state dict or a training checkpoint holding one, or
   ``.safetensors``; a restricted unpickler, no torch);
2. drops a ``module.`` prefix (``nn.DataParallel``) and upgrades the key names torchvision itself
   upgrades on load (``rpn.head.conv.{weight,bias}`` -> ``rpn.head.conv.0.0.*``; FPN
   ``{inner,layer}_blocks.{i}.{weight,bias}`` -> ``...{i}.0.*``);
3. reads the architecture from the keys and shapes: units per block (layer3 has 6 blocks in
   ResNet-50, 23 in ResNet-101), bottleneck width, FPN width, RPN conv depth, box head, class
   count (``cls_score.weight`` has ``num_classes + 1`` rows); the norm layer is
   ``nn.BatchNorm2d`` when the body has ``num_batches_tracked`` buffers, else
   ``FrozenBatchNorm2d``, whose epsilon keys cannot show: 0.0 for ``torchvision-r50-fpn`` (the
   COCO_V1 weights and models fine-tuned from them), 1e-5 otherwise; ``bn_eps`` overrides it;
4. checks every key (unknown, missing, wrong shape: all reported at once, with the profile that
   fits the state dict suggested when another one does), transposes to npfrcnn's layouts
   (:mod:`npfrcnn.weights.torchvision_names`) and writes the HDF5 file with the config, the
   class names (COCO's torchvision list for 90 classes) and the source's sha256.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from npfrcnn.config.fpn import FPNConfig
from npfrcnn.config.profiles.torchvision import TORCHVISION_PROFILES, torchvision_profile
from npfrcnn.weights.coco_names import TORCHVISION_COCO_NAMES
from npfrcnn.weights.hdf5 import WeightsError, write
from npfrcnn.weights.torchvision_names import to_npfrcnn, torch_shapes

__all__ = ["torchvision_to_hdf5", "infer_torchvision_config", "upgrade_keys", "load_classes"]

_LEGACY = [
    (re.compile(r"^rpn\.head\.conv\.(weight|bias)$"), r"rpn.head.conv.0.0.\1"),
    (
        re.compile(r"^backbone\.fpn\.(inner_blocks|layer_blocks)\.(\d+)\.(weight|bias)$"),
        r"backbone.fpn.\1.\2.0.\3",
    ),
]


def upgrade_keys(tensors: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], list[str]]:
    """Strip ``module.`` and apply torchvision's own key upgrades; returns the renames made."""
    items = dict(tensors)
    notes: list[str] = []
    if items and all(k.startswith("module.") for k in items):
        items = {k[len("module."):]: v for k, v in items.items()}
        notes.append("stripped the 'module.' prefix (nn.DataParallel)")
    out: dict[str, np.ndarray] = {}
    for k, v in items.items():
        new = k
        for pat, rep in _LEGACY:
            if pat.match(k):
                new = pat.sub(rep, k)
                break
        if new != k:
            notes.append(f"{k} -> {new}")
        out[new] = v
    return out, notes


def _count_blocks(keys: Sequence[str], layer: int) -> int:
    pat = re.compile(rf"^backbone\.body\.layer{layer}\.(\d+)\.")
    found = {int(m.group(1)) for k in keys if (m := pat.match(k))}
    return max(found) + 1 if found else 0


def _profile_of(keys: set[str], units: tuple[int, ...]) -> str | None:
    """The torchvision profile a state dict's keys look like (None when none fits)."""
    if not any(k.startswith("backbone.body.") for k in keys) or not any(
        k.startswith("backbone.fpn.") for k in keys
    ):
        return None
    v2 = "rpn.head.conv.1.0.weight" in keys or "roi_heads.box_head.0.0.weight" in keys
    if v2:
        return "torchvision-r50-fpn-v2"
    if units and units[2] >= 23:
        return "torchvision-r101-fpn"
    return "torchvision-r50-fpn"


def _shape(tensors: Mapping[str, np.ndarray], key: str) -> tuple[int, ...] | None:
    a = tensors.get(key)
    return None if a is None else tuple(int(d) for d in np.shape(a))


def infer_torchvision_config(
    tensors: Mapping[str, np.ndarray],
    profile: str,
    *,
    bn_eps: float | None = None,
    changes: Mapping[str, Any] | None = None,
) -> FPNConfig:
    """The :class:`FPNConfig` of ``profile`` sized by the state dict's keys and shapes.

    Raises:
        WeightsError: when the keys cannot be a ``profile`` model at all (with a suggestion).
    """
    if profile not in TORCHVISION_PROFILES:
        raise ValueError(
            f"unknown torchvision profile {profile!r}; choose one of "
            f"{', '.join(TORCHVISION_PROFILES)}"
        )
    keys = list(tensors)
    units = tuple(_count_blocks(keys, i) for i in (1, 2, 3, 4))
    cls = _shape(tensors, "roi_heads.box_predictor.cls_score.weight")
    if min(units) == 0 or cls is None or len(cls) != 2:
        fits = _profile_of(set(keys), units)
        hint = (
            f"; it looks like a {fits} state dict" if fits and fits != profile else
            "; it does not look like a torchvision Faster R-CNN (expected keys such as "
            "backbone.body.layer1.0.conv1.weight and roi_heads.box_predictor.cls_score.weight)"
        )
        raise WeightsError(
            "checkpoint",
            [f"cannot read a {profile} architecture from the keys{hint}"],
        )
    base = torchvision_profile(profile)
    kw: dict[str, Any] = {"units_per_block": units, "num_classes": cls[0] - 1,
                          "representation_size": cls[1]}
    c1 = _shape(tensors, "backbone.body.layer1.0.conv1.weight")
    if c1 is not None:
        kw["width_per_group"] = int(c1[0])  # planes 64 -> width = width_per_group
    fpn = _shape(tensors, "backbone.fpn.inner_blocks.0.0.weight")
    if fpn is not None:
        kw["fpn_channels"] = int(fpn[0])
    has_bn = any(
        k.startswith("backbone.body.") and k.endswith("num_batches_tracked") for k in keys
    )
    if base.body_norm == "frozen_bn" and has_bn:
        kw["body_norm"] = "batch_norm"
        kw["bn_eps"] = 1e-5
    if bn_eps is not None:
        kw["bn_eps"] = float(bn_eps)
    anchors = _shape(tensors, "rpn.head.cls_logits.weight")
    if anchors is not None and anchors[0] != base.num_anchors:
        kw["aspect_ratios"] = base.aspect_ratios  # reported as a shape problem below
    if base.box_head == "conv_fc":
        convs = []
        k = 0
        while (s := _shape(tensors, f"roi_heads.box_head.{k}.0.weight")) is not None:
            convs.append(int(s[0]))
            k += 1
        if convs:
            kw["box_head_convs"] = tuple(convs)
    kw.update(changes or {})
    return base.replace(**kw)


def _problems(config: FPNConfig, tensors: Mapping[str, np.ndarray]) -> list[str]:
    expected = torch_shapes(config)
    problems: list[str] = []
    for n, shape in expected.items():
        if n not in tensors:
            problems.append(f"missing key {n!r} (expected shape {list(shape)})")
            continue
        got = _shape(tensors, n)
        if got != shape:
            problems.append(f"key {n!r} has shape {list(got or ())}, expected {list(shape)}")
        a = np.asarray(tensors[n])
        if a.dtype.kind != "f":
            problems.append(f"key {n!r} has dtype {a.dtype}, expected a float tensor")
    for n in sorted(tensors):
        if n in expected or n.endswith("num_batches_tracked"):
            continue
        problems.append(f"unexpected key {n!r}: not part of a {config.name} model")
    return problems


def load_classes(path: str | os.PathLike[str], num_classes: int) -> list[str]:
    """Class names from a JSON list: ``num_classes`` names, or ``num_classes + 1`` with the
    background first (torchvision's ``weights.meta["categories"]`` layout)."""
    from npfrcnn.weights.convert import _load_classes

    names = _load_classes(path)
    if len(names) == num_classes + 1:
        names = names[1:]
    if len(names) != num_classes:
        raise ValueError(
            f"classes file {os.fspath(path)!r} has {len(names)} names but the checkpoint has "
            f"{num_classes} object classes (cls_score has {num_classes + 1} rows, background "
            f"first); give {num_classes} names, or {num_classes + 1} with the background first"
        )
    return names


def torchvision_to_hdf5(
    checkpoint: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    profile: str,
    *,
    classes_json_path: str | os.PathLike[str] | None = None,
    bn_eps: float | None = None,
    changes: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Convert a torchvision checkpoint to npfrcnn HDF5 (module docstring).

    Args:
        checkpoint: a ``.pth``/``.pt`` (``torch.save``'s zip) or ``.safetensors`` file.
        out_path: destination ``.h5`` (written atomically).
        profile: ``torchvision-r50-fpn``, ``torchvision-r50-fpn-v2`` or ``torchvision-r101-fpn``.
        classes_json_path: class names (JSON list); default COCO's torchvision names for 90
            classes, else ``class_1 ..``.
        bn_eps: the FrozenBN epsilon when the keys cannot tell (module docstring).
        changes: other :class:`FPNConfig` fields (inference knobs, e.g. ``min_size``).

    Returns:
        ``{"config": FPNConfig, "provenance": dict, "notes": [str]}``.

    Raises:
        CheckpointError: an unreadable or unsafe checkpoint.
        WeightsError: every unknown, missing or mis-shaped key at once.
    """
    from npfrcnn.weights.torch_checkpoint import read_checkpoint

    ckpt = read_checkpoint(checkpoint)
    tensors, notes = upgrade_keys(ckpt.tensors)
    config = infer_torchvision_config(tensors, profile, bn_eps=bn_eps, changes=changes)
    problems = _problems(config, tensors)
    if problems:
        fits = _profile_of(set(tensors), config.units_per_block)
        if fits and fits != profile:
            problems.insert(0, f"this state dict looks like a {fits} model: pass --profile {fits}")
        raise WeightsError(os.fspath(checkpoint), problems)
    if classes_json_path is not None:
        classes = load_classes(classes_json_path, config.num_classes)
    elif config.num_classes == len(TORCHVISION_COCO_NAMES):
        classes = list(TORCHVISION_COCO_NAMES)
    else:
        classes = [f"class_{i + 1}" for i in range(config.num_classes)]
    arrays = to_npfrcnn(config, tensors)
    dropped = sorted(n for n in tensors if n.endswith("num_batches_tracked"))
    prov: dict[str, Any] = {
        "source": Path(checkpoint).name,
        "source_sha256": ckpt.sha256,
        "source_format": ckpt.source_format,
        "converter": f"npfrcnn convert --from torchvision --profile {profile}",
        "body_norm": config.body_norm,
        "bn_eps": config.bn_eps,
    }
    if ckpt.container:
        prov["container"] = ckpt.container
    if dropped:
        prov["dropped"] = f"{len(dropped)} num_batches_tracked buffers"
    if notes:
        prov["key_upgrades"] = len(notes)
    write(out_path, config, classes, arrays, prov)
    return {"config": config, "provenance": prov, "notes": notes}
