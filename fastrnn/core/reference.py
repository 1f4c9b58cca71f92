"""Float64 NumPy reference of every cell, variant and option: the test oracle, not a fast path.

Written independently of the C++ driver, as the plainest possible per-time-step loop: one cell
step at a time, with padded steps handled by a validity mask (a padded step leaves the state
untouched and outputs zero), and BPTT as the mirror loop. It follows docs/design.md, "Conventions":

    RNN   h' = act(W_ih x + b_ih + W_hh h + b_hh)
    LSTM  i, f, g, o = σ, σ, tanh, σ of (W_ih x + b_ih + W_hh h + b_hh);  c' = f c + i g;  h' = o tanh(c')
    GRU   r, z = σ(W_i{r,z} x + b_i{r,z} + W_h{r,z} h + b_h{r,z})
          reset_after:  n = tanh(W_in x + b_in + r (W_hn h + b_hn))
          otherwise:    n = tanh(W_in x + b_in + W_hn (r h) + b_hn)
          h' = (1 - z) n + z h

and the cell variants (docs/variants.md; csrc/cells/lstm.h and layernorm.h):

    peephole   i = σ(a_i + p_i c), f = σ(a_f + p_f c), o = σ(a_o + p_o c')       (Gers & Schmidhuber 2000)
    proj_size  h' = W_hr (o tanh(c')), h has P units                            (Sak et al. 2014, LSTMP)
    layer_norm LN(v) = γ (v - mean v) / sqrt(var v + 1e-5) (+ β) per row        (Ba et al. 2016; Haste)
               LSTM: a = LN_γih(W_ih x) + LN_γhh(W_hh h) + b_ih + b_hh, h' = o tanh(LN_γc,βc(c'))
               GRU:  vx = LN_γih(W_ih x) + b_ih, vh = LN_γhh(W_hh h) + b_hh (reset_after form)
    recurrent dropout  W_hh (h ⊙ m), one mask m per sequence (Gal & Ghahramani 2016; Keras)
    zoneout    h' = h~ + d_h (h - h~), c' = c~ + d_c (c - c~), h~ = o tanh(c~)   (Krueger et al. 2017)
    weight_drop W_hh ⊙ M in the recurrence, M one mask per call (Wan et al. 2013; Merity et al. 2017)

Besides the gradients, `backward` records the *total* gradient dL/dh_t that reaches each step's
state (direct part from the output plus the recurrent part from step t+1), per layer and
direction: ``cache["grad_h"][l][d]`` is ``[T, N, K]`` (and ``cache["grad_c"]`` for LSTM: the
total dL/dc~_t), zero at padded steps; ``cache["propagation"]`` ``[L, D, T]`` is the gain of each
step of the recurrence (what arrived through it, h and c together for LSTM, over the state
gradient of the previous BPTT step, both over the sequences valid at the two steps; NaN where
undefined). Diagnostics tests compare against them.

Examples
--------
>>> import numpy as np
>>> from fastrnn.core import reference as ref
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
LN_EPS = 1e-5


def sigmoid(x):
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # overflow-free for large |x|


def _act(nonlinearity):
    if nonlinearity == "tanh":
        return np.tanh, lambda y: 1.0 - y * y
    return (lambda v: np.maximum(v, 0.0)), (lambda y: (y > 0).astype(np.float64))


def _clip(a, opt):
    """Graves' BPTT clipping of the gate pre-activation gradients (identity when off)."""
    c = opt.get("clip")
    return a if not c else np.clip(a, -c, c)


def _ln(v, gain, bias=None):
    """Layer norm over the last axis: (output, (x^, 1/sigma))."""
    mu = v.mean(axis=1, keepdims=True)
    rstd = 1.0 / np.sqrt(v.var(axis=1, keepdims=True) + LN_EPS)
    xh = (v - mu) * rstd
    out = gain * xh
    return (out if bias is None else out + bias), (xh, rstd)


def _ln_bwd(dy, gain, saved):
    """dL/dv of _ln and the gain's gradient."""
    xh, rstd = saved
    a = dy * gain
    dv = rstd * (a - a.mean(axis=1, keepdims=True) - xh * (a * xh).mean(axis=1, keepdims=True))
    return dv, (dy * xh).sum(0)


