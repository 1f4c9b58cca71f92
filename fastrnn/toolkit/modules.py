"""Dense head, last-step selection and a sequential container, with the recurrent layers' conventions.

A *module* here is any object with ``forward(x) -> y`` (also ``__call__``), ``backward(grad_y) ->
grad_x``, live ``params`` / ``grads`` dicts (torch names; gradients accumulate), ``zero_grad()``,
``train(mode=True)`` / ``eval()``, ``state_dict()`` / ``load_state_dict(d, strict=True)`` — the
interface of `fastrnn.RNN` / `LSTM` / `GRU`, except that their forward returns
``(output, state)``; `Sequential` keeps the output and drops the state.

Where the head goes (what a PyTorch user writes, and the fastrnn equivalent):

- on every step — ``y = fc(out)`` with out ``[T, N, H]``:
  ``Sequential(LSTM(C, H), Linear(H, K))`` (`Linear` acts on the last axis, like torch).
- on the last valid step — ``y = fc(out[-1])``, or ``fc(h_n[-1])`` with packed sequences:
  ``Sequential(LSTM(C, H), LastStep(), Linear(H, K))``; `LastStep` picks ``out[len_n − 1, n]``
  for each sequence, so with ``lengths`` it is the state at each sequence's own last step.

Examples
--------
>>> import numpy as np, fastrnn
>>> model = fastrnn.Sequential(fastrnn.LSTM(2, 8, rng=0), fastrnn.LastStep(), fastrnn.Linear(8, 1, rng=0))
>>> x = np.zeros((5, 3, 2), np.float32)                                  # [T, N, C]
>>> model(x, lengths=[5, 2, 4]).shape
(3, 1)
>>> [name for name, _ in model.named_parameters()][:2] + ["..."] + list(model.params)[-2:]
['0.weight_ih_l0', '0.weight_hh_l0', '...', '2.weight', '2.bias']
"""
from __future__ import annotations

import math
import os
from collections import OrderedDict

import numpy as np

from ..core import validation as V
from ..core.layers import _RNNBase

__all__ = ["Linear", "LastStep", "Sequential"]


class _Module:
    """zero_grad / train / eval / state_dict / load_state_dict / __call__ of the recurrent layers,
    for modules that keep live ``params`` and ``grads`` dicts the same way."""

    zero_grad = _RNNBase.zero_grad
    train = _RNNBase.train
    eval = _RNNBase.eval
    state_dict = _RNNBase.state_dict
    load_state_dict = _RNNBase.load_state_dict
    _state = _RNNBase._state
    __call__ = _RNNBase.__call__

    def _values_rewritten(self):
        for m in getattr(self, "modules", ()):  # Sequential: its recurrent layers' plans
            if hasattr(m, "_values_rewritten"):
                m._values_rewritten()

    @property
    def buffers(self):
        """Arrays of the state that are not trained (none here)."""
        return OrderedDict()

    def _take_cache(self, where):
        """The cache of the last training forward, consumed (a second backward raises)."""
        if self._cache is None:
            raise RuntimeError(f"{where}: no training cache; call forward in train mode right before backward "
                               "(eval-mode forwards keep no cache, and backward consumes the cache)")
        cache, self._cache = self._cache, None
        return cache


