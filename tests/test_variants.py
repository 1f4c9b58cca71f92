"""Cell variants (LSTMP, peepholes, LayerNorm LSTM/GRU) and in-kernel regularizers (recurrent
dropout, zoneout, DropConnect): against the float64 reference and finite differences on every
ISA and dtype, LSTMP against torch.nn.LSTM(proj_size), LayerNorm cells, zoneout and recurrent
dropout against plain torch loops (same masks), peepholes against ONNX Runtime, the
regularizers' expectation, eval-mode and mask-reuse semantics, and thread-count invariance."""
import numpy as np
import pytest

import fastrnn
from fastrnn.core import reference as ref
from fastrnn import functional as F

from util import scaled_error

C = 4
REG = dict(recurrent_dropout=0.3, weight_drop=0.25)
# name -> (layer class, constructor kwargs, reference kind)
VARIANTS = {
    "peephole": (fastrnn.LSTM, dict(peephole=True), "lstm"),
    "lstmp": (fastrnn.LSTM, dict(proj_size=True), "lstm"),
    "lstmp_peephole": (fastrnn.LSTM, dict(proj_size=True, peephole=True), "lstm"),
    "ln_lstm": (fastrnn.LayerNormLSTM, {}, "lstm"),
    "ln_gru": (fastrnn.LayerNormGRU, {}, "gru"),
    "lstm_reg": (fastrnn.LSTM, dict(REG, zoneout_h=0.2, zoneout_c=0.3), "lstm"),
    "gru_reg": (fastrnn.GRU, dict(REG, zoneout_h=0.2), "gru"),
    "gru_v1_reg": (fastrnn.GRU, dict(REG, zoneout_h=0.2, reset_after=False), "gru"),
    "rnn_reg": (fastrnn.RNN, dict(REG, nonlinearity="relu"), "rnn"),
    "lstmp_reg": (fastrnn.LSTM, dict(REG, proj_size=True, peephole=True, zoneout_h=0.2, zoneout_c=0.3), "lstm"),
    "ln_lstm_reg": (fastrnn.LayerNormLSTM, dict(REG, zoneout_h=0.2, zoneout_c=0.3), "lstm"),
    "ln_gru_reg": (fastrnn.LayerNormGRU, dict(REG, zoneout_h=0.2), "gru"),
}
# (H, P for LSTMP, T, N, L, D, lengths): hidden sizes around the SIMD widths, T = 1 and longer.
SHAPES = [(1, None, 1, 2, 1, 1, None), (7, 3, 6, 3, 2, 1, [6, 2, 4]), (8, 5, 5, 2, 1, 2, None),
          (9, 4, 1, 3, 2, 2, None), (17, 9, 7, 3, 2, 2, [3, 7, 1])]
TOL = {np.float64: 1e-10, np.float32: 2e-5}


def make(name, H, P, dtype, L=1, D=1, seed=0, **extra):
    cls, kw, _ = VARIANTS[name]
    kw = dict(kw, **extra)
    if kw.get("proj_size") is True:
        kw["proj_size"] = P
    layer = cls(C, H, num_layers=L, bidirectional=D == 2, dtype=dtype, rng=seed, **kw)
    gen = np.random.default_rng(seed + 100)
    for k, v in layer.params.items():  # move the LayerNorm parameters off their 1 / 0 init
        if k.startswith("ln_"):
            v += gen.uniform(-0.3, 0.3, v.shape).astype(dtype)
    return layer


def ref_forward(layer, x, hx, lengths, ctx_noise=None, training=True):
    """The reference on the layer's parameters and the masks its last forward used."""
    kind = VARIANTS_KIND[type(layer)]
    params = {k: np.asarray(v, np.float64) for k, v in layer.params.items()}
    kw = dict(num_layers=layer.num_layers, bidirectional=layer.bidirectional, bias=layer.bias,
              nonlinearity=getattr(layer, "nonlinearity", "tanh"), reset_after=getattr(layer, "reset_after", True),
              layer_norm=layer.layer_norm)
    if ctx_noise is not None:
        kw.update(rec_masks=ctx_noise[0], zh_masks=ctx_noise[1], zc_masks=ctx_noise[2], w_masks=ctx_noise[5])
    elif not training:
        kw["zoneout_rates"] = (layer.zoneout_h, layer.zoneout_c)
    f64 = (lambda a: None if a is None else np.asarray(a, np.float64))
    hx = None if hx is None else (tuple(map(f64, hx)) if kind == "lstm" else f64(hx))
    return ref.forward(kind, f64(x), params, hx, lengths, **kw)


VARIANTS_KIND = {fastrnn.LSTM: "lstm", fastrnn.LayerNormLSTM: "lstm", fastrnn.GRU: "gru",
                 fastrnn.LayerNormGRU: "gru", fastrnn.RNN: "rnn"}


def random_state(layer, N, gen, dtype):
    S, K = layer.num_layers * layer.num_directions, layer.proj_size or layer.hidden_size
    h0 = gen.standard_normal((S, N, K)).astype(dtype)
    if VARIANTS_KIND[type(layer)] == "lstm":
        return h0, gen.standard_normal((S, N, layer.hidden_size)).astype(dtype)
    return h0