# --- one cell step: fwd(x_t, h, c, w, opt, nz) -> (h', c', saved); bwd(dh', dc', saved, w, g, opt) -> (dx, dh, dc, dc_total) ---
# nz: this step's noise (rm: recurrent dropout mask [N, K], zh / zc: zoneout [N, K] / [N, H]).

def _rnn_fwd(x, h, c, w, opt, nz):
    act, _ = _act(opt["nonlinearity"])
    hr = h if nz.get("rm") is None else h * nz["rm"]
    hn = act(x @ w["w_ih"].T + w["b_ih"] + hr @ w["w_hh"].T + w["b_hh"])
    return hn, None, dict(x=x, h=h, hr=hr, out=hn, nz=nz)


def _rnn_bwd(dh_new, dc_new, s, w, g, opt):
    _, dact = _act(opt["nonlinearity"])
    da = _clip(dh_new * dact(s["out"]), opt)
    g["w_ih"] += da.T @ s["x"]
    g["w_hh"] += da.T @ s["hr"]
    g["b_ih"] += da.sum(0)
    g["b_hh"] += da.sum(0)
    dh = da @ w["w_hh"]
    if s["nz"].get("rm") is not None:
        dh = dh * s["nz"]["rm"]
    return da @ w["w_ih"], dh, None, None


def _lstm_fwd(x, h, c, w, opt, nz):
    H = c.shape[1]
    hr = h if nz.get("rm") is None else h * nz["rm"]
    ln = opt.get("layer_norm")
    if ln:
        ax, s_ih = _ln(x @ w["w_ih"].T, w["ln_ih"])
        ah, s_hh = _ln(hr @ w["w_hh"].T, w["ln_hh"])
        a = ax + ah + w["b_ih"] + w["b_hh"]
    else:
        a = x @ w["w_ih"].T + w["b_ih"] + hr @ w["w_hh"].T + w["b_hh"]
        s_ih = s_hh = None
    ai, af, ag, ao = a[:, :H], a[:, H:2 * H], a[:, 2 * H:3 * H], a[:, 3 * H:]
    p = w.get("peep")
    if p is not None:
        ai, af = ai + p[0] * c, af + p[1] * c
    i, f, gg = sigmoid(ai), sigmoid(af), np.tanh(ag)
    ct = f * c + i * gg
    if p is not None:
        ao = ao + p[2] * ct
    o = sigmoid(ao)
    if ln:
        cl, s_c = _ln(ct, w["ln_c_w"], w["ln_c_b"])
    else:
        cl, s_c = ct, None
    tl = np.tanh(cl)
    mo = o * tl
    ht = mo @ w["w_hr"].T if "w_hr" in w else mo
    zh, zc = nz.get("zh"), nz.get("zc")
    h_new = ht if zh is None else ht + zh * (h - ht)
    c_new = ct if zc is None else ct + zc * (c - ct)
    return h_new, c_new, dict(x=x, h=h, hr=hr, c=c, i=i, f=f, g=gg, o=o, ct=ct, tl=tl, mo=mo, s_ih=s_ih, s_hh=s_hh,
                              s_c=s_c, nz=nz)


