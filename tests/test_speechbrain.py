"""fastrnn.torch.LiGRU / SLiGRU against SpeechBrain's own modules (speechbrain.nnet.RNN, 1.1.2),
loaded alone (fastrnn/bench/speechbrain.py; install with ``pip install --no-deps speechbrain==1.1.2``):
outputs, final states, every gradient, the batch-norm running statistics, the recurrent-dropout
masks of the pre-drawn bank, the bidirectional form and training steps; and the float64 reference
of fastrnn's own Li-GRU against the same modules."""
import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import fastrnn.torch  # noqa: E402
from fastrnn.core import reference as ref  # noqa: E402
from fastrnn.bench import speechbrain as _speechbrain  # noqa: E402

sb = _speechbrain.load()
pytestmark = pytest.mark.skipif(sb is None, reason="SpeechBrain is not installed "
                                                   "(pip install --no-deps speechbrain==1.1.2)")

TOL = {torch.float64: dict(rtol=1e-10, atol=1e-11), torch.float32: dict(rtol=1e-4, atol=3e-6)}


def speechbrain_module(kind, seed, dtype, **kw):
    torch.manual_seed(seed)
    if kind == "sligru":
        kw["ff_normalization"] = kw.pop("normalization", "batchnorm")
        module = sb.SLiGRU(**kw)
    else:
        module = sb.LiGRU(**kw)
    module = module.to(dtype)
    with torch.no_grad():  # away from the init values, so every parameter and statistic matters
        g = torch.Generator().manual_seed(seed + 1)
        for name, p in module.named_parameters():
            if "norm" in name and p.requires_grad:
                p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=dtype))
        for name, b in module.named_buffers():
            if name.endswith("running_var"):
                b.copy_(0.5 + torch.rand(b.shape, generator=g, dtype=dtype))
            elif name.endswith("running_mean"):
                b.copy_(0.2 * torch.randn(b.shape, generator=g, dtype=dtype))
    return module


def compare(a, b, dtype, what):
    """Within the dtype's tolerance relative to the largest magnitude (sums over many rows round)."""
    scale = max(1.0, float(b.abs().max()))
    torch.testing.assert_close(a / scale, b / scale, **TOL[dtype], msg=what)


def run_step(module, x, gout, hx=None):
    x = x.clone().requires_grad_(True)
    out, hh = module(x, hx)
    out.backward(gout)
    grads = {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}
    return out.detach(), hh.detach(), x.grad, grads


CASES = [  # kind, nonlinearity, normalization, layers, bidirectional, bias, dropout, affine
    ("ligru", "relu", "batchnorm", 1, False, True, 0.0, False),
    ("ligru", "tanh", "layernorm", 2, True, True, 0.2, False),
    ("ligru", "sin", "batchnorm", 2, True, False, 0.0, False),
    ("ligru", "leaky_relu", "none", 1, False, True, 0.3, False),
    ("sligru", "relu", "batchnorm", 2, False, True, 0.15, False),
    ("sligru", "tanh", "batchnorm", 1, True, True, 0.0, True),
    ("sligru", "leaky_relu", "layernorm", 2, True, False, 0.25, True),
    ("sligru", "sin", "batchnorm", 1, False, True, 0.0, False),
]


