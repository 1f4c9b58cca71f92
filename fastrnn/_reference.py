"""Float64 NumPy reference of every cell and option: the test oracle, not a fast path.

Written independently of the C++ driver, as the plainest possible per-time-step loop: one cell
step at a time, with padded steps handled by a validity mask (a padded step leaves the state
untouched and outputs zero), and BPTT as the mirror loop. It follows DESIGN.md §1:

    RNN   h' = act(W_ih x + b_ih + W_hh h + b_hh)
    LSTM  i, f, g, o = σ, σ, tanh, σ of (W_ih x + b_ih + W_hh h + b_hh);  c' = f c + i g;  h' = o tanh(c')
    GRU   r, z = σ(W_i{r,z} x + b_i{r,z} + W_h{r,z} h + b_h{r,z})
          reset_after:  n = tanh(W_in x + b_in + r (W_hn h + b_hn))
          otherwise:    n = tanh(W_in x + b_in + W_hn (r h) + b_hn)
          h' = (1 - z) n + z h

Besides the gradients, `backward` records the *total* gradient dL/dh_t that reaches each step's
state (direct part from the output plus the recurrent part from step t+1), per layer and
direction: ``cache["grad_h"][l][d]`` is ``[T, N, H]`` (and ``cache["grad_c"]`` for LSTM), zero at
padded steps; ``cache["propagation"]`` ``[L, D, T]`` is the gain of each step of the recurrence
(what arrived through it, h and c together for LSTM, over the state gradient of the previous BPTT
step, both over the sequences valid at the two steps; NaN where undefined). Diagnostics tests
compare against them.

>>> import numpy as np
>>> from fastrnn import _reference as ref
>>> rng = np.random.default_rng(0)
>>> p = {"weight_ih_l0": rng.standard_normal((4, 2)), "weight_hh_l0": rng.standard_normal((4, 4)),
...      "bias_ih_l0": np.zeros(4), "bias_hh_l0": np.zeros(4)}
>>> out, h_n, c_n, cache = ref.forward("rnn", np.ones((3, 1, 2)), p)
>>> out.shape, h_n.shape, c_n is None
((3, 1, 4), (1, 1, 4), True)
"""
from __future__ import annotations

import numpy as np

GATES = {"rnn": 1, "lstm": 4, "gru": 3}


def sigmoid(x):
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # overflow-free for large |x|


def _act(nonlinearity):
    if nonlinearity == "tanh":
        return np.tanh, lambda y: 1.0 - y * y
    return (lambda v: np.maximum(v, 0.0)), (lambda y: (y > 0).astype(np.float64))


# --- one cell step: fwd(x_t, h, c, w) -> (h', c', saved); bwd(dh', dc', saved, w, g) -> (dx, dh, dc) ---

def _rnn_fwd(x, h, c, w, opt):
    act, _ = _act(opt["nonlinearity"])
    hn = act(x @ w["w_ih"].T + w["b_ih"] + h @ w["w_hh"].T + w["b_hh"])
    return hn, None, dict(x=x, h=h, out=hn)


def _clip(a, opt):
    """Graves' BPTT clipping of the gate pre-activation gradients (identity when off)."""
    c = opt.get("clip")
    return a if not c else np.clip(a, -c, c)


def _rnn_bwd(dh_new, dc_new, s, w, g, opt):
    _, dact = _act(opt["nonlinearity"])
    da = _clip(dh_new * dact(s["out"]), opt)
    return _accumulate(da, da, s["x"], s["h"], w, g)


def _lstm_fwd(x, h, c, w, opt):
    H = h.shape[1]
    a = x @ w["w_ih"].T + w["b_ih"] + h @ w["w_hh"].T + w["b_hh"]
    i, f = sigmoid(a[:, :H]), sigmoid(a[:, H:2 * H])
    gg, o = np.tanh(a[:, 2 * H:3 * H]), sigmoid(a[:, 3 * H:])
    c_new = f * c + i * gg
    h_new = o * np.tanh(c_new)
    return h_new, c_new, dict(x=x, h=h, c=c, i=i, f=f, g=gg, o=o, c_new=c_new)