def _lstm_bwd(dh_new, dc_new, s, w, g, opt):
    i, f, gg, o, c, ct, tl = s["i"], s["f"], s["g"], s["o"], s["c"], s["ct"], s["tl"]
    zh, zc, rm = s["nz"].get("zh"), s["nz"].get("zc"), s["nz"].get("rm")
    dht = dh_new if zh is None else dh_new * (1 - zh)
    if "w_hr" in w:
        g["w_hr"] += dht.T @ s["mo"]
        dmo = dht @ w["w_hr"]
    else:
        dmo = dht
    d_o = _clip(dmo * tl * o * (1 - o), opt)
    dcl = dmo * o * (1 - tl * tl)
    if opt.get("layer_norm"):
        dct_h, g_cw = _ln_bwd(dcl, w["ln_c_w"], s["s_c"])
        g["ln_c_w"] += g_cw
        g["ln_c_b"] += dcl.sum(0)
    else:
        dct_h = dcl
    dct = dct_h + (dc_new if zc is None else dc_new * (1 - zc))
    p = w.get("peep")
    if p is not None:
        dct = dct + d_o * p[2]
    di = _clip(dct * gg * i * (1 - i), opt)
    df = _clip(dct * c * f * (1 - f), opt)
    dg = _clip(dct * i * (1 - gg * gg), opt)
    dc_prev = dct * f
    if zc is not None:
        dc_prev = dc_prev + zc * dc_new
    if p is not None:
        dc_prev = dc_prev + di * p[0] + df * p[1]
        g["peep"][0] += (di * c).sum(0)
        g["peep"][1] += (df * c).sum(0)
        g["peep"][2] += (d_o * ct).sum(0)
    da = np.concatenate([di, df, dg, d_o], axis=1)
    if opt.get("layer_norm"):
        dax, g_ih = _ln_bwd(da, w["ln_ih"], s["s_ih"])
        dah, g_hh = _ln_bwd(da, w["ln_hh"], s["s_hh"])
        g["ln_ih"] += g_ih
        g["ln_hh"] += g_hh
    else:
        dax = dah = da
    g["w_ih"] += dax.T @ s["x"]
    g["w_hh"] += dah.T @ s["hr"]
    g["b_ih"] += da.sum(0)
    g["b_hh"] += da.sum(0)
    dh = dah @ w["w_hh"]
    if rm is not None:
        dh = dh * rm
    if zh is not None:
        dh = dh + zh * dh_new
    return dax @ w["w_ih"], dh, dc_prev, dct


def _gru_fwd(x, h, c, w, opt, nz):
    H = h.shape[1]
    hr = h if nz.get("rm") is None else h * nz["rm"]
    if opt.get("layer_norm"):
        ax, s_ih = _ln(x @ w["w_ih"].T, w["ln_ih"])
        ah, s_hh = _ln(hr @ w["w_hh"].T, w["ln_hh"])
        ax, ah = ax + w["b_ih"], ah + w["b_hh"]
        r, z = sigmoid(ax[:, :H] + ah[:, :H]), sigmoid(ax[:, H:2 * H] + ah[:, H:2 * H])
        hn_lin = ah[:, 2 * H:]
        n = np.tanh(ax[:, 2 * H:] + r * hn_lin)
        extra = dict(s_ih=s_ih, s_hh=s_hh)
    else:
        ax = x @ w["w_ih"].T + w["b_ih"]
        W_rz, W_n = w["w_hh"][:2 * H], w["w_hh"][2 * H:]
        b_rz, b_n = w["b_hh"][:2 * H], w["b_hh"][2 * H:]
        arz = ax[:, :2 * H] + hr @ W_rz.T + b_rz
        r, z = sigmoid(arz[:, :H]), sigmoid(arz[:, H:])
        if opt["reset_after"]:
            hn_lin = hr @ W_n.T + b_n
            n = np.tanh(ax[:, 2 * H:] + r * hn_lin)
        else:
            hn_lin = (r * hr) @ W_n.T + b_n
            n = np.tanh(ax[:, 2 * H:] + hn_lin)
        extra = {}
    h_new = (1 - z) * n + z * h
    zh = nz.get("zh")
    if zh is not None:
        h_new = h_new + zh * (h - h_new)
    return h_new, None, dict(x=x, h=h, hr=hr, r=r, z=z, n=n, hn_lin=hn_lin, nz=nz, **extra)


