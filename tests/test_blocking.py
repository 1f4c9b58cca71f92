"""The GEMM choices made per microarchitecture in csrc/dispatch/: the AVX-512 microkernel's rows
per register block (6 or 8) give bitwise the same results, on every cell's forward and backward,
at row counts around both block heights; the hoisted input product on the microkernel or on BLAS
both match the float64 reference."""
import os
import subprocess
import sys

import numpy as np
import pytest

import fastrnn
from fastrnn import _C

needs_avx512 = pytest.mark.skipif("avx512" not in fastrnn.available_isas(), reason="needs AVX-512")


from util import make_layer, run_both, scaled_error


@pytest.fixture
def rows():
    before_isa, before = fastrnn.get_isa(), _C._microkernel_rows()
    fastrnn.set_isa("avx512")
    yield
    _C._set_microkernel_rows(before)
    fastrnn.set_isa(before_isa)


def run(cls, N, dtype, H=37, **kw):
    layer = cls(9, H, num_layers=2, dtype=dtype, rng=0, **kw)
    x = np.random.default_rng(N).standard_normal((5, N, 9)).astype(dtype)
    out, _ = layer(x)
    gx, _ = layer.backward(np.ones_like(out))[:2]
    layer.eval()
    inf, _ = layer(x)
    return [out, gx, inf] + [g.copy() for g in layer.grads.values()]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("N", [1, 5, 6, 7, 8, 9, 12, 13, 16, 23, 24, 32, 33])
@pytest.mark.parametrize("cls,kw", [(fastrnn.LSTM, {}), (fastrnn.GRU, {}), (fastrnn.GRU, {"reset_after": False}),
                                    (fastrnn.RNN, {}), (fastrnn.LSTM, {"proj_size": 11}),
                                    (fastrnn.LayerNormLSTM, {}), (fastrnn.LiGRU, {})])
@needs_avx512
def test_six_and_eight_rows_agree_bitwise(rows, cls, kw, N, dtype):
    H = 37
    _C._set_microkernel_rows(8)
    eight = run(cls, N, dtype, H, **kw)
    _C._set_microkernel_rows(6)
    assert _C._microkernel_rows() == 6
    six = run(cls, N, dtype, H, **kw)
    for a, b in zip(eight, six):
        assert np.array_equal(a, b)


@needs_avx512
def test_setting_is_checked_and_detected(rows):
    with pytest.raises(ValueError, match="expected 6, 8 or 0"):
        _C._set_microkernel_rows(7)
    _C._set_microkernel_rows(0)
    assert _C._microkernel_rows() in (6, 8)


@pytest.mark.parametrize("isa", fastrnn.available_isas())
@pytest.mark.parametrize("dtype,tol", [(np.float32, 2e-5), (np.float64, 1e-12)])
@pytest.mark.parametrize("cell,kw", [("lstm", {}), ("gru", {}), ("gru_v1", {}), ("rnn_relu", {}),
                                     ("lstm", {"bidirectional": True}), ("gru", {"bidirectional": True})])
def test_input_product_on_the_microkernel(input_gemm, isa, cell, kw, dtype, tol):
    """T*N = 2560 rows: past the 2048 from which the hoisted input product may run on the
    microkernel (W_ih packed per call). H = 45: gate rows end inside a panel (the spill tile);
    C = 150 > one pass of 128; layer 2 reads the layer below. Both ways against the float64
    reference, training and inference, on every ISA, and in effect (other bits)."""
    fastrnn.set_isa(isa)
    x = np.random.default_rng(3).standard_normal((64, 40, 150)).astype(dtype)
    results = {}
    for which in ("own", "blas"):
        _C._set_input_gemm(which)
        assert _C._input_gemm() == which
        layer = make_layer(cell, 150, 45, dtype=dtype, seed=2, num_layers=2, **kw)
        mine, theirs = run_both(layer, x)
        for key in ("out", "h_n", "grad_x", "grad_h0"):
            assert scaled_error(mine[key], theirs[key]) < tol, (which, key)
        for name, g in theirs["grads"].items():
            assert scaled_error(mine["grads"][name], g) < tol, (which, name)
        layer.eval()
        inference, _ = layer(x)
        assert scaled_error(inference, theirs["out"]) < tol, which
        results[which] = inference
    assert not np.array_equal(results["own"], results["blas"])