class Linear(_Module):
    """Fully connected layer on the last axis: ``y = x Wᵀ + b`` (torch.nn.Linear).

    ``weight`` is ``[out_features, in_features]``, ``bias`` ``[out_features]``; both start at
    torch's default ``U(−1/√in_features, 1/√in_features)`` (He et al. 2015's kaiming_uniform with
    a = √5, as torch.nn.Linear). ``x`` is ``[..., in_features]`` (any leading axes: ``[T, N, H]``
    applies the head on every step); ``backward(grad_y)`` returns ``grad_x = grad_y W`` and
    accumulates ``grad_W += Σ grad_yᵀ x`` and ``grad_b += Σ grad_y`` over the leading axes.

    Examples
    --------
    >>> import numpy as np, fastrnn
    >>> fc = fastrnn.Linear(3, 2, rng=0)
    >>> fc.params["weight"][...] = [[1, 0, 0], [0, 1, 1]]; fc.params["bias"][...] = [0.5, 0]
    >>> fc(np.array([[1, 2, 3]], np.float32))
    array([[1.5, 5. ]], dtype=float32)
    >>> fc.backward(np.ones((1, 2), np.float32)), fc.grads["weight"]
    (array([[1., 1., 1.]], dtype=float32), array([[1., 2., 3.],
           [1., 2., 3.]], dtype=float32))
    """

    def __init__(self, in_features, out_features, *, bias=True, dtype=np.float32, rng=None):
        where = type(self).__name__
        self.in_features = V.check_positive_int(in_features, "in_features", where)
        self.out_features = V.check_positive_int(out_features, "out_features", where)
        self.bias = bool(bias)
        self.dtype = V.as_dtype(dtype, f"{where}: dtype")
        self.rng = V.generator(rng, type(self).__name__)
        self.training = True
        self._cache = None
        shapes = [("weight", (self.out_features, self.in_features))] + ([("bias", (self.out_features,))] if bias else [])
        self.params = OrderedDict((k, np.empty(s, self.dtype)) for k, s in shapes)
        self.grads = OrderedDict((k, np.zeros(s, self.dtype)) for k, s in shapes)
        self.reset_parameters()

    def reset_parameters(self, rng=None):
        """torch's default: weight and bias ~ U(−1/√in_features, 1/√in_features)."""
        gen = self.rng if rng is None else V.generator(rng, f"{type(self).__name__}.reset_parameters")
        k = 1.0 / math.sqrt(self.in_features)
        for w in self.params.values():
            w[...] = gen.uniform(-k, k, size=w.shape)
        return self

    def forward(self, x):
        """``x [..., in_features]`` → ``y [..., out_features]``."""
        where = f"{type(self).__name__}.forward"
        self._cache = None
        x = V.float_array(x, self.dtype, where, "x")
        if x.ndim == 0 or x.shape[-1] != self.in_features:
            raise ValueError(f"{where}: x has shape {tuple(x.shape)}, expected (..., in_features={self.in_features})")
        with np.errstate(all="ignore"):  # NaN/Inf propagate through the math without warnings
            y = np.matmul(x, self.params["weight"].T)
            if self.bias:
                y += self.params["bias"]
        if self.training:
            self._cache = x
        return y

    def backward(self, grad_y):
        """Returns ``grad_x``; ``grads["weight"]`` and ``grads["bias"]`` accumulate."""
        where = f"{type(self).__name__}.backward"
        x = self._take_cache(where)
        g = V.float_array(grad_y, self.dtype, where, "grad_y")
        V.expect_shape(g, x.shape[:-1] + (self.out_features,), where, "grad_y",
                       [f"dim{i}" for i in range(x.ndim - 1)] + ["out_features"])
        g2 = g.reshape(-1, self.out_features)
        with np.errstate(all="ignore"):
            self.grads["weight"] += g2.T @ x.reshape(-1, self.in_features)
            if self.bias:
                self.grads["bias"] += g2.sum(axis=0)
            return np.matmul(g, self.params["weight"])

    def __repr__(self):
        return (f"Linear(in_features={self.in_features}, out_features={self.out_features}"
                f"{'' if self.bias else ', bias=False'}, dtype={self.dtype})")