def _gru_bwd(dh_new, dc_new, s, w, g, opt):
    H = s["h"].shape[1]
    r, z, n, h, hr = s["r"], s["z"], s["n"], s["h"], s["hr"]
    zh, rm = s["nz"].get("zh"), s["nz"].get("rm")
    dht = dh_new if zh is None else dh_new * (1 - zh)
    dn_pre = _clip(dht * (1 - z) * (1 - n * n), opt)
    dz_pre = _clip(dht * (h - n) * z * (1 - z), opt)
    dh = dht * z
    if zh is not None:
        dh = dh + zh * dh_new
    W_n = w["w_hh"][2 * H:]
    if opt["reset_after"] or opt.get("layer_norm"):
        d_hn_lin = dn_pre * r                      # gradient of W_hn h + b_hn
        dr_pre = _clip(dn_pre * s["hn_lin"] * r * (1 - r), opt)
        da_x = np.concatenate([dr_pre, dz_pre, dn_pre], axis=1)
        da_h = np.concatenate([dr_pre, dz_pre, d_hn_lin], axis=1)
        g["b_ih"] += da_x.sum(0)
        g["b_hh"] += da_h.sum(0)
        if opt.get("layer_norm"):
            da_x, g_ih = _ln_bwd(da_x, w["ln_ih"], s["s_ih"])
            da_h, g_hh = _ln_bwd(da_h, w["ln_hh"], s["s_hh"])
            g["ln_ih"] += g_ih
            g["ln_hh"] += g_hh
        g["w_ih"] += da_x.T @ s["x"]
        g["w_hh"] += da_h.T @ hr
        d_hr = da_h @ w["w_hh"]
        return da_x @ w["w_ih"], dh + (d_hr if rm is None else d_hr * rm), None, None
    # reset_after=False: n's recurrent input is r*hr.
    d_rh = dn_pre @ W_n
    dr_pre = _clip(d_rh * hr * r * (1 - r), opt)
    da = np.concatenate([dr_pre, dz_pre, dn_pre], axis=1)
    g["w_ih"] += da.T @ s["x"]
    g["w_hh"][:2 * H] += da[:, :2 * H].T @ hr
    g["w_hh"][2 * H:] += dn_pre.T @ (r * hr)
    g["b_ih"] += da.sum(0)
    g["b_hh"] += da.sum(0)
    dx = da @ w["w_ih"]
    d_hr = d_rh * r + da[:, :2 * H] @ w["w_hh"][:2 * H]
    return dx, dh + (d_hr if rm is None else d_hr * rm), None, None


CELLS = {"rnn": (_rnn_fwd, _rnn_bwd), "lstm": (_lstm_fwd, _lstm_bwd), "gru": (_gru_fwd, _gru_bwd)}

# Parameter names of the variants (suffix _l{k}[_reverse]) -> keys of the per-layer weight dict.
VARIANT_PARAMS = {"weight_hr": "w_hr", "weight_peephole": "peep", "ln_ih_weight": "ln_ih", "ln_hh_weight": "ln_hh",
                  "ln_c_weight": "ln_c_w", "ln_c_bias": "ln_c_b"}


def _suffix(l, d):
    return f"_l{l}" + ("_reverse" if d else "")


def _weights(params, l, d, G, H, C_l, bias, w_mask=None):
    sfx = _suffix(l, d)
    w = {"w_ih": np.asarray(params["weight_ih" + sfx], np.float64),
         "w_hh": np.asarray(params["weight_hh" + sfx], np.float64)}
    if w_mask is not None:  # DropConnect: the recurrence uses W_hh * M
        w["w_hh"] = w["w_hh"] * np.asarray(w_mask, np.float64)
    if bias:
        w["b_ih"] = np.asarray(params["bias_ih" + sfx], np.float64)
        w["b_hh"] = np.asarray(params["bias_hh" + sfx], np.float64)
    else:
        w["b_ih"] = np.zeros(G * H)
        w["b_hh"] = np.zeros(G * H)
    for name, key in VARIANT_PARAMS.items():
        if name + sfx in params:
            w[key] = np.asarray(params[name + sfx], np.float64)
    return w


