"""fastrnn.torch.quantize_dynamic: int8 inference of torch modules (fastrnn.torch's, torch.nn's,
and the ones torch's own quantize_dynamic made), against the NumPy int8 layers and torch."""
import copy
import io

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import fastrnn  # noqa: E402
import fastrnn.torch  # noqa: E402



def torch_quantization_warnings(test):
    """torch 2.13 deprecates its quantized-tensor APIs: the tests that build torch's dynamic int8
    modules expect these warnings (the suite turns every other warning into an error)."""
    test = pytest.mark.filterwarnings("ignore:torch.ao.quantization is deprecated:DeprecationWarning")(test)
    return pytest.mark.filterwarnings("ignore:torch.quantize_per_tensor, torch.quantize_per_channel:UserWarning")(test)


def torch_int8(model, kinds):
    return torch.ao.quantization.quantize_dynamic(model, set(kinds), dtype=torch.qint8)


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
def test_a_torch_module_gives_the_int8_layers_bits(kind):
    torch.manual_seed(0)
    model = torch.nn.Sequential(getattr(torch.nn, kind)(6, 20, num_layers=2, bidirectional=True))
    q = fastrnn.torch.quantize_dynamic(model)
    assert type(q[0]) is getattr(fastrnn.torch, kind) and q[0].compute_dtype == "int8" and not q[0].training
    assert type(model[0]) is getattr(torch.nn, kind) and model[0].weight_hh_l0.requires_grad  # untouched
    layer = getattr(fastrnn, kind)(6, 20, num_layers=2, bidirectional=True)
    layer.load_state_dict(model[0].state_dict())
    x = torch.randn(7, 3, 6)
    got = q[0](x)[0]
    np.testing.assert_array_equal(got.numpy(), layer.quantize_dynamic()(x.numpy())[0])
    with torch.no_grad():
        err = (got - model[0](x)[0]).abs().max().item()
    assert 1e-6 < err < 0.03


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
@torch_quantization_warnings
def test_torch_quantized_modules_are_converted(kind):
    torch.manual_seed(1)
    fp32 = torch.nn.Sequential(getattr(torch.nn, kind)(10, 24, num_layers=2, batch_first=True))
    tq = torch_int8(fp32, [getattr(torch.nn, kind)])
    assert type(tq[0]).__module__.startswith("torch.ao.nn.quantized.dynamic")
    q = fastrnn.torch.quantize_dynamic(tq)
    assert type(q[0]) is getattr(fastrnn.torch, kind) and q[0].batch_first and q[0].num_layers == 2
    x = torch.randn(3, 9, 10)
    with torch.no_grad():
        ours, theirs, exact = q[0](x)[0], tq[0](x)[0], fp32[0](x)[0]
    # within the quantization error of both, not bitwise (torch: per-tensor, reduced range)
    assert (ours - theirs).abs().max().item() < 0.03
    assert (ours - exact).abs().max().item() < 0.03


@torch_quantization_warnings
def test_a_projected_lstm_that_torch_quantized_is_refused():
    tq = torch_int8(torch.nn.Sequential(torch.nn.LSTM(4, 8, proj_size=3)), [torch.nn.LSTM])
    with pytest.raises(ValueError, match="weight_hr"):
        fastrnn.torch.quantize_dynamic(tq)


def test_int8_modules_refuse_training_and_gradients():
    q = fastrnn.torch.quantize_dynamic(fastrnn.torch.GRU(3, 5))
    assert not any(p.requires_grad for p in q.parameters())
    x = torch.randn(4, 2, 3)
    q.train()
    with pytest.raises(RuntimeError, match="quantized to int8.*call .eval"):
        q(x)
    q.eval()
    with pytest.raises(RuntimeError, match="has no gradients"):
        q(x.requires_grad_())
    with pytest.raises(ValueError, match="holds no recurrent module"):
        fastrnn.torch.quantize_dynamic(torch.nn.Linear(3, 2))
    with pytest.raises(ValueError, match="int8 quantizes float32 CPU modules"):
        fastrnn.torch.quantize_dynamic(fastrnn.torch.LSTM(3, 4).double())
    with pytest.raises(TypeError, match="torch.nn.Module"):
        fastrnn.torch.quantize_dynamic(fastrnn.LSTM(3, 4))


def test_inplace_and_shared_modules():
    lstm = fastrnn.torch.LSTM(3, 4)
    model = torch.nn.ModuleDict({"a": lstm, "b": lstm})
    q = fastrnn.torch.quantize_dynamic(model)
    assert q["a"] is q["b"] and q["a"] is not lstm and lstm.compute_dtype is None
    same = fastrnn.torch.quantize_dynamic(model, inplace=True)
    assert same is model and lstm.compute_dtype == "int8"


def test_new_parameters_are_quantized_again():
    q = fastrnn.torch.quantize_dynamic(fastrnn.torch.LSTM(5, 12))
    x = torch.randn(6, 2, 5)
    first = q(x)[0]
    with torch.no_grad():
        q.weight_hh_l0.mul_(0.5)  # in place: the kept plan sees it
    second = q(x)[0]
    assert (second - first).abs().max().item() > 1e-3
    q.load_state_dict({k: v * 2 for k, v in q.state_dict().items()})
    layer = fastrnn.LSTM(5, 12)
    layer.load_state_dict(q.state_dict())
    np.testing.assert_array_equal(q(x)[0].numpy(), layer.quantize_dynamic()(x.numpy())[0])


