"""Optimizers and learning-rate schedules with torch.optim's update formulas, no torch needed.

Every ``step()`` updates all parameters in place through one call into C++ (csrc/optim): the
lists of parameter, gradient and state arrays are handed to the core once, when the optimizer is
built, and each step is a single GIL-free loop over tensors and elements. The update formulas
and their order of operations are torch.optim's (single-tensor path), so N steps on the same
gradients give the same parameters as torch.optim up to rounding.

Parameters are given as a module (anything with ``.params`` and ``.grads`` dicts of the same
keys: `fastrnn.Sequential`, `fastrnn.Linear`, `fastrnn.LSTM`, ...), a dict
``{name: (param, grad)}`` or a list of ``(param, grad)`` pairs. Parameters must be writable
C-contiguous float32 or float64 arrays; each gradient has its parameter's shape and dtype. The
optimizer keeps these arrays: replace their contents in place (``w[...] = ...``), not the arrays.

Regularization (every optimizer):

- **L2** ``weight_decay=λ`` adds ``λ·w`` to the gradient (torch's ``weight_decay``; in `AdamW`
  it is decoupled: ``w ← w·(1 − lr·λ)`` before the Adam update, Loshchilov & Hutter 2019).
- **L1** ``l1=λ₁`` adds ``λ₁·sign(w)`` to the gradient (subgradient of ``λ₁‖w‖₁``, sign(0) = 0);
  it is not a torch option, so torch agrees with fastrnn only for ``l1=0``.

Gradients are never modified by ``step()``; both terms act on a private copy.

Examples
--------
>>> import numpy as np, fastrnn
>>> w = np.array([1.0, -2.0]); g = np.array([0.5, 0.5])
>>> opt = fastrnn.optim.SGD([(w, g)], lr=0.1, momentum=0.9)
>>> opt.step(); w
array([ 0.95, -2.05])
>>> opt.step(); w                         # buffer = 0.9·0.5 + 0.5 = 0.95
array([ 0.855, -2.145])
"""
from __future__ import annotations

import math
import numbers
from collections import OrderedDict

import numpy as np

from .. import _C
from ..core import validation as V

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "RMSprop", "Adagrad", "LRScheduler", "StepLR",
           "CosineAnnealingLR"]


def _collect(params, where):
    """(names, params, grads) from a module, a {name: (param, grad)} dict or (param, grad) pairs."""
    if hasattr(params, "params") and hasattr(params, "grads"):
        p, g = params.params, params.grads
        if list(p) != list(g):
            raise ValueError(f"{where}: the module's params and grads have different keys")
        pairs = [(k, p[k], g[k]) for k in p]
    elif isinstance(params, dict):
        pairs = [(str(k), *_pair(v, k, where)) for k, v in params.items()]
    else:
        try:
            items = list(params)
        except TypeError:
            raise TypeError(f"{where}: params must be a module with .params/.grads, a dict name -> (param, grad) "
                            f"or a list of (param, grad) pairs; got {type(params).__name__}") from None
        pairs = [(str(i), *_pair(v, i, where)) for i, v in enumerate(items)]
    if not pairs:
        raise ValueError(f"{where}: got an empty parameter list")
    for name, p, g in pairs:
        for what, a in (("parameter", p), ("gradient", g)):
            if not isinstance(a, np.ndarray):
                raise TypeError(f"{where}: {what} {name!r} is a {type(a).__name__}, expected a numpy.ndarray")
        if p.dtype not in V.SUPPORTED_DTYPES:
            raise TypeError(f"{where}: parameter {name!r} has dtype {p.dtype}, expected float32 or float64")
        if g.dtype != p.dtype or g.shape != p.shape:
            raise ValueError(f"{where}: gradient {name!r} has shape {g.shape} and dtype {g.dtype}, expected "
                             f"its parameter's shape {p.shape} and dtype {p.dtype}")
        for what, a in (("parameter", p), ("gradient", g)):
            if not a.flags.c_contiguous:
                raise ValueError(f"{where}: {what} {name!r} is not C-contiguous; the optimizer updates arrays in "
                                 "place, so pass the model's own (contiguous) arrays")
        if not p.flags.writeable:
            raise ValueError(f"{where}: parameter {name!r} is read-only")
    names, params, grads = [n for n, _, _ in pairs], [p for _, p, _ in pairs], [g for _, _, g in pairs]
    # The C++ loops assume distinct buffers: a parameter listed twice, overlapping another
    # parameter or any gradient would be updated twice or change a gradient while it is read.
    for i, p in enumerate(params):
        others = [(f"parameter {names[j]!r}", params[j]) for j in range(i)]
        others += [(f"gradient {names[j]!r}", g) for j, g in enumerate(grads)]
        for label, a in others:
            if np.may_share_memory(p, a):
                raise ValueError(f"{where}: parameter {names[i]!r} shares memory with {label}")
    return names, params, grads