class LastStep(_Module):
    """Select each sequence's last valid step: ``y[n] = x[lengths[n] − 1, n]`` (``x[-1]`` without lengths).

    ``x`` is ``[T, N, F]`` (``[N, T, F]`` with ``batch_first=True``; ``[T, F]`` unbatched) and
    ``y`` is ``[N, F]``. With a unidirectional recurrent layer this equals its top-layer ``h_n``
    — the PyTorch idiom ``fc(h_n[-1])`` — also with ``lengths``. For a bidirectional layer the
    backward half of ``x[len − 1]`` has seen only the last step; use ``h_n`` for that case.
    ``backward(grad_y)`` scatters ``grad_y`` back to those steps (zeros elsewhere). No parameters.

    Examples
    --------
    >>> import numpy as np, fastrnn
    >>> x = np.arange(12.0).reshape(3, 2, 2)            # T=3, N=2, F=2
    >>> last = fastrnn.LastStep()
    >>> last(x, lengths=[3, 1])
    array([[8., 9.],
           [2., 3.]])
    >>> last.backward(np.ones((2, 2)))[:, 1]            # gradient reaches step 0 of sequence 1 only
    array([[1., 1.],
           [0., 0.],
           [0., 0.]])
    """

    def __init__(self, batch_first=False):
        self.batch_first = bool(batch_first)
        self.training = True
        self._cache = None
        self.params = OrderedDict()
        self.grads = OrderedDict()

    def forward(self, x, lengths=None):
        """``x [T, N, F]`` (or ``[N, T, F]``, ``[T, F]``) → ``[N, F]`` (``[F]`` unbatched)."""
        where = f"{type(self).__name__}.forward"
        self._cache = None
        x = V.to_numpy(x)
        V.as_dtype(x.dtype, f"{where}: x dtype")
        if x.ndim not in (2, 3):
            raise ValueError(f"{where}: x has shape {tuple(x.shape)}, expected "
                             f"({'N, T' if self.batch_first else 'T, N'}, F) or unbatched (T, F)")
        if x.ndim == 2:
            if lengths is not None:
                raise ValueError(f"{where}: lengths is not allowed with unbatched input of shape {tuple(x.shape)}")
            if x.shape[0] == 0:
                raise ValueError(f"{where}: x has shape {tuple(x.shape)}; T must be positive")
            index = x.shape[0] - 1
            y = x[index].copy()  # a copy: the caller's array is never reachable through y
        else:
            T, N = (x.shape[1], x.shape[0]) if self.batch_first else x.shape[:2]
            if T == 0 or N == 0:
                raise ValueError(f"{where}: x has shape {tuple(x.shape)}; T and N must be positive")
            last = np.full(N, T - 1) if lengths is None else V.lengths_array(lengths, N, T, where) - 1
            index = (np.arange(N), last) if self.batch_first else (last, np.arange(N))
            y = x[index]  # fancy indexing copies
        if self.training:
            self._cache = (x.shape, x.dtype, index, y.shape)
        return y

    def backward(self, grad_y):
        """Returns ``grad_x`` (the shape of the last forward's ``x``), zero except at the selected steps."""
        where = f"{type(self).__name__}.backward"
        shape, dtype, index, out_shape = self._take_cache(where)
        g = V.float_array(grad_y, dtype, where, "grad_y")
        V.expect_shape(g, out_shape, where, "grad_y", ("N", "F")[-len(out_shape):])
        grad_x = np.zeros(shape, dtype)
        grad_x[index] = g
        return grad_x

    def __repr__(self):
        return f"LastStep({'batch_first=True' if self.batch_first else ''})"