def forward(kind, x, params, hx=None, lengths=None, *, num_layers=1, bidirectional=False, nonlinearity="tanh",
            reset_after=True, bias=True, dropout_masks=None, layer_norm=False, rec_masks=None, zh_masks=None,
            zc_masks=None, zoneout_rates=(0.0, 0.0), w_masks=None):
    """Forward of a stack on time-major ``x [T, N, C]`` (float64).

    ``kind`` is "rnn", "lstm" or "gru"; ``hx`` is None, h0, or (h0, c0) for LSTM, h0 ``[L*D, N, K]``
    (K = P with ``weight_hr`` parameters, else H), c0 ``[L*D, N, H]``; ``dropout_masks`` is None
    or one already-scaled mask ``[T, N, D*K]`` per layer but the last, multiplied into that
    layer's output before it feeds the next layer. Variants follow from the parameters present
    (``weight_hr_l0``: projection, ``weight_peephole_l0``: peepholes) and ``layer_norm``; noise:
    ``rec_masks [L*D, N, K]``, ``zh_masks [L*D, T, N, K]``, ``zc_masks [L*D, T, N, H]``,
    ``zoneout_rates`` (the expected update, used where the masks are None), ``w_masks [L*D, G*H, K]``.
    Returns ``(out [T, N, D*K], h_n, c_n or None, cache)``.
    """
    x = np.asarray(x, np.float64)
    T, N, C = x.shape
    L, D = num_layers, (2 if bidirectional else 1)
    G = GATES[kind]
    H = np.asarray(params["weight_ih_l0"]).shape[0] // G
    K = np.asarray(params["weight_hh_l0"]).shape[1]
    lstm = kind == "lstm"
    if hx is None:
        h0 = np.zeros((L * D, N, K))
        c0 = np.zeros((L * D, N, H))
    elif lstm:
        h0, c0 = (np.asarray(a, np.float64) for a in hx)
    else:
        h0, c0 = np.asarray(hx, np.float64), np.zeros((L * D, N, H))
    lens = np.full(N, T) if lengths is None else np.asarray(lengths)
    opt = dict(nonlinearity=nonlinearity, reset_after=reset_after, layer_norm=layer_norm)
    fwd, _ = CELLS[kind]
    f64 = (lambda a: None if a is None else np.asarray(a, np.float64))
    rec_masks, zh_masks, zc_masks, w_masks = map(f64, (rec_masks, zh_masks, zc_masks, w_masks))

    h_n, c_n = np.zeros((L * D, N, K)), np.zeros((L * D, N, H))
    inp = x
    layers = []
    for l in range(L):
        C_l = inp.shape[2]
        out = np.zeros((T, N, D * K))
        dirs = []
        for d in range(D):
            s_idx = l * D + d
            w = _weights(params, l, d, G, H, C_l, bias, None if w_masks is None else w_masks[s_idx])
            h, c = h0[s_idx].copy(), c0[s_idx].copy()
            steps = []
            order = range(T) if d == 0 else range(T - 1, -1, -1)
            for t in order:
                nz = {}
                if rec_masks is not None:
                    nz["rm"] = rec_masks[s_idx]
                if zh_masks is not None:
                    nz["zh"] = zh_masks[s_idx, t]
                elif zoneout_rates[0]:
                    nz["zh"] = np.full((N, K), float(zoneout_rates[0]))
                if zc_masks is not None:
                    nz["zc"] = zc_masks[s_idx, t]
                elif zoneout_rates[1]:
                    nz["zc"] = np.full((N, H), float(zoneout_rates[1]))
                valid = (t < lens)[:, None]
                h_new, c_new, saved = fwd(inp[t], h, c, w, opt, nz)
                saved["valid"] = valid
                steps.append((t, saved))
                h = np.where(valid, h_new, h)
                if lstm:
                    c = np.where(valid, c_new, c)
                out[t, :, d * K:(d + 1) * K] = np.where(valid, h_new, 0.0)
            h_n[s_idx], c_n[s_idx] = h, c
            dirs.append(dict(w=w, steps=steps))
        layers.append(dict(inp=inp, dirs=dirs))
        inp = out if (dropout_masks is None or l == L - 1) else out * np.asarray(dropout_masks[l], np.float64)
    cache = dict(kind=kind, opt=opt, layers=layers, T=T, N=N, H=H, K=K, L=L, D=D, bias=bias, lens=lens,
                 masks=dropout_masks, w_masks=w_masks)
    return out, h_n, (c_n if lstm else None), cache


