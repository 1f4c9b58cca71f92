"""fastrnn.init: distributions, gate blocks, layer-level recipes, reproducibility, bad input."""
import math
import types

import numpy as np
import pytest

import fastrnn
from fastrnn import init

SHAPE = (600, 500)  # 300k samples: moment estimates within ~1 % (tolerances below are 3 %)


def _trunc_moments(mean, std, a, b):
    """Mean and variance of N(mean, std²) truncated to [a, b] (closed form)."""
    al, be = (a - mean) / std, (b - mean) / std
    pdf = lambda x: math.exp(-x * x / 2) / math.sqrt(2 * math.pi)  # noqa: E731
    cdf = lambda x: 0.5 * (1 + math.erf(x / math.sqrt(2)))  # noqa: E731
    z = cdf(be) - cdf(al)
    m = mean + std * (pdf(al) - pdf(be)) / z
    v = std ** 2 * (1 + (al * pdf(al) - be * pdf(be)) / z - ((pdf(al) - pdf(be)) / z) ** 2)
    return m, v


FAN_IN, FAN_OUT = SHAPE[1], SHAPE[0]
TANH_GAIN = 5.0 / 3

# (function, kwargs, expected mean, expected variance, bound (None: unbounded))
MOMENTS = {
    "uniform": (init.uniform, dict(a=-0.3, b=0.7), 0.2, 1.0 / 12, (-0.3, 0.7)),
    "normal": (init.normal, dict(mean=1.0, std=2.0), 1.0, 4.0, None),
    "trunc_normal": (init.trunc_normal, dict(mean=0.5, std=1.0, a=-1.0, b=2.0),
                     *_trunc_moments(0.5, 1.0, -1.0, 2.0), (-1.0, 2.0)),
    "xavier_uniform": (init.xavier_uniform, dict(gain=TANH_GAIN), 0.0,
                       TANH_GAIN ** 2 * 2 / (FAN_IN + FAN_OUT), TANH_GAIN * math.sqrt(6 / (FAN_IN + FAN_OUT))),
    "xavier_normal": (init.xavier_normal, dict(gain=2.0), 0.0, 4.0 * 2 / (FAN_IN + FAN_OUT), None),
    "kaiming_uniform": (init.kaiming_uniform, dict(), 0.0, 2.0 / FAN_IN, math.sqrt(6 / FAN_IN)),
    "kaiming_uniform_fan_out_tanh": (init.kaiming_uniform, dict(mode="fan_out", nonlinearity="tanh"), 0.0,
                                     TANH_GAIN ** 2 / FAN_OUT, TANH_GAIN * math.sqrt(3 / FAN_OUT)),
    "kaiming_normal_leaky": (init.kaiming_normal, dict(a=0.2), 0.0, 2 / (1 + 0.04) / FAN_IN, None),
    "lecun_uniform": (init.lecun_uniform, dict(), 0.0, 1.0 / FAN_IN, math.sqrt(3 / FAN_IN)),
    "lecun_normal": (init.lecun_normal, dict(), 0.0, 1.0 / FAN_IN, None),
    "vs_truncated": (init.variance_scaling, dict(scale=3.0, mode="fan_out", distribution="truncated_normal"),
                     0.0, 3.0 / FAN_OUT, 2 * math.sqrt(3.0 / FAN_OUT) / 0.87962566103423978),
    "vs_normal_avg": (init.variance_scaling, dict(scale=0.5, mode="fan_avg", distribution="normal"),
                      0.0, 0.5 / ((FAN_IN + FAN_OUT) / 2), None),
}


@pytest.mark.parametrize("name", list(MOMENTS))
def test_distribution_moments_and_bounds(name):
    fn, kw, mean, var, bound = MOMENTS[name]
    w = fn(SHAPE, rng=0, dtype=np.float64, **kw)
    assert w.shape == SHAPE and w.dtype == np.float64
    assert abs(w.mean() - mean) < 4 * math.sqrt(var / w.size)
    assert w.var() == pytest.approx(var, rel=0.03)
    if bound is not None:
        lo, hi = bound if isinstance(bound, tuple) else (-bound, bound)
        assert w.min() >= lo and w.max() <= hi
        # the bound is tight: samples come within 1 % of both ends
        assert w.min() < lo + 0.01 * (hi - lo) and w.max() > hi - 0.01 * (hi - lo)


