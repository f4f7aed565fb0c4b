"""The trace schema, version 1: what a trace file holds, in which layout, in which order.

A trace is every intermediate of a Faster R-CNN run on one or more images, written by
``npfrcnn trace`` or by an adapter around another system (:mod:`npfrcnn.trace`), so that two
systems can be compared stage by stage (``npfrcnn compare``). It is an HDF5 file (read with h5py
alone) or an ``.npz`` with the same names, so a port in any language can write one.

File layout (HDF5 groups; in an ``.npz`` the same names are the array keys)::

    meta                      JSON: the file's metadata (below). HDF5: an attribute of "/".
    images/<i>/meta           JSON: one image's metadata. HDF5: an attribute of the group.
    images/<i>/<stage>        one array per stage, e.g. images/0/features/0

``<i>`` counts from 0 in input order. In HDF5 the metadata are string attributes named ``meta``
(JSON text); in an ``.npz`` they are 0-d unicode arrays. File metadata (``meta``)::

    format          "npfrcnn-trace"                 (required)
    version         1                               (required)
    family          "fpn" (torchvision-style ResNet-FPN) or "c4" (workshop ResNet-C4)
    profile         e.g. "torchvision-r50-fpn", "workshop" (informative)
    producer        who wrote it, e.g. "npfrcnn 0.1.0 (cpu)", "onnxruntime 1.32.0"
    weights_sha256  sha256 of the weights file the run used ("" when unknown)
    layout          "NHWC" or "NCHW": the layout of every image-like stage (dense, 4-d)
    box_format      "xyxy" or "yxyx": the coordinate order of every box and every delta
                    ((dx, dy, dw, dh) or (dy, dx, dh, dw))
    boxes_normalized  false: pixels. true: boxes divided by an image size: anchors by the
                    network input's (Hp, Wp), the final detections by the original image's
                    (H, W), every other box stage by the resized image's (h, w)
    background      "first" or "last": the background column of ``head/cls`` and ``head/bbox``
    num_classes     object classes, background excluded
    classes         optional list of num_classes names

Image metadata (``images/<i>/meta``)::

    name            the image's file name (informative)
    sha256          sha256 of the decoded pixels: the uint8 [H, W, 3] RGB array's bytes, C order
    original_size   [H, W] of the image
    image_size      [h, w] of the resized image inside the network input
    input_size      [Hp, Wp] of the (padded) network input

The canonical form every reader returns (:meth:`ImageTrace.get`) is NHWC, ``xyxy`` pixels and
background first; an adapter declares what it wrote and the reader converts, nothing is guessed.
:data:`STAGES` lists every stage in pipeline order with its shape and meaning. A trace may leave
stages out (a port that exposes only some); ``compare`` reports them as not traced.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "FORMAT", "VERSION", "Stage", "STAGES", "FPN_LEVELS", "C4_LEVELS", "POOLED_LEVELS",
    "stage_names", "stage_info", "LAYOUTS", "BOX_FORMATS",
]

FORMAT = "npfrcnn-trace"
VERSION = 1
LAYOUTS = ("NHWC", "NCHW")
BOX_FORMATS = ("xyxy", "yxyx")
FPN_LEVELS = ("0", "1", "2", "3", "pool")
POOLED_LEVELS = ("0", "1", "2", "3")
C4_LEVELS = ("0",)


@dataclass(frozen=True)
class Stage:
    """One stage of the schema.

    Attributes:
        name: the array's name under ``images/<i>/``; ``{L}`` stands for a level name.
        kind: how it is compared:
            ``"dense"``: float arrays compared element by element (``image`` marks 4-d arrays
            in the file's ``layout``);
            ``"boxes"``: float ``[N, 4]`` boxes row-aligned with the reference (anchors,
            decoded boxes), compared element by element;
            ``"index"``: integer arrays compared exactly (agreement and first difference);
            ``"set"``: a box set matched by IoU and label (``proposals/boxes``,
            ``detections/boxes``, ``detections/candidates``);
            ``"scores"``/``"labels"``: compared through the matching of their box set.
        dtype: ``"float32"``, ``"int64"`` or ``"uint8"``.
        shape: the canonical shape, in words.
        doc: what it is.
        families: the profile families that have it.
        image: a 4-d image-like array (converted from NCHW).
        deltas: box deltas (converted from ``yxyx`` order).
        group: the pipeline stage it belongs to (rows of a comparison are grouped by it).
    """

    name: str
    kind: str
    dtype: str
    shape: str
    doc: str
    families: tuple[str, ...] = ("fpn", "c4")
    image: bool = False
    deltas: bool = False
    group: str = ""


_S = Stage
#: Every stage, in pipeline order.
STAGES: tuple[Stage, ...] = (
    _S("image", "dense", "uint8", "[H, W, 3]", "the decoded RGB image (optional; for the "
       "report's drawings and for re-running the transform)", group="image"),
    _S("input", "dense", "float32", "[1, Hp, Wp, 3]", "the network input: normalised, resized "
       "and padded (fpn); RGB minus the means (c4)", image=True, group="input"),
    _S("body/{L}", "dense", "float32", "[1, h, w, C]", "the ResNet body's outputs C2..C5 as "
       "levels 0..3 (before the FPN)", families=("fpn",), image=True, group="body"),
    _S("features/{L}", "dense", "float32", "[1, h, w, C]", "the feature map of each level: "
       "FPN levels 0, 1, 2, 3, pool; c4: level 0, block3's output", image=True,
       group="features"),
    _S("rpn/objectness/{L}", "dense", "float32", "fpn [h*w*A]; c4 [h*w*A, 2]", "the RPN's "
       "objectness per anchor, rows in (y, x, anchor) order: fpn logits; c4 softmax "
       "(background, object)", group="rpn"),
    _S("rpn/deltas/{L}", "dense", "float32", "[h*w*A, 4]", "the RPN's box deltas per anchor, "
       "(dx, dy, dw, dh)", deltas=True, group="rpn"),
    _S("anchors/{L}", "boxes", "float32", "[h*w*A, 4]", "the anchors of each level, in the "
       "input's pixels", group="anchors"),
    _S("proposals/decoded", "boxes", "float32", "[sum A, 4]", "every anchor decoded, levels "
       "concatenated in order (before clipping)", group="decode"),
    _S("proposals/topk", "index", "int64", "[T]", "indices into proposals/decoded of the "
       "pre-NMS top-n (fpn: per level, levels in order; c4: into all anchors)",
       group="topk"),
    _S("proposals/candidates", "boxes", "float32", "[T, 4]", "the top-n boxes (fpn: clipped)",
       group="topk"),
    _S("proposals/candidate_scores", "dense", "float32", "[T]", "their objectness (fpn: "
       "sigmoid; c4: softmax object column)", group="topk"),
    _S("proposals/keep", "index", "int64", "[K]", "indices into proposals/candidates that the "
       "filters and NMS keep, in NMS order, before the post-NMS top-n cut", group="nms"),
    _S("proposals/boxes", "set", "float32", "[P, 4]", "the proposals, in the input's pixels",
       group="proposals"),
    _S("proposals/scores", "scores", "float32", "[P]", "their objectness", group="proposals"),
    _S("roi_levels", "index", "int64", "[P]", "the FPN level (0..3) each proposal is pooled "
       "from", families=("fpn",), group="levels"),
    _S("pooled", "dense", "float32", "[P, S, S, C]", "the pooled RoIs (fpn: RoIAlign 7x7; c4: "
       "crop_and_resize 14x14 + max-pool 2x2)", image=True, group="pooled"),
    _S("box_head", "dense", "float32", "[P, R]", "the box head's representation (fpn: "
       "TwoMLPHead; c4: block4 + spatial mean)", group="head"),
    _S("head/cls", "dense", "float32", "[P, n + 1]", "fpn: class logits; c4: class "
       "probabilities; background in column 0 (canonical)", group="head"),
    _S("head/bbox", "dense", "float32", "fpn [P, 4 (n + 1)]; c4 [P, 4 n]", "the box deltas "
       "per class, (dx, dy, dw, dh) per class", deltas=True, group="head"),
    _S("detections/candidates", "set", "float32", "[M, 4]", "fpn: the boxes that pass the "
       "score and size filters, before the per-class NMS (resized image's pixels)",
       families=("fpn",), group="candidates"),
    _S("detections/candidate_scores", "scores", "float32", "[M]", "their scores",
       families=("fpn",), group="candidates"),
    _S("detections/candidate_labels", "labels", "int64", "[M]", "their class (0-based, "
       "background excluded)", families=("fpn",), group="candidates"),
    _S("detections/keep", "index", "int64", "[D']", "indices into detections/candidates the "
       "per-class NMS keeps, in order, before the cut", families=("fpn",),
       group="final_nms"),
    _S("detections/boxes", "set", "float32", "[D, 4]", "the final detections, in the original "
       "image's pixels", group="detections"),
    _S("detections/scores", "scores", "float32", "[D]", "their scores", group="detections"),
    _S("detections/labels", "labels", "int64", "[D]", "their class (0-based, background "
       "excluded)", group="detections"),
)


def _levels(family: str, name: str) -> tuple[str, ...]:
    if name.startswith("body/"):
        return POOLED_LEVELS
    return FPN_LEVELS if family == "fpn" else C4_LEVELS


def stage_names(family: str) -> list[str]:
    """Every stage name of ``family`` (``"fpn"`` or ``"c4"``), levels expanded, in order.

    Levels are expanded level-major within a group of per-level stages (all of ``rpn`` for level
    0, then level 1, ...), so that a stage's inputs always come before it.
    """
    out: list[str] = []
    pending: list[Stage] = []

    def flush() -> None:
        if not pending:
            return
        for lvl in _levels(family, pending[0].name):
            out.extend(s.name.replace("{L}", lvl) for s in pending)
        pending.clear()

    for s in STAGES:
        if family not in s.families:
            continue
        if "{L}" in s.name:
            if pending and pending[0].group != s.group:
                flush()
            pending.append(s)
            continue
        flush()
        out.append(s.name)
    flush()
    return out


def stage_info(name: str) -> Stage:
    """The :class:`Stage` of a concrete name (``"features/pool"`` -> ``features/{L}``)."""
    for s in STAGES:
        if s.name == name:
            return s
        if "{L}" in s.name:
            prefix = s.name.split("{L}")[0]
            if name.startswith(prefix) and "/" not in name[len(prefix):]:
                return s
    raise KeyError(name)


def level_of(name: str) -> str | None:
    """The level part of a per-level stage name, else ``None``."""
    s = stage_info(name)
    if "{L}" not in s.name:
        return None
    return name[len(s.name.split("{L}")[0]):]