def backward(cache, grad_out, grad_h_n=None, grad_c_n=None, bptt_clip=None):
    """BPTT of ``sum(out*grad_out) + sum(h_n*grad_h_n) + sum(c_n*grad_c_n)``.

    Returns ``(grad_x, grad_h0, grad_c0 or None, grads)`` with grads under torch's names (and
    the variants' names); also stores the per-step total gradients in ``cache["grad_h"]`` /
    ``cache["grad_c"]``. ``bptt_clip=c`` clips every gate pre-activation gradient to [-c, c] at
    every step.
    """
    kind, opt = cache["kind"], dict(cache["opt"], clip=bptt_clip)
    T, N, H, K, L, D = cache["T"], cache["N"], cache["H"], cache["K"], cache["L"], cache["D"]
    lstm = kind == "lstm"
    _, bwd = CELLS[kind]
    d_out = np.zeros((T, N, D * K)) if grad_out is None else np.asarray(grad_out, np.float64).copy()
    ghn = np.zeros((L * D, N, K)) if grad_h_n is None else np.asarray(grad_h_n, np.float64)
    gcn = np.zeros((L * D, N, H)) if grad_c_n is None else np.asarray(grad_c_n, np.float64)
    lens = cache["lens"]
    grads = {}
    grad_h0, grad_c0 = np.zeros((L * D, N, K)), np.zeros((L * D, N, H))
    grad_h = [[np.zeros((T, N, K)) for _ in range(D)] for _ in range(L)]
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
                dh = dh + d_out[t, :, d * K:(d + 1) * K]
                prev_state, prev_valid = (dh ** 2).sum(1) + c_sq, valid
                grad_h[l][d][t] = np.where(valid, dh, 0.0)
                # Padded rows pass their carries through untouched and contribute nothing.
                dh_v, dc_v = np.where(valid, dh, 0.0), np.where(valid, dc, 0.0)
                dx, dh_prev, dc_prev, dc_total = bwd(dh_v, dc_v, s, w, g, opt)
                if lstm:
                    grad_c[l][d][t] = np.where(valid, dc_total, 0.0)
                d_inp[t] += dx
                dh = np.where(valid, dh_prev, dh)
                if lstm:
                    dc = np.where(valid, dc_prev, dc)
            grad_h0[l * D + d], grad_c0[l * D + d] = dh, dc
            if cache["w_masks"] is not None:
                g["w_hh"] = g["w_hh"] * cache["w_masks"][l * D + d]
            sfx = _suffix(l, d)
            grads["weight_ih" + sfx], grads["weight_hh" + sfx] = g["w_ih"], g["w_hh"]
            if cache["bias"]:
                grads["bias_ih" + sfx], grads["bias_hh" + sfx] = g["b_ih"], g["b_hh"]
            for name, key in VARIANT_PARAMS.items():
                if key in g:
                    grads[name + sfx] = g[key]
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


# --- Li-GRU and SLi-GRU (SpeechBrain's LiGRU / SLiGRU; csrc/cells/ligru.h) -------------------
# Gates a (candidate), z. The input projection of all steps is normalized before the recurrence:
# batch norm over the valid rows (training; running statistics in eval), LayerNorm per row, or
# none (then an optional bias). SLi-GRU adds a LayerNorm of the recurrent product (affine or not).

LIGRU_ACTIVATIONS = {
    "relu": (lambda a: np.maximum(a, 0.0), lambda a: (a > 0).astype(np.float64)),
    "tanh": (np.tanh, lambda a: 1.0 - np.tanh(a) ** 2),
    "sin": (np.sin, np.cos),
    "leaky_relu": (lambda a: np.where(a > 0, a, 0.01 * a), lambda a: np.where(a > 0, 1.0, 0.01)),
}


def _ligru_norm_fwd(u, valid, w, norm, training, running, momentum):
    """The input projection u [T, N, G] normalized: (w, saved); updates `running` in training."""
    if norm == "batchnorm":
        rows = u[valid]
        if training:
            mu, var = rows.mean(0), rows.var(0)
            m = rows.shape[0]
            running["mean"][...] = (1 - momentum) * running["mean"] + momentum * mu
            running["var"][...] = (1 - momentum) * running["var"] + momentum * var * m / max(m - 1, 1)
        else:
            mu, var = running["mean"], running["var"]
        rstd = 1.0 / np.sqrt(var + LN_EPS)
        xh = (u - mu) * rstd
        out = w["norm_w"] * xh + w.get("norm_b", 0.0)
        return out, dict(xh=xh, rstd=rstd, training=training)
    if norm == "layernorm":
        shape = u.shape
        out, saved = _ln(u.reshape(-1, shape[2]), w["norm_w"], w.get("norm_b"))
        return out.reshape(shape), dict(ln=saved, shape=shape)
    return u + w.get("bias", 0.0), {}


