"""Runs the fuzz cases of tests/test_fuzz.py, in a child process so a crash or a hang fails one test.

A case is a plain dict (so a failure prints a reproducer). ``run_case(case)`` builds every array
from ``case["seed"]``, calls fastrnn and returns a plain dict::

    {"outcome": "ok"}  or  {"outcome": "error", "error": "ValueError", "message": "..."}
    + "modified": names of input arrays whose bytes changed (must stay empty)
    + "problems": anything else that is wrong (shapes, dtypes, warnings, mismatch with the float64
      reference, which every valid case with finite inputs is compared against)

Run as a script it serves cases from stdin (length-prefixed pickles) until stdin closes; with a
case as argument it runs that one case and prints the result (the reproducer of a failure)::

    python tests/fuzz_worker.py "{'api': 'layer', ...}"
"""
from __future__ import annotations

import ast
import math
import os
import pickle
import struct
import sys
import traceback
import warnings

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import fastrnn  # noqa: E402
from fastrnn.core import reference as ref  # noqa: E402
from fastrnn import functional as F  # noqa: E402
from util import CELLS, LAYER  # noqa: E402

KIND = {"rnn_tanh": "rnn", "rnn_relu": "rnn", "lstm": "lstm", "gru": "gru", "gru_v1": "gru"}
TOL = {"float32": 2e-5, "float64": 1e-10}  # scaled error vs the float64 reference (see util.scaled_error)


def tolerance(case, dtype):
    """LayerNorm over a handful of units is ill-conditioned (rounding amplified by ~1/std of a row
    of 2 values): float32 errors reach 4e-5 there, float64 ones 1e-13 (LN LSTM, H = 2)."""
    tol = TOL[np.dtype(dtype).name]
    return tol * 10 if case.get("layer_norm") and np.dtype(dtype) == np.float32 else tol
WRONG_DTYPES = {"float16": np.float16, "int32": np.int32, "bool": np.bool_, "complex64": np.complex64,
                "object": object}


# --------------------------------------------------------------------------- helpers

class Snapshots:
    """Bitwise copies of the inputs, to prove nothing the caller owns was written."""

    def __init__(self):
        self._items = []

    def add(self, name, value):
        if isinstance(value, np.ndarray):
            self._items.append((name, value, (value.shape, value.dtype.str, _bytes(value))))
        elif isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                self.add(f"{name}[{i}]", v)
        elif isinstance(value, dict):
            for k, v in value.items():
                self.add(f"{name}[{k!r}]", v)
        elif _is_tensor(value):
            self._items.append((name, value, _tensor_state(value)))

    def modified(self):
        out = []
        for name, value, before in self._items:
            now = _tensor_state(value) if _is_tensor(value) else (value.shape, value.dtype.str, _bytes(value))
            if now != before:
                out.append(name)
        return out


def _bytes(a):
    return pickle.dumps(a) if a.dtype == object else np.ascontiguousarray(a).tobytes()


def _is_tensor(v):
    return type(v).__module__.startswith("torch") and hasattr(v, "detach")


def _tensor_state(t):
    return tuple(t.shape), str(t.dtype), t.detach().numpy().tobytes()


def scaled_error(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        return math.inf
    if a.size == 0:
        return 0.0
    return float(np.max(np.abs(a - b)) / max(1.0, float(np.max(np.abs(b)))))


def _layout(a, how, rng):
    """`a` (C-contiguous) in another memory layout with the same values."""
    if how == "c":
        return a
    if how == "fortran":
        return np.asfortranarray(a)
    if how == "strided":  # every other element of a bigger buffer
        big = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), a.dtype)
        big[..., ::2] = a
        return big[..., ::2]
    if how == "readonly":
        a = a.copy()
        a.flags.writeable = False
        return a
    if how == "reversed":  # negative strides
        return np.ascontiguousarray(a[::-1])[::-1]
    if how == "list":
        return a.tolist()
    raise ValueError(how)


def _inject(a, what, rng):
    if what is None or a.size == 0:
        return a
    a = a.copy()
    a.flat[int(rng.integers(a.size))] = {"nan": np.nan, "inf": np.inf, "-inf": -np.inf}[what]
    return a


# --------------------------------------------------------------------------- recurrent layers

