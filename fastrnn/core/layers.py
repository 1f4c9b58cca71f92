"""NumPy recurrent layers with PyTorch's constructor, parameter names and semantics, and the cell
variants (LSTMP, peepholes, LayerNorm LSTM/GRU) and in-kernel regularizers (recurrent dropout,
zoneout, DropConnect) of docs/variants.md.

Threads: the kernels release the GIL, and eval-mode forwards of one layer may run from several
threads at once. A layer in training mode keeps one cache (of its last training forward) and one
``.grads``, so it belongs to one thread at a time: a training forward or backward that overlaps
another one from a different thread raises ``RuntimeError`` ("layer is being used by another
thread"), and so does a backward whose cache was made by another thread's forward. Give each
thread its own layer, or use `fastrnn.functional`, whose contexts are per call.
"""
from __future__ import annotations

import contextlib
import copy
import math
import operator
import threading
import types
from collections import OrderedDict

import numpy as np

from .. import _C
from . import validation as V
from . import cuda
from . import functional as F
from .stream import Stream


# Guards every layer's `_user` check-and-set (one shared lock: a lock per layer would make layers
# impossible to copy or pickle, and the critical section is a few attribute accesses).
_USE_LOCK = threading.Lock()


def _aligned_copy(a):
    if not isinstance(a, np.ndarray) or a.ctypes.data % 64 == 0:
        return a
    out = V.aligned_zeros(a.shape, a.dtype)
    out[...] = a
    return out


