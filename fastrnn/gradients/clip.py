"""Gradient clipping and weight constraints, in place.

Every function takes its tensors as one of:

* a layer — anything with a ``grads`` (and, where parameters are needed, ``params``) mapping of
  arrays: `fastrnn.RNN`/`LSTM`/`GRU`; a ``torch.nn.Module`` without ``grads`` contributes the
  ``.grad`` of each of its ``named_parameters()``;
* a dict name → array (NumPy arrays or CPU torch tensors, changed through shared-memory views;
  torch is never imported by this module);
* a single array, or a list/tuple of any of these (names get a ``[i].`` prefix).

float32 and float64 arrays are changed in their own dtype; norms are computed in float64 (scaled
by the largest magnitude, so they cannot overflow). Every function returns the total norm of
the gradients it was given, measured **before** clipping, as a Python float (2-norm unless
``norm_type`` says otherwise; `max_norm_` returns the largest slice norm of the weights).

Non-finite gradients are never silently turned into NaN or zero: the ``nonfinite`` policy of
the clipping functions is

* ``"raise"`` (default): ``FloatingPointError`` naming the first tensor with a NaN/Inf, its
  first bad index and value; nothing is changed;
* ``"skip"``: nothing is changed and the non-finite norm is returned, so the caller can skip the
  optimizer step (what mixed-precision loss scalers do);
* ``"zero"``: the non-finite *entries* of the offending tensors are set to zero, then everything
  is clipped using the norm of what remains; the returned norm is still the non-finite one
  measured before, so the event stays visible;
* ``"propagate"``: the framework behaviour — torch's ``clip_grad_norm_`` multiplies by a NaN
  (or zero) coefficient, value clipping maps ±Inf to ±clip_value and keeps NaN.

Examples
--------
>>> import numpy as np
>>> from fastrnn import clip
>>> grads = {"w": np.array([3.0, 4.0]), "b": np.array([0.0])}
>>> clip.clip_by_global_norm_(grads, 1.0)         # returns the norm before clipping
5.0
>>> grads["w"].round(6)                             # scaled by 1 / (5 + 1e-6)
array([0.6, 0.8])
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Mapping

import numpy as np

from ..core.validation import array_view, choice, is_torch_tensor, real

__all__ = ["clip_by_value_", "clip_by_norm_", "clip_by_global_norm_", "global_norm",
           "adaptive_clip_", "max_norm_"]

NONFINITE_POLICIES = ("raise", "skip", "zero", "propagate")
_EPS = 1e-6  # torch.nn.utils.clip_grad_norm_: coef = max_norm / (total + 1e-6)


# --------------------------------------------------------------------------- gathering tensors

def _entries(obj, where, kind, keep=None):
    """[(name, tensor)] of `kind` ("grads" or "params"); `keep(name)` filters what layers provide."""
    if isinstance(obj, (list, tuple)):
        out = []
        for i, item in enumerate(obj):
            for name, value in _entries(item, where, kind, keep):
                out.append((f"[{i}].{name}" if name else f"[{i}]", value))
        return out
    if isinstance(obj, Mapping):
        return list(obj.items())
    if isinstance(obj, np.ndarray) or is_torch_tensor(obj):
        return [("", obj)]
    own = getattr(obj, kind, None)
    if isinstance(own, Mapping):
        items = list(own.items())
    elif callable(getattr(obj, "named_parameters", None)):  # torch.nn.Module
        pairs = obj.named_parameters()
        items = [(n, p) for n, p in pairs] if kind == "params" else [(n, p.grad) for n, p in pairs
                                                                     if p.grad is not None]
    else:
        raise TypeError(f"{where}: expected a layer (with a .{kind} dict), a dict name -> array, an array, "
                        f"or a list of those; got {type(obj).__name__}")
    return [(n, v) for n, v in items if keep is None or keep(n)]


def _gather(obj, where, kind="grads", writable=True, keep=None):
    """[(name, ndarray view)] of `obj`'s tensors (see the module docstring)."""
    what = "gradient" if kind == "grads" else "parameter"
    return [(name, array_view(value, where, f"{what} {name or '(array)'}", writable))
            for name, value in _entries(obj, where, kind, keep)]


# --------------------------------------------------------------------------- norms

def _pnorm(x, p):
    """p-norm of all entries of x, in float64, scaled by max|x| (no overflow); NaN/Inf propagate."""
    a = np.abs(np.asarray(x), dtype=np.float64).ravel()
    if a.size == 0:
        return 0.0
    m = float(a.max())  # NaN when any entry is NaN
    if p == math.inf or m == 0 or not math.isfinite(m):
        return m
    a /= m
    if p == 2:
        return m * math.sqrt(float(np.dot(a, a)))
    return m * float(np.sum(a ** p)) ** (1.0 / p)


