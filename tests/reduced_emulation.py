"""A NumPy emulation of one recurrent layer whose products take reduced-precision operands
(tests/test_int8_inference.py, test_bf16_inference.py): the products as the caller's
`product(a, w)` computes them (a float32 [N, k], w [rows, k] -> float64 [N, rows]), the gate
functions in float64; and of bf16 training, forward and BPTT (tests/test_bf16_training.py)."""
import numpy as np

import fastrnn


def sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v))


def bf16(a):
    """float32 -> bf16 -> float64, round to nearest even, denormals to zero (vcvtneps2bf16)."""
    b = np.ascontiguousarray(a, np.float32).view(np.uint32).astype(np.uint64)
    b = np.where((b & 0x7F800000) == 0, b & 0x80000000, b)
    r = ((b + 0x7FFF + ((b >> 16) & 1)) >> 16) << 16
    return r.astype(np.uint32).view(np.float32).astype(np.float64)


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




def emulate_bf16_training(cell, x, p, dy):
    """bf16 training of one layer, one direction, h0 = 0, loss sum(out * dy), in float64: every
    product on bf16-rounded operands (W_ih, W_hh; x and h_{t-1} in the forward; in BPTT the gate
    gradients and the inputs of the weight-gradient products and of dx), except the gate
    gradients of BPTT's recurrent product, which stay float32 (they are made inside the step).
    Returns (out [T, N, H], dx [T, N, C], grads by parameter name)."""
    T, N, C = x.shape
    H = p["weight_hh_l0"].shape[1]
    w_ih, w_hh = bf16(p["weight_ih_l0"]), bf16(p["weight_hh_l0"])
    b_ih, b_hh = p["bias_ih_l0"].astype(np.float64), p["bias_hh_l0"].astype(np.float64)
    X = bf16(x.reshape(T * N, C))
    xp = (X @ w_ih.T).reshape(T, N, -1) + b_ih
    h, c = np.zeros((N, H)), np.zeros((N, H))
    hs, saved = [h], []
    for t in range(T):
        hp = bf16(h) @ w_hh.T + b_hh
        a = xp[t]
        if cell == "lstm":
            v = a + hp
            i, f, g, o = sigmoid(v[:, :H]), sigmoid(v[:, H:2 * H]), np.tanh(v[:, 2 * H:3 * H]), sigmoid(v[:, 3 * H:])
            saved.append((i, f, g, o, c))
            c = f * c + i * g
            h = o * np.tanh(c)
        elif cell == "gru":  # reset_after=True
            r, z = sigmoid(a[:, :H] + hp[:, :H]), sigmoid(a[:, H:2 * H] + hp[:, H:2 * H])
            n = np.tanh(a[:, 2 * H:] + r * hp[:, 2 * H:])
            saved.append((r, z, n, hp[:, 2 * H:], h))
            h = (1 - z) * n + z * h
        else:  # rnn_tanh
            h = np.tanh(a + hp)
            saved.append((h,))
        hs.append(h)
    dgx, dgh = np.zeros((T, N, w_ih.shape[0])), np.zeros((T, N, w_hh.shape[0]))
    dh, dc = np.zeros((N, H)), np.zeros((N, H))
    for t in reversed(range(T)):
        dh = dh + dy[t]
        direct = 0.0
        if cell == "lstm":
            i, f, g, o, c_prev = saved[t]
            c_t = f * c_prev + i * g
            tc = np.tanh(c_t)
            dc = dc + dh * o * (1 - tc ** 2)
            da = np.concatenate([dc * g * i * (1 - i), dc * c_prev * f * (1 - f), dc * i * (1 - g ** 2),
                                 dh * tc * o * (1 - o)], 1)
            dc = dc * f
            dgx[t] = dgh[t] = da
        elif cell == "gru":
            r, z, n, hn, h_prev = saved[t]
            dn = dh * (1 - z) * (1 - n ** 2)
            dz = dh * (h_prev - n) * z * (1 - z)
            dr = dn * hn * r * (1 - r)
            dgx[t] = np.concatenate([dr, dz, dn], 1)
            dgh[t] = np.concatenate([dr, dz, dn * r], 1)
            direct = dh * z
        else:
            dgx[t] = dgh[t] = dh * (1 - saved[t][0] ** 2)
        dh = dgh[t] @ w_hh + direct
    gx, gh = bf16(dgx.reshape(T * N, -1)), bf16(dgh.reshape(T * N, -1))
    grads = {"weight_ih_l0": gx.T @ X, "weight_hh_l0": gh.T @ bf16(np.stack(hs[:-1]).reshape(T * N, H)),
             "bias_ih_l0": dgx.reshape(T * N, -1).sum(0), "bias_hh_l0": dgh.reshape(T * N, -1).sum(0)}
    return np.stack(hs[1:]), (gx @ w_ih).reshape(T, N, C), grads
