"""fastrnn.torch: the torch.nn drop-ins against torch.nn itself (outputs, states, every gradient),
gradcheck, optimizer trajectories, serialization, convert/revert, dropout, DDP and bad inputs."""
import copy
import datetime
import importlib.metadata
import io
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import fastrnn  # noqa: E402
import fastrnn.torch as ft  # noqa: E402
from fastrnn import functional as F  # noqa: E402
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence  # noqa: E402

CELLS = ["lstm", "gru", "rnn_tanh", "rnn_relu"]
TWINS = {"lstm": (torch.nn.LSTM, ft.LSTM), "gru": (torch.nn.GRU, ft.GRU),
         "rnn_tanh": (torch.nn.RNN, ft.RNN), "rnn_relu": (torch.nn.RNN, ft.RNN)}
TOL = {torch.float64: 1e-10, torch.float32: 2e-5}


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """torch's OpenMP pool crawls on a busy 2-core machine (20 tiny torch.nn GRU steps took 12 s with
    2 threads); the reference computations run on one thread. fastrnn's own threads are unchanged."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def make_pair(cell, *args, **kwargs):
    """(torch.nn module, fastrnn.torch module) with the same weights."""
    if cell.startswith("rnn"):
        kwargs["nonlinearity"] = cell[4:]
    tcls, fcls = TWINS[cell]
    ref = tcls(*args, **kwargs)
    fast = fcls(*args, **kwargs)
    fast.load_state_dict(ref.state_dict())
    return ref, fast


def assert_close(a, b, tol, what):
    a, b = a.detach(), b.detach()
    assert a.shape == b.shape and a.dtype == b.dtype, f"{what}: {a.shape} {a.dtype} vs {b.shape} {b.dtype}"
    err = (a - b).abs().max().item() / max(1.0, b.abs().max().item()) if b.numel() else 0.0
    assert err <= tol, f"{what}: relative error {err:.3g} > {tol}"


def _states(cell, st):
    return list(st) if cell == "lstm" else [st]


MODES = ["time_major", "batch_first", "packed", "packed_batch_first", "packed_sorted", "unbatched",
         "unbatched_batch_first"]


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("layers,bi", [(1, False), (2, False), (1, True), (2, True)], ids=["L1", "L2", "L1bi", "L2bi"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("with_hx", [False, True], ids=["nohx", "hx"])
def test_matches_torch_nn(cell, dtype, layers, bi, mode, with_hx):
    torch.manual_seed(0)
    T, N, C, H = 6, 4, 3, 5
    batch_first = mode.endswith("batch_first")
    ref, fast = make_pair(cell, C, H, layers, bidirectional=bi, batch_first=batch_first, dtype=dtype,
                          dropout=0.3 if layers > 1 else 0.0)
    ref.eval(), fast.eval()  # dropout is tested separately (masks cannot match torch's)
    unbatched = mode.startswith("unbatched")
    S = layers * (2 if bi else 1)
    x = torch.randn((T, C) if unbatched else ((N, T, C) if batch_first else (T, N, C)), dtype=dtype)
    state_shape = (S, H) if unbatched else (S, N, H)
    hx = [torch.randn(state_shape, dtype=dtype) for _ in range(2 if cell == "lstm" else 1)]
    lengths = torch.tensor([6, 6, 5, 4] if mode == "packed_sorted" else [3, 6, 1, 5])

    results = []
    for module in (ref, fast):
        xi = x.clone().requires_grad_()
        hi = [h.clone().requires_grad_() for h in hx]
        inp = (pack_padded_sequence(xi, lengths, batch_first=batch_first, enforce_sorted=mode == "packed_sorted")
               if mode.startswith("packed") else xi)
        arg = (tuple(hi) if cell == "lstm" else hi[0]) if with_hx else None
        out, st = module(inp, arg)
        results.append((xi, hi, out, _states(cell, st)))
    (xr, hr, out_r, st_r), (xf, hf, out_f, st_f) = results

    if mode.startswith("packed"):
        assert isinstance(out_f, PackedSequence)
        for a, b in zip(out_f[1:], out_r[1:]):
            assert (a is None and b is None) or torch.equal(a, b)
        out_r, out_f = out_r.data, out_f.data
    tol = TOL[dtype]
    assert_close(out_f, out_r, tol, "output")
    for i, (a, b) in enumerate(zip(st_f, st_r)):
        assert_close(a, b, tol, f"state {i}")

    g = torch.Generator().manual_seed(1)
    weights = [torch.randn(t.shape, dtype=dtype, generator=g) for t in [out_r, *st_r]]
    for xi, hi, out, st, module in ((xr, hr, out_r, st_r, ref), (xf, hf, out_f, st_f, fast)):
        sum((w * t).sum() for w, t in zip(weights, [out, *st])).backward()
    assert_close(xf.grad, xr.grad, tol, "grad input")
    for i, (a, b) in enumerate(zip(hf, hr)):
        if with_hx:
            assert_close(a.grad, b.grad, tol, f"grad hx[{i}]")
        else:
            assert a.grad is None
    for (name, p), q in zip(ref.named_parameters(), fast.parameters()):
        assert_close(q.grad, p.grad, tol, f"grad {name}")


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_gradcheck_float64(cell, packed):
    torch.manual_seed(2)
    T, N, C, H = 3, 3, 2, 3
    _, fast = make_pair(cell, C, H, 2, bidirectional=True, dtype=torch.float64)
    names = [n for n, _ in fast.named_parameters()]
    weights = [p.detach().clone().requires_grad_() for p in fast.parameters()]
    x = torch.randn(T, N, C, dtype=torch.float64, requires_grad=True)
    hx = [torch.randn(4, N, H, dtype=torch.float64, requires_grad=True) for _ in range(2 if cell == "lstm" else 1)]
    lengths = torch.tensor([2, 3, 1])

    def fn(x, *rest):
        states, ws = rest[:len(hx)], rest[len(hx):]
        inp = pack_padded_sequence(x, lengths, enforce_sorted=False) if packed else x
        out, st = torch.func.functional_call(fast, dict(zip(names, ws)), (inp, states if cell == "lstm" else states[0]))
        return (out.data if packed else out, *_states(cell, st))

    assert torch.autograd.gradcheck(fn, (x, *hx, *weights), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("cell", CELLS)
def test_adam_trajectory_matches_torch_nn(cell):
    torch.manual_seed(3)
    T, N, C, H = 8, 4, 3, 6
    ref, fast = make_pair(cell, C, H, 2, batch_first=True, dtype=torch.float64)
    head_r = torch.nn.Linear(H, 1, dtype=torch.float64)
    head_f = copy.deepcopy(head_r)
    x = torch.randn(N, T, C, dtype=torch.float64)
    y = torch.randn(N, T, 1, dtype=torch.float64)
    opt_r = torch.optim.Adam([*ref.parameters(), *head_r.parameters()], lr=0.01)
    opt_f = torch.optim.Adam([*fast.parameters(), *head_f.parameters()], lr=0.01)
    for step in range(20):
        for module, head, opt in ((ref, head_r, opt_r), (fast, head_f, opt_f)):
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(head(module(x)[0]), y)
            loss.backward()
            opt.step()
        for (name, p), q in zip(ref.named_parameters(), fast.parameters()):
            assert_close(q, p, 1e-9, f"step {step}: {name}")


class _Net(torch.nn.Module):
    """A small model holding recurrent layers at several nesting levels (module-level: picklable)."""

    def __init__(self, rnn_cls=torch.nn.LSTM):
        super().__init__()
        self.enc = rnn_cls(3, 4, batch_first=True)
        shared = torch.nn.GRU(4, 4)
        self.blocks = torch.nn.ModuleList([shared, torch.nn.Sequential(torch.nn.RNN(4, 4, nonlinearity="relu"))])
        self.again = shared  # the same module at a second place
        self.heads = torch.nn.ModuleDict({"out": torch.nn.Linear(4, 2), "rnn": torch.nn.LSTM(4, 2, 2)})

    def forward(self, x):
        h, _ = self.enc(x)
        h = h.transpose(0, 1)
        h, _ = self.blocks[0](h)
        h, _ = self.blocks[1][0](h)
        h, _ = self.again(h)
        out, _ = self.heads["rnn"](h)
        return out + self.heads["out"](h)


class _MyLSTM(torch.nn.LSTM):
    """A user subclass of torch.nn.LSTM: convert must leave it alone (it may change behaviour)."""


def _rnn_types(model):
    return {name: type(m) for name, m in model.named_modules() if isinstance(m, torch.nn.RNNBase)}


def test_convert_and_revert_nested_model():
    torch.manual_seed(4)
    model = _Net()
    x = torch.randn(2, 5, 3)
    expected = model(x)
    fast = ft.convert(model)
    assert _rnn_types(fast) == {"enc": ft.LSTM, "blocks.0": ft.GRU, "blocks.1.0": ft.RNN, "heads.rnn": ft.LSTM}
    assert fast.again is fast.blocks[0]  # sharing preserved
    assert fast.blocks[1][0].nonlinearity == "relu" and fast.blocks[0].reset_after
    assert _rnn_types(model) == {"enc": torch.nn.LSTM, "blocks.0": torch.nn.GRU, "blocks.1.0": torch.nn.RNN,
                                 "heads.rnn": torch.nn.LSTM}  # not inplace: the original is untouched
    assert fast.enc.weight_ih_l0 is not model.enc.weight_ih_l0
    assert fast.state_dict().keys() == model.state_dict().keys()
    torch.testing.assert_close(fast(x), expected, rtol=0, atol=2e-6)

    back = ft.revert(fast)
    assert _rnn_types(back) == _rnn_types(model)
    torch.testing.assert_close(back(x), expected, rtol=0, atol=0)
    assert type(ft.convert(torch.nn.GRU(3, 4))) is ft.GRU
    assert type(ft.revert(ft.RNN(3, 4))) is torch.nn.RNN
    sub = torch.nn.Sequential(_MyLSTM(3, 4))
    assert type(ft.convert(sub)[0]) is _MyLSTM


def test_convert_inplace_shares_parameters_with_existing_optimizer():
    torch.manual_seed(5)
    model = torch.nn.Sequential(torch.nn.LSTM(3, 4))
    params = list(model.parameters())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    assert ft.convert(model, inplace=True) is model
    assert type(model[0]) is ft.LSTM and list(model.parameters()) == params
    before = model[0].weight_hh_l0.detach().clone()
    model(torch.randn(5, 2, 3))[0].sum().backward()
    opt.step()
    assert not torch.equal(model[0].weight_hh_l0, before)


def test_convert_and_revert_refuse_what_the_twin_cannot_represent():
    with pytest.raises(ValueError, match=r"fastrnn.torch.revert: 'rnn' uses fastrnn's regularizers \(zoneout_h\)"):
        ft.revert(torch.nn.ModuleDict({"rnn": ft.LSTM(3, 4, zoneout_h=0.1)}))
    with pytest.raises(ValueError, match=r"fastrnn.torch.revert: 'rnn' is a fastrnn.torch.GRU with reset_after=False"):
        ft.revert(torch.nn.ModuleDict({"rnn": ft.GRU(3, 4, reset_after=False)}))
    with pytest.raises(TypeError, match="fastrnn.torch.convert: model must be a torch.nn.Module, got dict"):
        ft.convert({})


def test_torch_save_and_load(tmp_path):
    torch.manual_seed(6)
    model = ft.convert(_Net())
    x = torch.randn(2, 5, 3)
    expected = model(x)
    path = tmp_path / "model.pt"
    torch.save(model, path)
    loaded = torch.load(path, weights_only=False)
    assert _rnn_types(loaded) == _rnn_types(model)
    torch.testing.assert_close(loaded(x), expected, rtol=0, atol=0)
    # A state_dict saved from fastrnn modules loads into plain torch.nn ones, and back.
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    plain = _Net()
    plain.load_state_dict(torch.load(buf, weights_only=True))
    torch.testing.assert_close(plain(x), expected, rtol=0, atol=2e-6)


@pytest.mark.parametrize("cell", CELLS)
def test_module_surface_is_torch_nn(cell):
    torch.manual_seed(7)
    ref, fast = make_pair(cell, 3, 4, 2, bias=False, batch_first=True, dropout=0.5, bidirectional=True)
    assert repr(fast) == repr(ref)
    assert [(n, p.shape) for n, p in fast.named_parameters()] == [(n, p.shape) for n, p in ref.named_parameters()]
    assert isinstance(fast, type(ref))
    assert fast.training and not fast.eval().training and fast.train().training
    torch.manual_seed(8)
    init = TWINS[cell][1](3, 4, **({"nonlinearity": cell[4:]} if cell.startswith("rnn") else {}))
    torch.manual_seed(8)
    init_ref = TWINS[cell][0](3, 4, **({"nonlinearity": cell[4:]} if cell.startswith("rnn") else {}))
    for p, q in zip(init.parameters(), init_ref.parameters()):  # default init: same draws as torch
        assert torch.equal(p, q)
    fast.double()
    assert fast.weight_ih_l0.dtype == torch.float64
    out, _ = fast(torch.randn(2, 5, 3, dtype=torch.float64))
    assert out.dtype == torch.float64


@pytest.mark.parametrize("cell", CELLS)
def test_layer_protocol_params_and_grads(cell):
    _, fast = make_pair(cell, 3, 4, 2, bidirectional=True)
    assert fast._cell() == cell
    assert (fast.hidden_size, fast.num_layers, fast.bidirectional) == (4, 2, True)
    params = fast.params
    assert list(params) == [n for n, _ in fast.named_parameters()]
    assert list(params) == [n for n, _ in F.param_shapes(cell, 3, 4, 2, True)]
    params["weight_hh_l1_reverse"][...] = 0.25  # writes through to the torch parameter
    params["bias_ih_l0"][0] = -3.0
    assert torch.all(fast.weight_hh_l1_reverse == 0.25) and fast.bias_ih_l0[0].item() == -3.0
    grads = fast.grads  # allocates zeros where .grad is None
    assert all(g.shape == params[n].shape and not g.any() for n, g in grads.items())
    assert all(p.grad is not None for p in fast.parameters())
    fast(torch.randn(4, 2, 3))[0].sum().backward()
    for name, g in grads.items():  # the views see the accumulated gradient
        np.testing.assert_array_equal(g, getattr(fast, name).grad.numpy())
    assert np.abs(grads["weight_ih_l0"]).sum() > 0


def test_gru_reset_after_false_matches_numpy_layer():
    torch.manual_seed(9)
    fast = ft.GRU(3, 4, 2, bidirectional=True, reset_after=False, dtype=torch.float64)
    assert "reset_after=False" in repr(fast)
    layer = fastrnn.GRU(3, 4, 2, bidirectional=True, reset_after=False, dtype=np.float64)
    layer.load_state_dict(fast.state_dict())
    x = torch.randn(5, 2, 3, dtype=torch.float64, requires_grad=True)
    out, h_n = fast(x)
    (out.sum() + 2 * h_n.sum()).backward()
    out_np, h_np = layer(x.detach().numpy())
    grad_x, _ = layer.backward(np.ones_like(out_np), 2 * np.ones_like(h_np))
    np.testing.assert_allclose(out.detach().numpy(), out_np, rtol=0, atol=1e-13)
    np.testing.assert_allclose(x.grad.numpy(), grad_x, rtol=0, atol=1e-12)
    for name, p in fast.named_parameters():
        np.testing.assert_allclose(p.grad.numpy(), layer.grads[name], rtol=0, atol=1e-12)


# ---- dropout -------------------------------------------------------------------------------------

def _manual_dropout_stack(cell, fast, x, masks):
    """The stack as single-layer torch.nn modules with fastrnn's masks applied between layers."""
    D, L = 2 if fast.bidirectional else 1, fast.num_layers
    h = x
    for k in range(L):
        layer = TWINS[cell][0](h.shape[-1], fast.hidden_size, bidirectional=fast.bidirectional, dtype=x.dtype,
                               **({"nonlinearity": cell[4:]} if cell.startswith("rnn") else {}))
        sfx = [f"_l{k}" + ("_reverse" if d else "") for d in range(D)]
        layer.load_state_dict({name.replace(s, "_l0" + s[len(f"_l{k}"):]): p for name, p in fast.named_parameters()
                               for s in sfx if name.endswith(s)})
        h, _ = layer(h)
        if k < L - 1:
            h = h * masks[k]
    return h