def _lstm_bwd(dh_new, dc_new, s, w, g, opt):
    tc = np.tanh(s["c_new"])
    i, f, gg, o = s["i"], s["f"], s["g"], s["o"]
    dc = dc_new + dh_new * o * (1.0 - tc * tc)
    da = _clip(np.concatenate([dc * gg * i * (1 - i), dc * s["c"] * f * (1 - f), dc * i * (1 - gg * gg),
                               dh_new * tc * o * (1 - o)], axis=1), opt)
    dx, dh, _ = _accumulate(da, da, s["x"], s["h"], w, g)
    return dx, dh, dc * f


def _gru_fwd(x, h, c, w, opt):
    H = h.shape[1]
    ax = x @ w["w_ih"].T + w["b_ih"]
    W_rz, W_n = w["w_hh"][:2 * H], w["w_hh"][2 * H:]
    b_rz, b_n = w["b_hh"][:2 * H], w["b_hh"][2 * H:]
    arz = ax[:, :2 * H] + h @ W_rz.T + b_rz
    r, z = sigmoid(arz[:, :H]), sigmoid(arz[:, H:])
    if opt["reset_after"]:
        hn_lin = h @ W_n.T + b_n
        n = np.tanh(ax[:, 2 * H:] + r * hn_lin)
    else:
        hn_lin = (r * h) @ W_n.T + b_n
        n = np.tanh(ax[:, 2 * H:] + hn_lin)
    h_new = (1 - z) * n + z * h
    return h_new, None, dict(x=x, h=h, r=r, z=z, n=n, hn_lin=hn_lin)


def _gru_bwd(dh_new, dc_new, s, w, g, opt):
    H = s["h"].shape[1]
    r, z, n, h = s["r"], s["z"], s["n"], s["h"]
    dn_pre = _clip(dh_new * (1 - z) * (1 - n * n), opt)
    dz_pre = _clip(dh_new * (h - n) * z * (1 - z), opt)
    dh = dh_new * z
    W_n = w["w_hh"][2 * H:]
    if opt["reset_after"]:
        d_hn_lin = dn_pre * r                      # gradient of W_hn h + b_hn
        dr_pre = _clip(dn_pre * s["hn_lin"] * r * (1 - r), opt)
        da_x = np.concatenate([dr_pre, dz_pre, dn_pre], axis=1)
        da_h = np.concatenate([dr_pre, dz_pre, d_hn_lin], axis=1)
        dx, dh_rec, _ = _accumulate(da_x, da_h, s["x"], h, w, g)
        return dx, dh + dh_rec, None
    # reset_after=False: n's recurrent input is r*h.
    d_rh = dn_pre @ W_n
    dr_pre = _clip(d_rh * h * r * (1 - r), opt)
    da = np.concatenate([dr_pre, dz_pre, dn_pre], axis=1)
    g["w_ih"] += da.T @ s["x"]
    g["w_hh"][:2 * H] += da[:, :2 * H].T @ h
    g["w_hh"][2 * H:] += dn_pre.T @ (r * h)
    g["b_ih"] += da.sum(0)
    g["b_hh"] += da.sum(0)
    dx = da @ w["w_ih"]
    dh = dh + d_rh * r + da[:, :2 * H] @ w["w_hh"][:2 * H]
    return dx, dh, None


def _accumulate(da_x, da_h, x, h, w, g):
    """Gradients of the two affine maps W_ih x + b_ih and W_hh h + b_hh."""
    g["w_ih"] += da_x.T @ x
    g["w_hh"] += da_h.T @ h
    g["b_ih"] += da_x.sum(0)
    g["b_hh"] += da_h.sum(0)
    return da_x @ w["w_ih"], da_h @ w["w_hh"], None


CELLS = {"rnn": (_rnn_fwd, _rnn_bwd), "lstm": (_lstm_fwd, _lstm_bwd), "gru": (_gru_fwd, _gru_bwd)}