def test_truncated_normal_variance_correction():
    """Keras/TF: dividing σ by 0.8796… makes the ±2σ-truncated normal have the target variance."""
    w = init.variance_scaling((1000, 400), 1.0, "fan_in", "truncated_normal", rng=1, dtype=np.float64)
    assert w.var() == pytest.approx(1 / 400, rel=0.02)
    assert np.abs(w).max() <= 2 * math.sqrt(1 / 400) / 0.87962566103423978


def test_fans_follow_torch_out_in_and_receptive_field():
    # [out=10, in=40]: kaiming fan_in is 40, fan_out is 10 (torch convention, not Keras's [in, out])
    assert np.abs(init.kaiming_uniform((10, 40), rng=0)).max() <= math.sqrt(6 / 40)
    assert np.abs(init.kaiming_uniform((10, 40), mode="fan_out", rng=0)).max() > math.sqrt(6 / 40)
    # [out, in, k]: fans multiplied by the receptive field k
    w = init.lecun_uniform((20, 30, 5), rng=0)
    assert np.abs(w).max() <= math.sqrt(3 / 150) and np.abs(w).max() > 0.98 * math.sqrt(3 / 150)
    # 1-D: fan_in = fan_out = n
    b = init.xavier_uniform(1000, rng=0)
    assert np.abs(b).max() <= math.sqrt(6 / 2000) and np.abs(b).max() > 0.98 * math.sqrt(6 / 2000)


def test_bounds_equal_torch():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    cases = [
        (init.kaiming_uniform, torch.nn.init.kaiming_uniform_, dict(a=math.sqrt(5))),  # nn.Linear's init
        (init.kaiming_uniform, torch.nn.init.kaiming_uniform_, dict(mode="fan_out", nonlinearity="relu")),
        (init.xavier_uniform, torch.nn.init.xavier_uniform_, dict(gain=0.5)),
    ]
    for ours, theirs, kw in cases:
        t = torch.empty(400, 300, dtype=torch.float64)
        theirs(t, **kw)
        w = ours((400, 300), rng=0, dtype=np.float64, **kw)
        # same bound: both samples fill [-b, b] up to the last 0.5 %
        assert np.abs(w).max() == pytest.approx(t.abs().max().item(), rel=5e-3)
        assert w.std() == pytest.approx(t.std().item(), rel=0.02)
    t = torch.empty(400, 300, dtype=torch.float64)
    torch.nn.init.kaiming_normal_(t, nonlinearity="tanh")
    assert init.kaiming_normal((400, 300), nonlinearity="tanh", rng=0, dtype=np.float64).std() == \
        pytest.approx(t.std().item(), rel=0.02)


@pytest.mark.parametrize("nonlinearity,param", [
    ("linear", None), ("conv1d", None), ("conv2d", None), ("conv3d", None), ("conv_transpose1d", None),
    ("conv_transpose2d", None), ("conv_transpose3d", None), ("sigmoid", None), ("tanh", None),
    ("relu", None), ("selu", None), ("leaky_relu", None), ("leaky_relu", 0), ("leaky_relu", 0.2),
    ("leaky_relu", 3)])
def test_calculate_gain_equals_torch(nonlinearity, param):
    torch = pytest.importorskip("torch")
    assert init.calculate_gain(nonlinearity, param) == pytest.approx(
        torch.nn.init.calculate_gain(nonlinearity, param), rel=1e-15)


def test_calculate_gain_table_without_torch():
    assert init.calculate_gain("tanh") == 5 / 3
    assert init.calculate_gain("relu") == math.sqrt(2)
    assert init.calculate_gain("leaky_relu") == math.sqrt(2 / (1 + 0.01 ** 2))
    assert init.calculate_gain("selu") == 0.75
    assert init.calculate_gain("sigmoid") == 1.0
    with pytest.raises(ValueError, match="calculate_gain: unsupported nonlinearity 'gelu'"):
        init.calculate_gain("gelu")
    with pytest.raises(TypeError, match="negative slope"):
        init.calculate_gain("leaky_relu", "0.1")