@pytest.mark.parametrize("cell", CELLS)
def test_dropout_uses_torch_rng_masks_between_layers(cell):
    torch.manual_seed(10)
    T, N, C, H, L, p = 5, 3, 2, 4, 3, 0.4
    _, fast = make_pair(cell, C, H, L, dropout=p, bidirectional=True, dtype=torch.float64)
    x = torch.randn(T, N, C, dtype=torch.float64, requires_grad=True)
    torch.manual_seed(11)
    out, _ = fast(x)
    # The masks fastrnn.torch draws: one bernoulli_ on torch's default generator, scaled by 1/(1-p).
    torch.manual_seed(11)
    masks = torch.empty(L - 1, T, N, 2 * H, dtype=torch.float64).bernoulli_(1 - p).div_(1 - p)
    assert (masks == 0).any() and (masks != 0).any()
    x_ref = x.detach().clone().requires_grad_()
    expected = _manual_dropout_stack(cell, fast, x_ref, masks)
    assert_close(out, expected, 1e-10, "output with dropout")
    out.square().sum().backward()
    expected.square().sum().backward()
    assert_close(x.grad, x_ref.grad, 1e-10, "grad input with dropout")


def test_dropout_train_eval_and_reproducibility():
    torch.manual_seed(12)
    ref, fast = make_pair("lstm", 3, 5, 2, dropout=0.5)
    x = torch.randn(6, 4, 3)
    runs = []
    for seed in (0, 0, 1):
        torch.manual_seed(seed)
        runs.append(fast(x)[0])
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])
    torch.manual_seed(0)
    with torch.no_grad():  # train mode without autograd still drops, with the same masks
        assert torch.equal(fast(x)[0], runs[0])
    fast.eval(), ref.eval()
    assert_close(fast(x)[0], ref(x)[0], 2e-5, "eval output")
    assert torch.equal(fast(x)[0], fast(x)[0])
    with pytest.raises(ValueError, match=r"fastrnn.torch.GRU.forward: dropout=1.0 is not supported in training"):
        ft.GRU(3, 4, 2, dropout=1.0)(x)
    assert ft.GRU(3, 4, 2, dropout=1.0).eval()(x)[0].shape == (6, 4, 4)


