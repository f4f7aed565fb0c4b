"""Compare two traces stage by stage (``npfrcnn compare REFERENCE CANDIDATE``).

For every image and every stage of the schema, in pipeline order, one :class:`Row`:

* dense stages and row-aligned boxes: shapes, the largest absolute error, the largest error
  relative to the stage's scale (``max |reference|``), and the error in float32 ulps of the
  reference value (median and max; values below ``scale / 1024`` count in the ulps of
  ``scale / 1024``, :data:`ULP_FLOOR`, so that rounding noise near zero does not read as
  millions of ulps).
  A stage is within tolerance when ``max_abs <= atol + rtol * scale``;
* discrete stages (top-k and NMS index lists, level assignment): exact agreement, as the
  fraction of equal positions over the longer list, and the first position that differs;
* box sets (proposals, the detection candidates, the detections): matched by IoU (``>= 0.5``)
  and label, not by position: each reference box, in order, takes the unmatched candidate box
  of its label with the largest IoU. Within tolerance when every box is matched both ways and
  the matched boxes' coordinates and scores are within tolerance;
* per-proposal stages (level assignment, pooled RoIs, box head, head outputs): row ``i``
  belongs to proposal ``i``, so when the proposals match as a set but in another order (or
  only partly), the candidate's rows are put in the order of the reference's proposals and
  only matched proposals are compared (the row's note says so). In the same way the top-k
  candidates and the RPN's keep list are compared through the anchors they belong to
  (``proposals/topk``), and the final NMS keep list through the candidates' box matching.

The first stage out of tolerance is named. With a model (``--weights``), every stage out of
tolerance is also re-run by the reference given the **candidate's** inputs of that stage
(:mod:`npfrcnn.trace.rerun`): if the reference then agrees with the candidate (within the same
tolerance), the stage computes the same thing and its error is rounding inherited from upstream
(e.g. a near-tie in a top-k); otherwise the stage itself departs from the reference.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from npfrcnn.trace.io import ImageTrace, Trace, TraceError
from npfrcnn.trace.schema import stage_info, stage_names

__all__ = [
    "Row", "ImageComparison", "Comparison", "compare_traces", "compare_arrays",
    "format_table", "DEFAULT_RTOL", "DEFAULT_ATOL", "MATCH_IOU",
]

#: Default tolerances: errors up to 1e-4 of the stage's scale. Rounding of a float32 pipeline
#: run in another summation order (BLAS, oneDNN, ORT's kernels) is ~1e-6 of the scale per layer,
#: so 1e-4 leaves room for a deep network; a real departure (a +1 in a box, swapped channels)
#: is 1e-3 of the scale or more.
DEFAULT_RTOL = 1e-4
DEFAULT_ATOL = 0.0
#: Mean absolute pixel difference (of 255) above which two traced images are different images,
#: not one image decoded twice (JPEG decoders differ by about 1).
DIFFERENT_IMAGE = 8.0
#: IoU at which two boxes of a set are the same box.
MATCH_IOU = 0.5

_SET_PARTS = {
    "proposals/boxes": ("proposals/scores", None),
    "detections/candidates": ("detections/candidate_scores", "detections/candidate_labels"),
    "detections/boxes": ("detections/scores", "detections/labels"),
}


@dataclass
class Row:
    """One stage of one image. ``status``: ``"ok"``, ``"fail"``, ``"not traced"`` (the
    candidate has no stage of this group), ``"not in reference"``."""

    stage: str
    kind: str
    status: str
    ref_shape: tuple[int, ...] | None = None
    cand_shape: tuple[int, ...] | None = None
    max_abs: float | None = None
    max_rel: float | None = None
    ulp_median: float | None = None
    ulp_max: float | None = None
    agreement: float | None = None
    first_diff: int | None = None
    matched: tuple[int, int, int] | None = None  # (matched, reference count, candidate count)
    note: str = ""
    rerun: Row | None = None
    verdict: str = ""  # "rounding" or "departure", for a stage out of tolerance re-run
    #: sets: for each reference box the index of its candidate box, or -1
    match: np.ndarray | None = field(default=None, repr=False)

    @property
    def failed(self) -> bool:
        return self.status == "fail"

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k not in ("rerun", "match")}
        d["rerun"] = self.rerun.to_dict() if self.rerun is not None else None
        return d


@dataclass
class ImageComparison:
    index: int
    name: str
    rows: list[Row]
    #: stage -> (``max over channels |cand - ref|`` [H, W], the stage's tolerance)
    error_maps: dict[str, tuple[np.ndarray, float]] = field(default_factory=dict)

    @property
    def first_failure(self) -> Row | None:
        return next((r for r in self.rows if r.failed), None)

    @property
    def first_departure(self) -> Row | None:
        """The first stage out of tolerance that the re-run shows to be a departure."""
        return next((r for r in self.rows if r.failed and r.verdict == "departure"), None)


@dataclass
class Comparison:
    reference: str
    candidate: str
    rtol: float
    atol: float
    images: list[ImageComparison]
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(im.first_failure is None for im in self.images)


# Metrics ---------------------------------------------------------------------------------------


def _ordered_f32(a: np.ndarray) -> np.ndarray:
    """float32 bit patterns mapped to integers in the order of the values (for ulp distances)."""
    i = np.ascontiguousarray(a, dtype=np.float32).view(np.int32).astype(np.int64)
    return np.where(i < 0, -(i & 0x7FFFFFFF), i)


def ulp_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """How many float32 values lie between ``a`` and ``b`` (0 when equal; +0 and -0 are 0)."""
    return np.abs(_ordered_f32(a) - _ordered_f32(b)).astype(np.float64)


#: Elements far below a stage's scale are measured in the ulps of ``scale * ULP_FLOOR``: the
#: float32 grid is so fine near zero that a rounding error of the stage's size would count as
#: millions of ulps there.
ULP_FLOOR = 2.0**-10


def scaled_ulps(ref: np.ndarray, cand: np.ndarray, scale: float) -> np.ndarray:
    """``|cand - ref|`` in float32 ulps of ``max(|ref|, scale * ULP_FLOOR)`` per element."""
    mag = np.maximum(np.abs(ref.astype(np.float64)), scale * ULP_FLOOR)
    unit = np.spacing(mag.astype(np.float32)).astype(np.float64)
    unit = np.where(unit > 0, unit, np.float64(np.finfo(np.float32).smallest_subnormal))
    return np.abs(cand.astype(np.float64) - ref) / unit


def compare_arrays(
    ref: np.ndarray, cand: np.ndarray, rtol: float, atol: float, stage: str = "",
    kind: str = "dense",
) -> Row:
    """The metrics of one dense (or row-aligned box) stage."""
    row = Row(stage, kind, "ok", tuple(ref.shape), tuple(cand.shape))
    if ref.shape != cand.shape:
        row.status = "fail"
        row.note = f"shape {tuple(cand.shape)} differs from the reference's {tuple(ref.shape)}"
        return row
    if ref.size == 0:
        row.max_abs = row.max_rel = 0.0
        return row
    r = ref.astype(np.float64)
    c = cand.astype(np.float64)
    rfin, cfin = np.isfinite(r), np.isfinite(c)
    both = rfin & cfin
    nonfinite_mismatch = ~both & ~((r == c) | (np.isnan(r) & np.isnan(c)))
    err = np.abs(c - r, where=both, out=np.zeros_like(r))
    scale = float(np.abs(r[rfin]).max()) if rfin.any() else 0.0
    row.max_abs = float(err.max())
    row.max_rel = row.max_abs / scale if scale > 0 else (0.0 if row.max_abs == 0 else math.inf)
    if ref.dtype.kind == "f":
        ulps = scaled_ulps(ref[both], cand[both], scale) if both.any() else np.zeros(1)
        row.ulp_median = float(np.median(ulps))
        row.ulp_max = float(ulps.max())
    if nonfinite_mismatch.any():
        row.status = "fail"
        first = int(np.flatnonzero(nonfinite_mismatch.ravel())[0])
        row.note = (
            f"{int(nonfinite_mismatch.sum())} non-finite values differ (first at flat index "
            f"{first}: reference {ref.ravel()[first]}, candidate {cand.ravel()[first]})"
        )
    elif row.max_abs > atol + rtol * scale:
        row.status = "fail"
        where = np.unravel_index(int(np.argmax(err)), err.shape)
        row.note = (
            f"largest error at index {tuple(int(i) for i in where)}: reference "
            f"{ref[where]:.7g}, candidate {cand[where]:.7g}"
        )
    return row


def compare_index(ref: np.ndarray, cand: np.ndarray, stage: str) -> Row:
    """Exact agreement of two index (or label) lists."""
    row = Row(stage, "index", "ok", tuple(ref.shape), tuple(cand.shape))
    r, c = ref.ravel(), cand.ravel()
    n = min(r.size, c.size)
    same = r[:n] == c[:n]
    longest = max(r.size, c.size)
    row.agreement = float(same.sum()) / longest if longest else 1.0
    diff = np.flatnonzero(~same)
    if diff.size:
        row.first_diff = int(diff[0])
    elif r.size != c.size:
        row.first_diff = n
    if row.first_diff is not None:
        row.status = "fail"
        i = row.first_diff
        rv = str(r[i]) if i < r.size else "(end)"
        cv = str(c[i]) if i < c.size else "(end)"
        row.note = f"first difference at position {i}: reference {rv}, candidate {cv}"
        if r.size != c.size:
            row.note += f"; lengths {r.size} and {c.size}"
    return row


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix of ``xyxy`` boxes (float64)."""
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(rb - lt, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    union = area_a[:, None] + area_b[None, :] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        out = inter / union
    # degenerate (zero-area) boxes match only an identical box
    same = np.all(a[:, None, :] == b[None, :, :], axis=-1)
    out = np.where(union > 0, out, same * 1.0)
    return np.where(np.isfinite(out), out, 0.0)


def match_boxes(
    ref: np.ndarray, cand: np.ndarray, ref_labels: np.ndarray | None,
    cand_labels: np.ndarray | None,
) -> np.ndarray:
    """For each reference box, the index of its candidate box, or -1 (see the module doc)."""
    out = np.full(ref.shape[0], -1, dtype=np.int64)
    if ref.shape[0] == 0 or cand.shape[0] == 0:
        return out
    same_labels = ref_labels is None or (
        cand_labels is not None and np.array_equal(ref_labels, cand_labels))
    if ref.shape == cand.shape and same_labels:
        # the common case: the same boxes in the same order
        d = ref.astype(np.float64) - cand
        iou = _pair_iou(ref, cand)
        if np.all(iou >= MATCH_IOU) and np.all(np.isfinite(d)):
            return np.arange(ref.shape[0], dtype=np.int64)
    groups: list[tuple[np.ndarray, np.ndarray]]
    if ref_labels is None or cand_labels is None:
        groups = [(np.arange(ref.shape[0]), np.arange(cand.shape[0]))]
    else:
        groups = [
            (np.flatnonzero(ref_labels == lab), np.flatnonzero(cand_labels == lab))
            for lab in np.unique(ref_labels)
        ]
    for ri, ci in groups:
        if ri.size == 0 or ci.size == 0:
            continue
        for start in range(0, ri.size, 512):
            part = ri[start : start + 512]
            iou = box_iou(ref[part], cand[ci])
            for k, r_idx in enumerate(part):
                row = iou[k]
                j = int(np.argmax(row))
                if row[j] >= MATCH_IOU:
                    out[r_idx] = ci[j]
                    iou[:, j] = -1.0  # taken
    return out


def _pair_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    lt = np.maximum(a[:, :2], b[:, :2])
    rb = np.minimum(a[:, 2:], b[:, 2:])
    wh = np.clip(rb - lt, 0, None)
    inter = wh[:, 0] * wh[:, 1]
    area = lambda x: np.clip(x[:, 2] - x[:, 0], 0, None) * np.clip(x[:, 3] - x[:, 1], 0, None)  # noqa: E731
    union = area(a) + area(b) - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        out = inter / union
    out = np.where(union > 0, out, np.all(a == b, axis=-1) * 1.0)
    return np.where(np.isfinite(out), out, 0.0)


def compare_sets(
    stage: str, rb: np.ndarray, cb: np.ndarray, rs: np.ndarray | None, cs: np.ndarray | None,
    rl: np.ndarray | None, cl: np.ndarray | None, rtol: float, atol: float,
) -> Row:
    """A box set matched by IoU and label (module docstring)."""
    row = Row(stage, "set", "ok", tuple(rb.shape), tuple(cb.shape))
    if rb.ndim != 2 or rb.shape[1] != 4 or cb.ndim != 2 or cb.shape[1] != 4:
        row.status = "fail"
        row.note = f"boxes must be [N, 4]; reference {rb.shape}, candidate {cb.shape}"
        return row
    m = match_boxes(rb, cb, rl, cl)
    row.match = m
    hit = m >= 0
    n_match = int(hit.sum())
    row.matched = (n_match, int(rb.shape[0]), int(cb.shape[0]))
    row.agreement = n_match / max(rb.shape[0], cb.shape[0], 1)
    scale = float(np.abs(rb).max()) if rb.size else 0.0
    notes = []
    if n_match:
        err = np.abs(cb[m[hit]].astype(np.float64) - rb[hit])
        row.max_abs = float(err.max())
        row.max_rel = row.max_abs / scale if scale > 0 else 0.0
        ulps = scaled_ulps(rb[hit], cb[m[hit]], scale)
        row.ulp_median, row.ulp_max = float(np.median(ulps)), float(ulps.max())
        if row.max_abs > atol + rtol * scale:
            notes.append(f"matched boxes differ by up to {row.max_abs:.4g} px")
        if rs is not None and cs is not None:
            serr = float(np.abs(cs[m[hit]].astype(np.float64) - rs[hit]).max())
            sscale = float(np.abs(rs).max()) if rs.size else 0.0
            if serr > atol + rtol * sscale:
                notes.append(f"matched scores differ by up to {serr:.4g}")
    missing = np.flatnonzero(~hit)
    extra = rb.shape[0] - n_match != 0 or cb.shape[0] != n_match
    if missing.size:
        i = int(missing[0])
        lab = f" label {int(rl[i])}" if rl is not None else ""
        notes.append(
            f"{missing.size} reference boxes unmatched (first: #{i}{lab} "
            f"{np.round(rb[i], 2).tolist()})"
        )
        row.first_diff = i
    if cb.shape[0] > n_match:
        notes.append(f"{cb.shape[0] - n_match} candidate boxes unmatched")
    if notes or extra:
        row.status = "fail"
        row.note = "; ".join(notes)
    return row


#: Stages with one row per proposal: compared in the order of the proposal matching.
PER_PROPOSAL = ("roi_levels", "pooled", "box_head", "head/cls", "head/bbox")
#: Stages with one row (or index) per top-k candidate: compared through their anchors.
PER_CANDIDATE = ("proposals/candidates", "proposals/candidate_scores", "proposals/keep")
#: The stages that get an error heatmap in the report.
_MAPPED = ("input", "body", "features")


# Traces ----------------------------------------------------------------------------------------


def _group_of(name: str) -> str:
    return stage_info(name).group


def compare_image(
    ref: ImageTrace, cand: ImageTrace, rtol: float, atol: float,
    rerun: Callable[[str, ImageTrace], dict[str, np.ndarray]] | None = None,
    heatmaps: bool = False,
) -> ImageComparison:
    """Every stage of one image (module docstring); ``rerun(stage, cand)`` gives the reference's
    outputs of the stage's group on the candidate's inputs."""
    family = ref.trace.meta["family"]
    names = stage_names(family)
    cand_groups = {_group_of(n) for n in cand.names}
    out = ImageComparison(ref.index, str(ref.meta.get("name", "")), [])
    folded = {p for parts in _SET_PARTS.values() for p in parts if p}
    prop_match: np.ndarray | None = None
    det_match: np.ndarray | None = None
    for name in names:
        if name in folded:
            continue
        st = stage_info(name)
        in_ref, in_cand = name in ref, name in cand
        if not in_ref and not in_cand:
            continue
        if not in_ref:
            out.rows.append(Row(name, st.kind, "not in reference"))
            continue
        if not in_cand:
            if st.group in cand_groups and st.group not in ("image",):
                have = sorted(n for n in cand.names if _group_of(n) == st.group)
                out.rows.append(Row(
                    name, st.kind, "fail", tuple(ref.raw(name).shape), None,
                    note=f"missing from the candidate, which has {', '.join(have)}",
                ))
            else:
                out.rows.append(Row(name, st.kind, "not traced", tuple(ref.raw(name).shape)))
            continue
        if name in PER_PROPOSAL and prop_match is not None:
            row = _compare_aligned(name, ref, cand, prop_match, rtol, atol)
        elif name in PER_CANDIDATE and "proposals/topk" in ref and "proposals/topk" in cand:
            row = _compare_by_anchor(name, ref, cand, rtol, atol)
        elif name == "detections/keep" and det_match is not None:
            row = _compare_keep(name, ref.get(name), cand.get(name), det_match,
                                "detections/candidates")
        else:
            row = _compare_stage(name, ref, cand, rtol, atol)
        if name == "proposals/boxes":
            prop_match = row.match
        if name == "detections/candidates":
            det_match = row.match
        if heatmaps and st.group in _MAPPED and row.ref_shape == row.cand_shape:
            r_arr = ref.get(name)
            finite = np.abs(r_arr[np.isfinite(r_arr)])
            tol = atol + rtol * (float(finite.max()) if finite.size else 0.0)
            out.error_maps[name] = (_error_map(r_arr, cand.get(name)), tol)
        if row.failed and rerun is not None and name != "image":
            try:
                again = rerun(name, cand)
            except (TraceError, KeyError, ValueError) as e:
                row.note += f"; not re-run: {e}"
            else:
                if name in again:
                    rr = _compare_given(name, again, cand, rtol, atol)
                    if name in _TIE_SCORES and rr.failed:
                        rr.note += _tie_note(name, again[name], cand, rr.first_diff)
                    row.rerun = rr
                    row.verdict = "rounding" if not rr.failed else "departure"
        out.rows.append(row)
    return out


def _error_map(r: np.ndarray, c: np.ndarray) -> np.ndarray:
    """``max over channels |c - r|`` of a ``[1, H, W, C]`` (or ``[P, S, S, C]``) stage."""
    d = np.abs(c.astype(np.float32) - r.astype(np.float32))
    d = np.where(np.isfinite(d), d, np.float32(np.inf))
    return d.max(axis=(0, 3)) if d.ndim == 4 else d


def _sets(name: str, src: Any) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    score_name, label_name = _SET_PARTS[name]

    def get(n: str | None) -> np.ndarray | None:
        if n is None:
            return None
        if isinstance(src, ImageTrace):
            return src.get(n) if n in src else None
        return src.get(n)

    boxes = get(name)
    assert boxes is not None
    return boxes, get(score_name), get(label_name)


def _compare_stage(name: str, ref: ImageTrace, cand: ImageTrace, rtol: float, atol: float) -> Row:
    st = stage_info(name)
    if st.kind == "set":
        rb, rs, rl = _sets(name, ref)
        cb, cs, cl = _sets(name, cand)
        return compare_sets(name, rb, cb, rs, cs, rl, cl, rtol, atol)
    r, c = ref.get(name), cand.get(name)
    if st.kind == "index":
        return compare_index(r, c, name)
    return compare_arrays(r, c, rtol, atol, name, st.kind)


def _compare_aligned(
    name: str, ref: ImageTrace, cand: ImageTrace, match: np.ndarray, rtol: float, atol: float
) -> Row:
    """A per-proposal stage with the candidate's rows put in the order of the reference's
    proposals (the IoU matching of ``proposals/boxes``); only matched proposals compared."""
    r, c = ref.get(name), cand.get(name)
    n_ref = match.shape[0]
    if r.shape[:1] != (n_ref,) or c.ndim == 0:
        return _compare_stage(name, ref, cand, rtol, atol)
    if np.array_equal(match, np.arange(n_ref)) and c.shape[:1] == (n_ref,):
        return _compare_stage(name, ref, cand, rtol, atol)
    hit = match >= 0
    if c.shape[0] <= int(match.max(initial=-1)):
        return _compare_stage(name, ref, cand, rtol, atol)
    ra, ca = r[hit], c[match[hit]]
    st = stage_info(name)
    row = (compare_index(ra, ca, name) if st.kind == "index"
           else compare_arrays(ra, ca, rtol, atol, name, st.kind))
    row.ref_shape, row.cand_shape = tuple(r.shape), tuple(c.shape)
    how = (f"the {int(hit.sum())} matched proposals" if not hit.all() or c.shape[0] != n_ref
           else "all proposals")
    row.note = (f"rows of {how}, aligned by the proposal matching"
                + (f"; {row.note}" if row.note else ""))
    return row


#: Index stages and the scores they are ordered by (for telling a tie-order difference).
_TIE_SCORES = {
    "proposals/topk": "rpn/objectness/", "proposals/keep": "proposals/candidate_scores",
    "detections/keep": "detections/candidate_scores",
}


def _tie_note(name: str, ref_idx: np.ndarray, cand: ImageTrace, pos: int | None) -> str:
    """Whether the first difference of an ordered index list is between exactly tied scores
    (of the candidate's own scores): then the two order ties differently."""
    source = _TIE_SCORES[name]
    if source.endswith("/"):
        levels = [n for n in stage_names(cand.trace.meta["family"]) if n.startswith(source)]
        if not all(n in cand for n in levels):
            return ""
        parts = [cand.get(n) for n in levels]
        flat = np.concatenate([s[:, 1] if s.ndim == 2 else s for s in parts])
    elif source in cand:
        flat = cand.get(source)
    else:
        return ""
    ci = cand.get(name)
    if pos is None or pos >= min(ref_idx.size, ci.size):
        return ""
    a, b = int(ref_idx[pos]), int(ci[pos])
    if not (0 <= a < flat.size and 0 <= b < flat.size):
        return ""
    if flat[a] == flat[b]:
        return (f"; {a} and {b} have exactly the same score ({flat[a]:.8g}): the candidate "
                "orders exact ties differently from the reference")
    return ""


def _compare_by_anchor(
    name: str, ref: Any, cand: ImageTrace, rtol: float, atol: float
) -> Row:
    """``proposals/candidates``, ``candidate_scores`` and ``keep`` through the anchors they
    belong to (``proposals/topk``): when the top-k order differs (near ties), row ``i`` of the
    two traces is another anchor, so rows are paired by anchor instead."""
    rt, ct = ref.get("proposals/topk"), cand.get("proposals/topk")
    if name == "proposals/keep":
        rk, ck = ref.get(name), cand.get(name)
        if rk.size and (rk.min() < 0 or rk.max() >= rt.size) or ck.size and (
                ck.min() < 0 or ck.max() >= ct.size):
            return _compare_stage(name, ref, cand, rtol, atol)
        row = compare_index(rt[rk], ct[ck], name)
        row.note = "as anchor indices (proposals/topk[keep])" + (
            f"; {row.note}" if row.note else "")
        return row
    if np.array_equal(rt, ct):
        return _compare_stage(name, ref, cand, rtol, atol)
    r, c = ref.get(name), cand.get(name)
    if r.shape[:1] != rt.shape or c.shape[:1] != ct.shape or len(np.unique(rt)) != rt.size or (
            len(np.unique(ct)) != ct.size):
        return _compare_stage(name, ref, cand, rtol, atol)
    _, ri, ci = np.intersect1d(rt, ct, assume_unique=True, return_indices=True)
    order = np.argsort(ri)
    ri, ci = ri[order], ci[order]
    st = stage_info(name)
    row = compare_arrays(r[ri], c[ci], rtol, atol, name, st.kind)
    row.ref_shape, row.cand_shape = tuple(r.shape), tuple(c.shape)
    row.note = (f"rows paired by anchor (proposals/topk): {ri.size} of {rt.size} anchors in both"
                + (f"; {row.note}" if row.note else ""))
    if ri.size != rt.size or ct.size != rt.size:
        row.status = "fail"
    return row


def _compare_keep(
    name: str, rk: np.ndarray, ck: np.ndarray, match: np.ndarray, into: str
) -> Row:
    """An NMS keep list into a box set, the candidate's indices mapped to the reference's boxes
    by the set's IoU matching (``-1``: a candidate box no reference box matched)."""
    inv = np.full(int(match.max(initial=-1)) + 1 if match.size else 0, -1, dtype=np.int64)
    hit = match >= 0
    inv[match[hit]] = np.flatnonzero(hit)
    if ck.size and (ck.min() < 0):
        return compare_index(rk, ck, name)
    mapped = np.where(ck < inv.size, inv[np.minimum(ck, max(inv.size - 1, 0))], -1) if (
        inv.size) else np.full(ck.shape, -1, np.int64)
    if np.array_equal(mapped, ck):
        return compare_index(rk, ck, name)
    row = compare_index(rk, mapped, name)
    row.note = (f"candidate indices mapped to the reference's {into} by the box matching"
                + (f"; {row.note}" if row.note else ""))
    return row


def _compare_given(
    name: str, again: dict[str, np.ndarray], cand: ImageTrace, rtol: float, atol: float
) -> Row:
    """The re-run reference output of ``name`` against the candidate's."""
    st = stage_info(name)
    if st.kind == "set":
        rb, rs, rl = _sets(name, again)
        cb, cs, cl = _sets(name, cand)
        return compare_sets(name, rb, cb, rs, cs, rl, cl, rtol, atol)
    if name in PER_CANDIDATE and "proposals/topk" in again and "proposals/topk" in cand:
        return _compare_by_anchor(name, again, cand, rtol, atol)
    if st.kind == "index":
        return compare_index(again[name], cand.get(name), name)
    return compare_arrays(again[name], cand.get(name), rtol, atol, name, st.kind)


def check_pair(ref: Trace, cand: Trace) -> list[str]:
    """Problems that make two traces incomparable (raised) and notes (returned)."""
    notes: list[str] = []
    if ref.meta["family"] != cand.meta["family"]:
        raise TraceError(
            f"{cand.path}: family {cand.meta['family']!r} but the reference {ref.path} is "
            f"{ref.meta['family']!r}: traces of different architectures cannot be compared"
        )
    if ref.meta["num_classes"] != cand.meta["num_classes"]:
        raise TraceError(
            f"{cand.path}: {cand.meta['num_classes']} classes but the reference has "
            f"{ref.meta['num_classes']}"
        )
    if len(ref) != len(cand):
        raise TraceError(
            f"{ref.path} has {len(ref)} images but {cand.path} has {len(cand)}; trace the same "
            "images in the same order"
        )
    for r, c in zip(ref, cand, strict=True):
        if list(r.meta["original_size"]) != list(c.meta["original_size"]):
            raise TraceError(
                f"image {r.index}: original sizes {r.meta['original_size']} and "
                f"{c.meta['original_size']} differ; trace the same images in the same order"
            )
        rs, cs = r.meta.get("sha256", ""), c.meta.get("sha256", "")
        if rs and cs and rs != cs:
            # Another JPEG decoder gives slightly different pixels: a finding (the image row
            # shows it). Pixels that differ by more than DIFFERENT_IMAGE on average are
            # another image, and so are unknown pixels.
            diff = None
            if "image" in r and "image" in c:
                a, b = r.get("image").astype(np.int16), c.get("image").astype(np.int16)
                if a.shape == b.shape:
                    diff = float(np.abs(a - b).mean())
            if diff is None or diff > DIFFERENT_IMAGE:
                raise TraceError(
                    f"image {r.index}: the traces are of different images (pixel sha256 "
                    f"{rs[:12]}... vs {cs[:12]}..."
                    + (f", mean pixel difference {diff:.1f}" if diff is not None else "")
                    + "); trace the same images in the same order"
                )
            notes.append(
                f"image {r.index}: the decoded pixels differ (mean difference {diff:.2f} of "
                "255; another JPEG decoder?): see the 'image' row"
            )
    rw, cw = ref.meta.get("weights_sha256", ""), cand.meta.get("weights_sha256", "")
    if rw and cw and rw != cw:
        notes.append(
            f"the weights differ (sha256 {rw[:12]}... vs {cw[:12]}...): expect departures"
        )
    return notes


def compare_traces(
    reference: Trace,
    candidate: Trace,
    *,
    rtol: float = DEFAULT_RTOL,
    atol: float = DEFAULT_ATOL,
    model: Any = None,
    heatmaps: bool = False,
    progress: Callable[[int], None] | None = None,
) -> Comparison:
    """Compare every image of two open traces; ``model`` (a :class:`npfrcnn.FasterRCNN` with
    the reference's weights) enables the re-run of stages out of tolerance."""
    notes = check_pair(reference, candidate)
    images = []
    for r, c in zip(reference, candidate, strict=True):
        rerun = None
        if model is not None:
            from npfrcnn.trace.rerun import Rerunner

            rerun = Rerunner(model, c, r).outputs
        images.append(compare_image(r, c, rtol, atol, rerun, heatmaps))
        if progress is not None:
            progress(r.index)
    return Comparison(str(reference.path), str(candidate.path), rtol, atol, images, notes)


# Text ------------------------------------------------------------------------------------------


def _fmt(v: float | None, spec: str = ".3g") -> str:
    if v is None:
        return "-"
    if math.isinf(v):
        return "inf"
    return format(v, spec)


def _shape(s: tuple[int, ...] | None) -> str:
    return "-" if s is None else "x".join(str(i) for i in s) or "scalar"


def table_rows(im: ImageComparison) -> list[list[str]]:
    """The table of one image as text cells (header first)."""
    out = [["stage", "status", "shape", "max abs", "max rel", "ulp med", "ulp max",
            "agree", "first diff", "re-run"]]
    for r in im.rows:
        shape = _shape(r.ref_shape)
        if r.cand_shape is not None and r.cand_shape != r.ref_shape:
            shape += f" vs {_shape(r.cand_shape)}"
        agree = "-"
        if r.matched is not None:
            agree = f"{r.matched[0]}/{max(r.matched[1], r.matched[2])}"
        elif r.agreement is not None:
            agree = f"{r.agreement:.4f}"
        rerun = "-"
        if r.rerun is not None:
            if r.rerun.agreement is not None:
                rerun = f"{r.verdict} (agree {r.rerun.agreement:.4f})"
            else:
                rerun = f"{r.verdict} ({_fmt(r.rerun.max_rel)} rel)"
        out.append([
            r.stage, r.status, shape, _fmt(r.max_abs), _fmt(r.max_rel), _fmt(r.ulp_median, ".0f"),
            _fmt(r.ulp_max, ".0f"), agree, "-" if r.first_diff is None else str(r.first_diff),
            rerun,
        ])
    return out


def format_table(cmp: Comparison) -> str:
    """The comparison as plain text: a table per image, then the verdict."""
    lines = [
        f"reference: {cmp.reference}", f"candidate: {cmp.candidate}",
        f"tolerance: max abs error <= {cmp.atol:g} + {cmp.rtol:g} x the stage's scale",
    ]
    lines += [f"note: {n}" for n in cmp.notes]
    for im in cmp.images:
        rows = table_rows(im)
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines.append("")
        lines.append(f"image {im.index}" + (f" ({im.name})" if im.name else ""))
        for k, r in enumerate(rows):
            lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
            if k == 0:
                lines.append("  ".join("-" * w for w in widths))
        lines.append(verdict(im))
    return "\n".join(lines)


def verdict(im: ImageComparison) -> str:
    """One sentence: which stage first departs, and whether it is rounding."""
    first = im.first_failure
    if first is None:
        return "every stage is within tolerance"
    text = f"first stage out of tolerance: {first.stage}"
    if first.note:
        text += f" ({first.note})"
    if first.stage == "image":
        text += ("; the two systems decoded the image file differently (give both the same "
                 "decoded pixels to compare the rest)")
    elif first.verdict == "rounding":
        text += (
            "; re-run on the candidate's inputs the reference agrees with the candidate: "
            "rounding inherited from upstream"
        )
        dep = im.first_departure
        if dep is not None:
            text += f"; first real departure: {dep.stage}"
        elif all(r.verdict == "rounding" for r in im.rows if r.failed):
            text += (
                "; no stage departs: every stage out of tolerance computes what the "
                "reference computes on the candidate's inputs"
            )
    elif first.verdict == "departure":
        text += "; re-run on the candidate's own inputs the reference still differs: a departure"
    else:
        text += "; give --weights to tell rounding from a departure"
    return text
