"""The plan a layer keeps (csrc/core/plan.h): W_hh packed once for inference, and never stale
whoever writes the weights (in place, optimizers, load_state_dict, init, replaced or
non-contiguous arrays, torch's param.data and copy_); plans rebuilt while another thread
computes; copies, pickles and torch.save of layers that hold one; the memory it reports."""
import copy
import io
import pickle
import threading
from collections import OrderedDict

import numpy as np
import pytest

import fastrnn
from fastrnn import init, optim

LAYERS = {
    "lstm": lambda: fastrnn.LSTM(5, 16, 2, bidirectional=True, rng=0),
    "lstmp": lambda: fastrnn.LSTM(5, 16, proj_size=6, rng=0),
    "gru": lambda: fastrnn.GRU(5, 16, rng=0),
    "ligru": lambda: fastrnn.LiGRU(5, 16, 2, rng=0),
    "sligru": lambda: fastrnn.SLiGRU(5, 16, recurrent_affine=True, rng=0),
}


def x_of(layer, T=6, N=3, seed=1):
    return np.random.default_rng(seed).standard_normal((T, N, layer.input_size)).astype(layer.dtype)


def fresh_output(layer, x):
    """The output of a new layer (a new plan) with `layer`'s current weights and buffers."""
    twin = copy.deepcopy(layer)
    twin._weights = None
    return twin.eval()(x)[0]


def check_current(layer, x):
    """The layer's eval output is the one of its current weights, bit for bit."""
    got = layer.eval()(x)[0]
    np.testing.assert_array_equal(got, fresh_output(layer, x))
    return got


# ---- every writer of the weights -------------------------------------------------------------

def _in_place(layer):
    layer.params["weight_hh_l0"] *= 0.5


def _one_element(layer):
    layer.params["weight_hh_l0"][3, 2] += 0.25  # one value of one row block: still seen


def _last_element(layer):
    w = layer.params["weight_hh_l0"]
    w.reshape(-1)[-1] -= 1.0


def _replaced(layer):
    layer.params["weight_hh_l0"] = layer.params["weight_hh_l0"] * 1.5


def _load_state_dict(layer):
    layer.load_state_dict({k: v * 0.9 for k, v in layer.state_dict().items()})


def _init(layer):
    init.orthogonal_(layer.params["weight_hh_l0"], rng=3)


def _sgd(layer):
    opt = optim.SGD(layer, lr=0.5)
    layer.train()
    out = layer(x_of(layer))[0]
    layer.zero_grad()
    layer.backward(np.ones_like(out))
    opt.step()


def _adam(layer):
    opt = optim.Adam(layer, lr=0.05)
    for _ in range(2):
        layer.train()
        out = layer(x_of(layer))[0]
        layer.zero_grad()
        layer.backward(np.ones_like(out))
        opt.step()


WRITERS = {"in_place": _in_place, "one_element": _one_element, "last_element": _last_element,
           "replaced": _replaced, "load_state_dict": _load_state_dict, "init": _init, "sgd": _sgd, "adam": _adam}


@pytest.mark.parametrize("writer", sorted(WRITERS))
@pytest.mark.parametrize("kind", sorted(LAYERS))
def test_inference_never_uses_stale_packed_weights(kind, writer):
    layer = LAYERS[kind]().eval()
    x = x_of(layer)
    before = check_current(layer, x)
    assert layer.packed_bytes > 0  # the inference call packed W_hh on the plan
    WRITERS[writer](layer)
    after = check_current(layer, x)
    assert not np.array_equal(before, after)  # the write mattered
    WRITERS[writer](layer)  # and a second one, after the plan repacked
    check_current(layer, x)


def test_a_non_contiguous_weight_written_in_place_is_seen():
    """The plan reads a contiguous copy of a non-contiguous array: that copy is made again at
    every call, so writes to the array itself reach the next call."""
    layer = fastrnn.GRU(5, 16, rng=0).eval()
    x = x_of(layer)
    layer.params["weight_hh_l0"] = np.asfortranarray(layer.params["weight_hh_l0"])
    before = check_current(layer, x)
    layer.params["weight_hh_l0"] *= 0.5
    after = check_current(layer, x)
    assert not np.array_equal(before, after)


def test_batch_norm_buffers_written_in_place_are_seen():
    layer = fastrnn.LiGRU(5, 16, rng=0).eval()
    x = x_of(layer)
    before = check_current(layer, x)
    layer.buffers["norm_running_var_l0"][:] = 4.0
    after = check_current(layer, x)
    assert not np.array_equal(before, after)


def test_packed_bytes_reports_the_packed_copies():
    layer = fastrnn.LSTM(5, 32, 2, rng=0)
    x = x_of(layer)
    assert layer.packed_bytes == 0
    out = layer.train()(x)[0]
    layer.backward(np.ones_like(out))
    assert layer.packed_bytes == 0  # training packs into the call's own scratch
    layer.eval()(x)
    w_bytes = sum(layer.params[f"weight_hh_l{k}"].nbytes for k in range(2))
    # the panels (rows padded to the microkernel's width) and the copy that detects changes
    assert 2 * w_bytes <= layer.packed_bytes <= 4 * w_bytes
    layer.params["weight_hh_l1"] = layer.params["weight_hh_l1"].copy()
    assert layer.packed_bytes == 0  # a replaced array: a new plan, nothing packed yet


# ---- torch front end --------------------------------------------------------------------------