def _pair(v, name, where):
    if not (isinstance(v, (tuple, list)) and len(v) == 2):
        raise TypeError(f"{where}: entry {name!r} must be a (param, grad) pair, got {type(v).__name__}")
    return v[0], v[1]


def _real(value, name, where, low=0.0, high=math.inf, high_open=False):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{where}: {name} must be a real number, got {type(value).__name__}")
    v = float(value)
    ok = low <= v < high if high_open else low <= v <= high
    if not ok:
        interval = f"[{low}, {high})" if high_open else f"[{low}, {high}]"
        raise ValueError(f"{where}: {name} = {value} is out of range; expected a value in {interval}")
    return v


class Optimizer:
    """Base class: parameters, hyperparameters (``param_groups[0]``), state buffers, checkpoints.

    Subclasses name their state buffers in `_buffers(group)` and call the C++ update in `_update`.
    ``param_groups`` is a one-element list (one group: all parameters share the hyperparameters),
    kept for torch-style code such as ``opt.param_groups[0]["lr"] = 0.01``; ``opt.lr`` is the
    same value. The step counter is ``opt.step_count``.
    """

    def __init__(self, params, defaults):
        where = type(self).__name__
        self._names, self._params, self._grads = _collect(params, where)
        self.param_groups = [dict(defaults)]
        self._check(self.param_groups[0])
        self.step_count = 0
        self._buffer_names = self._buffers(self.param_groups[0])
        self.state = OrderedDict()
        for name, p in zip(self._names, self._params):
            self.state[name] = OrderedDict((b, self._initial_buffer(b, p)) for b in self._buffer_names if b)
        lists = [None if not b else [self.state[n][b] for n in self._names] for b in self._buffer_names]
        self._tensors = _C.OptimTensors(self._params, self._grads, lists)

    # -- subclass interface
    def _buffers(self, group):
        """Names of state buffers 0, 1, 2 for the C++ kernel (None where unused)."""
        raise NotImplementedError

    def _initial_buffer(self, name, p):
        return np.zeros_like(p)

    def _check(self, group):
        raise NotImplementedError

    def _update(self, group):
        raise NotImplementedError

    # -- public API
    @property
    def lr(self):
        """The learning rate (``param_groups[0]["lr"]``); assignable, which is what schedulers do."""
        return self.param_groups[0]["lr"]

    @lr.setter
    def lr(self, value):
        self.param_groups[0]["lr"] = _real(value, "lr", f"{type(self).__name__}.lr")

    @property
    def names(self):
        """Parameter names, in update order."""
        return list(self._names)

    def step(self):
        """Update every parameter in place from its current gradient (one C++ call)."""
        group = self.param_groups[0]
        self._check(group)  # hyperparameters may have been edited since the last step
        self._update(group)
        self.step_count += 1

    def zero_grad(self):
        """Set every gradient to zero (in place)."""
        for g in self._grads:
            g.fill(0)

    def state_dict(self):
        """Copies of everything needed to resume: ``{"step": int, "param_groups": [...], "state": {...}}``.

        ``state`` maps parameter name -> buffer name -> array. Loading it into an optimizer built
        the same way makes the following steps identical to an uninterrupted run.
        """
        return {"step": self.step_count,
                "param_groups": [dict(g) for g in self.param_groups],
                "state": OrderedDict((n, OrderedDict((b, a.copy()) for b, a in s.items()))
                                     for n, s in self.state.items())}

    def load_state_dict(self, state_dict):
        """Restore a `state_dict` (buffers are copied into the existing arrays). Everything is
        checked before anything changes; mismatches raise KeyError / ValueError naming the entry."""
        where = f"{type(self).__name__}.load_state_dict"
        try:
            step, groups, state = state_dict["step"], state_dict["param_groups"], state_dict["state"]
        except (KeyError, TypeError):
            raise KeyError(f"{where}: expected a dict with keys 'step', 'param_groups' and 'state'") from None
        if len(groups) != 1 or set(groups[0]) != set(self.param_groups[0]):
            raise KeyError(f"{where}: param_groups has keys {[sorted(g) for g in groups]}, expected one group "
                           f"with keys {sorted(self.param_groups[0])}")
        if list(state) != list(self.state):
            raise KeyError(f"{where}: state has parameters {list(state)}, expected {list(self.state)}")
        new = {}
        for n, bufs in self.state.items():
            if set(state[n]) != set(bufs):
                raise KeyError(f"{where}: state[{n!r}] has buffers {sorted(state[n])}, expected {sorted(bufs)}")
            for b, a in bufs.items():
                v = V.to_numpy(state[n][b])
                if v.shape != a.shape:
                    raise ValueError(f"{where}: state[{n!r}][{b!r}] has shape {v.shape}, expected {a.shape}")
                new[n, b] = v
        group = dict(groups[0])
        self._check(group)
        if self._buffers(group) != self._buffer_names:
            raise ValueError(f"{where}: the saved hyperparameters need buffers {self._buffers(group)}, this "
                             f"optimizer has {self._buffer_names}")
        for (n, b), v in new.items():
            self.state[n][b][...] = v
        self.param_groups[0] = group
        self.step_count = int(step)

    def __repr__(self):
        opts = ", ".join(f"{k}={v!r}" for k, v in self.param_groups[0].items())
        return f"{type(self).__name__}({len(self._names)} tensors, {opts})"


