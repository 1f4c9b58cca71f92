"""Stateless forward and backward of RNN, LSTM and GRU stacks on explicit weights.

This is what the layers (`fastrnn.RNN/LSTM/GRU`) and the torch front end call. Weights are a
dict with PyTorch's names and shapes (``weight_ih_l0``, ``weight_hh_l0``, ``bias_ih_l0``,
``bias_hh_l0``, ``..._reverse``); see DESIGN.md §1 for the equations and gate order.
``device="cuda"`` runs the same computation on the GPU (`fastrnn.cuda`; RuntimeError saying why
when the CUDA backend cannot be used): NumPy inputs are copied to the GPU, arrays in GPU memory
(``__cuda_array_interface__``) are read in place, results are NumPy arrays, and a training
context keeps its cache on the GPU until `backward`.

>>> import numpy as np, fastrnn
>>> layer = fastrnn.LSTM(3, 4, rng=0)
>>> x = np.ones((5, 2, 3), np.float32)
>>> out, (h_n, c_n), ctx = fastrnn.functional.lstm_forward(x, layer.params, training=True)
>>> out.shape, h_n.shape
((5, 2, 4), (1, 2, 4))
>>> grad_x, grad_h0, grad_c0, grads = fastrnn.functional.backward(ctx, np.ones_like(out))
>>> grads["weight_hh_l0"].shape
(16, 4)
"""
from __future__ import annotations

import numpy as np

from . import _C
from . import _validation as V
from . import cuda as _cuda

# Cell codes of the C++ core and gate counts (row blocks of W_ih / W_hh).
_CELL_CODE = {"rnn_tanh": 0, "rnn_relu": 1, "lstm": 2, "gru": 3}
_GATES = {"rnn_tanh": 1, "rnn_relu": 1, "lstm": 4, "gru": 3}

__all__ = ["rnn_forward", "lstm_forward", "gru_forward", "backward", "forward_stats", "param_shapes", "Context"]


def param_shapes(cell, input_size, hidden_size, num_layers=1, bidirectional=False, bias=True):
    """Ordered dict-like list of (name, shape) exactly as torch.nn.RNN/LSTM/GRU register them.

    `cell` is "rnn_tanh", "rnn_relu", "lstm" or "gru".
    """
    G = _GATES[cell]
    D = 2 if bidirectional else 1
    shapes = []
    for k in range(num_layers):
        C_k = input_size if k == 0 else D * hidden_size
        for d in range(D):
            sfx = f"_l{k}" + ("_reverse" if d else "")
            shapes.append((f"weight_ih{sfx}", (G * hidden_size, C_k)))
            shapes.append((f"weight_hh{sfx}", (G * hidden_size, hidden_size)))
            if bias:
                shapes.append((f"bias_ih{sfx}", (G * hidden_size,)))
                shapes.append((f"bias_hh{sfx}", (G * hidden_size,)))
    return shapes


class Context:
    """What a training forward keeps for `backward`: the core's cache and the call's layout.

    A context is consumed by `backward`; a second backward on it raises RuntimeError.
    """

    __slots__ = ("cell", "reset_after", "bias", "T", "N", "C", "H", "L", "D", "dtype", "x", "weights",
                 "names", "lengths", "masks", "cache", "batch_first", "unbatched", "where", "consumed",
                 "grad_h_norm", "grad_c_norm", "propagation", "device")

    def __init__(self, **kw):
        self.device = "cpu"  # "cuda": the cache is a fastrnn.cuda.DeviceArray
        for k, v in kw.items():
            setattr(self, k, v)
        self.consumed = False
        self.grad_h_norm = self.grad_c_norm = self.propagation = None

    @property
    def output_shape(self):
        T, N, DH = self.T, self.N, self.D * self.H
        if self.unbatched:
            return (T, DH)
        return (N, T, DH) if self.batch_first else (T, N, DH)

    @property
    def state_shape(self):
        S = self.L * self.D
        return (S, self.H) if self.unbatched else (S, self.N, self.H)


