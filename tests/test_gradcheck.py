"""Central finite differences (float64) of fastrnn itself: input, initial states, every parameter."""
import numpy as np
import pytest

from fastrnn import functional as F
from util import CELLS

EPS = 1e-6


def _run(cell, x, params, hx, lengths, kw, training, seed):
    kind = {"rnn_tanh": "rnn", "rnn_relu": "rnn", "lstm": "lstm", "gru": "gru", "gru_v1": "gru"}[cell]
    extra = dict(CELLS[cell][1])
    rng = np.random.default_rng(seed)  # the same dropout masks on every call
    if kind == "lstm":
        out, (h, c), ctx = F.lstm_forward(x, params, hx, lengths, training=training, rng=rng, **kw)
        return out, h, c, ctx
    fn = F.rnn_forward if kind == "rnn" else F.gru_forward
    out, h, ctx = fn(x, params, hx, lengths, training=training, rng=rng, **extra, **kw)
    return out, h, None, ctx


@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("config", ["plain", "deep_bi_lengths_dropout"])
def test_finite_differences(isa, cell, config):
    rng = np.random.default_rng(42)
    T, N, C, H = 4, 3, 3, 4
    if config == "plain":
        kw, lengths = dict(num_layers=1), None
    else:
        kw, lengths = dict(num_layers=2, bidirectional=True, dropout=0.3), np.array([2, 4, 3])
    D = 2 if kw.get("bidirectional") else 1
    S = kw["num_layers"] * D
    G = {"lstm": 4, "gru": 3, "gru_v1": 3}.get(cell, 1)
    params = {}
    for k in range(kw["num_layers"]):
        for d in range(D):
            sfx = f"_l{k}" + ("_reverse" if d else "")
            C_k = C if k == 0 else D * H
            params[f"weight_ih{sfx}"] = rng.uniform(-0.6, 0.6, (G * H, C_k))
            params[f"weight_hh{sfx}"] = rng.uniform(-0.6, 0.6, (G * H, H))
            params[f"bias_ih{sfx}"] = rng.uniform(-0.3, 0.3, G * H)
            params[f"bias_hh{sfx}"] = rng.uniform(-0.3, 0.3, G * H)
    x = rng.standard_normal((T, N, C))
    h0 = rng.standard_normal((S, N, H)) * 0.5
    c0 = rng.standard_normal((S, N, H)) * 0.5
    lstm = cell == "lstm"
    hx = (h0, c0) if lstm else h0
    out, h, c, _ = _run(cell, x, params, hx, lengths, kw, False, 0)
    w_out, w_h = rng.standard_normal(out.shape), rng.standard_normal(h.shape)
    w_c = rng.standard_normal(h.shape) if lstm else None

    def loss():
        o, hh, cc, _ = _run(cell, x, params, (h0, c0) if lstm else h0, lengths, kw, True, 0)
        val = np.sum(o * w_out) + np.sum(hh * w_h)
        return val + (np.sum(cc * w_c) if lstm else 0.0)

    o, hh, cc, ctx = _run(cell, x, params, hx, lengths, kw, True, 0)
    gx, gh0, gc0, grads = F.backward(ctx, w_out, w_h, w_c)

    def numeric(arr):
        g = np.zeros_like(arr)
        for i in np.ndindex(arr.shape):
            old = arr[i]
            arr[i] = old + EPS
            up = loss()
            arr[i] = old - EPS
            down = loss()
            arr[i] = old
            g[i] = (up - down) / (2 * EPS)
        return g

    checks = [("x", gx, x), ("h0", gh0, h0)] + ([("c0", gc0, c0)] if lstm else [])
    checks += [(name, grads[name], params[name]) for name in params]
    for name, analytic, arr in checks:
        num = numeric(arr)
        err = np.max(np.abs(analytic - num)) / max(1.0, np.max(np.abs(num)))
        # relu kinks are measure-zero; away from them the match is at FD precision
        assert err < 1e-6, f"{cell} {config}: d/d{name} differs from finite differences by {err:.3g}"