def _ligru_norm_bwd(dw, valid, w, g, norm, saved):
    """dL/du from dL/dw of _ligru_norm_fwd; accumulates the normalization's parameter gradients."""
    if norm == "batchnorm":
        xh, rstd = saved["xh"], saved["rstd"]
        dwv, xv = dw[valid], xh[valid]
        g["norm_w"] += (dwv * xv).sum(0)
        if "norm_b" in g:
            g["norm_b"] += dwv.sum(0)
        du = np.zeros_like(dw)
        a = dwv * w["norm_w"]
        if saved["training"]:
            du[valid] = rstd * (a - a.mean(0) - xv * (a * xv).mean(0))
        else:
            du[valid] = rstd * a
        return du
    if norm == "layernorm":
        shape = saved["shape"]
        flat = dw.reshape(-1, shape[2])
        du, g_w = _ln_bwd(flat, w["norm_w"], saved["ln"])
        g["norm_w"] += g_w
        if "norm_b" in g:
            g["norm_b"] += flat.sum(0)
        return du.reshape(shape)
    if "bias" in g:
        g["bias"] += dw[valid].sum(0)
    return dw


LIGRU_PARAMS = {"weight_ih": "w_ih", "weight_hh": "w_hh", "norm_weight": "norm_w", "norm_bias": "norm_b",
                "bias_ih": "bias", "ln_hh_weight": "ln_hh_w", "ln_hh_bias": "ln_hh_b"}


def ligru_forward(kind, x, params, h0=None, lengths=None, *, num_layers=1, bidirectional=False,
                  nonlinearity="relu", normalization="batchnorm", training=True, running=None, momentum=0.05,
                  cand_masks=None, dropout_masks=None):
    """Li-GRU (``kind="ligru"``) or SLi-GRU (``"sligru"``) stack on time-major ``x [T, N, C]`` (float64).

    ``params`` under fastrnn's names (suffix ``_l{k}[_reverse]``): ``weight_ih [2H, C_k]``,
    ``weight_hh [2H, H]``, ``norm_weight``/``norm_bias [2H]`` (batchnorm, layernorm),
    ``bias_ih [2H]`` (no normalization), ``ln_hh_weight``/``ln_hh_bias [2H]`` (SLi-GRU affine);
    ``running`` maps ``norm_running_mean``/``norm_running_var`` names to arrays, updated in place in
    training (batchnorm). ``cand_masks [L*D, N, H]``: scaled dropout masks of the candidate.
    Returns ``(out [T, N, D*H], h_n [L*D, N, H], cache)``.
    """
    x = np.asarray(x, np.float64)
    T, N, _ = x.shape
    L, D = num_layers, (2 if bidirectional else 1)
    H = np.asarray(params["weight_hh_l0"]).shape[1]
    act, _ = LIGRU_ACTIVATIONS[nonlinearity]
    h0 = np.zeros((L * D, N, H)) if h0 is None else np.asarray(h0, np.float64)
    lens = np.full(N, T) if lengths is None else np.asarray(lengths)
    valid_tn = np.arange(T)[:, None] < lens[None, :]
    h_n = np.zeros((L * D, N, H))
    inp, layers = x, []
    for l in range(L):
        out = np.zeros((T, N, D * H))
        dirs = []
        for d in range(D):
            s_idx, sfx = l * D + d, _suffix(l, d)
            w = {key: np.asarray(params[name + sfx], np.float64) for name, key in LIGRU_PARAMS.items()
                 if name + sfx in params}
            run = None
            if normalization == "batchnorm":
                run = {"mean": running["norm_running_mean" + sfx], "var": running["norm_running_var" + sfx]}
            u = inp @ w["w_ih"].T
            wx, norm_saved = _ligru_norm_fwd(u, valid_tn, w, normalization, training, run, momentum)
            m = np.ones((N, H)) if cand_masks is None else np.asarray(cand_masks[s_idx], np.float64)
            h = h0[s_idx].copy()
            steps = []
            for t in (range(T) if d == 0 else range(T - 1, -1, -1)):
                hp = h @ w["w_hh"].T
                ln_saved = None
                if kind == "sligru":
                    hp, ln_saved = _ln(hp, w.get("ln_hh_w", np.ones(2 * H)), w.get("ln_hh_b"))
                g = wx[t] + hp
                a, z = g[:, :H], sigmoid(g[:, H:])
                c = act(a)
                h_new = z * h + (1 - z) * m * c
                valid = valid_tn[t][:, None]
                steps.append((t, dict(h=h, a=a, z=z, c=c, m=m, ln=ln_saved, valid=valid)))
                h = np.where(valid, h_new, h)
                out[t, :, d * H:(d + 1) * H] = np.where(valid, h_new, 0.0)
            h_n[s_idx] = h
            dirs.append(dict(w=w, steps=steps, norm=norm_saved))
        layers.append(dict(inp=inp, dirs=dirs))
        inp = out if (dropout_masks is None or l == L - 1) else out * np.asarray(dropout_masks[l], np.float64)
    cache = dict(kind=kind, layers=layers, T=T, N=N, H=H, L=L, D=D, lens=lens, valid=valid_tn,
                 nonlinearity=nonlinearity, normalization=normalization, masks=dropout_masks)
    return out, h_n, cache


