"""bf16 training (`compute_dtype="bfloat16"` in training mode): forward and BPTT with every
product on bf16-rounded operands and float32 sums; parameters, gradients, gates and states stay
float32 (torch's autocast keeps them so too).

The oracle is a NumPy emulation of the same arithmetic (reduced_emulation.emulate_bf16_training,
float64 sums and gate functions): the kernels differ from it by float32 roundings (~1e-7
relative here), while float32 training is 1e-3 away from it, so a product whose operands were
not rounded, or rounded where they should not be, fails the comparison. Then every variant
against float32 training, the error against float64 as T and H grow, the diagnostics, and the
task-level check: the adding problem and the sine task reach float32's loss in bf16."""
import functools

import numpy as np
import pytest

import fastrnn
from fastrnn import functional as F
from fastrnn.core import reference as ref
from reduced_emulation import bf16, emulate_bf16_training, make


def rel(a, b):
    """The relative error in the 2-norm (absolute where b is zero: T = 1's dW_hh)."""
    return np.linalg.norm(np.asarray(a, np.float64) - b) / (np.linalg.norm(b) or 1.0)


def train_step(layer, x, dy, compute_dtype, **kw):
    """One training forward and backward from zero gradients: (out, dx, grads)."""
    layer.compute_dtype = compute_dtype
    layer.train()
    for g in layer.grads.values():
        g[...] = 0
    out = layer(x, **kw)[0]
    dx = layer.backward(dy)[0]
    return out, dx, {k: g.copy() for k, g in layer.grads.items()}


@pytest.mark.parametrize("cell", ["rnn_tanh", "lstm", "gru"])
@pytest.mark.parametrize("T,N,C,H", [(1, 1, 1, 1), (4, 1, 3, 15), (3, 7, 64, 16), (5, 2, 5, 17), (7, 3, 21, 35),
                                     (2, 9, 41, 70)])
def test_every_product_is_the_bf16_one(isa, cell, T, N, C, H):
    layer = make(cell, C, H)
    rng = np.random.default_rng(T * 100 + H)
    x = rng.standard_normal((T, N, C)).astype(np.float32)
    dy = rng.standard_normal((T, N, H)).astype(np.float32)
    want_out, want_dx, want = emulate_bf16_training(cell, x, layer.params, dy)
    out, dx, grads = train_step(layer, x, dy, "bfloat16")
    assert rel(out, want_out) < 2e-5
    assert rel(dx, want_dx) < 2e-5
    for k in want:
        assert rel(grads[k], want[k]) < 2e-5, k
    if H >= 15:  # float32 training is far from the emulation: the test sees the rounding
        out32, dx32, grads32 = train_step(layer, x, dy, None)
        assert rel(dx32, want_dx) > 2e-4
        assert rel(grads32["weight_hh_l0"], want["weight_hh_l0"]) > 2e-4


@pytest.mark.parametrize("kind,kw", [
    ("lstm", {}), ("lstm", {"proj_size": 12}), ("lstm", {"proj_size": 12, "peephole": True}),
    ("lstm", {"peephole": True}), ("gru", {}), ("gru", {"reset_after": False}), ("rnn_tanh", {}), ("rnn_relu", {}),
    ("LayerNormLSTM", {}), ("LayerNormGRU", {}), ("LiGRU", {}), ("LiGRU", {"normalization": "layernorm"}),
    ("SLiGRU", {}), ("lstm", {"recurrent_dropout": 0.3, "zoneout_h": 0.2}), ("gru", {"zoneout_h": 0.2})])