def _ctor_kwargs(case):
    cell = case["cell"]
    kind, extra = CELLS[cell]
    kw = dict(extra, num_layers=case["L"], bidirectional=case["D"] == 2, batch_first=case["batch_first"],
              dropout=case["dropout"], bias=case["bias"], dtype=np.dtype(case["dtype"]), rng=case["seed"])
    kw.update(variant_kwargs(case))
    if case.get("bptt_clip"):
        kw["bptt_clip"] = case["bptt_clip"]
    cls = LAYER[kind]
    if case.get("layer_norm"):
        cls = fastrnn.LayerNormLSTM if kind == "lstm" else fastrnn.LayerNormGRU
        kw.pop("reset_after", None)
    fault = case["fault"] or ""
    sizes = [case["C"], case["H"]]
    if fault.startswith("ctor:"):
        name, value = fault[5:].split("=")
        value = ast.literal_eval(value) if value not in ("float16", "int32", "str") else value
        if name in ("input_size", "hidden_size"):
            sizes[0 if name == "input_size" else 1] = value
        elif name == "dtype":
            kw["dtype"] = {"float16": np.float16, "int32": np.int32, "str": "nonsense"}[value]
        else:
            kw[name] = value
    return cls, sizes, kw


def variant_kwargs(case):
    """Constructor/functional options of the cell variants and regularizers the case uses."""
    kind = KIND[case["cell"]]
    kw = {}
    if case.get("proj"):
        kw["proj_size"] = case["proj"]
    if case.get("peephole"):
        kw["peephole"] = True
    if case.get("reg"):
        kw.update(recurrent_dropout=0.3, weight_drop=0.25)
        if kind != "rnn":
            kw["zoneout_h"] = 0.2
        if kind == "lstm":
            kw["zoneout_c"] = 0.3
    return kw


def state_sizes(case):
    """(K, H): the width of h (the projection size for LSTMP) and of c."""
    return case.get("proj") or case["H"], case["H"]


def _inputs(case, rng, dtype):
    """x, hx, lengths, in the user's layout, and the time-major float64 x for the reference."""
    T, N, C, H = case["T"], case["N"], case["C"], case["H"]
    L, D = case["L"], case["D"]
    unbatched, bf = case["unbatched"], case["batch_first"]
    fault = case["fault"] or ""
    lstm = case["cell"] == "lstm"
    if fault == "x:T=0":
        T = 0
    if fault == "x:N=0":
        N = 0
    Cx = C + 1 if fault == "x:C+1" else C
    xt = rng.standard_normal((T, N, Cx))
    x = xt[:, 0, :] if unbatched else (xt.swapaxes(0, 1) if bf else xt)
    if fault == "x:ndim=1":
        x = xt.reshape(-1)
    elif fault == "x:ndim=4":
        x = xt[None]
    x = np.ascontiguousarray(x)
    xdt = dtype
    if fault.startswith("x:dtype="):
        name = fault.split("=")[1]
        xdt = ({"float32": np.float64, "float64": np.float32}[np.dtype(dtype).name] if name == "other"
               else WRONG_DTYPES[name])
    x = _inject(x, case["nonfinite"], rng).astype(xdt)
    x = _layout(x, case["layout"], rng) if not fault.startswith("x:dtype=object") else x
    if fault == "x:type=str":
        x = "not an array"
    elif fault == "x:type=None":
        x = None
    elif fault == "x:type=dict":
        x = {"x": 1}

    hx = None
    if case["hx"] or fault.startswith("hx:"):
        K, _ = state_sizes(case)
        shape = (L * D, K) if unbatched else (L * D, N, K)
        c_shape = shape[:-1] + (H,)
        if fault == "hx:shape":
            shape = shape[:-1] + (K + 1,)
        hdt = (np.float64 if np.dtype(dtype) == np.float32 else np.float32) if fault == "hx:dtype" else dtype
        h0 = _layout(rng.standard_normal(shape).astype(hdt), case["layout"] if case["layout"] != "list" else "c", rng)
        c0 = _layout(rng.standard_normal(c_shape).astype(hdt), "readonly", rng)
        if lstm:
            hx = h0 if fault == "hx:not_tuple" else ((h0, c0, h0) if fault == "hx:len3" else (h0, c0))
        else:
            hx = h0
    lengths = None
    if case["lengths"] or fault.startswith("lengths:"):
        lens = rng.integers(1, max(T, 1) + 1, size=max(N, 1))
        if fault == "lengths:0":
            lens[0] = 0
        elif fault == "lengths:T+1":
            lens[-1] = T + 1
        elif fault == "lengths:-1":
            lens[0] = -1
        elif fault == "lengths:N+1":
            lens = np.append(lens, 1)
        elif fault == "lengths:2d":
            lens = lens[None, :]
        elif fault == "lengths:float":
            lens = lens.astype(np.float64)
        elif fault == "lengths:str":
            lens = [str(v) for v in lens]
        kind = case["lengths"] or "int64"
        if not isinstance(lens, list):
            lens = {"int64": lens, "int32": lens.astype(np.int32), "uint8": lens.astype(np.uint8),
                    "list": lens.tolist()}[kind] if lens.dtype.kind in "iu" else lens
        lengths = lens
    return x, hx, lengths


