"""Training losses with their analytic gradients, as NumPy references.

Every function returns ``(loss, grad)``: ``loss`` a Python float, ``grad`` the gradient of
``loss`` with respect to the predictions (logits or deltas), same shape and float dtype as the
predictions. Arithmetic is float64 inside; the gradient is cast back to the input's dtype.

Normalisation (spec 2.1 and 3.3; Luminoth ``rpn.py::loss``, ``rcnn.py::loss``,
``utils/losses.py``; wheat ``utils.py::loss_cls``, ``huberGTZ``):

* Classification: the mean over rows whose label is not ignored (label ``< 0``). Luminoth's RPN
  and R-CNN ``reduce_mean`` over the non-ignored rows; wheat's ``loss_cls`` masks
  ``y_true != -1`` then takes ``K.mean``.
* Luminoth regression: smooth L1 summed over the 4 coordinates of a row, then the mean over the
  foreground rows (``reduction="rows"``), ``sigma`` 3 for the RPN and 1 for the R-CNN.
* Wheat regression (``huberGTZ``): the elements whose target is non-zero, ``Huber(delta=1)``
  averaged over those elements (``reduction="elements"``, ``sigma=1``, ``mask=target != 0``).

With nothing to average (no kept row or element) the loss is defined as ``0.0`` with a zero
gradient; TensorFlow's ``reduce_mean`` of an empty tensor gives NaN there.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import numpy.typing as npt

from npfrcnn._validate import as_float_array

__all__ = [
    "softmax_cross_entropy",
    "sigmoid_cross_entropy",
    "smooth_l1",
    "smooth_l1_loss",
    "rcnn_box_loss",
]

Grad = npt.NDArray[np.floating]


def _float_input(name: str, x: npt.ArrayLike) -> tuple[np.ndarray, np.dtype]:
    arr = np.asarray(x)
    dtype = arr.dtype if arr.dtype in (np.float32, np.float64) else np.dtype(np.float32)
    out = as_float_array(name, arr, dtype=np.float64, finite=True)
    return out, np.dtype(dtype)


def _int_labels(name: str, labels: npt.ArrayLike, shape: tuple[int, ...]) -> np.ndarray:
    lab = np.asarray(labels)
    if lab.shape != shape:
        raise ValueError(f"{name} must have shape {list(shape)}, got {list(lab.shape)}")
    if lab.size and lab.dtype.kind not in "iu":
        if lab.dtype.kind == "f" and np.all(lab == np.round(lab)):
            return lab.astype(np.int64)
        raise ValueError(f"{name} must hold integer labels, got dtype {lab.dtype}")
    return lab.astype(np.int64)


def softmax_cross_entropy(logits: npt.ArrayLike, labels: npt.ArrayLike) -> tuple[float, Grad]:
    """Mean softmax cross-entropy over the rows that are not ignored.

    ``loss = mean_{i: labels[i] >= 0} (logsumexp(logits[i]) - logits[i, labels[i]])``, which is
    ``tf.nn.sparse_softmax_cross_entropy_with_logits`` averaged over the kept rows (Luminoth's
    RPN, with ``C = 2`` and labels 1/0/-1, and its R-CNN, with ``C = K + 1`` and background 0).

    Args:
        logits: ``[N, C]`` finite scores.
        labels: ``[N]`` integers in ``[0, C)``; any negative label is ignored.

    Returns:
        ``(loss, grad)``: ``grad [N, C] = (softmax(logits) - onehot(labels)) / n_kept`` on kept
        rows, 0 on ignored rows. No kept row: ``(0.0, zeros)``.
    """
    z, dtype = _float_input("logits", logits)
    if z.ndim != 2:
        raise ValueError(f"logits must be [N, C], got shape {list(z.shape)}")
    lab = _int_labels("labels", labels, (z.shape[0],))
    if lab.size and lab.max(initial=-1) >= z.shape[1]:
        raise ValueError(f"labels must be < C = {z.shape[1]}, got {int(lab.max())}")
    keep = np.flatnonzero(lab >= 0)
    grad = np.zeros_like(z)
    if keep.size == 0:
        return 0.0, grad.astype(dtype)
    zk = z[keep]
    shifted = zk - zk.max(axis=1, keepdims=True)  # [P,C]
    expz = np.exp(shifted)
    total = expz.sum(axis=1)  # [P]
    lse = np.log(total)
    picked = shifted[np.arange(keep.size), lab[keep]]
    loss = float(np.mean(lse - picked))
    soft = expz / total[:, None]
    soft[np.arange(keep.size), lab[keep]] -= 1.0
    grad[keep] = soft / keep.size
    return loss, grad.astype(dtype)


def sigmoid_cross_entropy(logits: npt.ArrayLike, labels: npt.ArrayLike) -> tuple[float, Grad]:
    """Mean sigmoid (binary) cross-entropy over the elements that are not ignored.

    Per element ``max(x, 0) - x * z + log1p(exp(-|x|))`` (``tf.nn.sigmoid_cross_entropy_with_
    logits``), averaged over elements with ``labels >= 0``: the wheat RPN's objectness loss
    (``loss_cls``: mask ``y_true != -1``, then the mean), taken on logits rather than on the
    sigmoid output so it stays finite.

    Args:
        logits: any shape, finite.
        labels: same shape; targets in ``[0, 1]`` (usually 1 or 0); negative values are ignored.

    Returns:
        ``(loss, grad)`` with ``grad = (sigmoid(x) - z) / n_kept`` on kept elements, else 0.
    """
    x, dtype = _float_input("logits", logits)
    z = np.asarray(labels, dtype=np.float64)
    if z.shape != x.shape:
        raise ValueError(
            f"labels must have the shape of logits {list(x.shape)}, got {list(z.shape)}"
        )
    if not np.isfinite(z).all() or (z > 1).any():
        raise ValueError("labels must be finite and at most 1 (negative values mean 'ignore')")
    keep = z >= 0
    n = int(np.count_nonzero(keep))
    grad = np.zeros_like(x)
    if n == 0:
        return 0.0, grad.astype(dtype)
    xk, zk = x[keep], z[keep]
    per = np.maximum(xk, 0.0) - xk * zk + np.log1p(np.exp(-np.abs(xk)))
    e = np.exp(-np.abs(xk))
    sig = np.where(xk >= 0, 1.0 / (1.0 + e), e / (1.0 + e))
    grad[keep] = (sig - zk) / n
    return float(np.sum(per) / n), grad.astype(dtype)


def smooth_l1(diff: npt.ArrayLike, sigma: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Element-wise smooth L1 and its derivative (Luminoth ``utils/losses.py``).

    ``0.5 * sigma**2 * d**2`` if ``|d| < 1 / sigma**2``, else ``|d| - 0.5 / sigma**2``; the
    derivative is ``sigma**2 * d`` or ``sign(d)`` (continuous at the switch). This equals
    ``sigma**2 * huber(d, delta=1 / sigma**2)``. Returns float64 ``(value, derivative)``.
    """
    s = float(sigma)
    if not (np.isfinite(s) and s > 0):
        raise ValueError(f"sigma must be positive and finite, got {sigma!r}; Luminoth uses 3 or 1")
    d = np.asarray(diff, dtype=np.float64)
    s2 = s * s
    small = np.abs(d) < 1.0 / s2
    value = np.where(small, 0.5 * s2 * d * d, np.abs(d) - 0.5 / s2)
    deriv = np.where(small, s2 * d, np.sign(d))
    return value, deriv


