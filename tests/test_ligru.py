"""Li-GRU and SLi-GRU (fastrnn.LiGRU / SLiGRU, functional.ligru_forward / sligru_forward) against
the float64 reference (fastrnn/core/reference.py, itself checked against SpeechBrain's modules in
tests/test_speechbrain.py) and central finite differences, on every ISA and both dtypes."""
import copy
import pickle

import numpy as np
import pytest

import fastrnn
from fastrnn.core import reference as ref
from fastrnn import functional as F

ACTS = ["relu", "tanh", "sin", "leaky_relu"]
NORMS = ["batchnorm", "layernorm", None]
TOL = {np.float32: dict(rtol=2e-4, atol=2e-5), np.float64: dict(rtol=1e-10, atol=1e-11)}


def make(kind, C, H, dtype, **kw):
    cls = fastrnn.SLiGRU if kind == "sligru" else fastrnn.LiGRU
    layer = cls(C, H, dtype=dtype, rng=3, **kw)
    rng = np.random.default_rng(7)
    for name, p in layer.params.items():  # away from the init values: every parameter matters
        if name.startswith(("norm_", "ln_hh", "bias")):
            p[...] = (1.0 if "weight" in name else 0.0) + 0.3 * rng.standard_normal(p.shape)
    for name, b in layer.buffers.items():
        b[...] = (1.0 + 0.5 * rng.random(b.shape)) if "var" in name else 0.2 * rng.standard_normal(b.shape)
    return layer


def reference(layer, x, h0=None, lengths=None, training=True, cand=None, masks=None, grad=None):
    running = {k: v.astype(np.float64) for k, v in layer.buffers.items()}
    params = {k: v.astype(np.float64) for k, v in layer.params.items()}
    out, h_n, cache = ref.ligru_forward(layer._mode, x, params, h0, lengths, num_layers=layer.num_layers,
                                        bidirectional=layer.bidirectional, nonlinearity=layer.nonlinearity,
                                        normalization=layer.normalization, training=training, running=running,
                                        momentum=layer.momentum, cand_masks=cand, dropout_masks=masks)
    grads = None
    if grad is not None:
        grads = ref.ligru_backward(cache, grad)
    return out, h_n, running, grads


CASES = [  # kind, act, norm, L, bidirectional, lengths, affine
    ("ligru", "relu", "batchnorm", 1, False, None, False),
    ("ligru", "tanh", "layernorm", 2, True, [7, 3, 5], False),
    ("ligru", "sin", None, 1, True, [7, 1, 4], False),
    ("ligru", "leaky_relu", "batchnorm", 2, True, [5, 7, 2], False),
    ("sligru", "relu", "batchnorm", 2, False, [7, 6, 3], False),
    ("sligru", "tanh", "layernorm", 1, True, None, True),
    ("sligru", "sin", "batchnorm", 1, True, [4, 7, 7], True),
    ("sligru", "leaky_relu", None, 2, False, None, False),
]


