"""int8 inference (dynamic quantization) of whole layers: `compute_dtype="int8"`,
`layer.quantize_dynamic()`, `fastrnn.quantize_dynamic`, int8 streams.

The oracle is an emulation in NumPy of what docs/precision.md defines: W per output row and the
inputs (x, and h at every step) per row quantized as csrc/kernels/int8.h does, the integer sums
exact, the gate functions in float64. A wrong panel, gate or row lands far outside its tolerance
(the quantization of h in float32 against float64 may flip a code now and then: ~5e-4)."""
import pickle

import numpy as np
import pytest

import fastrnn
from fastrnn import functional as F
from fastrnn.core import reference as ref
from reduced_emulation import emulate, make

def scales(a):
    a = np.asarray(a, np.float32)
    m = np.abs(a).max(axis=1) if a.shape[1] else np.zeros(a.shape[0], np.float32)
    return (m / np.float32(127)).astype(np.float32)


def product(x, w):
    """x [N, k] W^T [k, rows] as the int8 kernels compute it (float32 result)."""
    x, w = np.asarray(x, np.float32), np.asarray(w, np.float32)
    t, s = scales(x), scales(w)

    def codes(a, sc):
        with np.errstate(invalid="ignore", divide="ignore"):
            r = np.rint(a / sc[:, None]).astype(np.float32)
        return np.where(sc[:, None] == 0, 0, np.clip(r, -127, 127)).astype(np.int64)

    qx, qw = codes(x, t) + 128, codes(w, s)
    acc = qx @ qw.T - 128 * qw.sum(axis=1)
    return (acc.astype(np.float32) * t[:, None]) * s[None, :]


@pytest.mark.parametrize("cell,reset_after", [("lstm", True), ("gru", True), ("gru", False), ("rnn_tanh", True),
                                              ("rnn_relu", True)])
@pytest.mark.parametrize("T,N,C,H", [(1, 1, 1, 1), (4, 1, 3, 15), (3, 7, 64, 16), (5, 2, 5, 17), (3, 3, 9, 33),
                                     (2, 9, 40, 70)])
def test_every_product_is_the_int8_one(isa, cell, reset_after, T, N, C, H):
    kw = {} if cell != "gru" else {"reset_after": reset_after}
    layer = make(cell, C, H, **kw).eval()
    x = np.random.default_rng(T * 100 + H).standard_normal((T, N, C)).astype(np.float32)
    got = layer.quantize_dynamic()(x)[0]
    want = emulate(cell, x, layer.params, product, reset_after)
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-3)
    # and a different computation from float32's (the emulation is not just the float product)
    assert np.abs(layer(x)[0] - got).max() > 1e-6 or H == 1


def test_one_step_is_within_the_bound_of_its_products():
    # T = 1 from a nonzero state: each pre-activation is off by at most the int8 product bound
    # (|x - t qx| <= t/2, |w - s qw| <= s/2 elementwise) of x W_ih^T and h0 W_hh^T; sigmoid' <= 1/4,
    # tanh' <= 1 carry it to c and h.
    H, C, N = 48, 24, 5
    layer = fastrnn.LSTM(C, H, rng=3).eval()
    p = {k: v.astype(np.float64) for k, v in layer.params.items()}
    r = np.random.default_rng(4)
    x = r.standard_normal((1, N, C)).astype(np.float32)
    h0, c0 = (r.standard_normal((1, N, H)) * 0.5).astype(np.float32), r.standard_normal((1, N, H)).astype(np.float32)

    def bound(a, w):
        t, s = scales(a).astype(np.float64), scales(w).astype(np.float64)
        a, w = np.abs(a.astype(np.float64)), np.abs(w.astype(np.float64))
        return (0.5 * a.sum(1)[:, None] * s[None] + 0.5 * t[:, None] * w.sum(1)[None]
                + 0.25 * a.shape[1] * t[:, None] * s[None])

    da = bound(x[0], layer.params["weight_ih_l0"]) + bound(h0[0], layer.params["weight_hh_l0"])
    da *= 1 + 1e-5  # the float32 roundings of the products and the sums
    di, df, dg, do = (da[:, k * H:(k + 1) * H] for k in range(4))
    out, (h1, c1), _ = F.lstm_forward(x, layer.params, (h0, c0), compute_dtype="int8")
    _, hr, cr, _ = ref.forward("lstm", x.astype(np.float64), p, (h0.astype(np.float64), c0.astype(np.float64)))
    dc = 0.25 * df * np.abs(c0[0]) + 0.25 * di + dg
    assert (np.abs(c1[0] - cr[0]) <= dc + 1e-6).all()
    assert (np.abs(h1[0] - hr[0]) <= 0.25 * do + dc + 1e-6).all()
    assert np.abs(h1[0] - hr[0]).max() > 1e-5  # the bound is about a real error


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_no_drift_over_ten_thousand_steps(cell):
    # errors against float64 stay at the one-step level: the recurrence contracts them
    H, T = 64, 10000
    layer = make(cell, 16, H, rng=5).eval()  # torch's initialization
    x = np.random.default_rng(6).standard_normal((T, 2, 16)).astype(np.float32)
    got = layer.quantize_dynamic()(x)[0]
    want = ref.forward(cell, x.astype(np.float64), {k: v.astype(np.float64) for k, v in layer.params.items()})[0]
    err = np.abs(got - want).max(axis=(1, 2))
    assert err.max() < 0.03, err.max()
    assert err[-1000:].max() < 2 * err[:1000].max() + 0.005