def _check_params(where, cell, params, num_layers, bidirectional, bias):
    """Validate the weight dict; returns (dtype, C, H, names in torch order)."""
    if not isinstance(params, dict):
        raise TypeError(f"{where}: params must be a dict of name -> array, got {type(params).__name__}")
    if "weight_hh_l0" not in params or "weight_ih_l0" not in params:
        raise KeyError(f"{where}: params is missing 'weight_ih_l0'/'weight_hh_l0'")
    w_hh = V.to_numpy(params["weight_hh_l0"])
    w_ih = V.to_numpy(params["weight_ih_l0"])
    dtype = V.as_dtype(w_hh.dtype, f"{where}: weight_hh_l0")
    if w_hh.ndim != 2 or w_ih.ndim != 2:
        raise ValueError(f"{where}: weights must be 2-D, got weight_ih_l0 {w_ih.shape}, weight_hh_l0 {w_hh.shape}")
    H, C = w_hh.shape[1], w_ih.shape[1]
    shapes = param_shapes(cell, C, H, num_layers, bidirectional, bias)
    arrays = []
    for name, shape in shapes:
        if name not in params:
            raise KeyError(f"{where}: params is missing {name!r} (expected shape {shape})")
        a = V.to_numpy(params[name])
        if a.dtype != dtype:
            raise TypeError(f"{where}: {name} has dtype {a.dtype}, expected {dtype} like weight_hh_l0")
        if a.shape != shape:
            raise ValueError(f"{where}: {name} has shape {a.shape}, expected {shape}")
        arrays.append(V.contiguous(a))
    return dtype, C, H, [n for n, _ in shapes], arrays


def _group(arrays, bias):
    """Per layer-direction tuples (w_ih, w_hh, b_ih, b_hh) in the core's order."""
    step = 4 if bias else 2
    out = []
    for i in range(0, len(arrays), step):
        chunk = arrays[i:i + step]
        out.append(tuple(chunk) if bias else (chunk[0], chunk[1], None, None))
    return out


def _core(device):
    """What runs the kernels: the CPU core, or the CUDA backend behind the same interface."""
    return _C if device == "cpu" else _cuda.numpy_core