class _RNNBase:
    """Shared by RNN, LSTM and GRU: parameters, gradients, modes, state dicts, forward/backward.

    ``device="cuda"`` runs forward and backward on the GPU (`fastrnn.cuda`; RuntimeError saying why
    when the CUDA backend cannot be used; plain cells only); parameters and gradients stay NumPy
    arrays.

    ``compute_dtype`` (float32 CPU layers; docs/precision.md): None computes in ``dtype``;
    ``"bfloat16"`` rounds the operands of every product to bf16 (the weights once per call, the
    inputs at each use) and sums in float32, in inference and in training (forward and BPTT; the
    parameters and gradients stay float32, as under torch's autocast; not with ``weight_drop``);
    ``"int8"`` is dynamic quantization for inference, which `quantize_dynamic` sets up. The
    attribute can be changed between calls.
    """

    _recorders = ()  # fastrnn.diagnostics.record objects attached to this layer

    _mode = None  # set by subclasses
    _user = None  # thread inside a training forward/backward of this layer, or None
    _ctx_thread = None  # thread whose training forward made the cache in `_ctx`
    _weights = None  # the core's plan and the arrays it reads (functional.prepare), see `_prepared`
    buffers = {}  # non-trained state (Li-GRU's batch norm statistics)

    # Cell variants and regularizer rates (set by the subclasses that have them).
    proj_size = 0
    peephole = False
    layer_norm = False
    zoneout_h = 0.0
    zoneout_c = 0.0
    # None: compute in `dtype`; "int8": dynamic quantization for inference (`fastrnn.quantize_dynamic`)
    compute_dtype = None

    def __init__(self, input_size, hidden_size, num_layers=1, *, bias=True, batch_first=False,
                 bidirectional=False, dropout=0.0, dtype=np.float32, rng=None, bptt_clip=None,
                 recurrent_dropout=0.0, weight_drop=0.0, device="cpu", compute_dtype=None):
        where = type(self).__name__
        self.device = cuda.check_device(device, where)  # "cuda": the kernels run on the GPU (fastrnn.cuda)
        self.input_size = V.check_positive_int(input_size, "input_size", where)
        self.hidden_size = V.check_positive_int(hidden_size, "hidden_size", where)
        self.num_layers = V.check_positive_int(num_layers, "num_layers", where)
        self.bias = bool(bias)
        self.batch_first = bool(batch_first)
        self.bidirectional = bool(bidirectional)
        self.dropout = V.check_dropout(dropout, where)
        self.recurrent_dropout = F._check_rate(recurrent_dropout, "recurrent_dropout", where)
        self.weight_drop = F._check_rate(weight_drop, "weight_drop", where)
        self.dtype = V.as_dtype(dtype, f"{where}: dtype")
        self.bptt_clip = V.check_bptt_clip(bptt_clip, where)
        if compute_dtype is not None:  # checked as a call would check it (float32, CPU)
            F._check_compute_dtype(compute_dtype, self.dtype, False, self.device, where)
            self.compute_dtype = str(np.dtype(compute_dtype).name if not isinstance(compute_dtype, str)
                                     else compute_dtype)
        F._check_variants(where, self._cell(), getattr(self, "reset_after", True), self.proj_size, self.peephole,
                          self.layer_norm, self.zoneout_h, self.zoneout_c, self.recurrent_dropout, self.weight_drop)
        self.proj_size = int(self.proj_size)
        if self.proj_size and self.proj_size >= self.hidden_size:
            raise ValueError(f"{where}: proj_size={self.proj_size} must be smaller than hidden_size={self.hidden_size}")
        self.rng = V.generator(rng, where)
        self.training = True
        self._ctx = None
        shapes = F.param_shapes(self._cell(), self.input_size, self.hidden_size, self.num_layers,
                                self.bidirectional, self.bias, **self._shape_options())
        # Cache-line aligned: the kernels stream these rows with full-vector loads (V.aligned_zeros).
        self.params = OrderedDict((name, V.aligned_zeros(shape, self.dtype)) for name, shape in shapes)
        self.grads = OrderedDict((name, V.aligned_zeros(shape, self.dtype)) for name, shape in shapes)
        buffers = F.param_shapes(self._cell(), self.input_size, self.hidden_size, self.num_layers,
                                 self.bidirectional, self.bias, buffers=True, **self._shape_options())
        if buffers:
            self.buffers = OrderedDict((name, V.aligned_zeros(shape, self.dtype)) for name, shape in buffers)
        self.reset_parameters()

    def _shape_options(self):
        """What besides the sizes decides the parameters' names and shapes."""
        return dict(proj_size=self.proj_size, peephole=self.peephole, layer_norm=self.layer_norm)

    # -- the cell this layer runs ("rnn_tanh", "rnn_relu", "lstm", "gru")
    def _cell(self):
        return self._mode

    @property
    def num_directions(self):
        return 2 if self.bidirectional else 1

    def reset_parameters(self, rng=None):
        """PyTorch's default: every parameter ~ U(-1/sqrt(H), 1/sqrt(H)) (peepholes and LSTMP's
        ``weight_hr`` too); LayerNorm gains 1 and biases 0 (torch.nn.LayerNorm's, Haste's)."""
        gen = self.rng if rng is None else V.generator(rng, f"{type(self).__name__}.reset_parameters")
        k = 1.0 / math.sqrt(self.hidden_size)
        for name, w in self.params.items():
            if name.startswith("ln_"):
                w[...] = 0.0 if name.startswith("ln_c_bias") else 1.0
            else:
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
        """Copies of the parameters under torch's names (and of the buffers, Li-GRU's batch norm
        statistics)."""
        return OrderedDict((k, v.copy()) for k, v in self._state().items())

    def _state(self):
        return OrderedDict(list(self.params.items()) + list(self.buffers.items()))

    def load_state_dict(self, state_dict, strict=True):
        """Load arrays or torch tensors by torch name (values are cast to the layer dtype).

        strict: a missing or unexpected key raises KeyError; a wrong shape always raises ValueError.
        Returns (missing_keys, unexpected_keys).
        """
        where = f"{type(self).__name__}.load_state_dict"
        own = self._state()
        missing = [k for k in own if k not in state_dict]
        unexpected = [k for k in state_dict if k not in own]
        if strict and (missing or unexpected):
            raise KeyError(f"{where}: missing keys {missing}, unexpected keys {unexpected}")
        new = {}
        for k, v in state_dict.items():
            if k not in own:
                continue
            a = V.to_numpy(v)
            if a.shape != own[k].shape:
                raise ValueError(f"{where}: {k!r} has shape {tuple(a.shape)}, expected {own[k].shape}")
            if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
                raise TypeError(f"{where}: {k!r} has dtype {a.dtype}, expected a real floating dtype")
            new[k] = a
        for k, a in new.items():  # all checked first: a failed load changes nothing
            own[k][...] = a
        if new:
            self._values_rewritten()
        return missing, unexpected

    def _values_rewritten(self):
        """The same arrays got new values: the kept plan says so, so that int8/bf16 streams (which
        convert the weights once) take them again."""
        kept = self._kept_weights()
        if kept is not None:
            kept.plan.set_weights(kept.arrays)

    @contextlib.contextmanager
    def _training_call(self, where):
        """Training calls own the layer while they run: it has one cache and one `.grads`.

        Two threads training the same layer would race on both (gradients accumulated from two
        threads at once, or a backward using another thread's cache), so a training forward or
        backward that overlaps another one from a different thread raises RuntimeError instead.
        Eval-mode forwards keep no per-layer state and may run concurrently.
        """
        me = threading.get_ident()
        with _USE_LOCK:
            if self._user is not None:
                raise RuntimeError(
                    f"{where}: layer is being used by another thread (a training forward/backward is running on "
                    f"thread {self._user}); a layer keeps one training cache and one .grads, so train it from one "
                    "thread at a time, give each thread its own layer (or use fastrnn.functional), or call "
                    "eval() for concurrent inference")
            self._user = me
        try:
            yield me
        finally:
            self._user = None

    def _config(self):
        """The settings of the core's plan (fixed at construction)."""
        return dict(reset_after=getattr(self, "reset_after", True), proj_size=self.proj_size, peephole=self.peephole,
                    layer_norm=self.layer_norm, zoneout_c=bool(self.zoneout_c))

    @property
    def packed_bytes(self):
        """Bytes the layer's plan holds for packed weights: W_hh packed for inference, plus the copy
        each inference call compares the weights with to know they did not change (docs/design.md,
        "The plan"). 0 before the first eval-mode call and after an array of ``params`` was replaced
        (until the next one); training calls pack into their own scratch and add nothing here.

        Examples
        --------
        >>> import numpy as np, fastrnn
        >>> layer = fastrnn.LSTM(8, 32).eval()
        >>> layer.packed_bytes
        0
        >>> _ = layer(np.zeros((3, 1, 8), np.float32))
        >>> layer.packed_bytes >= 2 * layer.params["weight_hh_l0"].nbytes
        True
        """
        w = self._kept_weights()
        return 0 if w is None else int(w.plan.packed_bytes)

    def quantize_dynamic(self):
        """A copy of this layer for int8 inference (dynamic quantization); this one is unchanged.

        The copy keeps the float32 parameters (``params``, ``state_dict`` and pickles hold them,
        so it saves, loads and converts like any layer) and computes every product in int8: its
        first eval-mode call quantizes W_ih, W_hh (and LSTMP's W_hr) per output row, symmetric,
        with a float32 scale, and keeps them on the layer's plan (again when a weight changes);
        each call quantizes the inputs per row (x for the input product, h at every step) to
        uint8 with a float32 scale. The sums are exact int32; the biases, the gate functions and
        the states stay float32 (docs/precision.md has the arithmetic and the error bounds).
        Inference only: a training-mode forward raises RuntimeError. `fastrnn.quantize_dynamic`
        does the same for every layer of a model.

        Examples
        --------
        >>> import numpy as np, fastrnn
        >>> layer = fastrnn.LSTM(16, 32, rng=0).eval()
        >>> q = layer.quantize_dynamic()
        >>> q
        LSTM(16, 32, dtype=float32, compute_dtype='int8')
        >>> x = np.random.default_rng(0).standard_normal((20, 2, 16)).astype(np.float32)
        >>> float(np.abs(q(x)[0] - layer(x)[0]).max()) < 0.01
        True
        """
        where = f"{type(self).__name__}.quantize_dynamic"
        if self.dtype != np.float32:
            raise ValueError(f"{where}: int8 quantizes float32 layers; this one has dtype {np.dtype(self.dtype).name} "
                             "(make a float32 layer with load_state_dict first)")
        if self.device != "cpu":
            raise ValueError(f"{where}: int8 runs on the CPU; this layer has device={self.device!r}")
        q = copy.deepcopy(self)
        q.compute_dtype = "int8"
        return q.eval()

    def stream(self, batch=1):
        """A `fastrnn.core.stream.Stream`: inference one step (or a chunk of steps) per call for
        ``batch`` slots, the state carried between calls (eval mode, unidirectional, CPU).

        Examples
        --------
        >>> import numpy as np, fastrnn
        >>> s = fastrnn.LSTM(3, 5, rng=0).eval().stream(batch=2)
        >>> s.step(np.zeros((2, 3), np.float32)).shape, s.state[1].shape
        ((2, 5), (1, 2, 5))
        """
        where = f"{type(self).__name__}.stream"
        if self.device != "cpu":
            raise RuntimeError(f"{where}: streams run on the CPU (this layer has device={self.device!r}); make a "
                               "CPU layer with the same parameters for streaming")
        return Stream(self, batch, where=where, lstm=self._cell() == "lstm", weights=self._prepared,
                      zoneout_h=self.zoneout_h, zoneout_c=self.zoneout_c)

    def _kept_weights(self):
        """The plan of the last call while ``params`` and ``buffers`` still hold its arrays, else None."""
        w = self._weights
        if w is None or w.copied:
            return None
        params, buffers = self.params, self.buffers
        if not buffers:  # the common case, at a streaming step's cost (a deleted entry: prepare() names it)
            return w if _C._same_entries(params, w.plan_names, w.sources) else None
        current = [buffers[name] if name in buffers else params.get(name) for name in w.plan_names]
        return w if all(map(operator.is_, current, w.sources)) else None

    def _prepared(self, where):
        """The core's plan and the arrays it reads, kept between calls while ``params`` (and
        ``buffers``) hold the same arrays; made again when an entry was replaced, and at every
        call while one is not C-contiguous (the plan reads a copy of it, which its later in-place
        writes would not reach). The plan keeps W_hh packed for inference and checks at every call
        that the weights did not change (docs/design.md, "The plan")."""
        w = self._kept_weights()
        if w is not None:
            return w
        w = F.prepare(where, self._cell(), self.params, self.num_layers, self.bidirectional, self.bias,
                      buffers=self.buffers, **self._config())
        w.key = "layer"  # W_hh stays packed on the plan for inference calls
        w.plan_names = tuple(name for name, _, _ in w.plan.parameters)
        self._weights = w
        return w

    def __getstate__(self):
        # The plan and a training cache are rebuilt, not saved: copies and pickles hold the state.
        state = self.__dict__.copy()
        state.pop("_weights", None)
        state["_ctx"] = None
        state.pop("_user", None)
        return state

    def __setstate__(self, state):
        # Unpickled arrays are NumPy's, 16-byte aligned: back on cache lines (V.aligned_zeros).
        for key in ("params", "grads", "buffers"):
            arrays = state.get(key)
            if isinstance(arrays, OrderedDict) and arrays:
                state[key] = OrderedDict((name, _aligned_copy(a)) for name, a in arrays.items())
        self.__dict__.update(state)

    def _forward(self, x, hx, lengths):
        where = f"{type(self).__name__}.forward"
        if self.compute_dtype == "int8" and self.training:
            raise RuntimeError(f"{where}: this layer is quantized to int8 (fastrnn.quantize_dynamic), which is for "
                               "inference: call .eval() first. int8 has no gradients: train the float32 layer, "
                               "then quantize it again")
        with self._training_call(where) if self.training else contextlib.nullcontext(None) as me:
            self._ctx = None  # an eval forward (or a failing one) drops any earlier cache
            out, h_n, c_n, ctx = F._forward(
                self._cell(), x, self.params, hx, lengths, num_layers=self.num_layers,
                bidirectional=self.bidirectional, bias=self.bias, batch_first=self.batch_first,
                dropout=self.dropout, training=self.training, rng=self.rng,
                reset_after=getattr(self, "reset_after", True), where=where,
                proj_size=self.proj_size, peephole=self.peephole, layer_norm=self.layer_norm,
                recurrent_dropout=self.recurrent_dropout, zoneout_h=self.zoneout_h, zoneout_c=self.zoneout_c,
                weight_drop=self.weight_drop, device=self.device, weights=self._prepared(where),
                compute_dtype=self.compute_dtype, **self._cell_options())
            self._ctx, self._ctx_thread = ctx, me
            recorders = [r for r in self._recorders if r.active]
            if recorders and ctx is not None:
                F.notify_forward(recorders, self, ctx)
        return out, h_n, c_n

    def _backward(self, grad_output, grad_h_n, grad_c_n):
        where = f"{type(self).__name__}.backward"
        with self._training_call(where) as me:
            if self._ctx is None:
                raise RuntimeError(f"{where}: no training cache; call forward in train mode (layer.train()) "
                                   "right before backward (eval-mode forwards keep no cache)")
            if self._ctx_thread != me:
                raise RuntimeError(f"{where}: layer is being used by another thread: the last training forward "
                                   f"ran on thread {self._ctx_thread}, so this backward would use that thread's "
                                   "cache; run a training step's forward and backward on the same thread")
            if self._ctx.consumed:
                raise RuntimeError(f"{where}: backward was already called for the last forward (it consumes the "
                                   "cache); run forward again first")
            recorders = [r for r in self._recorders if r.active]
            grad_x, grad_h0, grad_c0, _ = F.backward(self._ctx, grad_output, grad_h_n, grad_c_n, grads=self.grads,
                                                     bptt_clip=self.bptt_clip, record=bool(recorders))
            for r in recorders:
                r._on_backward(self, self._ctx)
        return grad_x, grad_h0, grad_c0

    # The cells whose state is h alone (RNN, GRU, Li-GRU); LSTM returns and takes (h, c).
    def forward(self, x, hx=None, lengths=None):
        """Returns ``(output, h_n)``; see `fastrnn.functional` (``rnn_forward``, ``gru_forward``, ...)."""
        out, h_n, _ = self._forward(x, hx, lengths)
        return out, h_n

    def backward(self, grad_output, grad_h_n=None):
        """Returns ``(grad_x, grad_h0)``; parameter gradients accumulate into ``.grads``."""
        grad_x, grad_h0, _ = self._backward(grad_output, grad_h_n, None)
        return grad_x, grad_h0

    def _cell_options(self):
        """Options of the cell beyond the torch ones (Li-GRU: activation, normalization...)."""
        return {}

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def __repr__(self):
        opts = [f"{self.input_size}", f"{self.hidden_size}"]
        if self.num_layers != 1:
            opts.append(f"num_layers={self.num_layers}")
        for name, default in (("bias", True), ("batch_first", False), ("bidirectional", False), ("dropout", 0.0),
                              ("bptt_clip", None), ("proj_size", 0), ("peephole", False),
                              ("recurrent_dropout", 0.0), ("zoneout_h", 0.0), ("zoneout_c", 0.0),
                              ("weight_drop", 0.0)):
            if getattr(self, name) != default:
                opts.append(f"{name}={getattr(self, name)}")
        opts.append(f"dtype={self.dtype}")
        if self.compute_dtype is not None:
            opts.append(f"compute_dtype={self.compute_dtype!r}")
        if self.device != "cpu":
            opts.append(f"device={self.device!r}")
        return f"{type(self).__name__}({', '.join(opts)}{self._extra_repr()})"

    def _extra_repr(self):
        return ""