# --------------------------------------------------------------------------- orthogonal, gates

def _is_orthonormal_cols(w, atol=1e-10):
    return np.allclose(w.T @ w, np.eye(w.shape[1]), atol=atol)


def test_per_gate_orthogonal_is_orthogonal_block_by_block_whole_is_not():
    H = 16
    per_gate = init.orthogonal((4 * H, H), gates=4, rng=0, dtype=np.float64)
    whole = init.orthogonal((4 * H, H), rng=0, dtype=np.float64)
    blocks = lambda w: [w[g * H:(g + 1) * H] for g in range(4)]  # noqa: E731
    # per gate: every square block is orthogonal (BᵀB = BBᵀ = I); stacked, WᵀW = 4I
    for b in blocks(per_gate):
        assert np.allclose(b.T @ b, np.eye(H), atol=1e-10) and np.allclose(b @ b.T, np.eye(H), atol=1e-10)
    assert np.allclose(per_gate.T @ per_gate, 4 * np.eye(H), atol=1e-10)
    # whole matrix: orthonormal columns (WᵀW = I), but no block is orthogonal
    assert _is_orthonormal_cols(whole)
    for b in blocks(whole):
        assert not np.allclose(b.T @ b, np.eye(H), atol=0.1)


@pytest.mark.parametrize("shape", [(5, 3), (3, 5), (7, 7), (4, 2, 3), (1, 6), (6, 1)])
def test_semi_orthogonal_shapes(shape):
    q = init.orthogonal(shape, gain=2.0, rng=3, dtype=np.float64)
    assert q.shape == shape
    m = q.reshape(shape[0], -1)
    if m.shape[0] >= m.shape[1]:
        assert np.allclose(m.T @ m, 4 * np.eye(m.shape[1]), atol=1e-10)   # orthonormal columns × gain²
    else:
        assert np.allclose(m @ m.T, 4 * np.eye(m.shape[0]), atol=1e-10)   # orthonormal rows × gain²


def test_orthogonal_sign_fix_gives_haar_distribution():
    # Without the sign fix, diag(Q) of numpy's QR leans negative; Haar matrices have E[Q_ii] = 0.
    d = np.array([np.diag(init.orthogonal((3, 3), rng=s, dtype=np.float64)) for s in range(2000)])
    assert abs(d.mean()) < 0.03


def test_gates_use_the_fans_of_each_block():
    H, C = 50, 30
    w = init.xavier_uniform((4 * H, C), gates=4, rng=0, dtype=np.float64)
    per_block, whole = math.sqrt(6 / (H + C)), math.sqrt(6 / (4 * H + C))
    assert np.abs(w).max() <= per_block and np.abs(w).max() > whole
    assert np.abs(init.xavier_uniform((4 * H, C), rng=0)).max() <= whole
    e = init.eye((6, 2), gates=3, dtype=np.float64)
    assert np.array_equal(e, np.vstack([np.eye(2)] * 3))
    with pytest.raises(ValueError, match=r"orthogonal: gates=4 needs a first dimension divisible by 4.*\(10, 3\)"):
        init.orthogonal((10, 3), gates=4)


# --------------------------------------------------------------------------- twins, dtypes, rng

TWINS = [
    (init.uniform_, {}), (init.normal_, {}), (init.trunc_normal_, {}), (init.constant_, {"value": 0.5}),
    (init.zeros_, {}), (init.ones_, {}), (init.eye_, {}), (init.xavier_uniform_, {}),
    (init.xavier_normal_, {}), (init.kaiming_uniform_, {}), (init.kaiming_normal_, {}),
    (init.lecun_uniform_, {}), (init.lecun_normal_, {}), (init.orthogonal_, {}),
    (init.variance_scaling_, {}),
]
RANDOM = {init.uniform_, init.normal_, init.trunc_normal_, init.xavier_uniform_, init.xavier_normal_,
          init.kaiming_uniform_, init.kaiming_normal_, init.lecun_uniform_, init.lecun_normal_,
          init.orthogonal_, init.variance_scaling_}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("twin,kw", TWINS, ids=[t.__name__ for t, _ in TWINS])
