"""NumPy recurrent layers with PyTorch's constructor, parameter names and semantics."""
from __future__ import annotations

import math
from collections import OrderedDict

import numpy as np

from . import _validation as V
from . import functional as F


class _RNNBase:
    """Shared by RNN, LSTM and GRU: parameters, gradients, modes, state dicts, forward/backward."""

    _recorders = ()  # fastrnn.diagnostics.record objects attached to this layer

    _mode = None  # set by subclasses

    def __init__(self, input_size, hidden_size, num_layers=1, *, bias=True, batch_first=False,
                 bidirectional=False, dropout=0.0, dtype=np.float32, rng=None, bptt_clip=None):
        where = type(self).__name__
        self.input_size = V.check_positive_int(input_size, "input_size", where)
        self.hidden_size = V.check_positive_int(hidden_size, "hidden_size", where)
        self.num_layers = V.check_positive_int(num_layers, "num_layers", where)
        self.bias = bool(bias)
        self.batch_first = bool(batch_first)
        self.bidirectional = bool(bidirectional)
        self.dropout = V.check_dropout(dropout, where)
        self.dtype = V.as_dtype(dtype, f"{where}: dtype")
        self.bptt_clip = V.check_bptt_clip(bptt_clip, where)
        self.rng = V.generator(rng, where)
        self.training = True
        self._ctx = None
        shapes = F.param_shapes(self._cell(), self.input_size, self.hidden_size, self.num_layers,
                                self.bidirectional, self.bias)
        self.params = OrderedDict((name, np.empty(shape, self.dtype)) for name, shape in shapes)
        self.grads = OrderedDict((name, np.zeros(shape, self.dtype)) for name, shape in shapes)
        self.reset_parameters()

    # -- the cell this layer runs ("rnn_tanh", "rnn_relu", "lstm", "gru")
    def _cell(self):
        return self._mode

    @property
    def num_directions(self):
        return 2 if self.bidirectional else 1

    def reset_parameters(self, rng=None):
        """PyTorch's default: every parameter ~ U(-1/sqrt(H), 1/sqrt(H))."""
        gen = self.rng if rng is None else V.generator(rng, f"{type(self).__name__}.reset_parameters")
        k = 1.0 / math.sqrt(self.hidden_size)
        for w in self.params.values():
            w[...] = gen.uniform(-k, k, size=w.shape)
        return self

    def zero_grad(self):
        for g in self.grads.values():
            g.fill(0)

    def train(self, mode=True):
        self.training = bool(mode)
        return self

    def eval(self):
        return self.train(False)

    def state_dict(self):
        """Copies of the parameters under torch's names."""
        return OrderedDict((k, v.copy()) for k, v in self.params.items())

    def load_state_dict(self, state_dict, strict=True):
        """Load arrays or torch tensors by torch name (values are cast to the layer dtype).

        strict: a missing or unexpected key raises KeyError; a wrong shape always raises ValueError.
        Returns (missing_keys, unexpected_keys).
        """
        where = f"{type(self).__name__}.load_state_dict"
        missing = [k for k in self.params if k not in state_dict]
        unexpected = [k for k in state_dict if k not in self.params]
        if strict and (missing or unexpected):
            raise KeyError(f"{where}: missing keys {missing}, unexpected keys {unexpected}")
        new = {}
        for k, v in state_dict.items():
            if k not in self.params:
                continue
            a = V.to_numpy(v)
            if a.shape != self.params[k].shape:
                raise ValueError(f"{where}: {k!r} has shape {tuple(a.shape)}, expected {self.params[k].shape}")
            if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
                raise TypeError(f"{where}: {k!r} has dtype {a.dtype}, expected a real floating dtype")
            new[k] = a
        for k, a in new.items():  # all checked first: a failed load changes nothing
            self.params[k][...] = a
        return missing, unexpected

    def _forward(self, x, hx, lengths):
        self._ctx = None  # an eval forward (or a failing one) drops any earlier cache
        out, h_n, c_n, ctx = F._forward(
            self._cell(), x, self.params, hx, lengths, num_layers=self.num_layers,
            bidirectional=self.bidirectional, bias=self.bias, batch_first=self.batch_first,
            dropout=self.dropout, training=self.training, rng=self.rng,
            reset_after=getattr(self, "reset_after", True), where=f"{type(self).__name__}.forward")
        self._ctx = ctx
        recorders = [r for r in self._recorders if r.active]
        if recorders and ctx is not None:
            from .diagnostics import notify_forward
            notify_forward(recorders, self, ctx)
        return out, h_n, c_n

    def _backward(self, grad_output, grad_h_n, grad_c_n):
        where = f"{type(self).__name__}.backward"
        if self._ctx is None:
            raise RuntimeError(f"{where}: no training cache; call forward in train mode (layer.train()) "
                               "right before backward (eval-mode forwards keep no cache)")
        if self._ctx.consumed:
            raise RuntimeError(f"{where}: backward was already called for the last forward (it consumes the "
                               "cache); run forward again first")
        recorders = [r for r in self._recorders if r.active]
        grad_x, grad_h0, grad_c0, _ = F.backward(self._ctx, grad_output, grad_h_n, grad_c_n, grads=self.grads,
                                                 bptt_clip=self.bptt_clip, record=bool(recorders))
        for r in recorders:
            r._on_backward(self, self._ctx)
        return grad_x, grad_h0, grad_c0

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def __repr__(self):
        opts = [f"{self.input_size}", f"{self.hidden_size}"]
        if self.num_layers != 1:
            opts.append(f"num_layers={self.num_layers}")
        for name, default in (("bias", True), ("batch_first", False), ("bidirectional", False), ("dropout", 0.0),
                              ("bptt_clip", None)):
            if getattr(self, name) != default:
                opts.append(f"{name}={getattr(self, name)}")
        opts.append(f"dtype={self.dtype}")
        return f"{type(self).__name__}({', '.join(opts)}{self._extra_repr()})"

    def _extra_repr(self):
        return ""


