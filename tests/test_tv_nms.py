"""torchvision_nms / torchvision_batched_nms (npfrcnn.ops.tv_nms) against torchvision's CPU ops.

Indices must be identical to torchvision's, order included, for both backends. Boxes sit on
integer grids so that float32 IoUs land exactly on the thresholds (0.5, 0.7, 1/3, ...); near
duplicates and saturated scores make the tie rules matter; both batched branches are checked
around the 1000-box switch and forced by name against torchvision's own private functions.

torch runs with 2 threads (``torch.set_num_threads(2)``), as the spec's references were made.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

from helpers import assert_same  # noqa: E402
from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from strategies import rpn_like_boxes  # noqa: E402
from torchvision.ops import boxes as tv_boxes  # noqa: E402

from npfrcnn.ops.tv_nms import (  # noqa: E402
    VANILLA_ABOVE,
    torchvision_batched_nms,
    torchvision_nms,
)

torch.set_num_threads(2)

BACKENDS = ["numpy", "cpu"]
F32 = np.float32
THRESHOLDS = [0.0, 0.25, 0.3, 1 / 3, 0.5, 2 / 3, 0.7, 0.75, 1.0]
TV_BRANCHES = {
    "auto": tv_boxes.batched_nms,
    "vanilla": tv_boxes._batched_nms_vanilla,
    "coordinate_trick": tv_boxes._batched_nms_coordinate_trick,
}


def t(x: np.ndarray):
    return torch.from_numpy(np.ascontiguousarray(x))


def tv_nms(boxes, scores, thr) -> np.ndarray:
    return torchvision.ops.nms(t(boxes), t(scores), thr).numpy()


def tv_batched(boxes, scores, idxs, thr, branch="auto") -> np.ndarray:
    return TV_BRANCHES[branch](t(boxes), t(scores), t(np.asarray(idxs, np.int64)), thr).numpy()


def check_nms(boxes, scores, thr, backend) -> None:
    assert_same(torchvision_nms(boxes, scores, thr, backend=backend), tv_nms(boxes, scores, thr),
                err_msg=f"n={len(boxes)} thr={thr}")


def check_batched(boxes, scores, idxs, thr, backend, branch="auto") -> np.ndarray:
    want = tv_batched(boxes, scores, idxs, thr, branch)
    got = torchvision_batched_nms(boxes, scores, idxs, thr, backend=backend, branch=branch)
    assert_same(got, want, err_msg=f"n={len(boxes)} thr={thr} branch={branch}")
    return want


def grid_boxes(rng, n, extent=20, max_size=8, empty=False, flipped=False) -> np.ndarray:
    """float32 ``[n, 4]`` ``(x1, y1, x2, y2)`` with small integer corners (exact IoU ratios)."""
    xy = rng.integers(0, extent, (n, 2))
    wh = rng.integers(0 if empty else 1, max_size + 1, (n, 2))
    boxes = np.concatenate([xy, xy + wh], axis=1).astype(F32)
    if flipped:  # torchvision does not reorder corners: negative widths and areas
        swap = rng.random(n) < 0.2
        boxes[swap] = boxes[swap][:, [2, 1, 0, 3]]
    return boxes


def tied_scores(rng, n, kind="few") -> np.ndarray:
    if kind == "few":
        return rng.choice(F32([0.1, 0.5, 0.9, 1.0]), n)
    if kind == "saturated":  # sigmoid outputs, many exactly 1.0
        return (1.0 / (1.0 + np.exp(-rng.normal(6.0, 6.0, n)))).astype(F32)
    return rng.random(n).astype(F32)


def near_duplicates(rng, n, jitter=0.02) -> np.ndarray:
    """Pairs of boxes a few hundredths of a pixel apart, plus copies a few ulps apart."""
    half = n // 2
    xy = rng.uniform(0, 500, (half, 2))
    wh = rng.uniform(5, 150, (half, 2))
    a = np.concatenate([xy, xy + wh], axis=1).astype(F32)
    b = (a + rng.normal(0, jitter, a.shape)).astype(F32)
    ulps = np.nextafter(a, F32(np.inf))
    boxes = np.concatenate([a, b, ulps])[:n]
    return boxes[rng.permutation(len(boxes))].astype(F32)


def near_threshold_pairs(rng, n_pairs, n_classes, thr):
    """Pairs (the same class) with IoU within 3e-4 of ``thr``: the coordinate trick's float32
    shift by ``class * (max + 1)`` rounds them across the threshold now and then."""
    xy = rng.uniform(0, 800, (n_pairs, 2))
    wh = rng.uniform(20, 200, (n_pairs, 2))
    ratio = thr + rng.uniform(-3e-4, 3e-4, n_pairs)
    a = np.concatenate([xy, xy + wh], axis=1)
    b = a.copy()
    b[:, 2] = a[:, 0] + wh[:, 0] * ratio  # inside a: IoU = its share of a's width
    boxes = np.concatenate([a, b]).astype(F32)
    classes = np.concatenate([rng.integers(0, n_classes, n_pairs)] * 2)
    return boxes, rng.random(2 * n_pairs).astype(F32), classes


# ---------------------------------------------------------------------------------------------
# Hand-worked cases
# ---------------------------------------------------------------------------------------------

# (x1, y1, x2, y2). IoU(A, B) = 90 / 110 = 0.818; IoU(A, C) = 50 / 150 = 0.333;
# IoU(B, C) = 60 / 140 = 0.43; D overlaps nothing.
GOLDEN_BOXES = np.array(
    [[0, 0, 10, 10], [1, 0, 11, 10], [5, 0, 15, 10], [20, 20, 30, 30]], dtype=F32
)
GOLDEN_SCORES = np.array([0.9, 0.8, 0.7, 0.95], dtype=F32)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    ("thr", "expected"),
    [(0.5, [3, 0, 2]), (0.3, [3, 0]), (0.9, [3, 0, 1, 2]), (0.0, [3, 0])],
)
def test_golden(backend, thr, expected):
    got = torchvision_nms(GOLDEN_BOXES, GOLDEN_SCORES, thr, backend=backend)
    assert_same(got, np.asarray(expected, np.int64))
    assert_same(got, tv_nms(GOLDEN_BOXES, GOLDEN_SCORES, thr))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    ("inner_width", "thr", "suppressed"),
    [
        # IoU = f32(7/10) = 0.69999999 < 0.7 as doubles: kept at 0.7 and at f32(0.7).
        (7, 0.7, False),
        (7, float(F32(0.7)), False),
        (7, float(np.nextafter(F32(0.7), F32(0))), True),
        # IoU = f32(3/10) = 0.30000001 > 0.3 as doubles: suppressed at 0.3 (a float32
        # comparison, as TF's NMS makes, would keep it), kept at the float32 threshold.
        (3, 0.3, True),
        (3, float(F32(0.3)), False),
        # IoU = 5/10 exactly: strict '>' keeps it.
        (5, 0.5, False),
        (5, float(np.nextafter(F32(0.5), F32(0))), True),
    ],
)
def test_threshold_is_compared_in_float64(backend, inner_width, thr, suppressed):
    boxes = np.array([[0, 0, 10, 1], [0, 0, inner_width, 1]], F32)  # the second inside
    scores = np.array([0.9, 0.8], F32)
    expected = [0] if suppressed else [0, 1]
    assert_same(tv_nms(boxes, scores, thr), np.asarray(expected, np.int64))
    check_nms(boxes, scores, thr, backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_equal_scores_by_lower_index(backend):
    boxes = np.array([[0, 0, 10, 10], [20, 0, 30, 10], [0, 0, 10, 10], [20, 0, 30, 10]], F32)
    scores = np.array([0.5, 0.9, 0.9, 0.5], F32)
    got = torchvision_nms(boxes, scores, 0.5, backend=backend)
    assert_same(got, np.array([1, 2], np.int64))  # 1 before 2 (stable); they suppress 3, 0
    check_nms(boxes, scores, 0.5, backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_and_inf_as_torchvision(backend):
    nan, inf = np.nan, np.inf
    boxes = np.array(
        [[0, 0, 10, 10], [0, 0, 10, 10], [nan, 0, 10, 10], [0, 0, 10, 10], [1, 1, 11, 11],
         [0, 0, inf, 10], [0, 0, inf, 10], [-inf, 0, 10, 10], [0, nan, nan, 10]],
        F32,
    )
    scores = np.array([0.5, nan, 0.9, nan, 0.5, 0.3, 0.2, 0.1, inf], F32)
    for thr in (0.0, 0.5, 0.7, 1.0):
        check_nms(boxes, scores, thr, backend)
        for branch in TV_BRANCHES:
            check_batched(boxes, scores, np.array([0, 1, 0, 1, 0, 2, 2, 0, 1]), thr, backend,
                          branch)
    # NaN scores go first, by lower index: box 1 is selected first and suppresses box 3.
    assert_same(torchvision_nms(boxes[:5], scores[:5], 0.5, backend=backend),
                np.array([1, 2], np.int64))


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_input(backend):
    boxes, scores = np.zeros((0, 4), F32), np.zeros(0, F32)
    assert_same(torchvision_nms(boxes, scores, 0.5, backend=backend), tv_nms(boxes, scores, 0.5))
    for branch in TV_BRANCHES:
        check_batched(boxes, scores, np.zeros(0, np.int64), 0.5, backend, branch)


# ---------------------------------------------------------------------------------------------
# torchvision_nms against torchvision.ops.nms
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("thr", THRESHOLDS)
def test_grid_boxes_at_exact_thresholds(backend, thr):
    rng = np.random.default_rng(int(thr * 1000))
    for trial in range(12):
        n = int(rng.integers(1, 120))
        boxes = grid_boxes(rng, n, empty=trial % 3 == 0, flipped=trial % 4 == 0)
        check_nms(boxes, tied_scores(rng, n, ["few", "saturated", "uniform"][trial % 3]), thr,
                  backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("thr", [0.5, 0.7])
def test_near_duplicates(backend, thr):
    rng = np.random.default_rng(17)
    boxes = near_duplicates(rng, 2000)
    check_nms(boxes, tied_scores(rng, 2000, "saturated"), thr, backend)


def test_cpu_kernel_at_scale():
    rng = np.random.default_rng(23)
    boxes = grid_boxes(rng, 20_000, extent=400, max_size=60)
    check_nms(boxes, tied_scores(rng, 20_000, "few"), 0.7, "cpu")


@st.composite
def grid_cases(draw: st.DrawFn, max_n: int = 30):
    """Small integer-grid boxes (zero-size and flipped corners now and then), tied scores,
    NaN sometimes, classes from a few ids."""
    n = draw(st.integers(0, max_n))
    corner = st.integers(0, 12)
    rows = []
    for _ in range(n):
        x1, y1 = draw(corner), draw(corner)
        rows.append([x1, y1, x1 + draw(st.integers(-1, 8)), y1 + draw(st.integers(0, 8))])
    boxes = np.asarray(rows, F32).reshape(n, 4)
    score = st.sampled_from([0.1, 0.5, 0.9, 1.0, np.nan]) if draw(st.booleans()) else (
        st.floats(0, 1, width=32))
    scores = np.asarray([draw(score) for _ in range(n)], F32)
    classes = np.asarray([draw(st.integers(-2, 3)) for _ in range(n)], np.int64)
    return boxes, scores, classes


@pytest.mark.parametrize("backend", BACKENDS)
@given(case=grid_cases(), thr=st.sampled_from(THRESHOLDS))
def test_matches_torchvision_property(backend, case, thr):
    boxes, scores, classes = case
    check_nms(boxes, scores, thr, backend)
    for branch in TV_BRANCHES:
        check_batched(boxes, scores, classes, thr, backend, branch)


# ---------------------------------------------------------------------------------------------
# torchvision_batched_nms: the two branches
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("n", [999, 1000, 1001, 1002])
def test_branch_switch_at_1000_boxes(backend, n):
    """torchvision runs the coordinate trick for up to 1000 boxes (4000 values), vanilla above;
    the boxes are built so that the two branches keep different sets."""
    rng = np.random.default_rng(n)
    boxes, scores, classes = near_threshold_pairs(rng, (n + 1) // 2, 90, 0.5)
    boxes, scores, classes = boxes[:n], scores[:n], classes[:n]
    want = check_batched(boxes, scores, classes, 0.5, backend, "auto")
    vanilla = check_batched(boxes, scores, classes, 0.5, backend, "vanilla")
    trick = check_batched(boxes, scores, classes, 0.5, backend, "coordinate_trick")
    assert set(vanilla) != set(trick)  # the choice matters on these boxes
    assert_same(want, vanilla if n > VANILLA_ABOVE else trick)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("thr", [0.5, 0.7])
def test_branches_on_many_classes(backend, thr):
    rng = np.random.default_rng(int(thr * 10))
    for n_classes in (1, 2, 91):
        boxes, scores, classes = near_threshold_pairs(rng, 450, n_classes, thr)
        for branch in TV_BRANCHES:
            check_batched(boxes, scores, classes, thr, backend, branch)
        boxes = grid_boxes(rng, 1200, extent=60, max_size=12)
        classes = rng.integers(0, n_classes, 1200) * 7 - 3  # sparse, negative ids too
        scores = tied_scores(rng, 1200, "few")
        for branch in TV_BRANCHES:
            check_batched(boxes, scores, classes, thr, backend, branch)


@pytest.mark.parametrize("backend", BACKENDS)
def test_vanilla_final_sort_is_unstable(backend):
    """More than 16 kept boxes with equal scores: the vanilla branch lists them in introsort's
    order (torch's unstable sort), not by index."""
    rng = np.random.default_rng(31)
    boxes = np.concatenate([rng.integers(0, 30, (1500, 2)) * 40.0] * 2, axis=1).astype(F32)
    boxes[:, 2:] += 30  # 30x30 boxes on a 40-pixel grid: duplicates suppress, others do not
    scores = tied_scores(rng, 1500, "few")
    classes = rng.integers(0, 3, 1500)
    got = check_batched(boxes, scores, classes, 0.5, backend, "vanilla")
    where = np.sort(got)  # the kept boxes as `where(mask)` lists them
    stable = where[np.argsort(-scores[where], kind="stable")]  # ties by lower index
    assert not np.array_equal(got, stable)


@pytest.mark.parametrize("backend", BACKENDS)
def test_rpn_like_proposal_nms(backend):
    """``filter_proposals``' call: ~4,700 clipped candidates over 5 levels (the level is the
    class), probabilities with many saturated at 1.0, threshold 0.7: the vanilla branch."""
    sizes = [1000, 1000, 1000, 1000, 700]
    boxes, scores = rpn_like_boxes(sum(sizes), seed=5, height=800, width=1088)
    boxes = boxes[:, [1, 0, 3, 2]]  # (y1, x1, y2, x2) -> (x1, y1, x2, y2)
    boxes = np.clip(boxes, 0, F32([1088, 800, 1088, 800])).astype(F32)
    rng = np.random.default_rng(5)
    scores = tied_scores(rng, len(boxes), "saturated")
    levels = np.repeat(np.arange(5), sizes)
    want = check_batched(boxes, scores, levels, 0.7, backend, "auto")
    assert_same(want, tv_batched(boxes, scores, levels, 0.7, "vanilla"))


# ---------------------------------------------------------------------------------------------
# Contract
# ---------------------------------------------------------------------------------------------


def test_any_real_dtype_is_converted_to_float32():
    boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10]], np.int64)
    scores = np.array([0.8, 0.9], np.float64)
    assert_same(torchvision_nms(boxes, scores, 0.5), np.array([1], np.int64))
    assert_same(torchvision_batched_nms(boxes, scores, np.array([0, 1], np.int32), 0.5),
                np.array([1, 0], np.int64))