def _expected_shapes(case):
    """Shapes of the output, of h (width K: the projection size for LSTMP) and of c."""
    T, N, L, D = case["T"], case["N"], case["L"], case["D"]
    K, H = state_sizes(case)
    out = (T, D * K) if case["unbatched"] else ((N, T, D * K) if case["batch_first"] else (T, N, D * K))
    state = (L * D,) if case["unbatched"] else (L * D, N)
    return out, state + (K,), state + (H,)


def _reference(case, params, x, hx, lengths, masks, noise, g_out, g_h, g_c):
    """float64 reference of forward + backward, in the user's layout, with the dropout masks and
    regularizer noise the forward used (`noise` = ctx.noise; None in eval mode, where zoneout
    uses its expectation)."""
    kind = KIND[case["cell"]]
    unbatched, bf = case["unbatched"], case["batch_first"]
    f64 = lambda a: None if a is None else np.asarray(a, np.float64)  # noqa: E731
    tm = (lambda a: a[:, None, :]) if unbatched else ((lambda a: a.swapaxes(0, 1)) if bf else (lambda a: a))
    st = (lambda a: a[:, None, :]) if unbatched else (lambda a: a)
    rhx = None
    if hx is not None:
        rhx = (st(f64(hx[0])), st(f64(hx[1]))) if kind == "lstm" else st(f64(hx))
    p64 = {k: f64(v) for k, v in params.items()}
    rm = None if masks is None else [f64(m) for m in masks]
    kw = {}
    if noise is not None:
        kw.update(rec_masks=noise[0], zh_masks=noise[1], zc_masks=noise[2], w_masks=noise[5])
    else:
        vk = variant_kwargs(case)
        kw["zoneout_rates"] = (vk.get("zoneout_h", 0.0), vk.get("zoneout_c", 0.0))
    o, hn, cn, cache = ref.forward(kind, tm(f64(x)), p64, rhx, None if lengths is None else np.asarray(lengths),
                                   num_layers=case["L"], bidirectional=case["D"] == 2,
                                   nonlinearity="relu" if case["cell"] == "rnn_relu" else "tanh",
                                   reset_after=case["cell"] != "gru_v1", bias=case["bias"], dropout_masks=rm,
                                   layer_norm=bool(case.get("layer_norm")), **kw)
    opt_st = lambda a: None if a is None else st(f64(a))  # noqa: E731
    gx, gh0, gc0, grads = ref.backward(cache, tm(f64(g_out)), opt_st(g_h), opt_st(g_c),
                                       bptt_clip=case.get("bptt_clip"))
    back = (lambda a: a[:, 0, :]) if unbatched else ((lambda a: a.swapaxes(0, 1)) if bf else (lambda a: a))
    sq = (lambda a: a[:, 0, :]) if unbatched else (lambda a: a)
    return dict(out=back(o), h_n=sq(hn), c_n=None if cn is None else sq(cn), grad_x=back(gx), grad_h0=sq(gh0),
                grad_c0=None if gc0 is None else sq(gc0), grads=grads)