def test_torch_writes_never_use_stale_weights():
    torch = pytest.importorskip("torch")
    import fastrnn.torch as ft

    torch.manual_seed(0)
    ours = ft.LSTM(5, 16, 2).eval()
    theirs = torch.nn.LSTM(5, 16, 2).eval()
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(6, 3, 5)

    def same():
        with torch.no_grad():
            torch.testing.assert_close(ours(x)[0], theirs(x)[0], rtol=1e-5, atol=1e-6)

    same()
    writes = [
        lambda m: m.weight_hh_l0.data.mul_(0.5),  # .data: no _version bump
        lambda m: m.weight_hh_l1.copy_(m.weight_hh_l1 * 1.25),
        lambda m: setattr(m.weight_hh_l0, "data", m.weight_hh_l0.data * 0.75),  # a new storage
        lambda m: m.load_state_dict({k: v * 0.9 for k, v in m.state_dict().items()}),
        lambda m: torch.nn.init.orthogonal_(m.weight_hh_l0, generator=torch.Generator().manual_seed(1)),
    ]
    for write in writes:
        with torch.no_grad():
            write(ours)
            write(theirs)
        same()
    # an optimizer step on both
    for m in (ours, theirs):
        opt = torch.optim.SGD(m.parameters(), lr=0.5)
        m.train()
        m(x)[0].sum().backward()
        opt.step()
        m.eval()
    same()


def test_torch_save_and_deepcopy_of_modules_that_ran():
    torch = pytest.importorskip("torch")
    import fastrnn.torch as ft

    torch.manual_seed(0)
    for module in (ft.GRU(5, 8), ft.LiGRU(8, input_shape=(3, 6, 5))):
        module.eval()
        x = torch.randn(6, 3, 5) if isinstance(module, ft.GRU) else torch.randn(3, 6, 5)
        with torch.no_grad():
            want = module(x)[0]
        buf = io.BytesIO()
        torch.save(module, buf)
        buf.seek(0)
        loaded = torch.load(buf, weights_only=False)
        twin = copy.deepcopy(module)
        with torch.no_grad():
            torch.testing.assert_close(loaded(x)[0], want, rtol=0, atol=0)
            torch.testing.assert_close(twin(x)[0], want, rtol=0, atol=0)
            next(module.parameters()).mul_(0.5)  # the copies do not share the original's weights
            torch.testing.assert_close(loaded(x)[0], want, rtol=0, atol=0)
            torch.testing.assert_close(twin(x)[0], want, rtol=0, atol=0)


# ---- copies and threads ------------------------------------------------------------------------

@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_copies_of_a_layer_holding_a_plan(how):
    layer = fastrnn.LiGRU(5, 16, bidirectional=True, rng=0).eval()
    x = x_of(layer)
    want = layer(x)[0]
    assert layer._weights is not None  # the layer holds a plan now
    twin = {"deepcopy": copy.deepcopy, "pickle": lambda m: pickle.loads(pickle.dumps(m))}[how](layer)
    np.testing.assert_array_equal(twin(x)[0], want)
    layer.params["weight_hh_l0"] *= 0.5  # the original's writes stay the original's
    np.testing.assert_array_equal(twin(x)[0], want)
    assert not np.array_equal(layer(x)[0], want)
    twin.params["weight_ih_l0"] *= 2.0  # and the copy's its own
    check_current(twin, x)
    check_current(layer, x)


def test_plan_rebuilt_while_another_thread_computes():
    """Thread A runs inference calls (the GIL released inside); thread B replaces the weight
    arrays again and again (a new plan each time). Every output of A is the output of one of the
    weight sets, whole: a call reads the arrays it started with, kept alive until it returns.
    (Writing an array in place while a call reads it is a race, as for any NumPy array.)"""
    layer = fastrnn.LSTM(32, 64, 2, rng=0).eval()
    x = x_of(layer, T=80, N=4)
    sets = [layer.state_dict()]
    for k in (1, 2):
        sets.append({n: v * (1 - 0.2 * k) for n, v in sets[0].items()})
    expected = []
    for s in sets:
        ref = copy.deepcopy(layer)
        ref.load_state_dict(s)
        expected.append(ref(x)[0])
    outputs, errors, stop = [], [], threading.Event()

    def compute():
        try:
            while not stop.is_set() and len(outputs) < 300:
                outputs.append(layer(x)[0])
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    worker = threading.Thread(target=compute)
    worker.start()
    try:
        for i in range(100):
            layer.params = OrderedDict((k, v.copy()) for k, v in sets[i % 3].items())
    finally:
        stop.set()
        worker.join()
    assert not errors, errors
    assert outputs
    for o in outputs:
        assert any(np.array_equal(o, e) for e in expected)
    layer.params = OrderedDict((k, v.copy()) for k, v in sets[2].items())
    np.testing.assert_array_equal(layer(x)[0], expected[2])


def test_sizes_whose_parameter_count_overflows_are_refused():
    """LSTM(2^62, 2^62): the layout's sizes overflowed int64 in the core (undefined behaviour,
    reported by UBSan under .ci/sanitize); the plan refuses them with a ValueError instead."""
    from fastrnn import _C
    from fastrnn.core import cells
    for C, H in ((2**62, 2**62), (1, 2**62), (2**40, 2**40)):
        with pytest.raises(ValueError, match="overflows int64"):
            _C.Plan(cells.code("lstm"), True, True, C, H, 1, 1, "float32")
    with pytest.raises(ValueError, match="overflows int64"):
        _C.Plan(cells.code("gru"), True, True, 2**31, 2**31, 2**30, 2, "float32")