def test_twin_fills_in_place_returns_same_object_and_matches_functional(twin, kw, dtype):
    if twin in RANDOM:
        kw = dict(kw, rng=5)
    arr = np.full((8, 4), np.nan, dtype)
    out = twin(arr, **kw, gates=2)
    assert out is arr and arr.dtype == dtype and np.isfinite(arr).all()
    functional = getattr(init, twin.__name__[:-1])
    new = functional((8, 4), **kw, gates=2, dtype=dtype)
    assert new.dtype == dtype
    np.testing.assert_array_equal(new, arr)


def test_twin_on_non_contiguous_view_and_torch_tensor():
    base = np.zeros((6, 8))
    view = base[:, ::2]
    init.orthogonal_(view, rng=0)
    assert _is_orthonormal_cols(base[:, ::2]) and np.all(base[:, 1::2] == 0)
    torch = pytest.importorskip("torch")
    t = torch.zeros(12, 3, dtype=torch.float32, requires_grad=True)
    assert init.orthogonal_(t, gates=4, rng=0) is t
    assert torch.allclose(t[3:6].T @ t[3:6], torch.eye(3), atol=1e-6)


def test_float32_and_float64_agree_for_the_same_seed():
    for fn in (init.xavier_uniform, init.normal, init.orthogonal, init.trunc_normal):
        a, b = fn((20, 10), rng=9, dtype=np.float32), fn((20, 10), rng=9, dtype=np.float64)
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_reproducibility_with_seeds_and_generators():
    a = init.orthogonal((8, 8), rng=42)
    assert np.array_equal(a, init.orthogonal((8, 8), rng=42))
    assert not np.array_equal(a, init.orthogonal((8, 8), rng=43))
    assert np.array_equal(a, init.orthogonal((8, 8), rng=np.random.default_rng(42)))
    gen = np.random.default_rng(42)
    first, second = init.normal(5, rng=gen), init.normal(5, rng=gen)  # the generator advances
    assert not np.array_equal(first, second)
    gen2 = np.random.default_rng(42)
    assert np.array_equal(first, init.normal(5, rng=gen2)) and np.array_equal(second, init.normal(5, rng=gen2))


def test_eye_and_constants():
    assert np.array_equal(init.eye((2, 3), 2.0, dtype=np.float64), 2 * np.eye(2, 3))
    assert init.identity is init.eye
    assert np.array_equal(init.constant((2, 2), -1.5), np.full((2, 2), -1.5, np.float32))
    assert init.zeros(0).shape == (0,)
    assert init.orthogonal((0, 3)).shape == (0, 3)