def test_modules_with_a_kept_plan_copy_and_save():
    # a stream or an int8 forward keeps a plan on the module: deepcopy and torch.save made a
    # pickle of it and failed ("cannot pickle 'fastrnn._C.Plan' object")
    m = fastrnn.torch.LSTM(4, 6).eval()
    m.stream(1)
    q = fastrnn.torch.quantize_dynamic(m)
    x = torch.randn(5, 2, 4)
    y = q(x)[0]
    buf = io.BytesIO()
    torch.save(q, buf)
    buf.seek(0)
    back = torch.load(buf, weights_only=False)
    assert back.compute_dtype == "int8"
    assert torch.equal(back(x)[0], y)
    assert torch.equal(copy.deepcopy(q)(x)[0], y)


def test_an_int8_torch_stream_steps_like_the_sequence():
    q = fastrnn.torch.quantize_dynamic(torch.nn.GRU(4, 9))
    x = torch.randn(6, 2, 4)
    s = q.stream(batch=2)
    steps = torch.stack([s.step(x[t]) for t in range(6)])
    assert torch.equal(steps, q(x)[0])


@pytest.mark.parametrize("kind,kw", [("LiGRU", {}), ("SLiGRU", {"ff_normalization": "layernorm"}),
                                     ("SLiGRU", {"recurrent_elementwise_affine": True})])
def test_li_gru_stacks_run_in_int8(kind, kw):
    torch.manual_seed(0)
    net = getattr(fastrnn.torch, kind)(hidden_size=16, input_shape=(3, 10, 8), num_layers=2, bidirectional=True,
                                       **kw)
    net(torch.randn(3, 10, 8))  # batch norm statistics away from their start
    net.eval()
    q = fastrnn.torch.quantize_dynamic(net)
    assert [layer.compute_dtype for layer in q.rnn] == ["int8", "int8"] and not q.training
    assert net.rnn[0].compute_dtype is None
    x = torch.randn(3, 10, 8)
    with torch.no_grad():
        want = net(x)[0]
    got = q(x)[0]
    err = (got - want).abs().max().item()
    assert 1e-6 < err < 0.05 * want.abs().max().item() + 0.02
    one = fastrnn.torch.quantize_dynamic(getattr(fastrnn.torch, kind)(hidden_size=16, input_shape=(3, 10, 8),
                                                                      **kw).eval())
    s = one.stream(3)
    assert torch.equal(torch.stack([s.step(x[:, t]) for t in range(10)], 1), one(x)[0])
    q.train()
    with pytest.raises(RuntimeError, match="quantized to int8"):
        q(x)


def test_speechbrain_modules_are_converted_and_quantized():
    from fastrnn.bench import speechbrain as _speechbrain
    sb = _speechbrain.load()
    if sb is None:
        pytest.skip("SpeechBrain is not installed (pip install --no-deps speechbrain==1.1.2)")
    torch.manual_seed(2)
    m = sb.LiGRU(hidden_size=12, input_shape=(2, 5, 6)).eval()
    q = fastrnn.torch.quantize_dynamic(torch.nn.Sequential(m))
    assert type(q[0]) is fastrnn.torch.LiGRU and q[0].rnn[0].compute_dtype == "int8"
    x = torch.randn(2, 5, 6)
    with torch.no_grad():
        assert 1e-6 < (q[0](x)[0] - m(x)[0]).abs().max().item() < 0.03


def test_bf16_inference_of_torch_modules():
    torch.manual_seed(3)
    m = fastrnn.torch.LSTM(6, 20, num_layers=2, batch_first=True).eval()
    x = torch.randn(3, 7, 6)
    want = m(x)[0].detach()
    m.compute_dtype = "bfloat16"
    assert "compute_dtype='bfloat16'" in repr(m)
    with torch.no_grad():
        got = m(x)[0]
    layer = fastrnn.LSTM(6, 20, num_layers=2, batch_first=True, compute_dtype="bfloat16").eval()
    layer.load_state_dict(m.state_dict())
    np.testing.assert_array_equal(got.detach().numpy(), layer(x.numpy())[0])
    assert 1e-6 < (got - want).abs().max().item() < 0.01
    m.compute_dtype = "float16"
    with pytest.raises(ValueError, match="expected None, 'int8' or 'bfloat16'"):
        m(x)


def test_an_int8_torch_stream_sees_in_place_updates():
    q = fastrnn.torch.quantize_dynamic(fastrnn.torch.LSTM(4, 10))
    x = torch.randn(5, 2, 4)
    s = q.stream(batch=2)
    s.step(x[0])
    with torch.no_grad():
        q.weight_hh_l0.mul_(0.5)  # in place, as an optimizer step or load_state_dict
    s.reset()
    steps = torch.stack([s.step(x[t]) for t in range(5)])
    assert torch.equal(steps, q(x)[0])


def test_li_gru_modules_copy_and_save_after_int8_calls():
    q = fastrnn.torch.quantize_dynamic(fastrnn.torch.LiGRU(hidden_size=8, input_shape=(2, 5, 4)).eval())
    x = torch.randn(2, 5, 4)
    y = q(x)[0]
    buf = io.BytesIO()
    torch.save(q, buf)
    buf.seek(0)
    assert torch.equal(torch.load(buf, weights_only=False)(x)[0], y)
    assert torch.equal(copy.deepcopy(q)(x)[0], y)
    with pytest.raises(ValueError, match="int8 quantizes float32 CPU modules"):
        fastrnn.torch.quantize_dynamic(fastrnn.torch.LiGRU(hidden_size=8, input_shape=(2, 5, 4)).double())
