"""Shared test helpers: run fastrnn and the float64 reference on the same problem."""
import numpy as np

import fastrnn

# (cell name used by the core, constructor, extra kwargs)
CELLS = {
    "rnn_tanh": ("rnn", {"nonlinearity": "tanh"}),
    "rnn_relu": ("rnn", {"nonlinearity": "relu"}),
    "lstm": ("lstm", {}),
    "gru": ("gru", {"reset_after": True}),
    "gru_v1": ("gru", {"reset_after": False}),
}
LAYER = {"rnn": fastrnn.RNN, "lstm": fastrnn.LSTM, "gru": fastrnn.GRU}


def make_layer(cell, C, H, dtype=np.float64, seed=0, **kw):
    kind, extra = CELLS[cell]
    return LAYER[kind](C, H, dtype=dtype, rng=seed, **extra, **kw)


def ref_kwargs(layer):
    kind = {fastrnn.RNN: "rnn", fastrnn.LSTM: "lstm", fastrnn.GRU: "gru"}[type(layer)]
    return kind, dict(num_layers=layer.num_layers, bidirectional=layer.bidirectional,
                      nonlinearity=getattr(layer, "nonlinearity", "tanh"),
                      reset_after=getattr(layer, "reset_after", True), bias=layer.bias)


def to_time_major(a, batch_first, unbatched):
    if unbatched:
        return a[:, None, :]
    return a.swapaxes(0, 1) if batch_first else a


def run_both(layer, x, hx=None, lengths=None, seed=7, rng_dropout=None):
    """Forward + backward with random output/state gradients through fastrnn and the reference.

    Returns two dicts with out, h_n, c_n, grad_x, grad_h0, grad_c0 and grads (all float64).
    """
    from fastrnn.core import reference as ref

    kind, kw = ref_kwargs(layer)
    lstm = kind == "lstm"
    r = np.random.default_rng(seed)
    unbatched = x.ndim == 2
    layer.zero_grad()
    layer.train()
    if rng_dropout is not None:
        layer.rng = np.random.default_rng(rng_dropout)
    out, state = layer(x, hx, lengths)
    h_n, c_n = state if lstm else (state, None)
    masks = layer._ctx.masks
    g_out = r.standard_normal(out.shape).astype(layer.dtype)
    g_h = r.standard_normal(h_n.shape).astype(layer.dtype)
    g_c = r.standard_normal(h_n.shape).astype(layer.dtype) if lstm else None
    back = layer.backward(g_out, g_h, g_c) if lstm else layer.backward(g_out, g_h)
    mine = dict(out=out, h_n=h_n, c_n=c_n, grad_x=back[0], grad_h0=back[1], grad_c0=back[2] if lstm else None,
                grads=dict(layer.grads))

    # The reference takes time-major batched float64 input.
    f64 = lambda a: None if a is None else np.asarray(a, np.float64)
    xt = to_time_major(f64(x), layer.batch_first, unbatched)
    S = layer.num_layers * layer.num_directions
    expand = (lambda s: s[:, None, :]) if unbatched else (lambda s: s)
    rhx = None
    if hx is not None:
        rhx = (expand(f64(hx[0])), expand(f64(hx[1]))) if lstm else expand(f64(hx))
    params = {k: f64(v) for k, v in layer.params.items()}
    rmasks = None if masks is None else [f64(m) for m in masks]
    o, hn, cn, cache = ref.forward(kind, xt, params, rhx, lengths, dropout_masks=rmasks, **kw)
    gx, gh0, gc0, grads = ref.backward(cache, to_time_major(f64(g_out), layer.batch_first, unbatched),
                                       expand(f64(g_h)), expand(f64(g_c)) if lstm else None)
    back_layout = (lambda a: a[:, 0, :]) if unbatched else ((lambda a: a.swapaxes(0, 1)) if layer.batch_first else (lambda a: a))
    squeeze = (lambda s: s[:, 0, :]) if unbatched else (lambda s: s)
    theirs = dict(out=back_layout(o), h_n=squeeze(hn), c_n=None if cn is None else squeeze(cn), grad_x=back_layout(gx),
                  grad_h0=squeeze(gh0), grad_c0=None if gc0 is None else squeeze(gc0), grads=grads)
    assert S == hn.shape[0]
    return mine, theirs


def scaled_error(a, b):
    """max |a - b| / max(1, max |b|): relative for large values, absolute near zero."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    if a.size == 0:
        return 0.0
    return float(np.max(np.abs(a - b)) / max(1.0, float(np.max(np.abs(b)))))


def assert_close_all(mine, theirs, tol):
    for key in ("out", "h_n", "c_n", "grad_x", "grad_h0", "grad_c0"):
        if theirs[key] is None:
            assert mine[key] is None, key
            continue
        err = scaled_error(mine[key], theirs[key])
        assert err <= tol, f"{key}: scaled error {err:.3g} > {tol}"
    assert set(mine["grads"]) == set(theirs["grads"])
    for name, g in theirs["grads"].items():
        err = scaled_error(mine["grads"][name], g)
        assert err <= tol, f"grad {name}: scaled error {err:.3g} > {tol}"


TOL = {np.float64: 1e-10, np.float32: 1e-5}