class RNN(_RNNBase):
    """Elman RNN stack, ``h' = act(W_ih x + b_ih + W_hh h + b_hh)`` with act = tanh or relu.

    Examples
    --------
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

    def _extra_repr(self):
        return ", nonlinearity='relu'" if self.nonlinearity == "relu" else ""


class LSTM(_RNNBase):
    """LSTM stack (PyTorch gate order i, f, g, o), with optional variants and regularizers.

    ``i,f,o = σ(a)``, ``g = tanh(a)``, ``c' = f⊙c + i⊙g``, ``h' = o⊙tanh(c')`` with
    ``a = W_ih x + b_ih + W_hh h + b_hh`` (Hochreiter & Schmidhuber 1997). Options (equations in
    `fastrnn.functional.lstm_forward` and docs/variants.md):

    - ``proj_size=P``: LSTMP (Sak et al. 2014), ``h' = W_hr (o⊙tanh(c'))``, parameters and
      results of ``torch.nn.LSTM(proj_size=P)`` (``weight_hr_l{k}`` ``[P, H]``; h is ``[.., P]``).
    - ``peephole=True``: ``i = σ(a_i + p_i⊙c)``, ``f = σ(a_f + p_f⊙c)``, ``o = σ(a_o + p_o⊙c')``
      (Gers & Schmidhuber 2000; ONNX's LSTM with ``P``), ``weight_peephole_l{k}`` ``[3, H]``.
    - ``recurrent_dropout=p``: ``W_hh (h⊙m)``, one mask per sequence (Gal & Ghahramani 2016).
    - ``zoneout_h``, ``zoneout_c``: keep each unit's previous h / c with that probability per
      step (Krueger et al. 2017); inference uses the expected update.
    - ``weight_drop=p``: DropConnect on ``W_hh`` (Wan et al. 2013; Merity et al. 2017).

    Masks come from the layer's ``rng`` in training (a new draw per forward, reused by
    backward); recurrent dropout and DropConnect are off in eval mode.

    Examples
    --------
    >>> import numpy as np, fastrnn
    >>> lstm = fastrnn.LSTM(3, 5, num_layers=2, bidirectional=True, rng=0)
    >>> out, (h_n, c_n) = lstm(np.zeros((7, 2, 3), np.float32))
    >>> out.shape, h_n.shape, c_n.shape
    ((7, 2, 10), (4, 2, 5), (4, 2, 5))
    >>> lstmp = fastrnn.LSTM(3, 8, proj_size=2, peephole=True, zoneout_h=0.1, rng=0)
    >>> out, (h_n, c_n) = lstmp(np.zeros((7, 2, 3), np.float32))
    >>> out.shape, h_n.shape, c_n.shape, lstmp.params["weight_hr_l0"].shape
    ((7, 2, 2), (1, 2, 2), (1, 2, 8), (2, 8))
    """

    _mode = "lstm"

    def __init__(self, input_size, hidden_size, num_layers=1, *, proj_size=0, peephole=False, zoneout_h=0.0,
                 zoneout_c=0.0, **kwargs):
        where = type(self).__name__
        self.proj_size = proj_size  # checked with the other variants by _RNNBase
        self.peephole = bool(peephole)
        self.zoneout_h = F._check_rate(zoneout_h, "zoneout_h", where)
        self.zoneout_c = F._check_rate(zoneout_c, "zoneout_c", where)
        super().__init__(input_size, hidden_size, num_layers, **kwargs)

    def forward(self, x, hx=None, lengths=None):
        """Returns ``(output, (h_n, c_n))``; ``hx`` is None or ``(h0, c0)``."""
        out, h_n, c_n = self._forward(x, hx, lengths)
        return out, (h_n, c_n)

    def backward(self, grad_output, grad_h_n=None, grad_c_n=None):
        """Returns ``(grad_x, grad_h0, grad_c0)``; parameter gradients accumulate into ``.grads``."""
        return self._backward(grad_output, grad_h_n, grad_c_n)


class GRU(_RNNBase):
    """GRU stack (gates r, z, n); ``reset_after=False`` gives the Keras v1 / ONNX variant.

    Regularizers as for `LSTM`: ``recurrent_dropout`` (the recurrent GEMMs read ``h⊙m``, the
    ``z⊙h`` term keeps h; Keras), ``zoneout_h`` and ``weight_drop``.

    Examples
    --------
    >>> import numpy as np, fastrnn
    >>> gru = fastrnn.GRU(3, 5, reset_after=False, rng=0)
    >>> out, h_n = gru(np.zeros((7, 3), np.float32))   # unbatched [T, C]
    >>> out.shape, h_n.shape
    ((7, 5), (1, 5))
    """

    _mode = "gru"

    def __init__(self, input_size, hidden_size, num_layers=1, *, reset_after=True, zoneout_h=0.0, **kwargs):
        self.reset_after = bool(reset_after)
        self.zoneout_h = F._check_rate(zoneout_h, "zoneout_h", type(self).__name__)
        super().__init__(input_size, hidden_size, num_layers, **kwargs)

    def _extra_repr(self):
        return ", reset_after=False" if not self.reset_after else ""


class LayerNormLSTM(LSTM):
    """LayerNorm LSTM (Ba, Kiros & Hinton 2016, "Layer normalization"), in the Haste formulation.

    ``a = LN_γih(W_ih x) + LN_γhh(W_hh h) + b_ih + b_hh`` (gates i, f, g, o),
    ``c' = f⊙c + i⊙g``, ``h' = o ⊙ tanh(LN_γc,βc(c'))``, where
    ``LN_γ,β(v) = γ⊙(v - mean(v)) / sqrt(var(v) + 1e-5) + β`` over the row's features: all 4H
    pre-activations of each projection (gain only; the gate biases shift), and the H units of c'.
    Parameters per layer/direction: torch's four LSTM tensors plus ``ln_ih_weight_l{k}`` and
    ``ln_hh_weight_l{k}`` ``[4H]`` (init 1), ``ln_c_weight_l{k}`` (init 1) and ``ln_c_bias_l{k}``
    ``[H]`` (init 0). Options as `LSTM` except ``proj_size`` and ``peephole``; zoneout on c
    applies to the carried state (LN and tanh see the candidate f⊙c + i⊙g).

    Examples
    --------
    >>> import numpy as np, fastrnn
    >>> ln = fastrnn.LayerNormLSTM(3, 5, rng=0)
    >>> out, (h_n, c_n) = ln(np.ones((7, 2, 3), np.float32))
    >>> out.shape, sorted(k for k in ln.params if k.startswith("ln_"))
    ((7, 2, 5), ['ln_c_bias_l0', 'ln_c_weight_l0', 'ln_hh_weight_l0', 'ln_ih_weight_l0'])
    >>> grad_x, grad_h0, grad_c0 = ln.backward(np.ones_like(out))
    >>> ln.grads["ln_c_weight_l0"].shape
    (5,)
    """

    layer_norm = True

    def __init__(self, input_size, hidden_size, num_layers=1, **kwargs):
        for name in ("proj_size", "peephole"):
            if kwargs.get(name):
                raise ValueError(f"LayerNormLSTM: {name} is not supported with layer normalization")
        super().__init__(input_size, hidden_size, num_layers, **kwargs)


class LayerNormGRU(GRU):
    """LayerNorm GRU (Ba, Kiros & Hinton 2016), in the Haste formulation (reset_after form).

    ``vx = LN_γih(W_ih x) + b_ih``, ``vh = LN_γhh(W_hh h) + b_hh`` (gates r, z, n),
    ``r = σ(vx_r + vh_r)``, ``z = σ(vx_z + vh_z)``, ``n = tanh(vx_n + r⊙vh_n)``,
    ``h' = (1-z)⊙n + z⊙h``; each LN normalizes a row over its 3H features
    (``(v - mean) / sqrt(var + 1e-5)``, gain only). Parameters: torch's GRU tensors plus
    ``ln_ih_weight_l{k}`` and ``ln_hh_weight_l{k}`` ``[3H]`` (init 1). Options as `GRU`
    (``reset_after`` is always True).

    Examples
    --------
    >>> import numpy as np, fastrnn
    >>> ln = fastrnn.LayerNormGRU(3, 5, num_layers=2, rng=0)
    >>> out, h_n = ln(np.ones((7, 2, 3), np.float32))
    >>> out.shape, h_n.shape
    ((7, 2, 5), (2, 2, 5))
    """

    layer_norm = True

    def __init__(self, input_size, hidden_size, num_layers=1, **kwargs):
        if not kwargs.pop("reset_after", True):
            raise ValueError("LayerNormGRU: reset_after=False is not supported with layer normalization")
        super().__init__(input_size, hidden_size, num_layers, **kwargs)


class LiGRU(_RNNBase):
    """Li-GRU stack (Ravanelli, Brakel, Omologo & Bengio 2018, "Light gated recurrent units for
    speech recognition"), as SpeechBrain's ``LiGRU`` computes it, with fastrnn's conventions.

    Gates a (candidate) and z, no reset gate::

        w = norm(W_ih x)                  batch norm (default) or LayerNorm of the whole sequence
        z = σ(w_z + U_z h),  c = act(w_a + U_a h),  h' = z⊙h + (1 - z)⊙m⊙c

    ``nonlinearity``: "relu" (default), "tanh", "sin", "leaky_relu". ``normalization``:
    "batchnorm" (statistics of the valid rows of the call in training, padded steps excluded; the
    running statistics, updated with ``momentum`` = 0.05, in eval mode), "layernorm", or None
    (no normalization; ``bias`` then adds a ``bias_ih``). ``candidate_dropout`` (SpeechBrain's
    ``dropout``): m, one mask per sequence, training only. ``dropout``: between layers, as in
    torch. Time-major ``[T, N, C]`` (``batch_first``), ``lengths``, ``bidirectional`` with separate
    ``_reverse`` weights (SpeechBrain runs the flipped batch through the same weights:
    `fastrnn.torch.LiGRU` reproduces that layout exactly).

    Parameters ``weight_ih_l{k}`` ``[2H, C_k]``, ``weight_hh_l{k}`` ``[2H, H]`` (orthogonal init,
    as SpeechBrain's ``rnn_init``), ``norm_weight_l{k}`` (1) and ``norm_bias_l{k}`` (0) ``[2H]``;
    ``buffers`` ``norm_running_mean_l{k}`` (0), ``norm_running_var_l{k}`` (1). ``state_dict``
    holds both.

    Examples
    --------
    >>> import numpy as np, fastrnn
    >>> ligru = fastrnn.LiGRU(3, 5, num_layers=2, nonlinearity="tanh", rng=0)
    >>> out, h_n = ligru(np.random.default_rng(0).standard_normal((7, 4, 3)).astype(np.float32))
    >>> out.shape, h_n.shape, sorted(ligru.buffers)[:1]
    ((7, 4, 5), (2, 4, 5), ['norm_running_mean_l0'])
    >>> grad_x, grad_h0 = ligru.backward(np.ones_like(out))
    >>> ligru.grads["norm_weight_l1"].shape
    (10,)
    """

    _mode = "ligru"

    def __init__(self, input_size, hidden_size, num_layers=1, *, nonlinearity="relu", normalization="batchnorm",
                 momentum=0.05, candidate_dropout=0.0, **kwargs):
        where = type(self).__name__
        self.momentum = F._check_ligru(where, nonlinearity, normalization, momentum)
        self.nonlinearity = nonlinearity
        self.normalization = normalization
        self.candidate_dropout = F._check_rate(candidate_dropout, "candidate_dropout", where)
        super().__init__(input_size, hidden_size, num_layers, **kwargs)

    recurrent_affine = False

    def _shape_options(self):
        return dict(normalization=self.normalization, recurrent_affine=self.recurrent_affine)

    def _config(self):
        return dict(nonlinearity=self.nonlinearity, normalization=self.normalization, momentum=self.momentum,
                    recurrent_affine=self.recurrent_affine)

    def _cell_options(self):
        return dict(nonlinearity=self.nonlinearity, normalization=self.normalization, momentum=self.momentum,
                    recurrent_affine=self.recurrent_affine, candidate_dropout=self.candidate_dropout,
                    buffers=self.buffers)

    def reset_parameters(self, rng=None):
        """SpeechBrain's initialization: ``weight_ih`` as ``torch.nn.Linear`` (U(±1/sqrt(C_k))),
        ``weight_hh`` orthogonal (``rnn_init``), the normalizations' gains 1 and shifts 0, the
        running statistics 0 and 1."""
        from ..gradients import init
        gen = self.rng if rng is None else V.generator(rng, f"{type(self).__name__}.reset_parameters")
        for name, w in self.params.items():
            if name.startswith("weight_ih"):
                k = 1.0 / math.sqrt(w.shape[1])
                w[...] = gen.uniform(-k, k, size=w.shape)
            elif name.startswith("weight_hh"):
                init.orthogonal_(w, rng=gen)
            else:
                w[...] = 1.0 if "weight" in name else 0.0
        for name, b in self.buffers.items():
            b[...] = 1.0 if "var" in name else 0.0
        return self

    def _extra_repr(self):
        opts = [f"nonlinearity={self.nonlinearity!r}", f"normalization={self.normalization!r}"]
        if self.candidate_dropout:
            opts.append(f"candidate_dropout={self.candidate_dropout}")
        if self.recurrent_affine:
            opts.append("recurrent_affine=True")
        return ", " + ", ".join(opts)


class SLiGRU(LiGRU):
    """SLi-GRU stack (Moumen & Parcollet 2023, "Stabilising and accelerating light gated recurrent
    units for automatic speech recognition"; SpeechBrain's ``SLiGRU``): `LiGRU` with a LayerNorm
    of the recurrent product, ``U h -> LN(U h)`` over its 2H features, which keeps the recurrent
    gradients from exploding. ``recurrent_affine=True`` (SpeechBrain's
    ``recurrent_elementwise_affine``) gives that LN a gain ``ln_hh_weight_l{k}`` and a shift
    ``ln_hh_bias_l{k}`` ``[2H]``; by default it has neither.

    Examples
    --------
    >>> import numpy as np, fastrnn
    >>> sligru = fastrnn.SLiGRU(3, 5, normalization="layernorm", recurrent_affine=True, rng=0)
    >>> out, h_n = sligru(np.ones((6, 2, 3), np.float32))
    >>> out.shape, [k for k in sligru.params if k.startswith("ln_hh")]
    ((6, 2, 5), ['ln_hh_weight_l0', 'ln_hh_bias_l0'])
    """

    _mode = "sligru"

    def __init__(self, input_size, hidden_size, num_layers=1, *, recurrent_affine=False, **kwargs):
        self.recurrent_affine = bool(recurrent_affine)
        super().__init__(input_size, hidden_size, num_layers, **kwargs)


def quantize_dynamic(model):
    """A copy of `model` for int8 inference: every fastrnn recurrent layer in it (the model itself,
    or layers reached through its attributes, lists, tuples and dicts: a `fastrnn.Sequential`, a
    class of your own) computes in int8 (`_RNNBase.quantize_dynamic`). `model` is unchanged; the
    copy is in eval mode. ValueError when nothing in it is a fastrnn recurrent layer, or a layer
    is not a float32 CPU layer.

    Examples
    --------
    >>> import numpy as np, fastrnn
    >>> model = fastrnn.Sequential(fastrnn.GRU(8, 16, rng=0), fastrnn.LastStep(), fastrnn.Linear(16, 2, rng=0))
    >>> q = fastrnn.quantize_dynamic(model)
    >>> q.modules[0].compute_dtype, model.modules[0].compute_dtype
    ('int8', None)
    """
    where = "quantize_dynamic"
    for layer in _recurrent_layers(model):  # checked first: a failed call copies nothing
        if layer.dtype != np.float32 or layer.device != "cpu":
            raise ValueError(f"{where}: {layer!r} is not a float32 CPU layer; int8 quantizes those")
    copied = copy.deepcopy(model)
    layers = _recurrent_layers(copied)
    if not layers:
        raise ValueError(f"{where}: {type(model).__name__} holds no fastrnn recurrent layer to quantize")
    for layer in layers:
        layer.compute_dtype = "int8"
        layer.eval()
    if hasattr(copied, "eval") and not isinstance(copied, _RNNBase):
        copied.eval()
    return copied


def _recurrent_layers(obj):
    """The fastrnn recurrent layers reachable from obj (itself, attributes, lists, tuples, dicts)."""
    found, seen, todo = [], set(), [obj]
    while todo:
        o = todo.pop()
        if id(o) in seen or isinstance(o, (type, types.ModuleType, types.FunctionType, types.MethodType)):
            continue
        seen.add(id(o))
        if isinstance(o, _RNNBase):
            found.append(o)
        elif isinstance(o, dict):
            todo.extend(o.values())
        elif isinstance(o, (list, tuple)):
            todo.extend(o)
        elif hasattr(o, "__dict__"):
            todo.extend(vars(o).values())
    return found[::-1]
