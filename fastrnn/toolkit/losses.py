"""Loss functions returning ``(value, grad)``: the loss and its gradient with respect to the prediction.

Each equals torch.nn.functional's loss of the same name in value and gradient. The value is a
Python float computed in float64; the gradient has the prediction's shape and dtype, ready for
``model.backward(grad)``. ``reduction="mean"`` averages over elements (cross-entropy: over the
non-ignored targets), ``"sum"`` adds them up. NaN and Inf propagate without warnings.

Examples
--------
>>> import numpy as np, fastrnn
>>> value, grad = fastrnn.losses.mse(np.array([1.0, 3.0]), np.array([0.0, 1.0]))
>>> value, grad                                 # ((1 + 4) / 2, 2·(pred − target) / 2)
(2.5, array([1., 2.]))
"""
from __future__ import annotations

import numpy as np

from ..core import validation as V

__all__ = ["mse", "bce_with_logits", "cross_entropy"]


def _prediction(pred, where, name):
    a = V.to_numpy(pred)
    if not isinstance(pred, np.ndarray) and a.dtype not in V.SUPPORTED_DTYPES:
        a = np.asarray(a, np.float64)  # Python lists and scalars
    V.as_dtype(a.dtype, f"{where}: {name} dtype")
    return a


def _scale(reduction, count, where):
    if reduction == "mean":
        return 1.0 / count if count else np.nan
    if reduction == "sum":
        return 1.0
    raise ValueError(f"{where}: reduction must be 'mean' or 'sum', got {reduction!r}")


def _pair(pred, target, where, pred_name):
    p = _prediction(pred, where, pred_name)
    t = V.float_array(target, p.dtype, where, "target")
    if t.shape != p.shape:
        raise ValueError(f"{where}: target has shape {tuple(t.shape)}, expected the shape of {pred_name} "
                         f"{tuple(p.shape)}")
    return p, t


def mse(pred, target, reduction="mean"):
    """Mean squared error ``Σ (pred − target)² / n`` and its gradient ``2 (pred − target) / n``
    (``n = 1`` for ``reduction="sum"``); torch.nn.functional.mse_loss.

    ``target`` has the prediction's shape and dtype.

    Examples
    --------
    >>> import numpy as np, fastrnn
    >>> fastrnn.losses.mse(np.array([0.5], np.float32), np.array([1.0], np.float32), reduction="sum")
    (0.25, array([-1.], dtype=float32))
    """
    where = "losses.mse"
    p, t = _pair(pred, target, where, "pred")
    s = _scale(reduction, p.size, where)
    with np.errstate(all="ignore"):
        d = p.astype(np.float64) - t
        return float(np.sum(d * d) * s), (2.0 * s * d).astype(p.dtype)


def bce_with_logits(logits, target, reduction="mean"):
    """Binary cross-entropy on logits, ``ℓ = max(x, 0) − x·y + log(1 + e^(−|x|))``, with gradient
    ``σ(x) − y`` (divided by n for ``"mean"``); torch.nn.functional.binary_cross_entropy_with_logits.

    The form above is exact and never overflows (no ``log(σ(x))`` of a saturated sigmoid).
    ``target`` holds probabilities in [0, 1] (not checked, like torch), same shape and dtype.

    Examples
    --------
    >>> import numpy as np, fastrnn
    >>> value, grad = fastrnn.losses.bce_with_logits(np.array([0.0, 1000.0]), np.array([1.0, 1.0]))
    >>> round(value, 6), grad                       # (log 2 + 0) / 2; σ(0) − 1 = −0.5
    (0.346574, array([-0.25,  0.  ]))
    """
    where = "losses.bce_with_logits"
    x, y = _pair(logits, target, where, "logits")
    s = _scale(reduction, x.size, where)
    with np.errstate(all="ignore"):
        x64 = x.astype(np.float64)
        e = np.exp(-np.abs(x64))  # in (0, 1]: no overflow for any logit
        value = np.sum(np.maximum(x64, 0) - x64 * y + np.log1p(e)) * s
        sigmoid = np.where(x64 >= 0, 1.0 / (1.0 + e), e / (1.0 + e))
        return float(value), (s * (sigmoid - y)).astype(x.dtype)


def cross_entropy(logits, target, reduction="mean", ignore_index=-100):
    """Softmax cross-entropy on logits with integer class targets, ``ℓ = logsumexp(x) − x[target]``,
    gradient ``softmax(x) − onehot(target)``; torch.nn.functional.cross_entropy.

    ``logits`` is ``[..., K]`` with the **classes on the last axis** (the natural layout of a
    head on ``[T, N, H]``; torch puts them on axis 1, so compare with
    ``F.cross_entropy(logits.reshape(-1, K), target.reshape(-1))``). ``target`` is an integer
    array of shape ``logits.shape[:-1]`` with values in ``[0, K)`` or ``ignore_index``; ignored
    positions add nothing and get zero gradient, and ``"mean"`` divides by the number of
    non-ignored targets (NaN if there are none, as torch).

    Examples
    --------
    >>> import numpy as np, fastrnn
    >>> logits = np.zeros((2, 4)); target = np.array([1, -100])
    >>> value, grad = fastrnn.losses.cross_entropy(logits, target)
    >>> round(value, 6), grad                       # log 4; the ignored row has no gradient
    (1.386294, array([[ 0.25, -0.75,  0.25,  0.25],
           [ 0.  ,  0.  ,  0.  ,  0.  ]]))
    """
    where = "losses.cross_entropy"
    x = _prediction(logits, where, "logits")
    if x.ndim == 0 or x.shape[-1] == 0:
        raise ValueError(f"{where}: logits has shape {tuple(x.shape)}, expected (..., K) with K >= 1 classes")
    K = x.shape[-1]
    t = V.to_numpy(target)
    if not isinstance(target, np.ndarray):
        t = np.asarray(t)
    if t.dtype == np.bool_ or not np.issubdtype(t.dtype, np.integer):
        raise TypeError(f"{where}: target must hold integer class indices, got dtype {t.dtype}")
    if t.shape != x.shape[:-1]:
        raise ValueError(f"{where}: target has shape {tuple(t.shape)}, expected logits.shape[:-1] = {x.shape[:-1]}")
    keep = t != ignore_index
    bad = keep & ((t < 0) | (t >= K))
    if bad.any():
        i = tuple(int(k) for k in np.argwhere(bad)[0])
        raise ValueError(f"{where}: target{list(i)} = {t[i]} is not a class index in [0, {K}) nor "
                         f"ignore_index={ignore_index}")
    s = _scale(reduction, int(keep.sum()), where)
    with np.errstate(all="ignore"):
        z = x.astype(np.float64).reshape(-1, K)
        z = z - z.max(axis=1, keepdims=True)
        ez = np.exp(z)
        sum_ez = ez.sum(axis=1)
        rows = np.flatnonzero(keep.reshape(-1))
        cls = t.reshape(-1)[rows]
        value = np.sum(np.log(sum_ez[rows]) - z[rows, cls]) * s
        grad = np.zeros_like(z)
        grad[rows] = ez[rows] / sum_ez[rows, None]
        grad[rows, cls] -= 1.0
        if rows.size:  # all ignored: NaN value, zero gradient (as torch)
            grad *= s
    return float(value), grad.reshape(x.shape).astype(x.dtype)
