"""The AVX-512 microkernel's rows per register block (6 or 8, chosen per microarchitecture in
csrc/dispatch/): both blockings give bitwise the same results, on every cell's forward and
backward, at row counts around both block heights."""
import numpy as np
import pytest

import fastrnn
from fastrnn import _C

pytestmark = pytest.mark.skipif("avx512" not in fastrnn.available_isas(), reason="needs AVX-512")


@pytest.fixture
def rows():
    before_isa, before = fastrnn.get_isa(), _C._microkernel_rows()
    fastrnn.set_isa("avx512")
    yield
    _C._set_microkernel_rows(before)
    fastrnn.set_isa(before_isa)


def run(cls, N, dtype, **kw):
    layer = cls(9, 37, num_layers=2, dtype=dtype, rng=0, **kw)
    x = np.random.default_rng(N).standard_normal((5, N, 9)).astype(dtype)
    out, _ = layer(x)
    gx, _ = layer.backward(np.ones_like(out))[:2]
    layer.eval()
    inf, _ = layer(x)
    return [out, gx, inf] + [g.copy() for g in layer.grads.values()]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("N", [1, 5, 6, 7, 8, 9, 12, 13, 16, 23])
@pytest.mark.parametrize("cls,kw", [(fastrnn.LSTM, {}), (fastrnn.GRU, {}), (fastrnn.GRU, {"reset_after": False}),
                                    (fastrnn.RNN, {}), (fastrnn.LSTM, {"proj_size": 11}),
                                    (fastrnn.LayerNormLSTM, {}), (fastrnn.LiGRU, {})])
def test_six_and_eight_rows_agree_bitwise(rows, cls, kw, N, dtype):
    _C._set_microkernel_rows(8)
    eight = run(cls, N, dtype, **kw)
    _C._set_microkernel_rows(6)
    assert _C._microkernel_rows() == 6
    six = run(cls, N, dtype, **kw)
    for a, b in zip(eight, six):
        assert np.array_equal(a, b)


def test_setting_is_checked_and_detected(rows):
    with pytest.raises(ValueError, match="expected 6, 8 or 0"):
        _C._set_microkernel_rows(7)
    _C._set_microkernel_rows(0)
    assert _C._microkernel_rows() in (6, 8)