@pytest.mark.parametrize("call,exc,match", [
    (lambda: init.uniform((2,), 1.0, 0.0), ValueError, r"uniform: a must be <= b"),
    (lambda: init.normal((2,), std=-1.0), ValueError, r"normal: std must be non-negative"),
    (lambda: init.trunc_normal((2,), a=1.0, b=1.0), ValueError, r"trunc_normal: a must be < b"),
    (lambda: init.trunc_normal((2,), a=10.0, b=11.0), ValueError, r"trunc_normal: \[a, b\].*holds only"),
    (lambda: init.variance_scaling((2, 2), 0.0), ValueError, r"variance_scaling: scale must be positive"),
    (lambda: init.variance_scaling((2, 2), mode="fan_sum"), ValueError, r"unknown mode 'fan_sum'; expected"),
    (lambda: init.variance_scaling((2, 2), distribution="gauss"), ValueError, r"unknown distribution 'gauss'"),
    (lambda: init.xavier_uniform((2, 2), gain=0), ValueError, r"xavier_uniform: gain must be positive"),
    (lambda: init.xavier_uniform((2, 2), gain="1"), TypeError, r"xavier_uniform: gain must be a real number"),
    (lambda: init.kaiming_uniform((2, 2), nonlinearity="swish"), ValueError, r"kaiming_uniform: .*'swish'"),
    (lambda: init.orthogonal(5), ValueError, r"orthogonal: needs an array .* at least 2 dimensions"),
    (lambda: init.eye((2, 2, 2)), ValueError, r"eye: needs a 2-D array"),
    (lambda: init.normal((2, -1)), ValueError, r"normal: shape \(2, -1\) has a negative dimension"),
    (lambda: init.normal("ab"), TypeError, r"normal: shape must be an int or a tuple of ints"),
    (lambda: init.normal((2.5,)), TypeError, r"normal: shape must be an int or a tuple of ints"),
    (lambda: init.normal(3, dtype=np.float16), TypeError, r"normal: dtype: unsupported dtype float16"),
    (lambda: init.normal(3, rng="seed"), TypeError, r"normal: rng must be a numpy.random.Generator"),
    (lambda: init.normal(3, rng=np.random.RandomState(0)), TypeError, r"rng must be a numpy.random.Generator"),
    (lambda: init.normal(3, rng=-1), ValueError, r"normal: rng seed must be non-negative"),
    (lambda: init.normal((4, 2), gates=0), ValueError, r"normal: gates must be positive"),
    (lambda: init.normal((4, 2), gates=2.0), TypeError, r"normal: gates must be an int"),
    (lambda: init.normal_(np.zeros(3, np.int64)), TypeError, r"normal_: arr has dtype int64; expected float32"),
    (lambda: init.normal_([0.0, 1.0]), TypeError, r"normal_: arr must be a NumPy array"),
    (lambda: init.constant(2, float("nan")), ValueError, r"constant: value must be finite"),
])
def test_bad_arguments_raise(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_read_only_array_is_refused_and_unchanged():
    a = np.zeros(4)
    a.setflags(write=False)
    with pytest.raises(ValueError, match="normal_: arr is read-only"):
        init.normal_(a)
    assert np.all(a == 0)


# --------------------------------------------------------------------------- layer level

def _groups(layer):
    """(W_ih, W_hh, b_ih, b_hh) per layer and direction."""
    suffixes = ["", "_reverse"] if layer.bidirectional else [""]
    p = layer.params
    return [tuple(p.get(f"{n}_l{k}{s}") for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))
            for k in range(layer.num_layers) for s in suffixes]


def test_forget_bias_sets_the_effective_bias_and_avoids_the_two_bias_trap():
    H = 5
    lstm = fastrnn.LSTM(3, H, num_layers=2, bidirectional=True, rng=0, dtype=np.float64)
    before = {k: v.copy() for k, v in lstm.params.items()}
    assert init.forget_bias_(lstm, 2.5) is lstm
    for k in lstm.params:
        if k.startswith("weight"):
            np.testing.assert_array_equal(lstm.params[k], before[k])
    for _, _, b_ih, b_hh in _groups(lstm):
        np.testing.assert_array_equal((b_ih + b_hh)[H:2 * H], 2.5)   # effective forget bias
        assert np.all(b_hh[H:2 * H] == 0)                              # not 2.5 + 2.5
    for name in ("bias_ih_l1_reverse", "bias_hh_l0"):                  # other gates untouched
        np.testing.assert_array_equal(np.delete(lstm.params[name], np.s_[H:2 * H]),
                                      np.delete(before[name], np.s_[H:2 * H]))


def test_forget_bias_errors():
    with pytest.raises(ValueError, match="forget_bias_: only LSTM layers have a forget gate, got a 'gru'"):
        init.forget_bias_(fastrnn.GRU(2, 3))
    with pytest.raises(ValueError, match="forget_bias_: the layer has no biases"):
        init.forget_bias_(fastrnn.LSTM(2, 3, bias=False))
    with pytest.raises(TypeError, match="forget_bias_: expected a recurrent layer"):
        init.forget_bias_({"weight_hh_l0": np.zeros((4, 1))})


