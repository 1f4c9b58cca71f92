"""Stateless forward and backward of RNN, LSTM and GRU stacks on explicit weights.

This is what the layers (`fastrnn.RNN/LSTM/GRU`, `fastrnn.LayerNormLSTM/GRU`) and the torch
front end call. Weights are a dict with PyTorch's names and shapes (``weight_ih_l0``,
``weight_hh_l0``, ``bias_ih_l0``, ``bias_hh_l0``, ``..._reverse``; LSTMP's ``weight_hr_l0``);
see docs/design.md, "Conventions" for the equations and gate order, and `param_shapes` for the cell variants'
parameters (peepholes, LayerNorm gains).

Cell variants and regularizers (docs/variants.md has the equations and references):
``proj_size`` (LSTMP, Sak et al. 2014), ``peephole`` (Gers & Schmidhuber 2000), ``layer_norm``
(Ba et al. 2016, Haste's formulation), ``recurrent_dropout`` (Gal & Ghahramani 2016, one mask
per sequence on the recurrent input, Keras semantics), ``zoneout_h`` / ``zoneout_c`` (Krueger
et al. 2017) and ``weight_drop`` (DropConnect on W_hh: Wan et al. 2013, Merity et al. 2017).
The regularizers draw their masks from ``rng`` in training; in inference recurrent dropout and
DropConnect are off and zoneout uses its expected update ``h~ + z*(h_{t-1} - h~)``.

``device="cuda"`` runs the plain cells on the GPU (`fastrnn.cuda`; RuntimeError saying why when
the CUDA backend cannot be used, NotImplementedError for the variants and regularizers above):
NumPy inputs are copied to the GPU, arrays in GPU memory (``__cuda_array_interface__``) are read
in place, results are NumPy arrays, and a training context keeps its cache on the GPU until
`backward`.

Examples
--------
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

import numbers

import numpy as np

from .. import _C
from . import cells as _cells
from . import validation as V
from . import cuda as _cuda

__all__ = ["rnn_forward", "lstm_forward", "gru_forward", "ligru_forward", "sligru_forward", "backward",
           "forward_stats", "param_shapes", "Context"]


def _config(cell, C, H, num_layers, bidirectional, bias, dtype, *, reset_after=True, proj_size=0, peephole=False,
            layer_norm=False, zoneout_c=False, nonlinearity="relu", normalization=None, momentum=0.05,
            recurrent_affine=False):
    """The core's plan of a layer stack (csrc/core/plan.h): its settings, validated once."""
    return _C.Plan(_cells.code(cell), bool(reset_after), bool(bias), C, H, num_layers, 2 if bidirectional else 1,
                   np.dtype(dtype).name, int(proj_size), bool(peephole), bool(layer_norm), bool(zoneout_c),
                   _cells.ACTIVATIONS[nonlinearity], _cells.NORMALIZATIONS[normalization], float(momentum),
                   bool(recurrent_affine))


def param_shapes(cell, input_size, hidden_size, num_layers=1, bidirectional=False, bias=True, *, proj_size=0,
                 peephole=False, layer_norm=False, normalization=None, recurrent_affine=False, buffers=False):
    """Ordered list of (name, shape), as torch.nn.RNN/LSTM/GRU register them, then the variants'.

    `cell` is "rnn_tanh", "rnn_relu", "lstm", "gru", "ligru" or "sligru". Per layer k and direction
    (suffix ``_l{k}`` / ``_l{k}_reverse``): ``weight_ih`` ``[G*H, C_k]``, ``weight_hh`` ``[G*H, K]``,
    ``bias_ih``/``bias_hh`` ``[G*H]``, with K = ``proj_size`` (LSTMP) or H and C_k = input_size
    for k = 0 else D*K; then ``weight_hr`` ``[P, H]`` (LSTMP, torch's name and place),
    ``weight_peephole`` ``[3, H]`` (p_i, p_f, p_o), and for ``layer_norm`` the gains
    ``ln_ih_weight``/``ln_hh_weight`` ``[G*H]`` and, for LSTM, ``ln_c_weight``/``ln_c_bias`` ``[H]``.
    Li-GRU and SLi-GRU: ``weight_ih``, ``weight_hh``, then the input normalization's
    ``norm_weight``/``norm_bias`` ``[2H]`` (``normalization`` "batchnorm" or "layernorm"; the bias
    with ``bias``) or, without one, ``bias_ih`` (with ``bias``); SLi-GRU with ``recurrent_affine``
    adds ``ln_hh_weight``/``ln_hh_bias`` ``[2H]``. ``buffers=True`` lists the batch norm's running
    statistics (``norm_running_mean``/``norm_running_var``) instead of the parameters. The list
    comes from the core (the cell table and the plan's parameter layout).

    Examples
    --------
    >>> from fastrnn.functional import param_shapes
    >>> param_shapes("lstm", 3, 4, proj_size=2)
    [('weight_ih_l0', (16, 3)), ('weight_hh_l0', (16, 2)), ('bias_ih_l0', (16,)), ('bias_hh_l0', (16,)), \
('weight_hr_l0', (2, 4))]
    >>> param_shapes("ligru", 3, 4, normalization="batchnorm", buffers=True)
    [('norm_running_mean_l0', (8,)), ('norm_running_var_l0', (8,))]
    """
    plan = _config(cell, input_size, hidden_size, num_layers, bidirectional, bias, np.float32, proj_size=proj_size,
                   peephole=peephole, layer_norm=layer_norm, normalization=normalization,
                   recurrent_affine=recurrent_affine)
    return [(name, tuple(shape)) for name, shape, buffer in plan.parameters if buffer == bool(buffers)]


