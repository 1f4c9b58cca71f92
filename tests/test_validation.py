"""Bad input raises a clear ValueError/TypeError naming the argument, shape and expectation."""
import numpy as np
import pytest

import fastrnn
from fastrnn import functional as F


@pytest.fixture
def lstm():
    return fastrnn.LSTM(4, 3, rng=0)


def x_ok(T=5, N=2, C=4, dtype=np.float32):
    return np.zeros((T, N, C), dtype)


def test_wrong_ndim(lstm):
    with pytest.raises(ValueError, match=r"LSTM.forward: x has shape \(5,\), expected"):
        lstm(np.zeros(5, np.float32))
    with pytest.raises(ValueError, match=r"x has shape \(1, 5, 2, 4\)"):
        lstm(np.zeros((1, 5, 2, 4), np.float32))


def test_wrong_input_size(lstm):
    with pytest.raises(ValueError, match=r"x has shape \(5, 2, 7\), expected \(T>0, N>0, C=4\)"):
        lstm(np.zeros((5, 2, 7), np.float32))


def test_zero_sizes(lstm):
    with pytest.raises(ValueError, match="T>0"):
        lstm(np.zeros((0, 2, 4), np.float32))
    with pytest.raises(ValueError, match="N>0"):
        lstm(np.zeros((5, 0, 4), np.float32))


@pytest.mark.parametrize("bad", [np.float64, np.int64, np.int32, np.bool_, np.complex64, object, np.float16])
def test_wrong_dtype(lstm, bad):
    x = np.zeros((5, 2, 4), dtype=bad)
    with pytest.raises(TypeError, match=r"x has dtype .*, expected float32"):
        lstm(x)


def test_unsupported_layer_dtype():
    with pytest.raises(TypeError, match="float16"):
        fastrnn.LSTM(4, 3, dtype=np.float16)


def test_bad_constructor_args():
    with pytest.raises(ValueError, match="hidden_size must be positive"):
        fastrnn.GRU(4, 0)
    with pytest.raises(ValueError, match="dropout must be in"):
        fastrnn.GRU(4, 3, dropout=1.0)
    with pytest.raises(ValueError, match="nonlinearity"):
        fastrnn.RNN(4, 3, nonlinearity="sigmoid")
    with pytest.raises(TypeError, match="num_layers must be an int"):
        fastrnn.RNN(4, 3, num_layers=1.5)


def test_hx_shape_and_dtype(lstm):
    h = np.zeros((1, 2, 3), np.float32)
    with pytest.raises(ValueError, match=r"h0 has shape \(1, 3, 3\), expected \(L\*D=1, N=2, H=3\)"):
        lstm(x_ok(), (np.zeros((1, 3, 3), np.float32), h))
    with pytest.raises(ValueError, match=r"c0 has shape"):
        lstm(x_ok(), (h, np.zeros((2, 2, 3), np.float32)))
    with pytest.raises(TypeError, match=r"h0 has dtype float64, expected float32"):
        lstm(x_ok(), (h.astype(np.float64), h))
    with pytest.raises(TypeError, match="tuple"):
        lstm(x_ok(), h)
    gru = fastrnn.GRU(4, 3)
    with pytest.raises(ValueError, match=r"h0 has shape \(2, 2, 3\)"):
        gru(x_ok(), np.zeros((2, 2, 3), np.float32))


def test_lengths(lstm):
    with pytest.raises(ValueError, match=r"lengths\[1\] = 6 is out of range; every length must be in \[1, T=5\]"):
        lstm(x_ok(), lengths=[2, 6])
    with pytest.raises(ValueError, match=r"lengths\[0\] = 0"):
        lstm(x_ok(), lengths=[0, 2])
    with pytest.raises(ValueError, match=r"lengths has shape \(3,\), expected \(N=2,\)"):
        lstm(x_ok(), lengths=[1, 2, 3])
    with pytest.raises(TypeError, match="lengths must be integers"):
        lstm(x_ok(), lengths=[1.0, 2.0])
    with pytest.raises(ValueError, match="unbatched"):
        lstm(np.zeros((5, 4), np.float32), lengths=[5])


def test_backward_without_forward(lstm):
    with pytest.raises(RuntimeError, match="no training cache"):
        lstm.backward(np.zeros((5, 2, 3), np.float32))


def test_backward_after_eval_forward(lstm):
    lstm(x_ok())
    lstm.eval()
    lstm(x_ok())
    with pytest.raises(RuntimeError, match="eval-mode forwards keep no cache"):
        lstm.backward(np.zeros((5, 2, 3), np.float32))