def smooth_l1_loss(
    pred: npt.ArrayLike,
    target: npt.ArrayLike,
    *,
    sigma: float = 1.0,
    mask: npt.ArrayLike | None = None,
    reduction: Literal["rows", "elements"] = "rows",
) -> tuple[float, Grad]:
    """Smooth L1 regression loss, normalised as Luminoth or the wheat write-up.

    Args:
        pred: ``[N, 4]`` predicted deltas (any ``[N, D]`` works).
        target: ``[N, D]`` targets.
        sigma: Luminoth ``l1_sigma``: 3.0 for the RPN, 1.0 for the R-CNN. ``sigma=1`` is
            ``tf.keras.losses.Huber(delta=1)`` element-wise.
        mask: which entries count. ``[N]`` bool selects rows (Luminoth: ``labels == 1`` for the
            RPN, ``labels > 0`` for the R-CNN); ``[N, D]`` bool selects elements (wheat:
            ``target != 0``). ``None``: everything.
        reduction: ``"rows"``: sum each kept row over its kept elements, then the mean over kept
            rows (a row counts if any of its elements is kept) — Luminoth. ``"elements"``: the
            mean over kept elements — wheat's ``huberGTZ``.

    Returns:
        ``(loss, grad)``, ``grad`` of shape ``pred.shape``; ``(0.0, zeros)`` when nothing is kept.
    """
    p, dtype = _float_input("pred", pred)
    t, _ = _float_input("target", target)
    if p.ndim != 2 or t.shape != p.shape:
        raise ValueError(
            f"pred and target must both be [N, D], got {list(p.shape)} and {list(t.shape)}"
        )
    if mask is None:
        m = np.ones(p.shape, dtype=bool)
    else:
        mk = np.asarray(mask)
        if mk.dtype != bool:
            raise ValueError(f"mask must be a bool array, got dtype {mk.dtype}")
        if mk.shape == (p.shape[0],):
            m = np.repeat(mk[:, None], p.shape[1], axis=1)
        elif mk.shape == p.shape:
            m = mk
        else:
            raise ValueError(
                f"mask must be [N] (rows) or [N, D] (elements) for pred {list(p.shape)}, "
                f"got {list(mk.shape)}"
            )
    if reduction == "rows":
        count = int(np.count_nonzero(m.any(axis=1)))
    elif reduction == "elements":
        count = int(np.count_nonzero(m))
    else:
        raise ValueError(f"reduction must be 'rows' or 'elements', got {reduction!r}")
    grad = np.zeros_like(p)
    if count == 0:
        return 0.0, grad.astype(dtype)
    value, deriv = smooth_l1(p - t, sigma)
    loss = float(np.sum(value[m]) / count)
    grad[m] = deriv[m] / count
    return loss, grad.astype(dtype)


