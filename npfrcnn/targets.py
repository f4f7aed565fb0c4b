"""Training targets: which anchors and proposals are foreground, background or ignored, and
the regression targets that take them to their ground-truth boxes.

Two systems are reproduced, each as a named preset of a small frozen config:

* **Luminoth** (``luminoth/models/fasterrcnn/rpn_target.py`` and ``rcnn_target.py``, values from
  ``base_config.yml``, pipeline-spec section 2.1): :meth:`AnchorTargetConfig.luminoth`,
  :meth:`ProposalTargetConfig.luminoth`.
* **The wheat write-up** (``ehijano/Faster-RCNN-Global-Wheat-Detection`` ``RPN.py`` /
  ``RCNN.py``, spec section 3): :meth:`AnchorTargetConfig.wheat`,
  :meth:`ProposalTargetConfig.wheat`.

Conventions (both functions)
    Labels are ``int32``: ``1`` (or a class ``1..K`` for the R-CNN) foreground, ``0``
    background, ``-1`` ignored (not in the minibatch). IoU is :func:`npfrcnn.boxes.iou` and
    regression targets are :func:`npfrcnn.boxes.encode`, both in float32 with the config's
    ``plus_one`` width convention. Box targets are zero for every row that is not foreground.
    Each row's regression target is towards its highest-IoU ground-truth box; IoU ties between
    ground-truth boxes pick the lower ground-truth index (``np.argmax``, and ``tf.argmax`` on CPU).

Sampling
    Subsampling is deterministic given ``rng`` (a ``numpy.random.Generator``, or an int seed
    for ``numpy.random.default_rng``). To drop ``n - keep`` of ``n`` candidates, the candidate
    indices (in increasing order) are shuffled with ``rng.permutation`` and the first
    ``n - keep`` of the shuffled list are set to ``-1``: Luminoth's ``tf.random_shuffle`` then
    slice, with NumPy's generator. Foreground is subsampled first, then background. ``rng`` is
    used only when a subsampling step actually drops something.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from npfrcnn import boxes as _boxes
from npfrcnn._validate import as_boxes, check_positive_int, check_unit_interval

__all__ = [
    "AnchorTargetConfig",
    "ProposalTargetConfig",
    "AnchorTargets",
    "ProposalTargets",
    "anchor_targets",
    "proposal_targets",
    "per_class_targets",
]

RngLike = np.random.Generator | int


def _check_sampling(fraction: float | None, ratio: float | None, minibatch: int) -> None:
    check_positive_int("minibatch_size", minibatch)
    if (fraction is None) == (ratio is None):
        raise ValueError(
            "set exactly one of foreground_fraction (Luminoth) and background_ratio (wheat), "
            f"got foreground_fraction={fraction!r}, background_ratio={ratio!r}"
        )
    if fraction is not None:
        check_unit_interval("foreground_fraction", fraction)
    if ratio is not None and not (np.isfinite(ratio) and ratio >= 0):
        raise ValueError(f"background_ratio must be finite and >= 0, got {ratio!r}")


def _check_thresholds(fg: float, bg_low: float, bg_high: float) -> None:
    check_unit_interval("foreground_threshold", fg)
    check_unit_interval("background_threshold_low", bg_low)
    check_unit_interval("background_threshold_high", bg_high)
    if bg_low > bg_high:
        raise ValueError(
            f"background_threshold_low ({bg_low}) must not exceed background_threshold_high "
            f"({bg_high})"
        )


@dataclass(frozen=True)
class AnchorTargetConfig:
    """How anchors are labelled for the RPN. Defaults are Luminoth's (``base_config.yml``
    ``model.rpn.target``; behaviour from ``rpn_target.py``).

    Attributes:
        foreground_threshold: an anchor whose best IoU is ``>=`` this is foreground.
            Luminoth 0.7; wheat ``RPN.py`` 0.6 (its README says 0.7).
        background_threshold_high: background needs best IoU ``<`` this (``<=`` when
            ``background_high_inclusive``). Luminoth 0.3; wheat 0.3.
        background_threshold_low: background needs best IoU ``>=`` this. Luminoth's config has
            0.0 (``rpn_target.py`` does not read it; IoU is never negative, so 0.0 is the same).
        background_high_inclusive: wheat ``RPN.py`` uses ``anchor_max_overlaps <= BG_THRESHOLD``;
            Luminoth uses ``<`` (False).
        allowed_border: anchors are used only if ``x1 >= -b``, ``y1 >= -b``, ``x2 < W + b`` and
            ``y2 < H + b``; the others get label -1. Luminoth 0; wheat ``border=0``.
        clobber_positives: False (Luminoth): background is assigned first, so the
            best-anchor and threshold rules can turn it foreground. True (wheat's order):
            background is assigned last and overrides foreground.
        best_match_requires_overlap: the "best anchors for each ground truth" rule marks every
            anchor whose IoU equals that ground truth's maximum. Luminoth and wheat apply it even
            when the maximum is 0, which marks every non-overlapping anchor foreground (a known
            py-faster-rcnn defect). True skips ground truths whose best IoU is 0. Both presets:
            False (faithful).
        minibatch_size: anchors per image in the minibatch. Luminoth 256; wheat
            ``BATCH_SIZE = 256``.
        foreground_fraction: Luminoth's sampling: at most ``int(fraction * minibatch_size)``
            foreground, then at most ``minibatch_size - n_foreground`` background. Luminoth 0.5.
        background_ratio: wheat's sampling: at most ``int(minibatch_size / (1 + ratio))``
            foreground, then at most ``int(n_foreground * ratio)`` background (so an image
            without foreground contributes no background). Wheat ``BG_FG_FRAC = 2``.
        plus_one: ``x2 - x1 + 1`` widths for IoU and encoding (Luminoth's ``bbox_overlap_tf``
            and ``bbox_transform_tf.encode``; wheat's ``bbox_overlaps`` and ``bbox_transform``).
            Wheat's ``bbox_overlaps`` also truncates its first argument with ``astype(int)``;
            that is not reproduced (a no-op for its integer anchors).
        variances: divide the targets by these (RPN: none in both systems).
    """

    foreground_threshold: float = 0.7
    background_threshold_high: float = 0.3
    background_threshold_low: float = 0.0
    background_high_inclusive: bool = False
    allowed_border: float = 0.0
    clobber_positives: bool = False
    best_match_requires_overlap: bool = False
    minibatch_size: int = 256
    foreground_fraction: float | None = 0.5
    background_ratio: float | None = None
    plus_one: bool = True
    variances: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        _check_thresholds(
            self.foreground_threshold,
            self.background_threshold_low,
            self.background_threshold_high,
        )
        _check_sampling(self.foreground_fraction, self.background_ratio, self.minibatch_size)
        if not np.isfinite(self.allowed_border):
            raise ValueError(f"allowed_border must be finite, got {self.allowed_border!r}")

    @classmethod
    def luminoth(cls) -> AnchorTargetConfig:
        """Luminoth's RPN target (spec 2.1): 0.7 / [0.0, 0.3), border 0, 256, fraction 0.5."""
        return cls()

    @classmethod
    def wheat(cls, foreground_threshold: float = 0.6) -> AnchorTargetConfig:
        """The wheat write-up's RPN target (spec 3.2): foreground >= 0.6 (pass 0.7 for the
        README's value), background <= 0.3 assigned last, border 0, 256 with 2 background per
        foreground (85 foreground at most), +1 widths."""
        return cls(
            foreground_threshold=foreground_threshold,
            background_threshold_high=0.3,
            background_threshold_low=0.0,
            background_high_inclusive=True,
            allowed_border=0.0,
            clobber_positives=True,
            minibatch_size=256,
            foreground_fraction=None,
            background_ratio=2.0,
            plus_one=True,
        )

    def replace(self, **changes: object) -> AnchorTargetConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


@dataclass(frozen=True)
class ProposalTargetConfig:
    """How proposals are labelled for the R-CNN head. Defaults are Luminoth's
    (``base_config.yml`` ``model.rcnn.target`` and ``target_normalization_variances``;
    behaviour from ``rcnn_target.py``).

    Attributes:
        foreground_threshold: best IoU ``>=`` this gives the class of the best ground truth
            (``gt_class + 1``). Luminoth 0.5; wheat ``FG_THRESHOLD_RCNN = 0.5``.
        background_threshold_high: background needs best IoU ``<`` this. Luminoth 0.5; wheat
            ``BG_THRESH_HI = 0.2``.
        background_threshold_low: background needs best IoU ``>=`` this (below: ignored).
            Luminoth 0.0; wheat 0.0.
        best_proposal_per_gt: Luminoth also makes, for every ground truth, its best proposal
            (the first on ties, ``tf.argmax``) foreground with that ground truth's class; this
            overrides the threshold labels, and when two ground truths share a best proposal the
            later one's class wins (``sparse_to_dense``). Its box target is still towards the
            proposal's own highest-IoU ground truth, as in Luminoth. Wheat: False.
        best_match_requires_overlap: skip the rule above for a ground truth whose best IoU is 0
            (Luminoth would mark proposal 0). Both presets: False (faithful).
        minibatch_size, foreground_fraction, background_ratio: as in
            :class:`AnchorTargetConfig`. Luminoth 256 / 0.25. Wheat ``RCNN.py``: 256 with
            ``BG_FG_FRAC_RCNN = 1`` (at most 128 foreground and as many background).
        variances: ``(xy, wh)`` or 4 values; targets are divided by them. Luminoth
            ``[0.1, 0.2]``; wheat none.
        plus_one: ``x2 - x1 + 1`` widths for IoU and encoding (both systems). Wheat's
            ``bbox_overlaps(proposals, ...)`` truncates the proposals to integers first; that
            is not reproduced (pass integer proposals to match it).
    """

    foreground_threshold: float = 0.5
    background_threshold_high: float = 0.5
    background_threshold_low: float = 0.0
    best_proposal_per_gt: bool = True
    best_match_requires_overlap: bool = False
    minibatch_size: int = 256
    foreground_fraction: float | None = 0.25
    background_ratio: float | None = None
    variances: tuple[float, ...] | None = (0.1, 0.2)
    plus_one: bool = True

    def __post_init__(self) -> None:
        _check_thresholds(
            self.foreground_threshold,
            self.background_threshold_low,
            self.background_threshold_high,
        )
        _check_sampling(self.foreground_fraction, self.background_ratio, self.minibatch_size)

    @classmethod
    def luminoth(cls) -> ProposalTargetConfig:
        """Luminoth's R-CNN target (spec 2.1): 0.5 / [0.0, 0.5), 256, fraction 0.25,
        variances [0.1, 0.2], best proposal per ground truth."""
        return cls()

    @classmethod
    def wheat(cls) -> ProposalTargetConfig:
        """The wheat write-up's R-CNN target (spec 3.2): 0.5 / [0.0, 0.2), 256, one background
        per foreground, no variances, +1 widths, no best-proposal rule."""
        return cls(
            foreground_threshold=0.5,
            background_threshold_high=0.2,
            background_threshold_low=0.0,
            best_proposal_per_gt=False,
            minibatch_size=256,
            foreground_fraction=None,
            background_ratio=1.0,
            variances=None,
            plus_one=True,
        )

    def replace(self, **changes: object) -> ProposalTargetConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


class AnchorTargets(NamedTuple):
    """Result of :func:`anchor_targets` (``A`` anchors)."""

    labels: npt.NDArray[np.int32]  # [A] 1 / 0 / -1
    box_targets: npt.NDArray[np.float32]  # [A, 4] zero unless label 1
    max_iou: npt.NDArray[np.float32]  # [A] best IoU; 0 outside the image or without gt
    matched_gt: npt.NDArray[np.int64]  # [A] highest-IoU gt index; -1 outside or without gt


class ProposalTargets(NamedTuple):
    """Result of :func:`proposal_targets` (``N`` proposals)."""

    labels: npt.NDArray[np.int32]  # [N] class 1..K / 0 background / -1 ignored
    box_targets: npt.NDArray[np.float32]  # [N, 4] zero unless label > 0
    max_iou: npt.NDArray[np.float32]  # [N] best IoU; 0 without gt
    matched_gt: npt.NDArray[np.int64]  # [N] highest-IoU gt index; -1 without gt


def _generator(rng: RngLike) -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
        return np.random.default_rng(int(rng))
    raise ValueError(
        f"rng must be a numpy.random.Generator or an int seed, got {type(rng).__name__}; "
        "pass np.random.default_rng(seed)"
    )


def _disable(
    labels: np.ndarray, candidates: np.ndarray, keep: int, rng: np.random.Generator
) -> None:
    """Set all but ``keep`` of ``candidates`` (increasing indices) to -1, chosen by ``rng``."""
    excess = candidates.size - keep
    if excess > 0:
        shuffled = rng.permutation(candidates)
        labels[shuffled[:excess]] = -1


def _sample(
    labels: np.ndarray,
    minibatch: int,
    fraction: float | None,
    ratio: float | None,
    rng: np.random.Generator,
) -> None:
    """Subsample foreground (label > 0) then background (label 0) in place."""
    fg = np.flatnonzero(labels > 0)
    if fraction is not None:
        max_fg = int(fraction * minibatch)
    else:
        assert ratio is not None
        max_fg = int(minibatch / (1.0 + ratio))
    _disable(labels, fg, max_fg, rng)
    n_fg = int(np.count_nonzero(labels > 0))
    max_bg = minibatch - n_fg if fraction is not None else int(n_fg * ratio)  # type: ignore[operator]
    bg = np.flatnonzero(labels == 0)
    _disable(labels, bg, max(max_bg, 0), rng)


def _best_match_mask(overlaps: np.ndarray, requires_overlap: bool) -> np.ndarray:
    """[N] rows whose IoU equals some column's maximum (all ties)."""
    if overlaps.shape[1] == 0 or overlaps.shape[0] == 0:
        return np.zeros(overlaps.shape[0], dtype=bool)
    col_max = overlaps.max(axis=0)  # [G]
    hit = overlaps == col_max[None, :]  # [N,G]
    if requires_overlap:
        hit &= (col_max > 0)[None, :]
    return hit.any(axis=1)


def anchor_targets(
    anchors: npt.ArrayLike,
    gt_boxes: npt.ArrayLike,
    image_shape: Sequence[int],
    config: AnchorTargetConfig | None = None,
    rng: RngLike = 0,
) -> AnchorTargets:
    """RPN labels and regression targets for one image.

    Steps (Luminoth ``rpn_target.py``; wheat ``RPN.py::produce_batch``):

    1. Anchors not inside the image (with ``config.allowed_border``) are ignored (-1).
    2. ``IoU [A_in, G]`` of the inside anchors with the ground truth; ``max_iou`` per anchor.
    3. Labels start at -1. Background: ``background_threshold_low <= max_iou <
       background_threshold_high`` (``<=`` if inclusive). Foreground: (a) for every ground
       truth, every inside anchor whose IoU equals that ground truth's maximum IoU (all ties),
       (b) ``max_iou >= foreground_threshold``. Without ``clobber_positives`` background is
       assigned first and foreground overrides it; with it, background is assigned last.
    4. Subsample (see the module docstring): foreground to its cap, then background.
    5. Box targets ``encode(gt[matched_gt], anchor)`` for label-1 anchors, zero elsewhere.

    Args:
        anchors: ``[A, 4]`` ``(x1, y1, x2, y2)``, finite.
        gt_boxes: ``[G, 4]``, finite; ``G = 0`` is allowed: every inside anchor has
            ``max_iou = 0`` and is background (then subsampled).
        image_shape: ``(height, width)`` of the input image.
        config: :class:`AnchorTargetConfig`; default Luminoth's.
        rng: ``numpy.random.Generator`` or int seed; the same state gives the same labels.

    Returns:
        :class:`AnchorTargets` ``(labels int32 [A], box_targets float32 [A, 4],
        max_iou float32 [A], matched_gt int64 [A])``.
    """
    cfg = config if config is not None else AnchorTargetConfig()
    gen = _generator(rng)
    a = as_boxes("anchors", anchors)
    g = as_boxes("gt_boxes", gt_boxes)
    if len(image_shape) < 2 or not (image_shape[0] > 0 and image_shape[1] > 0):
        raise ValueError(f"image_shape must be a positive (height, width), got {image_shape!r}")
    height, width = float(image_shape[0]), float(image_shape[1])
    n = a.shape[0]
    border = np.float32(cfg.allowed_border)
    inside = np.flatnonzero(
        (a[:, 0] >= -border)
        & (a[:, 1] >= -border)
        & (a[:, 2] < np.float32(width) + border)
        & (a[:, 3] < np.float32(height) + border)
    )  # [A_in]
    a_in = a[inside]

    overlaps = _boxes.iou(a_in, g, plus_one=cfg.plus_one)  # [A_in,G]
    if g.shape[0] > 0:
        max_iou = overlaps.max(axis=1)  # [A_in]
        argmax = overlaps.argmax(axis=1).astype(np.int64)  # [A_in]
    else:
        max_iou = np.zeros(inside.size, dtype=np.float32)
        argmax = np.full(inside.size, -1, dtype=np.int64)

    lo = np.float32(cfg.background_threshold_low)
    hi = np.float32(cfg.background_threshold_high)
    below = max_iou <= hi if cfg.background_high_inclusive else max_iou < hi
    is_bg = (max_iou >= lo) & below
    is_fg = (max_iou >= np.float32(cfg.foreground_threshold)) | _best_match_mask(
        overlaps, cfg.best_match_requires_overlap
    )
    labels_in = np.full(inside.size, -1, dtype=np.int32)
    if not cfg.clobber_positives:
        labels_in[is_bg] = 0
    labels_in[is_fg] = 1
    if cfg.clobber_positives:
        labels_in[is_bg] = 0

    _sample(labels_in, cfg.minibatch_size, cfg.foreground_fraction, cfg.background_ratio, gen)

    targets_in = np.zeros((inside.size, 4), dtype=np.float32)
    fg = np.flatnonzero(labels_in == 1)
    if fg.size:
        targets_in[fg] = _boxes.encode(
            g[argmax[fg]], a_in[fg], variances=cfg.variances, plus_one=cfg.plus_one
        )

    labels = np.full(n, -1, dtype=np.int32)
    labels[inside] = labels_in
    box_targets = np.zeros((n, 4), dtype=np.float32)
    box_targets[inside] = targets_in
    max_full = np.zeros(n, dtype=np.float32)
    max_full[inside] = max_iou
    matched = np.full(n, -1, dtype=np.int64)
    matched[inside] = argmax
    return AnchorTargets(labels, box_targets, max_full, matched)


def proposal_targets(
    proposals: npt.ArrayLike,
    gt_boxes: npt.ArrayLike,
    gt_classes: npt.ArrayLike,
    config: ProposalTargetConfig | None = None,
    rng: RngLike = 0,
) -> ProposalTargets:
    """R-CNN class labels and regression targets for one image.

    Steps (Luminoth ``rcnn_target.py``; wheat ``RCNN.py::produce_batch``):

    1. ``IoU [N, G]`` (``plus_one`` per config); ``max_iou`` and the best ground truth
       ``matched_gt`` (first on ties) per proposal.
    2. Labels start at -1. Background (0): ``low <= max_iou < high``. Foreground:
       ``max_iou >= foreground_threshold`` gets ``gt_classes[matched_gt] + 1``. With
       ``best_proposal_per_gt``, each ground truth's best proposal (first on ties) then gets
       that ground truth's ``class + 1`` (the later ground truth wins a shared proposal).
    3. Subsample foreground (label > 0) to its cap, then background to its cap (module
       docstring). Dropped rows get -1 (Luminoth writes ``-label`` for dropped foreground, "for
       debugging"; every loss ignores negative labels, so -1 trains identically).
    4. Box targets ``encode(gt[matched_gt], proposal, variances)`` for rows with label > 0.

    Ground-truth boxes are **not** added to the proposals (neither system does; Luminoth's
    best-proposal rule is what guarantees each ground truth a foreground row). Add them to
    ``proposals`` yourself for py-faster-rcnn's behaviour.

    Layout: ``[N, 4]`` targets plus the class in ``labels`` (Luminoth's). The head predicts
    ``[N, 4 * K]`` with class ``c`` (1-based label) in columns ``4 * (c - 1):4 * c``;
    :func:`per_class_targets` expands to that layout and
    :func:`npfrcnn.losses.rcnn_box_loss` selects from it.

    Args:
        proposals: ``[N, 4]`` ``(x1, y1, x2, y2)``, finite.
        gt_boxes: ``[G, 4]``, finite; ``G = 0`` allowed (all proposals background).
        gt_classes: ``[G]`` integer classes, 0-based (label = class + 1; 0 is background).
        config: :class:`ProposalTargetConfig`; default Luminoth's.
        rng: ``numpy.random.Generator`` or int seed.

    Returns:
        :class:`ProposalTargets` ``(labels int32 [N], box_targets float32 [N, 4],
        max_iou float32 [N], matched_gt int64 [N])``.
    """
    cfg = config if config is not None else ProposalTargetConfig()
    gen = _generator(rng)
    p = as_boxes("proposals", proposals)
    g = as_boxes("gt_boxes", gt_boxes)
    cls = np.asarray(gt_classes)
    if cls.ndim != 1 or cls.shape[0] != g.shape[0]:
        raise ValueError(
            f"gt_classes must have shape [{g.shape[0]}] (one class per gt box), "
            f"got shape {cls.shape}"
        )
    if cls.size and (cls.dtype.kind not in "iu" or cls.min() < 0):
        raise ValueError(
            "gt_classes must be non-negative integers (0-based classes; background is added "
            "as label 0), e.g. np.asarray(classes, dtype=np.int64)"
        )
    cls = cls.astype(np.int64)
    n = p.shape[0]
    overlaps = _boxes.iou(p, g, plus_one=cfg.plus_one)  # [N,G]
    if g.shape[0] > 0:
        max_iou = overlaps.max(axis=1)  # [N]
        matched = overlaps.argmax(axis=1).astype(np.int64)  # [N]
    else:
        max_iou = np.zeros(n, dtype=np.float32)
        matched = np.full(n, -1, dtype=np.int64)

    labels = np.full(n, -1, dtype=np.int32)
    lo = np.float32(cfg.background_threshold_low)
    hi = np.float32(cfg.background_threshold_high)
    labels[(max_iou >= lo) & (max_iou < hi)] = 0
    fg = max_iou >= np.float32(cfg.foreground_threshold)
    labels[fg] = (cls[matched[fg]] + 1).astype(np.int32)
    if cfg.best_proposal_per_gt and n > 0 and g.shape[0] > 0:
        best = overlaps.argmax(axis=0)  # [G]
        col_max = overlaps.max(axis=0)  # [G]
        for j in range(g.shape[0]):  # in order: a later gt overwrites a shared proposal
            if cfg.best_match_requires_overlap and not col_max[j] > 0:
                continue
            labels[best[j]] = cls[j] + 1

    _sample(labels, cfg.minibatch_size, cfg.foreground_fraction, cfg.background_ratio, gen)

    box_targets = np.zeros((n, 4), dtype=np.float32)
    pos = np.flatnonzero(labels > 0)
    if pos.size:
        box_targets[pos] = _boxes.encode(
            g[matched[pos]], p[pos], variances=cfg.variances, plus_one=cfg.plus_one
        )
    return ProposalTargets(labels, box_targets, max_iou.astype(np.float32), matched)


def per_class_targets(
    labels: npt.ArrayLike, box_targets: npt.ArrayLike, num_classes: int
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """Expand ``[N, 4]`` targets to the head's per-class ``[N, 4 * num_classes]`` layout.

    Args:
        labels: ``[N]`` int labels (``1..num_classes`` foreground, ``0`` background, ``< 0``
            ignored), as :func:`proposal_targets` returns.
        box_targets: ``[N, 4]``.
        num_classes: ``K``, not counting background.

    Returns:
        ``(targets, weights)``, both float32 ``[N, 4 * K]``: row ``i`` with label ``c > 0`` has
        its 4 targets and weights 1 in columns ``4 * (c - 1):4 * c`` (no background block, as
        Luminoth's ``fc_bbox``); everything else is 0 (py-faster-rcnn's ``bbox_inside_weights``).
    """
    k = check_positive_int("num_classes", num_classes)
    t = np.asarray(box_targets, dtype=np.float32)
    lab = np.asarray(labels)
    if t.ndim != 2 or t.shape[1] != 4 or lab.shape != (t.shape[0],):
        raise ValueError(
            f"labels must be [N] and box_targets [N, 4], got {lab.shape} and {t.shape}"
        )
    if lab.size and lab.max() > k:
        raise ValueError(f"labels go up to {int(lab.max())} but num_classes is {k}")
    n = t.shape[0]
    targets = np.zeros((n, 4 * k), dtype=np.float32)
    weights = np.zeros((n, 4 * k), dtype=np.float32)
    rows = np.flatnonzero(lab > 0)
    cols = 4 * (lab[rows].astype(np.int64) - 1)  # [P]
    for j in range(4):
        targets[rows, cols + j] = t[rows, j]
        weights[rows, cols + j] = 1.0
    return targets, weights