# ---- autograd plumbing ---------------------------------------------------------------------------

@pytest.fixture
def spy(monkeypatch):
    """Records the arguments of every fastrnn.functional._forward call."""
    calls = []
    real = F._forward

    def wrapper(cell, x, params, *args, **kwargs):
        calls.append({"x": x, "params": params, **kwargs})
        return real(cell, x, params, *args, **kwargs)
    monkeypatch.setattr(F, "_forward", wrapper)
    return calls


def test_zero_copy_inputs_and_weights(spy):
    fast = ft.LSTM(3, 4, 2, bidirectional=True)
    x = torch.randn(5, 2, 3, requires_grad=True)
    out, _ = fast(x)
    (call,) = spy
    assert np.shares_memory(call["x"], x.detach().numpy())
    for name, p in fast.named_parameters():
        assert np.shares_memory(call["params"][name], p.detach().numpy()), name


def test_cache_only_when_a_gradient_is_needed(spy):
    fast = ft.GRU(3, 4, 2, dropout=0.5)
    x = torch.randn(5, 2, 3)
    out, _ = fast(x)
    assert out.requires_grad and spy[-1]["training"]
    with torch.no_grad():
        out, _ = fast.eval()(x)
    assert not out.requires_grad and not spy[-1]["training"]
    out, _ = fast(x)  # eval mode with autograd: cache (for BPTT) but no dropout
    assert spy[-1]["training"] and spy[-1]["masks"] is None
    fast.requires_grad_(False)
    out, _ = fast(x)  # nothing requires grad
    assert not out.requires_grad and not spy[-1]["training"]
    out, _ = fast.train()(x)  # train-mode dropout without autograd: a cache is made only to apply it
    assert not out.requires_grad and spy[-1]["training"] and spy[-1]["masks"] is not None