def _forward(cell, x, params, hx, lengths, *, num_layers, bidirectional, bias, batch_first, dropout,
             training, rng, reset_after, where, masks=None, device="cpu"):
    device = _cuda.check_device(device, where)
    num_layers = V.check_positive_int(num_layers, "num_layers", where)
    dropout = V.check_dropout(dropout, where)
    dtype, C, H, names, arrays = _check_params(where, cell, params, num_layers, bidirectional, bias)
    D = 2 if bidirectional else 1
    L = num_layers
    is_lstm = cell == "lstm"

    x = V.float_array(x, dtype, where, "x", device)
    if x.ndim not in (2, 3):
        raise ValueError(f"{where}: x has shape {tuple(x.shape)}, expected "
                         f"{'(N, T, C)' if batch_first else '(T, N, C)'} or unbatched (T, C) with C={C}")
    unbatched = x.ndim == 2
    if unbatched:
        if lengths is not None:
            raise ValueError(f"{where}: lengths is not allowed with unbatched input of shape {tuple(x.shape)}")
        x3 = x[:, None, :]
    else:
        x3 = x.swapaxes(0, 1) if batch_first else x
    T, N, Cx = x3.shape
    if T == 0 or N == 0 or Cx != C:
        letters = ("T", "C") if unbatched else (("N", "T", "C") if batch_first else ("T", "N", "C"))
        want = (max(T, 1), C) if unbatched else ((max(N, 1), max(T, 1), C) if batch_first else (max(T, 1), max(N, 1), C))
        want_s = ", ".join(f"{k}={v}" if k == "C" else f"{k}>0" for k, v in zip(letters, want))
        raise ValueError(f"{where}: x has shape {tuple(x.shape)}, expected ({want_s})")
    G = _GATES[cell]
    V.check_blas_sizes(where, **{"T*N": T * N, "T*N*C": T * N * C, "T*N*G*H": T * N * G * H, "T*N*D*H": T * N * D * H})
    x3 = V.contiguous(x3)

    state_shape = (L * D, H) if unbatched else (L * D, N, H)
    state_letters = ("L*D", "H") if unbatched else ("L*D", "N", "H")
    h0 = c0 = None
    if hx is not None:
        if is_lstm:
            if not isinstance(hx, (tuple, list)) or len(hx) != 2:
                raise TypeError(f"{where}: hx must be a tuple (h0, c0) for LSTM, got {type(hx).__name__}")
            h0, c0 = hx
        else:
            h0 = hx
        h0 = V.float_array(h0, dtype, where, "h0", device)
        V.expect_shape(h0, state_shape, where, "h0", state_letters)
        h0 = V.contiguous(h0)
        if c0 is not None:
            c0 = V.float_array(c0, dtype, where, "c0", device)
            V.expect_shape(c0, state_shape, where, "c0", state_letters)
            c0 = V.contiguous(c0)
    lens = None if lengths is None else V.lengths_array(lengths, N, T, where)

    use_dropout = training and dropout > 0.0 and L > 1
    if masks is not None:  # explicit masks (the torch front end draws them from torch's RNG)
        if not use_dropout:
            raise ValueError(f"{where}: masks given but dropout does not apply "
                             "(it needs training=True, dropout > 0 and num_layers > 1)")
        masks = V.float_array(masks, dtype, where, "masks", device)
        V.expect_shape(masks, (L - 1, T, N, D * H), where, "masks", ("L-1", "T", "N", "D*H"))
        masks = V.contiguous(masks)
    elif use_dropout:
        gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        keep = gen.random((L - 1, T, N, D * H)) >= dropout
        masks = (keep / (1.0 - dropout)).astype(dtype)

    out = np.empty((T, N, D * H), dtype)
    h_n = np.empty((L * D, N, H), dtype)
    c_n = np.empty((L * D, N, H), dtype) if is_lstm else None
    code = _CELL_CODE[cell]
    cache = None
    if training:
        size = _C.cache_size(code, reset_after, bias, T, N, C, H, L, D, use_dropout)
        cache = np.empty(size, dtype) if device == "cpu" else _cuda.empty(size, dtype)
    weights = _group(arrays, bias)
    core = _core(device)
    core.forward(code, reset_after, bias, T, N, C, H, L, D, use_dropout, x3, weights, h0, c0, lens, masks,
                 out, h_n, c_n, cache)

    ctx = None
    if training:
        ctx = Context(cell=cell, reset_after=reset_after, bias=bias, T=T, N=N, C=C, H=H, L=L, D=D, dtype=dtype,
                      x=x3, weights=weights, names=names, lengths=lens, masks=masks, cache=cache,
                      batch_first=batch_first, unbatched=unbatched, where=where, device=device)
    output = _from_time_major(out, batch_first, unbatched)
    if unbatched:
        h_n = h_n[:, 0, :]
        c_n = None if c_n is None else c_n[:, 0, :]
    return output, h_n, c_n, ctx


def _from_time_major(a, batch_first, unbatched):
    if unbatched:
        return a[:, 0, :]
    return np.ascontiguousarray(a.swapaxes(0, 1)) if batch_first else a


def _to_time_major(a, ctx, name):
    where = ctx.where.replace("forward", "backward")
    a = V.float_array(a, ctx.dtype, where, name, ctx.device)
    letters = {(ctx.T, ctx.D * ctx.H): ("T", "D*H"), (ctx.N, ctx.T, ctx.D * ctx.H): ("N", "T", "D*H"),
               (ctx.T, ctx.N, ctx.D * ctx.H): ("T", "N", "D*H")}[ctx.output_shape]
    V.expect_shape(a, ctx.output_shape, where, name, letters)
    if ctx.unbatched:
        a = a[:, None, :]
    elif ctx.batch_first:
        a = a.swapaxes(0, 1)
    return V.contiguous(a)