B2, S2 = np.zeros((2, 4), F32), np.zeros(2, F32)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: torchvision_nms(np.zeros((2, 5), F32), S2, 0.5), "4 values on its last axis"),
        (lambda: torchvision_nms(np.zeros(4, F32), S2, 0.5), "2 dimensions"),
        (lambda: torchvision_nms(B2, np.zeros(3, F32), 0.5), "one score per box"),
        (lambda: torchvision_nms(B2, S2, 1.5), r"in \[0, 1\]"),
        (lambda: torchvision_nms(B2, S2, float("nan")), r"in \[0, 1\]"),
        (lambda: torchvision_nms(B2, S2, 0.5, backend="cuda"), "backend must be one of"),
        (lambda: torchvision_batched_nms(B2, S2, np.zeros(3, np.int64), 0.5), "one class"),
        (lambda: torchvision_batched_nms(B2, S2, np.zeros(2, F32), 0.5), "integer array"),
        (lambda: torchvision_batched_nms(B2, S2, np.zeros((2, 1), np.int64), 0.5), "1-D"),
        (lambda: torchvision_batched_nms(B2, S2, np.zeros(2, np.int64), 0.5, branch="fast"),
         "branch must be one of"),
    ],
)
def test_validation(call, match):
    with pytest.raises(ValueError, match=match):
        call()
