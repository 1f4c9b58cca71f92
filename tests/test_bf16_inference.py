"""bf16 inference of whole layers (`compute_dtype="bfloat16"`): every product takes operands
rounded to bf16 (the weights once, its input at each use) and sums them in float32; gates and
states stay float32.

The oracle is an emulation in NumPy: the operands rounded to bf16 as vcvtneps2bf16 does (to
nearest even; denormals to zero), the products summed in float64, the gate functions in float64.
The kernels sum in float32 (pair by pair), so the two differ by float32 roundings of the sums,
~1e-6 here; a wrong panel, gate or row is off by 1e-2 or more. bf16 itself is ~1e-3 away from
float32."""
import numpy as np
import pytest

import fastrnn
from fastrnn import functional as F
from fastrnn.core import reference as ref

ISAS = fastrnn.available_isas()


@pytest.fixture(params=ISAS)
def isa(request):
    before = fastrnn.get_isa()
    fastrnn.set_isa(request.param)
    yield request.param
    fastrnn.set_isa(before)


def bf16(a):
    """float32 -> bf16 -> float64, round to nearest even, denormals to zero (vcvtneps2bf16)."""
    b = np.ascontiguousarray(a, np.float32).view(np.uint32).astype(np.uint64)
    b = np.where((b & 0x7F800000) == 0, b & 0x80000000, b)
    r = ((b + 0x7FFF + ((b >> 16) & 1)) >> 16) << 16
    return r.astype(np.uint32).view(np.float32).astype(np.float64)


def product(x, w):
    return bf16(x) @ bf16(w).T


def sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v))


def emulate(cell, x, p, reset_after=True):
    """One layer, one direction, h0 = 0, in float64 with bf16 products."""
    T, N, _ = x.shape
    H = p["weight_hh_l0"].shape[1]
    b_ih, b_hh = p["bias_ih_l0"].astype(np.float64), p["bias_hh_l0"].astype(np.float64)
    xp = product(x.reshape(T * N, -1), p["weight_ih_l0"]).reshape(T, N, -1)
    h, c, out = np.zeros((N, H)), np.zeros((N, H)), []
    for t in range(T):
        hp = product(h.astype(np.float32), p["weight_hh_l0"])
        a = xp[t] + b_ih
        if cell == "lstm":
            a = a + hp + b_hh
            i, f, g, o = sigmoid(a[:, :H]), sigmoid(a[:, H:2 * H]), np.tanh(a[:, 2 * H:3 * H]), sigmoid(a[:, 3 * H:])
            c = f * c + i * g
            h = o * np.tanh(c)
        elif cell == "gru":
            r = sigmoid(a[:, :H] + hp[:, :H] + b_hh[:H])
            z = sigmoid(a[:, H:2 * H] + hp[:, H:2 * H] + b_hh[H:2 * H])
            if reset_after:
                n = np.tanh(a[:, 2 * H:] + r * (hp[:, 2 * H:] + b_hh[2 * H:]))
            else:
                n = np.tanh(a[:, 2 * H:] + product((r * h).astype(np.float32), p["weight_hh_l0"][2 * H:]) + b_hh[2 * H:])
            h = (1 - z) * n + z * h
        else:
            h = np.tanh(a + hp + b_hh)
        out.append(h)
    return np.stack(out)


def make(cell, C, H, **kw):
    return {"lstm": fastrnn.LSTM, "gru": fastrnn.GRU, "rnn": fastrnn.RNN}[cell](C, H, rng=0, **kw)