@pytest.mark.parametrize("t_max", [3.0, 100.0])
def test_chrono_lstm(t_max):
    H = 500
    lstm = fastrnn.LSTM(2, H, bidirectional=True, rng=0, dtype=np.float64)
    before = {k: v.copy() for k, v in lstm.params.items()}
    assert init.chrono_(lstm, t_max, rng=1) is lstm
    for (_, _, b_ih, b_hh), name in zip(_groups(lstm), ("l0", "l0_reverse")):
        b_f = (b_ih + b_hh)[H:2 * H]
        b_i = (b_ih + b_hh)[:H]
        assert b_f.min() >= 0 and b_f.max() <= math.log(t_max - 1)
        np.testing.assert_array_equal(b_i, -b_f)
        # exp(b_f) ~ U[1, t_max − 1]: mean t_max / 2 (4 standard errors), both ends reached
        u = np.exp(b_f)
        assert u.mean() == pytest.approx(t_max / 2, abs=4 * (t_max - 2) / math.sqrt(12 * H))
        assert u.min() < 1 + 0.05 * (t_max - 2) and u.max() > t_max - 1 - 0.05 * (t_max - 2)
        # g and o gates untouched
        np.testing.assert_array_equal(b_ih[2 * H:], before[f"bias_ih_{name}"][2 * H:])
        np.testing.assert_array_equal(b_hh[2 * H:], before[f"bias_hh_{name}"][2 * H:])
    assert not np.array_equal(lstm.params["bias_ih_l0"], lstm.params["bias_ih_l0_reverse"])


def test_chrono_gru_acts_on_the_update_gate():
    H = 1000
    gru = fastrnn.GRU(2, H, rng=0, dtype=np.float64)
    before = {k: v.copy() for k, v in gru.params.items()}
    init.chrono_(gru, 50, rng=0)
    b = gru.params["bias_ih_l0"] + gru.params["bias_hh_l0"]
    b_z = b[H:2 * H]
    assert b_z.min() >= 0 and b_z.max() <= math.log(49)
    assert np.exp(b_z).mean() == pytest.approx(25, abs=4 * 48 / math.sqrt(12 * H))
    for name in ("bias_ih_l0", "bias_hh_l0"):  # r and n untouched
        np.testing.assert_array_equal(np.delete(gru.params[name], np.s_[H:2 * H]),
                                      np.delete(before[name], np.s_[H:2 * H]))


def test_chrono_is_reproducible_and_errors():
    a = init.chrono_(fastrnn.LSTM(2, 8, rng=0), 30, rng=5).params["bias_ih_l0"].copy()
    b = init.chrono_(fastrnn.LSTM(2, 8, rng=1), 30, rng=5).params["bias_ih_l0"]
    np.testing.assert_array_equal(a[:16], b[:16])
    with pytest.raises(ValueError, match=r"chrono_: t_max must be > 2"):
        init.chrono_(fastrnn.LSTM(2, 3), 2)
    with pytest.raises(ValueError, match=r"chrono_: needs an LSTM or GRU layer .* 'rnn_tanh'"):
        init.chrono_(fastrnn.RNN(2, 3), 10)
    with pytest.raises(ValueError, match="chrono_: the layer has no biases"):
        init.chrono_(fastrnn.GRU(2, 3, bias=False), 10)


def test_identity_irnn():
    rnn = fastrnn.RNN(3, 6, num_layers=2, nonlinearity="relu", rng=0)
    w_ih = rnn.params["weight_ih_l0"].copy()
    assert init.identity_(rnn, 0.9) is rnn
    for _, w_hh, b_ih, b_hh in _groups(rnn):
        np.testing.assert_array_equal(w_hh, 0.9 * np.eye(6, dtype=np.float32))
        assert np.all(b_ih == 0) and np.all(b_hh == 0)
    np.testing.assert_array_equal(rnn.params["weight_ih_l0"], w_ih)
    lstm = init.identity_(fastrnn.LSTM(3, 2, rng=0, bias=False))
    np.testing.assert_array_equal(lstm.params["weight_hh_l0"], np.vstack([np.eye(2)] * 4))


# --------------------------------------------------------------------------- presets

