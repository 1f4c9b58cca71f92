"""A NumPy emulation of one recurrent layer whose products take reduced-precision operands
(tests/test_int8_inference.py, test_bf16_inference.py): the products as the caller's
`product(a, w)` computes them (a float32 [N, k], w [rows, k] -> float64 [N, rows]), the gate
functions in float64."""
import numpy as np

import fastrnn


def sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v))


def emulate(cell, x, p, product, reset_after=True):
    """One layer, one direction, h0 = 0: outputs [T, N, H] in float64. `cell`: "lstm", "gru",
    "rnn_tanh" or "rnn_relu"."""
    T, N, _ = x.shape
    H = p["weight_hh_l0"].shape[1]
    b_ih, b_hh = p["bias_ih_l0"].astype(np.float64), p["bias_hh_l0"].astype(np.float64)
    xp = product(x.reshape(T * N, -1), p["weight_ih_l0"]).reshape(T, N, -1).astype(np.float64)
    h = np.zeros((N, H))
    c = np.zeros((N, H))
    out = []
    for t in range(T):
        hp = product(h.astype(np.float32), p["weight_hh_l0"]).astype(np.float64)
        a = xp[t] + b_ih
        if cell == "lstm":
            a = a + hp + b_hh
            i, f, g, o = sigmoid(a[:, :H]), sigmoid(a[:, H:2 * H]), np.tanh(a[:, 2 * H:3 * H]), sigmoid(a[:, 3 * H:])
            c = f * c + i * g
            h = o * np.tanh(c)
        elif cell == "gru" and reset_after:
            r = sigmoid(a[:, :H] + hp[:, :H] + b_hh[:H])
            z = sigmoid(a[:, H:2 * H] + hp[:, H:2 * H] + b_hh[H:2 * H])
            n = np.tanh(a[:, 2 * H:] + r * (hp[:, 2 * H:] + b_hh[2 * H:]))
            h = (1 - z) * n + z * h
        elif cell == "gru":  # reset_after=False: W_hn (r*h), r*h converted as its own input
            r = sigmoid(a[:, :H] + hp[:, :H] + b_hh[:H])
            z = sigmoid(a[:, H:2 * H] + hp[:, H:2 * H] + b_hh[H:2 * H])
            rh = product((r * h).astype(np.float32), p["weight_hh_l0"][2 * H:]).astype(np.float64)
            n = np.tanh(a[:, 2 * H:] + rh + b_hh[2 * H:])
            h = (1 - z) * n + z * h
        else:
            h = np.tanh(a + hp + b_hh) if cell == "rnn_tanh" else np.maximum(a + hp + b_hh, 0)
        out.append(h)
    return np.stack(out)


def make(cell, C, H, rng=0, **kw):
    """The layer of `cell` ("lstm", "gru", "rnn_tanh", "rnn_relu")."""
    if cell == "lstm":
        return fastrnn.LSTM(C, H, rng=rng, **kw)
    if cell == "gru":
        return fastrnn.GRU(C, H, rng=rng, **kw)
    return fastrnn.RNN(C, H, nonlinearity=cell[4:], rng=rng, **kw)