@pytest.mark.parametrize("kind,kw", [
    ("lstm", {"proj_size": 12}), ("lstm", {"peephole": True}), ("lstm", {"proj_size": 7, "peephole": True}),
    ("LayerNormLSTM", {}), ("LayerNormGRU", {}), ("gru", {"reset_after": False}), ("LiGRU", {"normalization": "layernorm"}),
    ("LiGRU", {"normalization": None}), ("SLiGRU", {"normalization": "layernorm", "recurrent_affine": True}),
    ("lstm", {"zoneout_h": 0.1, "zoneout_c": 0.2}), ("rnn_relu", {})])
@pytest.mark.parametrize("layers,bidirectional,lengths", [(1, False, None), (2, True, [6, 3, 1])])
def test_every_cell_and_variant_runs_in_int8(isa, kind, kw, layers, bidirectional, lengths):
    C, H = 19, 40
    if kind in ("lstm", "gru", "rnn_relu"):
        layer = make(kind, C, H, num_layers=layers, bidirectional=bidirectional, **kw)
    else:
        layer = getattr(fastrnn, kind)(C, H, num_layers=layers, bidirectional=bidirectional, rng=0, **kw)
    layer.eval()
    x = np.random.default_rng(7).standard_normal((6, 3, C)).astype(np.float32)
    want = layer(x, lengths=lengths)[0]
    got = layer.quantize_dynamic()(x, lengths=lengths)[0]
    assert got.shape == want.shape and np.isfinite(got).all()
    err = np.abs(got - want).max()
    assert 1e-6 < err < 0.05 * np.abs(want).max() + 0.02, err
    if lengths is not None:  # padded steps are zero, as in float32
        assert (got[3:, 1] == 0).all() and (got[1:, 2] == 0).all()


def test_the_int8_paths_agree(isa):
    # the integer products are the same bits on every int8 path; each ISA's gate functions may
    # differ in the last place, which may flip a code of h: a few quantization steps at most
    layer = fastrnn.GRU(24, 50, num_layers=2, rng=1).eval().quantize_dynamic()
    x = np.random.default_rng(8).standard_normal((20, 4, 24)).astype(np.float32)
    got = layer(x)[0]
    before = fastrnn.get_isa()
    fastrnn.set_isa("scalar")  # the portable int8 path
    try:
        portable = layer(x)[0]
    finally:
        fastrnn.set_isa(before)
    np.testing.assert_allclose(got, portable, rtol=0, atol=2e-3)


def test_quantize_dynamic_copies_and_keeps_the_original():
    layer = fastrnn.LSTM(8, 16, rng=0)
    before = {k: v.copy() for k, v in layer.params.items()}
    q = layer.quantize_dynamic()
    assert q is not layer and q.compute_dtype == "int8" and not q.training
    assert layer.compute_dtype is None and layer.training
    x = np.random.default_rng(0).standard_normal((5, 2, 8)).astype(np.float32)
    q(x)
    for k, v in layer.params.items():
        np.testing.assert_array_equal(v, before[k])
        assert q.params[k] is not v
    assert "compute_dtype='int8'" in repr(q)


def test_quantize_dynamic_of_a_model():
    model = fastrnn.Sequential(fastrnn.LSTM(4, 8, rng=0), fastrnn.GRU(8, 6, rng=1), fastrnn.LastStep(),
                               fastrnn.Linear(6, 2, rng=2))
    q = fastrnn.quantize_dynamic(model)
    assert [m.compute_dtype for m in q.modules[:2]] == ["int8", "int8"]
    assert [m.compute_dtype for m in model.modules[:2]] == [None, None]
    x = np.random.default_rng(1).standard_normal((7, 3, 4)).astype(np.float32)
    np.testing.assert_allclose(q(x), model.eval()(x), atol=0.05)

    class Mine:
        def __init__(self):
            self.encoder = {"rnn": [fastrnn.RNN(3, 5, rng=0)]}
    mine = fastrnn.quantize_dynamic(Mine())
    assert mine.encoder["rnn"][0].compute_dtype == "int8"
    with pytest.raises(ValueError, match="holds no fastrnn recurrent layer"):
        fastrnn.quantize_dynamic(fastrnn.Linear(3, 2))
    with pytest.raises(ValueError, match="not a float32 CPU layer"):
        fastrnn.quantize_dynamic([fastrnn.LSTM(3, 4, dtype=np.float64)])