LAYERS = [
    lambda: fastrnn.LSTM(5, 7, num_layers=2, bidirectional=True, rng=0),
    lambda: fastrnn.GRU(5, 7, num_layers=2, rng=0, dtype=np.float64),
    lambda: fastrnn.RNN(5, 7, bidirectional=True, nonlinearity="relu", rng=0),
]


@pytest.mark.parametrize("make", LAYERS, ids=["lstm", "gru", "rnn"])
def test_torch_preset_equals_reset_parameters(make):
    a, b = make(), make()
    init.apply_(a, "torch", rng=11)
    b.reset_parameters(rng=11)
    for k in a.params:
        np.testing.assert_array_equal(a.params[k], b.params[k])
    # rng=None uses the layer's own generator, like reset_parameters()
    c, d = make(), make()
    init.apply_(c, "torch")
    d.reset_parameters()
    for k in c.params:
        np.testing.assert_array_equal(c.params[k], d.params[k])


def _blocks_orthogonal(w, H):
    G = w.shape[0] // H
    return all(np.allclose(w[g * H:(g + 1) * H].T @ w[g * H:(g + 1) * H], np.eye(H), atol=1e-5)
               for g in range(G))


@pytest.mark.parametrize("make", LAYERS, ids=["lstm", "gru", "rnn"])
def test_keras_preset(make):
    layer = init.apply_(make(), "keras", rng=0)
    H, C = 7, 5
    G = layer.params["weight_hh_l0"].shape[0] // H
    for w_ih, w_hh, b_ih, b_hh in _groups(layer):
        R = w_hh.astype(np.float64).T                  # the Keras recurrent kernel [H, G·H]
        assert np.allclose(R @ R.T, np.eye(H), atol=1e-5)   # orthonormal rows, whole kernel
        if G > 1:
            assert not _blocks_orthogonal(w_hh, H)
        assert np.abs(w_ih).max() <= math.sqrt(6 / (w_ih.shape[1] + G * H)) * (1 + 1e-6)
        expected = np.zeros(G * H)
        if isinstance(layer, fastrnn.LSTM):
            expected[H:2 * H] = 1.0                    # unit_forget_bias
        np.testing.assert_array_equal(b_ih + b_hh, expected)
    assert C == layer.input_size


@pytest.mark.parametrize("make", LAYERS, ids=["lstm", "gru", "rnn"])
def test_haste_and_orthogonal_presets(make):
    H = 7
    haste = init.apply_(make(), "haste", rng=0)
    ortho = init.apply_(make(), "orthogonal", rng=0)
    G = haste.params["weight_hh_l0"].shape[0] // H
    for (w_ih, w_hh, b_ih, b_hh), (o_ih, o_hh, ob_ih, ob_hh) in zip(_groups(haste), _groups(ortho)):
        assert _blocks_orthogonal(w_hh, H) and _blocks_orthogonal(o_hh, H)
        C = w_ih.shape[1]
        assert np.abs(w_ih).max() <= math.sqrt(6 / (C + H)) * (1 + 1e-6)       # per-block fans
        assert np.abs(o_ih).max() <= math.sqrt(6 / (C + G * H)) * (1 + 1e-6)   # whole-matrix fans
        expected = np.zeros(G * H)
        if isinstance(haste, fastrnn.LSTM):
            expected[H:2 * H] = 1.0
        np.testing.assert_array_equal(b_ih + b_hh, expected)
        assert np.all(ob_ih == 0) and np.all(ob_hh == 0)


def test_identity_and_chrono_presets():
    rnn = init.apply_(fastrnn.RNN(4000, 3, nonlinearity="relu", rng=0, dtype=np.float64), "identity",
                      rng=0, scale=0.5)
    np.testing.assert_array_equal(rnn.params["weight_hh_l0"], 0.5 * np.eye(3))
    assert rnn.params["weight_ih_l0"].std() == pytest.approx(0.001, rel=0.03)
    assert np.all(rnn.params["bias_ih_l0"] == 0)
    lstm = init.apply_(fastrnn.LSTM(3, 6, rng=0), "chrono", rng=0, t_max=20)
    b = lstm.params["bias_ih_l0"] + lstm.params["bias_hh_l0"]
    assert _blocks_orthogonal(lstm.params["weight_hh_l0"], 6)
    assert np.all(b[6:12] >= 0) and np.all(b[6:12] <= math.log(19)) and np.array_equal(b[:6], -b[6:12])
    assert np.all(b[12:] == 0)


