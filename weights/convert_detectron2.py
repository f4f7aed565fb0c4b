"""Convert a Detectron2 Faster R-CNN (model-zoo ``.pkl`` or ``model_final.pth``) to npfrcnn HDF5.

``detectron2_to_hdf5(path, out, profile)``, without torch:

1. reads the file, its format decided by its content, never its extension: a plain pickle (the
   model zoo's ``model_final_*.pkl``: ``{"model": {key: ndarray}, "__author__": "Detectron2 Model
   Zoo"}``, or a bare ``{key: ndarray}``) with :mod:`npfrcnn.weights.detectron2_pickle`'s
   allowlist unpickler; anything else (``torch.save``'s zip or legacy file, as Detectron2's
   trainer writes ``model_final.pth``: the state dict under ``"model"`` beside ``"optimizer"``,
   ``"scheduler"``, ``"iteration"`` or ``"trainer"``, which are parsed and ignored; or
   safetensors) with :func:`npfrcnn.weights.torch_checkpoint.read_checkpoint`;
2. drops a ``module.`` prefix (``DistributedDataParallel``; fvcore's ``Checkpointer`` strips it
   too) and the entries Detectron2 itself does not load (:data:`BENIGN_EXTRAS`, each noted):
   ``pixel_mean`` / ``pixel_std`` (buffers of old checkpoints; Detectron2 normalises with its
   config's values, and so does npfrcnn: a file whose values differ gets a note with the
   ``--set`` that would use them), ``proposal_generator.anchor_generator.cell_anchors.*``
   (non-persistent since 2020; Detectron2 drops them explicitly) and ``*.num_batches_tracked``
   (Detectron2's ``FrozenBatchNorm2d`` has none; a BN-trained file's are unused counters);
3. reads the architecture from the keys and shapes: FPN files have ``backbone.bottom_up.*`` and
   ``backbone.fpn_lateral2.weight``, C4 files ``roi_heads.res5.*``; the block counts of
   ``res2..res5`` (``res4``: 6 blocks in ResNet-50, 23 in ResNet-101; reduced test models have
   other counts and are taken as they are), the bottleneck width, the FPN width, the box head's
   fully connected layers and the class count (``cls_score.weight`` has ``num_classes + 1`` rows,
   the background **last**);
4. checks every key against :func:`npfrcnn.weights.detectron2_names.torch_shapes` (missing,
   unexpected, mis-shaped, non-float: all reported at once, with the profile that fits the file
   suggested when another one was given), converts the layouts once
   (:func:`~npfrcnn.weights.detectron2_names.to_npfrcnn`: OIHW -> HWIO, ``Linear`` transposed,
   FPN ``fc1``'s rows permuted from torch's (C, H, W) flatten to NHWC's (H, W, C)) and writes
   the HDF5 file under Detectron2's own key names, with the config, the class names and the
   provenance (source sha256 and format, ``__author__``).

Detectron2's ResNet-50 C4 (``faster_rcnn_R_50_C4_*``) differs from ``detectron2-r101-c4`` only
in its depth; it has no profile of its own and converts with ``--profile detectron2-r101-c4``
(the block counts come from the keys; a note says so). What keys cannot show (``stride_in_1x1``,
True for the MSRA-initialised model zoo; ``bn_eps``; test-time thresholds and sizes) comes from
the profile, and ``changes`` (``--set KEY=VALUE``) sets any :class:`Detectron2Config` field.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from npfrcnn.config.detectron2 import Detectron2Config
from npfrcnn.config.profiles.detectron2 import DETECTRON2_PROFILES, detectron2_profile
from npfrcnn.weights.coco_names import TORCHVISION_COCO_NAMES
from npfrcnn.weights.detectron2_names import to_npfrcnn, torch_shapes
from npfrcnn.weights.hdf5 import WeightsError, write

__all__ = [
    "BENIGN_EXTRAS", "COCO_CLASSES", "Detectron2Weights", "detectron2_to_hdf5",
    "infer_detectron2_config", "load_detectron2_classes", "read_detectron2_weights",
    "suggest_profile",
]

#: Detectron2's COCO ``thing_classes`` (``builtin_meta.COCO_CATEGORIES`` with ``isthing``), in
#: its contiguous class-id order: torchvision's 90-entry list without its ``N/A`` gaps.
COCO_CLASSES: tuple[str, ...] = tuple(n for n in TORCHVISION_COCO_NAMES if n != "N/A")

#: Entries a Detectron2 file may hold that Detectron2 does not load (pattern, why).
BENIGN_EXTRAS: tuple[tuple[str, str], ...] = (
    (r"^pixel_(mean|std)$", "a buffer of old checkpoints; Detectron2 normalises with its config's "
     "MODEL.PIXEL_MEAN / PIXEL_STD"),
    (r"^proposal_generator\.anchor_generator\.cell_anchors\.\d+$",
     "anchors of old checkpoints; Detectron2 makes them from its config and drops these"),
    (r"\.num_batches_tracked$", "a BatchNorm counter; Detectron2's FrozenBatchNorm2d has none"),
)
_BENIGN = tuple((re.compile(p), why) for p, why in BENIGN_EXTRAS)

_FIXED_FIELDS = ("architecture", "variant", "name")


@dataclass
class Detectron2Weights:
    """The state dict of a Detectron2 file, as read.

    Attributes:
        tensors: state-dict key -> NumPy array, as saved (prefixes and extras still there).
        source_format: ``"detectron2-pkl"``, ``"torch-zip"``, ``"torch-legacy"`` or
            ``"safetensors"``.
        container: the key the state dict was under (``"model"``), None for a bare one.
        author: a pickle's ``__author__``.
        matching_heuristics: a pickle's ``matching_heuristics`` flag (names to be matched by
            Detectron2's heuristics: not Detectron2's own module names).
        sha256: hex digest of the file.
    """

    tensors: dict[str, np.ndarray] = field(repr=False)
    source_format: str
    container: str | None
    author: str | None
    matching_heuristics: bool
    sha256: str


def read_detectron2_weights(path: str | os.PathLike[str]) -> Detectron2Weights:
    """Read a Detectron2 state dict from a ``.pkl`` or a torch checkpoint (format by content).

    Raises:
        CheckpointError: an unreadable, unsafe or damaged file (module docstring).
    """
    from npfrcnn.weights.detectron2_pickle import (
        _check_path,
        is_plain_pickle,
        read_detectron2_pickle,
    )
    from npfrcnn.weights.torch_checkpoint import CheckpointError, read_checkpoint

    p = Path(path)
    _check_path(p)
    try:
        with open(p, "rb") as f:
            head = f.read(16)
    except OSError as e:
        raise CheckpointError(p, f"the file cannot be read ({e})", "Check the file") from None
    if is_plain_pickle(head):
        pk = read_detectron2_pickle(p)
        return Detectron2Weights(pk.tensors, pk.source_format, pk.container, pk.author,
                                 pk.matching_heuristics, pk.sha256)
    ck = read_checkpoint(p)
    return Detectron2Weights(ck.tensors, ck.source_format, ck.container, None, False, ck.sha256)


def _shape(tensors: Mapping[str, np.ndarray], key: str) -> tuple[int, ...] | None:
    a = tensors.get(key)
    return None if a is None else tuple(int(d) for d in np.shape(a))


def _resnet_prefixes(variant: str) -> tuple[str, str, str, str]:
    if variant == "fpn":
        return tuple(f"backbone.bottom_up.res{i}." for i in (2, 3, 4, 5))  # type: ignore[return-value]
    return ("backbone.res2.", "backbone.res3.", "backbone.res4.", "roi_heads.res5.")


def _count_blocks(keys: Sequence[str], prefix: str) -> int:
    pat = re.compile(re.escape(prefix) + r"(\d+)\.")
    found = {int(m.group(1)) for k in keys if (m := pat.match(k))}
    return max(found) + 1 if found else 0


def _units(keys: Sequence[str], variant: str) -> tuple[int, int, int, int]:
    a, b, c, d = (_count_blocks(keys, p) for p in _resnet_prefixes(variant))
    return (a, b, c, d)


def _layout(keys: Sequence[str]) -> str | None:
    """``"fpn"`` or ``"c4"`` from the keys, or None when they are neither."""
    if "backbone.fpn_lateral2.weight" in keys or any(
        k.startswith("backbone.bottom_up.") for k in keys
    ):
        return "fpn"
    if any(k.startswith("roi_heads.res5.") for k in keys):
        return "c4"
    return None


def suggest_profile(keys: Sequence[str], given: str | None = None) -> str | None:
    """The Detectron2 profile a state dict's keys fit, or None when they fit none.

    C4 files fit ``detectron2-r101-c4`` (the only C4 profile; ResNet-50 C4 converts with it).
    FPN files fit ``detectron2-r50-fpn`` when ``res4`` has 6 blocks, ``detectron2-r101-fpn``
    when it has 23, and any FPN profile (``given`` when it is one) for other, reduced, depths.
    """
    keys = list(keys)
    layout = _layout(keys)
    if layout is None:
        return None
    if layout == "c4":
        return "detectron2-r101-c4"
    res4 = _units(keys, "fpn")[2]
    if res4 == 23:
        return "detectron2-r101-fpn"
    if res4 == 6:
        return "detectron2-r50-fpn"
    return given if given in ("detectron2-r50-fpn", "detectron2-r101-fpn") else "detectron2-r50-fpn"


def _hint(fits: str | None, profile: str) -> str:
    if fits and fits != profile:
        return f"these are {fits} weights: pass --profile {fits}"
    return ""


def _check_profile(profile: str) -> None:
    if profile not in DETECTRON2_PROFILES:
        raise ValueError(
            f"unknown Detectron2 profile {profile!r}; choose one of "
            f"{', '.join(DETECTRON2_PROFILES)}"
        )


def _check_changes(changes: Mapping[str, Any]) -> None:
    known = {f.name for f in fields(Detectron2Config)}
    unknown = sorted(set(changes) - known)
    if unknown:
        raise ValueError(
            f"unknown Detectron2Config field(s) {unknown} (--set KEY=VALUE); fields: "
            f"{', '.join(sorted(known - set(_FIXED_FIELDS)))}"
        )
    fixed = sorted(set(changes) & set(_FIXED_FIELDS))
    if fixed:
        raise ValueError(
            f"{fixed} cannot be set: the --profile chooses them (one of "
            f"{', '.join(DETECTRON2_PROFILES)})"
        )


def infer_detectron2_config(
    tensors: Mapping[str, np.ndarray],
    profile: str,
    *,
    changes: Mapping[str, Any] | None = None,
    source: str = "checkpoint",
) -> Detectron2Config:
    """The :class:`Detectron2Config` of ``profile`` sized by the state dict's keys and shapes.

    Args:
        tensors: the state dict (``module.`` prefix and benign extras already dropped).
        profile: one of :data:`~npfrcnn.config.profiles.detectron2.DETECTRON2_PROFILES`.
        changes: other config fields (test-time knobs), applied last.
        source: the file's name, for errors.

    Raises:
        ValueError: an unknown profile or ``changes`` field.
        WeightsError: the keys cannot be a ``profile`` model at all (with the profile that fits).
    """
    _check_profile(profile)
    _check_changes(changes or {})
    base = detectron2_profile(profile)
    keys = list(tensors)
    units = _units(keys, base.variant)
    cls = _shape(tensors, "roi_heads.box_predictor.cls_score.weight")
    if min(units) == 0 or cls is None or len(cls) != 2 or cls[0] < 2:
        fits = suggest_profile(keys, profile)
        hint = _hint(fits, profile) or (
            "it does not look like a Detectron2 Faster R-CNN (expected keys such as "
            f"{_resnet_prefixes(base.variant)[0]}0.conv1.weight and "
            "roi_heads.box_predictor.cls_score.weight)"
        )
        raise WeightsError(source, [f"cannot read a {profile} architecture from the keys: {hint}"])
    kw: dict[str, Any] = {"units_per_block": units, "num_classes": cls[0] - 1}
    res2 = _resnet_prefixes(base.variant)[0]
    c1 = _shape(tensors, res2 + "0.conv1.weight")
    if c1 is not None and c1[0] > 0:
        kw["width_per_group"] = int(c1[0])  # res2's bottleneck width = WIDTH_PER_GROUP (1 group)
    known = {f.name for f in fields(Detectron2Config)}
    rp = "backbone.bottom_up." if base.is_fpn else "backbone."
    for fname, key in (("stem_out_channels", rp + "stem.conv1.weight"),
                       ("res2_out_channels", res2 + "0.conv3.weight")):
        s = _shape(tensors, key)
        if fname in known and s is not None and len(s) == 4 and s[0] > 0:
            kw[fname] = int(s[0])  # STEM_OUT_CHANNELS, RES2_OUT_CHANNELS
    if base.is_fpn:
        lat = _shape(tensors, "backbone.fpn_lateral2.weight")
        if lat is not None and lat[0] > 0:
            kw["fpn_channels"] = int(lat[0])
        n_fc = 0
        while f"roi_heads.box_head.fc{n_fc + 1}.weight" in tensors:
            n_fc += 1
        fc1 = _shape(tensors, "roi_heads.box_head.fc1.weight")
        if n_fc and fc1 is not None and fc1[0] > 0:
            kw["num_fc"] = n_fc
            kw["fc_dim"] = int(fc1[0])
    kw.update(changes or {})
    try:
        return base.replace(**kw)
    except ValueError as e:
        raise WeightsError(source, [f"the keys give an invalid {profile} config: {e}"]) from None


def _problems(config: Detectron2Config, tensors: Mapping[str, np.ndarray]) -> list[str]:
    expected = torch_shapes(config)
    problems: list[str] = []
    for n, shape in expected.items():
        if n not in tensors:
            problems.append(f"missing key {n!r} (expected shape {list(shape)})")
            continue
        got = _shape(tensors, n)
        if got != shape:
            problems.append(f"key {n!r} has shape {list(got or ())}, expected {list(shape)}"
                            + _shape_hint(config, n, got or ()))
        a = np.asarray(tensors[n])
        if a.dtype.kind != "f":
            problems.append(f"key {n!r} has dtype {a.dtype}, expected a float tensor")
    for n in tensors:
        if n not in expected:
            problems.append(f"unexpected key {n!r}: not part of a {config.name} model")
    return problems


def _shape_hint(config: Detectron2Config, key: str, got: tuple[int, ...]) -> str:
    """Why a shape may differ, where the config (not the file) is the likely cause."""
    if key == "roi_heads.box_head.fc1.weight" and len(got) == 2:
        s = math.isqrt(max(got[1] // max(config.fpn_channels, 1), 0))
        if s and s != config.pooler_resolution and config.fpn_channels * s * s == got[1]:
            return f" (fc1 reads {config.fpn_channels} x {s} x {s} features: --set " \
                   f"pooler_resolution={s})"
    if key == "roi_heads.box_predictor.bbox_pred.weight" and got[:1] == (4,):
        return " (class-agnostic box regression, MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG, " \
               "is not supported)"
    if key == "proposal_generator.rpn_head.objectness_logits.weight" and got:
        return (f" (the file has {got[0]} anchors per cell, the config "
                f"{config.num_anchors}: set anchor_sizes / aspect_ratios with --set)")
    return ""


def load_detectron2_classes(path: str | os.PathLike[str], num_classes: int) -> list[str]:
    """Class names from a JSON list of ``num_classes`` names (index = Detectron2's class id,
    its ``MetadataCatalog`` ``thing_classes``; no background entry)."""
    from npfrcnn.weights.convert import _load_classes

    names = _load_classes(path)
    if len(names) != num_classes:
        raise ValueError(
            f"classes file {os.fspath(path)!r} has {len(names)} names but the weights have "
            f"{num_classes} classes (cls_score has {num_classes + 1} rows, the background "
            f"last); give exactly {num_classes} names in class-id order (Detectron2's "
            "thing_classes), without a background entry"
        )
    return names


def _drop_extras(
    tensors: dict[str, np.ndarray], notes: list[str]
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], list[str]]:
    """Strip ``module.``; split off the benign extras. Returns (kept, pixel stats, dropped)."""
    if tensors and all(k.startswith("module.") for k in tensors):
        tensors = {k[len("module."):]: v for k, v in tensors.items()}
        notes.append("stripped the 'module.' prefix (a model saved inside DistributedDataParallel"
                     "; fvcore's Checkpointer strips it too)")
    kept: dict[str, np.ndarray] = {}
    pixel: dict[str, np.ndarray] = {}
    dropped: list[str] = []
    whys: dict[str, list[str]] = {}
    for k, v in tensors.items():
        why = next((w for pat, w in _BENIGN if pat.search(k)), None)
        if why is None:
            kept[k] = v
            continue
        dropped.append(k)
        whys.setdefault(why, []).append(k)
        if k in ("pixel_mean", "pixel_std"):
            pixel[k] = v
    for why, ks in whys.items():
        shown = ", ".join(ks[:3]) + (f" and {len(ks) - 3} more" if len(ks) > 3 else "")
        notes.append(f"ignored {shown}: {why}")
    return kept, pixel, dropped


def _pixel_notes(config: Detectron2Config, pixel: Mapping[str, np.ndarray]) -> list[str]:
    notes = []
    for key in ("pixel_mean", "pixel_std"):
        if key not in pixel:
            continue
        a = np.asarray(pixel[key], dtype=np.float64).reshape(-1)
        ours = np.asarray(getattr(config, key), dtype=np.float64)
        if a.shape != ours.shape or not np.allclose(a, ours, rtol=1e-5, atol=1e-4):
            vals = "[" + ", ".join(f"{x:g}" for x in a.tolist()[:6]) + "]"
            notes.append(
                f"the file's {key} {vals} differs from the config's {list(ours)}; Detectron2 "
                f"uses its config's value, and so does this file: if the model was trained "
                f"with the file's, convert with --set {key}={vals.replace(' ', '')}"
            )
    return notes


def detectron2_to_hdf5(
    path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    profile: str,
    classes_json_path: str | os.PathLike[str] | None = None,
    changes: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Convert Detectron2 weights to npfrcnn HDF5 (module docstring).

    Args:
        path: a model-zoo ``.pkl``, a ``model_final.pth`` written by Detectron2's trainer, a
            bare state dict (pickled NumPy arrays or ``torch.save``), or ``.safetensors``.
        out_path: destination ``.h5`` (written atomically; nothing is written on an error).
        profile: ``detectron2-r101-c4``, ``detectron2-r50-fpn`` or ``detectron2-r101-fpn``.
        classes_json_path: a JSON list of ``num_classes`` names (index = Detectron2's class id);
            default COCO's 80 (:data:`COCO_CLASSES`) for 80 classes, else ``class_0 ..``.
        changes: other :class:`Detectron2Config` fields (``score_thresh_test``,
            ``min_size_test``, ``pixel_mean``, ...).

    Returns:
        ``{"config": Detectron2Config, "provenance": dict, "notes": [str]}``.

    Raises:
        CheckpointError: an unreadable or unsafe file (nothing in it is run).
        WeightsError: every missing, unexpected or mis-shaped key at once, with the profile
            that fits the file when another was given.
        ValueError: an unknown profile or ``changes`` field; a classes file of the wrong length.
    """
    _check_profile(profile)
    _check_changes(changes or {})
    src = read_detectron2_weights(path)
    source = os.fspath(path)
    notes: list[str] = []
    tensors, pixel, dropped = _drop_extras(dict(src.tensors), notes)
    heuristics = (
        "the file sets matching_heuristics: its names are to be matched by Detectron2's "
        "heuristics (an ImageNet backbone, or another codebase's names), not Detectron2's own "
        "module names"
    ) if src.matching_heuristics else ""
    try:
        config = infer_detectron2_config(tensors, profile, changes=changes, source=source)
    except WeightsError as e:
        if heuristics:
            raise WeightsError(source, [heuristics, *e.problems]) from None
        raise
    problems = _problems(config, tensors)
    fits = suggest_profile(list(tensors), profile)
    hint = _hint(fits, profile)
    if hint and not problems and config.units_per_block[2] in (6, 23):
        problems.append(
            f"res4 has {config.units_per_block[2]} blocks (ResNet-{config.depth}), but "
            f"{profile} is ResNet-{detectron2_profile(profile).depth}"
        )
    if problems:
        if hint:
            problems.insert(0, hint)
        if heuristics:
            problems.insert(0, heuristics)
        raise WeightsError(source, problems)
    if config.variant == "c4" and config.units_per_block == (3, 4, 6, 3):
        notes.append(
            "ResNet-50 C4 weights (Detectron2's faster_rcnn_R_50_C4): they have no profile of "
            f"their own; converted as {profile} with ResNet-50's blocks (3, 4, 6, 3), the only "
            "difference between the two"
        )
    notes.extend(_pixel_notes(config, pixel))
    if src.source_format == "detectron2-pkl" and src.container == "model" and src.author is None:
        notes.append("the pickle has no __author__: Detectron2's DetectionCheckpointer would "
                     "take it for a Caffe2 file; its keys are read as Detectron2's")
    if classes_json_path is not None:
        classes = load_detectron2_classes(classes_json_path, config.num_classes)
    elif config.num_classes == len(COCO_CLASSES):
        classes = list(COCO_CLASSES)
    else:
        classes = [f"class_{i}" for i in range(config.num_classes)]
    arrays = to_npfrcnn(config, tensors)
    prov: dict[str, Any] = {
        "source": Path(path).name,
        "source_sha256": src.sha256,
        "source_format": src.source_format,
        "converter": f"npfrcnn convert --from detectron2 --profile {profile}",
    }
    if src.container:
        prov["container"] = src.container
    if src.author is not None:
        prov["author"] = src.author
    if dropped:
        prov["dropped"] = dropped if len(dropped) <= 8 else (
            dropped[:8] + [f"... {len(dropped) - 8} more"]
        )
    if changes:
        prov["changes"] = dict(changes)
    write(out_path, config, classes, arrays, prov)
    return {"config": config, "provenance": prov, "notes": notes}