class Sequential(_Module):
    """A stack of modules applied in order (torch.nn.Sequential, for recurrent models).

    ``forward(x, lengths=None)`` feeds each module's output to the next; recurrent layers
    (`fastrnn.RNN` / `LSTM` / `GRU`) get ``lengths`` and pass on their output sequence (their
    state is dropped), `LastStep` gets ``lengths``, other modules are called as ``m(x)``.
    ``backward(grad)`` runs the modules' backward in reverse and returns the gradient of the input.
    Parameters are named ``"<index>.<name>"`` as in torch (``"0.weight_ih_l0"``, ``"2.weight"``);
    ``params`` / ``grads`` are dicts of the modules' live arrays, so an optimizer built on
    the model updates the modules. ``save(path)`` / ``load(path)`` store the state dict in a
    NumPy ``.npz`` file.

    Examples
    --------
    >>> import numpy as np, fastrnn
    >>> model = fastrnn.Sequential(fastrnn.GRU(1, 4, rng=0), fastrnn.Linear(4, 1, rng=0))
    >>> x = np.ones((6, 2, 1), np.float32)
    >>> y = model(x)                                      # head on every step: [T, N, 1]
    >>> grad_x = model.backward(np.ones_like(y))
    >>> y.shape, grad_x.shape, model.grads["1.weight"].shape
    ((6, 2, 1), (6, 2, 1), (1, 4))
    """

    def __init__(self, *modules):
        where = type(self).__name__
        if not modules:
            raise ValueError(f"{where}: needs at least one module")
        for i, m in enumerate(modules):
            missing = [a for a in ("forward", "backward", "params", "grads", "train", "zero_grad") if not hasattr(m, a)]
            if missing:
                raise TypeError(f"{where}: module {i} ({type(m).__name__}) lacks {missing}; expected a fastrnn "
                                "layer, Linear, LastStep or an object with the same interface")
        layouts = {bool(m.batch_first) for m in modules if hasattr(m, "batch_first")}
        if len(layouts) > 1:
            raise ValueError(f"{where}: modules disagree on batch_first ({[getattr(m, 'batch_first', None) for m in modules]}); "
                             "give every recurrent layer and LastStep the same layout")
        self.modules = list(modules)
        self.train()

    @property
    def params(self):
        """``OrderedDict`` name → live parameter array of every module (``"0.weight_ih_l0"``, ...)."""
        return OrderedDict((f"{i}.{k}", v) for i, m in enumerate(self.modules) for k, v in m.params.items())

    @property
    def grads(self):
        """``OrderedDict`` name → live gradient array, same keys as `params`."""
        return OrderedDict((f"{i}.{k}", v) for i, m in enumerate(self.modules) for k, v in m.grads.items())

    @property
    def buffers(self):
        """``OrderedDict`` name → live buffer of every module (Li-GRU batch-norm statistics), named like `params`."""
        return OrderedDict((f"{i}.{k}", v) for i, m in enumerate(self.modules) for k, v in getattr(m, "buffers", {}).items())

    def parameters(self):
        """List of the parameter arrays (live), in `params` order."""
        return list(self.params.values())

    def named_parameters(self):
        """List of ``(name, array)`` pairs, in `params` order."""
        return list(self.params.items())

    def train(self, mode=True):
        self.training = bool(mode)
        for m in self.modules:
            m.train(mode)
        return self

    def forward(self, x, lengths=None):
        """Run every module in order; returns the last module's output."""
        for m in self.modules:
            if isinstance(m, _RNNBase):
                x = m(x, lengths=lengths)[0]
            elif isinstance(m, LastStep):
                x = m(x, lengths)
            else:
                x = m(x)
        return x

    def backward(self, grad):
        """Backward through every module in reverse order; returns the gradient of the input."""
        for m in reversed(self.modules):
            grad = m.backward(grad)
            if isinstance(m, _RNNBase):
                grad = grad[0]
        return grad

    def save(self, path):
        """Write the state dict to ``path`` as ``.npz`` (NumPy appends ``.npz`` if missing).
        Returns the path written."""
        path = os.fspath(path)
        if not path.endswith(".npz"):
            path += ".npz"
        np.savez(path, **self.state_dict())
        return path

    def load(self, path, strict=True):
        """Load parameters saved by `save` (``.npz``) into this model (same architecture); see
        `load_state_dict` for ``strict``. Returns ``(missing_keys, unexpected_keys)``."""
        with np.load(os.fspath(path), allow_pickle=False) as f:
            return self.load_state_dict({k: f[k] for k in f.files}, strict=strict)

    def __getitem__(self, i):
        return self.modules[i]

    def __len__(self):
        return len(self.modules)

    def __iter__(self):
        return iter(self.modules)

    def __repr__(self):
        inner = "".join(f"\n  ({i}): {m!r}" for i, m in enumerate(self.modules))
        return f"Sequential({inner}\n)"