def test_presets_reproducible_and_bad_presets():
    a = init.apply_(fastrnn.GRU(3, 4, rng=0), "haste", rng=3)
    b = init.apply_(fastrnn.GRU(3, 4, rng=1), "haste", rng=np.random.default_rng(3))
    for k in a.params:
        np.testing.assert_array_equal(a.params[k], b.params[k])
    with pytest.raises(ValueError, match=r"apply_: unknown preset 'xavier'; expected one of 'torch', 'keras', "
                                         r"'haste', 'orthogonal', 'identity', 'chrono'"):
        init.apply_(a, "xavier")
    with pytest.raises(ValueError, match="preset 'chrono' needs t_max"):
        init.apply_(fastrnn.LSTM(2, 3), "chrono")
    with pytest.raises(TypeError, match=r"preset 'keras' got unexpected option\(s\) \['t_max'\]"):
        init.apply_(a, "keras", t_max=3)
    with pytest.raises(TypeError, match="apply_: expected a recurrent layer"):
        init.apply_(object(), "torch")


def test_layer_protocol_with_torch_views_and_gate_detection():
    """A torch-module twin exposes .params as NumPy views of its tensors and may lack _cell()."""
    torch = pytest.importorskip("torch")
    ref = torch.nn.LSTM(3, 4, num_layers=2, bidirectional=True)
    twin = types.SimpleNamespace(params={k: v.detach().numpy() for k, v in ref.named_parameters()},
                                 hidden_size=4)
    init.apply_(twin, "keras", rng=0)   # gate count 4 → LSTM: unit forget bias
    with torch.no_grad():
        assert torch.equal(ref.bias_ih_l1_reverse[4:8], torch.ones(4))
        w = ref.weight_hh_l0.double()
        assert torch.allclose(w.T @ w, torch.eye(4, dtype=torch.float64), atol=1e-5)
    # tensors directly in .params work too (CPU views)
    gru = torch.nn.GRU(3, 4)
    tw = types.SimpleNamespace(params=dict(gru.named_parameters()), hidden_size=4)
    init.chrono_(tw, 10, rng=0)
    assert torch.all(gru.bias_ih_l0[4:8] >= 0) and torch.all(gru.bias_hh_l0[4:8] == 0)
    with pytest.raises(ValueError, match="forget_bias_: only LSTM layers .* got a 'gru'"):
        init.forget_bias_(tw)


@pytest.mark.parametrize("preset", ["torch", "keras", "haste", "orthogonal", "identity", "chrono"])
@pytest.mark.parametrize("make", [lambda: fastrnn.LayerNormLSTM(3, 4, num_layers=2, rng=0),
                                  lambda: fastrnn.LayerNormGRU(3, 4, bidirectional=True, rng=0),
                                  lambda: fastrnn.LSTM(3, 6, proj_size=2, peephole=True, rng=0)],
                         ids=["ln_lstm", "ln_gru", "lstmp_peephole"])
def test_presets_cover_the_variants(preset, make):
    layer = make()
    opts = {"t_max": 20} if preset == "chrono" else {}
    init.apply_(layer, preset, rng=1, **opts)
    for name, w in layer.params.items():
        assert np.isfinite(w).all(), name
        if name.startswith("ln_") and "bias" not in name:
            assert (w == 1).all(), name  # LayerNorm gains start at 1
        if name.startswith("ln_c_bias"):
            assert not w.any(), name
        if name.startswith("weight_peephole") and preset != "torch":
            assert not w.any(), name  # the plain LSTM to start from
    if preset == "torch":
        twin = make()
        twin.reset_parameters(rng=1)
        for name in layer.params:
            np.testing.assert_array_equal(layer.params[name], twin.params[name])
    x = np.random.default_rng(0).standard_normal((5, 2, 3)).astype(np.float32)
    out, _ = layer(x)
    assert np.isfinite(out).all()