def test_needs_input_grad_and_frozen_weights():
    fast = ft.RNN(3, 4)
    fast.weight_ih_l0.requires_grad_(False)
    x = torch.randn(5, 2, 3)
    h0 = torch.randn(1, 2, 4, requires_grad=True)
    fast(x, h0)[0].sum().backward()
    assert x.grad is None and fast.weight_ih_l0.grad is None
    assert h0.grad is not None and fast.weight_hh_l0.grad is not None


def test_backward_twice_needs_retain_graph_and_inplace_changes_are_caught():
    torch.manual_seed(13)
    fast = ft.LSTM(3, 4, dtype=torch.float64)
    x = torch.randn(5, 2, 3, dtype=torch.float64, requires_grad=True)
    out, _ = fast(x)
    out.sum().backward(retain_graph=True)
    first = x.grad.clone()
    out.sum().backward()
    torch.testing.assert_close(x.grad, 2 * first, rtol=1e-14, atol=0)
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        out.sum().backward()
    out, _ = fast(x)
    with torch.no_grad():
        fast.weight_hh_l0.add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.sum().backward()


def test_double_backward_raises_clearly():
    fast = ft.GRU(3, 4, dtype=torch.float64)
    x = torch.randn(5, 2, 3, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(fast(x)[0].square().sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="marked with @once_differentiable"):
        g.sum().backward()


# ---- bad input -----------------------------------------------------------------------------------

def test_non_cpu_tensors_raise_clearly():
    # torch here is CPU-only: the meta device stands in for CUDA (same check, same message).
    with pytest.raises(RuntimeError, match=r"fastrnn.torch.LSTM.forward: got a tensor on device 'meta' but the "
                                           r"fastrnn CUDA backend is not built/available"):
        ft.LSTM(3, 4)(torch.empty(5, 2, 3, device="meta"))
    with pytest.raises(RuntimeError, match="fastrnn CUDA backend is not built/available"):
        ft.GRU(3, 4, device="meta")(torch.empty(5, 2, 3))


@pytest.mark.skipif(not torch.cuda.is_available() or fastrnn.cuda.is_available(),
                    reason="needs a CUDA build of torch and a GPU, without fastrnn's CUDA backend")
def test_cuda_tensors_raise_clearly():
    with pytest.raises(RuntimeError, match=r"device 'cuda:0' but the fastrnn CUDA backend is not built/available"):
        ft.LSTM(3, 4).cuda()(torch.randn(5, 2, 3, device="cuda"))


def test_bad_inputs_raise_clearly():
    lstm, gru = ft.LSTM(3, 4), ft.GRU(3, 4)
    x = torch.randn(5, 2, 3)
    with pytest.raises(ValueError, match="proj_size argument is only supported for LSTM"):
        ft.GRU(3, 4, proj_size=2)
    with pytest.raises(ValueError, match=r"RNN input dtype \(torch.float64\) does not match weight dtype \(torch.float32\)"):
        lstm(x.double())
    with pytest.raises(ValueError, match=r"RNN input dtype \(torch.bfloat16\) does not match weight dtype"):
        gru(x.bfloat16())  # outside autocast
    with pytest.raises(TypeError, match=r"fastrnn.torch.GRU.forward: h_0 has dtype torch.float64, expected torch.float32"):
        gru(x, torch.zeros(1, 2, 4, dtype=torch.float64))
    with pytest.raises(TypeError, match=r"parameters have dtype torch.float16, expected torch.float32, torch.float64 "
                                        "or torch.bfloat16"):
        ft.RNN(3, 4).half()(x.half())
    with pytest.raises(TypeError, match="fastrnn.torch.LSTM.forward: hx must be a tuple"):
        lstm(x, torch.zeros(1, 2, 4))
    with pytest.raises(TypeError, match="fastrnn.torch.GRU.forward: hx must be a Tensor or None, got tuple"):
        gru(x, (torch.zeros(1, 2, 4),))
    with pytest.raises(TypeError, match="input must be a Tensor or a PackedSequence, got ndarray"):
        gru(x.numpy())
    with pytest.raises(ValueError, match="GRU: Expected input to be 2D or 3D, got 4D instead"):
        gru(x[None])
    with pytest.raises(RuntimeError, match=r"Expected hidden size \(1, 2, 4\), got \[1, 3, 4\]"):
        gru(x, torch.zeros(1, 3, 4))
    with pytest.raises(RuntimeError, match=r"Expected hidden\[1\] size \(1, 2, 4\), got \[1, 2, 5\]"):
        lstm(x, (torch.zeros(1, 2, 4), torch.zeros(1, 2, 5)))
    with pytest.raises(RuntimeError, match="For unbatched 2-D input, hx should also be 2-D"):
        gru(x[:, 0], torch.zeros(1, 2, 4))
    with pytest.raises(RuntimeError, match="input.size\\(-1\\) must be equal to input_size. Expected 3, got 2"):
        gru(x[..., :2])


def test_import_fastrnn_does_not_import_torch():
    code = ("import sys, fastrnn; assert 'torch' not in sys.modules, 'import fastrnn imported torch'; "
            "m = fastrnn.torch; assert 'torch' in sys.modules and m.LSTM.__module__ == 'fastrnn.torch'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# ---- DistributedDataParallel ---------------------------------------------------------------------

def _ddp_setup():
    """Model and full batch, identical in every process (seeded)."""
    torch.manual_seed(14)
    model = torch.nn.ModuleDict({"rnn": ft.LSTM(3, 5, 2, bidirectional=True, dtype=torch.float64),
                                 "head": torch.nn.Linear(10, 1, dtype=torch.float64)})
    x = torch.randn(6, 8, 3, dtype=torch.float64)
    lengths = torch.tensor([6, 2, 5, 1, 6, 3, 4, 4])
    y = torch.randn(8, 1, dtype=torch.float64)
    return model, x, lengths, y


def _ddp_loss(model, x, lengths, y):
    _, (h_n, _) = model["rnn"](pack_padded_sequence(x, lengths, enforce_sorted=False))
    return torch.nn.functional.mse_loss(model["head"](torch.cat([h_n[-2], h_n[-1]], 1)), y)


class _DDPNet(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x, lengths, y):
        return _ddp_loss(self.model, x, lengths, y)


def _ddp_worker(rank, world, init_file, out_dir):
    torch.set_num_threads(1)
    fastrnn.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world,
                                         timeout=datetime.timedelta(seconds=60))
    try:
        model, x, lengths, y = _ddp_setup()
        ddp = torch.nn.parallel.DistributedDataParallel(_DDPNet(model))
        part = slice(rank * 4, rank * 4 + 4)  # each rank takes half of the batch
        ddp(x[:, part], lengths[part], y[part]).backward()
        torch.save({n: p.grad for n, p in model.named_parameters()}, os.path.join(out_dir, f"grads{rank}.pt"))
    except BaseException:
        torch.distributed.destroy_process_group()
        raise
    # The all-reduce is complete on both ranks once backward returns. Leave without the
    # interpreter's teardown, which occasionally aborted a worker ("terminate called without an
    # active exception", SIGABRT; 5 of 60 runs of this worker with a normal exit, on a busy
    # machine; 0 of 100 with torch.nn.LSTM in place of fastrnn.torch's). Backtraces of all 7:
    # a gloo worker thread (c10d::ProcessGroupGloo::runLoop) destroys a finished allreduce
    # (~AsyncAllreduceWork -> ~AsyncWork -> ~at::ThreadLocalState), whose captured state holds a
    # Python object; its decref takes the GIL (gil_scoped_acquire -> PyEval_AcquireThread) while
    # the interpreter finalizes, CPython ends the thread with pthread_exit, and that unwinding
    # meets a noexcept destructor: std::terminate. gloo's thread, not fastrnn's (its pool is
    # never destroyed; fastrnn's own calls take the GIL back in unwind-safe frames,
    # tests/test_exit.py).
    os._exit(0)


@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                    reason="torch.distributed with gloo is not available")
def test_ddp_two_processes_average_to_full_batch_gradients(tmp_path):
    ctx = torch.multiprocessing.start_processes(_ddp_worker, args=(2, str(tmp_path / "store"), str(tmp_path)),
                                                nprocs=2, join=False, start_method="spawn")
    deadline = time.monotonic() + 120
    try:
        while not ctx.join(timeout=1):
            if time.monotonic() > deadline:
                pytest.fail("DDP workers did not finish within 120 s")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.terminate()
    model, x, lengths, y = _ddp_setup()
    _ddp_loss(model, x, lengths, y).backward()
    grads = [torch.load(tmp_path / f"grads{r}.pt", weights_only=True) for r in range(2)]
    for name, p in model.named_parameters():
        assert_close(grads[0][name], grads[1][name], 0.0, f"ranks differ on {name}")
        assert_close(grads[0][name], p.grad, 1e-12, f"DDP vs full batch: {name}")