def _state_grad(a, ctx, name):
    if a is None:
        return None
    where = ctx.where.replace("forward", "backward")
    a = V.float_array(a, ctx.dtype, where, name, ctx.device)
    letters = ("L*D", "H") if ctx.unbatched else ("L*D", "N", "H")
    V.expect_shape(a, ctx.state_shape, where, name, letters)
    return V.contiguous(a).reshape(ctx.L * ctx.D, ctx.N, ctx.H)


def backward(ctx, grad_output, grad_h_n=None, grad_c_n=None, *, grads=None, retain=False, bptt_clip=None,
             record=False):
    """BPTT through a training forward.

    Returns ``(grad_x, grad_h0, grad_c0, grads)``: ``grad_c0`` is None except for LSTM;
    ``grads`` maps parameter names to gradients. Pass ``grads=`` (a dict of arrays with those
    names) to accumulate into existing arrays instead (what layers do). Gradients arriving at
    padded positions (t >= lengths[n]) are ignored. `grad_output` may be None (no gradient).
    The context is consumed (a second backward raises RuntimeError) unless ``retain=True``,
    which keeps the cache intact for further backward calls (torch's ``retain_graph``) at the
    cost of a scratch buffer for the gate gradients.

    ``bptt_clip=c`` clips, inside the BPTT loop, the gradient of every gate pre-activation to
    ``[-c, c]`` at every step (Graves 2013, "Generating sequences with recurrent neural
    networks", §4); the gradients that flow on to earlier steps and into the weights are the
    clipped ones. ``record=True`` stores in ``ctx.grad_h_norm`` (and ``ctx.grad_c_norm`` for
    LSTM) the 2-norm over the batch of the *total* gradient dL/dh_t (dL/dc_t) that reached each
    step, shape ``[L, D, T]``, recorded inside the C++ BPTT loop, and in ``ctx.propagation`` the
    per-step gain of the recurrence: ‖what reached step t through it‖ / ‖the state gradient of the
    step BPTT processed before‖ (h, and the arriving c for LSTM; over the sequences valid at both
    steps; NaN where there is no such pair) — the norm of the step Jacobian applied to the actual
    gradient.
    """
    if not isinstance(ctx, Context):
        raise TypeError(f"backward: ctx must be the Context returned by a training forward, got {type(ctx).__name__}")
    where = ctx.where.replace("forward", "backward")
    if ctx.consumed:
        raise RuntimeError(f"{where}: this forward's cache was already used by an earlier backward "
                           "(backward consumes it); run forward again before another backward")
    go = None if grad_output is None else _to_time_major(grad_output, ctx, "grad_output")
    ghn = _state_grad(grad_h_n, ctx, "grad_h_n")
    gcn = _state_grad(grad_c_n, ctx, "grad_c_n") if ctx.cell == "lstm" else None
    if grad_c_n is not None and ctx.cell != "lstm":
        raise ValueError(f"{where}: grad_c_n is only valid for LSTM")
    clip = V.check_bptt_clip(bptt_clip, where) or 0.0

    dtype = ctx.dtype
    if grads is None:
        grads = {name: np.zeros(w.shape, dtype) for name, w in zip(ctx.names, _flat(ctx.weights))}
    else:
        for name, w in zip(ctx.names, _flat(ctx.weights)):
            g = grads.get(name)
            if not isinstance(g, np.ndarray) or g.shape != w.shape or g.dtype != dtype or not g.flags.c_contiguous \
                    or not g.flags.writeable:
                raise ValueError(f"{where}: grads[{name!r}] must be a writable C-contiguous {dtype} array of shape {w.shape}")
    grad_list = _group([grads[n] for n in ctx.names], ctx.bias)
    S = ctx.L * ctx.D
    grad_x = np.empty((ctx.T, ctx.N, ctx.C), dtype)
    grad_h0 = np.empty((S, ctx.N, ctx.H), dtype)
    grad_c0 = np.empty((S, ctx.N, ctx.H), dtype) if ctx.cell == "lstm" else None
    h_sq = np.zeros((ctx.L, ctx.D, ctx.T)) if record else None
    c_sq = np.zeros((ctx.L, ctx.D, ctx.T)) if record and ctx.cell == "lstm" else None
    r_sq = np.zeros((ctx.L, ctx.D, ctx.T)) if record else None
    p_sq = np.zeros((ctx.L, ctx.D, ctx.T)) if record else None
    ctx.consumed = not retain
    core = _core(ctx.device)
    core.backward(_CELL_CODE[ctx.cell], ctx.reset_after, ctx.bias, ctx.T, ctx.N, ctx.C, ctx.H, ctx.L, ctx.D,
                ctx.masks is not None, ctx.x, ctx.weights, ctx.lengths, ctx.masks, ctx.cache, go, ghn, gcn,
                grad_x, grad_h0, grad_c0, grad_list, retain=retain, bptt_clip=clip, grad_h_sq=h_sq, grad_c_sq=c_sq,
                carried_sq=r_sq, prev_state_sq=p_sq)
    if record:
        ctx.grad_h_norm = np.sqrt(h_sq)
        ctx.grad_c_norm = None if c_sq is None else np.sqrt(c_sq)
        ctx.propagation = _propagation(r_sq, p_sq)
    if not retain:
        ctx.cache = None  # free the cache now: it is consumed
    grad_x = _from_time_major(grad_x, ctx.batch_first, ctx.unbatched)
    if ctx.unbatched:
        grad_h0 = grad_h0[:, 0, :]
        grad_c0 = None if grad_c0 is None else grad_c0[:, 0, :]
    return grad_x, grad_h0, grad_c0, grads