@pytest.mark.parametrize("kind,act,norm,L,bidir,lengths,affine", CASES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("H", [1, 8, 19])
def test_matches_reference(isa, kind, act, norm, L, bidir, lengths, affine, dtype, H):
    T, N, C = 7, 3, 5
    kw = dict(recurrent_affine=affine) if kind == "sligru" else {}
    layer = make(kind, C, H, dtype, num_layers=L, bidirectional=bidir, nonlinearity=act, normalization=norm, **kw)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((T, N, C)).astype(dtype)
    h0 = (0.5 * rng.standard_normal((L * (2 if bidir else 1), N, H))).astype(dtype)
    grad = rng.standard_normal((T, N, (2 if bidir else 1) * H)).astype(dtype)
    for training in (True, False):
        layer.train(training)
        want, want_h, want_run, want_grads = reference(layer, x, h0, lengths, training,
                                                       grad=grad if training else None)
        out, h_n = layer(x, h0, lengths=lengths)
        np.testing.assert_allclose(out, want, **TOL[dtype])
        np.testing.assert_allclose(h_n, want_h, **TOL[dtype])
        for k, v in layer.buffers.items():  # training updated the running statistics, eval read them
            np.testing.assert_allclose(v, want_run[k], **TOL[dtype], err_msg=k)
        if not training:
            continue
        layer.zero_grad()
        grad_x, grad_h0 = layer.backward(grad)
        gx, gh0, grads = want_grads
        np.testing.assert_allclose(grad_x, gx, **TOL[dtype])
        np.testing.assert_allclose(grad_h0, gh0, **TOL[dtype])
        assert set(grads) == set(layer.grads)
        for k, g in layer.grads.items():
            scale = max(1.0, np.abs(grads[k]).max())
            np.testing.assert_allclose(g / scale, grads[k] / scale, **TOL[dtype], err_msg=k)


@pytest.mark.parametrize("kind", ["ligru", "sligru"])
def test_candidate_dropout_and_layer_dropout_masks(isa, kind):
    T, N, C, H, L = 6, 4, 3, 9, 2
    layer = make(kind, C, H, np.float64, num_layers=L, bidirectional=True, candidate_dropout=0.4, dropout=0.3)
    x = np.random.default_rng(2).standard_normal((T, N, C))
    out, _ = layer(x)
    noise = layer._ctx.noise
    cand, masks = noise[6], layer._ctx.masks
    assert cand.shape == (L * 2, N, H) and set(np.unique(cand)) <= {0.0, 1 / 0.6}
    assert masks.shape == (L - 1, T, N, 2 * H)
    grad = np.ones_like(out)
    layer.buffers.update({k: v for k, v in layer.buffers.items()})
    before = {k: v.copy() for k, v in layer.buffers.items()}
    # the reference from the same running statistics (the call above updated them)
    for k, v in before.items():
        layer.buffers[k][...] = v
    want, _, _, (gx, _, grads) = reference(layer, x, training=True, cand=cand, masks=masks, grad=grad)
    np.testing.assert_allclose(out, want, rtol=1e-10, atol=1e-12)
    grad_x, _ = layer.backward(grad)
    np.testing.assert_allclose(grad_x, gx, rtol=1e-10, atol=1e-12)
    for k, g in layer.grads.items():
        np.testing.assert_allclose(g, grads[k], rtol=1e-9, atol=1e-11, err_msg=k)
    layer.eval()  # no dropout of any kind in inference
    out_a, _ = layer(x)
    out_b, _ = layer(x)
    np.testing.assert_array_equal(out_a, out_b)


@pytest.mark.parametrize("kind,norm", [("ligru", "batchnorm"), ("sligru", "layernorm"), ("ligru", None)])
def test_gradients_match_finite_differences(kind, norm):
    T, N, C, H = 5, 3, 2, 3
    layer = make(kind, C, H, np.float64, num_layers=2, bidirectional=True, nonlinearity="tanh", normalization=norm)
    rng = np.random.default_rng(4)
    x = rng.standard_normal((T, N, C))
    w = rng.standard_normal((T, N, 2 * H))
    lengths = [5, 2, 4]
    start = {k: v.copy() for k, v in layer.buffers.items()}

    def loss():
        for k, v in start.items():  # the same running statistics for every evaluation
            layer.buffers[k][...] = v
        out, _ = layer(x, lengths=lengths)
        return float((out * w).sum())

    loss()
    layer.zero_grad()
    grad_x, _ = layer.backward(w)
    eps = 1e-6
    for name, p in list(layer.params.items())[:6]:
        for idx in [(0,) * p.ndim, tuple(s - 1 for s in p.shape)]:
            old = p[idx]
            p[idx] = old + eps
            up = loss()
            p[idx] = old - eps
            down = loss()
            p[idx] = old
            np.testing.assert_allclose(layer.grads[name][idx], (up - down) / (2 * eps), rtol=1e-5, atol=1e-7,
                                       err_msg=name)
    for idx in [(0, 0, 0), (4, 2, 1), (1, 1, 0)]:
        old = x[idx]
        x[idx] = old + eps
        up = loss()
        x[idx] = old - eps
        down = loss()
        x[idx] = old
        np.testing.assert_allclose(grad_x[idx], (up - down) / (2 * eps), rtol=1e-5, atol=1e-7)


def test_functional_and_layer_agree_and_state_dict_has_the_buffers():
    layer = make("ligru", 3, 4, np.float32, num_layers=2)
    x = np.random.default_rng(0).standard_normal((6, 2, 3)).astype(np.float32)
    twin = copy.deepcopy(layer)
    out, h_n = layer(x)
    buffers = {k: v.copy() for k, v in twin.buffers.items()}
    out_f, h_f, ctx = F.ligru_forward(x, twin.params, buffers=buffers, num_layers=2, training=True)
    np.testing.assert_array_equal(out, out_f)
    for k in buffers:
        np.testing.assert_array_equal(buffers[k], layer.buffers[k])
    state = layer.state_dict()
    assert "norm_running_var_l1" in state and "weight_hh_l1" in state
    other = fastrnn.LiGRU(3, 4, num_layers=2, rng=9)
    other.load_state_dict(state)
    other.eval(), layer.eval()
    np.testing.assert_array_equal(other(x)[0], layer(x)[0])
    clone = pickle.loads(pickle.dumps(layer))
    np.testing.assert_array_equal(clone(x)[0], layer(x)[0])


def test_errors():
    x = np.ones((1, 1, 3), np.float32)
    layer = fastrnn.LiGRU(3, 4)
    with pytest.raises(ValueError, match="batch norm in training needs more than one valid row"):
        layer(x)
    layer.eval()
    layer(x)  # inference uses the running statistics: one row is fine
    with pytest.raises(ValueError, match="unknown nonlinearity 'gelu'"):
        fastrnn.LiGRU(3, 4, nonlinearity="gelu")
    with pytest.raises(ValueError, match="unknown normalization 'group'"):
        fastrnn.SLiGRU(3, 4, normalization="group")
    with pytest.raises(TypeError, match="candidate_dropout"):  # a Li-GRU option only
        F.gru_forward(np.ones((3, 2, 3), np.float32), fastrnn.GRU(3, 4).params, candidate_dropout=0.1)
    with pytest.raises(ValueError, match="recurrent_dropout is for RNN, LSTM and GRU"):
        fastrnn.LiGRU(3, 4, recurrent_dropout=0.2)
    with pytest.raises(KeyError, match="buffers is missing 'norm_running_mean_l0'"):
        F.ligru_forward(np.ones((3, 2, 3), np.float32), layer.params)
    with pytest.raises(NotImplementedError, match="device='cuda' runs the plain cells only; the sligru cell"):
        fastrnn.cuda.check_plain("f", cell="sligru")  # what every device="cuda" call checks first


def test_diagnostics_name_the_li_gru_gates():
    layer = make("ligru", 3, 6, np.float64, nonlinearity="relu")
    x = np.random.default_rng(0).standard_normal((8, 4, 3))
    with fastrnn.diagnostics.record(layer) as rec:
        out, _ = layer(x)
        layer.backward(np.ones_like(out))
    report = rec.report()
    assert set(report.saturation) == {"candidate", "update"}
    assert report.grad_h_norm.shape == (1, 1, 8) and np.isfinite(report.grad_h_norm).all()
