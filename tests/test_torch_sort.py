"""torch_topk / torch_sort_desc (npfrcnn.ops.torch_sort) against torch's CPU topk and sort.

The indices must be identical to torch's, index for index, ties included, for both backends.
Ties are the point: values are drawn from a few distinct floats, integer grids, saturated
sigmoid outputs (many exact 1.0) and NaN/inf/signed zeros, at sizes around libstdc++'s
thresholds (16/17 pairs for introsort's insertion sort, ``k * 64 == n`` for topk's choice
between partial_sort and nth_element). Adversarial inputs (McIlroy's "antiqsort") drive
introsort and introselect into their heap-sort fallbacks, which random inputs never reach.

torch runs with 2 threads (``torch.set_num_threads(2)``); its sort and topk order does not
depend on the thread count (spec 10.3), but it is recorded here as the spec asks.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from helpers import assert_same  # noqa: E402
from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra import numpy as hnp  # noqa: E402

from npfrcnn.ops import torch_sort as ts  # noqa: E402
from npfrcnn.ops.torch_sort import torch_sort_desc, torch_topk  # noqa: E402

torch.set_num_threads(2)

BACKENDS = ["numpy", "cpu"]
F32 = np.float32
KINDS = ["few", "grid", "saturated", "special", "distinct"]


def torch_sort_indices(values: np.ndarray) -> np.ndarray:
    return torch.sort(torch.from_numpy(values), descending=True).indices.numpy()


def torch_topk_result(values: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    out = torch.topk(torch.from_numpy(values), k)
    return out.values.numpy(), out.indices.numpy()


def tied_values(rng: np.random.Generator, n: int, kind: str) -> np.ndarray:
    """float32 ``[n]`` with the tie patterns the RPN and the heads produce."""
    if kind == "few":  # a handful of distinct scores
        return rng.choice(F32([0.1, 0.25, 0.5, 0.75, 1.0]), n)
    if kind == "grid":  # identical logits from flat regions: small integers
        return rng.integers(-4, 5, n).astype(F32)
    if kind == "saturated":  # sigmoid outputs, many saturated at exactly 1.0
        x = rng.normal(0.0, 8.0, n)
        return (1.0 / (1.0 + np.exp(-x))).astype(F32)
    if kind == "special":  # NaN (largest for torch), +-inf, +-0
        few = F32([np.nan, np.inf, -np.inf, 0.0, -0.0, 1.0, -1.0, 0.5])
        return rng.choice(few, n)
    return rng.standard_normal(n).astype(F32)  # "distinct": ties only by float32 collision


def check_sort(values: np.ndarray, backend: str) -> None:
    assert_same(torch_sort_desc(values, backend=backend), torch_sort_indices(values))


def check_topk(values: np.ndarray, k: int, backend: str) -> None:
    got_values, got_indices = torch_topk(values, k, backend=backend)
    want_values, want_indices = torch_topk_result(values, k)
    assert_same(got_indices, want_indices, err_msg=f"n={values.size} k={k}")
    assert_same(got_values, want_values)  # NaN where torch has NaN


# ---------------------------------------------------------------------------------------------
# Hand-worked cases
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_golden_sort_of_equal_values(backend):
    # 16 equal values: introsort only insertion-sorts, which is stable.
    assert_same(torch_sort_desc(np.ones(16, F32), backend=backend), np.arange(16))
    # 17: one partition. The median of pairs 1, 8, 16 (all equal) is pair 8, swapped to the
    # front; the unguarded partition then swaps (1,16), (2,15), ..., (8,9) and cuts at 9.
    expected = [8, 16, 15, 14, 13, 12, 11, 10, 9, 0, 7, 6, 5, 4, 3, 2, 1]
    assert_same(torch_sort_desc(np.ones(17, F32), backend=backend), np.asarray(expected))
    assert_same(torch_sort_indices(np.ones(17, F32)), np.asarray(expected))


@pytest.mark.parametrize("backend", BACKENDS)
def test_golden_topk_nan_first(backend):
    values = np.array([3, 1, 3, np.nan, 3, 2, np.inf], F32)
    got_values, got_indices = torch_topk(values, 4, backend=backend)
    # k * 64 > n: nth_element(first, first + 3, last), then sort of the first 3 pairs.
    assert_same(got_indices, np.array([3, 6, 4, 0], np.int64))
    assert_same(got_values, np.array([np.nan, np.inf, 3, 3], F32))
    # partial_sort (k * 64 <= n) of equal values: heap order, not index order.
    assert_same(torch_topk(np.ones(640, F32), 10, backend=backend)[1],
                np.array([8, 9, 4, 7, 5, 3, 1, 0, 2, 6], np.int64))


# ---------------------------------------------------------------------------------------------
# Against torch
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    "n", [1, 2, 3, 5, 15, 16, 17, 18, 31, 32, 33, 64, 100, 257, 1000, 5000, 20000]
)
def test_sort_matches_torch(backend, kind, n):
    rng = np.random.default_rng(n * 7 + KINDS.index(kind))
    check_sort(tied_values(rng, n, kind), backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    ("n", "k"),
    [
        (1, 1), (2, 1), (2, 2), (16, 16), (17, 16), (17, 17), (20, 5),
        (64, 1), (63, 1), (65, 1),  # k * 64 == n is partial_sort; one less is nth_element
        (6400, 100), (6399, 100), (6401, 100),
        (1000, 1000), (1000, 999), (5000, 1000), (20000, 1000), (64000, 1000),
        (200_000, 1000),  # the RPN's first level: partial_sort of 1000 out of ~200 k
    ],
)
def test_topk_matches_torch(backend, kind, n, k):
    rng = np.random.default_rng(n * 13 + k + KINDS.index(kind))
    check_topk(tied_values(rng, n, kind), k, backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_topk_every_k_of_small_inputs(backend):
    rng = np.random.default_rng(3)
    for n in (1, 4, 16, 17, 40):
        for kind in KINDS:
            values = tied_values(rng, n, kind)
            for k in range(n + 1):
                check_topk(values, k, backend)


def test_rpn_like_topk_and_sort():
    """Five RPN levels as torchvision's ``_get_top_n_idx`` sees them: topk(1000) of logits per
    level (with exact ties from flat regions), then the unstable sort of ~4,700 probabilities
    (batched NMS, vanilla branch) with many saturated at 1.0."""
    rng = np.random.default_rng(11)
    for n in (200_000, 50_000, 12_600, 3_150, 819):
        logits = rng.normal(0.0, 3.0, n).astype(F32)
        logits[rng.random(n) < 0.2] = F32(2.5)  # one flat region's logit, many times
        for backend in BACKENDS:
            check_topk(logits, min(1000, n), backend)
    probs = (1.0 / (1.0 + np.exp(-rng.normal(8.0, 6.0, 4700)))).astype(F32)
    assert np.count_nonzero(probs == 1.0) > 100
    for backend in BACKENDS:
        check_sort(probs, backend)


@st.composite
def small_values(draw: st.DrawFn, max_n: int = 80) -> np.ndarray:
    few = st.sampled_from([np.nan, np.inf, -np.inf, 0.0, -0.0, 1.0, -1.0, 0.5, 2.0])
    elements = few if draw(st.booleans()) else st.one_of(few, st.floats(-4, 4, width=32))
    return draw(hnp.arrays(F32, st.integers(0, max_n), elements=elements.map(F32)))


@pytest.mark.parametrize("backend", BACKENDS)
@given(values=small_values(), data=st.data())
def test_matches_torch_property(backend, values, data):
    check_sort(values, backend)
    check_topk(values, data.draw(st.integers(0, values.size)), backend)


# ---------------------------------------------------------------------------------------------
# Heap-sort fallbacks: McIlroy's adversary ("A killer adversary for quicksort", 1999)
# ---------------------------------------------------------------------------------------------


def adversarial_values(run: Callable[[list], None], n: int) -> np.ndarray:
    """Values that make ``run`` (a reference algorithm applied to a pair list) partition badly.

    Every value starts as "gas", larger in sort order than anything solid. When two gas values
    are compared, one (preferably the last gas seen, the likely pivot) is frozen to the next
    solid value, ordered after the solids frozen before it. The answers are consistent with
    the final values, so sorting those values repeats the same comparisons: torch's libstdc++
    runs the same algorithm and meets the same worst case.
    """
    gas = n
    key = [gas] * n  # in sort order: smaller key goes first
    state = {"solid": 0, "candidate": 0}

    def freeze(i: int) -> None:
        key[i] = state["solid"]
        state["solid"] += 1

    def goes_first(a: tuple[float, int], b: tuple[float, int]) -> bool:
        x, y = a[1], b[1]
        if key[x] == gas and key[y] == gas:
            freeze(x if x == state["candidate"] else y)
        if key[x] == gas:
            state["candidate"] = x
        elif key[y] == gas:
            state["candidate"] = y
        return key[x] < key[y]

    original = ts._goes_first
    ts._goes_first = goes_first
    try:
        run([(0.0, i) for i in range(n)])
    finally:
        ts._goes_first = original
    return -np.asarray(key, dtype=F32)  # descending values = ascending keys


class Counter:
    def __init__(self, fn: Callable) -> None:
        self.fn, self.calls = fn, 0

    def __call__(self, *args):
        self.calls += 1
        return self.fn(*args)


@pytest.mark.parametrize("n", [300, 2000])
def test_introsort_heap_fallback_matches_torch(monkeypatch, n):
    values = adversarial_values(lambda a: ts._std_sort(a, 0, len(a)), n)
    heap_sort = Counter(ts._partial_sort)
    monkeypatch.setattr(ts, "_partial_sort", heap_sort)
    for backend in BACKENDS:
        check_sort(values, backend)
    assert heap_sort.calls > 0  # the depth limit was reached (numpy backend)
    # Ties on top of the adversarial pattern: pairs of equal values.
    check_sort(np.floor(values / 2), "cpu")


@pytest.mark.parametrize(("n", "k"), [(300, 150), (2000, 1000), (2000, 1999)])
def test_introselect_heap_fallback_matches_torch(monkeypatch, n, k):
    values = adversarial_values(lambda a: ts._nth_element(a, 0, k - 1, len(a)), n)
    heap_select = Counter(ts._heap_select)
    monkeypatch.setattr(ts, "_heap_select", heap_select)
    for backend in BACKENDS:
        check_topk(values, k, backend)
    assert heap_select.calls > 0
    check_topk(np.floor(values / 3), k, "cpu")


# ---------------------------------------------------------------------------------------------
# Contract
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_and_k_zero(backend):
    empty = np.zeros(0, F32)
    assert_same(torch_sort_desc(empty, backend=backend), np.zeros(0, np.int64))
    for values in (empty, np.ones(5, F32)):
        got_values, got_indices = torch_topk(values, 0, backend=backend)
        assert_same(got_values, np.zeros(0, F32))
        assert_same(got_indices, np.zeros(0, np.int64))


def test_other_dtypes_are_sorted_as_float32():
    values = np.array([1.0, 1.0 + 1e-12, 0.5], np.float64)  # equal once rounded to float32
    assert_same(torch_sort_desc(values), torch_sort_indices(values.astype(F32)))
    assert_same(torch_topk(np.array([3, 1, 2]), 2)[1], np.array([0, 2], np.int64))


def test_invariants_large_cpu():
    rng = np.random.default_rng(5)
    values = tied_values(rng, 100_000, "special")
    order = torch_sort_desc(values)
    assert_same(np.sort(order), np.arange(values.size))
    nan = np.isnan(values[order])
    n_nan = int(nan.sum())
    assert nan[:n_nan].all() and not nan[n_nan:].any()  # NaN first
    ordered = values[order][n_nan:]
    assert np.all(ordered[:-1] >= ordered[1:])  # descending (inf - inf would be NaN: no diff)
    top_values, top = torch_topk(values, 1000)
    assert_same(top_values, values[order[:1000]])  # the same values; ties may differ


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: torch_sort_desc(np.ones((2, 3), F32)), "must be 1-D"),
        (lambda: torch_sort_desc(np.float32(1.0)), "must be 1-D"),
        (lambda: torch_sort_desc(np.array(["a"])), "real numeric"),
        (lambda: torch_sort_desc(np.ones(3, F32), backend="cuda"), "backend must be one of"),
        (lambda: torch_topk(np.ones(3, F32), 4), "at most the number of values"),
        (lambda: torch_topk(np.ones(3, F32), -1), "non-negative"),
        (lambda: torch_topk(np.ones(3, F32), 1.5), "must be an integer"),
        (lambda: torch_topk(np.ones((3, 1), F32), 1), "must be 1-D"),
        (lambda: torch_topk(np.ones(3, F32), 1, backend="gpu"), "backend must be one of"),
    ],
)
def test_validation(call, match):
    with pytest.raises(ValueError, match=match):
        call()