def test_every_variant_trains_in_bf16(isa, kind, kw):
    # two layers, both directions, inter-layer dropout, lengths; a fresh layer per run: the same
    # weights and the same noise (rng=0). Against float32 training on the bf16-rounded weights and
    # input (what remains is the rounding of h, of the gradients and of the products' other
    # inputs), and against float32 itself: the LayerNorm cells' normalization of short rows
    # amplifies the rounding of the weights most (9 % in dx for LayerNorm LSTM and SLi-GRU here,
    # as much as float32 training on the rounded weights gives), and the Li-GRUs' ReLU and batch
    # norm over 10 valid rows 5-16 %: their bounds are twice the plain cells'.
    C, H, T = 19, 40, 6
    rng = np.random.default_rng(3)
    x = rng.standard_normal((T, 3, C)).astype(np.float32)
    dy = rng.standard_normal((T, 3, 2 * (kw.get("proj_size") or H))).astype(np.float32)

    def run(compute_dtype, rounded=False):
        layer = _stack(kind, C, H, kw)
        if rounded:
            for k, v in layer.params.items():
                if k.startswith(("weight_ih", "weight_hh", "weight_hr")):
                    v[...] = bf16(v)
        return train_step(layer, bf16(x).astype(np.float32) if rounded else x, dy, compute_dtype, lengths=[6, 3, 1])

    near, far = (0.1, 0.25) if kind in ("LayerNormLSTM", "LayerNormGRU", "LiGRU", "SLiGRU") else (0.05, 0.15)
    (o32, dx32, g32), (o16, dx16, g16), (o_r, dx_r, g_r) = run(None), run("bfloat16"), run(None, rounded=True)
    for got, want, bound in ((o16, o_r, near), (dx16, dx_r, near), (o16, o32, far), (dx16, dx32, far)):
        assert 1e-7 < rel(got, want) < bound
    for k in g32:
        if np.abs(g32[k]).max() > 0:
            assert rel(g16[k], g_r[k]) < near and rel(g16[k], g32[k]) < far, k
    assert (o16[3:, 1] == 0).all() and (dx16[3:, 1] == 0).all()  # padded steps: no output, no gradient


def _stack(kind, C, H, kw):
    """A 2-layer bidirectional layer of `kind` with inter-layer dropout, rng=0."""
    if kind in ("lstm", "gru", "rnn_tanh", "rnn_relu"):
        return make(kind, C, H, num_layers=2, bidirectional=True, dropout=0.2, **kw)
    return getattr(fastrnn, kind)(C, H, num_layers=2, bidirectional=True, dropout=0.2, rng=0, **kw)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("H,T", [(32, 100), (128, 20), (64, 10000)])
def test_gradient_error_against_float64(cell, H, T):
    # docs/precision.md tabulates this (the largest 2-norm relative error of dx, dW_ih and dW_hh)
    # for T up to 1,000: 2.5e-3 to 3.7e-3, flat in T and H; over T = 10,000 it does not drift.
    # float32 is at 1e-6
    layer = make(cell, H, H)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((T, 4, H)).astype(np.float32)
    dy = rng.standard_normal((T, 4, H)).astype(np.float32)
    p64 = {k: v.astype(np.float64) for k, v in layer.params.items()}
    _, _, _, cache = ref.forward(cell, x.astype(np.float64), p64)
    dx64, _, _, g64 = ref.backward(cache, dy.astype(np.float64))
    _, dx, grads = train_step(layer, x, dy, "bfloat16")
    _, dx32, grads32 = train_step(layer, x, dy, None)
    for got, got32, want in ((dx, dx32, dx64), (grads["weight_hh_l0"], grads32["weight_hh_l0"], g64["weight_hh_l0"]),
                             (grads["weight_ih_l0"], grads32["weight_ih_l0"], g64["weight_ih_l0"])):
        assert 1e-4 < rel(got, want) < 1e-2
        assert rel(got32, want) < 1e-5


def test_diagnostics_record_bf16_bptt():
    # the gradient norms recorded inside BPTT and the saturation read from the cache, in bf16
    x = np.random.default_rng(0).standard_normal((30, 4, 8)).astype(np.float32)
    reports = {}
    for cd in (None, "bfloat16"):
        layer = fastrnn.LSTM(8, 24, rng=0, compute_dtype=cd)
        with fastrnn.diagnostics.record(layer) as rec:
            out, _ = layer(x)
            layer.backward(np.ones_like(out) / out.size)
        reports[cd] = rec.report()
    a, b = reports[None], reports["bfloat16"]
    np.testing.assert_allclose(b.grad_h_norm, a.grad_h_norm, rtol=0.05)
    for gate in a.saturation:
        np.testing.assert_allclose(b.saturation[gate], a.saturation[gate], atol=0.05)
    assert not np.array_equal(b.grad_h_norm, a.grad_h_norm)