def ligru_backward(cache, grad_out, grad_h_n=None, bptt_clip=None):
    """BPTT of ``sum(out*grad_out) + sum(h_n*grad_h_n)`` of `ligru_forward`: ``(grad_x, grad_h0, grads)``."""
    T, N, H, L, D = cache["T"], cache["N"], cache["H"], cache["L"], cache["D"]
    _, dact = LIGRU_ACTIVATIONS[cache["nonlinearity"]]
    clip = (lambda v: v) if not bptt_clip else (lambda v: np.clip(v, -bptt_clip, bptt_clip))
    valid_tn = cache["valid"]
    d_out = np.zeros((T, N, D * H)) if grad_out is None else np.asarray(grad_out, np.float64) * valid_tn[:, :, None]
    ghn = np.zeros((L * D, N, H)) if grad_h_n is None else np.asarray(grad_h_n, np.float64)
    grads, grad_h0 = {}, np.zeros((L * D, N, H))
    names = {v: k for k, v in LIGRU_PARAMS.items()}
    for l in range(L - 1, -1, -1):
        layer = cache["layers"][l]
        inp = layer["inp"]
        d_inp = np.zeros_like(inp)
        for d in range(D):
            entry = layer["dirs"][d]
            w = entry["w"]
            g = {k: np.zeros_like(v) for k, v in w.items()}
            if cache["kind"] == "sligru":
                g.setdefault("_ln_w", np.zeros(2 * H))
            dh = ghn[l * D + d].copy()
            dwx = np.zeros((T, N, 2 * H))
            for t, s in reversed(entry["steps"]):
                valid = s["valid"]
                dh = dh + d_out[t, :, d * H:(d + 1) * H]
                dhv = np.where(valid, dh, 0.0)
                z, c, m = s["z"], s["c"], s["m"]
                da = clip(dhv * (1 - z) * m * dact(s["a"]))
                dz = clip(dhv * (s["h"] - m * c) * z * (1 - z))
                dgate = np.concatenate([da, dz], axis=1)
                dwx[t] = dgate
                dhp = dgate
                if s["ln"] is not None:
                    dhp, g_ln = _ln_bwd(dgate, w.get("ln_hh_w", np.ones(2 * H)), s["ln"])
                    g["_ln_w"] += g_ln
                    if "ln_hh_b" in g:
                        g["ln_hh_b"] += dgate.sum(0)
                g["w_hh"] += dhp.T @ s["h"]
                dh_prev = dhv * z + dhp @ w["w_hh"]
                dh = np.where(valid, dh_prev, dh)
            grad_h0[l * D + d] = dh
            du = _ligru_norm_bwd(dwx, valid_tn, w, g, cache["normalization"], entry["norm"])
            g["w_ih"] += np.einsum("tng,tnc->gc", du, inp)
            d_inp += du @ w["w_ih"]
            if "ln_hh_w" in g:
                g["ln_hh_w"] = g["_ln_w"]
            sfx = _suffix(l, d)
            for key, val in g.items():
                if key in names:
                    grads[names[key] + sfx] = val
        if l > 0:
            masks = cache["masks"]
            d_out = d_inp if masks is None else d_inp * np.asarray(masks[l - 1], np.float64)
            d_out = d_out * valid_tn[:, :, None]
        else:
            grad_x = d_inp
    return grad_x, grad_h0, grads