def test_backward_twice(lstm):
    out, _ = lstm(x_ok())
    lstm.backward(np.ones_like(out))
    with pytest.raises(RuntimeError, match="already called"):
        lstm.backward(np.ones_like(out))


def test_functional_backward_twice():
    layer = fastrnn.GRU(4, 3)
    out, _, ctx = F.gru_forward(x_ok(), layer.params, training=True)
    F.backward(ctx, np.ones_like(out))
    with pytest.raises(RuntimeError, match="already used"):
        F.backward(ctx, np.ones_like(out))


def test_bad_grad_output(lstm):
    lstm(x_ok())
    with pytest.raises(ValueError, match=r"grad_output has shape \(5, 2, 4\), expected \(T=5, N=2, D\*H=3\)"):
        lstm.backward(np.zeros((5, 2, 4), np.float32))
    with pytest.raises(TypeError, match="grad_output has dtype float64"):
        lstm.backward(np.zeros((5, 2, 3)))
    with pytest.raises(ValueError, match=r"grad_h_n has shape"):
        lstm.backward(np.zeros((5, 2, 3), np.float32), np.zeros((2, 2, 3), np.float32))


def test_functional_params_checked():
    layer = fastrnn.RNN(4, 3)
    p = dict(layer.params)
    del p["bias_hh_l0"]
    with pytest.raises(KeyError, match="bias_hh_l0"):
        F.rnn_forward(x_ok(), p)
    p = dict(layer.params, bias_hh_l0=np.zeros(4, np.float32))
    with pytest.raises(ValueError, match=r"bias_hh_l0 has shape \(4,\), expected \(3,\)"):
        F.rnn_forward(x_ok(), p)
    p = dict(layer.params, bias_hh_l0=np.zeros(3, np.float64))
    with pytest.raises(TypeError, match="bias_hh_l0 has dtype float64"):
        F.rnn_forward(x_ok(), p)


def test_load_state_dict_errors(lstm):
    sd = lstm.state_dict()
    del sd["bias_ih_l0"]
    with pytest.raises(KeyError, match="bias_ih_l0"):
        lstm.load_state_dict(sd)
    sd = lstm.state_dict()
    sd["weight_hh_l1"] = np.zeros((12, 3))
    with pytest.raises(KeyError, match="weight_hh_l1"):
        lstm.load_state_dict(sd)
    sd = lstm.state_dict()
    sd["weight_hh_l0"] = np.zeros((12, 4), np.float32)
    with pytest.raises(ValueError, match=r"'weight_hh_l0' has shape \(12, 4\), expected \(12, 3\)"):
        lstm.load_state_dict(sd)
    before = lstm.state_dict()
    sd = lstm.state_dict()
    sd["weight_ih_l0"] = sd["weight_ih_l0"] + 1
    sd["weight_hh_l0"] = np.zeros((1, 1))
    with pytest.raises(ValueError):
        lstm.load_state_dict(sd)
    for k, v in before.items():  # a failed load changes nothing
        np.testing.assert_array_equal(lstm.params[k], v)


def test_non_strict_load(lstm):
    sd = lstm.state_dict()
    del sd["bias_ih_l0"]
    sd["extra"] = np.zeros(1)
    missing, unexpected = lstm.load_state_dict(sd, strict=False)
    assert missing == ["bias_ih_l0"] and unexpected == ["extra"]


def test_sizes_too_large_for_blas():
    layer = fastrnn.RNN(1, 1)
    x = np.lib.stride_tricks.as_strided(np.zeros(1, np.float32), (2**31, 1, 1), (0, 0, 0))
    with pytest.raises(ValueError, match="32-bit BLAS"):
        layer(x)


def test_cache_memory_error():
    # The training cache of this call is ~50 GB (more than the machine's memory): MemoryError, no crash.
    layer = fastrnn.LSTM(1, 1000, bidirectional=True, dtype=np.float64)
    with pytest.raises(MemoryError):
        layer(np.zeros((2**19, 1, 1)))


def test_set_num_threads_and_isa_errors():
    with pytest.raises(ValueError, match="n must be >= 1"):
        fastrnn.set_num_threads(0)
    with pytest.raises(TypeError):
        fastrnn.set_num_threads(1.5)
    with pytest.raises(ValueError, match="unknown ISA 'sse9'"):
        fastrnn.set_isa("sse9")