def run_recurrent(case, snaps):
    """api "layer" (fastrnn.RNN/LSTM/GRU) or "functional" (fastrnn.functional on explicit weights)."""
    fastrnn.set_isa(case["isa"])
    fastrnn.set_num_threads(case["threads"])
    rng = np.random.default_rng(case["seed"])
    fault = case["fault"] or ""
    problems = []
    lstm = case["cell"] == "lstm"

    cls, sizes, kw = _ctor_kwargs(case)
    layer = cls(*sizes, **kw)  # constructor faults raise here
    dtype = layer.dtype
    layer.train(case["training"])
    x, hx, lengths = _inputs(case, rng, dtype)
    params = layer.params
    if case["api"] == "functional" and fault == "params:missing":
        params = {k: v for k, v in params.items() if k != list(params)[-1]}
    elif case["api"] == "functional" and fault == "params:shape":
        params = dict(params, weight_hh_l0=params["weight_hh_l0"][:, :-1] if case["H"] > 1 else
                      np.zeros((1, 2), dtype))
    elif case["api"] == "functional" and fault == "params:dtype":
        params = dict(params, weight_ih_l0=params["weight_ih_l0"].astype(np.float16))
    elif case["api"] == "functional" and fault == "params:not_dict":
        params = list(params.values())
    elif case["api"] == "functional" and case["layout"] == "fortran":  # weights in another layout
        params = {k: np.asfortranarray(v) for k, v in params.items()}
    for name, value in (("x", x), ("hx", hx), ("lengths", lengths), ("params", params)):
        snaps.add(name, value)

    out_shape, state_shape, c_shape = _expected_shapes(case)
    if case["api"] == "layer":
        out, state = layer(x, hx, lengths)
        ctx = layer._ctx
    else:
        fwd = {"rnn": F.rnn_forward, "lstm": F.lstm_forward, "gru": F.gru_forward}[KIND[case["cell"]]]
        extra = variant_kwargs(case)
        if KIND[case["cell"]] == "rnn":
            extra["nonlinearity"] = layer.nonlinearity
        if KIND[case["cell"]] == "gru":
            extra["reset_after"] = layer.reset_after
        if case.get("layer_norm"):
            extra["layer_norm"] = True
        out, state, ctx = fwd(x, params, hx, lengths, num_layers=layer.num_layers, bias=layer.bias,
                              batch_first=layer.batch_first, bidirectional=layer.bidirectional,
                              dropout=layer.dropout, training=case["training"], rng=case["seed"], **extra)
    masks = ctx.masks if ctx is not None else None
    noise = ctx.noise if ctx is not None else None
    h_n, c_n = state if lstm else (state, None)
    for name, a, shape in (("out", out, out_shape), ("h_n", h_n, state_shape), ("c_n", c_n, c_shape)):
        if a is None:
            continue
        if a.shape != shape or a.dtype != dtype:
            problems.append(f"{name}: shape {a.shape} dtype {a.dtype}, expected {shape} {dtype}")
        if case["nonfinite"] is None and not np.all(np.isfinite(a)):
            problems.append(f"{name}: non-finite values from finite inputs")

    result = None
    if case["training"] and case["backward"]:
        g_out = rng.standard_normal(out.shape).astype(dtype)
        g_h = rng.standard_normal(h_n.shape).astype(dtype) if case["grad_state"] else None
        g_c = rng.standard_normal(c_n.shape).astype(dtype) if case["grad_state"] and lstm else None
        if fault == "grad:shape":
            g_out = g_out[..., :-1]
        elif fault == "grad:dtype":
            g_out = g_out.astype(np.float64 if dtype == np.float32 else np.float32)
        elif fault == "grad_h_n:shape":
            g_h = rng.standard_normal(h_n.shape[:-1] + (h_n.shape[-1] + 1,)).astype(dtype)
        g_out_user = _layout(g_out, case["layout"], rng) if fault == "" else g_out
        snaps.add("grad_output", g_out_user)
        snaps.add("grad_h_n", g_h)
        snaps.add("grad_c_n", g_c)
        if case["api"] == "layer":
            layer.zero_grad()
            if fault == "backward:eval":
                layer.eval()
                layer(x, hx, lengths)
            back = layer.backward(g_out_user, g_h, g_c) if lstm else layer.backward(g_out_user, g_h)
            if fault == "backward:twice":
                back = layer.backward(g_out_user, g_h, g_c) if lstm else layer.backward(g_out_user, g_h)
            grads = layer.grads
        else:
            if fault == "backward:twice":
                F.backward(ctx, g_out_user, g_h, g_c)
            gx, gh0, gc0, grads = F.backward(ctx, g_out_user, g_h, g_c, bptt_clip=case.get("bptt_clip"))
            back = (gx, gh0, gc0) if lstm else (gx, gh0)
        expect = [("grad_x", np.shape(x) if isinstance(x, np.ndarray) else None), ("grad_h0", state_shape),
                  ("grad_c0", c_shape)]
        for (name, shape), a in zip(expect, back):
            if shape is not None and (a.shape != shape or a.dtype != dtype):
                problems.append(f"{name}: shape {a.shape} dtype {a.dtype}, expected {shape} {dtype}")
        result = dict(out=out, h_n=h_n, c_n=c_n, grad_x=back[0], grad_h0=back[1],
                      grad_c0=back[2] if lstm else None, grads=grads)
        if case["nonfinite"] is None:
            theirs = _reference(case, layer.params, x, hx, lengths, masks, noise, g_out, g_h, g_c)
            tol = tolerance(case, dtype)
            for key, want in theirs.items():
                if key == "grads":
                    for name, g in want.items():
                        err = scaled_error(grads[name], g)
                        if not err <= tol:
                            problems.append(f"grads[{name}]: scaled error {err:.3g} > {tol}")
                elif want is not None:
                    err = scaled_error(result[key], want)
                    if not err <= tol:
                        problems.append(f"{key}: scaled error {err:.3g} > {tol}")
    elif case["nonfinite"] is None:
        theirs = _reference(case, layer.params, x, hx, lengths, masks, noise, np.zeros(out.shape),
                            np.zeros(h_n.shape), None)
        tol = tolerance(case, dtype)
        for key, mine in (("out", out), ("h_n", h_n), ("c_n", c_n)):
            if mine is not None:
                err = scaled_error(mine, theirs[key])
                if not err <= tol:
                    problems.append(f"{key}: scaled error {err:.3g} > {tol}")
    return problems