class Context:
    """What a training forward keeps for `backward`: the core's cache and the call's layout.

    A context is consumed by `backward`; a second backward on it raises RuntimeError. ``plan`` is
    the core's plan the forward ran on (its settings and the weight arrays it read), ``names`` the
    parameter names in its order; ``noise`` holds the regularizers' masks of the forward (reused by
    backward), or None: ``(rec_mask, zh_mask, zc_mask, zh_rate, zc_rate, w_mask, cand_mask)``.
    """

    __slots__ = ("cell", "reset_after", "bias", "T", "N", "C", "H", "K", "L", "D", "dtype", "x", "plan", "names",
                 "lengths", "masks", "cache", "batch_first", "unbatched", "where", "consumed", "grad_h_norm",
                 "grad_c_norm", "propagation", "noise", "device", "weights", "bn_frozen", "precision")

    def __init__(self, **kw):
        self.device = "cpu"  # "cuda": the cache is a fastrnn.cuda.DeviceArray
        self.precision = ""  # "bfloat16": the forward computed in bf16, and so does backward
        self.weights = None  # the arrays the plan reads, in its order (CUDA: passed again to backward)
        self.noise = None
        self.bn_frozen = False  # batch norm with the running statistics in a training call
        for k, v in kw.items():
            setattr(self, k, v)
        self.consumed = False
        self.grad_h_norm = self.grad_c_norm = self.propagation = None

    @property
    def output_shape(self):
        T, N, DK = self.T, self.N, self.D * self.K
        if self.unbatched:
            return (T, DK)
        return (N, T, DK) if self.batch_first else (T, N, DK)

    @property
    def state_shape(self):
        S = self.L * self.D
        return (S, self.K) if self.unbatched else (S, self.N, self.K)

    @property
    def cell_state_shape(self):
        S = self.L * self.D
        return (S, self.H) if self.unbatched else (S, self.N, self.H)


class _Weights:
    """A validated weight set on its plan: what a layer keeps between calls (`prepare`)."""

    __slots__ = ("plan", "dtype", "C", "H", "names", "sources", "arrays", "key", "plan_names", "copied")

    def __init__(self, plan, dtype, C, H, names, sources, arrays, key, copied=False):
        # names: the parameters' (buffers excluded); sources: every array as given, in the plan's
        # order; arrays: what the plan reads (contiguous copies where a source was not: `copied`,
        # and then later writes to the source do not reach the plan, which must not be kept).
        self.plan, self.dtype, self.C, self.H = plan, dtype, C, H
        self.names, self.sources, self.arrays, self.key = names, tuple(sources), arrays, key
        self.copied = copied