class SGD(Optimizer):
    """Stochastic gradient descent with momentum (torch.optim.SGD).

    With ``g = ∇w + weight_decay·w + l1·sign(w)``::

        b ← g                                 (first step)
        b ← momentum·b + (1 − dampening)·g    (later steps)
        d = g + momentum·b if nesterov else b        (d = g when momentum = 0)
        w ← w − lr·d

    Nesterov momentum as in Sutskever et al. (2013), in torch's formulation. State buffer:
    ``momentum_buffer`` (when momentum ≠ 0).

    Examples
    --------
    >>> import numpy as np, fastrnn
    >>> w = np.array([1.0]); g = np.array([1.0])
    >>> opt = fastrnn.optim.SGD([(w, g)], lr=0.1, weight_decay=0.5)
    >>> opt.step(); w                      # 1 − 0.1·(1 + 0.5·1)
    array([0.85])
    """

    def __init__(self, params, lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False, *,
                 l1=0.0):
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                                      nesterov=nesterov, l1=l1))

    def _check(self, g):
        w = type(self).__name__
        for k in ("lr", "momentum", "dampening", "weight_decay", "l1"):
            g[k] = _real(g[k], k, w)
        g["nesterov"] = bool(g["nesterov"])
        if g["nesterov"] and (g["momentum"] <= 0 or g["dampening"] != 0):
            raise ValueError(f"{w}: nesterov=True requires momentum > 0 and dampening = 0, got momentum="
                             f"{g['momentum']}, dampening={g['dampening']}")

    def _buffers(self, g):
        return ("momentum_buffer" if g["momentum"] != 0 else None,)

    def _update(self, g):
        _C.optim_sgd(self._tensors, lr=g["lr"], momentum=g["momentum"], dampening=g["dampening"],
                     nesterov=g["nesterov"], first_step=self.step_count == 0, weight_decay=g["weight_decay"],
                     l1=g["l1"])