# --------------------------------------------------------------------------- torch front end

def run_torch(case, snaps):
    """fastrnn.torch module vs its torch.nn twin on the same tensors: same error, or close results."""
    import torch
    import fastrnn.torch as ft

    torch.set_num_threads(1)
    fastrnn.set_isa(case["isa"])
    fastrnn.set_num_threads(case["threads"])
    torch.manual_seed(case["seed"])
    rng = np.random.default_rng(case["seed"])
    problems = []
    kind = KIND[case["cell"]]
    tdt = {"float32": torch.float32, "float64": torch.float64}[case["dtype"]]
    kw = dict(num_layers=case["L"], bidirectional=case["D"] == 2, batch_first=case["batch_first"],
              bias=case["bias"], dtype=tdt)
    if kind == "rnn":
        kw["nonlinearity"] = "relu" if case["cell"] == "rnn_relu" else "tanh"
    twin = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[kind](case["C"], case["H"], **kw)
    mine = {"rnn": ft.RNN, "lstm": ft.LSTM, "gru": ft.GRU}[kind](case["C"], case["H"], **kw)
    mine.load_state_dict(twin.state_dict())
    fault = case["fault"] or ""
    T, N, C, H, L, D = case["T"], case["N"], case["C"], case["H"], case["L"], case["D"]
    if fault == "x:T=0":
        T = 0
    if fault == "x:N=0":
        N = 0
    if fault == "x:C+1":
        C += 1
    shape = (T, C) if case["unbatched"] else ((N, T, C) if case["batch_first"] else (T, N, C))
    if fault == "x:ndim=4":
        shape = (1,) + shape
    xdt = tdt
    if fault.startswith("x:dtype="):
        xdt = {"other": torch.float64 if tdt == torch.float32 else torch.float32, "float16": torch.float16,
               "int32": torch.int32, "bool": torch.bool, "complex64": torch.complex64}[fault.split("=")[1]]
    base = _inject(rng.standard_normal(shape), case["nonfinite"], rng)
    x = torch.from_numpy(base).to(xdt)
    if case["layout"] in ("fortran", "strided", "reversed") and x.dim() >= 2:  # a non-contiguous view
        x = x.transpose(0, -1).contiguous().transpose(0, -1)
    hx = None
    if case["hx"] or fault.startswith("hx:"):
        sshape = (L * D, H) if case["unbatched"] else (L * D, N, H)
        if fault == "hx:shape":
            sshape = sshape[:-1] + (H + 1,)
        hdt = (torch.float64 if tdt == torch.float32 else torch.float32) if fault == "hx:dtype" else tdt
        h0 = torch.from_numpy(rng.standard_normal(sshape)).to(hdt)
        hx = (h0, h0.clone()) if kind == "lstm" and fault != "hx:not_tuple" else h0
    inp = x
    packed = case["lengths"] is not None and not case["unbatched"] and N > 0 and T > 0 and x.dim() == 3
    if packed:
        lens = torch.from_numpy(rng.integers(1, T + 1, size=N))
        inp = torch.nn.utils.rnn.pack_padded_sequence(x, lens, batch_first=case["batch_first"], enforce_sorted=False)
    snaps.add("x", x)
    snaps.add("hx", hx)

    def call(module, train):
        module.train(train)
        xi = inp
        if case["backward"] and x.dtype.is_floating_point:
            xr = x.detach().clone().requires_grad_(True)
            xi = (torch.nn.utils.rnn.pack_padded_sequence(xr, lens, batch_first=case["batch_first"],
                                                          enforce_sorted=False) if packed else xr)
        else:
            xr = None
        out, state = module(xi, hx)
        return xr, out, state

    try:
        twin_res = call(twin, case["training"])
        twin_err = None
    except Exception as exc:  # noqa: BLE001 - any error of torch means "bad input" here
        twin_err = exc
    if twin_err is not None:
        # torch rejected the input: fastrnn must reject it too, with a clear error.
        try:
            call(mine, case["training"])
        except (ValueError, TypeError, RuntimeError):
            return problems
        problems.append(f"torch.nn raised {type(twin_err).__name__}: {twin_err}; fastrnn.torch accepted the input")
        return problems
    if T == 0 or N == 0:  # torch accepts some empty batches; fastrnn documents a ValueError for them
        try:
            call(mine, case["training"])
        except ValueError:
            return problems
    xr_m, out_m, state_m = call(mine, case["training"])
    xr_t, out_t, state_t = twin_res
    if packed:
        out_m = torch.nn.utils.rnn.pad_packed_sequence(out_m, batch_first=case["batch_first"])[0]
        out_t = torch.nn.utils.rnn.pad_packed_sequence(out_t, batch_first=case["batch_first"])[0]
    states_m = state_m if kind == "lstm" else (state_m,)
    states_t = state_t if kind == "lstm" else (state_t,)
    tol = {torch.float32: 1e-4, torch.float64: 1e-9}[tdt]
    pairs = [("out", out_m, out_t)] + [(f"state{i}", a, b) for i, (a, b) in enumerate(zip(states_m, states_t))]
    if case["backward"] and xr_m is not None:
        g = torch.from_numpy(rng.standard_normal(tuple(out_t.shape))).to(tdt)
        (out_m * g).sum().backward()
        (out_t * g).sum().backward()
        pairs.append(("grad_x", xr_m.grad, xr_t.grad))
        for (name, p), (_, q) in zip(mine.named_parameters(), twin.named_parameters()):
            pairs.append((f"grad {name}", p.grad, q.grad))
    if case["nonfinite"] is None:
        for name, a, b in pairs:
            err = scaled_error(a.detach().numpy(), b.detach().numpy())
            if not err <= tol:
                problems.append(f"{name}: scaled error {err:.3g} vs torch.nn > {tol}")
    return problems