@pytest.mark.parametrize("kind,act,norm,L,bidir,bias,dropout,affine", CASES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_converted_module_matches_speechbrain(kind, act, norm, L, bidir, bias, dropout, affine, dtype):
    N, T, C, H = 3, 6, 5, 7
    kw = dict(hidden_size=H, input_shape=(N, T, C), nonlinearity=act, normalization=norm, num_layers=L, bias=bias,
              dropout=dropout, bidirectional=bidir)
    if kind == "sligru":
        kw["recurrent_elementwise_affine"] = affine
    theirs = speechbrain_module(kind, 0, dtype, **kw)
    ours = fastrnn.torch.convert(copy.deepcopy(theirs))
    assert type(ours) is (fastrnn.torch.SLiGRU if kind == "sligru" else fastrnn.torch.LiGRU)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    g = torch.Generator().manual_seed(5)
    for training in (True, True, False):  # two training steps: the bank's counter and the running stats move on
        theirs.train(training), ours.train(training)
        x = torch.randn(N, T, C, generator=g, dtype=dtype)
        gout = torch.randn(N, T, (2 if bidir else 1) * H, generator=g, dtype=dtype)
        for m in (theirs, ours):
            m.zero_grad()
        a = run_step(theirs, x, gout)
        b = run_step(ours, x, gout)
        compare(b[0], a[0], dtype, "output")
        compare(b[1], a[1], dtype, "hh")
        compare(b[2], a[2], dtype, "grad x")
        assert set(b[3]) == set(a[3])
        for name in a[3]:
            compare(b[3][name], a[3][name], dtype, name)
        for (name, buf_a), (_, buf_b) in zip(theirs.named_buffers(), ours.named_buffers()):
            compare(buf_b, buf_a, dtype, name)


@pytest.mark.parametrize("kind", ["ligru", "sligru"])
def test_built_directly_and_trained_like_speechbrain(kind):
    """The same seed gives the same parameters and dropout bank as SpeechBrain's constructor, and
    the same SGD trajectory with hx given."""
    N, T, C, H, L = 2, 5, 4, 6, 2
    kw = dict(hidden_size=H, input_shape=(N, T, C), num_layers=L, dropout=0.25, bidirectional=True)
    theirs = speechbrain_module(kind, 3, torch.float64, **kw)
    torch.manual_seed(3)
    ours = (fastrnn.torch.SLiGRU if kind == "sligru" else fastrnn.torch.LiGRU)(**kw).double()
    ours.load_state_dict(theirs.state_dict())  # the perturbed norms; the rest must already agree
    torch.manual_seed(3)
    fresh = (fastrnn.torch.SLiGRU if kind == "sligru" else fastrnn.torch.LiGRU)(**kw).double()
    for (name, p), (_, q) in zip(speechbrain_module(kind, 3, torch.float64, **kw).named_parameters(),
                                 fresh.named_parameters()):
        if "norm" not in name:
            torch.testing.assert_close(q, p, rtol=0, atol=0, msg=name)
    opt_a = torch.optim.SGD(theirs.parameters(), lr=0.1)
    opt_b = torch.optim.SGD(ours.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(9)
    hx = torch.randn(L, 2 * N, H, generator=g, dtype=torch.float64)
    for _ in range(3):
        x = torch.randn(N, T, C, generator=g, dtype=torch.float64)
        for m, opt in ((theirs, opt_a), (ours, opt_b)):
            opt.zero_grad()
            out, hh = m(x, hx)
            (out.square().mean() + hh.sum()).backward()
            opt.step()
    for (name, p), (_, q) in zip(theirs.named_parameters(), ours.named_parameters()):
        torch.testing.assert_close(q, p, rtol=1e-9, atol=1e-11, msg=name)


def test_revert_gives_back_speechbrain_and_fastrnn_layers_refuse():
    theirs = speechbrain_module("ligru", 1, torch.float32, hidden_size=4, input_shape=(2, 3, 5))
    model = torch.nn.ModuleDict({"enc": theirs, "head": torch.nn.Linear(4, 1)})
    fast = fastrnn.torch.convert(model)
    assert type(fast["enc"]) is fastrnn.torch.LiGRU and type(model["enc"]) is type(theirs)
    back = fastrnn.torch.revert(fast)
    assert type(back["enc"]) is type(theirs) and type(back["enc"].rnn[0]) is type(theirs.rnn[0])
    x = torch.randn(2, 3, 5)
    back.eval(), model.eval(), fast.eval()
    torch.testing.assert_close(back["enc"](x)[0], model["enc"](x)[0])
    torch.testing.assert_close(fast["enc"](x)[0], model["enc"](x)[0])
    with pytest.raises(ValueError, match="not converted from SpeechBrain"):
        fastrnn.torch.revert(fastrnn.torch.LiGRU(4, (2, 3, 5)))


@pytest.mark.parametrize("kind", ["ligru", "sligru"])
@pytest.mark.parametrize("norm", ["batchnorm", "layernorm"])
def test_reference_matches_speechbrain(kind, norm):
    """The float64 reference of fastrnn's Li-GRU (its oracle in tests/test_ligru.py) is
    SpeechBrain's computation: outputs, every gradient and the running statistics."""
    N, T, C, H, L = 3, 7, 5, 6, 2
    for act in ("relu", "tanh", "sin", "leaky_relu"):
        for training in (True, False):
            m = speechbrain_module(kind, 4, torch.float64, hidden_size=H, input_shape=(N, T, C), nonlinearity=act,
                                   normalization=norm, num_layers=L)
            m.train(training)
            before = {n: b.clone().numpy() for n, b in m.named_buffers() if "running" in n}
            x = torch.randn(N, T, C, dtype=torch.float64, requires_grad=True)
            out, _ = m(x)
            gout = torch.randn_like(out)
            out.backward(gout)
            params, running = {}, {}
            for l in range(L):
                layer = m.rnn[l]
                params[f"weight_ih_l{l}"] = layer.w.weight.detach().numpy()
                params[f"weight_hh_l{l}"] = layer.u.weight.detach().numpy()
                params[f"norm_weight_l{l}"] = layer.norm.weight.detach().numpy()
                params[f"norm_bias_l{l}"] = layer.norm.bias.detach().numpy()
                if norm == "batchnorm":
                    running[f"norm_running_mean_l{l}"] = before[f"rnn.{l}.norm.running_mean"].copy()
                    running[f"norm_running_var_l{l}"] = before[f"rnn.{l}.norm.running_var"].copy()
            o, _, cache = ref.ligru_forward(kind, x.detach().numpy().transpose(1, 0, 2), params, num_layers=L,
                                            nonlinearity=act, normalization=norm, training=training, running=running)
            np.testing.assert_allclose(o.transpose(1, 0, 2), out.detach().numpy(), rtol=1e-10, atol=1e-12)
            gx, _, grads = ref.ligru_backward(cache, gout.numpy().transpose(1, 0, 2))
            np.testing.assert_allclose(gx.transpose(1, 0, 2), x.grad.numpy(), rtol=1e-9, atol=1e-11)
            for l in range(L):
                layer = m.rnn[l]
                for name, p in (("weight_ih", layer.w.weight), ("weight_hh", layer.u.weight),
                                ("norm_weight", layer.norm.weight), ("norm_bias", layer.norm.bias)):
                    np.testing.assert_allclose(grads[f"{name}_l{l}"], p.grad.numpy(), rtol=1e-9, atol=1e-11)
                if norm == "batchnorm" and training:
                    np.testing.assert_allclose(running[f"norm_running_var_l{l}"], layer.norm.running_var.numpy(),
                                               rtol=1e-12)
