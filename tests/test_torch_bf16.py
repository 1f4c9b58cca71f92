"""bf16 in fastrnn.torch, as torch has it: `compute_dtype="bfloat16"` (float32 parameters, float32
outputs), `torch.autocast("cpu", dtype=torch.bfloat16)` (float32 parameters and gradients, bf16
outputs) and `module.to(torch.bfloat16)` (bf16 parameters, inputs, outputs and gradients). Each
runs the core's bf16 forward and BPTT (tests/test_bf16_training.py), so each is checked bit for
bit against the NumPy layer's bf16 training, and against torch's own bf16 LSTM where it runs."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
import fastrnn  # noqa: E402
import fastrnn.torch as ft  # noqa: E402


def numpy_bf16_step(module, kind, x, dy, **kw):
    """The NumPy layer's bf16 training step on `module`'s weights: (out, dx, grads by name)."""
    layer = getattr(fastrnn, kind)(module.input_size, module.hidden_size, num_layers=module.num_layers,
                                   bidirectional=module.bidirectional, compute_dtype="bfloat16", **kw)
    layer.load_state_dict({k: v.float() for k, v in module.state_dict().items()})
    out = layer(x)[0]
    dx = layer.backward(dy)[0]
    return out, dx, layer.grads


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
def test_compute_dtype_bfloat16_trains(kind):
    torch.manual_seed(0)
    m = getattr(ft, kind)(5, 18, num_layers=2, bidirectional=True)
    m.compute_dtype = "bfloat16"  # an attribute: the constructor is torch's
    x = torch.randn(6, 3, 5, requires_grad=True)
    out = m(x)[0]
    assert out.dtype == torch.float32 and out.requires_grad
    dy = torch.randn_like(out)
    out.backward(dy)
    want_out, want_dx, want = numpy_bf16_step(m, kind, x.detach().numpy(), dy.numpy())
    np.testing.assert_array_equal(out.detach().numpy(), want_out)
    np.testing.assert_array_equal(x.grad.numpy(), want_dx)
    for name, p in m.named_parameters():
        assert p.grad.dtype == torch.float32
        np.testing.assert_array_equal(p.grad.numpy(), want[name])


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_autocast_computes_in_bf16_with_float32_parameters(kind):
    torch.manual_seed(1)
    m = getattr(ft, kind)(5, 16, batch_first=True)
    x = torch.randn(3, 7, 5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = m(x.bfloat16())  # what a previous autocast op hands on
        assert out.dtype == torch.bfloat16
        loss = out.float().square().sum()
    loss.backward()
    assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in m.parameters())
    # the compute_dtype="bfloat16" call on the same (bf16-rounded) input, its output rounded
    twin = getattr(ft, kind)(5, 16, batch_first=True)
    twin.load_state_dict(m.state_dict())
    twin.compute_dtype = "bfloat16"
    out2 = twin(x.bfloat16().float())[0]
    np.testing.assert_array_equal(out.float().detach().numpy(), out2.to(torch.bfloat16).float().detach().numpy())
    out2.backward(2 * out.float().detach())  # d sum(out^2) / d out, at autocast's (bf16) out
    for p, q in zip(m.parameters(), twin.parameters()):
        np.testing.assert_array_equal(p.grad.numpy(), q.grad.numpy())
    # and torch's own bf16 module under autocast agrees within bf16's error, where oneDNN runs it
    ref = getattr(torch.nn, kind)(5, 16, batch_first=True)
    ref.load_state_dict(m.state_dict())
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            theirs = ref(x)[0]
    except RuntimeError as e:  # "could not create a primitive descriptor" on CPUs without its bf16 RNN
        pytest.skip(f"torch's bf16 {kind} does not run here: {e}")
    assert (theirs.float() - out.float()).abs().max().item() < 0.05


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
def test_bf16_parameters_train_in_bf16(kind):
    torch.manual_seed(2)
    m = getattr(ft, kind)(4, 12).to(torch.bfloat16)
    x = torch.randn(5, 2, 4).bfloat16().requires_grad_()
    out, _ = m(x)
    assert out.dtype == torch.bfloat16
    dy = torch.randn(out.shape).bfloat16()
    out.backward(dy)
    assert x.grad.dtype == torch.bfloat16
    assert all(p.grad is not None and p.grad.dtype == torch.bfloat16 for p in m.parameters())
    # = float32 parameters (the same values) computing in bf16, every result rounded to bf16
    want_out, want_dx, want = numpy_bf16_step(m, kind, x.detach().float().numpy(), dy.float().numpy())
    bf = lambda a: torch.from_numpy(np.asarray(a)).bfloat16().float().numpy()  # noqa: E731
    np.testing.assert_array_equal(out.float().detach().numpy(), bf(want_out))
    np.testing.assert_array_equal(x.grad.float().numpy(), bf(want_dx))
    for name, p in m.named_parameters():
        np.testing.assert_array_equal(p.grad.float().numpy(), bf(want[name]))
    with pytest.raises(ValueError, match=r"RNN input dtype \(torch.float32\) does not match weight dtype"):
        m(x.float())  # torch's check, and message
    with torch.no_grad():  # inference too
        np.testing.assert_array_equal(m.eval()(x)[0].float().numpy(), out.float().detach().numpy())
    if kind != "RNN":
        with pytest.raises(TypeError, match="streams keep float32"):
            m.stream(batch=2)


def test_an_optimizer_trains_bf16_modules():
    # float32 master weights under autocast, as users train with torch: the loss goes down
    torch.manual_seed(3)
    m = ft.GRU(2, 24)
    head = torch.nn.Linear(24, 1)
    opt = torch.optim.Adam([*m.parameters(), *head.parameters()], lr=0.01)
    x = torch.randn(20, 16, 2)
    y = x[:, :, :1].cumsum(0)[-1] / 5
    losses = []
    for _ in range(60):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = torch.nn.functional.mse_loss(head(m(x)[0][-1]).float(), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.2 * losses[0]


def test_ligru_trains_in_bf16():
    torch.manual_seed(4)
    m = ft.LiGRU(16, input_shape=(3, 7, 5), num_layers=1, normalization="layernorm")
    x = torch.randn(3, 7, 5)
    want = m(x)[0]
    want.square().sum().backward()
    g32 = [p.grad.clone() for p in m.parameters()]
    m.zero_grad()
    for layer in m.rnn:
        layer.compute_dtype = "bfloat16"
    got = m(x)[0]
    got.square().sum().backward()
    assert 1e-6 < (got - want).abs().max().item() < 0.05
    for p, g in zip(m.parameters(), g32):
        assert (p.grad - g).norm() <= 0.1 * g.norm() + 1e-6
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert m(x)[0].dtype == torch.bfloat16


@pytest.mark.parametrize("normalization", ["batchnorm", "layernorm"])
def test_ligru_with_bf16_parameters(normalization):
    torch.manual_seed(5)
    # one layer: between two layers a bf16 model also rounds the activations and their gradients
    m = ft.LiGRU(12, input_shape=(3, 6, 4), num_layers=1, normalization=normalization)
    twin = ft.LiGRU(12, input_shape=(3, 6, 4), num_layers=1, normalization=normalization)
    m.to(torch.bfloat16)
    twin.load_state_dict({k: v.float() for k, v in m.state_dict().items()})  # the same (bf16) values
    for layer in twin.rnn:
        layer.compute_dtype = "bfloat16"
    x = torch.randn(3, 6, 4).bfloat16()
    out = m(x)[0]
    assert out.dtype == torch.bfloat16
    out.float().square().sum().backward()
    want = twin(x.float())[0]
    want.backward(2 * out.float().detach())
    np.testing.assert_array_equal(out.float().detach().numpy(), want.to(torch.bfloat16).float().detach().numpy())
    for (name, p), q in zip(m.named_parameters(), twin.parameters()):
        assert p.grad.dtype == torch.bfloat16, name
        np.testing.assert_array_equal(p.grad.float().numpy(), q.grad.bfloat16().float().numpy())
    for (name, b), c in zip(m.named_buffers(), twin.buffers()):  # batch-norm statistics updated alike
        np.testing.assert_array_equal(b.float().numpy(), c.bfloat16().float().numpy())
    with pytest.raises(TypeError, match="streams keep float32"):
        m.eval().stream(batch=3)


def test_bf16_parameters_with_regularizers_and_diagnostics():
    torch.manual_seed(6)
    m = ft.LSTM(8, 16, num_layers=2, dropout=0.2)
    m.zoneout_h, m.recurrent_dropout = 0.1, 0.2
    m.to(torch.bfloat16)
    x = torch.randn(5, 3, 8).bfloat16()
    with fastrnn.diagnostics.record(m) as rec:  # reads .params: float32 copies of the bf16 values
        out = m(x)[0]  # masks drawn in float32
        out.float().sum().backward()
    assert rec.report().grad_h_norm.shape == (2, 1, 5)
    assert all(p.grad.dtype == torch.bfloat16 and torch.isfinite(p.grad.float()).all() for p in m.parameters())
    w = m.params["weight_hh_l0"]
    assert w.dtype == np.float32 and not w.flags.writeable
    np.testing.assert_array_equal(w, m.weight_hh_l0.detach().float().numpy())


def test_autocast_leaves_what_bf16_does_not_take_in_float32():
    torch.manual_seed(7)
    x = torch.randn(5, 2, 4)
    m = ft.GRU(4, 8)
    m.weight_drop = 0.3  # DropConnect: not in bf16 (docs/precision.md); autocast falls back to float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(x.bfloat16())[0]
    assert out.dtype == torch.float32
    out.sum().backward()
    q = ft.quantize_dynamic(ft.LSTM(4, 8))  # an int8 module takes autocast's bf16 inputs
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
        got = q(x.bfloat16())[0]
    assert got.dtype == torch.float32
    with torch.no_grad():
        np.testing.assert_array_equal(got.numpy(), q(x.bfloat16().float())[0].numpy())