def run_and_compare(layer, x, hx, lengths, tol, seed=3):
    gen = np.random.default_rng(seed)
    lstm = VARIANTS_KIND[type(layer)] == "lstm"
    layer.zero_grad()
    out, state = layer(x, hx, lengths)
    h_n, c_n = state if lstm else (state, None)
    noise = layer._ctx.noise
    g_out, g_h = gen.standard_normal(out.shape).astype(layer.dtype), gen.standard_normal(h_n.shape).astype(layer.dtype)
    g_c = gen.standard_normal(c_n.shape).astype(layer.dtype) if lstm else None
    back = layer.backward(g_out, g_h, g_c) if lstm else layer.backward(g_out, g_h)
    o, hn, cn, cache = ref_forward(layer, x, hx, lengths, noise)
    gx, gh0, gc0, grads = ref.backward(cache, g_out, g_h, g_c)
    pairs = [("out", out, o), ("h_n", h_n, hn), ("grad_x", back[0], gx), ("grad_h0", back[1], gh0)]
    if lstm:
        pairs += [("c_n", c_n, cn), ("grad_c0", back[2], gc0)]
    pairs += [(k, layer.grads[k], g) for k, g in grads.items()]
    assert set(grads) == set(layer.grads)
    for key, mine, theirs in pairs:
        err = scaled_error(mine, theirs)
        assert err <= tol, f"{key}: scaled error {err:.3g} > {tol}"


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"H{s[0]}")
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("name", list(VARIANTS))
def test_matches_reference(isa, name, dtype, shape):
    H, P, T, N, L, D, lengths = shape
    if "lstmp" in name and P is None:
        H, P = 2, 1
    layer = make(name, H, P, dtype, L, D)
    gen = np.random.default_rng(H)
    x = gen.standard_normal((T, N, C)).astype(dtype)
    hx = random_state(layer, N, gen, dtype) if H % 2 else None  # LayerNorm at h0 = 0 too
    run_and_compare(layer, x, hx, lengths, TOL[dtype])


@pytest.mark.parametrize("name", ["lstmp_reg", "ln_lstm_reg", "ln_gru_reg", "gru_v1_reg"])
def test_eval_mode_matches_reference(isa, name):
    # Inference: no dropout masks; zoneout takes its expected update h~ + z*(h - h~).
    layer = make(name, 9, 4, np.float64, L=2, D=2).eval()
    gen = np.random.default_rng(1)
    x = gen.standard_normal((6, 3, C))
    out, _ = layer(x, None, [6, 3, 5])
    o, *_ = ref_forward(layer, x, None, [6, 3, 5], training=False)
    assert scaled_error(out, o) <= 1e-12


def _loss_and_grads(fn, x, params, hx, lengths, noise, g_out, g_h, g_c, **kw):
    out, state, ctx = fn(x, params, hx, lengths, training=True, noise=noise, **kw)
    h_n, c_n = state if isinstance(state, tuple) else (state, None)
    loss = np.sum(out * g_out) + np.sum(h_n * g_h) + (np.sum(c_n * g_c) if c_n is not None else 0.0)
    return loss, ctx


@pytest.mark.parametrize("name", list(VARIANTS))
def test_finite_differences(isa, name):
    # Central differences of the kernels' forward along a random direction of every tensor:
    # the input, the initial states and every parameter, with the regularizer masks fixed.
    cls, kw, kind = VARIANTS[name]
    layer = make(name, 6, 3, np.float64, L=2, D=2)
    gen = np.random.default_rng(5)
    T, N, lengths = 4, 2, [4, 2]
    fn = {"lstm": F.lstm_forward, "gru": F.gru_forward, "rnn": F.rnn_forward}[kind]
    fkw = dict(num_layers=2, bidirectional=True)
    if kind == "lstm":
        fkw.update(proj_size=layer.proj_size, peephole=layer.peephole, layer_norm=layer.layer_norm)
    elif kind == "gru":
        fkw.update(reset_after=layer.reset_after, layer_norm=layer.layer_norm)
    else:
        fkw.update(nonlinearity=layer.nonlinearity)
    x = gen.standard_normal((T, N, C))
    hx = random_state(layer, N, gen, np.float64)
    layer.train()
    layer(x, hx, lengths)
    nz = layer._ctx.noise
    noise = None if nz is None else {k: v for k, v in zip(("rec_mask", "zh_mask", "zc_mask"), nz[:3]) if v is not None}
    if nz is not None and nz[5] is not None:
        noise["w_mask"] = nz[5]
    out, state = layer(x, hx, lengths)
    g_out = gen.standard_normal(out.shape)
    h_n = state[0] if kind == "lstm" else state
    g_h = gen.standard_normal(h_n.shape)
    g_c = gen.standard_normal(state[1].shape) if kind == "lstm" else None
    params = {k: v.copy() for k, v in layer.params.items()}
    _, ctx = _loss_and_grads(fn, x, params, hx, lengths, noise, g_out, g_h, g_c, **fkw)
    gx, gh0, gc0, grads = F.backward(ctx, g_out, g_h, g_c)

    tensors = {"x": (x, gx), "h0": (hx[0] if kind == "lstm" else hx, gh0)}
    if kind == "lstm":
        tensors["c0"] = (hx[1], gc0)
    tensors.update({k: (params[k], grads[k]) for k in params})
    eps = 1e-6
    for key, (arr, grad) in tensors.items():
        v = gen.standard_normal(arr.shape)
        saved = arr.copy()
        losses = []
        for sign in (1, -1):
            arr[...] = saved + sign * eps * v
            losses.append(_loss_and_grads(fn, x, params, hx, lengths, noise, g_out, g_h, g_c, **fkw)[0])
        arr[...] = saved
        fd = (losses[0] - losses[1]) / (2 * eps)
        analytic = float(np.sum(grad * v))
        assert abs(fd - analytic) <= 1e-6 * max(1.0, abs(analytic)), f"{key}: fd {fd} vs analytic {analytic}"


# ---------------------------------------------------------------- LSTMP vs torch

@pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("config", [dict(num_layers=1), dict(num_layers=2, bidirectional=True),
                                    dict(num_layers=2, bias=False, batch_first=True)])