def _suffix(l, d):
    return f"_l{l}" + ("_reverse" if d else "")


def _weights(params, l, d, G, H, C_l, bias):
    sfx = _suffix(l, d)
    w = {"w_ih": np.asarray(params["weight_ih" + sfx], np.float64),
         "w_hh": np.asarray(params["weight_hh" + sfx], np.float64)}
    if bias:
        w["b_ih"] = np.asarray(params["bias_ih" + sfx], np.float64)
        w["b_hh"] = np.asarray(params["bias_hh" + sfx], np.float64)
    else:
        w["b_ih"] = np.zeros(G * H)
        w["b_hh"] = np.zeros(G * H)
    return w


def forward(kind, x, params, hx=None, lengths=None, *, num_layers=1, bidirectional=False, nonlinearity="tanh",
            reset_after=True, bias=True, dropout_masks=None):
    """Forward of a stack on time-major ``x [T, N, C]`` (float64).

    ``kind`` is "rnn", "lstm" or "gru"; ``hx`` is None, h0, or (h0, c0) for LSTM, each ``[L*D, N, H]``;
    ``dropout_masks`` is None or one already-scaled mask ``[T, N, D*H]`` per layer but the last,
    multiplied into that layer's output before it feeds the next layer.
    Returns ``(out [T, N, D*H], h_n, c_n or None, cache)``.
    """
    x = np.asarray(x, np.float64)
    T, N, C = x.shape
    L, D = num_layers, (2 if bidirectional else 1)
    G = GATES[kind]
    H = np.asarray(params["weight_hh_l0"]).shape[1]
    lstm = kind == "lstm"
    if hx is None:
        h0 = np.zeros((L * D, N, H))
        c0 = np.zeros((L * D, N, H))
    elif lstm:
        h0, c0 = (np.asarray(a, np.float64) for a in hx)
    else:
        h0, c0 = np.asarray(hx, np.float64), np.zeros((L * D, N, H))
    lens = np.full(N, T) if lengths is None else np.asarray(lengths)
    opt = dict(nonlinearity=nonlinearity, reset_after=reset_after)
    fwd, _ = CELLS[kind]

    h_n, c_n = np.zeros((L * D, N, H)), np.zeros((L * D, N, H))
    inp = x
    layers = []
    for l in range(L):
        C_l = inp.shape[2]
        out = np.zeros((T, N, D * H))
        dirs = []
        for d in range(D):
            w = _weights(params, l, d, G, H, C_l, bias)
            h, c = h0[l * D + d].copy(), c0[l * D + d].copy()
            steps = []
            order = range(T) if d == 0 else range(T - 1, -1, -1)
            for t in order:
                valid = (t < lens)[:, None]
                h_new, c_new, saved = fwd(inp[t], h, c, w, opt)
                saved["valid"] = valid
                steps.append((t, saved))
                h = np.where(valid, h_new, h)
                if lstm:
                    c = np.where(valid, c_new, c)
                out[t, :, d * H:(d + 1) * H] = np.where(valid, h_new, 0.0)
            h_n[l * D + d], c_n[l * D + d] = h, c
            dirs.append(dict(w=w, steps=steps))
        layers.append(dict(inp=inp, dirs=dirs))
        inp = out if (dropout_masks is None or l == L - 1) else out * np.asarray(dropout_masks[l], np.float64)
    cache = dict(kind=kind, opt=opt, layers=layers, T=T, N=N, H=H, L=L, D=D, bias=bias, lens=lens,
                 masks=dropout_masks)
    return out, h_n, (c_n if lstm else None), cache