def test_input_product_is_the_same_on_one_and_two_threads(input_gemm):
    _C._set_input_gemm("own")
    layer = fastrnn.GRU(70, 45, dtype=np.float32, rng=0)  # 135 gate rows: the spill tile too
    layer.eval()
    x = np.random.default_rng(0).standard_normal((100, 33, 70)).astype(np.float32)
    before = fastrnn.get_num_threads()
    try:
        fastrnn.set_num_threads(1)
        one, _ = layer(x)
        fastrnn.set_num_threads(2)
        two, _ = layer(x)
    finally:
        fastrnn.set_num_threads(before)
    assert np.array_equal(one, two)


def test_input_product_setting_is_checked_and_detected(input_gemm):
    with pytest.raises(ValueError, match="expected 'own', 'blas' or 'detect'"):
        _C._set_input_gemm("mkl")
    _C._set_input_gemm("detect")
    before_isa, before_rows = fastrnn.get_isa(), _C._microkernel_rows()
    try:
        _C._set_microkernel_rows(0)
        intel = _C._microkernel_rows() == 6  # the rows follow the same detection (csrc/dispatch/)
        for isa in fastrnn.available_isas():
            fastrnn.set_isa(isa)
            assert _C._input_gemm() == ("own" if intel and isa == "avx512" else "blas"), isa
    finally:
        fastrnn.set_isa(before_isa)
        _C._set_microkernel_rows(before_rows)


@pytest.mark.parametrize("value", ["own", "blas"])
def test_environment_chooses_the_input_product(value):
    code = "import fastrnn; print(fastrnn._C._input_gemm())"
    env = dict(os.environ, FASTRNN_INPUT_GEMM=value)
    assert subprocess.check_output([sys.executable, "-c", code], env=env, text=True).strip() == value


@pytest.mark.parametrize("cls,kw", [(fastrnn.LSTM, {"proj_size": 13}), (fastrnn.LayerNormLSTM, {}),
                                    (fastrnn.LiGRU, {}), (fastrnn.GRU, {"bidirectional": True, "num_layers": 2})])
def test_input_product_of_every_variant(input_gemm, cls, kw):
    """LSTMP (layer 2 reads D*P columns), LayerNorm and batch norm (they normalize the product
    afterwards): the microkernel's input product against BLAS's, float64, training (outputs and
    every gradient) and inference, T*N = 2,100 rows."""
    x = np.random.default_rng(5).standard_normal((70, 30, 150))
    runs = {}
    for which in ("own", "blas"):
        _C._set_input_gemm(which)
        layer = cls(150, 40, dtype=np.float64, rng=4, **({"num_layers": 2} | kw))
        out, _ = layer(x)
        layer.backward(np.ones_like(out))
        grads = {k: g.copy() for k, g in layer.grads.items()}
        layer.eval()
        runs[which] = (out, layer(x)[0], grads)
    (out, inf, grads), (out_b, inf_b, grads_b) = runs["own"], runs["blas"]
    # float64 rounding: LayerNorm's normalization and backward amplify it (1.0e-12 on outputs in
    # the sanitizer build, 2e-12 on a weight gradient summed over 2,100 rows)
    assert scaled_error(out, out_b) < 1e-10 and scaled_error(inf, inf_b) < 1e-10
    for name in grads_b:
        assert scaled_error(grads[name], grads_b[name]) < 1e-10, name
    assert not np.array_equal(inf, inf_b)  # the microkernel ran


def test_own_input_product_keeps_chunks_bitwise(input_gemm):
    """Each row's product is the same whatever rows surround it: a long run equals the same run
    in chunks carrying the state, bitwise, when every chunk takes the microkernel (>= 2,048 rows)
    and C = 200 takes two passes over K."""
    _C._set_input_gemm("own")
    layer = fastrnn.LSTM(200, 32, dtype=np.float32, rng=0)
    layer.eval()
    x = np.random.default_rng(1).standard_normal((4300, 1, 200)).astype(np.float32)
    whole, _ = layer(x)
    first, state = layer(x[:2150])
    second, _ = layer(x[2150:], state)
    assert np.array_equal(whole, np.concatenate([first, second]))