def test_parallel_regions_run_on_torchs_openmp_threads_with_the_same_results(monkeypatch):
    # With >1 thread on both sides, fastrnn's regions run on torch's OpenMP team (no second pool
    # fighting torch's spinning workers); the results must not change.
    if not ft._torch_omp():
        pytest.skip("torch's CPU operators do not run on an OpenMP runtime here")
    torch.manual_seed(0)
    m = ft.LSTM(24, 64, num_layers=2, bidirectional=True).double()
    x = torch.randn(20, 16, 24, dtype=torch.float64, requires_grad=True)
    engaged = []
    use = fastrnn._C._use_foreign_omp
    monkeypatch.setattr(fastrnn._C, "_use_foreign_omp", lambda on, *a: engaged.append(on) or use(on, *a))

    def run(threads):
        saved = torch.get_num_threads(), fastrnn.get_num_threads()
        torch.set_num_threads(threads)
        fastrnn.set_num_threads(threads)
        try:
            m.zero_grad()
            x.grad = None
            out, (h_n, c_n) = m(x)
            (out.square().sum() + h_n.sum()).backward()
            return [out.detach().clone(), x.grad.clone()] + [p.grad.clone() for p in m.parameters()]
        finally:
            torch.set_num_threads(saved[0])
            fastrnn.set_num_threads(saved[1])

    want = run(1)
    assert not engaged
    got = run(2)
    assert engaged.count(True) == 2  # forward and backward
    assert not fastrnn._C._use_foreign_omp(False)  # switched off again after each call
    for a, b in zip(got, want):
        assert torch.equal(a, b)