def _fit(task, cell, compute_dtype, seed=0, T=50, H=32, epochs=20, per_epoch=30):
    """Train on `task` with Adam, global-norm clipping and a cosine schedule (the same seeds, data
    and steps for every precision); the final loss on 512 held-out sequences."""
    make_batch = (lambda r, n: fastrnn.tasks.adding(T, n, rng=r)) if task == "adding" else \
        (lambda r, n: fastrnn.tasks.sine(T, n, rng=r))
    n_in = 2 if task == "adding" else 1
    layer = (fastrnn.LSTM if cell == "lstm" else fastrnn.GRU)(n_in, H, rng=seed, compute_dtype=compute_dtype)
    fastrnn.init.apply_(layer, "chrono", rng=seed + 1, t_max=T)
    model = fastrnn.Sequential(*([layer] + ([fastrnn.LastStep()] if task == "adding" else [])
                                 + [fastrnn.Linear(H, 1, rng=seed + 2)]))
    opt = fastrnn.optim.Adam(model, lr=0.01)
    rng = np.random.default_rng(seed + 100)
    history = fastrnn.fit(model, lambda: [make_batch(rng, 64) for _ in range(per_epoch)], fastrnn.losses.mse, opt,
                          epochs=epochs, clip=functools.partial(fastrnn.clip.clip_by_global_norm_, max_norm=1.0),
                          scheduler=fastrnn.optim.CosineAnnealingLR(opt, T_max=epochs), verbose=False,
                          val_data=[make_batch(np.random.default_rng(seed + 999), 512)])
    return history.val_loss[-1]


@pytest.mark.parametrize("task", ["adding", "sine"])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_bf16_training_reaches_float32_loss(task, cell):
    # the criterion: the same seeds and steps, bf16's final loss <= 1.1 x float32's + 1e-4
    # (measured: 0.95-1.02x); float32 must have learned the task for this to mean anything
    fp32, bf16_loss = _fit(task, cell, None), _fit(task, cell, "bfloat16")
    baseline = fastrnn.tasks.adding_baseline() if task == "adding" else fastrnn.tasks.sine_baseline(predictor="last")
    assert fp32 < 0.2 * baseline
    assert bf16_loss <= 1.1 * fp32 + 1e-4, (bf16_loss, fp32)
    assert bf16_loss != fp32


def test_functional_bf16_training_and_refusals():
    layer = fastrnn.LSTM(3, 5, rng=0)
    x = np.random.default_rng(1).standard_normal((4, 2, 3)).astype(np.float32)
    out, _, ctx = F.lstm_forward(x, layer.params, training=True, compute_dtype="bfloat16")
    assert ctx.precision == "bfloat16"
    gx, _, _, grads = F.backward(ctx, np.ones_like(out))
    layer.compute_dtype = "bfloat16"
    np.testing.assert_array_equal(layer(x)[0], out)
    np.testing.assert_array_equal(layer.backward(np.ones_like(out))[0], gx)
    for k, g in grads.items():
        np.testing.assert_array_equal(layer.grads[k], g)
    with pytest.raises(ValueError, match="weight_drop"):
        fastrnn.LSTM(3, 5, rng=0, weight_drop=0.5, compute_dtype="bfloat16")(x)
    with pytest.raises(ValueError, match="int8 has no gradients"):
        F.lstm_forward(x, layer.params, training=True, compute_dtype="int8")
    with pytest.raises(ValueError, match="rounds float32 parameters"):
        F.lstm_forward(x.astype(np.float64), {k: v.astype(np.float64) for k, v in layer.params.items()},
                       training=True, compute_dtype="bfloat16")


@pytest.mark.parametrize("kind,kw", [
    ("lstm", {}), ("lstm", {"proj_size": 7}), ("lstm", {"proj_size": 7, "peephole": True}), ("gru", {}),
    ("gru", {"reset_after": False}), ("rnn_tanh", {}), ("LayerNormLSTM", {}), ("LayerNormGRU", {}), ("LiGRU", {}),
    ("SLiGRU", {}), ("lstm", {"zoneout_c": 0.2}), ("lstm", {"recurrent_dropout": 0.3, "zoneout_h": 0.2})])
def test_retain_gives_the_same_bits(kind, kw):
    # retain=True keeps the gate gradients in scratch, so BPTT's products read their other
    # operands (GRU reset_after=False's r*h, LSTMP's m) from copies instead of the rounded gate
    # matrix: the results must not change
    C, H, T = 11, 19, 5
    x = np.random.default_rng(0).standard_normal((T, 3, C)).astype(np.float32)
    results = []
    for retain in (False, True):
        layer = _stack(kind, C, H, kw)
        layer.compute_dtype = "bfloat16"
        out = layer(x, lengths=[5, 3, 2])[0]
        dy = np.random.default_rng(2).standard_normal(out.shape).astype(np.float32)
        results.append((out, *F.backward(layer._ctx, dy, retain=retain)))
    (o0, dx0, _, _, g0), (o1, dx1, _, _, g1) = results
    np.testing.assert_array_equal(o0, o1)
    np.testing.assert_array_equal(dx0, dx1)
    for k in g0:
        np.testing.assert_array_equal(g0[k], g1[k], err_msg=k)