def _shape_of(params, where, cell, proj_size):
    """(dtype, C, H) from weight_ih_l0 and weight_hh_l0."""
    if not isinstance(params, dict):
        raise TypeError(f"{where}: params must be a dict of name -> array, got {type(params).__name__}")
    if "weight_hh_l0" not in params or "weight_ih_l0" not in params:
        raise KeyError(f"{where}: params is missing 'weight_ih_l0'/'weight_hh_l0'")
    w_hh = V.to_numpy(params["weight_hh_l0"])
    w_ih = V.to_numpy(params["weight_ih_l0"])
    dtype = V.as_dtype(w_hh.dtype, f"{where}: weight_hh_l0")
    if w_hh.ndim != 2 or w_ih.ndim != 2:
        raise ValueError(f"{where}: weights must be 2-D, got weight_ih_l0 {w_ih.shape}, weight_hh_l0 {w_hh.shape}")
    # H from W_hh: its columns, or with a projection its gate rows (its columns are P).
    H, C = (w_hh.shape[0] // _cells.gates(cell) if proj_size else w_hh.shape[1]), w_ih.shape[1]
    if proj_size and not 0 < proj_size < H:
        raise ValueError(f"{where}: proj_size={proj_size} must be in (0, hidden_size={H}) (torch's rule)")
    return dtype, C, H


def prepare(where, cell, params, num_layers, bidirectional, bias, *, buffers=None, **config):
    """Validate a weight dict (and a Li-GRU's running statistics) against the plan of `config`;
    returns the `_Weights` a call runs on. Layers keep it while their arrays stay the same."""
    dtype, C, H = _shape_of(params, where, cell, config.get("proj_size", 0))
    plan = _config(cell, C, H, num_layers, bidirectional, bias, dtype, **config)
    names, sources, arrays, copied = [], [], [], False
    for name, shape, is_buffer in plan.parameters:
        source = (buffers or {}) if is_buffer else params
        if name not in source:
            what = "buffers" if is_buffer else "params"
            raise KeyError(f"{where}: {what} is missing {name!r} (expected shape {tuple(shape)})")
        sources.append(source[name])
        a = V.to_numpy(source[name])
        if a.dtype != dtype:
            raise TypeError(f"{where}: {name} has dtype {a.dtype}, expected {dtype} like weight_hh_l0")
        if a.shape != tuple(shape):
            raise ValueError(f"{where}: {name} has shape {a.shape}, expected {tuple(shape)}")
        if is_buffer:  # updated in place by training calls: never a copy
            if not (a.flags.c_contiguous and a.flags.writeable):
                raise ValueError(f"{where}: buffer {name} must be a writable C-contiguous array")
        else:
            contiguous = V.contiguous(a)
            copied |= contiguous is not a
            a = contiguous
            names.append(name)
        arrays.append(a)
    plan.set_weights(arrays)
    return _Weights(plan, dtype, C, H, names, sources, arrays, None, copied)


_NOISE_KEYS = ("rec_mask", "zh_mask", "zc_mask", "zh_rate", "zc_rate", "w_mask", "cand_mask")


def _noise_tuple(noise):
    """The noise dict of a call as `Context.noise` keeps it (None when empty)."""
    if not noise:
        return None
    return tuple(noise.get(k, 0.0 if k.endswith("rate") else None) for k in _NOISE_KEYS)


def _noise_kwargs(noise):
    return {} if noise is None else {k: v for k, v in zip(_NOISE_KEYS, noise) if v is not None}


def _check_rate(p, name, where):
    """A probability in [0, 1) (the regularizers' rates)."""
    if type(p) is float and 0.0 <= p < 1.0:  # the common case, without the slower ABC checks
        return p
    if isinstance(p, (bool, np.bool_)) or not isinstance(p, numbers.Real):
        raise TypeError(f"{where}: {name} must be a float, got {type(p).__name__}")
    if not 0.0 <= float(p) < 1.0:
        raise ValueError(f"{where}: {name} must be in [0, 1), got {p}")
    return float(p)


def _check_variants(where, cell, reset_after, proj_size, peephole, layer_norm, zoneout_h, zoneout_c,
                    recurrent_dropout=0.0, weight_drop=0.0):
    """Each variant against what the cell takes (the cell table)."""
    if type(proj_size) is int and not (proj_size or peephole or layer_norm or zoneout_h or zoneout_c
                                       or recurrent_dropout or weight_drop):
        return  # the plain cells
    if isinstance(proj_size, (bool, np.bool_)) or not isinstance(proj_size, numbers.Integral):
        raise TypeError(f"{where}: proj_size must be an int, got {type(proj_size).__name__}")
    if proj_size < 0:
        raise ValueError(f"{where}: proj_size must be >= 0, got {proj_size}")
    info = _cells.info(cell, reset_after)
    for name, value in (("proj_size", proj_size), ("peephole", peephole), ("layer_norm", layer_norm),
                        ("zoneout_h", zoneout_h), ("zoneout_c", zoneout_c),
                        ("recurrent_dropout", recurrent_dropout), ("weight_drop", weight_drop)):
        if value and not info.variants[name]:
            raise ValueError(f"{where}: {_cells.variant_rule(name)} (got cell {cell!r}"
                             + (f", reset_after={reset_after})" if name == "layer_norm" and cell == "gru" else ")"))
    if layer_norm and (proj_size or peephole):
        raise ValueError(f"{where}: layer_norm cannot be combined with proj_size or peephole")


def _draw_noise(gen, dtype, L, D, T, N, H, K, G, rec_p, zh, zc, wd, cand=0.0):
    """The regularizers' masks of one training forward, drawn from `gen` in a fixed order:
    rec_mask [L*D, N, K] scaled, zh_mask [L*D, T, N, K], zc_mask [L*D, T, N, H] (1 keeps the previous
    value), w_mask [L*D, G*H, K] scaled, cand_mask [L*D, N, H] scaled (Li-GRU); {} when every rate is
    zero."""
    S = L * D

    def keep(shape, p):
        return ((gen.random(shape) >= p) / (1.0 - p)).astype(dtype)
    noise = {}
    if rec_p:
        noise["rec_mask"] = keep((S, N, K), rec_p)
    if zh:
        noise["zh_mask"] = (gen.random((S, T, N, K)) < zh).astype(dtype)
    if zc:
        noise["zc_mask"] = (gen.random((S, T, N, H)) < zc).astype(dtype)
    if wd:
        noise["w_mask"] = keep((S, G * H, K), wd)
    if cand:
        noise["cand_mask"] = keep((S, N, H), cand)
    return noise


def _check_noise(noise, where, dtype, shapes):
    """Explicit masks (the torch front end draws them from torch's RNG): a dict with some of the
    keys of `shapes`, each of the expected shape."""
    if not isinstance(noise, dict):
        raise TypeError(f"{where}: noise must be a dict of masks, got {type(noise).__name__}")
    unknown = set(noise) - set(shapes)
    if unknown:
        raise ValueError(f"{where}: noise has unknown keys {sorted(unknown)}; expected some of {sorted(shapes)}")
    out = {}
    for key, shape in shapes.items():
        m = noise.get(key)
        if m is not None:
            m = V.float_array(m, dtype, where, f"noise[{key!r}]")
            if m.shape != shape:
                raise ValueError(f"{where}: noise[{key!r}] has shape {m.shape}, expected {shape}")
            out[key] = V.contiguous(m)
    return out


COMPUTE_DTYPES = ("float32", "float64", "bfloat16", "int8")


def _check_compute_dtype(compute_dtype, dtype, training, device, where):
    """The core's precision of a call: "" (the parameters' dtype), "int8" or "bfloat16"."""
    if compute_dtype is None:
        return ""
    name = compute_dtype if isinstance(compute_dtype, str) else getattr(np.dtype(compute_dtype), "name", None) \
        if isinstance(compute_dtype, (type, np.dtype)) else None
    if name not in COMPUTE_DTYPES:
        raise ValueError(f"{where}: compute_dtype={compute_dtype!r}; expected None (the parameters' dtype), "
                         f"{', '.join(map(repr, COMPUTE_DTYPES))}")
    if name in ("float32", "float64"):
        if name != np.dtype(dtype).name:
            raise ValueError(f"{where}: compute_dtype={name!r} with {np.dtype(dtype).name} parameters; float "
                             "compute runs in the parameters' dtype (or use 'bfloat16' or 'int8' with float32)")
        return ""
    what = "quantizes" if name == "int8" else "rounds"
    if np.dtype(dtype) != np.float32:
        raise ValueError(f"{where}: compute_dtype={name!r} {what} float32 parameters, got {np.dtype(dtype).name}")
    if training and name == "int8":
        raise ValueError(f"{where}: compute_dtype='int8' is dynamic quantization for inference (training=False); "
                         "int8 has no gradients: train in float32 (or bfloat16) and quantize the trained weights")
    if device != "cpu":
        raise ValueError(f"{where}: compute_dtype={name!r} runs on the CPU, got device={device!r}")
    return name


def _forward(cell, x, params, hx, lengths, *, num_layers, bidirectional, bias, batch_first, dropout,
             training, rng, reset_after, where, masks=None, proj_size=0, peephole=False, layer_norm=False,
             recurrent_dropout=0.0, zoneout_h=0.0, zoneout_c=0.0, weight_drop=0.0, noise=None,
             sample_noise=True, device="cpu", nonlinearity="relu", normalization=None, momentum=0.05,
             recurrent_affine=False, candidate_dropout=0.0, buffers=None, weights=None, compute_dtype=None):
    # sample_noise=False: a training forward (a cache for backward) with the regularizers in their
    # inference form (the torch front end differentiating a module in eval mode).
    # weights: a `_Weights` a layer prepared earlier (its plan reused; W_hh stays packed in inference).
    num_layers = V.check_positive_int(num_layers, "num_layers", where)
    dropout = V.check_dropout(dropout, where)
    rec_p = _check_rate(recurrent_dropout, "recurrent_dropout", where)
    zoneout_h = _check_rate(zoneout_h, "zoneout_h", where)
    zoneout_c = _check_rate(zoneout_c, "zoneout_c", where)
    wd = _check_rate(weight_drop, "weight_drop", where)
    cand = _check_rate(candidate_dropout, "candidate_dropout", where)
    _check_variants(where, cell, reset_after, proj_size, peephole, layer_norm, zoneout_h, zoneout_c, rec_p, wd)
    if cand and not _cells.info(cell).variants["candidate_dropout"]:
        raise ValueError(f"{where}: {_cells.variant_rule('candidate_dropout')} (got cell {cell!r})")
    device = _cuda.check_device(device, where)
    if device == "cuda":
        _cuda.check_plain(where, proj_size=proj_size, peephole=peephole, layer_norm=layer_norm,
                          recurrent_dropout=rec_p, zoneout_h=zoneout_h, zoneout_c=zoneout_c, weight_drop=wd,
                          noise=noise, cell=cell)
    peephole, layer_norm = bool(peephole), bool(layer_norm)
    zc_layout = bool(zoneout_c) or (noise is not None and noise.get("zc_mask") is not None)
    if weights is None:
        weights = prepare(where, cell, params, num_layers, bidirectional, bias, buffers=buffers,
                          reset_after=reset_after, proj_size=proj_size, peephole=peephole, layer_norm=layer_norm,
                          zoneout_c=zc_layout, nonlinearity=nonlinearity, normalization=normalization,
                          momentum=momentum, recurrent_affine=recurrent_affine)
    plan, dtype, C, H = weights.plan, weights.dtype, weights.C, weights.H
    precision = _check_compute_dtype(compute_dtype, dtype, training, device, where)
    D = 2 if bidirectional else 1
    L = num_layers
    K = proj_size or H
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
    G = _cells.gates(cell)
    V.check_blas_sizes(where, **{"T*N": T * N, "T*N*C": T * N * C, "T*N*G*H": T * N * G * H, "T*N*D*K": T * N * D * K})
    x3 = V.contiguous(x3)

    state_letters = ("L*D", "K" if proj_size else "H") if unbatched else ("L*D", "N", "K" if proj_size else "H")
    h0 = c0 = None
    if hx is not None:
        if is_lstm:
            if not isinstance(hx, (tuple, list)) or len(hx) != 2:
                raise TypeError(f"{where}: hx must be a tuple (h0, c0) for LSTM, got {type(hx).__name__}")
            h0, c0 = hx
        else:
            h0 = hx
        h0 = V.float_array(h0, dtype, where, "h0", device)
        V.expect_shape(h0, (L * D, K) if unbatched else (L * D, N, K), where, "h0", state_letters)
        h0 = V.contiguous(h0)
        if c0 is not None:
            c0 = V.float_array(c0, dtype, where, "c0", device)
            V.expect_shape(c0, (L * D, H) if unbatched else (L * D, N, H), where, "c0",
                           ("L*D", "H") if unbatched else ("L*D", "N", "H"))
            c0 = V.contiguous(c0)
    lens = None if lengths is None else V.lengths_array(lengths, N, T, where)
    bn_frozen = training and not sample_noise and normalization == "batchnorm"
    if training and not bn_frozen and normalization == "batchnorm" and (T * N if lens is None else int(lens.sum())) < 2:
        raise ValueError(f"{where}: batch norm in training needs more than one valid row (T*N = {T * N}), "
                         "as torch.nn.BatchNorm1d")

    use_dropout = training and dropout > 0.0 and L > 1
    gen = None
    if masks is not None:  # explicit masks (the torch front end draws them from torch's RNG)
        if not use_dropout:
            raise ValueError(f"{where}: masks given but dropout does not apply "
                             "(it needs training=True, dropout > 0 and num_layers > 1)")
        masks = V.float_array(masks, dtype, where, "masks", device)
        V.expect_shape(masks, (L - 1, T, N, D * K), where, "masks", ("L-1", "T", "N", "D*K" if proj_size else "D*H"))
        masks = V.contiguous(masks)
    elif use_dropout:
        gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        keep = gen.random((L - 1, T, N, D * K)) >= dropout
        masks = (keep / (1.0 - dropout)).astype(dtype)

    # Regularizer noise: masks in training (drawn after the dropout masks), zoneout's expected
    # update in inference.
    S = L * D
    if noise is not None:
        if not training:
            raise ValueError(f"{where}: noise masks given for an inference forward (training=False)")
        noise = _check_noise(noise, where, dtype, {"rec_mask": (S, N, K), "zh_mask": (S, T, N, K),
                                                  "zc_mask": (S, T, N, H), "w_mask": (S, G * H, K),
                                                  "cand_mask": (S, N, H)})
    elif training and sample_noise:
        if rec_p or zoneout_h or zoneout_c or wd or cand:
            gen = gen or V.generator(rng, where)
        noise = _draw_noise(gen, dtype, L, D, T, N, H, K, G, rec_p, zoneout_h, zoneout_c, wd, cand)
    else:
        noise = {}
        if zoneout_h or zoneout_c:
            noise = {"zh_rate": zoneout_h, "zc_rate": zoneout_c}

    if precision and noise.get("w_mask") is not None:
        raise ValueError(f"{where}: compute_dtype={precision!r} with weight_drop (DropConnect): the {precision} "
                         "weights are converted once per call from the parameters, not from the masked ones; train "
                         "weight_drop models with compute_dtype=None")
    out = np.empty((T, N, D * K), dtype)
    h_n = np.empty((L * D, N, K), dtype)
    c_n = np.empty((L * D, N, H), dtype) if is_lstm else None
    cache = None
    if training:
        size = plan.cache_size(T, N, use_dropout)
        cache = np.empty(size, dtype) if device == "cpu" else _cuda.empty(size, dtype)
    if device == "cpu":
        plan.forward(x3, out, h_n, c_n, h0, c0, lens, cache, masks, packed=weights.key is not None, bn_frozen=bn_frozen,
                     precision=precision, **noise)
    else:
        _cuda.numpy_core.forward(plan, weights.arrays, x3, out, h_n, c_n, h0, c0, lens, cache, masks)

    ctx = None
    if training:
        ctx = Context(cell=cell, reset_after=reset_after, bias=bias, T=T, N=N, C=C, H=H, K=K, L=L, D=D, dtype=dtype,
                      x=x3, plan=plan, names=weights.names, lengths=lens, masks=masks, cache=cache,
                      batch_first=batch_first, unbatched=unbatched, where=where, noise=_noise_tuple(noise),
                      device=device, weights=weights.arrays, bn_frozen=bn_frozen, precision=precision)
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
    u = "D*K" if ctx.K != ctx.H else "D*H"
    letters = ("T", u) if ctx.unbatched else (("N", "T", u) if ctx.batch_first else ("T", "N", u))
    V.expect_shape(a, ctx.output_shape, where, name, letters)
    if ctx.unbatched:
        a = a[:, None, :]
    elif ctx.batch_first:
        a = a.swapaxes(0, 1)
    return V.contiguous(a)


def _state_grad(a, ctx, name, cell_state=False):
    if a is None:
        return None
    where = ctx.where.replace("forward", "backward")
    a = V.float_array(a, ctx.dtype, where, name, ctx.device)
    units = "H" if cell_state or ctx.K == ctx.H else "K"
    letters = ("L*D", units) if ctx.unbatched else ("L*D", "N", units)
    V.expect_shape(a, ctx.cell_state_shape if cell_state else ctx.state_shape, where, name, letters)
    return V.contiguous(a).reshape(ctx.L * ctx.D, ctx.N, ctx.H if cell_state else ctx.K)


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
    gcn = _state_grad(grad_c_n, ctx, "grad_c_n", cell_state=True) if ctx.cell == "lstm" else None
    if grad_c_n is not None and ctx.cell != "lstm":
        raise ValueError(f"{where}: grad_c_n is only valid for LSTM")
    clip = V.check_bptt_clip(bptt_clip, where) or 0.0

    dtype = ctx.dtype
    shapes = {name: tuple(shape) for name, shape, buffer in ctx.plan.parameters if not buffer}
    if grads is None:
        grads = {name: np.zeros(shapes[name], dtype) for name in ctx.names}
    else:
        for name in ctx.names:
            g = grads.get(name)
            if not isinstance(g, np.ndarray) or g.shape != shapes[name] or g.dtype != dtype \
                    or not g.flags.c_contiguous or not g.flags.writeable:
                raise ValueError(f"{where}: grads[{name!r}] must be a writable C-contiguous {dtype} array of shape "
                                 f"{shapes[name]}")
    grad_list = [grads[name] if not buffer else None for name, _, buffer in ctx.plan.parameters]
    S = ctx.L * ctx.D
    grad_x = np.empty((ctx.T, ctx.N, ctx.C), dtype)
    grad_h0 = np.empty((S, ctx.N, ctx.K), dtype)
    grad_c0 = np.empty((S, ctx.N, ctx.H), dtype) if ctx.cell == "lstm" else None
    h_sq = np.zeros((ctx.L, ctx.D, ctx.T)) if record else None
    c_sq = np.zeros((ctx.L, ctx.D, ctx.T)) if record and ctx.cell == "lstm" else None
    r_sq = np.zeros((ctx.L, ctx.D, ctx.T)) if record else None
    p_sq = np.zeros((ctx.L, ctx.D, ctx.T)) if record else None
    ctx.consumed = not retain
    diag = dict(grad_h_sq=h_sq, grad_c_sq=c_sq, carried_sq=r_sq, prev_state_sq=p_sq)
    if ctx.device == "cpu":
        ctx.plan.backward(ctx.x, ctx.cache, go, ghn, gcn, grad_x, grad_h0, grad_c0, grad_list, ctx.lengths, ctx.masks,
                          retain, clip, bn_frozen=ctx.bn_frozen, precision=ctx.precision, **diag,
                          **_noise_kwargs(ctx.noise))
    else:
        _cuda.numpy_core.backward(ctx.plan, ctx.weights, ctx.x, ctx.cache, go, ghn, gcn, grad_x, grad_h0, grad_c0,
                                  grad_list, ctx.lengths, ctx.masks, retain, clip, **diag)
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


def notify_forward(recorders, layer, ctx):
    """Called by the layers after a training forward: the cache statistics, once for all recorders
    (fastrnn.diagnostics.record objects, which the layers hold and call through `_on_forward`)."""
    stats = forward_stats(ctx)  # one pass over the cache, before backward consumes it
    for r in recorders:
        r._on_forward(layer, ctx, stats)


def forward_stats(ctx):
    """Gate saturation and the first non-finite value of a training forward, read from its cache.

    Returns ``(saturation, first_nonfinite)``: ``saturation`` is ``[L, D, T, S]`` (float64), per
    step the fraction of valid units whose gate is saturated — S statistics per cell (the cell
    table): LSTM i, f, g, o; GRU r, z, n; Li-GRU candidate, update; tanh RNN the fraction with
    |h| > 0.99; ReLU RNN the fraction of dead units (h <= 0); sigmoid gates count below 0.01 or
    above 0.99, tanh gates |v| > 0.99; NaN where a step has no valid row. ``first_nonfinite`` is
    None or a dict ``layer``, ``direction``, ``step``, ``quantity`` ("gate", "hidden state",
    "cell state") of the first NaN/Inf in forward order. Call it before `backward`, which
    consumes the cache.
    """
    if not isinstance(ctx, Context):
        raise TypeError(f"forward_stats: ctx must be a Context from a training forward, got {type(ctx).__name__}")
    if ctx.cache is None or ctx.consumed:
        raise RuntimeError("forward_stats: the context's cache was consumed by backward; call it before backward")
    saturation = np.empty((ctx.L, ctx.D, ctx.T, ctx.plan.saturation_stats))
    cache = ctx.cache if ctx.device == "cpu" else ctx.cache.get()
    layer, direction, t, what = ctx.plan.forward_stats(cache, ctx.T, ctx.N, ctx.lengths, saturation,
                                                       ctx.masks is not None)
    first = None
    if layer >= 0:
        first = dict(layer=layer, direction=direction, step=t,
                     quantity=("gate", "hidden state", "cell state")[what])
    return saturation, first


def rnn_forward(x, params, hx=None, lengths=None, *, num_layers=1, nonlinearity="tanh", bias=True,
                batch_first=False, bidirectional=False, dropout=0.0, training=False, rng=None, masks=None,
                recurrent_dropout=0.0, weight_drop=0.0, noise=None, device="cpu", compute_dtype=None):
    """Elman RNN stack: ``h' = act(W_ih x + b_ih + W_hh h + b_hh)``, act = tanh or relu.

    Returns ``(output, h_n, ctx)``; ``ctx`` is None unless ``training`` (then pass it to `backward`).
    ``masks`` (optional): dropout masks ``[L-1, T, N, D*H]`` already scaled by ``1/(1-dropout)``, used
    instead of drawing them from ``rng`` when dropout applies (``training``, ``dropout > 0``, ``L > 1``).
    ``recurrent_dropout`` (``W_hh (h ⊙ m)``, one mask per sequence, Gal & Ghahramani 2016) and
    ``weight_drop`` (``W_hh ⊙ M``, DropConnect, Wan et al. 2013) apply in training only; their
    masks come from ``rng``, or from ``noise`` (a dict with ``rec_mask [L*D, N, H]`` and/or
    ``w_mask [L*D, H, H]``, scaled by ``1/(1-p)``).
    """
    if nonlinearity not in ("tanh", "relu"):
        raise ValueError(f"rnn_forward: unknown nonlinearity {nonlinearity!r}; expected 'tanh' or 'relu'")
    out, h_n, _, ctx = _forward(f"rnn_{nonlinearity}", x, params, hx, lengths, num_layers=num_layers,
                                bidirectional=bidirectional, bias=bias, batch_first=batch_first, dropout=dropout,
                                training=training, rng=rng, reset_after=True, where="rnn_forward",
                                masks=masks, recurrent_dropout=recurrent_dropout, weight_drop=weight_drop,
                                noise=noise, device=device, compute_dtype=compute_dtype)
    return out, h_n, ctx


def lstm_forward(x, params, hx=None, lengths=None, *, num_layers=1, bias=True, batch_first=False,
                 bidirectional=False, dropout=0.0, training=False, rng=None, masks=None, proj_size=0,
                 peephole=False, layer_norm=False, recurrent_dropout=0.0, zoneout_h=0.0, zoneout_c=0.0,
                 weight_drop=0.0, noise=None, device="cpu", compute_dtype=None):
    """LSTM stack (gates i, f, g, o): ``c' = f*c + i*g``, ``h' = o*tanh(c')``, and its variants.

    `hx` is None or ``(h0, c0)``, h0 ``[L*D, N, K]``, c0 ``[L*D, N, H]``. Returns
    ``(output, (h_n, c_n), ctx)``; output ``[T, N, D*K]`` (K = ``proj_size`` or H).
    ``masks`` (optional): dropout masks ``[L-1, T, N, D*K]`` already scaled by ``1/(1-dropout)``, used
    instead of drawing them from ``rng`` when dropout applies (``training``, ``dropout > 0``, ``L > 1``).

    Variants (docs/variants.md), with ``a_* = W_i* x + b_i* + W_h* h + b_h*``:

    - ``proj_size=P`` (LSTMP, Sak et al. 2014; exactly ``torch.nn.LSTM(proj_size=P)``):
      ``h' = W_hr (o ⊙ tanh(c'))``, parameter ``weight_hr_l{k}`` ``[P, H]``.
    - ``peephole=True`` (Gers & Schmidhuber 2000; ONNX LSTM's ``P`` input):
      ``i = σ(a_i + p_i⊙c)``, ``f = σ(a_f + p_f⊙c)``, ``o = σ(a_o + p_o⊙c')``, parameter
      ``weight_peephole_l{k}`` ``[3, H]`` = (p_i, p_f, p_o).
    - ``layer_norm=True`` (Ba et al. 2016, the Haste formulation): ``a = LN_γih(W_ih x) +
      LN_γhh(W_hh h) + b_ih + b_hh``, ``h' = o ⊙ tanh(LN_γc,βc(c'))``; LN normalizes each row over
      its 4H (or H) features, ``(v - mean) / sqrt(var + 1e-5)``, then scales (and shifts).
      Parameters ``ln_ih_weight``/``ln_hh_weight`` ``[4H]``, ``ln_c_weight``/``ln_c_bias`` ``[H]``.
    - ``recurrent_dropout=p`` (Gal & Ghahramani 2016, Keras): ``W_hh (h ⊙ m)``, m ∈ {0, 1/(1-p)}
      drawn once per sequence (and layer, direction); the state and output are not dropped.
    - ``zoneout_h``, ``zoneout_c`` (Krueger et al. 2017): ``c' = c~ + d_c⊙(c - c~)``,
      ``h' = h~ + d_h⊙(h - h~)`` with ``h~ = o ⊙ tanh(c~)`` and d ~ Bernoulli(rate) per step; in
      inference d is replaced by the rate (the expected update).
    - ``weight_drop=p`` (DropConnect on W_hh; Wan et al. 2013, Merity et al. 2017): the
      recurrence uses ``W_hh ⊙ M``, M ∈ {0, 1/(1-p)}, one mask per call; dW_hh is masked too.

    The regularizers act in training only (zoneout: its expectation in inference); ``noise``
    (optional) gives their masks instead of ``rng``: a dict with ``rec_mask [L*D, N, K]``,
    ``zh_mask [L*D, T, N, K]``, ``zc_mask [L*D, T, N, H]`` (1 keeps the previous value) and
    ``w_mask [L*D, 4H, K]``.

    Examples
    --------
    >>> import numpy as np, fastrnn
    >>> lstm = fastrnn.LSTM(3, 8, proj_size=4, peephole=True, rng=0)
    >>> out, (h_n, c_n), _ = fastrnn.functional.lstm_forward(np.ones((5, 2, 3), np.float32), lstm.params,
    ...                                                      proj_size=4, peephole=True)
    >>> out.shape, h_n.shape, c_n.shape
    ((5, 2, 4), (1, 2, 4), (1, 2, 8))
    """
    out, h_n, c_n, ctx = _forward("lstm", x, params, hx, lengths, num_layers=num_layers, bidirectional=bidirectional,
                                  bias=bias, batch_first=batch_first, dropout=dropout, training=training, rng=rng,
                                  reset_after=True, where="lstm_forward", masks=masks, proj_size=proj_size,
                                  peephole=peephole, layer_norm=layer_norm, recurrent_dropout=recurrent_dropout,
                                  zoneout_h=zoneout_h, zoneout_c=zoneout_c, weight_drop=weight_drop, noise=noise,
                                  device=device, compute_dtype=compute_dtype)
    return out, (h_n, c_n), ctx


def gru_forward(x, params, hx=None, lengths=None, *, num_layers=1, bias=True, batch_first=False,
                bidirectional=False, dropout=0.0, training=False, rng=None, reset_after=True, masks=None,
                layer_norm=False, recurrent_dropout=0.0, zoneout_h=0.0, weight_drop=0.0, noise=None, device="cpu",
                compute_dtype=None):
    """GRU stack (gates r, z, n): ``h' = (1-z)*n + z*h``; ``reset_after`` selects
    ``n = tanh(W_in x + b_in + r*(W_hn h + b_hn))`` (True, PyTorch) or
    ``n = tanh(W_in x + b_in + W_hn (r*h) + b_hn)`` (False, Keras v1 / ONNX default).

    Returns ``(output, h_n, ctx)``.
    ``masks`` (optional): dropout masks ``[L-1, T, N, D*H]`` already scaled by ``1/(1-dropout)``, used
    instead of drawing them from ``rng`` when dropout applies (``training``, ``dropout > 0``, ``L > 1``).

    ``layer_norm=True`` (reset_after only; Ba et al. 2016, the Haste formulation):
    ``vx = LN_γih(W_ih x) + b_ih``, ``vh = LN_γhh(W_hh h) + b_hh``, ``r = σ(vx_r + vh_r)``,
    ``z = σ(vx_z + vh_z)``, ``n = tanh(vx_n + r⊙vh_n)``; parameters ``ln_ih_weight``,
    ``ln_hh_weight`` ``[3H]``. ``recurrent_dropout`` (the recurrent GEMMs read ``h ⊙ m``;
    reset_after=False: ``W_hn (r ⊙ h ⊙ m)``; the ``z⊙h`` term keeps h), ``zoneout_h`` and
    ``weight_drop``: as in `lstm_forward` (``noise``: ``rec_mask``, ``zh_mask``, ``w_mask``).
    """
    out, h_n, _, ctx = _forward("gru", x, params, hx, lengths, num_layers=num_layers, bidirectional=bidirectional,
                                bias=bias, batch_first=batch_first, dropout=dropout, training=training, rng=rng,
                                reset_after=bool(reset_after), where="gru_forward", masks=masks,
                                layer_norm=layer_norm, recurrent_dropout=recurrent_dropout, zoneout_h=zoneout_h,
                                weight_drop=weight_drop, noise=noise, device=device, compute_dtype=compute_dtype)
    return out, h_n, ctx


def _check_ligru(where, nonlinearity, normalization, momentum):
    if nonlinearity not in _cells.ACTIVATIONS:
        raise ValueError(f"{where}: unknown nonlinearity {nonlinearity!r}; expected one of "
                         f"{', '.join(map(repr, _cells.ACTIVATIONS))}")
    if normalization not in _cells.NORMALIZATIONS:
        raise ValueError(f"{where}: unknown normalization {normalization!r}; expected 'batchnorm', 'layernorm' "
                         "or None")
    if isinstance(momentum, (bool, np.bool_)) or not isinstance(momentum, numbers.Real) or not 0 <= momentum <= 1:
        raise ValueError(f"{where}: momentum must be a number in [0, 1], got {momentum!r}")
    return float(momentum)


def ligru_forward(x, params, hx=None, lengths=None, *, num_layers=1, nonlinearity="relu", normalization="batchnorm",
                  bias=True, batch_first=False, bidirectional=False, dropout=0.0, candidate_dropout=0.0,
                  training=False, rng=None, buffers=None, momentum=0.05, masks=None, noise=None, compute_dtype=None):
    """Li-GRU stack (Ravanelli et al. 2018; SpeechBrain's ``LiGRU``), gates a (candidate) and z::

        w = norm(W_ih x)                  over the whole sequence, before the recurrence
        z = σ(w_z + U_z h),  c = act(w_a + U_a h),  h' = z⊙h + (1 - z)⊙m⊙c

    ``nonlinearity`` act: "relu" (default), "tanh", "sin" or "leaky_relu" (slope 0.01).
    ``normalization``: "batchnorm" (default; batch statistics of the valid rows in training,
    padded steps excluded, running statistics in ``buffers`` in inference, updated in place by
    training calls with ``momentum``), "layernorm" (per row), or None (then ``bias`` adds
    ``bias_ih``). m: ``candidate_dropout`` (SpeechBrain's ``dropout``): one mask per sequence
    (and layer, direction) on the candidate, training only, from ``rng`` or ``noise``
    (``{"cand_mask": [L*D, N, H]}``, scaled by ``1/(1-p)``). ``dropout`` is dropout between layers
    (torch's meaning; ``masks`` as in `lstm_forward`). Parameters (`param_shapes`):
    ``weight_ih_l{k}`` ``[2H, C_k]`` (SpeechBrain's ``w``), ``weight_hh_l{k}`` ``[2H, H]`` (``u``),
    ``norm_weight_l{k}``/``norm_bias_l{k}`` ``[2H]``; buffers ``norm_running_mean_l{k}``,
    ``norm_running_var_l{k}``. Time-major, separate ``_reverse`` weights and ``lengths`` as every
    fastrnn cell (SpeechBrain's own layout is `fastrnn.torch.LiGRU`). Returns ``(output, h_n, ctx)``.

    Examples
    --------
    >>> import numpy as np, fastrnn
    >>> layer = fastrnn.LiGRU(3, 4, rng=0)
    >>> out, h_n, ctx = fastrnn.functional.ligru_forward(np.ones((5, 2, 3), np.float32), layer.params,
    ...                                                  buffers=layer.buffers, training=True)
    >>> out.shape, h_n.shape, float(layer.buffers["norm_running_mean_l0"][0]) != 0.0
    ((5, 2, 4), (1, 2, 4), True)
    """
    momentum = _check_ligru("ligru_forward", nonlinearity, normalization, momentum)
    out, h_n, _, ctx = _forward("ligru", x, params, hx, lengths, num_layers=num_layers, bidirectional=bidirectional,
                                bias=bias, batch_first=batch_first, dropout=dropout, training=training, rng=rng,
                                reset_after=True, where="ligru_forward", masks=masks, noise=noise,
                                nonlinearity=nonlinearity, normalization=normalization, momentum=momentum,
                                candidate_dropout=candidate_dropout, buffers=buffers, compute_dtype=compute_dtype)
    return out, h_n, ctx


def sligru_forward(x, params, hx=None, lengths=None, *, num_layers=1, nonlinearity="relu", normalization="batchnorm",
                   recurrent_affine=False, bias=True, batch_first=False, bidirectional=False, dropout=0.0,
                   candidate_dropout=0.0, training=False, rng=None, buffers=None, momentum=0.05, masks=None,
                   noise=None, compute_dtype=None):
    """SLi-GRU stack (Moumen & Parcollet 2023; SpeechBrain's ``SLiGRU``): `ligru_forward` with a
    LayerNorm of the recurrent product, ``U h -> LN(U h)`` (over its 2H features, eps 1e-5), with
    a gain and shift (``ln_hh_weight_l{k}``, ``ln_hh_bias_l{k}``) when ``recurrent_affine``
    (SpeechBrain's ``recurrent_elementwise_affine``), else none. Returns ``(output, h_n, ctx)``."""
    momentum = _check_ligru("sligru_forward", nonlinearity, normalization, momentum)
    out, h_n, _, ctx = _forward("sligru", x, params, hx, lengths, num_layers=num_layers, bidirectional=bidirectional,
                                bias=bias, batch_first=batch_first, dropout=dropout, training=training, rng=rng,
                                reset_after=True, where="sligru_forward", masks=masks, noise=noise,
                                nonlinearity=nonlinearity, normalization=normalization, momentum=momentum,
                                recurrent_affine=recurrent_affine, candidate_dropout=candidate_dropout,
                                buffers=buffers, compute_dtype=compute_dtype)
    return out, h_n, ctx