# ---- which OpenMP runtime is torch's ---------------------------------------------------------------
# Run in a fresh interpreter: which runtimes are loaded, and how, is decided before torch is
# imported. The probe reports the runtime fastrnn picked, the runtimes loaded, and the parallel
# regions of one 2-thread fastrnn.torch training step.
_OMP_PROBE = r"""
import ctypes, json, os, sys
for path in sys.argv[1:]:
    ctypes.CDLL(path)  # loaded privately (RTLD_LOCAL): torch cannot bind to it
import torch, fastrnn, fastrnn.torch as ft
torch.set_num_threads(2)
fastrnn.set_num_threads(2)
fastrnn._C._set_thread_backoff(False)
torch.manual_seed(0)
m = ft.LSTM(16, 48, bidirectional=True)  # one thread per direction
fastrnn._C._record_regions(True)
m(torch.randn(20, 4, 16))[0].sum().backward()
regions = fastrnn._C._record_regions(False)
entry = ft._torch_omp()
loaded = sorted({os.path.realpath(line.split()[-1]) for line in open("/proc/self/maps")
                 if "libgomp" in line or "libiomp5" in line})
print(json.dumps({"runtime": ft._library_of(entry[0]) if entry else None, "loaded": loaded, "regions": regions}))
"""


def _omp_probe(*load, **env):
    full = dict(os.environ, **env)
    r = subprocess.run([sys.executable, "-c", _OMP_PROBE, *load], capture_output=True, text=True, env=full, timeout=300)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    out["recurrences"] = {(ran, on) for what, asked, ran, on in out["regions"] if what == "recurrence"}
    return out