class RNN(_RNNBase):
    """Elman RNN stack, ``h' = act(W_ih x + b_ih + W_hh h + b_hh)`` with act = tanh or relu.

    >>> import numpy as np, fastrnn
    >>> rnn = fastrnn.RNN(3, 5, nonlinearity="relu", rng=0)
    >>> out, h_n = rnn(np.zeros((7, 2, 3), np.float32))
    >>> out.shape, h_n.shape
    ((7, 2, 5), (1, 2, 5))
    """

    def __init__(self, input_size, hidden_size, num_layers=1, *, nonlinearity="tanh", **kwargs):
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"RNN: unknown nonlinearity {nonlinearity!r}; expected 'tanh' or 'relu'")
        self.nonlinearity = nonlinearity
        super().__init__(input_size, hidden_size, num_layers, **kwargs)

    def _cell(self):
        return f"rnn_{self.nonlinearity}"

    def forward(self, x, hx=None, lengths=None):
        """Returns ``(output, h_n)``; see `fastrnn.functional.rnn_forward`."""
        out, h_n, _ = self._forward(x, hx, lengths)
        return out, h_n

    def backward(self, grad_output, grad_h_n=None):
        """Returns ``(grad_x, grad_h0)``; parameter gradients accumulate into ``.grads``."""
        grad_x, grad_h0, _ = self._backward(grad_output, grad_h_n, None)
        return grad_x, grad_h0

    def _extra_repr(self):
        return ", nonlinearity='relu'" if self.nonlinearity == "relu" else ""


class LSTM(_RNNBase):
    """LSTM stack (PyTorch gate order i, f, g, o).

    >>> import numpy as np, fastrnn
    >>> lstm = fastrnn.LSTM(3, 5, num_layers=2, bidirectional=True, rng=0)
    >>> out, (h_n, c_n) = lstm(np.zeros((7, 2, 3), np.float32))
    >>> out.shape, h_n.shape, c_n.shape
    ((7, 2, 10), (4, 2, 5), (4, 2, 5))
    """

    _mode = "lstm"

    def forward(self, x, hx=None, lengths=None):
        """Returns ``(output, (h_n, c_n))``; ``hx`` is None or ``(h0, c0)``."""
        out, h_n, c_n = self._forward(x, hx, lengths)
        return out, (h_n, c_n)

    def backward(self, grad_output, grad_h_n=None, grad_c_n=None):
        """Returns ``(grad_x, grad_h0, grad_c0)``; parameter gradients accumulate into ``.grads``."""
        return self._backward(grad_output, grad_h_n, grad_c_n)


class GRU(_RNNBase):
    """GRU stack (gates r, z, n); ``reset_after=False`` gives the Keras v1 / ONNX variant.

    >>> import numpy as np, fastrnn
    >>> gru = fastrnn.GRU(3, 5, reset_after=False, rng=0)
    >>> out, h_n = gru(np.zeros((7, 3), np.float32))   # unbatched [T, C]
    >>> out.shape, h_n.shape
    ((7, 5), (1, 5))
    """

    _mode = "gru"

    def __init__(self, input_size, hidden_size, num_layers=1, *, reset_after=True, **kwargs):
        self.reset_after = bool(reset_after)
        super().__init__(input_size, hidden_size, num_layers, **kwargs)

    def forward(self, x, hx=None, lengths=None):
        """Returns ``(output, h_n)``."""
        out, h_n, _ = self._forward(x, hx, lengths)
        return out, h_n

    def backward(self, grad_output, grad_h_n=None):
        """Returns ``(grad_x, grad_h0)``; parameter gradients accumulate into ``.grads``."""
        grad_x, grad_h0, _ = self._backward(grad_output, grad_h_n, None)
        return grad_x, grad_h0

    def _extra_repr(self):
        return ", reset_after=False" if not self.reset_after else ""