@pytest.mark.parametrize("cell,reset_after", [("lstm", True), ("gru", True), ("gru", False), ("rnn", True)])
@pytest.mark.parametrize("T,N,C,H", [(1, 1, 1, 1), (4, 1, 3, 15), (3, 7, 64, 16), (5, 2, 5, 17), (2, 9, 41, 70)])
def test_every_product_is_the_bf16_one(isa, cell, reset_after, T, N, C, H):
    kw = {"reset_after": reset_after} if cell == "gru" else {}
    layer = make(cell, C, H, compute_dtype="bfloat16", **kw).eval()
    x = np.random.default_rng(T * 100 + H).standard_normal((T, N, C)).astype(np.float32)
    got = layer(x)[0]
    np.testing.assert_allclose(got, emulate(cell, x, layer.params, reset_after), rtol=0, atol=2e-5)
    if H > 1:  # and not float32's
        layer.compute_dtype = None
        assert np.abs(layer(x)[0] - got).max() > 1e-5


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("H,T", [(64, 100), (256, 20)])
def test_error_against_float64(cell, H, T):
    # bf16 keeps 8 significant bits: each product is off by ~2^-8 of its terms' magnitudes;
    # the recurrence does not add the steps' errors up
    layer = make(cell, H, H).eval()
    x = np.random.default_rng(1).standard_normal((T, 4, H)).astype(np.float32)
    want = ref.forward(cell, x.astype(np.float64), {k: v.astype(np.float64) for k, v in layer.params.items()})[0]
    layer.compute_dtype = "bfloat16"
    err = np.abs(layer(x)[0] - want).max()
    assert 1e-5 < err < 1e-2, err


@pytest.mark.parametrize("kind,kw", [
    ("lstm", {"proj_size": 12}), ("lstm", {"peephole": True}), ("LayerNormLSTM", {}), ("LayerNormGRU", {}),
    ("LiGRU", {"normalization": "layernorm"}), ("SLiGRU", {"normalization": "layernorm"}), ("rnn", {})])
def test_every_variant_runs_in_bf16(isa, kind, kw):
    C, H = 19, 40
    make_layer = (lambda **k: make(kind, C, H, **k)) if kind in ("lstm", "gru", "rnn") else \
        (lambda **k: getattr(fastrnn, kind)(C, H, rng=0, **k))
    layer = make_layer(num_layers=2, bidirectional=True, **kw).eval()
    x = np.random.default_rng(7).standard_normal((6, 3, C)).astype(np.float32)
    want = layer(x, lengths=[6, 3, 1])[0]
    layer.compute_dtype = "bfloat16"
    got = layer(x, lengths=[6, 3, 1])[0]
    # the LayerNorm cells amplify the rounding of small rows most (3e-2 for LayerNorm LSTM here)
    assert 1e-6 < np.abs(got - want).max() < 0.05 * np.abs(want).max() + 0.01
    assert (got[3:, 1] == 0).all()


def test_a_bf16_stream_steps_like_the_whole_sequence(isa):
    layer = fastrnn.GRU(10, 36, num_layers=2, rng=0, compute_dtype="bfloat16").eval()
    x = np.random.default_rng(4).standard_normal((8, 3, 10)).astype(np.float32)
    s = layer.stream(batch=3)
    assert "bfloat16" in repr(s)
    np.testing.assert_array_equal(np.stack([s.step(x[t]) for t in range(8)]), layer(x)[0])


def test_bf16_training_and_bad_settings_are_refused():
    layer = fastrnn.LSTM(3, 4, rng=0, compute_dtype="bfloat16")
    assert "compute_dtype='bfloat16'" in repr(layer)
    x = np.zeros((2, 1, 3), np.float32)
    with pytest.raises(NotImplementedError, match="bf16 training"):
        layer(x)  # layers start in training mode
    with pytest.raises(NotImplementedError, match="bf16 training"):
        F.lstm_forward(x, layer.params, training=True, compute_dtype="bfloat16")
    with pytest.raises(ValueError, match="rounds float32 parameters"):
        fastrnn.LSTM(3, 4, dtype=np.float64, compute_dtype="bfloat16")
    with pytest.raises(ValueError, match="compute_dtype='float16'"):
        fastrnn.LSTM(3, 4, compute_dtype="float16")
    layer.eval()(x)