def _iomp5():
    """libiomp5 from the intel-openmp wheel (a second OpenMP runtime), or None."""
    try:
        files = importlib.metadata.files("intel-openmp") or []
    except importlib.metadata.PackageNotFoundError:
        return None
    paths = [os.path.realpath(f.locate()) for f in files if f.name == "libiomp5.so"]
    return paths[0] if paths else None


needs_torch_omp = pytest.mark.skipif("OpenMP" not in torch.__config__.parallel_info(),
                                     reason="torch's CPU operators do not run on an OpenMP runtime here")
needs_iomp5 = pytest.mark.skipif(_iomp5() is None, reason="intel-openmp (libiomp5, a second runtime) is not installed")


@needs_torch_omp
@needs_iomp5
def test_torch_runtime_is_the_one_torch_binds_to_not_its_own_copy():
    """libiomp5 preloaded: torch's OpenMP calls bind to it (global scope first), although torch's
    own libgomp is loaded from torch's directory too. fastrnn must use libiomp5's team."""
    out = _omp_probe(LD_PRELOAD=_iomp5())
    assert len(out["loaded"]) == 2, out["loaded"]  # libiomp5 and torch's libgomp
    assert out["runtime"] == _iomp5()
    assert out["recurrences"] == {(2, "openmp")}