def test_lstmp_matches_torch(isa, dtype, config):
    torch = pytest.importorskip("torch")
    import fastrnn.torch as ft
    torch.manual_seed(0)
    tdt = torch.float64 if dtype == np.float64 else torch.float32
    theirs = torch.nn.LSTM(C, 9, proj_size=4, **config).to(tdt)
    mine_t = ft.LSTM(C, 9, proj_size=4, **config).to(tdt)
    mine_t.load_state_dict(theirs.state_dict())
    mine_np = fastrnn.LSTM(C, 9, proj_size=4, dtype=dtype, **config)
    mine_np.load_state_dict(theirs.state_dict())
    L, D = config.get("num_layers", 1), 2 if config.get("bidirectional") else 1
    x = torch.randn((3, 6, C) if config.get("batch_first") else (6, 3, C), dtype=tdt)
    h0, c0 = torch.randn(L * D, 3, 4, dtype=tdt), torch.randn(L * D, 3, 9, dtype=tdt)
    tol = 1e-10 if dtype == np.float64 else 2e-5
    results = []
    for module in (theirs, mine_t):
        xx = x.clone().requires_grad_()
        hh, cc = h0.clone().requires_grad_(), c0.clone().requires_grad_()
        out, (h_n, c_n) = module(xx, (hh, cc))
        (out.sin().sum() + (h_n * 2).sum() + c_n.cos().sum()).backward()
        results.append([out, h_n, c_n, xx.grad, hh.grad, cc.grad] + [p.grad for p in module.parameters()])
    for a, b in zip(*results):
        assert scaled_error(b.detach().numpy(), a.detach().numpy()) <= tol
    # The NumPy layer, same weights: outputs, states and gradients.
    out, (h_n, c_n) = mine_np(x.numpy(), (h0.numpy(), c0.numpy()))
    g_out = np.cos(out)
    gx, gh0, gc0 = mine_np.backward(g_out, np.full(h_n.shape, 2, dtype), -np.sin(c_n))
    torch_grads = results[0]
    for a, b in zip([out, h_n, c_n, gx, gh0, gc0], torch_grads[:6]):
        assert scaled_error(a, b.detach().numpy()) <= tol
    for (name, p), g in zip(theirs.named_parameters(), torch_grads[6:]):
        assert scaled_error(mine_np.grads[name], g.numpy()) <= tol, name


@pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")
def test_lstmp_packed_sequence_and_convert():
    torch = pytest.importorskip("torch")
    import fastrnn.torch as ft
    from torch.nn.utils.rnn import pack_padded_sequence
    torch.manual_seed(1)
    theirs = torch.nn.LSTM(C, 8, proj_size=3, num_layers=2, bidirectional=True).double()
    mine = ft.convert(theirs)
    assert type(mine) is ft.LSTM and mine.proj_size == 3
    x = torch.randn(6, 3, C, dtype=torch.float64)
    packed = pack_padded_sequence(x, torch.tensor([6, 2, 4]), enforce_sorted=False)
    (o1, (h1, c1)), (o2, (h2, c2)) = theirs(packed), mine(packed)
    for a, b in [(o1.data, o2.data), (h1, h2), (c1, c2)]:
        assert scaled_error(b.detach().numpy(), a.detach().numpy()) <= 1e-12
    assert type(ft.revert(mine)) is torch.nn.LSTM


# ---------------------------------------------------------------- peepholes vs ONNX Runtime