def test_training_in_int8_is_refused():
    q = fastrnn.GRU(3, 4, rng=0).quantize_dynamic()
    x = np.zeros((2, 1, 3), np.float32)
    q.train()
    with pytest.raises(RuntimeError, match="quantized to int8.*call .eval"):
        q(x)
    with pytest.raises(ValueError, match="for inference"):
        F.gru_forward(x, q.params, training=True, compute_dtype="int8")
    with pytest.raises(ValueError, match="quantizes float32 parameters"):
        F.gru_forward(x.astype(np.float64), fastrnn.GRU(3, 4, dtype=np.float64).params, compute_dtype="int8")
    with pytest.raises(ValueError, match="compute_dtype='bfloat8'"):
        F.gru_forward(x, q.params, compute_dtype="bfloat8")
    with pytest.raises(ValueError, match="int8 quantizes float32 layers"):
        fastrnn.LSTM(3, 4, dtype=np.float64).quantize_dynamic()
    np.testing.assert_array_equal(F.gru_forward(x, q.params, compute_dtype="float32")[0], F.gru_forward(x, q.params)[0])


def test_new_weights_are_quantized_again():
    layer = fastrnn.LSTM(6, 20, rng=0).eval()
    q = layer.quantize_dynamic()
    x = np.random.default_rng(2).standard_normal((4, 2, 6)).astype(np.float32)
    first = q(x)[0]
    assert q.packed_bytes > q.params["weight_hh_l0"].nbytes
    q.params["weight_hh_l0"][...] *= 0.5  # in place: the plan's copy says it changed
    fresh = fastrnn.LSTM(6, 20, rng=0).eval()
    fresh.load_state_dict(q.state_dict())
    np.testing.assert_array_equal(q(x)[0], fresh.quantize_dynamic()(x)[0])
    assert np.abs(q(x)[0] - first).max() > 1e-3


def test_pickles_and_state_dicts_keep_int8():
    q = fastrnn.GRU(5, 12, num_layers=2, rng=0).quantize_dynamic()
    x = np.random.default_rng(3).standard_normal((6, 2, 5)).astype(np.float32)
    back = pickle.loads(pickle.dumps(q))
    assert back.compute_dtype == "int8"
    np.testing.assert_array_equal(back(x)[0], q(x)[0])


def test_an_int8_stream_steps_like_the_whole_sequence(isa):
    layer = fastrnn.LSTM(10, 36, num_layers=2, rng=0).eval().quantize_dynamic()
    x = np.random.default_rng(4).standard_normal((8, 3, 10)).astype(np.float32)
    whole = layer(x)[0]
    s = layer.stream(batch=3)
    assert "int8" in repr(s)
    steps = np.stack([s.step(x[t]) for t in range(8)])
    np.testing.assert_array_equal(steps, whole)
    assert np.abs(steps - fastrnn.LSTM(10, 36, num_layers=2, rng=0).eval()(x)[0]).max() > 1e-6


def test_an_int8_stream_takes_new_weights_after_load_state_dict():
    # int8 streams convert the weights once; load_state_dict (in place) tells the plan
    layer = fastrnn.GRU(4, 12, rng=0).eval().quantize_dynamic()
    x = np.random.default_rng(5).standard_normal((3, 1, 4)).astype(np.float32)
    s = layer.stream(batch=1)
    s.step(x[0])
    other = fastrnn.GRU(4, 12, rng=9)
    layer.load_state_dict(other.state_dict())
    s.reset()
    steps = np.stack([s.step(x[t]) for t in range(3)])
    np.testing.assert_array_equal(steps, layer(x)[0])
    layer.compute_dtype = np.int8  # a dtype object works as its name does, in calls and streams
    assert "int8" in repr(layer.stream(1))


def test_a_model_loads_its_state_and_its_int8_streams_follow():
    model = fastrnn.quantize_dynamic(fastrnn.Sequential(fastrnn.GRU(4, 6, rng=0), fastrnn.Linear(6, 2, rng=0)))
    x = np.random.default_rng(6).standard_normal((3, 1, 4)).astype(np.float32)
    s = model.modules[0].stream(batch=1)
    s.step(x[0])
    other = fastrnn.Sequential(fastrnn.GRU(4, 6, rng=5), fastrnn.Linear(6, 2, rng=5))
    model.load_state_dict(other.state_dict())
    s.reset()
    np.testing.assert_array_equal(np.stack([s.step(x[t]) for t in range(3)]), model.modules[0](x)[0])