@needs_torch_omp
@needs_iomp5
@pytest.mark.parametrize("hashseed", ["0", "1", "2"])
def test_torch_runtime_is_not_guessed_among_foreign_runtimes(hashseed):
    """A libgomp from outside torch's directory (preloaded: torch binds to it, and torch's own copy,
    same soname, is not loaded) next to a privately loaded libiomp5: whatever the string hash seed
    (the old choice followed a set's iteration order), fastrnn picks the libgomp."""
    out = _omp_probe(_iomp5(), LD_PRELOAD="libgomp.so.1", PYTHONHASHSEED=hashseed)
    gomp = [p for p in out["loaded"] if "libgomp" in p]
    torch_dir = os.path.dirname(torch.__file__)
    if len(gomp) != 1 or gomp[0].startswith(torch_dir):
        pytest.skip("no libgomp.so.1 outside torch's directory on the library path")
    assert out["runtime"] == gomp[0], out
    assert out["recurrences"] == {(2, "openmp")}


@needs_torch_omp
def test_a_smaller_openmp_team_hands_the_region_to_fastrnns_pool():
    """OMP_THREAD_LIMIT=1: the runtime gives a team of 1 where 2 threads were asked for. The region
    then runs on fastrnn's pool with its 2 threads (it used to run on the team's one thread)."""
    out = _omp_probe(OMP_THREAD_LIMIT="1")
    assert out["runtime"] is not None
    assert out["recurrences"] == {(2, "pool")}