def _propagation(carried_sq, prev_state_sq):
    """Per-step gain of the recurrence from the backward records (see `backward`)."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        prop = np.sqrt(carried_sq / prev_state_sq)
    prop[~np.isfinite(prop)] = np.nan  # no transition at this step (first BPTT step, padding)
    return prop


def forward_stats(ctx):
    """Gate saturation and the first non-finite value of a training forward, read from its cache.

    Returns ``(saturation, first_nonfinite)``: ``saturation`` is ``[L, D, T, S]`` (float64), per
    step the fraction of valid units whose gate is saturated — S statistics per cell: LSTM
    i, f, g, o; GRU r, z, n; tanh RNN the fraction with |h| > 0.99; ReLU RNN the fraction of
    dead units (h = 0); sigmoid gates count below 0.01 or above 0.99, tanh gates |v| > 0.99;
    NaN where a step has no valid row. ``first_nonfinite`` is None or a dict ``layer``,
    ``direction``, ``step``, ``quantity`` ("gate", "hidden state", "cell state") of the first
    NaN/Inf in forward order. Call it before `backward`, which consumes the cache.
    """
    if not isinstance(ctx, Context):
        raise TypeError(f"forward_stats: ctx must be a Context from a training forward, got {type(ctx).__name__}")
    if ctx.cache is None or ctx.consumed:
        raise RuntimeError("forward_stats: the context's cache was consumed by backward; call it before backward")
    S = _C.saturation_stats(_CELL_CODE[ctx.cell], ctx.reset_after)
    saturation = np.empty((ctx.L, ctx.D, ctx.T, S))
    core = _core(ctx.device)
    layer, direction, t, what = core.forward_stats(_CELL_CODE[ctx.cell], ctx.reset_after, ctx.bias, ctx.T, ctx.N,
                                                 ctx.C, ctx.H, ctx.L, ctx.D, ctx.masks is not None, ctx.cache,
                                                 ctx.lengths, saturation)
    first = None
    if layer >= 0:
        first = dict(layer=layer, direction=direction, step=t,
                     quantity=("gate", "hidden state", "cell state")[what])
    return saturation, first


def _flat(weights):
    return [w for group in weights for w in group if w is not None]


def rnn_forward(x, params, hx=None, lengths=None, *, num_layers=1, nonlinearity="tanh", bias=True,
                batch_first=False, bidirectional=False, dropout=0.0, training=False, rng=None, masks=None,
                device="cpu"):
    """Elman RNN stack: ``h' = act(W_ih x + b_ih + W_hh h + b_hh)``, act = tanh or relu.

    Returns ``(output, h_n, ctx)``; ``ctx`` is None unless ``training`` (then pass it to `backward`).
    ``masks`` (optional): dropout masks ``[L-1, T, N, D*H]`` already scaled by ``1/(1-dropout)``, used
    instead of drawing them from ``rng`` when dropout applies (``training``, ``dropout > 0``, ``L > 1``).
    """
    if nonlinearity not in ("tanh", "relu"):
        raise ValueError(f"rnn_forward: unknown nonlinearity {nonlinearity!r}; expected 'tanh' or 'relu'")
    out, h_n, _, ctx = _forward(f"rnn_{nonlinearity}", x, params, hx, lengths, num_layers=num_layers,
                                bidirectional=bidirectional, bias=bias, batch_first=batch_first, dropout=dropout,
                                training=training, rng=rng, reset_after=True, where="rnn_forward",
                                masks=masks, device=device)
    return out, h_n, ctx


def lstm_forward(x, params, hx=None, lengths=None, *, num_layers=1, bias=True, batch_first=False,
                 bidirectional=False, dropout=0.0, training=False, rng=None, masks=None, device="cpu"):
    """LSTM stack (gates i, f, g, o): ``c' = f*c + i*g``, ``h' = o*tanh(c')``.

    `hx` is None or ``(h0, c0)``. Returns ``(output, (h_n, c_n), ctx)``.
    ``masks`` (optional): dropout masks ``[L-1, T, N, D*H]`` already scaled by ``1/(1-dropout)``, used
    instead of drawing them from ``rng`` when dropout applies (``training``, ``dropout > 0``, ``L > 1``).
    """
    out, h_n, c_n, ctx = _forward("lstm", x, params, hx, lengths, num_layers=num_layers, bidirectional=bidirectional,
                                  bias=bias, batch_first=batch_first, dropout=dropout, training=training, rng=rng,
                                  reset_after=True, where="lstm_forward", masks=masks, device=device)
    return out, (h_n, c_n), ctx


def gru_forward(x, params, hx=None, lengths=None, *, num_layers=1, bias=True, batch_first=False,
                bidirectional=False, dropout=0.0, training=False, rng=None, reset_after=True, masks=None,
                device="cpu"):
    """GRU stack (gates r, z, n): ``h' = (1-z)*n + z*h``; ``reset_after`` selects
    ``n = tanh(W_in x + b_in + r*(W_hn h + b_hn))`` (True, PyTorch) or
    ``n = tanh(W_in x + b_in + W_hn (r*h) + b_hn)`` (False, Keras v1 / ONNX default).

    Returns ``(output, h_n, ctx)``.
    ``masks`` (optional): dropout masks ``[L-1, T, N, D*H]`` already scaled by ``1/(1-dropout)``, used
    instead of drawing them from ``rng`` when dropout applies (``training``, ``dropout > 0``, ``L > 1``).
    """
    out, h_n, _, ctx = _forward("gru", x, params, hx, lengths, num_layers=num_layers, bidirectional=bidirectional,
                                bias=bias, batch_first=batch_first, dropout=dropout, training=training, rng=rng,
                                reset_after=bool(reset_after), where="gru_forward", masks=masks, device=device)
    return out, h_n, ctx