def _onnx_lstm(W, R, B, P, T, N, D, H):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper, numpy_helper
    node = helper.make_node("LSTM", ["X", "W", "R", "B", "seq", "h0", "c0", "P"], ["Y", "Y_h", "Y_c"], hidden_size=H,
                            direction="bidirectional" if D == 2 else "forward")
    f32 = TensorProto.FLOAT
    graph = helper.make_graph(
        [node], "peephole_lstm",
        [helper.make_tensor_value_info("X", f32, [T, N, C]), helper.make_tensor_value_info("seq", TensorProto.INT32, [N]),
         helper.make_tensor_value_info("h0", f32, [D, N, H]), helper.make_tensor_value_info("c0", f32, [D, N, H])],
        [helper.make_tensor_value_info("Y", f32, None), helper.make_tensor_value_info("Y_h", f32, None),
         helper.make_tensor_value_info("Y_c", f32, None)],
        [numpy_helper.from_array(a, n) for a, n in ((W, "W"), (R, "R"), (B, "B"), (P, "P"))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8
    # One thread: ONNX Runtime's own pool threads raced its exit handlers (a heap-use-after-free
    # inside onnxruntime that ASan reported at interpreter exit in .ci/sanitize).
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("D", [1, 2])
def test_peephole_matches_onnxruntime(isa, D):
    # ONNX LSTM: gates i, o, f, c; P = [p_i, p_o, p_f]; it = f(.. + Pi*C_{t-1}), ot = f(.. + Po*C_t).
    H, T, N = 9, 7, 3
    layer = fastrnn.LSTM(C, H, peephole=True, bidirectional=D == 2, rng=2)
    order = [0, 3, 1, 2]  # ours i, f, g, o -> ONNX i, o, f, c
    blocks = lambda w: np.concatenate([w[q * H:(q + 1) * H] for q in order])  # noqa: E731
    sfx = ["_l0", "_l0_reverse"][:D]
    p = layer.params
    W = np.stack([blocks(p["weight_ih" + s]) for s in sfx])
    R = np.stack([blocks(p["weight_hh" + s]) for s in sfx])
    B = np.stack([np.concatenate([blocks(p["bias_ih" + s]), blocks(p["bias_hh" + s])]) for s in sfx])
    P = np.stack([p["weight_peephole" + s][[0, 2, 1]].reshape(-1) for s in sfx])
    sess = _onnx_lstm(W, R, B, P, T, N, D, H)
    gen = np.random.default_rng(4)
    x = gen.standard_normal((T, N, C)).astype(np.float32)
    h0 = gen.standard_normal((D, N, H)).astype(np.float32)
    c0 = gen.standard_normal((D, N, H)).astype(np.float32)
    lengths = np.array([7, 3, 5])
    Y, Y_h, Y_c = sess.run(None, {"X": x, "seq": lengths.astype(np.int32), "h0": h0, "c0": c0})
    out, (h_n, c_n) = layer.eval()(x, (h0, c0), lengths)
    assert scaled_error(out, Y.transpose(0, 2, 1, 3).reshape(T, N, D * H)) <= 2e-6
    assert scaled_error(h_n, Y_h) <= 2e-6
    assert scaled_error(c_n, Y_c) <= 2e-6


# ---------------------------------------------------------------- regularizer semantics

def _noise_dict(nz):
    keys = ("rec_mask", "zh_mask", "zc_mask", None, None, "w_mask")
    return {k: v for k, v in zip(keys, nz) if k and v is not None}


@pytest.mark.parametrize("name", ["lstm_reg", "gru_reg", "gru_v1_reg", "rnn_reg", "lstmp_reg", "ln_lstm_reg", "ln_gru_reg"])
def test_keep_all_masks_and_zero_rates_equal_the_plain_cell_bitwise(isa, name):
    cls, kw, kind = VARIANTS[name]
    rates = ("recurrent_dropout", "weight_drop", "zoneout_h", "zoneout_c")
    plain_kw = {k: v for k, v in kw.items() if k not in rates}
    if plain_kw.get("proj_size") is True:
        plain_kw["proj_size"] = 4
    gen = np.random.default_rng(0)
    x = gen.standard_normal((6, 3, C)).astype(np.float32)
    plain = cls(C, 9, num_layers=2, bidirectional=True, rng=1, **plain_kw)
    zero = cls(C, 9, num_layers=2, bidirectional=True, rng=1, **plain_kw, **{k: 0.0 for k in rates if k in kw})
    out_p, _ = plain(x, None, [6, 2, 5])
    back_p = plain.backward(np.cos(out_p))
    out_z, _ = zero(x, None, [6, 2, 5])
    back_z = zero.backward(np.cos(out_z))
    np.testing.assert_array_equal(out_z, out_p)
    for a, b in zip(back_z, back_p):
        if a is not None:
            np.testing.assert_array_equal(a, b)
    # Masks that keep everything (dropout 1, zoneout 0) run the regularized kernels: bitwise the plain cell.
    fn = {"lstm": F.lstm_forward, "gru": F.gru_forward, "rnn": F.rnn_forward}[kind]
    fkw = {k: v for k, v in plain_kw.items() if k in ("proj_size", "peephole", "reset_after", "nonlinearity")}
    if cls in (fastrnn.LayerNormLSTM, fastrnn.LayerNormGRU):
        fkw["layer_norm"] = True
    S, K, H = 4, plain_kw.get("proj_size") or 9, 9
    G = {"lstm": 4, "gru": 3, "rnn": 1}[kind]
    noise = {"rec_mask": np.ones((S, 3, K), np.float32), "w_mask": np.ones((S, G * H, K), np.float32)}
    if kind != "rnn":
        noise["zh_mask"] = np.zeros((S, 6, 3, K), np.float32)
    if kind == "lstm":
        noise["zc_mask"] = np.zeros((S, 6, 3, H), np.float32)
    out_k, _, ctx = fn(x, plain.params, None, [6, 2, 5], num_layers=2, bidirectional=True, training=True, noise=noise,
                       **fkw)
    np.testing.assert_array_equal(out_k, out_p)
    gx, gh0, gc0, grads = F.backward(ctx, np.cos(out_k))
    np.testing.assert_array_equal(gx, back_p[0])
    np.testing.assert_array_equal(gh0, back_p[1])
    for k, g in grads.items():
        np.testing.assert_array_equal(g, plain.grads[k], err_msg=k)


@pytest.mark.parametrize("cls,kw", [(fastrnn.LSTM, dict(recurrent_dropout=0.4, weight_drop=0.3)),
                                    (fastrnn.GRU, dict(recurrent_dropout=0.4, weight_drop=0.3, reset_after=False)),
                                    (fastrnn.RNN, dict(recurrent_dropout=0.4, weight_drop=0.3))])
def test_eval_mode_turns_dropout_off(cls, kw):
    gen = np.random.default_rng(0)
    x = gen.standard_normal((6, 3, C)).astype(np.float32)
    a = cls(C, 7, num_layers=2, rng=4, **kw).eval()
    b = cls(C, 7, num_layers=2, rng=4, **{k: v for k, v in kw.items() if k == "reset_after"}).eval()
    np.testing.assert_array_equal(a(x)[0], b(x)[0])
    assert not np.array_equal(a.train()(x)[0], b(x)[0])


def test_dropout_masks_average_to_the_eval_output():
    # A ReLU RNN step with positive weights, input and state is linear in the masks, so the mean
    # of the training outputs over many masks converges to the eval output (E[mask] = 1).
    gen = np.random.default_rng(0)
    n, H = 4000, 5
    for kw, calls in ((dict(recurrent_dropout=0.5), 1), (dict(weight_drop=0.5), 300)):
        layer = fastrnn.RNN(2, H, nonlinearity="relu", dtype=np.float64, rng=1, **kw)
        for v in layer.params.values():
            v[...] = np.abs(v)
        x = np.abs(gen.standard_normal((1, 1, 2)))
        h0 = np.abs(gen.standard_normal((1, 1, H)))
        rows = n if calls == 1 else 1  # recurrent dropout: a mask per sequence; DropConnect: per call
        outs = np.concatenate([layer.train()(np.repeat(x, rows, 1), np.repeat(h0, rows, 1))[0][0]
                               for _ in range(calls)])
        expected = layer.eval()(x, h0)[0][0, 0]
        stderr = outs.std(axis=0) / np.sqrt(len(outs))
        assert np.all(np.abs(outs.mean(axis=0) - expected) <= 5 * stderr + 1e-12), kw


@pytest.mark.parametrize("name", ["lstm_reg", "gru_reg", "ln_lstm_reg", "lstmp_reg"])
def test_zoneout_masks_average_to_the_expected_update(name):
    # One step is linear in the zoneout masks: h_1 = h~ + d*(h_0 - h~), so the training outputs
    # average to the eval output (d replaced by its rate); the same for c_1.
    cls, kw, kind = VARIANTS[name]
    kw = {k: v for k, v in kw.items() if k not in ("recurrent_dropout", "weight_drop")}
    if kw.get("proj_size") is True:
        kw["proj_size"] = 3
    layer = cls(2, 6, dtype=np.float64, rng=2, **kw)
    gen = np.random.default_rng(1)
    n = 4000
    x = gen.standard_normal((1, 1, 2))
    hx = random_state(layer, 1, gen, np.float64)
    rep = (lambda s: np.repeat(s, n, 1))
    train_hx = tuple(map(rep, hx)) if kind == "lstm" else rep(hx)
    out, state = layer.train()(rep(x), train_hx)
    e_out, e_state = layer.eval()(x, hx)
    pairs = [(out[0], e_out[0, 0])]
    if kind == "lstm":
        pairs.append((state[1][0], e_state[1][0, 0]))
    for samples, expected in pairs:
        stderr = samples.std(axis=0) / np.sqrt(n)
        assert np.all(np.abs(samples.mean(axis=0) - expected) <= 5 * stderr + 1e-12)
    # The masks themselves: Bernoulli with the rates.
    layer.train()(rep(x), train_hx)
    nz = layer._ctx.noise
    assert abs(nz[1].mean() - kw["zoneout_h"]) < 0.05
    if kind == "lstm":
        assert abs(nz[2].mean() - kw["zoneout_c"]) < 0.05


@pytest.mark.parametrize("name", ["lstmp_reg", "ln_lstm_reg", "gru_v1_reg", "rnn_reg"])
def test_backward_reuses_the_forward_masks(isa, name):
    # The layer draws new masks each forward; its backward must use that forward's masks: the
    # same gradients as an explicit functional call with those masks.
    layer = make(name, 7, 3, np.float64, L=2, D=2)
    _, _, kind = VARIANTS[name]
    gen = np.random.default_rng(9)
    x = gen.standard_normal((5, 2, C))
    out, _ = layer(x)
    noise = _noise_dict(layer._ctx.noise)
    g = np.sin(out)
    back = layer.backward(g)
    fn = {"lstm": F.lstm_forward, "gru": F.gru_forward, "rnn": F.rnn_forward}[kind]
    fkw = dict(num_layers=2, bidirectional=True)
    if kind == "lstm":
        fkw.update(proj_size=layer.proj_size, peephole=layer.peephole, layer_norm=layer.layer_norm)
    elif kind == "gru":
        fkw.update(reset_after=layer.reset_after)
    else:
        fkw.update(nonlinearity=layer.nonlinearity)
    out2, _, ctx = fn(x, layer.params, training=True, noise=noise, **fkw)
    np.testing.assert_array_equal(out2, out)
    gx, gh0, _, grads = F.backward(ctx, g)
    np.testing.assert_array_equal(gx, back[0])
    np.testing.assert_array_equal(gh0, back[1])
    for k in grads:
        np.testing.assert_array_equal(grads[k], layer.grads[k])
    assert not np.array_equal(layer(x)[0], out)  # a new forward draws new masks


# ---------------------------------------------------------------- threads, retain, diagnostics

@pytest.mark.parametrize("D", [1, 2])
@pytest.mark.parametrize("name", ["ln_lstm_reg", "ln_gru", "lstmp_reg", "lstmp_peephole"])
def test_results_do_not_depend_on_thread_count(isa, name, D):
    # LayerNorm's row statistics are combined in unit-block order and LSTMP's projection phase
    # splits the state units: 1, 2 and 3 threads agree bitwise (D = 1 splits a direction's
    # units among the threads; D = 2 runs the directions side by side).
    gen = np.random.default_rng(11)
    x = gen.standard_normal((6, 16, 12)).astype(np.float32)
    lengths = gen.integers(1, 7, 16)
    results = []
    previous = fastrnn.get_num_threads()
    try:
        for threads in (1, 2, 3):
            fastrnn.set_num_threads(threads)
            cls, kw, _ = VARIANTS[name]
            kw = dict(kw, proj_size=40) if kw.get("proj_size") else kw
            layer = cls(12, 72, num_layers=2, bidirectional=D == 2, rng=3, **kw)
            out, _ = layer(x, lengths=lengths)
            grads = layer.backward(np.cos(out))
            results.append((out, grads[0], grads[1], dict(layer.grads)))
    finally:
        fastrnn.set_num_threads(previous)
    for out, gx, gh0, grads in results[1:]:
        np.testing.assert_array_equal(out, results[0][0])
        np.testing.assert_array_equal(gx, results[0][1])
        np.testing.assert_array_equal(gh0, results[0][2])
        for k in grads:
            np.testing.assert_array_equal(grads[k], results[0][3][k], err_msg=k)


@pytest.mark.parametrize("name", ["ln_lstm_reg", "ln_gru", "lstmp_peephole"])
def test_retain_gives_the_same_gradients_twice(name):
    layer = make(name, 8, 3, np.float64, L=2, D=2)
    x = np.random.default_rng(2).standard_normal((5, 3, C))
    kind = VARIANTS[name][2]
    fn = {"lstm": F.lstm_forward, "gru": F.gru_forward}[kind]
    fkw = dict(num_layers=2, bidirectional=True, layer_norm=layer.layer_norm)
    if kind == "lstm":
        fkw.update(proj_size=layer.proj_size, peephole=layer.peephole)
    layer(x)
    noise = _noise_dict(layer._ctx.noise) if layer._ctx.noise is not None else None
    out, _, ctx = fn(x, layer.params, training=True, noise=noise, **fkw)
    first = F.backward(ctx, np.cos(out), retain=True)
    second = F.backward(ctx, np.cos(out), retain=True)
    third = F.backward(ctx, np.cos(out))
    for a, b, c in zip(first[:2], second[:2], third[:2]):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)
    for k in first[3]:
        np.testing.assert_array_equal(first[3][k], third[3][k])


@pytest.mark.parametrize("name", ["ln_lstm_reg", "lstmp_reg", "ln_gru_reg"])
def test_gradient_norms_and_clipping_match_reference(isa, name):
    layer = make(name, 7, 3, np.float64, L=2, D=2, bptt_clip=0.05)
    gen = np.random.default_rng(3)
    x = gen.standard_normal((6, 2, C))
    with fastrnn.diagnostics.record(layer) as rec:
        out, _ = layer(x, None, [6, 4])
        noise = layer._ctx.noise
        g = gen.standard_normal(out.shape)
        layer.backward(g)
    report = rec.report()
    _, _, _, cache = ref_forward(layer, x, None, [6, 4], noise)
    _, _, _, grads = ref.backward(cache, g, bptt_clip=0.05)
    for k, v in grads.items():
        assert scaled_error(layer.grads[k], v) <= 1e-10, k
    expected = np.array([[np.sqrt((cache["grad_h"][l][d] ** 2).sum(axis=(1, 2))) for d in range(2)] for l in range(2)])
    np.testing.assert_allclose(report.grad_h_norm, expected, rtol=1e-10)
    if VARIANTS[name][2] == "lstm":
        expected_c = np.array([[np.sqrt((cache["grad_c"][l][d] ** 2).sum(axis=(1, 2))) for d in range(2)]
                               for l in range(2)])
        np.testing.assert_allclose(report.grad_c_norm, expected_c, rtol=1e-10)
    # Per-step gain of the recurrence (h and the arriving c), over the rows valid at both steps.
    np.testing.assert_allclose(report.propagation, cache["propagation"], rtol=1e-9)


# ---------------------------------------------------------------- API

def test_parameters_names_shapes_and_init():
    ln = fastrnn.LayerNormLSTM(3, 5, num_layers=2, bidirectional=True, rng=0)
    assert list(ln.params)[:8] == ["weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0", "ln_ih_weight_l0",
                                   "ln_hh_weight_l0", "ln_c_weight_l0", "ln_c_bias_l0"]
    assert ln.params["ln_ih_weight_l1_reverse"].shape == (20,) and ln.params["weight_ih_l1"].shape == (20, 10)
    assert np.all(ln.params["ln_hh_weight_l0"] == 1) and np.all(ln.params["ln_c_bias_l1_reverse"] == 0)
    gru = fastrnn.LayerNormGRU(3, 5, bias=False, rng=0)
    assert list(gru.params) == ["weight_ih_l0", "weight_hh_l0", "ln_ih_weight_l0", "ln_hh_weight_l0"]
    p = fastrnn.LSTM(3, 6, num_layers=2, proj_size=2, peephole=True, bidirectional=True, rng=0)
    assert p.params["weight_hh_l1"].shape == (24, 2) and p.params["weight_ih_l1"].shape == (24, 4)
    assert p.params["weight_hr_l1_reverse"].shape == (2, 6) and p.params["weight_peephole_l0"].shape == (3, 6)
    assert np.abs(p.params["weight_peephole_l0"]).max() <= 1 / np.sqrt(6)
    twin = fastrnn.LSTM(3, 6, num_layers=2, proj_size=2, peephole=True, bidirectional=True, rng=1)
    twin.load_state_dict(p.state_dict())
    x = np.ones((4, 2, 3), np.float32)
    np.testing.assert_array_equal(twin(x)[0], p(x)[0])


@pytest.mark.parametrize("make_layer,error,match", [
    (lambda: fastrnn.LSTM(3, 4, proj_size=4), ValueError, r"LSTM: proj_size=4 must be smaller than hidden_size=4"),
    (lambda: fastrnn.LSTM(3, 4, proj_size=-1), ValueError, r"LSTM: proj_size must be >= 0, got -1"),
    (lambda: fastrnn.LSTM(3, 4, proj_size=1.5), TypeError, r"LSTM: proj_size must be an int, got float"),
    (lambda: fastrnn.LSTM(3, 4, zoneout_c=1.0), ValueError, r"LSTM: zoneout_c must be in \[0, 1\), got 1.0"),
    (lambda: fastrnn.GRU(3, 4, recurrent_dropout=-0.1), ValueError, r"GRU: recurrent_dropout must be in \[0, 1\)"),
    (lambda: fastrnn.RNN(3, 4, weight_drop="x"), TypeError, r"RNN: weight_drop must be a float, got str"),
    (lambda: fastrnn.LayerNormLSTM(3, 4, proj_size=2), ValueError, r"LayerNormLSTM: proj_size is not supported"),
    (lambda: fastrnn.LayerNormGRU(3, 4, reset_after=False), ValueError, r"LayerNormGRU: reset_after=False"),
])
def test_bad_options_raise_clearly(make_layer, error, match):
    with pytest.raises(error, match=match):
        make_layer()


def test_functional_rejects_bad_variants_and_noise():
    p = fastrnn.LSTM(3, 4, rng=0).params
    x = np.ones((5, 2, 3), np.float32)
    with pytest.raises(ValueError, match=r"gru_forward: layer_norm is for LSTM and GRU with reset_after=True"):
        F.gru_forward(x, fastrnn.GRU(3, 4).params, reset_after=False, layer_norm=True)
    with pytest.raises(ValueError, match=r"rnn_forward: zoneout is for LSTM and GRU"):
        F._forward("rnn_tanh", x, fastrnn.RNN(3, 4).params, None, None, num_layers=1, bidirectional=False, bias=True,
                   batch_first=False, dropout=0.0, training=True, rng=0, reset_after=True, where="rnn_forward",
                   zoneout_h=0.1)
    with pytest.raises(KeyError, match=r"lstm_forward: params is missing 'weight_peephole_l0' \(expected shape \(3, 4\)\)"):
        F.lstm_forward(x, p, peephole=True)
    with pytest.raises(ValueError, match=r"lstm_forward: noise\['rec_mask'\] has shape \(1, 2\), expected \(1, 2, 4\)"):
        F.lstm_forward(x, p, training=True, noise={"rec_mask": np.ones((1, 2), np.float32)})
    with pytest.raises(ValueError, match=r"lstm_forward: noise has unknown keys \['mask'\]"):
        F.lstm_forward(x, p, training=True, noise={"mask": None})
    with pytest.raises(ValueError, match=r"lstm_forward: noise masks given for an inference forward"):
        F.lstm_forward(x, p, noise={})
    with pytest.raises(TypeError, match=r"lstm_forward: noise\['w_mask'\] has dtype float64, expected float32"):
        F.lstm_forward(x, p, training=True, noise={"w_mask": np.ones((1, 16, 4))})
    with pytest.raises(ValueError, match=r"lstm_forward: h0 has shape \(1, 2, 4\), expected \(L\*D=1, N=2, K=2\)"):
        F.lstm_forward(x, fastrnn.LSTM(3, 4, proj_size=2).params, (np.zeros((1, 2, 4), np.float32),) * 2,
                       proj_size=2)


# ---------------------------------------------------------------- torch front end

def test_torch_variant_modules_match_the_numpy_layers():
    torch = pytest.importorskip("torch")
    import fastrnn.torch as ft
    torch.manual_seed(3)
    for tcls, ncls, kw in ((ft.LayerNormLSTM, fastrnn.LayerNormLSTM, {}), (ft.LayerNormGRU, fastrnn.LayerNormGRU, {}),
                           (ft.LSTM, fastrnn.LSTM, dict(peephole=True, proj_size=3))):
        mod = tcls(C, 6, num_layers=2, bidirectional=True, batch_first=True, **kw).double()
        with torch.no_grad():
            for name, prm in mod.named_parameters():
                if name.startswith("ln_"):
                    prm.add_(torch.rand_like(prm) - 0.5)
        layer = ncls(C, 6, num_layers=2, bidirectional=True, batch_first=True, dtype=np.float64, **kw)
        layer.load_state_dict(mod.state_dict())
        x = torch.randn(3, 5, C, dtype=torch.float64, requires_grad=True)
        out, _ = mod(x)
        out.sin().sum().backward()
        mine, _ = layer(x.detach().numpy())
        gx = layer.backward(np.cos(mine))[0]
        assert scaled_error(out.detach().numpy(), mine) <= 1e-12
        assert scaled_error(x.grad.numpy(), gx) <= 1e-12
        for name, prm in mod.named_parameters():
            assert scaled_error(prm.grad.numpy(), layer.grads[name]) <= 1e-12, name


def test_torch_regularizers_use_torchs_rng_and_gradcheck_in_eval():
    torch = pytest.importorskip("torch")
    import fastrnn.torch as ft
    lstm = ft.LSTM(C, 5, num_layers=2, proj_size=3, recurrent_dropout=0.3, zoneout_h=0.2, zoneout_c=0.1,
                   weight_drop=0.2).double()
    x = torch.randn(6, 2, C, dtype=torch.float64, requires_grad=True)
    torch.manual_seed(7)
    a = lstm(x)[0]
    torch.manual_seed(7)
    b = lstm(x)[0]
    assert torch.equal(a, b) and not torch.equal(a, lstm(x)[0])
    lstm.eval()
    assert torch.equal(lstm(x)[0], lstm(x)[0])
    assert torch.autograd.gradcheck(lambda x, *w: lstm(x)[0], (x, *lstm.parameters()))
    gru = ft.LayerNormGRU(C, 4, zoneout_h=0.3, recurrent_dropout=0.2).double().train()
    torch.manual_seed(1)
    out = gru(x)[0]
    out.sum().backward()
    assert gru.ln_hh_weight_l0.grad.shape == (12,) and torch.isfinite(x.grad).all()


# ---------------------------------------------------------------- against plain torch loops
# An oracle independent of fastrnn/core/reference.py: each variant's equations (docs/variants.md)
# written step by step with torch operators (nn.functional.layer_norm, the cell's pointwise ops),
# differentiated by autograd, in float64, on the same weights, initial states and masks.

def _torch_loop(kind, x, p, h0, c0=None, *, layer_norm=False, rec_mask=None, zh=None, zc=None):
    """Output sequence and final states of one layer and direction; `p` maps torch's parameter
    names (suffix _l0) to tensors; masks as fastrnn's noise (rec_mask scaled, zoneout 1 = keep)."""
    torch = pytest.importorskip("torch")
    fn = torch.nn.functional
    G = {"rnn": 1, "gru": 3, "lstm": 4}[kind]

    def ln(v, gain, bias=None):
        return fn.layer_norm(v, v.shape[-1:], gain, bias, eps=1e-5)
    wx = x @ p["weight_ih_l0"].T  # [T, N, G*H]
    if layer_norm:
        wx = ln(wx, p["ln_ih_weight_l0"])
    h, c, outs = h0, c0, []
    for t in range(x.shape[0]):
        wh = (h if rec_mask is None else h * rec_mask) @ p["weight_hh_l0"].T
        if layer_norm:
            wh = ln(wh, p["ln_hh_weight_l0"])
        ax, ah = wx[t] + p["bias_ih_l0"], wh + p["bias_hh_l0"]
        if kind == "rnn":
            new_h = torch.tanh(ax + ah)
        elif kind == "gru":  # reset_after=True
            xr, xz, xn = ax.chunk(G, 1)
            hr, hz, hn = ah.chunk(G, 1)
            r, z = torch.sigmoid(xr + hr), torch.sigmoid(xz + hz)
            new_h = (1 - z) * torch.tanh(xn + r * hn) + z * h
        else:
            i, f, g, o = (ax + ah).chunk(G, 1)
            c_til = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            new_h = torch.sigmoid(o) * torch.tanh(ln(c_til, p["ln_c_weight_l0"], p["ln_c_bias_l0"])
                                                  if layer_norm else c_til)
            c = c_til if zc is None else c_til + zc[t] * (c - c_til)
        h = new_h if zh is None else new_h + zh[t] * (h - new_h)
        outs.append(h)
    return torch.stack(outs), h, c


TORCH_LOOP_CASES = {  # name -> (kind, layer_norm, rates)
    "ln_lstm": ("lstm", True, {}),
    "ln_gru": ("gru", True, {}),
    "lstm_zoneout_recurrent_dropout": ("lstm", False, dict(recurrent_dropout=0.4, zoneout_h=0.3, zoneout_c=0.2)),
    "gru_zoneout_recurrent_dropout": ("gru", False, dict(recurrent_dropout=0.4, zoneout_h=0.3)),
    "rnn_recurrent_dropout": ("rnn", False, dict(recurrent_dropout=0.4)),
    "ln_lstm_zoneout_recurrent_dropout": ("lstm", True, dict(recurrent_dropout=0.4, zoneout_h=0.3, zoneout_c=0.2)),
}


@pytest.mark.parametrize("name", list(TORCH_LOOP_CASES))
def test_variants_match_a_plain_torch_loop(name):
    """Outputs, final states and the gradients of the input, the initial states and every
    parameter (LayerNorm gains included) equal those of the torch loop, with the masks fastrnn
    was given (`noise=`) used in the loop too."""
    torch = pytest.importorskip("torch")
    kind, layer_norm, rates = TORCH_LOOP_CASES[name]
    T, N, H = 6, 3, 5
    gen = np.random.default_rng(11)
    cls = {"rnn": fastrnn.RNN, "gru": fastrnn.GRU, "lstm": fastrnn.LSTM}[kind]
    if layer_norm:
        cls = {"gru": fastrnn.LayerNormGRU, "lstm": fastrnn.LayerNormLSTM}[kind]
    layer = cls(C, H, dtype=np.float64, rng=2)
    params = {k: v + gen.uniform(-0.3, 0.3, v.shape) for k, v in layer.params.items()}  # gains off 1, biases off 0
    x = gen.standard_normal((T, N, C))
    h0 = gen.standard_normal((1, N, H))
    c0 = gen.standard_normal((1, N, H)) if kind == "lstm" else None
    noise = {}
    if rates.get("recurrent_dropout"):
        p = rates["recurrent_dropout"]
        noise["rec_mask"] = (gen.random((1, N, H)) >= p) / (1 - p)
    if rates.get("zoneout_h"):
        noise["zh_mask"] = (gen.random((1, T, N, H)) < rates["zoneout_h"]).astype(np.float64)
    if rates.get("zoneout_c"):
        noise["zc_mask"] = (gen.random((1, T, N, H)) < rates["zoneout_c"]).astype(np.float64)
    run = {"rnn": F.rnn_forward, "gru": F.gru_forward, "lstm": F.lstm_forward}[kind]
    kw = dict(layer_norm=True) if layer_norm else {}
    out, state, ctx = run(x, params, (h0, c0) if kind == "lstm" else h0, training=True, noise=noise or None,
                          **rates, **kw)
    g_out, g_h, g_c = gen.standard_normal(out.shape), gen.standard_normal(h0.shape), gen.standard_normal(h0.shape)
    gx, gh0, gc0, grads = F.backward(ctx, g_out, g_h, g_c if kind == "lstm" else None)

    tp = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
    tx, th0 = torch.tensor(x, requires_grad=True), torch.tensor(h0[0], requires_grad=True)
    tc0 = torch.tensor(c0[0], requires_grad=True) if kind == "lstm" else None
    masks = {k: torch.tensor(v[0]) for k, v in noise.items()}
    t_out, t_h, t_c = _torch_loop(kind, tx, tp, th0, tc0, layer_norm=layer_norm, rec_mask=masks.get("rec_mask"),
                                  zh=masks.get("zh_mask"), zc=masks.get("zc_mask"))
    loss = (t_out * torch.tensor(g_out)).sum() + (t_h * torch.tensor(g_h[0])).sum()
    if kind == "lstm":
        loss = loss + (t_c * torch.tensor(g_c[0])).sum()
    loss.backward()
    states = state if kind == "lstm" else (state,)
    pairs = [("out", out, t_out), ("h_n", states[0][0], t_h), ("grad_x", gx, tx.grad), ("grad_h0", gh0[0], th0.grad)]
    if kind == "lstm":
        pairs += [("c_n", states[1][0], t_c), ("grad_c0", gc0[0], tc0.grad)]
    pairs += [(k, grads[k], tp[k].grad) for k in params]
    for what, mine, theirs in pairs:
        assert scaled_error(mine, theirs.detach().numpy()) <= 1e-12, what