def _norms(x, axis):
    """2-norms over `axis` (None: all) with keepdims, float64, scaled by max|x|."""
    a = np.abs(x, dtype=np.float64)
    m = float(a.max()) if a.size else 0.0
    if m == 0 or not math.isfinite(m):
        m = 1.0  # nothing to scale (all zero), or NaN/Inf that must show in the norms anyway
    a /= m
    return m * np.sqrt(np.sum(a * a, axis=axis, keepdims=True))


def _unit_norms(x):
    """AGC unit norms: a row of a ≥ 2-D [out, in, ...] tensor is one unit, a vector or scalar one unit."""
    return _norms(x, None if x.ndim <= 1 else tuple(range(1, x.ndim)))


def _total(items, p):
    norms = [_pnorm(g, p) for _, g in items]
    return norms, _pnorm(norms, p)


# --------------------------------------------------------------------------- argument checks

def _norm_type(p, where):
    if isinstance(p, (bool, np.bool_)) or not isinstance(p, numbers.Real):
        raise TypeError(f"{where}: norm_type must be a number >= 1 or math.inf, got {type(p).__name__}")
    if not float(p) >= 1:
        raise ValueError(f"{where}: norm_type must be >= 1 (or math.inf), got {p}")
    return float(p)


def _limit(value, name, where):
    """A positive threshold; +inf allowed (never clips)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{where}: {name} must be a positive number, got {type(value).__name__}")
    if not float(value) > 0:
        raise ValueError(f"{where}: {name} must be positive, got {value}")
    return float(value)


def _apply_policy(items, norms, total, nonfinite, where):
    """Apply the non-finite policy; True when the caller should go on and clip."""
    if math.isfinite(total) or nonfinite == "propagate":
        return True
    if nonfinite == "skip":
        return False
    bad = [(name, g) for (name, g), n in zip(items, norms) if not math.isfinite(n)]
    if nonfinite == "raise":
        hint = ("pass nonfinite='skip' to leave the gradients alone and skip the step, 'zero' to zero the "
                "non-finite entries, or 'propagate' for torch's behaviour")
        for name, g in bad:
            idx = np.argwhere(~np.isfinite(g))
            if idx.size:
                at = tuple(int(i) for i in idx[0])
                raise FloatingPointError(f"{where}: gradient {name or '(array)'} has a non-finite value "
                                         f"{g[at]} at index {at}; {hint}")
        raise FloatingPointError(f"{where}: the gradient norm overflows float64 (no NaN/Inf entries)")
    for name, g in bad:  # "zero"
        g[~np.isfinite(g)] = 0
    return True


# --------------------------------------------------------------------------- clipping

def global_norm(grads, norm_type=2.0):
    """Total p-norm of all gradients, as if concatenated into one vector:
    ``‖g‖_p = (Σ_tensors Σ_i |g_i|^p)^(1/p)`` (max |g_i| for p = inf). Nothing is changed;
    NaN/Inf give a non-finite result.

    Examples
    --------
    >>> import numpy as np
    >>> global_norm([np.array([3.0]), np.array([4.0])])
    5.0
    >>> global_norm({"a": np.array([-3.0, 1.0])}, norm_type=np.inf)
    3.0
    """
    where = "global_norm"
    p = _norm_type(norm_type, where)
    return _total(_gather(grads, where, writable=False), p)[1]


def clip_by_value_(grads, clip_value, nonfinite="raise"):
    """Clamp every gradient entry to ``[−clip_value, clip_value]`` in place (Keras ``clipvalue``,
    ``torch.nn.utils.clip_grad_value_``).

    Returns the global 2-norm measured before clipping. ``nonfinite`` (see the module docstring):
    ``"propagate"`` is torch's behaviour (±Inf → ±clip_value, NaN stays).

    Reference: Mikolov, "Statistical Language Models Based on Neural Networks", PhD thesis, 2012
    (clipping gradient values in RNN training).

    Examples
    --------
    >>> import numpy as np
    >>> g = {"w": np.array([-3.0, 0.5, 4.0])}
    >>> clip_by_value_(g, 1.0), g["w"]
    (5.024937810560445, array([-1. ,  0.5,  1. ]))
    """
    where = "clip_by_value_"
    v = real(clip_value, "clip_value", where, nonnegative=True)
    choice(nonfinite, "nonfinite", NONFINITE_POLICIES, where)
    items = _gather(grads, where)
    norms, total = _total(items, 2.0)
    if _apply_policy(items, norms, total, nonfinite, where):
        for _, g in items:
            np.clip(g, -v, v, out=g)
    return total


def clip_by_norm_(grads, max_norm, nonfinite="raise"):
    """Clip each tensor separately to 2-norm ``max_norm``: ``g ← g · max_norm / max(‖g‖₂, max_norm)``
    (Keras ``clipnorm``, ``tf.clip_by_norm``). Tensors within the limit are unchanged.

    Returns the global 2-norm of all gradients measured before clipping.

    Reference: Pascanu, Mikolov & Bengio, "On the difficulty of training recurrent neural
    networks", ICML 2013.

    Examples
    --------
    >>> import numpy as np
    >>> g = [np.array([3.0, 4.0]), np.array([0.1])]
    >>> round(clip_by_norm_(g, 1.0), 4), g[0], g[1]
    (5.001, array([0.6, 0.8]), array([0.1]))
    """
    where = "clip_by_norm_"
    max_norm = _limit(max_norm, "max_norm", where)
    choice(nonfinite, "nonfinite", NONFINITE_POLICIES, where)
    items = _gather(grads, where)
    norms, total = _total(items, 2.0)
    if not _apply_policy(items, norms, total, nonfinite, where):
        return total
    if not math.isfinite(total):
        norms = [_pnorm(g, 2.0) for _, g in items]  # after "zero"; still non-finite with "propagate"
    with np.errstate(invalid="ignore"):
        for (_, g), n in zip(items, norms):
            scale = float(max_norm / np.maximum(n, max_norm))  # NaN norm -> NaN scale (propagate)
            if scale != 1.0:
                g *= scale
    return total


def clip_by_global_norm_(grads, max_norm, norm_type=2.0, nonfinite="raise"):
    """Rescale all gradients together when their global norm exceeds ``max_norm``:
    ``g ← g · min(1, max_norm / (‖g‖_p + 1e-6))`` — value and scaling of
    ``torch.nn.utils.clip_grad_norm_`` (any p ≥ 1, or ``math.inf`` for the max norm).

    Returns the global p-norm measured before clipping (non-finite ones too; see the module
    docstring for ``nonfinite``: ``"raise"``, ``"skip"``, ``"zero"``, ``"propagate"``).

    Reference: Pascanu, Mikolov & Bengio, "On the difficulty of training recurrent neural
    networks", ICML 2013.

    Examples
    --------
    >>> import numpy as np
    >>> g = {"w": np.array([3.0, np.nan])}
    >>> clip_by_global_norm_(g, 1.0, nonfinite="skip"), g["w"]   # untouched; skip this step
    (nan, array([ 3., nan]))
    >>> clip_by_global_norm_(g, 1.0, nonfinite="zero"), g["w"].round(6)   # NaN zeroed, rest clipped
    (nan, array([1., 0.]))
    """
    where = "clip_by_global_norm_"
    max_norm = _limit(max_norm, "max_norm", where)
    p = _norm_type(norm_type, where)
    choice(nonfinite, "nonfinite", NONFINITE_POLICIES, where)
    items = _gather(grads, where)
    norms, total = _total(items, p)
    if not _apply_policy(items, norms, total, nonfinite, where):
        return total
    norm = total if math.isfinite(total) or nonfinite == "propagate" else _total(items, p)[1]
    with np.errstate(invalid="ignore"):
        coef = float(np.minimum(max_norm / (norm + _EPS), 1.0))  # NaN stays NaN, like torch.clamp
        if coef != 1.0:
            for _, g in items:
                g *= coef
    return total


def adaptive_clip_(params, grads=None, clipping=0.01, eps=1e-3, nonfinite="raise"):
    """Adaptive gradient clipping (AGC), unit-wise: for each unit,
    ``g ← g · clipping·max(‖w‖, eps) / ‖g‖`` when ``‖g‖ > clipping·max(‖w‖, eps)``, else unchanged.

    A *unit* is one output unit: a row of a ≥ 2-D weight in PyTorch's ``[out, in, ...]`` layout
    (the norm runs over every axis but the first — one gate unit's incoming weights for
    ``W_ih``/``W_hh``); a 1-D tensor (a bias) or a scalar is a single unit (its whole norm).
    This is ``optax.adaptive_grad_clip`` and timm's ``adaptive_clip_grad`` for torch layouts
    (optax's JAX kernels are ``[in, out]``, so it reduces over axis 0 instead; the units are the
    same, except that optax makes any tensor that squeezes to ≤ 1-D — e.g. a weight with a single
    input — one unit, where this keeps one unit per row). The guard ``max(‖g‖, 1e-6)`` avoids a division by zero, as in optax.

    ``params``: a layer (or list of layers, or torch module) whose ``.params``/``.grads`` are used
    when ``grads`` is None, or a dict name → weight with ``grads`` a dict with the same names and
    shapes. Only the gradients change. Returns the global 2-norm of the gradients before clipping.

    Reference: Brock, De, Smith & Simonyan, "High-Performance Large-Scale Image Recognition
    Without Normalization", ICML 2021.

    Examples
    --------
    >>> import numpy as np
    >>> w = {"w": np.array([[1.0, 0.0], [0.0, 10.0]])}
    >>> g = {"w": np.array([[1.0, 0.0], [0.0, 0.01]])}
    >>> adaptive_clip_(w, g, clipping=0.1) > 1, g["w"]       # row 0 clipped to 0.1·1, row 1 kept
    (True, array([[0.1 , 0.  ],
           [0.  , 0.01]]))
    """
    where = "adaptive_clip_"
    clipping = real(clipping, "clipping", where, positive=True)
    eps = real(eps, "eps", where, nonnegative=True)
    choice(nonfinite, "nonfinite", NONFINITE_POLICIES, where)
    if grads is None and (isinstance(params, Mapping) or isinstance(params, np.ndarray) or is_torch_tensor(params)):
        raise TypeError(f"{where}: params is a dict or an array, so grads must be given too (a dict with the "
                        "same names, or an array); only a layer carries its own .grads")
    items = _gather(params if grads is None else grads, where)
    weights = dict(_gather(params, where, "params", writable=False))
    for name, g in items:
        if name not in weights:
            raise ValueError(f"{where}: gradient {name or '(array)'} has no matching parameter "
                             f"(parameter names: {sorted(weights)})")
        if weights[name].shape != g.shape:
            raise ValueError(f"{where}: gradient {name or '(array)'} has shape {g.shape} but its parameter "
                             f"has shape {weights[name].shape}")
    norms, total = _total(items, 2.0)
    if not _apply_policy(items, norms, total, nonfinite, where):
        return total
    with np.errstate(invalid="ignore", divide="ignore"):
        for name, g in items:
            limit = clipping * np.maximum(_unit_norms(weights[name]), eps)
            gn = _unit_norms(g)
            g *= np.where(gn < limit, 1.0, limit / np.maximum(gn, 1e-6))
    return total


def max_norm_(params, max_value, axis=-1):
    """Weight constraint (Keras ``MaxNorm``): rescale each slice along ``axis`` whose 2-norm exceeds
    ``max_value`` to norm ``max_value``: ``w ← w · min(1, max_value / ‖w‖)``.

    ``axis`` is the axis (or tuple of axes; None: the whole tensor) the norm runs over. The
    default −1 constrains each row of a ``[out, in]`` weight — each unit's incoming weights, which
    is Keras's ``MaxNorm(axis=0)`` on its ``[in, out]`` kernel — and a 1-D tensor as a whole.
    Unlike Keras (``w · clip(n, 0, max)/(1e-7 + n)``), slices within the limit are left exactly
    unchanged.

    ``params``: a layer (its weight matrices ``weight_*``; biases are not constrained, like Keras
    kernel/recurrent constraints), or a dict/list of arrays (all of them). Returns the largest
    slice norm measured before the change.

    Reference: Srivastava et al., "Dropout: A Simple Way to Prevent Neural Networks from
    Overfitting", JMLR 2014 (max-norm regularization).

    Examples
    --------
    >>> import numpy as np
    >>> w = np.array([[3.0, 4.0], [0.3, 0.4]])
    >>> max_norm_(w, 1.0), w
    (5.0, array([[0.6, 0.8],
           [0.3, 0.4]]))
    """
    where = "max_norm_"
    max_value = real(max_value, "max_value", where, positive=True)
    items = _gather(params, where, "params", keep=lambda name: name.startswith("weight"))
    largest = []
    for name, w in items:
        try:
            n = _norms(w, axis)
        except (ValueError, TypeError) as exc:  # numpy's AxisError is a ValueError
            raise ValueError(f"{where}: axis={axis!r} is not valid for parameter {name or '(array)'} "
                             f"of shape {w.shape}") from exc
        if n.size:
            largest.append(np.max(n))
        with np.errstate(divide="ignore", invalid="ignore"):
            w *= np.where(n > max_value, max_value / n, 1.0)
    return float(np.max(largest)) if largest else 0.0