# --------------------------------------------------------------------------- init and clip

def _array_arg(case, rng):
    shape = tuple(case["shape"])
    dt = case["dtype"]
    if dt in WRONG_DTYPES:
        a = (rng.standard_normal(shape) * 3).astype(WRONG_DTYPES[dt])
    else:
        a = _inject(rng.standard_normal(shape).astype(dt), case["nonfinite"], rng)
    if case["layout"] == "list":
        return a.tolist()
    if case["layout"] == "readonly":
        a.flags.writeable = False
        return a
    if a.ndim and case["layout"] == "strided":
        return _layout(a, "strided", rng)
    return a


def run_init(case, snaps):
    from fastrnn import init
    rng = np.random.default_rng(case["seed"])
    problems = []
    name = case["fn"]
    fn = getattr(init, name)
    kwargs = dict(case["kwargs"])
    if kwargs.get("rng") == "generator":
        kwargs["rng"] = np.random.default_rng(case["seed"])
    snaps.add("kwargs", kwargs)
    if name.endswith("_"):  # in place: the array is meant to change, nothing else
        arr = _array_arg(case, rng)
        if fn(arr, **kwargs) is not arr:
            problems.append(f"{name} did not return its argument")
        values = np.asarray(arr)
    else:
        values = fn(tuple(case["shape"]), dtype=case["dtype"], **kwargs)
        if values.shape != tuple(case["shape"]) or values.dtype != np.dtype(case["dtype"]):
            problems.append(f"{name}: shape {values.shape} dtype {values.dtype}, expected {case['shape']} "
                            f"{case['dtype']}")
    if not np.all(np.isfinite(values)):
        problems.append(f"{name}: non-finite values")
    return problems