class Adam(Optimizer):
    """Adam (Kingma & Ba 2015), torch.optim.Adam's formulation, optionally AMSGrad (Reddi et al. 2018).

    With ``g = ∇w + weight_decay·w + l1·sign(w)`` and step t = 1, 2, ...::

        m ← m + (1 − β1)·(g − m)            v ← β2·v + (1 − β2)·g²
        v̂ = max(v̂, v) if amsgrad else v
        w ← w − lr/(1 − β1ᵗ) · m / (sqrt(v̂)/sqrt(1 − β2ᵗ) + eps)

    State buffers: ``exp_avg`` (m), ``exp_avg_sq`` (v), ``max_exp_avg_sq`` (amsgrad).

    Examples
    --------
    >>> import numpy as np, fastrnn
    >>> w = np.array([1.0, 1.0]); g = np.array([3.0, -0.01])
    >>> opt = fastrnn.optim.Adam([(w, g)], lr=0.1)
    >>> opt.step(); np.round(w, 6)         # the first step moves every weight by ≈ lr
    array([0.9, 1.1])
    """

    _decoupled = False

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False, *,
                 l1=0.0):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                                      l1=l1))

    def _check(self, g):
        w = type(self).__name__
        for k in ("lr", "eps", "weight_decay", "l1"):
            g[k] = _real(g[k], k, w)
        b = g["betas"]
        if not (isinstance(b, (tuple, list)) and len(b) == 2):
            raise TypeError(f"{w}: betas must be a pair (beta1, beta2), got {b!r}")
        g["betas"] = (_real(b[0], "betas[0]", w, 0.0, 1.0, True), _real(b[1], "betas[1]", w, 0.0, 1.0, True))
        g["amsgrad"] = bool(g["amsgrad"])

    def _buffers(self, g):
        return ("exp_avg", "exp_avg_sq", "max_exp_avg_sq" if g["amsgrad"] else None)

    def _update(self, g):
        _C.optim_adam(self._tensors, lr=g["lr"], beta1=g["betas"][0], beta2=g["betas"][1], eps=g["eps"],
                      amsgrad=g["amsgrad"], decoupled=self._decoupled, step=self.step_count + 1,
                      weight_decay=g["weight_decay"], l1=g["l1"])


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter 2019; torch.optim.AdamW).

    ``w ← w·(1 − lr·weight_decay)``, then the `Adam` update with ``g = ∇w + l1·sign(w)``.
    Default ``weight_decay=1e-2`` as in torch.

    Examples
    --------
    >>> import numpy as np, fastrnn
    >>> w = np.array([2.0]); g = np.array([0.0])
    >>> opt = fastrnn.optim.AdamW([(w, g)], lr=0.1, weight_decay=0.5)
    >>> opt.step(); w                      # zero gradient: only the decay, 2·(1 − 0.05)
    array([1.9])
    """

    _decoupled = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False, *,
                 l1=0.0):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad, l1=l1)


class RMSprop(Optimizer):
    """RMSprop (Tieleman & Hinton 2012; centered variant from Graves 2013), torch.optim.RMSprop.

    With ``g = ∇w + weight_decay·w + l1·sign(w)``::

        s ← α·s + (1 − α)·g²
        ḡ ← ḡ + (1 − α)·(g − ḡ)                          (centered)
        a = sqrt(s − ḡ²) if centered else sqrt(s);   a ← a + eps
        b ← momentum·b + g/a;  w ← w − lr·b              (momentum > 0)
        w ← w − lr·g/a                                   (momentum = 0)

    State buffers: ``square_avg`` (s), ``momentum_buffer`` (b), ``grad_avg`` (ḡ).

    Examples
    --------
    >>> import numpy as np, fastrnn
    >>> w = np.array([1.0]); g = np.array([2.0])
    >>> opt = fastrnn.optim.RMSprop([(w, g)], lr=0.01, alpha=0.75, eps=0.0)
    >>> opt.step(); w                      # s = 0.25·4 = 1, w = 1 − 0.01·2/1
    array([0.98])
    """

    def __init__(self, params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0, centered=False, *,
                 l1=0.0):
        super().__init__(params, dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay, momentum=momentum,
                                      centered=centered, l1=l1))

    def _check(self, g):
        w = type(self).__name__
        for k in ("lr", "alpha", "eps", "weight_decay", "momentum", "l1"):
            g[k] = _real(g[k], k, w)
        g["centered"] = bool(g["centered"])

    def _buffers(self, g):
        return ("square_avg", "momentum_buffer" if g["momentum"] > 0 else None,
                "grad_avg" if g["centered"] else None)

    def _update(self, g):
        _C.optim_rmsprop(self._tensors, lr=g["lr"], alpha=g["alpha"], eps=g["eps"], momentum=g["momentum"],
                         centered=g["centered"], weight_decay=g["weight_decay"], l1=g["l1"])


class Adagrad(Optimizer):
    """Adagrad (Duchi, Hazan & Singer 2011), torch.optim.Adagrad.

    With ``g = ∇w + weight_decay·w + l1·sign(w)`` and step t = 1, 2, ...::

        s ← s + g²     (s starts at initial_accumulator_value)
        w ← w − lr/(1 + (t − 1)·lr_decay) · g / (sqrt(s) + eps)

    State buffer: ``sum`` (s).

    Examples
    --------
    >>> import numpy as np, fastrnn
    >>> w = np.array([1.0]); g = np.array([2.0])
    >>> opt = fastrnn.optim.Adagrad([(w, g)], lr=0.5, eps=0.0)
    >>> opt.step(); w                      # s = 4, w = 1 − 0.5·2/2
    array([0.5])
    """

    def __init__(self, params, lr=1e-2, lr_decay=0.0, weight_decay=0.0, initial_accumulator_value=0.0, eps=1e-10,
                 *, l1=0.0):
        self._initial = _real(initial_accumulator_value, "initial_accumulator_value", type(self).__name__)
        super().__init__(params, dict(lr=lr, lr_decay=lr_decay, weight_decay=weight_decay, eps=eps, l1=l1,
                                      initial_accumulator_value=self._initial))

    def _check(self, g):
        w = type(self).__name__
        for k in ("lr", "lr_decay", "weight_decay", "eps", "l1", "initial_accumulator_value"):
            g[k] = _real(g[k], k, w)

    def _buffers(self, g):
        return ("sum",)

    def _initial_buffer(self, name, p):
        return np.full_like(p, self._initial)

    def _update(self, g):
        _C.optim_adagrad(self._tensors, lr=g["lr"], lr_decay=g["lr_decay"], eps=g["eps"], step=self.step_count + 1,
                         weight_decay=g["weight_decay"], l1=g["l1"])


class LRScheduler:
    """Base of the learning-rate schedules: call ``step()`` once per epoch, after the optimizer's
    steps (torch's convention). Each step sets ``optimizer.lr`` with torch's recursive formula,
    so a learning rate edited by hand between steps is taken into account as in torch."""

    def __init__(self, optimizer):
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"{type(self).__name__}: optimizer must be a fastrnn.optim optimizer, got "
                            f"{type(optimizer).__name__}")
        self.optimizer = optimizer
        self.base_lr = optimizer.lr
        self.last_epoch = 0
        self._last_lr = optimizer.lr

    def _next_lr(self, lr):
        raise NotImplementedError

    def step(self):
        """Advance one epoch and set the optimizer's learning rate."""
        self.last_epoch += 1
        self.optimizer.lr = self._next_lr(self.optimizer.lr)
        self._last_lr = self.optimizer.lr

    def get_last_lr(self):
        """The learning rate set by the last `step` (as a one-element list, like torch)."""
        return [self._last_lr]

    def state_dict(self):
        """``{"base_lr", "last_epoch", "last_lr"}``, for checkpoints."""
        return {"base_lr": self.base_lr, "last_epoch": self.last_epoch, "last_lr": self._last_lr}

    def load_state_dict(self, state_dict):
        """Restore `state_dict` (the current learning rate itself is restored with the optimizer's
        state dict, as in torch)."""
        self.base_lr = float(state_dict["base_lr"])
        self.last_epoch = int(state_dict["last_epoch"])
        self._last_lr = float(state_dict["last_lr"])


class StepLR(LRScheduler):
    """Multiply the learning rate by ``gamma`` every ``step_size`` epochs (torch StepLR):
    ``lr_e = base_lr · gamma^⌊e / step_size⌋``.

    Examples
    --------
    >>> import numpy as np, fastrnn
    >>> opt = fastrnn.optim.SGD([(np.zeros(1), np.zeros(1))], lr=1.0)
    >>> sched = fastrnn.optim.StepLR(opt, step_size=2, gamma=0.5)
    >>> [(sched.step(), opt.lr)[1] for _ in range(5)]
    [1.0, 0.5, 0.5, 0.25, 0.25]
    """

    def __init__(self, optimizer, step_size, gamma=0.1):
        self.step_size = V.check_positive_int(step_size, "step_size", type(self).__name__)
        self.gamma = _real(gamma, "gamma", type(self).__name__)
        super().__init__(optimizer)

    def _next_lr(self, lr):
        return lr * self.gamma if self.last_epoch % self.step_size == 0 else lr


class CosineAnnealingLR(LRScheduler):
    """Cosine annealing (Loshchilov & Hutter 2017, SGDR without restarts; torch CosineAnnealingLR):
    ``lr_e = eta_min + (base_lr − eta_min)·(1 + cos(π·e/T_max))/2``, computed with torch's
    recursive form (past ``T_max`` the rate rises again, as in torch).

    Examples
    --------
    >>> import numpy as np, fastrnn
    >>> opt = fastrnn.optim.SGD([(np.zeros(1), np.zeros(1))], lr=1.0)
    >>> sched = fastrnn.optim.CosineAnnealingLR(opt, T_max=4)
    >>> [round((sched.step(), opt.lr)[1], 4) for _ in range(4)]
    [0.8536, 0.5, 0.1464, 0.0]
    """

    def __init__(self, optimizer, T_max, eta_min=0.0):
        self.T_max = V.check_positive_int(T_max, "T_max", type(self).__name__)
        self.eta_min = _real(eta_min, "eta_min", type(self).__name__)
        super().__init__(optimizer)

    def _next_lr(self, lr):
        e, T, eta = self.last_epoch, self.T_max, self.eta_min
        if (e - 1 - T) % (2 * T) == 0:
            return lr + (self.base_lr - eta) * (1 - math.cos(math.pi / T)) / 2
        return (1 + math.cos(math.pi * e / T)) / (1 + math.cos(math.pi * (e - 1) / T)) * (lr - eta) + eta