def backward(cache, grad_out, grad_h_n=None, grad_c_n=None, bptt_clip=None):
    """BPTT of ``sum(out*grad_out) + sum(h_n*grad_h_n) + sum(c_n*grad_c_n)``.

    Returns ``(grad_x, grad_h0, grad_c0 or None, grads)`` with grads under torch's names; also
    stores the per-step total gradients in ``cache["grad_h"]`` / ``cache["grad_c"]``.
    ``bptt_clip=c`` clips every gate pre-activation gradient to [-c, c] at every step.
    """
    kind, opt = cache["kind"], dict(cache["opt"], clip=bptt_clip)
    T, N, H, L, D = cache["T"], cache["N"], cache["H"], cache["L"], cache["D"]
    lstm = kind == "lstm"
    _, bwd = CELLS[kind]
    d_out = np.zeros((T, N, D * H)) if grad_out is None else np.asarray(grad_out, np.float64).copy()
    ghn = np.zeros((L * D, N, H)) if grad_h_n is None else np.asarray(grad_h_n, np.float64)
    gcn = np.zeros((L * D, N, H)) if grad_c_n is None else np.asarray(grad_c_n, np.float64)
    lens = cache["lens"]
    grads = {}
    grad_h0, grad_c0 = np.zeros((L * D, N, H)), np.zeros((L * D, N, H))
    grad_h = [[np.zeros((T, N, H)) for _ in range(D)] for _ in range(L)]
    grad_c = [[np.zeros((T, N, H)) for _ in range(D)] for _ in range(L)]
    carried = np.zeros((L, D, T))  # what reached step t through the recurrence (rows valid at t and before)
    previous = np.zeros((L, D, T))  # the state gradient of the previous BPTT step, same rows
    for t in range(T):  # gradients at padded outputs are ignored
        d_out[t][t >= lens] = 0.0
    for l in range(L - 1, -1, -1):
        layer = cache["layers"][l]
        inp = layer["inp"]
        d_inp = np.zeros_like(inp)
        for d in range(D):
            w = layer["dirs"][d]["w"]
            g = {k: np.zeros_like(v) for k, v in w.items()}
            dh, dc = ghn[l * D + d].copy(), gcn[l * D + d].copy()
            prev_state, prev_valid = None, None
            for t, s in reversed(layer["dirs"][d]["steps"]):
                valid = s["valid"]
                both = valid & prev_valid if prev_valid is not None else np.zeros_like(valid)
                c_sq = (dc ** 2).sum(1) if lstm else 0.0
                carried[l, d, t] = np.sum(np.where(both[:, 0], (dh ** 2).sum(1) + c_sq, 0.0))
                previous[l, d, t] = np.sum(np.where(both[:, 0], prev_state, 0.0))
                dh = dh + d_out[t, :, d * H:(d + 1) * H]
                prev_state, prev_valid = (dh ** 2).sum(1) + c_sq, valid
                grad_h[l][d][t] = np.where(valid, dh, 0.0)
                if lstm:
                    grad_c[l][d][t] = np.where(valid, dc + dh * s["o"] * (1 - np.tanh(s["c_new"]) ** 2), 0.0)
                # Padded rows pass their carries through untouched and contribute nothing.
                dh_v, dc_v = np.where(valid, dh, 0.0), np.where(valid, dc, 0.0)
                dx, dh_prev, dc_prev = bwd(dh_v, dc_v, s, w, g, opt)
                d_inp[t] += dx
                dh = np.where(valid, dh_prev, dh)
                if lstm:
                    dc = np.where(valid, dc_prev, dc)
            grad_h0[l * D + d], grad_c0[l * D + d] = dh, dc
            sfx = _suffix(l, d)
            grads["weight_ih" + sfx], grads["weight_hh" + sfx] = g["w_ih"], g["w_hh"]
            if cache["bias"]:
                grads["bias_ih" + sfx], grads["bias_hh" + sfx] = g["b_ih"], g["b_hh"]
        if l > 0:
            masks = cache["masks"]
            d_out = d_inp if masks is None else d_inp * np.asarray(masks[l - 1], np.float64)
        else:
            grad_x = d_inp
    cache["grad_h"], cache["grad_c"] = grad_h, (grad_c if lstm else None)
    with np.errstate(divide="ignore", invalid="ignore"):
        prop = np.sqrt(carried / previous)
    prop[~np.isfinite(prop)] = np.nan
    cache["propagation"] = prop
    return grad_x, grad_h0, (grad_c0 if lstm else None), grads