def _global_norm64(arrays, p):
    flat = np.concatenate([np.abs(np.asarray(a, np.float64)).ravel() for a in arrays] + [np.zeros(0)])
    if flat.size == 0:
        return 0.0
    if p == math.inf:
        return float(flat.max())
    m = float(flat.max())
    if m == 0 or not math.isfinite(m):
        return m
    return m * float(np.sum((flat / m) ** p)) ** (1 / p)


def run_clip(case, snaps):
    from fastrnn import clip
    rng = np.random.default_rng(case["seed"])
    problems = []
    name = case["fn"]
    kwargs = dict(case["kwargs"])
    arrays = [_array_arg(dict(case, shape=s), rng) for s in case["shapes"]]
    if case["container"] == "array":
        arrays = arrays[:1]

    def pack(items):
        return {"dict": lambda: {f"g{i}": a for i, a in enumerate(items)}, "list": lambda: list(items),
                "array": lambda: items[0]}[case["container"]]()

    before = [np.array(a, copy=True) if isinstance(a, np.ndarray) else a for a in arrays]
    snaps.add("kwargs", kwargs)
    fn = getattr(clip, name)
    if name == "global_norm":
        snaps.add("grads", arrays)
    if name == "adaptive_clip_":  # weights of the same shapes; only the gradients may change
        weights = [rng.standard_normal(np.shape(a)) for a in arrays]
        snaps.add("params", weights)
        norm = fn(pack(weights), pack(arrays), **kwargs)
    else:
        norm = fn(pack(arrays), **kwargs)
    if not isinstance(norm, float):
        problems.append(f"{name} returned {type(norm).__name__}, expected float")
    if name == "max_norm_":
        return problems
    p = kwargs.get("norm_type", 2.0)
    want = _global_norm64(before, p)
    finite = math.isfinite(want)
    if finite and not math.isclose(norm, want, rel_tol=1e-9, abs_tol=1e-300):
        problems.append(f"{name}: norm {norm!r}, expected {want!r}")
    if finite and name == "clip_by_global_norm_":
        limit = kwargs["max_norm"]
        after = _global_norm64(arrays, p)
        if after > limit * (1 + 1e-5) and after > want * (1 + 1e-6):
            problems.append(f"{name}: norm after clipping {after!r} > max_norm {limit!r}")
    if finite and name == "clip_by_value_":
        v = kwargs["clip_value"]
        if any(np.any(np.abs(a) > np.asarray(v, a.dtype)) for a in arrays):
            problems.append(f"{name}: values beyond clip_value {v}")
    return problems


def run_selftest(case, snaps):
    """For the harness's own test: crash or hang on purpose."""
    if case["action"] == "segfault":
        import ctypes
        ctypes.string_at(0)
    elif case["action"] == "hang":
        import time
        time.sleep(3600)
    return []


RUNNERS = {"layer": run_recurrent, "functional": run_recurrent, "torch": run_torch, "init": run_init,
           "clip": run_clip, "selftest": run_selftest}


def run_case(case):
    """Run one case; never raises for errors of the code under test (they are the result)."""
    snaps = Snapshots()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = {"outcome": "ok", "problems": RUNNERS[case["api"]](case, snaps)}
        except Exception as exc:  # noqa: BLE001 - the error is the outcome to judge
            result = {"outcome": "error", "error": type(exc).__name__, "message": str(exc), "problems": [],
                      "traceback": traceback.format_exc(limit=-3)}
    # fastrnn must not warn (the test suite turns warnings into errors); the fuzzer's own casts may.
    result["problems"] += [f"warning from fastrnn: {w.category.__name__}: {w.message} ({w.filename}:{w.lineno})"
                           for w in caught if os.sep + "fastrnn" + os.sep in w.filename]
    result["modified"] = snaps.modified()
    return result


def _serve():
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # stray prints must not corrupt the protocol
    inp = sys.stdin.buffer
    while True:
        head = inp.read(4)
        if len(head) < 4:
            return
        case = pickle.loads(inp.read(struct.unpack("<I", head)[0]))
        data = pickle.dumps(run_case(case))
        out.write(struct.pack("<I", len(data)) + data)
        out.flush()


if __name__ == "__main__":
    if len(sys.argv) > 1:
        print(run_case(ast.literal_eval(sys.argv[1])))
    else:
        _serve()