@pytest.mark.parametrize("kind,kw,layernorm", [
    ("lstm", {}, False), ("gru", {}, False), ("gru", {"reset_after": False}, False), ("LayerNormLSTM", {}, True)])
def test_weight_gradients_are_bf16_products_of_the_gate_gradients(kind, kw, layernorm):
    # Two layers, both directions: after a backward without retain the training cache holds the
    # gate gradients where the gates were, so each weight gradient can be recomputed from them
    # as a product of bf16-rounded operands in float64 (the cache's layout: csrc/core/skeleton.h,
    # CacheLayout; rows of 4H for LSTM and GRU, LayerNorm LSTM's xhat blocks after them).
    L, D, C, H, T, N = 2, 2, 11, 19, 5, 3
    cls = {"lstm": fastrnn.LSTM, "gru": fastrnn.GRU, "LayerNormLSTM": fastrnn.LayerNormLSTM}[kind]
    layer = cls(C, H, num_layers=L, bidirectional=True, rng=0, compute_dtype="bfloat16", **kw)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, N, C)).astype(np.float32)
    out = layer(x)[0]
    ctx = layer._ctx
    cache = ctx.cache
    gx, _, _, grads = F.backward(ctx, rng.standard_normal(out.shape).astype(np.float32))
    G = 4 if kind != "gru" else 3
    GH, K, TN = G * H, H, T * N
    ld = 4 * H
    xhat_ih = xhat_hh = None
    if layernorm:
        xhat_ih, xhat_hh = ld, ld + GH
        ld += 2 * GH + H + 3
    dir_block = TN * ld + (TN * H if G == 4 else 0)
    layer_block = TN * D * K + D * dir_block
    h0 = cache[L * layer_block:L * layer_block + L * D * N * K].reshape(L * D, N, K)
    for l in range(L):
        X = x.reshape(TN, C) if l == 0 else cache[(l - 1) * layer_block:(l - 1) * layer_block + TN * D * K].reshape(
            TN, D * K)
        Y = cache[l * layer_block:l * layer_block + TN * D * K].reshape(T, N, D * K)
        dx_want = 0.0
        for d in range(D):
            sfx = f"_l{l}" + ("_reverse" if d else "")
            at = l * layer_block + layer_block - (D - d) * dir_block
            rows = cache[at:at + TN * ld].reshape(TN, ld)
            dgx = rows[:, xhat_ih:xhat_ih + GH] if layernorm else rows[:, :GH]
            assert rel(grads["weight_ih" + sfx], bf16(dgx).T @ bf16(X)) < 1e-6
            y = Y[:, :, d * K:(d + 1) * K]
            hp = np.empty((T, N, K), np.float32)  # h_{t-1} in this direction's order
            if d == 0:
                hp[0], hp[1:] = h0[l * D + d], y[:-1]
            else:
                hp[-1], hp[:-1] = h0[l * D + d], y[1:]
            hp = hp.reshape(TN, K)
            if layernorm:
                want = bf16(rows[:, xhat_hh:xhat_hh + GH]).T @ bf16(hp)
            elif G == 3:  # bands: r, z from h; n from h (reset_after) or from the cached r*h
                n_in = hp if kw.get("reset_after", True) else rows[:, 3 * H:4 * H]
                want = np.concatenate([bf16(rows[:, :2 * H]).T @ bf16(hp), bf16(rows[:, 3 * H:4 * H] if
                                       kw.get("reset_after", True) else rows[:, 2 * H:3 * H]).T @ bf16(n_in)])
            else:
                want = bf16(rows[:, :GH]).T @ bf16(hp)
            assert rel(grads["weight_hh" + sfx], want) < 1e-6, sfx
            if l == 0:
                dx_want = dx_want + bf16(dgx) @ bf16(layer.params["weight_ih" + sfx])
        if l == 0:
            assert rel(gx.reshape(TN, C), dx_want) < 1e-6
