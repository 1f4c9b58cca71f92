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
from reduced_emulation import bf16, emulate, make


def product(x, w):
    return bf16(x) @ bf16(w).T


@pytest.mark.parametrize("cell,reset_after", [("lstm", True), ("gru", True), ("gru", False), ("rnn_tanh", True)])
@pytest.mark.parametrize("T,N,C,H", [(1, 1, 1, 1), (4, 1, 3, 15), (3, 7, 64, 16), (5, 2, 5, 17), (2, 9, 41, 70)])
def test_every_product_is_the_bf16_one(isa, cell, reset_after, T, N, C, H):
    kw = {"reset_after": reset_after} if cell == "gru" else {}
    layer = make(cell, C, H, compute_dtype="bfloat16", **kw).eval()
    x = np.random.default_rng(T * 100 + H).standard_normal((T, N, C)).astype(np.float32)
    got = layer(x)[0]
    np.testing.assert_allclose(got, emulate(cell, x, layer.params, product, reset_after), rtol=0, atol=2e-5)
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


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_no_drift_over_ten_thousand_steps(cell):
    # errors against float64 stay at the one-step level: the recurrence contracts them
    H, T = 64, 10000
    layer = make(cell, 16, H, rng=5, compute_dtype="bfloat16").eval()
    x = np.random.default_rng(6).standard_normal((T, 2, 16)).astype(np.float32)
    want = ref.forward(cell, x.astype(np.float64), {k: v.astype(np.float64) for k, v in layer.params.items()})[0]
    err = np.abs(layer(x)[0] - want).max(axis=(1, 2))
    assert err.max() < 0.03, err.max()
    assert err[-1000:].max() < 2 * err[:1000].max() + 0.005


@pytest.mark.parametrize("kind,kw", [
    ("lstm", {"proj_size": 12}), ("lstm", {"peephole": True}), ("LayerNormLSTM", {}), ("LayerNormGRU", {}),
    ("LiGRU", {"normalization": "layernorm"}), ("SLiGRU", {"normalization": "layernorm"}), ("rnn_tanh", {})])
def test_every_variant_runs_in_bf16(isa, kind, kw):
    C, H = 19, 40
    make_layer = (lambda **k: make(kind, C, H, **k)) if kind in ("lstm", "gru", "rnn_tanh") else \
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


def test_bad_settings_are_refused():
    layer = fastrnn.LSTM(3, 4, rng=0, compute_dtype="bfloat16")
    assert "compute_dtype='bfloat16'" in repr(layer)
    with pytest.raises(ValueError, match="rounds float32 parameters"):
        fastrnn.LSTM(3, 4, dtype=np.float64, compute_dtype="bfloat16")
    with pytest.raises(ValueError, match="compute_dtype='float16'"):
        fastrnn.LSTM(3, 4, compute_dtype="float16")