def rcnn_box_loss(
    bbox_pred: npt.ArrayLike,
    labels: npt.ArrayLike,
    box_targets: npt.ArrayLike,
    *,
    sigma: float = 1.0,
) -> tuple[float, Grad]:
    """Luminoth's R-CNN regression loss on the per-class head output.

    For each row with label ``c > 0`` the 4 columns ``4 * (c - 1):4 * c`` of ``bbox_pred`` are
    compared with ``box_targets`` (smooth L1, summed over the 4, mean over those rows), as
    Luminoth's ``rcnn.py::loss`` does with its one-hot mask.

    Args:
        bbox_pred: ``[N, 4 * K]`` predicted deltas.
        labels: ``[N]`` ints, ``1..K`` foreground; ``0`` and negative rows do not count.
        box_targets: ``[N, 4]``, as :func:`npfrcnn.targets.proposal_targets` returns.
        sigma: Luminoth's R-CNN ``l1_sigma`` is 1.

    Returns:
        ``(loss, grad)`` with ``grad [N, 4 * K]`` non-zero only in the selected columns.
    """
    p, dtype = _float_input("bbox_pred", bbox_pred)
    if p.ndim != 2 or p.shape[1] % 4 != 0 or p.shape[1] == 0:
        raise ValueError(f"bbox_pred must be [N, 4 * K], got shape {list(p.shape)}")
    k = p.shape[1] // 4
    t, _ = _float_input("box_targets", box_targets)
    if t.shape != (p.shape[0], 4):
        raise ValueError(f"box_targets must be [{p.shape[0]}, 4], got {list(t.shape)}")
    lab = _int_labels("labels", labels, (p.shape[0],))
    if lab.size and lab.max() > k:
        raise ValueError(f"labels go up to {int(lab.max())} but bbox_pred has K = {k} classes")
    rows = np.flatnonzero(lab > 0)
    grad = np.zeros_like(p)
    if rows.size == 0:
        return 0.0, grad.astype(dtype)
    cols = 4 * (lab[rows] - 1)[:, None] + np.arange(4)[None, :]  # [P,4]
    picked = p[rows[:, None], cols]  # [P,4]
    value, deriv = smooth_l1(picked - t[rows], sigma)
    loss = float(np.sum(value) / rows.size)
    grad[rows[:, None], cols] = deriv / rows.size
    return loss, grad.astype(dtype)
